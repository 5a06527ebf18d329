"""Backend choice: the one place that decides which backend runs a call.

* ``Backend``: the protocol every backend object implements (``reference.REFERENCE``,
  ``native.NATIVE``, ``triton.backend.TRITON``): the core norms, their fused norm + residual +
  activation forms, and ``unsupported_reason`` (why it cannot compute exactly this call, or None).
* ``OP_TABLE``: every op of the library and the backends that implement it, in the order ``"auto"``
  tries them. Ops only the reference math implements (masked statistics, the batch-robust
  variants, synchronized statistics) list ``"reference"`` alone, ``layer_norm_2d`` has no Triton
  kernel; ``require`` refuses any name not listed.
* ``TRITON_ON_CUDA``: the classes of calls for which committed GPU results (``benchmarks/results/``)
  show the Triton kernels correct and at least as fast as torch's eager kernels. ``"auto"`` sends a
  CUDA call to Triton only when its class is in this table; everything else runs torch's kernels
  (where they compute what the reference does) or the reference math. Naming a backend explicitly
  always runs that backend, or is a ``ValueError`` that says why it cannot.

Resolution for the common call costs a few attribute reads: no imports, no ``getattr`` probing.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Protocol

import torch

from .native import NATIVE
from .reference import REFERENCE

BACKENDS = ("auto", "reference", "native", "triton")
_BACKEND_SET = frozenset(BACKENDS)


class Backend(Protocol):
    """What a backend provides. Inputs are validated before they reach it; ``channel_axis`` is non-negative."""

    name: str

    def unsupported_reason(self, op: str, x: torch.Tensor, channel_axis: int,
                           params: tuple[Optional[torch.Tensor], ...]) -> Optional[str]:
        """Why this backend cannot compute exactly ``op`` on ``x`` (with ``params``: weight, bias, running
        statistics), or None when it can."""

    def inexact_reason(self, op: str, x: torch.Tensor, channel_axis: int,
                       params: tuple[Optional[torch.Tensor], ...], training: bool = True,
                       num_groups: Optional[int] = None) -> Optional[str]:
        """Why this backend, though it can run the call, would not compute what the reference does
        (``"auto"`` then picks another; naming the backend still runs it), or None. ``training``:
        whether the call computes batch statistics (False: it normalizes with given statistics);
        ``num_groups``: the number of groups of a group op (None for the other ops)."""

    def channel_norm(self, x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                     num_batches_tracked=None) -> torch.Tensor: ...

    def instance_norm(self, x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                      channel_axis, num_batches_tracked=None) -> torch.Tensor: ...

    def group_norm(self, x, num_groups, weight, bias, eps, channel_axis) -> torch.Tensor: ...

    def channel_norm_act(self, x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                         activation="none", residual=None, num_batches_tracked=None) -> torch.Tensor: ...

    def group_norm_act(self, x, num_groups, weight, bias, eps, channel_axis, activation="none",
                       residual=None) -> torch.Tensor: ...

    def layer_norm_2d(self, x, weight, bias, eps, channel_axis) -> torch.Tensor:
        """Per position over the channels (mean and biased variance over ``channel_axis`` alone); the
        reference and native backends only."""


class OpSpec(NamedTuple):
    """An op's entry in the table: the backends implementing it (auto's order) and, for ops with one
    implementation, what other backends are told they cannot do."""

    backends: tuple[str, ...]
    refusal: str = ""


_EVERY = ("triton", "native", "reference")
_ONLY_REFERENCE = ("reference",)
_NO_TRITON = ("native", "reference")

OP_TABLE: dict[str, OpSpec] = {
    "channel_norm": OpSpec(_EVERY),
    "instance_norm": OpSpec(_EVERY),
    "group_norm": OpSpec(_EVERY),
    "channel_norm_act": OpSpec(_EVERY),
    "group_norm_act": OpSpec(_EVERY),
    # Statistics per position over the channels (timm's LayerNorm2d): torch's layer_norm or the reference.
    "layer_norm_2d": OpSpec(_NO_TRITON, "run layer_norm_2d (statistics per position over the channels)"),
    # Each virtual batch is a plain channel_norm call, resolved on its own.
    "ghost_norm": OpSpec(_EVERY),
    "masked_channel_norm": OpSpec(_ONLY_REFERENCE, "compute masked statistics"),
    "batch_renorm": OpSpec(_ONLY_REFERENCE, "run batch_renorm"),
    "filter_response_norm": OpSpec(_ONLY_REFERENCE, "run filter_response_norm"),
    "evonorm_s0": OpSpec(_ONLY_REFERENCE, "run evonorm_s0"),
    "evonorm_b0": OpSpec(_ONLY_REFERENCE, "run evonorm_b0"),
    # The synchronized path is torch collectives around reference math (ops/distributed.py).
    "sync_channel_norm": OpSpec(_ONLY_REFERENCE, "synchronize statistics across processes"),
}


# ---------------------------------------------------------------- GPU dispatch by evidence

class CallClass(NamedTuple):
    """A class of calls as the kernel benchmark groups them: norm ("channel" | "group"), layout
    ("nchw" | "nhwc" | "nc") and dtype ("fp32" | "bf16" | "fp16")."""

    norm: str
    layout: str
    dtype: str


# Derived from the committed GPU results under benchmarks/results/ by ``policy_from_results``
# (tests/ops/test_dispatch.py checks that this table equals that derivation). No GPU result is
# committed yet, so every CUDA call runs torch's kernels under "auto".
TRITON_ON_CUDA: frozenset[CallClass] = frozenset()

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_OP_NORM = {"channel_norm": "channel", "channel_norm_act": "channel", "group_norm": "group",
            "group_norm_act": "group"}
# The benchmark's "layer" rows are group_norm calls with one group on (tokens, C) input.
_BENCH_NORM = {"channel": "channel", "group": "group", "layer": "group"}


def call_class(op: str, x: torch.Tensor, channel_axis: int) -> Optional[CallClass]:
    """The benchmark class of this call, or None when the benchmark measures no such call."""
    norm, dtype = _OP_NORM.get(op), _DTYPE_NAMES.get(x.dtype)
    if norm is None or dtype is None:
        return None
    if x.ndim == 2:
        layout = "nc"
    elif x.ndim == 4 and channel_axis == 1 and x.is_contiguous():
        layout = "nchw"
    elif x.ndim == 4 and channel_axis == 1 and x.is_contiguous(memory_format=torch.channels_last):
        layout = "nhwc"
    else:
        return None
    return CallClass(norm, layout, dtype)


def policy_from_results(rows) -> frozenset[CallClass]:
    """Classes where every GPU benchmark row shows Triton correct and >= 1.0x torch eager.

    ``rows``: dicts as ``benchmarks/bench_kernels.py`` writes them (``norm``, ``layout``, ``dtype``,
    ``speedup_vs_eager``), plus ``correct`` (True when the Triton output matched torch's in that
    run). A row without ``correct: True`` is no evidence, and one failing row rules its class out.
    """
    passed: dict[CallClass, bool] = {}
    for row in rows:
        norm = _BENCH_NORM.get(row.get("norm"))
        if norm is None:
            continue
        key = CallClass(norm, row.get("layout"), row.get("dtype"))
        speedup = row.get("speedup_vs_eager")
        good = row.get("correct") is True and isinstance(speedup, (int, float)) and speedup >= 1.0
        passed[key] = passed.get(key, True) and good
    return frozenset(k for k, ok in passed.items() if ok)


# ---------------------------------------------------------------- resolution

def check_backend_name(backend: str) -> None:
    if backend not in _BACKEND_SET:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(map(repr, BACKENDS))}")


def require(op: str, backend: str) -> None:
    """Refuse, with the reason, a backend name that ``op`` can never run on (checked at construction too)."""
    check_backend_name(backend)
    spec = OP_TABLE[op]
    if backend != "auto" and backend not in spec.backends:
        if spec.backends == _ONLY_REFERENCE:
            raise ValueError(f"backend={backend!r} cannot {spec.refusal}: only the reference math implements it; "
                             f"use backend='auto' or 'reference'")
        names = ", ".join(repr(b) for b in spec.backends)
        raise ValueError(f"backend={backend!r} cannot {spec.refusal}: only {names} implement it; "
                         f"use backend='auto' or one of those")


def _triton():
    """The Triton backend object, or the reason it cannot be used in this process."""
    try:
        # An import statement, not importlib: torch.compile traces through it.
        from .triton.backend import TRITON
        return TRITON, None
    except ImportError as exc:  # triton missing, or the backend not built in this version
        return None, f"the triton backend cannot be imported ({exc})"


def _named(backend: str, op: str, x: torch.Tensor, channel_axis: int, params) -> Backend:
    if backend == "reference":
        return REFERENCE
    if backend == "native":
        impl, reason = NATIVE, None
    else:
        # Modules check their backend at construction only: a name assigned later is checked here.
        check_backend_name(backend)
        impl, reason = _triton()
    if reason is None:
        reason = impl.unsupported_reason(op, x, channel_axis, params)
    if reason is not None:
        raise ValueError(f"backend={backend!r} cannot run {op} here: {reason}")
    return impl


def resolve(backend: str, op: str, x: torch.Tensor, channel_axis: int,
            params: tuple[Optional[torch.Tensor], ...] = (), training: bool = True,
            num_groups: Optional[int] = None) -> Backend:
    """The backend that runs ``op`` on ``x`` (``params``: weight, bias, running statistics;
    ``training``: whether the call computes batch statistics; ``num_groups``: a group op's number
    of groups).

    ``backend`` must already be a known name (``check_backend_name``) and ``op`` one that every
    backend implements (the core norms and their fused forms), or ``layer_norm_2d`` after ``require``
    refused ``"triton"`` for it.
    """
    if backend != "auto":
        return _named(backend, op, x, channel_axis, params)
    if x.is_cuda and TRITON_ON_CUDA and call_class(op, x, channel_axis) in TRITON_ON_CUDA:
        impl, reason = _triton()
        if (reason is None and impl.unsupported_reason(op, x, channel_axis, params) is None
                and impl.inexact_reason(op, x, channel_axis, params, training, num_groups) is None):
            return impl
    if (NATIVE.unsupported_reason(op, x, channel_axis, params) is None
            and NATIVE.inexact_reason(op, x, channel_axis, params, training, num_groups) is None):
        return NATIVE
    return REFERENCE
