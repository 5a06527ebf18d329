"""Functional API: validate, then dispatch to a backend. No math here."""
from __future__ import annotations

from typing import Optional

import torch

from . import _checks
from .ops import dispatch
from .ops.layout import elements_per_statistic
from .ops.reference import affine

__all__ = ["channel_norm", "group_norm", "layer_norm", "instance_norm"]


def _empty_output(x: torch.Tensor, weight, bias, axis: int) -> torch.Tensor:
    # An empty batch has no statistics; keep the graph so parameters still get (zero) gradients.
    return affine(x * 0, weight, bias, axis).to(x.dtype)


def _check_momentum_source(op, training, running_mean, momentum, num_batches_tracked):
    if training and running_mean is not None and momentum is None and num_batches_tracked is None:
        raise ValueError(f"{op}: momentum=None (cumulative average) needs num_batches_tracked")


def channel_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
    backend: str = "auto",
    *,
    num_batches_tracked: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Channel normalization (batch normalization): statistics per channel over every other axis.

    ``training=True`` normalizes with the batch's mean and biased variance and, when running
    buffers are given, updates them in place (unbiased variance; skipped for non-finite batches).
    ``training=False`` normalizes with ``running_mean``/``running_var``.
    """
    op = "channel_norm"
    dispatch.check_backend_name(backend)
    axis = _checks.input_tensor(input, channel_axis, op)
    _checks.per_channel(op, input, axis, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    _checks.paired_running_stats(op, running_mean, running_var)
    _checks.momentum(momentum)
    eps = _checks.eps(eps)
    if not training and running_mean is None:
        raise ValueError(f"{op}: training=False needs running_mean and running_var")
    _check_momentum_source(op, training, running_mean, momentum, num_batches_tracked)
    if training:
        n = elements_per_statistic(input.shape, input.shape[axis], per_sample=False) if input.shape[axis] else 0
        _checks.more_than_one_value(op, input, n, "channel")
    if input.numel() == 0:
        return _empty_output(input, weight, bias, axis)
    impl = dispatch.resolve(backend, op, input, weight, bias, running_mean, running_var)
    return impl.channel_norm(input, running_mean, running_var, weight, bias, bool(training), momentum, eps, axis,
                             num_batches_tracked=num_batches_tracked)


def instance_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor] = None,
    running_var: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    use_input_stats: bool = True,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
    backend: str = "auto",
    *,
    num_batches_tracked: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Instance normalization: statistics per sample and per channel over the spatial axes."""
    op = "instance_norm"
    dispatch.check_backend_name(backend)
    axis = _checks.input_tensor(input, channel_axis, op, batch_axis_needed=True)
    _checks.per_channel(op, input, axis, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    _checks.paired_running_stats(op, running_mean, running_var)
    _checks.momentum(momentum)
    eps = _checks.eps(eps)
    if not use_input_stats and running_mean is None:
        raise ValueError(f"{op}: use_input_stats=False needs running_mean and running_var")
    _check_momentum_source(op, use_input_stats, running_mean, momentum, num_batches_tracked)
    if use_input_stats and input.shape[axis]:
        n = elements_per_statistic(input.shape, input.shape[axis], per_sample=True)
        _checks.more_than_one_value(op, input, n, "instance (sample and channel)")
    if input.numel() == 0:
        return _empty_output(input, weight, bias, axis)
    impl = dispatch.resolve(backend, op, input, weight, bias, running_mean, running_var)
    return impl.instance_norm(input, running_mean, running_var, weight, bias, bool(use_input_stats), momentum, eps,
                              axis, num_batches_tracked=num_batches_tracked)


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Group normalization: statistics per sample over groups of channels and the spatial axes."""
    op = "group_norm"
    dispatch.check_backend_name(backend)
    axis = _checks.input_tensor(input, channel_axis, op, batch_axis_needed=True)
    num_channels = _checks.per_channel(op, input, axis, weight=weight, bias=bias)
    num_groups = _checks.positive_int("num_groups", num_groups)
    _checks.groups_divide(num_groups, num_channels)
    eps = _checks.eps(eps)
    if input.numel() == 0:
        return _empty_output(input, weight, bias, axis)
    impl = dispatch.resolve(backend, op, input, weight, bias)
    return impl.group_norm(input, num_groups, weight, bias, eps, axis)


def layer_norm(
    input: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Layer normalization over (C, spatial) per sample with a per-channel affine: ``group_norm`` with 1 group."""
    return group_norm(input, 1, weight, bias, eps, channel_axis, backend)
