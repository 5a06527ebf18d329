"""Delegation to torch's own kernels (``F.batch_norm``, ``F.instance_norm``, ``F.group_norm``).

Those kernels want the channel on axis 1, so the channel axis is moved there as a view. The one
semantic we add is DESIGN §3's non-finite rule: torch updates running statistics in place, so it
updates copies, which are committed only when finite.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .layout import match_layout
from .running_stats import commit_if_finite, effective_momentum

_OPS = ("channel_norm", "instance_norm", "group_norm")


def unsupported_reason(op: str, x: torch.Tensor, *params: Optional[torch.Tensor]) -> Optional[str]:
    """Why torch's kernel cannot compute exactly this call, or None when it can."""
    if op not in _OPS:
        return f"no native kernel for {op}"
    for p in params:
        if p is not None and p.dtype not in (x.dtype, torch.float32):
            return f"parameter dtype {p.dtype} does not match input dtype {x.dtype}"
    if op == "instance_norm" and x.ndim < 3:
        return f"torch's instance_norm needs a spatial axis, got input of rank {x.ndim}"
    return None


def _run_tracked(fn, running_mean, running_var, num_batches_tracked, momentum):
    """Call ``fn(mean_buffer, var_buffer, momentum)`` on copies of the buffers; commit if finite."""
    m = effective_momentum(momentum, num_batches_tracked)
    new_mean, new_var = running_mean.clone(), running_var.clone()
    y = fn(new_mean, new_var, m)
    commit_if_finite(running_mean, running_var, num_batches_tracked, new_mean, new_var)
    return y


def channel_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                 num_batches_tracked: Optional[torch.Tensor] = None) -> torch.Tensor:
    xm = x.movedim(channel_axis, 1)
    if training and running_mean is not None:
        y = _run_tracked(lambda rm, rv, m: F.batch_norm(xm, rm, rv, weight, bias, True, m, eps),
                         running_mean, running_var, num_batches_tracked, momentum)
    elif training:
        y = F.batch_norm(xm, None, None, weight, bias, True, 0.0, eps)
    else:
        y = F.batch_norm(xm, running_mean, running_var, weight, bias, False, 0.0, eps)
    return match_layout(y.movedim(1, channel_axis), x)


def instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, channel_axis,
                  num_batches_tracked: Optional[torch.Tensor] = None) -> torch.Tensor:
    xm = x.movedim(channel_axis, 1)
    if use_input_stats and running_mean is not None:
        y = _run_tracked(lambda rm, rv, m: F.instance_norm(xm, rm, rv, weight, bias, True, m, eps),
                         running_mean, running_var, num_batches_tracked, momentum)
    else:
        y = F.instance_norm(xm, running_mean, running_var, weight, bias, use_input_stats, 0.0, eps)
    return match_layout(y.movedim(1, channel_axis), x)


def group_norm(x, num_groups, weight, bias, eps, channel_axis) -> torch.Tensor:
    y = F.group_norm(x.movedim(channel_axis, 1), num_groups, weight, bias, eps)
    return match_layout(y.movedim(1, channel_axis), x)
