"""Triton backend (DESIGN §4, §6): ``_kernels`` (jit), ``plan``/``forward``/``backward``/``reduce`` (host),
``custom_ops`` (torch.library ops + autograd), ``backend`` (the interface ``ops.dispatch`` calls)."""
