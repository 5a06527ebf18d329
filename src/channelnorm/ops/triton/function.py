"""The eager path: a plain ``torch.autograd.Function`` around the host forward/backward.

Eager calls skip ``torch.library`` dispatch (tens of microseconds per call on the host); under
``torch.compile`` the backend uses the custom ops of ``custom_ops`` instead, which tracing needs.
Both call the same host functions, so they compute the same thing; the eager path also fuses the
running-statistics update into the statistics pass (a custom op that declares no mutation cannot).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from ..layout import match_layout
from . import backward, forward, plan


def dense(t: Optional[Tensor]) -> Optional[Tensor]:
    """A per-channel vector the kernels can read as ``ptr + c`` (weight[::2], an expanded ones(1): copied)."""
    return t if t is None or t.is_contiguous() else t.contiguous()


def on_device_of(t: Tensor):
    """Triton launches on the current CUDA device: make it the tensor's when it is not already."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


class NormFunction(torch.autograd.Function):
    """y = norm(x) (+ residual, activation); non-tensor configuration in ``cfg``.

    ``cfg`` = (num_groups, per_sample, use_batch_stats, eps, channel_axis, activation, plan). ``sink``,
    when a list, receives the fp32 statistics buffer ``[3, rows*G]`` (pivot, mean - pivot, var).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, cfg, update, sink):
        num_groups, per_sample, use_batch_stats, eps, channel_axis, activation, cp = cfg
        with on_device_of(x):
            y, stats = forward.norm_forward(x, weight, bias, residual, running_mean, running_var, num_groups,
                                            per_sample, use_batch_stats, eps, channel_axis, activation, update, cp)
        ctx.save_for_backward(x, weight, bias, residual, stats)
        ctx.cfg = cfg
        if sink is not None:
            sink.append(stats)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, residual, stats = ctx.saved_tensors
        num_groups, per_sample, use_batch_stats, eps, channel_axis, activation, cp = ctx.cfg
        wants = ctx.needs_input_grad
        need_dres = residual is not None and wants[3]
        dy = match_layout(dy, x)  # the kernels address dy with x's strides
        with on_device_of(x):
            dx, dweight, dbias, dres = backward.norm_backward(
                dy, x, weight, bias, residual, stats, num_groups, per_sample, use_batch_stats, eps, channel_axis,
                activation, need_dres, cp)
        dweight = dweight.to(weight.dtype) if weight is not None and wants[1] else None
        dbias = dbias.to(bias.dtype) if bias is not None and wants[2] else None
        return dx if wants[0] else None, dweight, dbias, dres, None, None, None, None, None


def norm(x, weight, bias, residual, running_mean, running_var, num_groups: int, per_sample: bool,
         use_batch_stats: bool, eps: float, channel_axis: int, activation: int,
         update: Optional[forward.RunningUpdate] = None, sink: Optional[list] = None,
         cp: Optional[plan.CallPlan] = None) -> Tensor:
    """Eager entry point: the cached plan (looked up unless given), then one autograd node."""
    if cp is None:
        cp = plan.call_plan(x, channel_axis, num_groups, per_sample and use_batch_stats)
    weight, bias = dense(weight), dense(bias)
    if not use_batch_stats:
        running_mean, running_var = dense(running_mean), dense(running_var)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, residual)):
        cfg = (num_groups, per_sample, use_batch_stats, eps, channel_axis, activation, cp)
        return NormFunction.apply(x, weight, bias, residual, running_mean, running_var, cfg, update, sink)
    # Nothing to differentiate (inference): no autograd node at all.
    with on_device_of(x):
        y, stats = forward.norm_forward(x, weight, bias, residual, running_mean, running_var, num_groups, per_sample,
                                        use_batch_stats, eps, channel_axis, activation, update, cp)
    if sink is not None:
        sink.append(stats)
    return y
