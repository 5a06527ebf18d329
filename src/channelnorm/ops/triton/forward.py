"""Host side of the forward pass: statistics (split reduction + fixed-order merge) and the normalize pass.

Inputs here are already checked and laid out by ``backend``; these functions only pick tiles,
allocate and launch. Statistics and per-channel vectors are fp32 whatever the input dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _kernels, plan
from .reduce import merge_stats


def view_and_plan(x: torch.Tensor, channel_axis: int, per_sample: bool):
    view = plan.canonical_view(tuple(x.shape), x.stride(), channel_axis, per_sample)
    return view, plan.make_plan(view, plan.target_programs(x.device))


def batch_statistics(x: torch.Tensor, view: plan.CanonicalView, p: plan.Plan, num_groups: int, per_sample: bool):
    """Mean and biased variance per statistic: ``[N, G]`` per sample, else ``[1, C]`` (fp32)."""
    C = view.C
    rows = view.B * p.n_chunks
    count, mean, m2 = (torch.empty(rows, C, device=x.device, dtype=torch.float32) for _ in range(3))
    _kernels.partial_stats_kernel[(p.n_cblk * rows,)](
        x, count, mean, m2, C, view.S, view.sb, view.ss, view.sc, p.chunk_len, p.n_chunks, p.n_cblk,
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, INT64=p.int64)
    # Level 1: every chunk (and, for channel scope, every row) of a channel, in order.
    s_out, r = (view.B, p.n_chunks) if per_sample else (1, rows)
    count, mean, m2 = merge_stats(count, mean, m2, s_out, r, C, r * C, C, 1)
    cpg = C // num_groups
    if per_sample and cpg > 1:
        # Level 2: the channels of each group, viewed as [N*G, cpg, 1].
        count, mean, m2 = merge_stats(count, mean, m2, s_out * num_groups, cpg, 1, cpg, 1, 1)
    shape = (s_out, num_groups if per_sample else C)
    return mean.view(shape), (m2 / count).view(shape)


def channel_vectors(mean: torch.Tensor, var: torch.Tensor, weight: Optional[torch.Tensor],
                    bias: Optional[torch.Tensor], eps: float, num_channels: int):
    """Per-(row, channel) fp32 vectors from per-statistic ``[rows, G]`` mean/var: mean, invstd, scale, shift."""
    cpg = num_channels // mean.shape[1]
    invstd = torch.rsqrt(var + eps)
    mean_c = mean.repeat_interleave(cpg, dim=1) if cpg > 1 else mean
    invstd_c = invstd.repeat_interleave(cpg, dim=1) if cpg > 1 else invstd
    scale = invstd_c * weight.float() if weight is not None else invstd_c
    shift = (bias.float() if bias is not None else torch.zeros_like(mean_c[0])).expand_as(mean_c)
    return [t.contiguous() for t in (mean_c, invstd_c, scale, shift)]


def normalize(x, view, p, vectors, vec_sb: int, residual: Optional[torch.Tensor], activation: int) -> torch.Tensor:
    """y = act((x - mean) * scale + shift [+ residual]); y has x's strides."""
    mean_c, _, scale, shift = vectors
    y = torch.empty_like(x)
    _kernels.apply_kernel[(p.n_cblk * view.B * p.n_sblk,)](
        x, y, residual if residual is not None else x, mean_c, scale, shift,
        view.C, view.S, view.sb, view.ss, view.sc, vec_sb, p.n_sblk, p.n_cblk,
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, ACT=activation, HAS_RES=residual is not None, INT64=p.int64)
    return y


def norm_forward(x, weight, bias, residual, running_mean, running_var, num_groups: int, per_sample: bool,
                 use_batch_stats: bool, eps: float, channel_axis: int, activation: int):
    """Returns ``(y, mean, var)``; mean/var are ``[N, G]`` (per sample) or ``[C]``, fp32, biased var.

    Without batch statistics they are fp32 copies of the running statistics used.
    """
    view, p = view_and_plan(x, channel_axis, per_sample and use_batch_stats)
    if use_batch_stats:
        mean, var = batch_statistics(x, view, p, num_groups, per_sample)
    else:
        mean = running_mean.to(torch.float32, copy=True).view(1, -1)
        var = running_var.to(torch.float32, copy=True).view(1, -1)
    vec_sb = view.C if (per_sample and use_batch_stats) else 0
    vectors = channel_vectors(mean, var, weight, bias, eps, view.C)
    y = normalize(x, view, p, vectors, vec_sb, residual, activation)
    if not (per_sample and use_batch_stats):
        mean, var = mean.view(-1), var.view(-1)
    return y, mean, var
