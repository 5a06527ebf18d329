"""Triton kernels (jit only: no validation, no shapes decided here; see ``plan``/``forward``/``backward``).

Every kernel sees the input through the canonical view of ``plan.CanonicalView``: a strided
``(B, C, S)`` tensor (B outer rows, C channels, S reduced positions) addressed as
``b*sb + c*sc + s*ss``. Tiles are ``[BLOCK_S, BLOCK_C]``; Triton specializes a stride equal to 1,
so the axis that is contiguous in memory (s for NCHW, c for NHWC / channel-last) is vectorized
and loads are coalesced without copying the tensor.

Statistics are fp32 ``[rows, G]`` arrays, one entry per statistic, read at ``b*stat_sb + c // cpg``
(``stat_sb`` = G per sample, 0 when every row shares them: channel norm, where G = C and cpg = 1);
weight and bias are read per channel. Nothing is expanded to ``[rows, C]``, so a layer norm over
(N, C) tokens moves no more than x itself.
"""
import triton
import triton.language as tl

# ACT codes (plan.ACTIVATION_CODES): 0 none, 1 relu, 2 silu, 3 gelu (exact, erf).


@triton.jit
def _offsets(b, s, c, sb, ss, sc, INT64: tl.constexpr):
    # int64 only when the host found an offset that can pass 2**31 (plan.needs_int64). b may be a plain
    # int (a literal row 0, or a range() index under the interpreter): tl.cast takes both, .to only tensors.
    if INT64:
        return tl.cast(b, tl.int64) * sb + s.to(tl.int64)[:, None] * ss + c.to(tl.int64)[None, :] * sc
    else:
        return b * sb + s[:, None] * ss + c[None, :] * sc


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
def _stat_index(b, cols, stat_sb, cpg):
    return b * stat_sb + cols // cpg


@triton.jit
def _chan_merge(acc_n, acc_mean, acc_m2, tile_n, tile_mean, tile_m2):
    """Chan's pairwise merge of (count, mean, M2) summaries; an empty tile leaves the accumulator as is."""
    new_n = acc_n + tile_n
    delta = tile_mean - acc_mean
    ratio = tile_n / tl.maximum(new_n, 1.0)
    return new_n, acc_mean + delta * ratio, acc_m2 + tile_m2 + delta * delta * acc_n * ratio


