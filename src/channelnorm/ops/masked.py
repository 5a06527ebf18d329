"""Channel norm with masked statistics (padding excluded), reference math.

``mask`` here is already validated and shaped like the input with size 1 on the channel axis
(True = valid). Statistics are the mean and biased variance over the valid elements of each
channel (training), or the running statistics (eval); every element, valid or not, is normalized
with them. Padding, whatever its values (inf, NaN, ``finfo.max``), reaches neither the statistics
nor any gradient, in both modes: the statistics select valid values with ``torch.where``, the valid
outputs are computed from the input with its padding replaced by 0, and the padded outputs from
detached statistics and affine; ``torch.where`` then picks per element, so no product of a padded
value (or of its overflow to inf) enters the backward of the valid elements, the weight or the bias.
"""
from __future__ import annotations

import torch

from .layout import channel_shape, match_layout, stats_dtype
from .reference import affine
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
    if training:
        xf, mean, var = masked_stats(x, mask, channel_axis, count)
    else:
        acc = stats_dtype(x.dtype)
        shape = channel_shape(x.ndim, channel_axis, x.shape[channel_axis])
        xf, mean, var = x.to(acc), running_mean.to(acc).view(shape), running_var.to(acc).view(shape)
    invstd = torch.rsqrt(var + eps)
    safe = torch.where(mask, xf, xf.new_zeros(()))
    y_valid = affine((safe - mean) * invstd, weight, bias, channel_axis)
    detached = [None if t is None else t.detach() for t in (weight, bias)]
    y_padding = affine((xf - mean.detach()) * invstd.detach(), *detached, channel_axis)
    y = torch.where(mask, y_valid, y_padding).to(x.dtype)
    if training and running_mean is not None:
        update_running_stats(running_mean, running_var, num_batches_tracked, mean.reshape(-1), var.reshape(-1),
                             count, momentum)
    return match_layout(y, x)
