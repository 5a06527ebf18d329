"""Pure-torch math: the oracle every other backend is tested against (run it in float64).

Statistics are centered two-pass (mean, then the mean of squared deviations) in float32, or
float64 for float64 input, never ``E[x²] − E[x]²``. Autograd differentiates through these ops, so
``gradcheck`` applies directly.

Two primitives, ``normalize_batch`` (with the statistics of the input itself, over a ``Scope``) and
``normalize_running`` (with given statistics), make every norm of the family: the norms below say
when batch statistics are used, how the running statistics are updated, and keep the input's
memory layout.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import per_channel
from .fused import ComposedActivation
from .layout import channel_shape, elements_per_statistic, match_layout, stats_dtype
from .moments import moments, update_running_stats
from .scope import Scope, channel_scope, group_scope, instance_scope


def affine(y: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], channel_axis: int) -> torch.Tensor:
    per_channel("norm", y, channel_axis, weight=weight, bias=bias)  # a weight resized after construction
    shape = channel_shape(y.ndim, channel_axis, y.shape[channel_axis])
    if weight is not None:
        y = y * weight.to(y.dtype).view(shape)
    if bias is not None:
        y = y + bias.to(y.dtype).view(shape)
    return y


def normalize_batch(
    x: torch.Tensor,
    scope: Scope,
    channel_axis: int,
    eps: float,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalize with the statistics of ``x`` itself.

    Returns ``(y, mean, var)`` with the biased variance; ``mean``/``var`` have shape ``(N, G)`` for
    a per-sample scope and ``(G,)`` otherwise.
    """
    num_channels = x.shape[channel_axis]
    groups = scope.num_groups
    grouped = x.to(stats_dtype(x.dtype)).unflatten(channel_axis, (groups, num_channels // groups))
    dims = scope.reduce_dims(x.ndim, channel_axis)
    mean, var = moments(grouped, dims)
    y = ((grouped - mean) * torch.rsqrt(var + eps)).flatten(channel_axis, channel_axis + 1)
    y = affine(y, weight, bias, channel_axis).to(x.dtype)
    stats_shape = (x.shape[0], groups) if scope.per_sample else (groups,)
    return y, mean.reshape(stats_shape), var.reshape(stats_shape)


def normalize_running(
    x: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    channel_axis: int,
) -> torch.Tensor:
    """Normalize with given per-channel statistics (eval mode)."""
    acc = stats_dtype(x.dtype)
    shape = channel_shape(x.ndim, channel_axis, x.shape[channel_axis])
    mean = running_mean.to(acc).view(shape)
    invstd = torch.rsqrt(running_var.to(acc).view(shape) + eps)
    y = (x.to(acc) - mean) * invstd
    return affine(y, weight, bias, channel_axis).to(x.dtype)


def channel_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                 num_batches_tracked: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per channel over every other axis: the batch's statistics in training (blended into the running
    ones when given), else the running statistics."""
    if not training:
        return match_layout(normalize_running(x, running_mean, running_var, weight, bias, eps, channel_axis), x)
    scope = channel_scope(x.shape[channel_axis])
    y, mean, var = normalize_batch(x, scope, channel_axis, eps, weight, bias)
    if running_mean is not None:
        n = elements_per_statistic(x.shape, scope.num_groups, scope.per_sample)
        update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, n, momentum)
    return match_layout(y, x)


def instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, channel_axis,
                  num_batches_tracked: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per sample and channel over the spatial axes, or with the running statistics when
    ``use_input_stats`` is False."""
    if not use_input_stats:
        return match_layout(normalize_running(x, running_mean, running_var, weight, bias, eps, channel_axis), x)
    scope = instance_scope(x.shape[channel_axis])
    y, mean, var = normalize_batch(x, scope, channel_axis, eps, weight, bias)
    if running_mean is not None:
        # As torch.nn.InstanceNorm: blend the batch average of the per-instance statistics.
        n = elements_per_statistic(x.shape, scope.num_groups, scope.per_sample)
        update_running_stats(running_mean, running_var, num_batches_tracked, mean.mean(0), var.mean(0), n, momentum)
    return match_layout(y, x)


def group_norm(x, num_groups, weight, bias, eps, channel_axis) -> torch.Tensor:
    """Per sample over groups of ``C // num_groups`` channels and the spatial axes."""
    y, _, _ = normalize_batch(x, group_scope(num_groups), channel_axis, eps, weight, bias)
    return match_layout(y, x)


def layer_norm_2d(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    channel_axis: int,
) -> torch.Tensor:
    """Normalize each position (every index but the channel's) over the channels: one mean and biased
    variance per position, then the per-channel affine (timm's ``LayerNorm2d`` for any rank and axis)."""
    xf = x.to(stats_dtype(x.dtype))
    mean, var = moments(xf, [channel_axis])
    y = (xf - mean) * torch.rsqrt(var + eps)
    return match_layout(affine(y, weight, bias, channel_axis).to(x.dtype), x)


class ReferenceBackend(ComposedActivation):
    """The reference math as a ``dispatch.Backend``: it computes every call (the oracle of the others)."""

    name = "reference"

    def unsupported_reason(self, op, x, channel_axis, params=()) -> Optional[str]:
        return None

    def inexact_reason(self, op, x, channel_axis, params=(), training=True, num_groups=None) -> Optional[str]:
        return None

    channel_norm = staticmethod(channel_norm)
    instance_norm = staticmethod(instance_norm)
    group_norm = staticmethod(group_norm)
    layer_norm_2d = staticmethod(layer_norm_2d)


REFERENCE = ReferenceBackend()
