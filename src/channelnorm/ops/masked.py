"""Channel norm with masked statistics (padding excluded), reference math.

``mask`` here is already validated and shaped like the input with size 1 on the channel axis
(True = valid). Statistics are the mean and biased variance over the valid elements of each
channel; every element, valid or not, is normalized with them. Non-finite padding (inf, NaN) reaches
neither the statistics nor any gradient: the statistics select valid values with ``torch.where``,
and a non-finite padded element's output (itself inf or NaN) is computed from detached statistics
and affine, so no product with inf or NaN enters the backward of the valid elements, the weight or
the bias.
"""
from __future__ import annotations

import torch

from .layout import match_layout, stats_dtype
from .reference import affine, normalize_running
from .moments import moments, reduce_dims, update_running_stats


def valid_count(mask: torch.Tensor, input_shape: torch.Size, channel_axis: int) -> torch.Tensor:
    """Valid elements per channel (the same for every channel, since the mask has no channel extent)."""
    shape = list(input_shape)
    shape[channel_axis] = 1
    return mask.expand(shape).sum()


def masked_stats(x: torch.Tensor, mask: torch.Tensor, channel_axis: int, count: int):
    """Per-channel mean and biased variance over the valid elements, shaped to broadcast against x."""
    xf = x.to(stats_dtype(x.dtype))
    mean, var = moments(xf, reduce_dims(x.ndim, channel_axis), mask, count)
    return xf, mean, var


def channel_norm(x, mask, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                 count: int, num_batches_tracked=None) -> torch.Tensor:
    if not training:
        return match_layout(normalize_running(x, running_mean, running_var, weight, bias, eps, channel_axis), x)
    xf, mean, var = masked_stats(x, mask, channel_axis, count)
    invstd = torch.rsqrt(var + eps)
    bad = ~(mask | torch.isfinite(xf))  # non-finite padding
    safe = torch.where(bad, xf.new_zeros(()), xf)
    y = affine((safe - mean) * invstd, weight, bias, channel_axis)
    detached = [None if t is None else t.detach() for t in (weight, bias)]
    y_bad = affine((xf - mean.detach()) * invstd.detach(), *detached, channel_axis)
    y = torch.where(bad, y_bad, y).to(x.dtype)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, num_batches_tracked, mean.reshape(-1), var.reshape(-1),
                             count, momentum)
    return match_layout(y, x)
