"""Backend choice. ``"auto"`` picks the fastest backend that computes exactly this call; naming a
backend that cannot run it is a ``ValueError`` that says why, never a silent fallback."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch

from . import family, native, reference

BACKENDS = ("auto", "reference", "native", "triton")

_reference = SimpleNamespace(
    channel_norm=lambda *a, **k: family.channel_norm(reference, *a, **k),
    instance_norm=lambda *a, **k: family.instance_norm(reference, *a, **k),
    group_norm=lambda *a, **k: family.group_norm(reference, *a, **k),
)


def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(map(repr, BACKENDS))}")


def _triton_backend():
    """The Triton backend module, or the reason it cannot be used in this process."""
    try:
        # An import statement, not importlib: torch.compile traces through it.
        from .triton import backend as triton_backend
        return triton_backend, None
    except ImportError as exc:  # triton missing, or the backend not built in this version
        return None, f"the triton backend cannot be imported ({exc})"


def _triton_unsupported(op: str, x: torch.Tensor, params) -> Optional[str]:
    module, reason = _triton_backend()
    if module is None:
        return reason
    return module.unsupported_reason(op, x, *params)


def resolve(backend: str, op: str, x: torch.Tensor, *params: Optional[torch.Tensor]):
    """The backend namespace that runs ``op`` on ``x`` (``params``: weight, bias, running stats)."""
    check_backend_name(backend)
    if backend == "reference":
        return _reference
    if backend == "native":
        reason = native.unsupported_reason(op, x, *params)
        if reason is not None:
            raise ValueError(f"backend='native' cannot run {op} here: {reason}")
        return native
    if backend == "triton":
        reason = _triton_unsupported(op, x, params)
        if reason is not None:
            raise ValueError(f"backend='triton' cannot run {op} here: {reason}")
        return _triton_backend()[0]
    # auto: Triton on CUDA tensors, torch's kernels where exact, the reference math otherwise.
    if x.is_cuda and _triton_unsupported(op, x, params) is None:
        return _triton_backend()[0]
    if native.unsupported_reason(op, x, *params) is None:
        return native
    return _reference
