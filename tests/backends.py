"""Backends every CPU test runs on (the Triton backend has its own tests under ops/triton/)."""
CPU_BACKENDS = ("reference", "native")
