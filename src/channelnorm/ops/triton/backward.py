"""Host side of the backward pass: per-program partial sums, fixed-order reductions, then dx.

For a statistic s with n elements, g the gradient reaching the norm's output (through the fused
activation), w the per-channel weight and xhat the normalized input:
    dx = invstd * (w*g - mean_s(w*g) - xhat * mean_s(w*g*xhat)),
    dweight = sum(g * xhat), dbias = sum(g)  (over everything but the channel).
Written as dx = invstd*w*g + beta*xhat + gamma with beta, gamma per statistic, so the last
pass is one read of x and dy and one write of dx.
"""
from __future__ import annotations

import torch

from . import _kernels
from .forward import finalize, view_and_plan
from .reduce import sum_rows


def norm_backward(dy, x, weight, bias, residual, pivot, mshift, var, num_groups: int, per_sample: bool,
                  use_batch_stats: bool, eps: float, channel_axis: int, activation: int, need_dres: bool):
    """Returns ``(dx, dweight, dbias, dres)`` (fp32 dweight/dbias of shape [C]; dres None unless asked)."""
    per_sample = per_sample and use_batch_stats
    view, p = view_and_plan(x, channel_axis, per_sample)
    C = view.C
    G = num_groups if per_sample else C
    cpg, stat_sb = C // G, (G if per_sample else 0)
    pivot, mshift, var = (t.reshape(-1, G) for t in (pivot, mshift, var))
    invstd, _, _ = finalize(pivot, mshift, var, None, eps)
    w_arg = weight if weight is not None else invstd
    b_arg = bias if bias is not None else invstd
    if per_sample and view.S == 1 and G == 1:
        return _rows_backward(dy, x, view, p, pivot, mshift, invstd, weight, bias, residual, activation, need_dres)
    rows = p.partial_rows
    sum_g, sum_gx = (torch.empty(rows, C, device=x.device, dtype=torch.float32) for _ in range(2))
    dres = torch.empty_like(x) if need_dres else None
    res = residual if residual is not None else x
    _kernels.backward_partials_kernel[(p.n_cblk * rows,)](
        x, dy, res, dres if dres is not None else x, pivot, mshift, invstd, w_arg, b_arg, sum_g, sum_gx,
        view.B, C, view.S, view.sb, view.ss, view.sc, stat_sb, cpg, p.rows_per_prog, p.chunk_len, p.n_chunks,
        p.n_cblk, BLOCK_S=p.block_s, BLOCK_C=p.block_c, ACT=activation, HAS_RES=residual is not None,
        WRITE_DRES=need_dres, HAS_W=weight is not None, HAS_B=bias is not None, INT64=p.int64)
    s_out, r = (view.B, p.n_chunks) if per_sample else (1, rows)
    if r == 1:   # one partial per (row, channel) already
        g_c, gx_c = sum_g, sum_gx
    else:
        g_c = sum_rows(sum_g, s_out, r, C, r * C, C, 1)       # [s_out, C]
        gx_c = sum_rows(sum_gx, s_out, r, C, r * C, C, 1)
    if s_out == 1:
        dbias, dweight = g_c.view(C), gx_c.view(C)
    else:
        dbias = sum_rows(g_c, 1, s_out, C, s_out * C, C, 1).view(C)
        dweight = sum_rows(gx_c, 1, s_out, C, s_out * C, C, 1).view(C)
    # Fixed statistics (eval) pass no gradient through them: beta = gamma = 0.
    fill = torch.empty if use_batch_stats else torch.zeros
    beta, gamma = (fill(s_out, G, device=x.device, dtype=torch.float32) for _ in range(2))
    if use_batch_stats:
        n = cpg * view.S if per_sample else view.B * view.S
        block_j = min(1024, 1 << max(0, (cpg - 1).bit_length()))
        block_g = min(max(1, 1024 // block_j), 1 << max(0, (G - 1).bit_length()))
        n_gblk = -(-G // block_g)
        _kernels.coefficients_kernel[(s_out * n_gblk,)](
            g_c, gx_c, w_arg, invstd, beta, gamma, C, G, cpg, 1.0 / n, n_gblk,
            HAS_W=weight is not None, BLOCK_G=block_g, BLOCK_J=block_j)
    dx = torch.empty_like(x)
    _kernels.backward_apply_kernel[(p.n_cblk * view.B * p.n_sblk,)](
        x, dy, res, dx, pivot, mshift, invstd, w_arg, b_arg, beta, gamma,
        C, view.S, view.sb, view.ss, view.sc, stat_sb, cpg, p.n_sblk, p.n_cblk,
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, ACT=activation, HAS_RES=residual is not None,
        HAS_W=weight is not None, HAS_B=bias is not None, INT64=p.int64)
    return dx, dweight, dbias, dres


# Rows per program of the row-wise backward: partials are [N / ROWS, C] (1/16 of x's elements).
ROWS_PER_PROGRAM = 16


def _rows_backward(dy, x, view, p, pivot, mshift, invstd, weight, bias, residual, activation: int, need_dres: bool):
    """Layer norm over (N, C) rows: one kernel per row block (see rows_backward_kernel)."""
    N, C = view.B, view.C
    block_c = min(128, 1 << max(0, (C - 1).bit_length()))
    n_prog = -(-N // ROWS_PER_PROGRAM)
    part_g, part_gx = (torch.empty(n_prog, C, device=x.device, dtype=torch.float32) for _ in range(2))
    dx = torch.empty_like(x)
    dres = torch.empty_like(x) if need_dres else None
    _kernels.rows_backward_kernel[(n_prog,)](
        x, dy, residual if residual is not None else x, dres if dres is not None else x, dx, pivot, mshift, invstd,
        weight if weight is not None else invstd, bias if bias is not None else invstd, part_g, part_gx,
        N, C, view.sb, view.sc, 1.0 / C,
        BLOCK_R=ROWS_PER_PROGRAM, BLOCK_C=block_c, ACT=activation, HAS_RES=residual is not None,
        WRITE_DRES=need_dres, HAS_W=weight is not None, HAS_B=bias is not None, INT64=p.int64)
    dbias = sum_rows(part_g, 1, n_prog, C, n_prog * C, C, 1).view(C)
    dweight = sum_rows(part_gx, 1, n_prog, C, n_prog * C, C, 1).view(C)
    return dx, dweight, dbias, dres
