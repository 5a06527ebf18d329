"""Compute layer: reference math, native delegation, Triton kernels, and the dispatcher.

Nothing here validates user input; ``channelnorm.functional`` does that before calling in.
"""
