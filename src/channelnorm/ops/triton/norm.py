"""The Triton normalization, top to bottom: kernels, host forward and backward, and the eager autograd Function.

One op serves the whole family: the scope is ``(num_groups, per_sample)`` (channel norm: C groups, not
per sample; instance: C groups per sample; group/layer: G groups per sample), with an optional
residual add and activation fused in. ``plan`` decides everything about a call (canonical strided
view, regime, tiles, splits, index width) as plain integers; ``backend`` lays the input out and
calls in here; ``custom_ops`` wraps the same host functions in ``torch.library`` ops for
``torch.compile``. Design notes (regimes, numerics, layouts) are in ``ops/triton/__init__.py``.

**Kernels** (``@triton.jit`` only: no validation, no shapes decided here). Two families, one per
regime of ``plan``:

* R1, one program owns whole statistics (``r1_forward_kernel``, ``r1_backward_kernel``): the
  input is seen as ``row*s_row + u*su + v*sv + k*sk``; a statistic is one ``(row, k)`` and is
  reduced over ``u`` and ``v``; the channel of an element is ``k*cpk + v*cpv``. The whole
  ``[BLOCK_U, BLOCK_V, BLOCK_K]`` tile stays in registers: x is read once, y written once.
* R2/R3, split reductions over the strided ``(B, C, S)`` view ``b*sb + c*sc + s*ss``
  (``stats_kernel``, ``apply_kernel``, ``backward_partials_kernel``, ``backward_apply_kernel``):
  each program streams a chunk through a pipelined loop (``tl.range(num_stages=...)``: cp.async
  on sm_80+) and writes a partial; the last program of each merge unit (elected by an atomic
  ticket) merges the unit's partials in a fixed order and finalizes them, and the last unit runs
  the running-statistics update. The second pass runs in reverse program order, so its first
  tiles are the ones the statistics pass read last (still in L2).

No float atomics: the integer tickets only elect who merges; every sum is taken in a fixed order,
so results are bitwise reproducible. Statistics are fp32 ``[rows, K]`` arrays (mean = pivot +
mshift, biased var); invstd is recomputed from var where it is needed (one rsqrt per column).

**Host forward** (``norm_forward``): picks the regime's kernels from the cached plan, allocates,
launches; nothing is decided that the plan did not decide. Statistics are one fp32 buffer
``[3, rows*G]`` (pivot, mean - pivot, biased var) whatever the input dtype: one allocation and one
kernel argument. Launches per call: R1 one; R2/R3 two (statistics with the fused merge, finalize
and running update; then the normalize pass in reverse order); eval one.

**Host backward** (``norm_backward``). For a statistic s with n elements, g the gradient reaching
the norm's output (through the fused activation), w the per-channel weight and xhat the
normalized input::

    dx = invstd * (w*g - mean_s(w*g) - xhat * mean_s(w*g*xhat)),
    dweight = sum(g * xhat), dbias = sum(g)  (over everything but the channel),

written as ``dx = invstd*w*g + beta*xhat + gamma`` with beta, gamma per statistic. Launches: R1 one
(plus a fixed-order sum of the per-row dweight/dbias partials when there are several rows); R2/R3
two (partial sums with the fused reduction and coefficients; then dx in reverse order), plus that
sum for per-sample scopes.

**Eager Function** (``NormFunction``, entered through ``eager_norm``): a plain
``torch.autograd.Function`` around the host forward and backward. Eager calls skip
``torch.library`` dispatch (tens of microseconds per call on the host); under ``torch.compile``
the backend uses ``custom_ops`` instead, which tracing needs. Both call the same host functions, so
they compute the same thing; the eager path also fuses the running-statistics update into the
statistics pass (a custom op that declares no mutation cannot).
"""
# No `from __future__ import annotations`: Triton reads the kernels' ``tl.constexpr`` annotations as objects.
import contextlib
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..layout import match_layout
from . import plan

# ======================================== kernels

# ACT codes (plan.ACTIVATION_CODES): 0 none, 1 relu, 2 silu, 3 gelu (exact, erf).


