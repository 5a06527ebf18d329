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
    return view, plan.make_plan(view, plan.target_programs(x.device), per_sample)


def _pivots(x: torch.Tensor, view: plan.CanonicalView, num_groups: int, per_sample: bool) -> torch.Tensor:
    """One element of each statistic's own data (position s = 0, first channel of the group), fp32.

    Shifting by it before summing keeps the partial sums small when the mean is large.
    """
    cpg = view.C // num_groups
    if per_sample:
        picked = torch.as_strided(x, (view.B, num_groups), (view.sb, cpg * view.sc), x.storage_offset())
    else:
        picked = torch.as_strided(x, (1, view.C), (0, view.sc), x.storage_offset())
    return picked.to(torch.float32, copy=True)  # never a view of x (custom-op outputs must not alias inputs)


def group_view(view: plan.CanonicalView, num_groups: int) -> Optional[plan.CanonicalView]:
    """The (B, G, cpg*S) view of a per-sample scope whose groups are contiguous runs, else None.

    When a channel's positions are followed by the next channel's (NCHW, or (N, C) rows), the
    channels of a group form one strided run, so statistics can be taken per group directly: no
    per-channel partials and no second merge level (for a layer norm over (N, C) tokens the
    per-channel partials would be as large as x itself).
    """
    cpg = view.C // num_groups
    if cpg == 1 or view.sc != view.S * view.ss:
        return None
    return plan.CanonicalView(view.B, num_groups, cpg * view.S, view.sb, cpg * view.sc, view.ss)


def batch_statistics(x: torch.Tensor, view: plan.CanonicalView, p: plan.Plan, num_groups: int, per_sample: bool):
    """(pivot, count, mean - pivot, M2) per statistic: ``[N, G]`` per sample, else ``[1, C]`` (fp32)."""
    pivot = _pivots(x, view, num_groups, per_sample)
    cpg = view.C // num_groups
    grouped = group_view(view, num_groups) if per_sample else None
    if grouped is not None:
        view, p, cpg = grouped, plan.make_plan(grouped, plan.target_programs(x.device), True), 1
    C = view.C
    rows = p.partial_rows
    count, mean, m2 = (torch.empty(rows, C, device=x.device, dtype=torch.float32) for _ in range(3))
    _kernels.partial_stats_kernel[(p.n_cblk * rows,)](
        x, pivot, count, mean, m2, view.B, C, view.S, view.sb, view.ss, view.sc,
        num_groups if per_sample else 0, cpg, p.rows_per_prog, p.chunk_len, p.n_chunks, p.n_cblk,
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, INT64=p.int64)
    # Level 1: every chunk (and, for channel scope, every row group) of a channel, in order.
    s_out, r = (view.B, p.n_chunks) if per_sample else (1, rows)
    count, mean, m2 = merge_stats(count, mean, m2, s_out, r, C, r * C, C, 1)
    if per_sample and cpg > 1:
        # Level 2: the channels of each group, viewed as [N*G, cpg, 1] (they share the group's pivot).
        count, mean, m2 = merge_stats(count, mean, m2, s_out * num_groups, cpg, 1, cpg, 1, 1)
    shape = pivot.shape
    return pivot, count.view(shape), mean.view(shape), m2.view(shape)


def finalize(pivot: torch.Tensor, mshift: torch.Tensor, m2_or_var: torch.Tensor, count: Optional[torch.Tensor],
             eps: float):
    """Per statistic (fp32, pivot's shape): invstd, mean = pivot + mshift, and the biased var
    (m2 / count when count is given, else m2_or_var)."""
    n = pivot.numel()
    invstd, mean, var = (torch.empty(pivot.shape, device=pivot.device, dtype=torch.float32) for _ in range(3))
    block = 1024
    _kernels.finalize_kernel[(-(-n // block),)](
        count if count is not None else m2_or_var, m2_or_var, pivot, mshift, invstd, mean, var, n, eps,
        FROM_M2=count is not None, BLOCK=block)
    return invstd, mean, var


def normalize(x, view, p, pivot, mshift, invstd, weight, bias, stat_sb: int, cpg: int,
              residual: Optional[torch.Tensor], activation: int) -> torch.Tensor:
    """y = act((x - mean) * invstd * w + b [+ residual]); y has x's strides."""
    y = torch.empty_like(x)
    _kernels.apply_kernel[(p.n_cblk * view.B * p.n_sblk,)](
        x, y, residual if residual is not None else x, pivot, mshift, invstd,
        weight if weight is not None else invstd, bias if bias is not None else invstd,
        view.C, view.S, view.sb, view.ss, view.sc, stat_sb, cpg, p.n_sblk, p.n_cblk,
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, ACT=activation, HAS_RES=residual is not None,
        HAS_W=weight is not None, HAS_B=bias is not None, INT64=p.int64)
    return y


def norm_forward(x, weight, bias, residual, running_mean, running_var, num_groups: int, per_sample: bool,
                 use_batch_stats: bool, eps: float, channel_axis: int, activation: int):
    """Returns ``(y, pivot, mean_shift, var)``: the statistics as mean = pivot + mean_shift and biased var.

    They are fp32, shaped ``[N, G]`` (per sample) or ``[C]``. Without batch statistics, pivot and
    var are fp32 copies of the running statistics and mean_shift is zero.
    """
    per_sample = per_sample and use_batch_stats
    view, p = view_and_plan(x, channel_axis, per_sample)
    if use_batch_stats:
        pivot, count, mshift, m2 = batch_statistics(x, view, p, num_groups, per_sample)
        invstd, _, var = finalize(pivot, mshift, m2, count, eps)
    else:
        mshift = torch.zeros((1, view.C), device=x.device, dtype=torch.float32)
        invstd, pivot, var = finalize(running_mean.view(1, -1), mshift, running_var.view(1, -1), None, eps)
    G = num_groups if per_sample else view.C
    y = normalize(x, view, p, pivot, mshift, invstd, weight, bias, G if per_sample else 0, view.C // G,
                  residual, activation)
    if not per_sample:
        pivot, mshift, var = pivot.view(-1), mshift.view(-1), var.view(-1)
    return y, pivot, mshift, var