@triton.jit
def _split_program(C, S, rows_per_prog, chunk_len, n_chunks, n_cblk, BLOCK_C: tl.constexpr):
    """This split-reduction program's partial index p, first row, channel block and range of S."""
    pid = tl.program_id(0)
    cblk = pid % n_cblk
    p = pid // n_cblk
    b_start = (p // n_chunks) * rows_per_prog
    s_start = (p % n_chunks) * chunk_len
    cols = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
    return p, b_start, cols, cols < C, s_start, tl.minimum(s_start + chunk_len, S)


@triton.jit
def partial_stats_kernel(x_ptr, pivot_ptr, count_ptr, mean_ptr, m2_ptr,
                         B, C, S, sb, ss, sc, stat_sb, cpg, rows_per_prog, chunk_len, n_chunks, n_cblk,
                         BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, INT64: tl.constexpr):
    """Per (group of rows, chunk k of S, channel c): count, mean and centered M2 of ``x - pivot``.

    The pivot (one element of the statistic's own data, shared by all its partials) removes a
    large common offset before anything is summed (x - pivot is exact when they are close), and
    each tile is centered on its own mean and Chan-merged into the running (count, mean, M2): an
    input with mean 1e4 keeps the precision of one with mean 0. A program covers ``rows_per_prog``
    rows b (channel scope: fewer partials to merge when B is large; per sample: one row) and chunk
    k of S. Output index: (row group * n_chunks + k) * C + c.
    """
    p, b_start, cols, cmask, s_start, s_end = _split_program(C, S, rows_per_prog, chunk_len, n_chunks, n_cblk,
                                                             BLOCK_C)
    pivot = tl.load(pivot_ptr + _stat_index(b_start, cols, stat_sb, cpg), mask=cmask, other=0.0)
    acc_n = tl.zeros([BLOCK_C], tl.float32)
    acc_mean = tl.zeros([BLOCK_C], tl.float32)
    acc_m2 = tl.zeros([BLOCK_C], tl.float32)
    for b in range(b_start, tl.minimum(b_start + rows_per_prog, B)):
        for s0 in range(s_start, s_end, BLOCK_S):
            # chunk_len is a multiple of BLOCK_S: telling the compiler lets it vectorize contiguous loads.
            rows = tl.multiple_of(s0, BLOCK_S) + tl.arange(0, BLOCK_S)
            mask = (rows < s_end)[:, None] & cmask[None, :]
            x = tl.load(x_ptr + _offsets(b, rows, cols, sb, ss, sc, INT64), mask=mask, other=0.0).to(tl.float32)
            x = tl.where(mask, x - pivot[None, :], 0.0)
            tile_n = tl.sum(mask.to(tl.float32), 0)
            tile_mean = tl.sum(x, 0) / tl.maximum(tile_n, 1.0)
            centered = tl.where(mask, x - tile_mean[None, :], 0.0)
            tile_m2 = tl.sum(centered * centered, 0)
            acc_n, acc_mean, acc_m2 = _chan_merge(acc_n, acc_mean, acc_m2, tile_n, tile_mean, tile_m2)
    out = p * C + cols
    tl.store(count_ptr + out, acc_n, mask=cmask)
    tl.store(mean_ptr + out, acc_mean, mask=cmask)
    tl.store(m2_ptr + out, acc_m2, mask=cmask)


@triton.jit
def merge_stats_kernel(count_ptr, mean_ptr, m2_ptr, out_count_ptr, out_mean_ptr, out_m2_ptr,
                       R, K, so, sr, sk, n_kblk,
                       BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Merge partial (count, mean, M2) laid out as [S_out, R, K] (strides so, sr, sk) over R.

    Fixed order: blocks of BLOCK_R rows in increasing order, each combined exactly around its own
    mean, then Chan-merged into the accumulator; the result is the same on every run.
    Output: contiguous [S_out, K].
    """
    pid = tl.program_id(0)
    kblk = pid % n_kblk
    o = pid // n_kblk
    cols = kblk * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = cols < K
    acc_n = tl.zeros([BLOCK_K], tl.float32)
    acc_mean = tl.zeros([BLOCK_K], tl.float32)
    acc_m2 = tl.zeros([BLOCK_K], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < R)[:, None] & kmask[None, :]
        offs = o * so + rows[:, None] * sr + cols[None, :] * sk
        n = tl.load(count_ptr + offs, mask=mask, other=0.0)
        m = tl.load(mean_ptr + offs, mask=mask, other=0.0)
        m2 = tl.load(m2_ptr + offs, mask=mask, other=0.0)
        tile_n = tl.sum(n, 0)
        tile_mean = tl.sum(n * m, 0) / tl.maximum(tile_n, 1.0)
        d = m - tile_mean[None, :]
        tile_m2 = tl.sum(m2 + n * d * d, 0)
        acc_n, acc_mean, acc_m2 = _chan_merge(acc_n, acc_mean, acc_m2, tile_n, tile_mean, tile_m2)
    out = o * K + cols
    tl.store(out_count_ptr + out, acc_n, mask=kmask)
    tl.store(out_mean_ptr + out, acc_mean, mask=kmask)
    tl.store(out_m2_ptr + out, acc_m2, mask=kmask)


@triton.jit
def sum_rows_kernel(in_ptr, out_ptr, R, K, so, sr, sk, n_kblk,
                    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Sum [S_out, R, K] (strides so, sr, sk) over R in a fixed order (no atomics); out [S_out, K]."""
    pid = tl.program_id(0)
    kblk = pid % n_kblk
    o = pid // n_kblk
    cols = kblk * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = cols < K
    acc = tl.zeros([BLOCK_K], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < R)[:, None] & kmask[None, :]
        v = tl.load(in_ptr + o * so + rows[:, None] * sr + cols[None, :] * sk, mask=mask, other=0.0)
        acc += tl.sum(v, 0)
    tl.store(out_ptr + o * K + cols, acc, mask=kmask)


@triton.jit
def _normalizer(b, cols, cmask, stat_sb, cpg, pivot_ptr, mshift_ptr, invstd_ptr, w_ptr, b_ptr,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """Per column: pivot, mean - pivot, invstd of its statistic, scale = invstd*w and shift = bias."""
    stat = _stat_index(b, cols, stat_sb, cpg)
    pivot = tl.load(pivot_ptr + stat, mask=cmask, other=0.0)
    mshift = tl.load(mshift_ptr + stat, mask=cmask, other=0.0)
    invstd = tl.load(invstd_ptr + stat, mask=cmask, other=0.0)
    scale = invstd
    if HAS_W:
        scale = invstd * tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    shift = tl.zeros_like(invstd)
    if HAS_B:
        shift = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    return pivot, mshift, invstd, scale, shift


@triton.jit
def _elementwise_tile(C, S, sb, ss, sc, n_sblk, n_cblk,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, INT64: tl.constexpr):
    """This program's [BLOCK_S, BLOCK_C] tile of an elementwise pass: row b, columns, masks and offsets."""
    pid = tl.program_id(0)
    cblk = pid % n_cblk
    rest = pid // n_cblk
    sblk = rest % n_sblk
    b = rest // n_sblk
    cols = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rows = sblk * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = (rows < S)[:, None] & cmask[None, :]
    return b, cols, cmask, mask, _offsets(b, rows, cols, sb, ss, sc, INT64)


@triton.jit
def apply_kernel(x_ptr, y_ptr, res_ptr, pivot_ptr, mshift_ptr, invstd_ptr, w_ptr, b_ptr,
                 C, S, sb, ss, sc, stat_sb, cpg, n_sblk, n_cblk,
                 BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                 HAS_W: tl.constexpr, HAS_B: tl.constexpr, INT64: tl.constexpr):
    """y = act(((x - pivot) - mshift) * invstd * w + b [+ residual]): one read of x (and residual), one write.

    mean = pivot + mshift; subtracting the two parts separately keeps x - mean exact-ish for large means.
    """
    b, cols, cmask, mask, offs = _elementwise_tile(C, S, sb, ss, sc, n_sblk, n_cblk, BLOCK_S, BLOCK_C, INT64)
    pivot, mshift, _, scale, shift = _normalizer(b, cols, cmask, stat_sb, cpg, pivot_ptr, mshift_ptr, invstd_ptr,
                                                 w_ptr, b_ptr, HAS_W, HAS_B)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = ((x - pivot[None, :]) - mshift[None, :]) * scale[None, :] + shift[None, :]
    if HAS_RES:
        z += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = _activate(z, ACT)
    tl.store(y_ptr + offs, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _upstream_grad(centered, dy, res_ptr, offs, mask, scale, shift, ACT: tl.constexpr, HAS_RES: tl.constexpr):
    """Gradient w.r.t. the pre-activation sum (norm output + residual), recomputing that sum."""
    if ACT != 0:
        z = centered * scale[None, :] + shift[None, :]
        if HAS_RES:
            z += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = _activation_grad(dy, z, ACT)
    return dy


@triton.jit
def backward_partials_kernel(x_ptr, dy_ptr, res_ptr, dres_ptr, pivot_ptr, mshift_ptr, invstd_ptr, w_ptr, b_ptr,
                             sum_g_ptr, sum_gx_ptr,
                             B, C, S, sb, ss, sc, stat_sb, cpg, rows_per_prog, chunk_len, n_chunks, n_cblk,
                             BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACT: tl.constexpr,
                             HAS_RES: tl.constexpr, WRITE_DRES: tl.constexpr, HAS_W: tl.constexpr,
                             HAS_B: tl.constexpr, INT64: tl.constexpr):
    """Per (group of rows, chunk k, channel c): sum(g) and sum(g * xhat), g the upstream gradient.

    With a residual the residual's gradient is g itself, written here while it is in registers.
    Rows and chunks as in ``partial_stats_kernel``; reduced later in a fixed order.
    """
    p, b_start, cols, cmask, s_start, s_end = _split_program(C, S, rows_per_prog, chunk_len, n_chunks, n_cblk,
                                                             BLOCK_C)
    # Rows of one program share their statistics (stat_sb = 0, or one row per program).
    pivot, mshift, invstd, scale, shift = _normalizer(b_start, cols, cmask, stat_sb, cpg, pivot_ptr, mshift_ptr,
                                                      invstd_ptr, w_ptr, b_ptr, HAS_W, HAS_B)
    acc_g = tl.zeros([BLOCK_C], tl.float32)
    acc_gx = tl.zeros([BLOCK_C], tl.float32)
    for b in range(b_start, tl.minimum(b_start + rows_per_prog, B)):
        for s0 in range(s_start, s_end, BLOCK_S):
            rows = tl.multiple_of(s0, BLOCK_S) + tl.arange(0, BLOCK_S)
            mask = (rows < s_end)[:, None] & cmask[None, :]
            offs = _offsets(b, rows, cols, sb, ss, sc, INT64)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            centered = (x - pivot[None, :]) - mshift[None, :]
            g = _upstream_grad(centered, dy, res_ptr, offs, mask, scale, shift, ACT, HAS_RES)
            if WRITE_DRES:
                tl.store(dres_ptr + offs, g.to(dres_ptr.dtype.element_ty), mask=mask)
            xhat = tl.where(mask, centered * invstd[None, :], 0.0)
            acc_g += tl.sum(g, 0)
            acc_gx += tl.sum(g * xhat, 0)
    out = p * C + cols
    tl.store(sum_g_ptr + out, acc_g, mask=cmask)
    tl.store(sum_gx_ptr + out, acc_gx, mask=cmask)


@triton.jit
def backward_apply_kernel(x_ptr, dy_ptr, res_ptr, dx_ptr, pivot_ptr, mshift_ptr, invstd_ptr, w_ptr, b_ptr,
                          beta_ptr, gamma_ptr,
                          C, S, sb, ss, sc, stat_sb, cpg, n_sblk, n_cblk,
                          BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACT: tl.constexpr,
                          HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, INT64: tl.constexpr):
    """dx = invstd*w * g + beta * xhat + gamma, beta and gamma per statistic (see backward.py)."""
    b, cols, cmask, mask, offs = _elementwise_tile(C, S, sb, ss, sc, n_sblk, n_cblk, BLOCK_S, BLOCK_C, INT64)
    pivot, mshift, invstd, scale, shift = _normalizer(b, cols, cmask, stat_sb, cpg, pivot_ptr, mshift_ptr,
                                                      invstd_ptr, w_ptr, b_ptr, HAS_W, HAS_B)
    stat = _stat_index(b, cols, stat_sb, cpg)
    beta = tl.load(beta_ptr + stat, mask=cmask, other=0.0)
    gamma = tl.load(gamma_ptr + stat, mask=cmask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    centered = (x - pivot[None, :]) - mshift[None, :]
    g = _upstream_grad(centered, dy, res_ptr, offs, mask, scale, shift, ACT, HAS_RES)
    xhat = centered * invstd[None, :]
    dx = scale[None, :] * g + beta[None, :] * xhat + gamma[None, :]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def finalize_kernel(count_ptr, m2_ptr, pivot_ptr, mshift_ptr, invstd_ptr, mean_ptr, var_ptr, n_stats, eps,
                    FROM_M2: tl.constexpr, BLOCK: tl.constexpr):
    """Per statistic: biased var (m2 / count, or given), invstd, and mean = pivot + mshift (fp32)."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx < n_stats
    var = tl.load(m2_ptr + idx, mask=m, other=1.0).to(tl.float32)
    if FROM_M2:
        var = var / tl.load(count_ptr + idx, mask=m, other=1.0)
    pivot = tl.load(pivot_ptr + idx, mask=m, other=0.0).to(tl.float32)
    mshift = tl.load(mshift_ptr + idx, mask=m, other=0.0)
    tl.store(invstd_ptr + idx, 1.0 / tl.sqrt_rn(var + eps), mask=m)
    tl.store(mean_ptr + idx, pivot + mshift, mask=m)
    tl.store(var_ptr + idx, var, mask=m)


@triton.jit
def running_update_kernel(rm_ptr, rv_ptr, nbt_ptr, pivot_ptr, mshift_ptr, var_ptr, C, momentum, unbias,
                          HAS_NBT: tl.constexpr, BLOCK: tl.constexpr):
    """running <- (1-m)*running + m*batch (mean = pivot + mshift; var unbiased by ``unbias`` = n/(n-1)).

    One program: a first sweep checks every candidate is finite (after rounding to the buffer's
    dtype), a second writes them only if so and counts the batch in num_batches_tracked.
    """
    FLT_MAX: tl.constexpr = 3.4028234663852886e38
    bad = tl.zeros([BLOCK], tl.int32)
    for c0 in range(0, C, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        cmask = cols < C
        rm = tl.load(rm_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        mean = tl.load(pivot_ptr + cols, mask=cmask, other=0.0) + tl.load(mshift_ptr + cols, mask=cmask, other=0.0)
        new_m = rm * (1.0 - momentum) + mean * momentum
        new_v = rv * (1.0 - momentum) + tl.load(var_ptr + cols, mask=cmask, other=0.0) * (unbias * momentum)
        new_m = new_m.to(rm_ptr.dtype.element_ty).to(tl.float32)
        new_v = new_v.to(rv_ptr.dtype.element_ty).to(tl.float32)
        finite = (tl.abs(new_m) <= FLT_MAX) & (tl.abs(new_v) <= FLT_MAX)
        bad += (cmask & ~finite).to(tl.int32)
    if tl.sum(bad, 0) == 0:
        for c0 in range(0, C, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            cmask = cols < C
            rm = tl.load(rm_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            rv = tl.load(rv_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            mean = tl.load(pivot_ptr + cols, mask=cmask, other=0.0) + tl.load(mshift_ptr + cols, mask=cmask, other=0.0)
            new_m = rm * (1.0 - momentum) + mean * momentum
            new_v = rv * (1.0 - momentum) + tl.load(var_ptr + cols, mask=cmask, other=0.0) * (unbias * momentum)
            tl.store(rm_ptr + cols, new_m.to(rm_ptr.dtype.element_ty), mask=cmask)
            tl.store(rv_ptr + cols, new_v.to(rv_ptr.dtype.element_ty), mask=cmask)
        if HAS_NBT:
            tl.store(nbt_ptr, tl.load(nbt_ptr) + 1)


@triton.jit
def coefficients_kernel(sum_g_ptr, sum_gx_ptr, w_ptr, invstd_ptr, beta_ptr, gamma_ptr,
                        C, G, cpg, inv_n, n_gblk,
                        HAS_W: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr):
    """Per statistic s = (row, group): beta = -invstd*mean_s(w*g*xhat), gamma = -invstd*mean_s(w*g).

    From the per-(row, channel) sums of g and g*xhat, in a fixed-order sweep over the group's
    channels. Tile [BLOCK_G groups, BLOCK_J channels of a group].
    """
    pid = tl.program_id(0)
    gblk = pid % n_gblk
    r = pid // n_gblk
    groups = gblk * BLOCK_G + tl.arange(0, BLOCK_G)
    gmask = groups < G
    acc_g = tl.zeros([BLOCK_G], tl.float32)
    acc_gx = tl.zeros([BLOCK_G], tl.float32)
    for j0 in range(0, cpg, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        cols = groups[:, None] * cpg + j[None, :]
        mask = gmask[:, None] & (j < cpg)[None, :]
        w = tl.full([BLOCK_G, BLOCK_J], 1.0, tl.float32)
        if HAS_W:
            w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        acc_g += tl.sum(w * tl.load(sum_g_ptr + r * C + cols, mask=mask, other=0.0), 1)
        acc_gx += tl.sum(w * tl.load(sum_gx_ptr + r * C + cols, mask=mask, other=0.0), 1)
    invstd = tl.load(invstd_ptr + r * G + groups, mask=gmask, other=0.0)
    tl.store(beta_ptr + r * G + groups, -invstd * acc_gx * inv_n, mask=gmask)
    tl.store(gamma_ptr + r * G + groups, -invstd * acc_g * inv_n, mask=gmask)


@triton.jit
def _rows_tile(x_ptr, dy_ptr, res_ptr, w_ptr, b_ptr, rows, rmask, c0, C, sb, sc, pivot, mshift, invstd,
               BLOCK_C: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr,
               HAS_B: tl.constexpr, INT64: tl.constexpr):
    """Columns c0.. of a block of rows: masks, offsets, weight, xhat (0 where masked) and the upstream grad g."""
    cols = c0 + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = rmask[:, None] & cmask[None, :]
    offs = _offsets(0, rows, cols, 0, sb, sc, INT64)
    w = tl.full([BLOCK_C], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = tl.where(mask, ((x - pivot[:, None]) - mshift[:, None]) * invstd[:, None], 0.0)
    g = dy
    if ACT != 0:
        z = xhat * w[None, :]
        if HAS_B:
            z += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            z += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = _activation_grad(dy, z, ACT)
    return cols, cmask, mask, offs, w, xhat, g


@triton.jit
def rows_backward_kernel(x_ptr, dy_ptr, res_ptr, dres_ptr, dx_ptr, pivot_ptr, mshift_ptr, invstd_ptr, w_ptr, b_ptr,
                         part_g_ptr, part_gx_ptr, N, C, sb, sc, inv_n,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr,
                         WRITE_DRES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                         INT64: tl.constexpr):
    """Whole backward of a per-row statistic over channels (layer norm over (N, C) rows), BLOCK_R rows a program.

    Sweep 1 over the channels: the row sums of w*g and w*g*xhat (for dx) and this program's column
    sums of g and g*xhat (partials of dbias, dweight; reduced later in a fixed order). Sweep 2
    re-reads the rows (just read: cache-hot) and writes dx. Partials are [programs, C], not [N, C].
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    pivot = tl.load(pivot_ptr + rows, mask=rmask, other=0.0)
    mshift = tl.load(mshift_ptr + rows, mask=rmask, other=0.0)
    invstd = tl.load(invstd_ptr + rows, mask=rmask, other=0.0)
    acc_wg = tl.zeros([BLOCK_R], tl.float32)
    acc_wgx = tl.zeros([BLOCK_R], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols, cmask, mask, offs, w, xhat, g = _rows_tile(
            x_ptr, dy_ptr, res_ptr, w_ptr, b_ptr, rows, rmask, c0, C, sb, sc, pivot, mshift, invstd,
            BLOCK_C, ACT, HAS_RES, HAS_W, HAS_B, INT64)
        if WRITE_DRES:
            tl.store(dres_ptr + offs, g.to(dres_ptr.dtype.element_ty), mask=mask)
        wg = g * w[None, :]
        acc_wg += tl.sum(wg, 1)
        acc_wgx += tl.sum(wg * xhat, 1)
        tl.store(part_g_ptr + pid * C + cols, tl.sum(g, 0), mask=cmask)
        tl.store(part_gx_ptr + pid * C + cols, tl.sum(g * xhat, 0), mask=cmask)
    beta = -invstd * acc_wgx * inv_n
    gamma = -invstd * acc_wg * inv_n
    for c0 in range(0, C, BLOCK_C):
        cols, cmask, mask, offs, w, xhat, g = _rows_tile(
            x_ptr, dy_ptr, res_ptr, w_ptr, b_ptr, rows, rmask, c0, C, sb, sc, pivot, mshift, invstd,
            BLOCK_C, ACT, HAS_RES, HAS_W, HAS_B, INT64)
        dx = (invstd[:, None] * w[None, :]) * g + beta[:, None] * xhat + gamma[:, None]
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
