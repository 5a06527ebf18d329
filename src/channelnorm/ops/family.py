"""Each norm's semantics composed from two primitives a backend provides.

A backend module with ``normalize_batch`` and ``normalize_running`` (see ``reference``) gets the
whole family from here: when batch statistics are used, how running statistics are updated, and
how the output keeps the input's memory layout.
"""
from __future__ import annotations

from typing import Optional

import torch

from .layout import elements_per_statistic, match_layout
from .moments import update_running_stats
from .scope import channel_scope, group_scope, instance_scope


def channel_norm(prims, x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                 num_batches_tracked: Optional[torch.Tensor] = None) -> torch.Tensor:
    if not training:
        y = prims.normalize_running(x, running_mean, running_var, weight, bias, eps, channel_axis)
        return match_layout(y, x)
    scope = channel_scope(x.shape[channel_axis])
    y, mean, var = prims.normalize_batch(x, scope, channel_axis, eps, weight, bias)
    if running_mean is not None:
        n = elements_per_statistic(x.shape, scope.num_groups, scope.per_sample)
        update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, n, momentum)
    return match_layout(y, x)


def instance_norm(prims, x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                  channel_axis, num_batches_tracked: Optional[torch.Tensor] = None) -> torch.Tensor:
    if not use_input_stats:
        y = prims.normalize_running(x, running_mean, running_var, weight, bias, eps, channel_axis)
        return match_layout(y, x)
    scope = instance_scope(x.shape[channel_axis])
    y, mean, var = prims.normalize_batch(x, scope, channel_axis, eps, weight, bias)
    if running_mean is not None:
        # As torch.nn.InstanceNorm: blend the batch average of the per-instance statistics.
        n = elements_per_statistic(x.shape, scope.num_groups, scope.per_sample)
        update_running_stats(running_mean, running_var, num_batches_tracked, mean.mean(0), var.mean(0), n, momentum)
    return match_layout(y, x)


def group_norm(prims, x, num_groups, weight, bias, eps, channel_axis) -> torch.Tensor:
    y, _, _ = prims.normalize_batch(x, group_scope(num_groups), channel_axis, eps, weight, bias)
    return match_layout(y, x)
