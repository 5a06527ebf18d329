"""Compute layer: the dispatcher (``dispatch``), statistics primitives (``moments``), the reference
math, torch's kernels (``native``), the Triton kernels, and the collectives of synchronized
statistics (``distributed``).

``channelnorm.functional`` validates user input before calling in. The one exception is
``distributed``: it checks each rank's input after the gather (with the checks of ``channelnorm._checks``,
which imports neither ``functional`` nor ``ops``), so that every rank raises together instead of leaving
the others waiting in a collective.
"""