@triton.jit
def _activate(z, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.maximum(z, 0.0)
    elif ACT == 2:
        z = z * tl.sigmoid(z)
    elif ACT == 3:
        z = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    return z


@triton.jit
def _activation_grad(dy, z, ACT: tl.constexpr):
    """dy * act'(z) for the pre-activation ``z``."""
    if ACT == 1:
        dy = tl.where(z > 0.0, dy, 0.0)
    elif ACT == 2:
        sig = tl.sigmoid(z)
        dy = dy * (sig * (1.0 + z * (1.0 - sig)))
    elif ACT == 3:
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
        dy = dy * (cdf + z * pdf)
    return dy


@triton.jit
def _idx(i, INT64: tl.constexpr):
    # int64 only when the host found an offset or index that can pass 2**31 - 1 (plan.needs_int64).
    # tl.cast takes plain ints (interpreter loop indices) and tensors alike.
    if INT64:
        return tl.cast(i, tl.int64)
    else:
        return i


@triton.jit
def _chan_merge(acc_n, acc_mean, acc_m2, tile_n, tile_mean, tile_m2):
    """Chan's pairwise merge of (count, mean, M2) summaries; an empty tile leaves the accumulator as is."""
    new_n = acc_n + tile_n
    delta = tile_mean - acc_mean
    ratio = tile_n / tl.maximum(new_n, 1.0)
    return new_n, acc_mean + delta * ratio, acc_m2 + tile_m2 + delta * delta * acc_n * ratio


@triton.jit
def _ticket(counter_ptr):
    """Count this program in; returns how many came before it. The barrier makes every thread's stores
    precede the (acq_rel, gpu-scope) increment, so the last program sees all of them."""
    tl.debug_barrier()
    return tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")


@triton.jit
def _running_update(rm_ptr, rv_ptr, nbt_ptr, pivot_ptr, mshift_ptr, var_ptr, C, momentum, unbias,
                    HAS_NBT: tl.constexpr, BLOCK: tl.constexpr):
    """running <- (1-m)*running + m*batch (mean = pivot + mshift; var unbiased by ``unbias`` = n/(n-1)).

    All or nothing: a first sweep checks every candidate is finite (after rounding to the buffer's
    dtype), a second writes them only if so and counts the batch in num_batches_tracked.
    """
    FLT_MAX: tl.constexpr = 3.4028234663852886e38
    bad = tl.zeros([BLOCK], tl.int32)
    for c0 in range(0, C, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        cmask = cols < C
        rm = tl.load(rm_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        mean = (tl.load(pivot_ptr + cols, mask=cmask, other=0.0, cache_modifier=".cg")
                + tl.load(mshift_ptr + cols, mask=cmask, other=0.0, cache_modifier=".cg"))
        var = tl.load(var_ptr + cols, mask=cmask, other=0.0, cache_modifier=".cg")
        new_m = (rm * (1.0 - momentum) + mean * momentum).to(rm_ptr.dtype.element_ty).to(tl.float32)
        new_v = (rv * (1.0 - momentum) + var * (unbias * momentum)).to(rv_ptr.dtype.element_ty).to(tl.float32)
        finite = (tl.abs(new_m) <= FLT_MAX) & (tl.abs(new_v) <= FLT_MAX)
        bad += (cmask & ~finite).to(tl.int32)
    if tl.sum(bad, 0) == 0:
        for c0 in range(0, C, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            cmask = cols < C
            rm = tl.load(rm_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            rv = tl.load(rv_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            mean = (tl.load(pivot_ptr + cols, mask=cmask, other=0.0, cache_modifier=".cg")
                    + tl.load(mshift_ptr + cols, mask=cmask, other=0.0, cache_modifier=".cg"))
            var = tl.load(var_ptr + cols, mask=cmask, other=0.0, cache_modifier=".cg")
            tl.store(rm_ptr + cols, (rm * (1.0 - momentum) + mean * momentum).to(rm_ptr.dtype.element_ty),
                     mask=cmask)
            tl.store(rv_ptr + cols, (rv * (1.0 - momentum) + var * (unbias * momentum)).to(rv_ptr.dtype.element_ty),
                     mask=cmask)
        if HAS_NBT:
            tl.store(nbt_ptr, tl.load(nbt_ptr) + 1)


# ----------------------------------------------------------------------------------------------- R1

@triton.jit
def _r1_tile(row, kblk, U, su, V, sv, K, sk, s_row, cpk, cpv,
             BLOCK_U: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, INT64: tl.constexpr):
    """Offsets, masks and channel indices of this program's [BLOCK_U, BLOCK_V, BLOCK_K] tile."""
    u = tl.arange(0, BLOCK_U)[:, None, None]
    v = tl.arange(0, BLOCK_V)[None, :, None]
    k = kblk * BLOCK_K + tl.arange(0, BLOCK_K)
    k3 = k[None, None, :]
    vk_mask = (v < V) & (k3 < K)
    mask = (u < U) & vk_mask
    offs = _idx(row, INT64) * s_row + _idx(u, INT64) * su + _idx(v, INT64) * sv + _idx(k3, INT64) * sk
    channel = k3 * cpk + v * cpv
    return k, k < K, mask, vk_mask, offs, channel


@triton.jit
def _affine(channel, vk_mask, w_ptr, b_ptr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    w = tl.full(channel.shape, 1.0, tl.float32)
    if HAS_W:
        w = tl.load(w_ptr + channel, mask=vk_mask, other=0.0).to(tl.float32)
    bias = tl.zeros(channel.shape, tl.float32)
    if HAS_B:
        bias = tl.load(b_ptr + channel, mask=vk_mask, other=0.0).to(tl.float32)
    return w, bias


@triton.jit
def _sum_uv(t):
    return tl.sum(tl.sum(t, 0), 0)


@triton.jit
def r1_forward_kernel(x_ptr, y_ptr, res_ptr, w_ptr, b_ptr, stats_ptr,
                      rm_ptr, rv_ptr, nbt_ptr, counter_ptr,
                      U, su, V, sv, K, sk, s_row, cpk, cpv, n_kblk, n_prog, eps, momentum, unbias,
                      n_stats,
                      BLOCK_U: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                      ACT: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                      BATCH_STATS: tl.constexpr, UPDATE_RUNNING: tl.constexpr, HAS_NBT: tl.constexpr,
                      INT64: tl.constexpr):
    """The whole forward of BLOCK_K statistics in one program: x read once, y written once.

    Batch statistics: exact two-pass mean and centered variance over the tile in registers (stable
    for any mean). Fixed statistics (eval): the running buffers, indexed by k. Stats out at
    ``row*K + k`` of the pivot, mean - pivot and var blocks of ``stats`` (each ``n_stats`` long).
    With UPDATE_RUNNING the last program to
    finish (atomic ticket) blends the running statistics of all K channels.
    """
    pivot_ptr, mshift_ptr, var_ptr = stats_ptr, stats_ptr + n_stats, stats_ptr + 2 * n_stats
    pid = tl.program_id(0)
    row = pid // n_kblk
    kblk = pid % n_kblk
    k, kmask, mask, vk_mask, offs, channel = _r1_tile(row, kblk, U, su, V, sv, K, sk, s_row, cpk, cpv,
                                                      BLOCK_U, BLOCK_V, BLOCK_K, INT64)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if BATCH_STATS:
        # Shift by the statistic's first element (x - pivot is exact when they are close), then an
        # exact two-pass mean and centered variance: a mean of 1e4 costs no precision.
        u0v0 = (tl.arange(0, BLOCK_U)[:, None, None] == 0) & (tl.arange(0, BLOCK_V)[None, :, None] == 0)
        pivot = _sum_uv(tl.where(u0v0 & mask, x, 0.0))
        n = (U * V) * 1.0   # U and V may arrive as ints (Triton specializes a value of 1)
        shifted = tl.where(mask, x - pivot[None, None, :], 0.0)
        mshift = _sum_uv(shifted) / n
        centered = tl.where(mask, shifted - mshift[None, None, :], 0.0)
        var = _sum_uv(centered * centered) / n
    else:
        pivot = tl.load(rm_ptr + k, mask=kmask, other=0.0).to(tl.float32)
        mshift = tl.zeros_like(pivot)
        var = tl.load(rv_ptr + k, mask=kmask, other=1.0).to(tl.float32)
        centered = x - pivot[None, None, :]
    invstd = 1.0 / tl.sqrt_rn(var + eps)
    w, bias = _affine(channel, vk_mask, w_ptr, b_ptr, HAS_W, HAS_B)
    z = centered * (invstd[None, None, :] * w) + bias
    if HAS_RES:
        z += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = _activate(z, ACT)
    tl.store(y_ptr + offs, z.to(y_ptr.dtype.element_ty), mask=mask)
    stat = row * K + k
    tl.store(pivot_ptr + stat, pivot, mask=kmask)
    tl.store(mshift_ptr + stat, mshift, mask=kmask)
    tl.store(var_ptr + stat, var, mask=kmask)
    if UPDATE_RUNNING:
        if _ticket(counter_ptr) == n_prog - 1:
            _running_update(rm_ptr, rv_ptr, nbt_ptr, pivot_ptr, mshift_ptr, var_ptr, K, momentum, unbias,
                            HAS_NBT, 256)
            tl.store(counter_ptr, 0)


@triton.jit
def r1_backward_kernel(x_ptr, dy_ptr, res_ptr, dres_ptr, dx_ptr, w_ptr, b_ptr, stats_ptr,
                       dw_ptr, db_ptr,
                       U, su, V, sv, K, sk, s_row, cpk, cpv, n_kblk, C, prow_per_row, prow_per_kblk, eps,
                       n_stats,
                       BLOCK_U: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                       ACT: tl.constexpr, HAS_RES: tl.constexpr, WRITE_DRES: tl.constexpr, HAS_W: tl.constexpr,
                       HAS_B: tl.constexpr, BATCH_STATS: tl.constexpr, CH_MODE: tl.constexpr, INT64: tl.constexpr):
    """The whole backward of BLOCK_K statistics in one program: x and dy read once, dx written once.

    dx = invstd*w*g + beta*xhat + gamma with beta = -invstd*mean(w*g*xhat), gamma = -invstd*mean(w*g)
    over the statistic (0 for fixed statistics). Per-channel sums of g and g*xhat (dbias, dweight)
    over this program's elements go to row ``row*prow_per_row + kblk*prow_per_kblk`` of the
    ``[rows, C]`` partials (one row when a channel lives in one program: then they are final).
    """
    pivot_ptr, mshift_ptr, var_ptr = stats_ptr, stats_ptr + n_stats, stats_ptr + 2 * n_stats
    pid = tl.program_id(0)
    row = pid // n_kblk
    kblk = pid % n_kblk
    k, kmask, mask, vk_mask, offs, channel = _r1_tile(row, kblk, U, su, V, sv, K, sk, s_row, cpk, cpv,
                                                      BLOCK_U, BLOCK_V, BLOCK_K, INT64)
    stat = row * K + k
    pivot = tl.load(pivot_ptr + stat, mask=kmask, other=0.0)
    mshift = tl.load(mshift_ptr + stat, mask=kmask, other=0.0)
    invstd = 1.0 / tl.sqrt_rn(tl.load(var_ptr + stat, mask=kmask, other=1.0) + eps)
    w, bias = _affine(channel, vk_mask, w_ptr, b_ptr, HAS_W, HAS_B)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = tl.where(mask, ((x - pivot[None, None, :]) - mshift[None, None, :]) * invstd[None, None, :], 0.0)
    if ACT != 0:
        z = xhat * w + bias
        if HAS_RES:
            z += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.where(mask, _activation_grad(g, z, ACT), 0.0)
    if WRITE_DRES:
        tl.store(dres_ptr + offs, g.to(dres_ptr.dtype.element_ty), mask=mask)
    # dbias/dweight partials per channel, over the axes that do not change the channel (CH_MODE).
    prow = row * prow_per_row + kblk * prow_per_kblk
    if CH_MODE == 0:      # channel = k (channel scope): sum over u and v
        tl.store(db_ptr + prow * C + k, _sum_uv(g), mask=kmask)
        tl.store(dw_ptr + prow * C + k, _sum_uv(g * xhat), mask=kmask)
    elif CH_MODE == 1:    # channel = k*cpk + v (groups of one row): sum over u
        v2 = tl.arange(0, BLOCK_V)[:, None]
        part = prow * C + k[None, :] * cpk + v2
        pmask = (v2 < V) & kmask[None, :]
        tl.store(db_ptr + part, tl.sum(g, 0), mask=pmask)
        tl.store(dw_ptr + part, tl.sum(g * xhat, 0), mask=pmask)
    else:                 # channel = v (k runs over rows): sum over u and k
        v1 = tl.arange(0, BLOCK_V)
        tl.store(db_ptr + prow * C + v1, tl.sum(tl.sum(g, 0), 1), mask=v1 < V)
        tl.store(dw_ptr + prow * C + v1, tl.sum(tl.sum(g * xhat, 0), 1), mask=v1 < V)
    if BATCH_STATS:
        n = (U * V) * 1.0   # U and V may arrive as ints (Triton specializes a value of 1)
        wg = w * g
        beta = -invstd * _sum_uv(wg * xhat) / n
        gamma = -invstd * _sum_uv(wg) / n
        dx = invstd[None, None, :] * wg + beta[None, None, :] * xhat + gamma[None, None, :]
    else:
        dx = invstd[None, None, :] * w * g
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------- R2 / R3

@triton.jit
def _split_program(pid, B, S, rows_per_prog, chunk_len, n_chunks, n_cblk, BLOCK_C: tl.constexpr):
    """This split-reduction program's partial index p, its rows, channel block and range of S."""
    cblk = pid % n_cblk
    p = pid // n_cblk
    b_start = (p // n_chunks) * rows_per_prog
    s_start = (p % n_chunks) * chunk_len
    cols = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
    n_rows = tl.minimum(b_start + rows_per_prog, B) - b_start
    return p, cblk, b_start, n_rows, cols, s_start, tl.minimum(s_start + chunk_len, S)


@triton.jit
def _unit(p, cblk, n_chunks, rows_per_unit_p, n_cblk, GROUPED: tl.constexpr):
    """Merge unit of a program: channel scope, per channel block; per sample, per (row, channel block),
    or per row when a statistic spans several channels that may straddle blocks (GROUPED)."""
    if GROUPED:
        return p // rows_per_unit_p
    else:
        return (p // rows_per_unit_p) * n_cblk + cblk


@triton.jit
def _unit_groups(unit, n_cblk, G, BLOCK_C: tl.constexpr, GROUPED: tl.constexpr):
    """Statistic row and range of statistic columns [g_lo, g_hi) that merge unit ``unit`` owns (see _unit)."""
    if GROUPED:
        r = unit
        g_lo = 0
        g_hi = G
    else:
        r = unit // n_cblk
        g_lo = (unit % n_cblk) * BLOCK_C
        g_hi = tl.minimum(g_lo + BLOCK_C, G)
    return r, g_lo, g_hi


@triton.jit
def stats_kernel(x_ptr, part_n_ptr, part_mean_ptr, part_m2_ptr, stats_ptr,
                 rm_ptr, rv_ptr, nbt_ptr, counter_ptr,
                 B, C, S, sb, ss, sc, G, cpg, rows_per_prog, chunk_len, n_chunks, n_cblk, P_unit,
                 progs_per_unit, n_units, momentum, unbias,
                 n_stats,
                 BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, PER_SAMPLE: tl.constexpr, GROUPED: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr,
                 UPDATE_RUNNING: tl.constexpr, HAS_NBT: tl.constexpr, NUM_STAGES: tl.constexpr,
                 INT64: tl.constexpr):
    """Statistics pass of R2/R3: partial (count, mean, M2) per program, then fused merge + finalize.

    Each program streams its rows x chunk of S for a channel block (pipelined loop), every tile
    shifted by the statistic's pivot (one element of its own data) and centered on its own mean
    before a Chan merge: an input with mean 1e4 keeps the precision of one with mean 0. The last
    program of each merge unit merges the unit's partials in a fixed order and writes pivot,
    mean - pivot and the biased var of its statistics; the last unit updates the running stats.
    Partial index: ``p*C + c`` with p = row group * n_chunks + chunk.
    """
    pivot_ptr, mshift_ptr, var_ptr = stats_ptr, stats_ptr + n_stats, stats_ptr + 2 * n_stats
    pid = tl.program_id(0)
    p, cblk, b_start, n_rows, cols, s_start, s_end = _split_program(pid, B, S, rows_per_prog, chunk_len,
                                                                    n_chunks, n_cblk, BLOCK_C)
    cmask = cols < C
    pivot_b = b_start if PER_SAMPLE else 0
    pivot_c = (cols // cpg) * cpg
    pivot = tl.load(x_ptr + _idx(pivot_b, INT64) * sb + _idx(pivot_c, INT64) * sc,
                    mask=cmask, other=0.0).to(tl.float32)
    acc_n = tl.zeros([BLOCK_C], tl.float32)
    acc_mean = tl.zeros([BLOCK_C], tl.float32)
    acc_m2 = tl.zeros([BLOCK_C], tl.float32)
    tiles = tl.cdiv(s_end - s_start, BLOCK_S)
    c_off = _idx(cols, INT64)[None, :] * sc
    for t in tl.range(0, n_rows * tiles, num_stages=NUM_STAGES):
        b = b_start + t // tiles
        # chunk_len is a multiple of BLOCK_S: telling the compiler lets it vectorize contiguous loads.
        rows = tl.multiple_of(s_start + (t % tiles) * BLOCK_S, BLOCK_S) + tl.arange(0, BLOCK_S)
        mask = (rows < s_end)[:, None] & cmask[None, :]
        offs = _idx(b, INT64) * sb + _idx(rows, INT64)[:, None] * ss + c_off
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.where(mask, x - pivot[None, :], 0.0)
        tile_n = tl.sum(mask.to(tl.float32), 0)
        tile_mean = tl.sum(x, 0) / tl.maximum(tile_n, 1.0)
        centered = tl.where(mask, x - tile_mean[None, :], 0.0)
        acc_n, acc_mean, acc_m2 = _chan_merge(acc_n, acc_mean, acc_m2, tile_n, tile_mean,
                                              tl.sum(centered * centered, 0))
    out = _idx(p, INT64) * C + cols
    tl.store(part_n_ptr + out, acc_n, mask=cmask)
    tl.store(part_mean_ptr + out, acc_mean, mask=cmask)
    tl.store(part_m2_ptr + out, acc_m2, mask=cmask)

    unit = _unit(p, cblk, n_chunks, P_unit, n_cblk, GROUPED)
    if _ticket(counter_ptr + unit) == progs_per_unit - 1:
        tl.store(counter_ptr + unit, 0)
        r, g_lo, g_hi = _unit_groups(unit, n_cblk, G, BLOCK_C, GROUPED)
        for g0 in range(g_lo, g_hi, BLOCK_G):
            groups = g0 + tl.arange(0, BLOCK_G)
            gmask = groups < g_hi
            m_n = tl.zeros([BLOCK_G], tl.float32)
            m_mean = tl.zeros([BLOCK_G], tl.float32)
            m_m2 = tl.zeros([BLOCK_G], tl.float32)
            for j0 in range(0, cpg, BLOCK_J):
                j = j0 + tl.arange(0, BLOCK_J)
                ch = groups[:, None] * cpg + j[None, :]
                chmask = gmask[:, None] & (j < cpg)[None, :]
                for k0 in range(0, P_unit, BLOCK_P):
                    k = k0 + tl.arange(0, BLOCK_P)
                    m = (k < P_unit)[:, None, None] & chmask[None, :, :]
                    idx = (_idx(r, INT64) * P_unit + k[:, None, None]) * C + ch[None, :, :]
                    n = tl.load(part_n_ptr + idx, mask=m, other=0.0, cache_modifier=".cg")
                    mu = tl.load(part_mean_ptr + idx, mask=m, other=0.0, cache_modifier=".cg")
                    m2 = tl.load(part_m2_ptr + idx, mask=m, other=0.0, cache_modifier=".cg")
                    # Exact combination of a block of summaries around the block's own mean.
                    blk_n = tl.sum(tl.sum(n, 0), 1)
                    blk_mean = tl.sum(tl.sum(n * mu, 0), 1) / tl.maximum(blk_n, 1.0)
                    d = mu - blk_mean[None, :, None]
                    blk_m2 = tl.sum(tl.sum(m2 + n * d * d, 0), 1)
                    m_n, m_mean, m_m2 = _chan_merge(m_n, m_mean, m_m2, blk_n, blk_mean, blk_m2)
            stat = r * G + groups
            first = (r if PER_SAMPLE else 0)
            piv = tl.load(x_ptr + _idx(first, INT64) * sb + _idx(groups * cpg, INT64) * sc, mask=gmask,
                          other=0.0).to(tl.float32)
            tl.store(pivot_ptr + stat, piv, mask=gmask)
            tl.store(mshift_ptr + stat, m_mean, mask=gmask)
            tl.store(var_ptr + stat, m_m2 / tl.maximum(m_n, 1.0), mask=gmask)
        if UPDATE_RUNNING:
            if _ticket(counter_ptr + n_units) == n_units - 1:
                _running_update(rm_ptr, rv_ptr, nbt_ptr, pivot_ptr, mshift_ptr, var_ptr, C, momentum, unbias,
                                HAS_NBT, 256)
                tl.store(counter_ptr + n_units, 0)


@triton.jit
def _elementwise_tile(C, S, sb, ss, sc, n_sblk, n_cblk, n_prog,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, REVERSE: tl.constexpr, INT64: tl.constexpr):
    """This program's [BLOCK_S, BLOCK_C] tile of an elementwise pass: row b, columns, masks and offsets.

    REVERSE walks the tiles last-first: the statistics pass read them last, so they are still in L2.
    """
    pid = tl.program_id(0)
    if REVERSE:
        pid = n_prog - 1 - pid
    cblk = pid % n_cblk
    rest = pid // n_cblk
    sblk = rest % n_sblk
    b = rest // n_sblk
    cols = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rows = sblk * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = (rows < S)[:, None] & cmask[None, :]
    offs = _idx(b, INT64) * sb + _idx(rows, INT64)[:, None] * ss + _idx(cols, INT64)[None, :] * sc
    return b, sblk, cols, cmask, mask, offs


@triton.jit
def _column_stats(b, cols, cmask, stat_sb, cpg, pivot_ptr, mshift_ptr, var_ptr, eps):
    """pivot, mean - pivot and invstd of each column's statistic ([rows, G], read at b*stat_sb + c // cpg)."""
    stat = b * stat_sb + cols // cpg
    pivot = tl.load(pivot_ptr + stat, mask=cmask, other=0.0)
    mshift = tl.load(mshift_ptr + stat, mask=cmask, other=0.0)
    invstd = 1.0 / tl.sqrt_rn(tl.load(var_ptr + stat, mask=cmask, other=1.0) + eps)
    return stat, pivot, mshift, invstd


@triton.jit
def _weights(cols, cmask, w_ptr, b_ptr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    w = tl.full([cols.shape[0]], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    bias = tl.zeros([cols.shape[0]], tl.float32)
    if HAS_B:
        bias = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    return w, bias


@triton.jit
def apply_kernel(x_ptr, y_ptr, res_ptr, stats_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr,
                 C, S, sb, ss, sc, stat_sb, cpg, n_sblk, n_cblk, n_prog, eps,
                 n_stats,
                 BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                 HAS_W: tl.constexpr, HAS_B: tl.constexpr, FROM_RUNNING: tl.constexpr, REVERSE: tl.constexpr,
                 INT64: tl.constexpr):
    """y = act((x - mean) * invstd * w + b [+ residual]): one read of x (and residual), one write.

    FROM_RUNNING (eval): the statistics are the running buffers, read per channel; the tiles of the
    first row and position block also write them out as fp32 (pivot, 0, var) for the backward.
    """
    pivot_ptr, mshift_ptr, var_ptr = stats_ptr, stats_ptr + n_stats, stats_ptr + 2 * n_stats
    b, sblk, cols, cmask, mask, offs = _elementwise_tile(C, S, sb, ss, sc, n_sblk, n_cblk, n_prog, BLOCK_S,
                                                         BLOCK_C, REVERSE, INT64)
    if FROM_RUNNING:
        pivot = tl.load(rm_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        mshift = tl.zeros_like(pivot)
        var = tl.load(rv_ptr + cols, mask=cmask, other=1.0).to(tl.float32)
        invstd = 1.0 / tl.sqrt_rn(var + eps)
        if (b == 0) & (sblk == 0):
            tl.store(pivot_ptr + cols, pivot, mask=cmask)
            tl.store(mshift_ptr + cols, mshift, mask=cmask)
            tl.store(var_ptr + cols, var, mask=cmask)
    else:
        _, pivot, mshift, invstd = _column_stats(b, cols, cmask, stat_sb, cpg, pivot_ptr, mshift_ptr, var_ptr, eps)
    w, bias = _weights(cols, cmask, w_ptr, b_ptr, HAS_W, HAS_B)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = ((x - pivot[None, :]) - mshift[None, :]) * (invstd * w)[None, :] + bias[None, :]
    if HAS_RES:
        z += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = _activate(z, ACT)
    tl.store(y_ptr + offs, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _upstream_grad(xhat, dy, res_ptr, offs, mask, w, bias, ACT: tl.constexpr, HAS_RES: tl.constexpr):
    """Gradient w.r.t. the pre-activation sum (norm output + residual), recomputing that sum."""
    if ACT != 0:
        z = xhat * w[None, :] + bias[None, :]
        if HAS_RES:
            z += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.where(mask, _activation_grad(dy, z, ACT), 0.0)
    return dy


@triton.jit
def backward_partials_kernel(x_ptr, dy_ptr, res_ptr, dres_ptr, stats_ptr, w_ptr, b_ptr,
                             part_g_ptr, part_gx_ptr, sum_g_ptr, sum_gx_ptr, beta_ptr, gamma_ptr, counter_ptr,
                             B, C, S, sb, ss, sc, G, cpg, rows_per_prog, chunk_len, n_chunks, n_cblk, P_unit,
                             progs_per_unit, sum_stride, eps, inv_n,
                             n_stats,
                             BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, PER_SAMPLE: tl.constexpr,
                             GROUPED: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr,
                             BLOCK_J: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                             WRITE_DRES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                             BATCH_STATS: tl.constexpr, NUM_STAGES: tl.constexpr, INT64: tl.constexpr):
    """Backward statistics pass of R2/R3: per-program sums of g and g*xhat, then the fused reduction.

    g is the upstream gradient through the recomputed activation (written out as the residual's
    gradient while in registers). The last program of each merge unit sums the unit's partials in
    a fixed order into per-(row, channel) sums (``sum_g``/``sum_gx`` at ``r*sum_stride + c``:
    dbias/dweight, or their per-sample parts) and, for batch statistics, the per-statistic coefficients
    beta = -invstd*mean(w*g*xhat), gamma = -invstd*mean(w*g) of the dx pass.
    """
    pivot_ptr, mshift_ptr, var_ptr = stats_ptr, stats_ptr + n_stats, stats_ptr + 2 * n_stats
    pid = tl.program_id(0)
    p, cblk, b_start, n_rows, cols, s_start, s_end = _split_program(pid, B, S, rows_per_prog, chunk_len,
                                                                    n_chunks, n_cblk, BLOCK_C)
    cmask = cols < C
    # Rows of one program share their statistics (channel scope, or one row per program).
    _, pivot, mshift, invstd = _column_stats(b_start, cols, cmask, G if PER_SAMPLE else 0, cpg, pivot_ptr,
                                             mshift_ptr, var_ptr, eps)
    w, bias = _weights(cols, cmask, w_ptr, b_ptr, HAS_W, HAS_B)
    acc_g = tl.zeros([BLOCK_C], tl.float32)
    acc_gx = tl.zeros([BLOCK_C], tl.float32)
    tiles = tl.cdiv(s_end - s_start, BLOCK_S)
    c_off = _idx(cols, INT64)[None, :] * sc
    for t in tl.range(0, n_rows * tiles, num_stages=NUM_STAGES):
        b = b_start + t // tiles
        rows = tl.multiple_of(s_start + (t % tiles) * BLOCK_S, BLOCK_S) + tl.arange(0, BLOCK_S)
        mask = (rows < s_end)[:, None] & cmask[None, :]
        offs = _idx(b, INT64) * sb + _idx(rows, INT64)[:, None] * ss + c_off
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        centered = tl.where(mask, (x - pivot[None, :]) - mshift[None, :], 0.0)
        g = _upstream_grad(centered * invstd[None, :], dy, res_ptr, offs, mask, w, bias, ACT, HAS_RES)
        if WRITE_DRES:
            tl.store(dres_ptr + offs, g.to(dres_ptr.dtype.element_ty), mask=mask)
        acc_g += tl.sum(g, 0)
        acc_gx += tl.sum(g * centered, 0)   # times invstd once at the end: one rounding less per term
    out = _idx(p, INT64) * C + cols
    tl.store(part_g_ptr + out, acc_g, mask=cmask)
    tl.store(part_gx_ptr + out, acc_gx * invstd, mask=cmask)

    unit = _unit(p, cblk, n_chunks, P_unit, n_cblk, GROUPED)
    if _ticket(counter_ptr + unit) == progs_per_unit - 1:
        tl.store(counter_ptr + unit, 0)
        r, g_lo, g_hi = _unit_groups(unit, n_cblk, G, BLOCK_C, GROUPED)
        for g0 in range(g_lo, g_hi, BLOCK_G):
            groups = g0 + tl.arange(0, BLOCK_G)
            gmask = groups < g_hi
            acc_wg = tl.zeros([BLOCK_G], tl.float32)
            acc_wgx = tl.zeros([BLOCK_G], tl.float32)
            for j0 in range(0, cpg, BLOCK_J):
                j = j0 + tl.arange(0, BLOCK_J)
                ch = groups[:, None] * cpg + j[None, :]
                chmask = gmask[:, None] & (j < cpg)[None, :]
                s_g = tl.zeros([BLOCK_G, BLOCK_J], tl.float32)
                s_gx = tl.zeros([BLOCK_G, BLOCK_J], tl.float32)
                for k0 in range(0, P_unit, BLOCK_P):
                    k = k0 + tl.arange(0, BLOCK_P)
                    m = (k < P_unit)[:, None, None] & chmask[None, :, :]
                    idx = (_idx(r, INT64) * P_unit + k[:, None, None]) * C + ch[None, :, :]
                    s_g += tl.sum(tl.load(part_g_ptr + idx, mask=m, other=0.0, cache_modifier=".cg"), 0)
                    s_gx += tl.sum(tl.load(part_gx_ptr + idx, mask=m, other=0.0, cache_modifier=".cg"), 0)
                tl.store(sum_g_ptr + r * sum_stride + ch, s_g, mask=chmask)
                tl.store(sum_gx_ptr + r * sum_stride + ch, s_gx, mask=chmask)
                wj = tl.full([BLOCK_G, BLOCK_J], 1.0, tl.float32)
                if HAS_W:
                    wj = tl.load(w_ptr + ch, mask=chmask, other=0.0).to(tl.float32)
                acc_wg += tl.sum(wj * s_g, 1)
                acc_wgx += tl.sum(wj * s_gx, 1)
            stat = r * G + groups
            if BATCH_STATS:
                inv = 1.0 / tl.sqrt_rn(tl.load(var_ptr + stat, mask=gmask, other=1.0) + eps)
                tl.store(beta_ptr + stat, -inv * acc_wgx * inv_n, mask=gmask)
                tl.store(gamma_ptr + stat, -inv * acc_wg * inv_n, mask=gmask)
            else:
                tl.store(beta_ptr + stat, tl.zeros([BLOCK_G], tl.float32), mask=gmask)
                tl.store(gamma_ptr + stat, tl.zeros([BLOCK_G], tl.float32), mask=gmask)


@triton.jit
def backward_apply_kernel(x_ptr, dy_ptr, res_ptr, dx_ptr, stats_ptr, w_ptr, b_ptr,
                          beta_ptr, gamma_ptr,
                          C, S, sb, ss, sc, stat_sb, cpg, n_sblk, n_cblk, n_prog, eps,
                          n_stats,
                          BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACT: tl.constexpr,
                          HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, REVERSE: tl.constexpr,
                          INT64: tl.constexpr):
    """dx = invstd*w * g + beta * xhat + gamma, beta and gamma per statistic (see norm_backward)."""
    pivot_ptr, mshift_ptr, var_ptr = stats_ptr, stats_ptr + n_stats, stats_ptr + 2 * n_stats
    b, _, cols, cmask, mask, offs = _elementwise_tile(C, S, sb, ss, sc, n_sblk, n_cblk, n_prog, BLOCK_S, BLOCK_C,
                                                      REVERSE, INT64)
    stat, pivot, mshift, invstd = _column_stats(b, cols, cmask, stat_sb, cpg, pivot_ptr, mshift_ptr, var_ptr, eps)
    w, bias = _weights(cols, cmask, w_ptr, b_ptr, HAS_W, HAS_B)
    beta = tl.load(beta_ptr + stat, mask=cmask, other=0.0)
    gamma = tl.load(gamma_ptr + stat, mask=cmask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = ((x - pivot[None, :]) - mshift[None, :]) * invstd[None, :]
    g = _upstream_grad(xhat, dy, res_ptr, offs, mask, w, bias, ACT, HAS_RES)
    dx = (invstd * w)[None, :] * g + beta[None, :] * xhat + gamma[None, :]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def sum_rows_kernel(in_ptr, out_ptr, R, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Sum a contiguous [R, K] over R in a fixed order (no atomics); out [K] fp32."""
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = cols < K
    acc = tl.zeros([BLOCK_K], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < R)[:, None] & kmask[None, :]
        acc += tl.sum(tl.load(in_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0), 0)
    tl.store(out_ptr + cols, acc, mask=kmask)


@triton.jit
def running_update_kernel(rm_ptr, rv_ptr, nbt_ptr, pivot_ptr, mshift_ptr, var_ptr, C, momentum, unbias,
                          HAS_NBT: tl.constexpr, BLOCK: tl.constexpr):
    """The running-statistics update on its own (instance norm's batch-averaged statistics)."""
    _running_update(rm_ptr, rv_ptr, nbt_ptr, pivot_ptr, mshift_ptr, var_ptr, C, momentum, unbias, HAS_NBT, BLOCK)


# ======================================== host forward

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
    r1_forward_kernel[(g.programs,)](
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
    stats_kernel[(p.n_cblk * rows,)](
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
    apply_kernel[(n_prog,)](
        x, y, res, stats, w, b, rm, rv,
        v.C, v.S, v.sb, v.ss, v.sc, cp.num_groups if per_sample else 0, v.C // cp.num_groups if per_sample else 1,
        p.n_sblk, p.n_cblk, n_prog, eps, n_stats,
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, ACT=activation, HAS_RES=residual is not None,
        HAS_W=weight is not None, HAS_B=bias is not None, FROM_RUNNING=from_running, REVERSE=not from_running,
        INT64=cp.int64)


# ======================================== host backward

def _sum_partials(buf: torch.Tensor, C: int):
    """[rows, 2C] partials (dbias | dweight) summed over rows in a fixed order: (dweight, dbias) [C]."""
    rows = buf.shape[0]
    if rows == 1:
        flat = buf.view(-1)
    else:
        flat = torch.empty(2 * C, device=buf.device, dtype=torch.float32)
        block_k = min(128, 1 << max(0, (2 * C - 1).bit_length()))
        block_r = max(1, min(2048 // block_k, 1 << max(0, (rows - 1).bit_length())))
        sum_rows_kernel[(-(-2 * C // block_k),)](buf, flat, rows, 2 * C, BLOCK_R=block_r, BLOCK_K=block_k)
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
        r1_backward_kernel[(g.programs,)](
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
    backward_partials_kernel[(p.n_cblk * p.partial_rows,)](
        x, dy, res, dres if dres is not None else x, stats, w, b, part[0], part[1], sums, sums[:, C:],
        coef[0], coef[1], counters(x.device, u.n_units),
        view.B, C, view.S, view.sb, view.ss, view.sc, G, C // G, p.rows_per_prog, p.chunk_len, p.n_chunks,
        p.n_cblk, u.P_unit, u.progs_per_unit, 2 * C, eps, 1.0 / max(n, 1), stats.shape[1],
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, PER_SAMPLE=per_sample, GROUPED=u.grouped, BLOCK_P=u.block_p,
        BLOCK_G=u.block_g, BLOCK_J=u.block_j, WRITE_DRES=need_dres, BATCH_STATS=use_batch_stats,
        NUM_STAGES=plan.NUM_STAGES, num_warps=plan.SPLIT_NUM_WARPS, maxnreg=plan.SPLIT_MAXNREG, **flags)
    n_prog = p.n_cblk * view.B * p.n_sblk
    backward_apply_kernel[(n_prog,)](
        x, dy, res, dx, stats, w, b, coef[0], coef[1],
        C, view.S, view.sb, view.ss, view.sc, G if per_sample else 0, C // G, p.n_sblk, p.n_cblk, n_prog, eps,
        stats.shape[1],
        BLOCK_S=p.block_s, BLOCK_C=p.block_c, REVERSE=True, **flags)
    dweight, dbias = _sum_partials(sums, C)
    return dx, dweight, dbias, dres


# ======================================== eager autograd Function

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
            y, stats = norm_forward(x, weight, bias, residual, running_mean, running_var, num_groups, per_sample,
                                    use_batch_stats, eps, channel_axis, activation, update, cp)
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
            dx, dweight, dbias, dres = norm_backward(
                dy, x, weight, bias, residual, stats, num_groups, per_sample, use_batch_stats, eps, channel_axis,
                activation, need_dres, cp)
        dweight = dweight.to(weight.dtype) if weight is not None and wants[1] else None
        dbias = dbias.to(bias.dtype) if bias is not None and wants[2] else None
        return dx if wants[0] else None, dweight, dbias, dres, None, None, None, None, None


def eager_norm(x, weight, bias, residual, running_mean, running_var, num_groups: int, per_sample: bool,
               use_batch_stats: bool, eps: float, channel_axis: int, activation: int,
               update: Optional[RunningUpdate] = None, sink: Optional[list] = None,
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
        y, stats = norm_forward(x, weight, bias, residual, running_mean, running_var, num_groups, per_sample,
                                use_batch_stats, eps, channel_axis, activation, update, cp)
    if sink is not None:
        sink.append(stats)
    return y
