"""Channel norm with masked statistics (padding excluded), reference math.

``mask`` here is already validated and shaped like the input with size 1 on the channel axis
(True = valid). Statistics are the mean and biased variance over the valid elements of each
channel; every element, valid or not, is normalized with them. Invalid elements are replaced by 0
before any arithmetic, so NaN/inf padding never reaches the statistics (or their gradients).
"""
from __future__ import annotations

import torch

from .layout import match_layout, stats_dtype
from .reference import affine, normalize_running
from .moments import update_running_stats


def valid_count(mask: torch.Tensor, input_shape: torch.Size, channel_axis: int) -> torch.Tensor:
    """Valid elements per channel (the same for every channel, since the mask has no channel extent)."""
    shape = list(input_shape)
    shape[channel_axis] = 1
    return mask.expand(shape).sum()


def masked_stats(x: torch.Tensor, mask: torch.Tensor, channel_axis: int, count: int):
    """Per-channel mean and biased variance over the valid elements, shaped to broadcast against x."""
    xf = x.to(stats_dtype(x.dtype))
    dims = [d for d in range(x.ndim) if d != channel_axis]
    zero = xf.new_zeros(())
    mean = torch.where(mask, xf, zero).sum(dims, keepdim=True) / count
    centered = xf - mean
    var = torch.where(mask, centered, zero).square().sum(dims, keepdim=True) / count
    return xf, mean, var


def channel_norm(x, mask, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                 count: int, num_batches_tracked=None) -> torch.Tensor:
    if not training:
        return match_layout(normalize_running(x, running_mean, running_var, weight, bias, eps, channel_axis), x)
    xf, mean, var = masked_stats(x, mask, channel_axis, count)
    y = affine((xf - mean) * torch.rsqrt(var + eps), weight, bias, channel_axis).to(x.dtype)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, num_batches_tracked, mean.reshape(-1), var.reshape(-1),
                             count, momentum)
    return match_layout(y, x)
