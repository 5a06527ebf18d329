"""``torch.library`` custom ops around the host functions, with fake (meta) kernels and autograd.

Used under ``torch.compile`` only (``backend`` checks ``torch.compiler.is_compiling()``); eager calls
take the plain ``torch.autograd.Function`` in ``norm.py``, which skips the dispatcher's fixed cost.
``torch.compile(fullgraph=True)`` sees two opaque ops, ``channelnorm::triton_norm_fwd`` and
``channelnorm::triton_norm_bwd``, whose output shapes come from the fake implementations; the
backward op is wired in with ``register_autograd``. One op pair serves the whole family: the scope
is ``(num_groups, per_sample)`` (channel norm: C groups, not per sample; instance: C groups per
sample; group/layer: G groups per sample). The backward op is not itself differentiable (no
double backward).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from ..layout import match_layout
from . import norm
from .norm import dense as _dense


def _on_device_of(t: Tensor):
    """Triton launches on the current CUDA device: make it the tensor's (cuda:1 inputs, ...)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _stats_shape(x: Tensor, num_groups: int, per_sample: bool, use_batch_stats: bool, channel_axis: int):
    return (x.shape[0], num_groups) if (per_sample and use_batch_stats) else (x.shape[channel_axis],)


@torch.library.custom_op("channelnorm::triton_norm_fwd", mutates_args=())
def norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor],
             running_mean: Optional[Tensor], running_var: Optional[Tensor], num_groups: int, per_sample: bool,
             use_batch_stats: bool, eps: float, channel_axis: int, activation: int
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, pivot, mean_shift, var): output and the fp32 statistics used, mean = pivot + mean_shift."""
    with _on_device_of(x):
        y, stats = norm.norm_forward(x, _dense(weight), _dense(bias), residual, _dense(running_mean),
                                     _dense(running_var), num_groups, per_sample, use_batch_stats, eps,
                                     channel_axis, activation)
    shape = _stats_shape(x, num_groups, per_sample, use_batch_stats, channel_axis)
    # Three separate outputs (custom-op outputs may not alias each other).
    return y, stats[0].view(shape), stats[1].clone().view(shape), stats[2].clone().view(shape)


@norm_fwd.register_fake
def _norm_fwd_fake(x, weight, bias, residual, running_mean, running_var, num_groups, per_sample, use_batch_stats,
                   eps, channel_axis, activation):
    shape = _stats_shape(x, num_groups, per_sample, use_batch_stats, channel_axis)
    stats = x.new_empty(shape, dtype=torch.float32)
    return torch.empty_like(x), stats, torch.empty_like(stats), torch.empty_like(stats)


@torch.library.custom_op("channelnorm::triton_norm_bwd", mutates_args=())
def norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor],
             pivot: Tensor, mean_shift: Tensor, var: Tensor, num_groups: int, per_sample: bool, use_batch_stats: bool, eps: float,
             channel_axis: int, activation: int, need_dres: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias, dresidual); dweight/dbias fp32 [C]; dresidual empty unless ``need_dres``."""
    with _on_device_of(x):
        stats = torch.stack((pivot.reshape(-1), mean_shift.reshape(-1), var.reshape(-1)))
        dx, dweight, dbias, dres = norm.norm_backward(dy, x, _dense(weight), _dense(bias), residual, stats,
                                                      num_groups, per_sample, use_batch_stats, eps, channel_axis,
                                                      activation, need_dres)
    # dweight and dbias are two halves of one buffer: custom-op outputs may not alias each other.
    return dx, dweight.clone(), dbias.clone(), dres if dres is not None else x.new_empty(0)


@norm_bwd.register_fake
def _norm_bwd_fake(dy, x, weight, bias, residual, pivot, mean_shift, var, num_groups, per_sample, use_batch_stats, eps,
                   channel_axis, activation, need_dres):
    C = x.shape[channel_axis]
    dres = torch.empty_like(x) if need_dres else x.new_empty(0)
    return (torch.empty_like(x), x.new_empty((C,), dtype=torch.float32), x.new_empty((C,), dtype=torch.float32),
            dres)


def _setup_context(ctx, inputs, output):
    (x, weight, bias, residual, running_mean, running_var, num_groups, per_sample, use_batch_stats, eps,
     channel_axis, activation) = inputs
    _, pivot, mean_shift, var = output
    ctx.save_for_backward(x, weight, bias, residual, pivot, mean_shift, var)
    ctx.config = (num_groups, per_sample, use_batch_stats, eps, channel_axis, activation)
    ctx.mark_non_differentiable(pivot, mean_shift, var)


def _backward(ctx, dy, _dpivot, _dmean_shift, _dvar):
    x, weight, bias, residual, pivot, mean_shift, var = ctx.saved_tensors
    num_groups, per_sample, use_batch_stats, eps, channel_axis, activation = ctx.config
    wants = ctx.needs_input_grad
    need_dres = residual is not None and wants[3]
    dy = match_layout(dy, x)  # the kernels address dy with x's strides
    dx, dweight, dbias, dres = norm_bwd(dy, x, weight, bias, residual, pivot, mean_shift, var, num_groups,
                                        per_sample, use_batch_stats, eps, channel_axis, activation, need_dres)
    dweight = dweight.to(weight.dtype) if weight is not None and wants[1] else None
    dbias = dbias.to(bias.dtype) if bias is not None and wants[2] else None
    return (dx if wants[0] else None, dweight, dbias, dres if need_dres else None,
            None, None, None, None, None, None, None, None)


torch.library.register_autograd("channelnorm::triton_norm_fwd", _backward, setup_context=_setup_context)


@torch.library.custom_op("channelnorm::triton_running_stats_update",
                         mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def running_stats_update(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Optional[Tensor],
                         pivot: Tensor, mean_shift: Tensor, var: Tensor, unbias: float, momentum: float) -> None:
    """The running-statistics update of docs/design.md §3.1 in one launch: blend (pivot + mean_shift,
    var * unbias) into the buffers, only if every new value is finite, and then count the batch
    (ops.moments has the same rule in torch)."""
    block = min(1024, 1 << max(0, (running_mean.numel() - 1).bit_length()))
    # The kernel addresses the buffers as ptr + c: a strided buffer is updated through a dense copy.
    rm, rv = _dense(running_mean), _dense(running_var)
    with _on_device_of(running_mean):
        norm.running_update_kernel[(1,)](
            rm, rv, num_batches_tracked if num_batches_tracked is not None else rm,
            pivot, mean_shift, var, rm.numel(), momentum, unbias,
            HAS_NBT=num_batches_tracked is not None, BLOCK=block)
    if rm is not running_mean:
        running_mean.copy_(rm)
    if rv is not running_var:
        running_var.copy_(rv)


@running_stats_update.register_fake
def _running_stats_update_fake(running_mean, running_var, num_batches_tracked, pivot, mean_shift, var, unbias,
                               momentum):
    return None
