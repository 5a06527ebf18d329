"""Host side of the backward pass: pick the regime's kernels from the cached plan, allocate, launch.

For a statistic s with n elements, g the gradient reaching the norm's output (through the fused
activation), w the per-channel weight and xhat the normalized input:
    dx = invstd * (w*g - mean_s(w*g) - xhat * mean_s(w*g*xhat)),
    dweight = sum(g * xhat), dbias = sum(g)  (over everything but the channel).
Written as dx = invstd*w*g + beta*xhat + gamma with beta, gamma per statistic. Launches: R1 one
(plus a fixed-order sum of the per-row dweight/dbias partials when there are several rows); R2/R3
two (partial sums with the fused reduction and coefficients; then dx in reverse order), plus that
sum for per-sample scopes.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _kernels, plan
from .forward import counters


def _sum_partials(buf: torch.Tensor, C: int):
    """[rows, 2C] partials (dbias | dweight) summed over rows in a fixed order: (dweight, dbias) [C]."""
    rows = buf.shape[0]
    if rows == 1:
        flat = buf.view(-1)
    else:
        flat = torch.empty(2 * C, device=buf.device, dtype=torch.float32)
        block_k = min(128, 1 << max(0, (2 * C - 1).bit_length()))
        block_r = max(1, min(2048 // block_k, 1 << max(0, (rows - 1).bit_length())))
        _kernels.sum_rows_kernel[(-(-2 * C // block_k),)](buf, flat, rows, 2 * C, BLOCK_R=block_r, BLOCK_K=block_k)
    return flat[C:], flat[:C]


def norm_backward(dy, x, weight, bias, residual, stats, num_groups: int, per_sample: bool,
                  use_batch_stats: bool, eps: float, channel_axis: int, activation: int, need_dres: bool,
                  cp: Optional[plan.CallPlan] = None):
    """Returns ``(dx, dweight, dbias, dres)`` (fp32 dweight/dbias of shape [C]; dres None unless asked).

    ``stats``: the forward's fp32 ``[3, n_stats]`` (pivot, mean - pivot, biased var)."""
    per_sample = per_sample and use_batch_stats
    if cp is None:
        cp = plan.call_plan(x, channel_axis, num_groups, per_sample)
    view = cp.view
    C = view.C
    dx = torch.empty_like(x)
    dres = torch.empty_like(x) if need_dres else None
    res = residual if residual is not None else x
    w = weight if weight is not None else x
    b = bias if bias is not None else x
    flags = dict(ACT=activation, HAS_RES=residual is not None, HAS_W=weight is not None, HAS_B=bias is not None,
                 INT64=cp.int64)
    if use_batch_stats and cp.regime_bwd == "R1":
        g = cp.r1
        sums = torch.empty((g.partial_rows, 2 * C), device=x.device, dtype=torch.float32)
        _kernels.r1_backward_kernel[(g.programs,)](
            x, dy, res, dres if dres is not None else x, dx, w, b, stats, sums[:, C:], sums,
            g.U, g.su, g.V, g.sv, g.K, g.sk, g.s_row, g.cpk, g.cpv, g.n_kblk, 2 * C, g.prow_per_row,
            g.prow_per_kblk, eps, stats.shape[1],
            BLOCK_U=g.block_u, BLOCK_V=g.block_v, BLOCK_K=g.block_k, WRITE_DRES=need_dres, BATCH_STATS=True,
            CH_MODE=g.ch_mode, num_warps=g.num_warps, **flags)
        dweight, dbias = _sum_partials(sums, C)
        return dx, dweight, dbias, dres
    p, u = cp.bwd_split, cp.bwd_units
    G = cp.num_groups
    rows_out = view.B if per_sample else 1
    part = torch.empty((2, p.partial_rows * C), device=x.device, dtype=torch.float32)
    sums = torch.empty((rows_out, 2 * C), device=x.device, dtype=torch.float32)
    coef = torch.empty((2, rows_out * G), device=x.device, dtype=torch.float32)
    n = (C // G) * view.S if per_sample else view.B * view.S
    _kernels.backward_partials_kernel[(p.n_cblk * p.partial_rows,)](
        x, dy, res, dres if dres is not None else x, stats, w, b, part[0], part[1], sums, sums[:, C:],
        coef[0], coef[1], counters(x.device, u.n_units),
        view.B, C, view.S, view.sb, view.ss, view.sc, G, C // G, p.rows_per_prog, p.chunk_len, p.n_chunks,
        p.n_cblk, u.P_unit, u.progs_per_unit, 2 * C, eps, 1.0 / max(n, 1), stats.shape[1],
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, PER_SAMPLE=per_sample, GROUPED=u.grouped, BLOCK_P=u.block_p,
        BLOCK_G=u.block_g, BLOCK_J=u.block_j, WRITE_DRES=need_dres, BATCH_STATS=use_batch_stats,
        NUM_STAGES=plan.NUM_STAGES, num_warps=plan.SPLIT_NUM_WARPS, maxnreg=plan.SPLIT_MAXNREG, **flags)
    n_prog = p.n_cblk * view.B * p.n_sblk
    _kernels.backward_apply_kernel[(n_prog,)](
        x, dy, res, dx, stats, w, b, coef[0], coef[1],
        C, view.S, view.sb, view.ss, view.sc, G if per_sample else 0, C // G, p.n_sblk, p.n_cblk, n_prog, eps,
        stats.shape[1],
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, REVERSE=True, **flags)
    dweight, dbias = _sum_partials(sums, C)
    return dx, dweight, dbias, dres
