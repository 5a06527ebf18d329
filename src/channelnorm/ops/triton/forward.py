"""Host side of the forward pass: pick the regime's kernels from the cached plan, allocate, launch.

Inputs here are already checked and laid out by ``backend``; nothing is decided here that the plan
did not decide. Statistics are one fp32 buffer ``[3, rows*G]`` (pivot, mean - pivot, biased var)
whatever the input dtype: one allocation and one kernel argument. Launches per call: R1 one; R2/R3
two (statistics with the fused merge, finalize and running update; then the normalize pass in
reverse order); eval one.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import _kernels, plan


class RunningUpdate(NamedTuple):
    """The running-statistics update fused into the statistics pass (channel scope, training)."""
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: Optional[torch.Tensor]
    momentum: float
    unbias: float


_COUNTERS: dict = {}


def counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 tickets for the last-program election. Every kernel puts back the zeros it used, so
    one buffer per device and stream serves every call (kernels on one stream never overlap)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 1024), device=device, dtype=torch.int32)
        _COUNTERS[key] = buf
    return buf


def norm_forward(x, weight, bias, residual, running_mean, running_var, num_groups: int, per_sample: bool,
                 use_batch_stats: bool, eps: float, channel_axis: int, activation: int,
                 update: Optional[RunningUpdate] = None, cp: Optional[plan.CallPlan] = None):
    """Returns ``(y, stats)``: stats is fp32 ``[3, rows*G]`` = (pivot, mean - pivot, biased var) per
    statistic ``r*G + g``, rows = N per sample, else 1 (G = C). Without batch statistics they are fp32 copies of
    the running statistics (mean - pivot zero). ``update`` (channel scope, batch statistics) blends
    them into the running buffers inside the statistics pass.
    """
    per_sample = per_sample and use_batch_stats
    if cp is None:
        cp = plan.call_plan(x, channel_axis, num_groups, per_sample)
    y = torch.empty_like(x)
    res = residual if residual is not None else x
    w = weight if weight is not None else x
    b = bias if bias is not None else x
    n_stats = (cp.view.B if per_sample else 1) * cp.num_groups
    stats = torch.empty((3, n_stats), device=x.device, dtype=torch.float32)
    if not use_batch_stats:
        _apply(x, y, res, stats, n_stats, w, b, running_mean, running_var, cp, eps, residual, weight, bias,
               activation, from_running=True)
    elif cp.regime_fwd == "R1":
        _r1_forward(x, y, res, w, b, stats, n_stats, cp, eps, residual, weight, bias, activation, update)
    else:
        _split_statistics(x, stats, n_stats, cp, update)
        _apply(x, y, res, stats, n_stats, w, b, x, x, cp, eps, residual, weight, bias, activation,
               from_running=False)
    return y, stats


def _update_args(x, update: Optional[RunningUpdate]):
    if update is None:
        return x, x, x, 0.0, 1.0, False, False
    nbt = update.num_batches_tracked
    return (update.running_mean, update.running_var, nbt if nbt is not None else update.running_mean,
            float(update.momentum), float(update.unbias), True, nbt is not None)


def _r1_forward(x, y, res, w, b, stats, n_stats, cp, eps, residual, weight, bias, activation, update):
    g = cp.r1
    rm, rv, nbt, momentum, unbias, do_update, has_nbt = _update_args(x, update)
    _kernels.r1_forward_kernel[(g.programs,)](
        x, y, res, w, b, stats, rm, rv, nbt, counters(x.device, 1),
        g.U, g.su, g.V, g.sv, g.K, g.sk, g.s_row, g.cpk, g.cpv, g.n_kblk, g.programs, eps, momentum, unbias, n_stats,
        BLOCK_U=g.block_u, BLOCK_V=g.block_v, BLOCK_K=g.block_k, ACT=activation, HAS_RES=residual is not None,
        HAS_W=weight is not None, HAS_B=bias is not None, BATCH_STATS=True, UPDATE_RUNNING=do_update,
        HAS_NBT=has_nbt, INT64=cp.int64, num_warps=g.num_warps)


def _split_statistics(x, stats, n_stats, cp, update):
    v, p, u = cp.stats_view, cp.stats_split, cp.stats_units
    rows = p.partial_rows
    part = torch.empty((3, rows * v.C), device=x.device, dtype=torch.float32)
    rm, rv, nbt, momentum, unbias, do_update, has_nbt = _update_args(x, update)
    _kernels.stats_kernel[(p.n_cblk * rows,)](
        x, part[0], part[1], part[2], stats, rm, rv, nbt, counters(x.device, u.n_units + 1),
        v.B, v.C, v.S, v.sb, v.ss, v.sc, v.C // cp.stats_cpg, cp.stats_cpg, p.rows_per_prog, p.chunk_len,
        p.n_chunks, p.n_cblk, u.P_unit, u.progs_per_unit, u.n_units, momentum, unbias, n_stats,
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, PER_SAMPLE=cp.per_sample, GROUPED=u.grouped, BLOCK_P=u.block_p,
        BLOCK_G=u.block_g, BLOCK_J=u.block_j, UPDATE_RUNNING=do_update, HAS_NBT=has_nbt,
        NUM_STAGES=plan.NUM_STAGES, INT64=cp.int64, num_warps=plan.SPLIT_NUM_WARPS, maxnreg=plan.SPLIT_MAXNREG)


def _apply(x, y, res, stats, n_stats, w, b, rm, rv, cp, eps, residual, weight, bias, activation,
           from_running: bool):
    v, p = cp.view, cp.split
    n_prog = p.n_cblk * v.B * p.n_sblk
    per_sample = cp.per_sample and not from_running
    _kernels.apply_kernel[(n_prog,)](
        x, y, res, stats, w, b, rm, rv,
        v.C, v.S, v.sb, v.ss, v.sc, cp.num_groups if per_sample else 0, v.C // cp.num_groups if per_sample else 1,
        p.n_sblk, p.n_cblk, n_prog, eps, n_stats,
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, ACT=activation, HAS_RES=residual is not None,
        HAS_W=weight is not None, HAS_B=bias is not None, FROM_RUNNING=from_running, REVERSE=not from_running,
        INT64=cp.int64)
