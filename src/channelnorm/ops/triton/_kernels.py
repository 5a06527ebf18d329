"""Triton kernels (jit only: no validation, no shapes decided here; see ``plan``/``forward``/``backward``).

Two families, one per regime of ``plan`` (docs in ``ops/triton/__init__.py``):

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
"""
import triton
import triton.language as tl

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
    """dx = invstd*w * g + beta * xhat + gamma, beta and gamma per statistic (see backward.py)."""
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
