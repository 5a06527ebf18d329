"""Validation of user input: every failure is a clear exception that names the offending values.

The bottom of the package: it imports torch alone, so the functional API, the modules, the model
tools and ``ops/distributed.py`` (which checks each rank's input after the gather, so that every
rank raises together) all share these checks without importing each other.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

# The activations the fused norm + activation ops implement (ops/fused.py, the Triton kernels).
ACTIVATIONS = ("none", "relu", "silu", "gelu")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FLOAT_DTYPE_SET = frozenset(FLOAT_DTYPES)


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# Statistics are float32 at least: a smaller eps rounds to 0 there (1e-46), or is subnormal and flushed
# to 0 by kernels that flush denormals, and a constant channel then divides 0 by 0.
_EPS_MIN = torch.finfo(torch.float32).tiny


def shown(value) -> str:
    """``repr(value)`` for an error message; an integer too long to print (Python refuses more than 4300
    digits) is described by its size instead."""
    try:
        return repr(value)
    except ValueError:
        return f"an integer of {value.bit_length()} bits"


def real_as_float(name: str, value, requirement: str) -> float:
    """``value`` as a float, for a real (non-bool) number; anything else, or an integer too large for a
    float (``10**400``), is a ``ValueError`` naming ``name``, the value and the ``requirement``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {requirement}, got {shown(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be {requirement}, got {shown(value)} (too large for a float)") from None


def eps(value) -> float:
    # eps > 0: with 0 a constant channel divides 0 by 0.
    # `type(...) is float` first: the numbers.Real ABC check costs ~0.5 us on every functional call.
    number = value if type(value) is float else real_as_float("eps", value, "a finite number > 0")
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {shown(value)}")
    if number < _EPS_MIN:
        raise ValueError(f"eps={value!r} is below float32's smallest normal number {_EPS_MIN!r}: statistics are "
                         f"computed in float32 (or float64), where it is 0 or subnormal (flushed to 0), so a "
                         f"constant channel would divide 0 by 0")
    return number


def parameter_dtype(owner: str, dtype) -> None:
    """Parameters and buffers of a norm are floating point: integer or complex ones would be truncated or
    mixed into the statistics silently."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"{owner}: dtype must be a floating dtype (float16, bfloat16, float32, float64) or None, "
                        f"got {dtype}")


def renorm_limits(rmax, dmax, warmup_steps) -> tuple[float, float, int]:
    rmax_f = real_as_float("rmax", rmax, "a finite number >= 1")
    if not math.isfinite(rmax_f) or rmax_f < 1:
        raise ValueError(f"rmax must be a finite number >= 1, got {rmax!r}")
    dmax_f = real_as_float("dmax", dmax, "a finite number >= 0")
    if not math.isfinite(dmax_f) or dmax_f < 0:
        raise ValueError(f"dmax must be a finite number >= 0, got {dmax!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {shown(warmup_steps)}")
    return rmax_f, dmax_f, int(warmup_steps)


def momentum(value, allow_none: bool = True) -> Optional[float]:
    if value is None and allow_none:
        return None
    # The range test compares exactly, so an integer too large for a float (10**400) fails it, not float().
    if ((type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)))
            or not 0.0 <= value <= 1.0):
        raise ValueError(f"momentum must be a number in [0, 1]{' or None' if allow_none else ''}, got "
                         f"{shown(value)}")
    return float(value)


def channel_axis_arg(value) -> int:
    if type(value) is int:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"channel_axis must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def groups_divide(num_groups: int, num_channels: int) -> None:
    if num_channels % num_groups != 0:
        raise ValueError(
            f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")


def input_tensor(x, channel_axis: int, op: str, batch_axis_needed: bool = False) -> int:
    """Check ``x`` is a floating tensor of rank >= 2; return ``channel_axis`` as a non-negative axis."""
    # Runs on every module call: each tensor attribute is read once (~50 ns a read).
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPE_SET:
        raise TypeError(f"{op}: input must be a floating tensor (float16, bfloat16, float32, float64), "
                        f"got dtype {x.dtype}")
    ndim = x.ndim
    if ndim < 2:
        raise ValueError(f"{op}: input must have rank >= 2 (batch, channels, ...), got shape {tuple(x.shape)}")
    axis = channel_axis if type(channel_axis) is int else channel_axis_arg(channel_axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: channel_axis {channel_axis} is out of range for input of rank {ndim} "
                         f"(shape {tuple(x.shape)})")
    axis %= ndim
    if batch_axis_needed and axis == 0:
        not_batch_axis(op, x, axis, channel_axis)
    return axis


def not_batch_axis(op: str, x: torch.Tensor, axis: int, given: int) -> None:
    """Per-sample statistics (group, instance) need axis 0 as the batch axis (``given``: the axis as passed)."""
    if axis == 0:
        raise ValueError(f"{op}: statistics are per sample along axis 0, so channel_axis cannot be 0 "
                         f"(got channel_axis={given} for shape {tuple(x.shape)})")


def per_channel(op: str, x: torch.Tensor, axis: int, **tensors) -> int:
    """Check every per-channel tensor has one entry per channel of ``x``; return the channel count."""
    got = x.shape[axis]
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(f"{op}: {name} must be 1-D with one entry per channel, got shape {tuple(t.shape)}")
        if t.shape[0] != got:
            raise ValueError(f"{op}: expected input with {t.shape[0]} channels on axis {axis} (the size of "
                             f"{name}), got {got} channels (input shape {tuple(x.shape)})")
    return got


def channel_count(op: str, x, channel_axis: int, expected: int) -> int:
    """A module knows its channel count even without affine parameters or running buffers."""
    axis = input_tensor(x, channel_axis, op)
    if x.shape[axis] != expected:
        raise ValueError(f"{op}: expected input with {expected} channels on axis {axis}, got "
                         f"{x.shape[axis]} channels (input shape {tuple(x.shape)})")
    return axis


def more_than_one_value(op: str, x: torch.Tensor, n: int, what: str) -> None:
    """Batch statistics of a single value have zero variance: refuse them in training, as PyTorch."""
    if x.numel() > 0 and n <= 1:
        raise ValueError(f"{op}: expected more than 1 value per {what} when training, got input "
                         f"shape {tuple(x.shape)} ({n} value per {what})")


def paired_running_stats(op: str, running_mean, running_var) -> None:
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must both be tensors or both be None")


def running_buffers(op: str, running_mean, running_var, num_batches_tracked, updated: bool) -> None:
    """Check the running statistics before anything is written to them (call after ``per_channel``).

    Floating point (an integer buffer would be truncated, or silently never updated); not requiring
    grad (running statistics are not differentiable: torch's ``F.batch_norm`` refuses them in training
    and eval, and so does every backend here); when ``updated`` (the call writes them in place),
    each channel its own memory (an expanded buffer would fold every channel into one value).
    ``num_batches_tracked``: None or a one-element integer or floating tensor, incremented in place.
    """
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is None:
            continue
        if not t.dtype.is_floating_point:
            raise TypeError(f"{op}: {name} must be a floating tensor (float16, bfloat16, float32, float64), got "
                            f"dtype {t.dtype}: an integer buffer cannot hold the running statistics")
        if t.requires_grad:
            raise ValueError(f"{op}: {name} requires grad, but running statistics are not differentiable (as in "
                             f"torch.nn.functional.batch_norm); pass {name}.detach() or a buffer without "
                             f"requires_grad")
        if updated and t.shape[0] > 1 and t.stride(0) == 0:
            raise ValueError(f"{op}: {name} is expanded (stride 0 over its {t.shape[0]} channels), so the in-place "
                             f"update would write every channel's statistic into one value; pass {name}.clone()")
    if num_batches_tracked is None:
        return
    if not isinstance(num_batches_tracked, torch.Tensor):
        raise TypeError(f"{op}: num_batches_tracked must be a one-element tensor (as nn.BatchNorm's 0-dim "
                        f"torch.long buffer) or None, got {type(num_batches_tracked).__name__} "
                        f"{shown(num_batches_tracked)}: it is incremented in place")
    dtype = num_batches_tracked.dtype
    if (num_batches_tracked.numel() != 1 or dtype is torch.bool or dtype.is_complex
            or num_batches_tracked.requires_grad):
        raise TypeError(f"{op}: num_batches_tracked must be a one-element integer or floating tensor without "
                        f"requires_grad (nn.BatchNorm's is a 0-dim torch.long), got shape "
                        f"{tuple(num_batches_tracked.shape)} dtype {dtype} "
                        f"requires_grad={num_batches_tracked.requires_grad}")


def stats_mask(op: str, x: torch.Tensor, axis: int, mask) -> torch.Tensor:
    """Validate a statistics mask (True = valid) and return it with the input's rank, size 1 on the channel axis.

    Accepted: the input's shape without the channel axis (rank ``x.ndim - 1``), or the input's rank
    with size 1 on the channel axis; either broadcastable to the input.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{op}: mask must be a bool torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{op}: mask must have dtype torch.bool (True = valid element), got {mask.dtype}")
    if mask.device != x.device:
        raise ValueError(f"{op}: mask is on {mask.device} but input is on {x.device}")
    without_channel = tuple(s for d, s in enumerate(x.shape) if d != axis)
    if mask.ndim == x.ndim - 1:
        full = mask.unsqueeze(axis)
    elif mask.ndim == x.ndim and mask.shape[axis] == 1:
        full = mask
    else:
        raise ValueError(f"{op}: mask shape {tuple(mask.shape)} does not fit input shape {tuple(x.shape)} with "
                         f"channel_axis={axis}: give the input's shape without the channel axis "
                         f"{without_channel} (or a shape broadcastable to it), or the input's rank with size 1 "
                         f"on the channel axis")
    target = list(x.shape)
    target[axis] = 1
    try:
        fits = torch.broadcast_shapes(tuple(full.shape), tuple(target)) == tuple(target)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"{op}: mask shape {tuple(mask.shape)} is not broadcastable to the input shape without "
                         f"the channel axis {without_channel} (input shape {tuple(x.shape)}, "
                         f"channel_axis={axis})")
    return full


def activation(op: str, value) -> str:
    if value is None:
        return "none"
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise ValueError(f"{op}: unknown activation {value!r}; choose one of {', '.join(map(repr, ACTIVATIONS))}")
    return value


def residual(op: str, x: torch.Tensor, value) -> None:
    """The residual is added to the normalized output before the activation: same shape, dtype and device."""
    if value is None:
        return
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: residual must be a torch.Tensor or None, got {type(value).__name__}")
    if value.shape != x.shape:
        raise ValueError(f"{op}: residual shape {tuple(value.shape)} must equal the input shape {tuple(x.shape)}")
    if value.dtype != x.dtype or value.device != x.device:
        raise TypeError(f"{op}: residual must have the input's dtype and device ({x.dtype} on {x.device}), "
                        f"got {value.dtype} on {value.device}")
