"""Host side of the backward pass: per-program partial sums, fixed-order reductions, then dx.

For a statistic s with n elements, g the gradient reaching the norm's output (through the fused
activation), w the per-channel weight and xhat the normalized input:
    dx = invstd * (w*g - mean_s(w*g) - xhat * mean_s(w*g*xhat)),
    dweight = sum(g * xhat), dbias = sum(g)  (over everything but the channel).
Written as dx = alpha*g + beta*xhat + gamma with per-(row, channel) coefficients, so the last
pass is one read of x and dy and one write of dx.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _kernels
from .forward import channel_vectors, view_and_plan
from .reduce import sum_rows


def norm_backward(dy, x, weight, bias, residual, pivot, mshift, var, num_groups: int, per_sample: bool,
                  use_batch_stats: bool, eps: float, channel_axis: int, activation: int, need_dres: bool):
    """Returns ``(dx, dweight, dbias, dres)`` (fp32 dweight/dbias of shape [C]; dres None unless asked)."""
    per_sample = per_sample and use_batch_stats
    view, p = view_and_plan(x, channel_axis, per_sample)
    C = view.C
    stats_shape = (-1, num_groups) if per_sample else (1, -1)
    (pivot_c, mshift_c, invstd_c, scale, shift), _, _ = channel_vectors(
        pivot.reshape(stats_shape), mshift.reshape(stats_shape), var.reshape(stats_shape), None, weight, bias, eps, C)
    vec_sb = C if per_sample else 0
    rows = p.partial_rows
    sum_g, sum_gx = (torch.empty(rows, C, device=x.device, dtype=torch.float32) for _ in range(2))
    dres = torch.empty_like(x) if need_dres else None
    res = residual if residual is not None else x
    _kernels.backward_partials_kernel[(p.n_cblk * rows,)](
        x, dy, res, dres if dres is not None else x, pivot_c, mshift_c, invstd_c, scale, shift, sum_g, sum_gx,
        view.B, C, view.S, view.sb, view.ss, view.sc, vec_sb, p.rows_per_prog, p.chunk_len, p.n_chunks, p.n_cblk,
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, ACT=activation, HAS_RES=residual is not None,
        WRITE_DRES=need_dres, INT64=p.int64)
    s_out, r = (view.B, p.n_chunks) if per_sample else (1, rows)
    g_c = sum_rows(sum_g, s_out, r, C, r * C, C, 1)       # [s_out, C]
    gx_c = sum_rows(sum_gx, s_out, r, C, r * C, C, 1)
    dbias = sum_rows(g_c, 1, s_out, C, s_out * C, C, 1).view(C)
    dweight = sum_rows(gx_c, 1, s_out, C, s_out * C, C, 1).view(C)
    w = weight.float() if weight is not None else torch.ones(C, device=x.device, dtype=torch.float32)
    alpha = (invstd_c * w).contiguous()
    if use_batch_stats:
        n = (C // num_groups) * view.S if per_sample else view.B * view.S
        mean_wg, mean_wgx = _per_statistic(w * g_c, num_groups, per_sample) / n, \
            _per_statistic(w * gx_c, num_groups, per_sample) / n
        beta = (-invstd_c * mean_wgx).contiguous()
        gamma = (-invstd_c * mean_wg).contiguous()
    else:  # fixed statistics: no gradient flows through them
        beta = gamma = torch.zeros_like(alpha)
    dx = torch.empty_like(x)
    _kernels.backward_apply_kernel[(p.n_cblk * view.B * p.n_sblk,)](
        x, dy, res, dx, pivot_c, mshift_c, invstd_c, scale, shift, alpha, beta, gamma,
        C, view.S, view.sb, view.ss, view.sc, vec_sb, p.n_sblk, p.n_cblk,
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, ACT=activation, HAS_RES=residual is not None, INT64=p.int64)
    return dx, dweight, dbias, dres


def _per_statistic(values: torch.Tensor, num_groups: int, per_sample: bool) -> torch.Tensor:
    """Sum [rows, C] over the channels of each group (fixed order) and broadcast back to [rows, C]."""
    rows, C = values.shape
    cpg = C // num_groups
    if not per_sample or cpg == 1:
        return values
    values = values.contiguous()
    summed = sum_rows(values, rows * num_groups, cpg, 1, cpg, 1, 1).view(rows, num_groups)
    return summed.repeat_interleave(cpg, dim=1)
