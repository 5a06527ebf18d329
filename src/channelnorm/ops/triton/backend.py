"""The Triton backend as ``ops.dispatch`` sees it: ``unsupported_reason`` and the family's entry points.

Signatures match ``ops.native``; the fused variants add ``activation`` and ``residual``. Inputs are
taken in their own layout (NCHW, channels_last, channel-last views) without copies; a stride pattern
the kernels cannot address as one strided (B, C, S) view (e.g. a channel axis in the middle of a
per-sample norm's spatial axes, or an overlapping/expanded tensor) is first copied to a contiguous
channels-first tensor, and the output is given back in the input's layout.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..layout import elements_per_statistic, match_layout
from ..moments import effective_momentum
from . import norm, plan

_OPS = ("channel_norm", "instance_norm", "group_norm", "channel_norm_act", "group_norm_act")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreter_on() -> bool:
    """True when Triton's CPU interpreter runs the kernels: TRITON_INTERPRET=1 was set when they were
    built (import time) and still is (unsetting it turns CPU support off again)."""
    from triton.runtime.interpreter import InterpretedFunction
    built_interpreted = isinstance(norm.apply_kernel, InterpretedFunction)
    return built_interpreted and os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def unsupported_reason(op: str, x: torch.Tensor, *params: Optional[torch.Tensor]) -> Optional[str]:
    """Why the Triton kernels cannot compute exactly this call, or None when they can."""
    if op not in _OPS:
        return f"no Triton kernel for {op}"
    if not hasattr(torch.library, "custom_op"):
        return f"torch {torch.__version__} lacks torch.library.custom_op (needs torch >= 2.4)"
    if x.device.type == "cuda" and interpreter_on():
        return "the Triton interpreter is on (TRITON_INTERPRET=1), which runs kernels on CPU tensors only"
    if x.device.type != "cuda" and not interpreter_on():
        return (f"input is on {x.device.type}; the Triton kernels run on CUDA tensors (for testing on CPU, set "
                f"TRITON_INTERPRET=1 before triton is imported)")
    if x.dtype not in _KERNEL_DTYPES:
        return f"input dtype {x.dtype}: the kernels take float32/bfloat16/float16 (use backend='reference' for float64)"
    for p in params:
        if p is None:
            continue
        if p.device != x.device:
            return f"a parameter is on {p.device}, the input on {x.device}"
        if p.dtype not in _KERNEL_DTYPES:
            return f"parameter dtype {p.dtype}: the kernels take float32/bfloat16/float16 parameters"
    return None


def _run(x, weight, bias, residual, running_mean, running_var, num_groups, per_sample, use_batch_stats, eps,
         channel_axis, activation, update=None, sink=None):
    """Lay out, run the kernels, give y back in x's layout; returns y.

    Eager: the plain autograd Function (``norm.eager_norm``), with ``update`` (a
    ``norm.RunningUpdate``) fused into the statistics pass and the fp32 statistics buffer
    ``[3, rows*G]`` (pivot, mean - pivot, var) appended to ``sink``.
    Under torch.compile: the custom ops, and the running update as its own op.
    """
    cp = plan.call_plan(x, channel_axis, num_groups, per_sample and use_batch_stats)
    if cp is not None and cp.dense:
        xk, axis, res = x, channel_axis, residual
        if res is not None and res.stride() != x.stride():
            res = match_layout(res, x)  # the kernels address the residual with x's strides
        moved = False
    else:  # documented copy: exotic strides become contiguous channels-first
        xk, axis, moved = x.movedim(channel_axis, 1).contiguous(), 1, True
        res = None if residual is None else match_layout(residual.movedim(channel_axis, 1), xk)
        cp = None
    act = plan.ACTIVATION_CODES[activation]
    if torch.compiler.is_compiling():
        y = _run_custom_op(xk, weight, bias, res, running_mean, running_var, num_groups, per_sample,
                           use_batch_stats, float(eps), axis, act, update, sink)
    else:
        y = norm.eager_norm(xk, weight, bias, res, None if use_batch_stats else running_mean,
                            None if use_batch_stats else running_var, num_groups, per_sample, use_batch_stats,
                            float(eps), axis, act, update, sink, cp)
    return match_layout(y.movedim(1, channel_axis), x) if moved else y


def _run_custom_op(x, weight, bias, residual, running_mean, running_var, num_groups, per_sample, use_batch_stats,
                   eps, axis, act, update, sink):
    from .custom_ops import norm_fwd, running_stats_update  # registers the ops on first use
    y, pivot, mean_shift, var = norm_fwd(x, weight, bias, residual, None if use_batch_stats else running_mean,
                                         None if use_batch_stats else running_var, num_groups, per_sample,
                                         use_batch_stats, eps, axis, act)
    if update is not None:
        running_stats_update(update.running_mean, update.running_var, update.num_batches_tracked, pivot,
                             mean_shift, var, update.unbias, update.momentum)
    if sink is not None:
        sink.append(torch.stack((pivot.reshape(-1), mean_shift.reshape(-1), var.reshape(-1))))
    return y


def _running_update(running_mean, running_var, num_batches_tracked, n: int, momentum):
    return norm.RunningUpdate(running_mean, running_var, num_batches_tracked,
                         effective_momentum(momentum, num_batches_tracked), n / (n - 1))


def channel_norm_act(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                     activation="none", residual=None, num_batches_tracked=None) -> torch.Tensor:
    C = x.shape[channel_axis]
    update = None
    if training and running_mean is not None:
        update = _running_update(running_mean, running_var, num_batches_tracked,
                                 elements_per_statistic(x.shape, C, per_sample=False), momentum)
        if not (running_mean.is_contiguous() and running_var.is_contiguous()):
            # The fused update addresses the buffers as ptr + c: update strided buffers through dense copies.
            rm, rv = running_mean.contiguous(), running_var.contiguous()
            y = _run(x, weight, bias, residual, running_mean, running_var, C, False, True, eps, channel_axis,
                     activation, update._replace(running_mean=rm, running_var=rv))
            running_mean.copy_(rm)
            running_var.copy_(rv)
            return y
    return _run(x, weight, bias, residual, running_mean, running_var, C, False, bool(training), eps, channel_axis,
                activation, update)


def channel_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                 num_batches_tracked=None) -> torch.Tensor:
    return channel_norm_act(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                            num_batches_tracked=num_batches_tracked)


def instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, channel_axis,
                  num_batches_tracked=None) -> torch.Tensor:
    C = x.shape[channel_axis]
    update_stats = bool(use_input_stats) and running_mean is not None
    sink = [] if update_stats else None
    y = _run(x, weight, bias, None, running_mean, running_var, C, True, bool(use_input_stats), eps, channel_axis,
             "none", sink=sink)
    if update_stats:
        # As torch.nn.InstanceNorm (and reference.instance_norm): blend the batch average of the instance statistics.
        pivot, mean_shift, var = sink[0].view(3, x.shape[0], C).unbind(0)
        n = elements_per_statistic(x.shape, C, per_sample=True)
        mean = (pivot + mean_shift).mean(0)
        u = _running_update(running_mean, running_var, num_batches_tracked, n, momentum)
        from .custom_ops import running_stats_update
        running_stats_update(running_mean, running_var, num_batches_tracked, mean, torch.zeros_like(mean),
                             var.mean(0), u.unbias, u.momentum)
    return y


def group_norm_act(x, num_groups, weight, bias, eps, channel_axis, activation="none", residual=None) -> torch.Tensor:
    return _run(x, weight, bias, residual, None, None, num_groups, True, True, eps, channel_axis, activation)


def group_norm(x, num_groups, weight, bias, eps, channel_axis) -> torch.Tensor:
    return group_norm_act(x, num_groups, weight, bias, eps, channel_axis)


class TritonBackend:
    """The Triton kernels as a ``dispatch.Backend`` (the fused forms are real fused kernels)."""

    name = "triton"

    def unsupported_reason(self, op, x, channel_axis, params=()) -> Optional[str]:
        return unsupported_reason(op, x, *params)

    def inexact_reason(self, op, x, channel_axis, params=(), training=True, num_groups=None) -> Optional[str]:
        return None  # tests/ops/triton/test_triton_*.py hold the kernels to the reference

    channel_norm = staticmethod(channel_norm)
    instance_norm = staticmethod(instance_norm)
    group_norm = staticmethod(group_norm)
    channel_norm_act = staticmethod(channel_norm_act)
    group_norm_act = staticmethod(group_norm_act)


TRITON = TritonBackend()
