"""Host-side decisions for the kernels: the canonical strided view, the regime, tile shapes, split
counts, index width, and the traffic model of each call.

Nothing here launches a kernel; everything is plain integers so it can be unit-tested without a GPU.
``call_plan`` is cached per (shape, strides, dtype size, scope, device limits): a repeated call costs
one dictionary lookup.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

ACTIVATION_CODES = {"none": 0, "relu": 1, "silu": 2, "gelu": 3}

# Elements per [BLOCK_S, BLOCK_C] tile: 2048 fp32 values = 8 KiB of registers per program, enough
# in-flight loads to cover DRAM latency on a memory-bound kernel without spilling.
TILE_ELEMENTS = 2048
# Widest channel block on the channel-contiguous (NHWC) path: 128 fp32 = 512 contiguous bytes per row.
MAX_BLOCK_C_CHANNEL_FASTEST = 128
# A split-reduction program should stream at least this many tiles so its partial write is amortized.
MIN_TILES_PER_PROGRAM = 4
INT32_LIMIT = 2**31 - 1
# Bytes of input per streamed tile in the R2/R3 kernels (tiles are sized in bytes: bf16 tiles hold
# twice the elements of fp32 ones, so every load instruction moves the same 16 bytes per thread).
TILE_BYTES = 8192
# R1 (bytes-based): a program keeps its statistics' whole slices in registers as fp32, padded to
# powers of two. 16 KiB = 4096 fp32 over 16 warps = 8 registers per thread per tensor (x; x, dy, g,
# xhat backward): no spills at sm_90 (tests/ops/triton/triton_sm90_compile.py; 32 KiB spilled).
R1_MAX_TILE_BYTES = 16384
R1_MAX_ELEMENTS = R1_MAX_TILE_BYTES // 4   # fp32 working values per tensor
# Fraction of the device's L2 the second pass can count on finding the first pass's data in.
L2_USABLE_FRACTION = 0.5
# Pipeline depth of the statistics loops (cp.async stages). The tuning space a GPU run compares
# (``benchmarks/bench_kernels.py --tune``) is TUNE_CANDIDATES below. 2 (double buffering, 16 KiB of shared memory per
# program for fp32 tiles) is what compiles without spills for every variant at sm_90; 3 spilled 4 B
# in the grouped statistics kernel.
NUM_STAGES = 3
# Warps of the two statistics kernels, and their register ceiling: naming one (.maxnreg) stops ptxas
# from capping registers for occupancy on its own, which spilled 4-20 bytes in some variants at sm_90.
SPLIT_NUM_WARPS = 4
SPLIT_MAXNREG = 255
# (NUM_STAGES, TILE_BYTES) pairs for the split (R2/R3) kernels; the first is the default above.
TUNE_CANDIDATES = ((3, 8192), (2, 8192), (4, 8192), (3, 4096), (3, 16384))


@dataclass(frozen=True)
class CanonicalView:
    """x addressed as ``b*sb + c*sc + s*ss`` for b < B, c < C, s < S (no copy)."""
    B: int
    C: int
    S: int
    sb: int
    sc: int
    ss: int


@dataclass(frozen=True)
class Plan:
    block_s: int
    block_c: int
    n_cblk: int
    n_sblk: int        # tiles along S for the elementwise kernels
    chunk_len: int     # positions of S per split-reduction program; a multiple of block_s (kernels rely on it)
    n_chunks: int
    rows_per_prog: int  # rows b per split-reduction program (1 for per-sample statistics)
    n_row_groups: int
    int64: bool

    @property
    def partial_rows(self) -> int:
        """Partials per channel written by the split-reduction kernels."""
        return self.n_row_groups * self.n_chunks


def _collapse(dims: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge (size, stride) dims into as few as possible, ordered by decreasing stride.

    Order inside a merged dim does not matter: statistics are order-free and every tensor the
    kernels touch is addressed with the same strides.
    """
    dims = sorted(((n, st) for n, st in dims if n != 1), key=lambda d: -d[1])
    merged: list[tuple[int, int]] = []
    for n, st in dims:
        if merged and merged[-1][1] == n * st:
            merged[-1] = (merged[-1][0] * n, st)
        else:
            merged.append((n, st))
    return merged


def canonical_view(shape, strides, channel_axis: int, per_sample: bool) -> Optional[CanonicalView]:
    """(B, C, S) view of a tensor, or None when its strides need more than that (caller copies).

    Channel scope (``per_sample=False``): every non-channel axis is reduced; they collapse into
    at most two dims (B rows of S). Per-sample scopes: B is the batch axis 0 and the other
    non-channel axes must collapse into one dim S.
    """
    C, sc = shape[channel_axis], strides[channel_axis]
    if per_sample:
        rest = [(shape[d], strides[d]) for d in range(1, len(shape)) if d != channel_axis]
        merged = _collapse(rest)
        if len(merged) > 1:
            return None
        S, ss = merged[0] if merged else (1, 1)
        return CanonicalView(shape[0], C, S, strides[0], sc, ss)
    rest = [(shape[d], strides[d]) for d in range(len(shape)) if d != channel_axis]
    merged = _collapse(rest)
    if len(merged) > 2:
        return None
    if len(merged) == 2:
        (B, sb), (S, ss) = merged
    elif len(merged) == 1:
        (B, sb), (S, ss) = (1, 0), merged[0]
    else:
        (B, sb), (S, ss) = (1, 0), (1, 1)
    return CanonicalView(B, C, S, sb, sc, ss)


def needs_int64(view: CanonicalView, partial_rows: int = 1) -> bool:
    """True when some element offset (or partial-buffer index) can pass 2**31 - 1."""
    last = (view.B - 1) * view.sb + (view.C - 1) * view.sc + (view.S - 1) * view.ss
    return last > INT32_LIMIT or partial_rows * view.C > INT32_LIMIT


def _pow2_at_most(n: int, cap: int) -> int:
    return max(1, min(cap, 1 << max(0, math.ceil(math.log2(max(n, 1))))))


def tile_shape(view: CanonicalView, tile_elements: Optional[int] = None) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_C): the contiguous axis gets the long side of the tile.

    NCHW (s contiguous): a column of up to ``tile_elements`` positions, widened over channels only
    when S is small (late ResNet stages: 7x7). NHWC / channel-last (c contiguous): up to 128
    channels wide, rows to fill the tile. Neither contiguous: the smaller stride is treated as the
    contiguous one.
    """
    tile_elements = tile_elements or TILE_ELEMENTS
    s_fastest = view.S > 1 and (view.C == 1 or view.ss < view.sc)
    if s_fastest:
        block_s = _pow2_at_most(view.S, tile_elements)
        block_c = _pow2_at_most(view.C, max(1, tile_elements // block_s))
    else:
        block_c = _pow2_at_most(view.C, min(MAX_BLOCK_C_CHANNEL_FASTEST, tile_elements))
        block_s = _pow2_at_most(view.S, max(1, tile_elements // block_c))
        # Few positions (per-sample norms of (N, C) rows): widen over channels to fill the tile.
        block_c = _pow2_at_most(view.C, max(block_c, tile_elements // block_s))
    return block_s, block_c


def make_plan(view: CanonicalView, target_programs: int, per_sample: bool = False,
              tile_elements: Optional[int] = None) -> Plan:
    """Tile shape plus how the statistics pass splits each channel block over programs.

    About ``target_programs`` programs per pass. Small C with huge N*H*W (ResNet stem): few channel
    blocks, so S is cut into chunks. Large C with small N*H*W (late stages, batch 2): the channel
    blocks alone fill the device and nothing is split. Channel scope with many rows (NCHW, large N):
    a program takes several whole rows, so each channel has about ``target_programs / n_cblk``
    partials to merge rather than one per row. Each program streams at least
    ``MIN_TILES_PER_PROGRAM`` tiles unless the data is shorter than that.
    """
    block_s, block_c = tile_shape(view, tile_elements)
    n_cblk = math.ceil(view.C / block_c)
    n_sblk = math.ceil(view.S / block_s)
    B = max(view.B, 1)
    per_cblk = max(1, math.ceil(target_programs / n_cblk))     # programs wanted per channel block
    rows_per_prog = 1
    if not per_sample and B > per_cblk:
        rows_per_prog = B // per_cblk
    n_row_groups = math.ceil(B / rows_per_prog)
    wanted_chunks = max(1, math.ceil(per_cblk / n_row_groups))
    n_chunks = max(1, min(wanted_chunks, n_sblk // MIN_TILES_PER_PROGRAM))
    chunk_len = math.ceil(n_sblk / n_chunks) * block_s
    n_chunks = math.ceil(view.S / chunk_len)
    return Plan(block_s, block_c, n_cblk, n_sblk, chunk_len, n_chunks, rows_per_prog, n_row_groups,
                needs_int64(view, n_row_groups * n_chunks))


def target_programs(device: torch.device) -> int:
    """Programs that keep every SM busy (4 per SM); the CPU interpreter runs them one by one."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def is_dense(shape, strides) -> bool:
    """Non-overlapping and dense: ``torch.empty_like`` then has the same strides (outputs match inputs)."""
    dims = sorted(((n, st) for n, st in zip(shape, strides) if n != 1), key=lambda d: d[1])
    expected = 1
    for n, st in dims:
        if st != expected:
            return False
        expected *= n
    return True


# ------------------------------------------------------------------------------------ call plans

class DeviceLimits(NamedTuple):
    programs: int     # programs that fill the device (4 per SM; 4 on the CPU interpreter)
    sms: int          # streaming multiprocessors (1 on CPU)
    l2_bytes: int     # L2 cache size (nominal 50 MiB on CPU, where it only feeds the traffic model)


@functools.lru_cache(maxsize=None)
def _cuda_limits(index: int) -> DeviceLimits:
    props = torch.cuda.get_device_properties(index)
    return DeviceLimits(4 * props.multi_processor_count, props.multi_processor_count,
                        int(getattr(props, "L2_cache_size", 50 * 2**20)))


def device_limits(device: torch.device) -> DeviceLimits:
    if device.type == "cuda":
        return _cuda_limits(device.index if device.index is not None else torch.cuda.current_device())
    return DeviceLimits(target_programs(device), 1, 50 * 2**20)


class R1Geometry(NamedTuple):
    """x as ``row*s_row + u*su + v*sv + k*sk``; statistic (row, k) over (u, v); channel k*cpk + v*cpv.

    ch_mode: 0 channel = k (channel scope), 1 channel = k*cpg + v (groups of one row), 2 channel = v
    (k runs over rows: one group per row, e.g. layer norm over (N, C) tokens). dweight/dbias
    partials: row ``row*prow_per_row + kblk*prow_per_kblk`` of ``[partial_rows, C]``.
    """
    rows: int
    s_row: int
    U: int
    su: int
    V: int
    sv: int
    K: int
    sk: int
    cpk: int
    cpv: int
    ch_mode: int
    block_u: int
    block_v: int
    block_k: int
    n_kblk: int
    prow_per_row: int
    prow_per_kblk: int
    partial_rows: int
    num_warps: int

    @property
    def programs(self) -> int:
        return self.rows * self.n_kblk


class Traffic(NamedTuple):
    """Bytes each pass moves to or from DRAM (``passes``: (kernel, bytes)) and kernel launches."""
    passes: tuple
    launches: int

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.passes)


class MergeUnits(NamedTuple):
    """How the last program of each merge unit finds its partials (see ``norm.stats_kernel``)."""
    grouped: bool          # a statistic spans several channels: one unit per row, all channel blocks
    P_unit: int            # partial rows per statistic row
    progs_per_unit: int
    n_units: int
    block_p: int
    block_g: int
    block_j: int


def merge_units(split: Plan, view: CanonicalView, num_groups: int, per_sample: bool) -> MergeUnits:
    cpg = view.C // num_groups
    grouped = per_sample and cpg > 1
    P_unit = split.n_chunks if per_sample else split.partial_rows
    if grouped:
        progs, n_units = P_unit * split.n_cblk, view.B
        block_j = min(_pow2(cpg), 64)
        block_g = max(1, min(_pow2(num_groups), 256 // block_j))
    else:
        progs, n_units = P_unit, (view.B if per_sample else 1) * split.n_cblk
        block_j, block_g = 1, split.block_c
    block_p = max(1, min(_pow2(P_unit), 512 // (block_g * block_j)))   # 512-element merge tiles: no spills
    return MergeUnits(grouped, P_unit, progs, n_units, block_p, block_g, block_j)


class CallPlan(NamedTuple):
    dense: bool                     # x is non-overlapping and dense (outputs get its strides)
    regime_fwd: str                 # "R1" | "R2" | "R3" (training); eval forward is one pass
    regime_bwd: str
    view: CanonicalView             # (B, C, S) view of x
    stats_view: CanonicalView       # view of the statistics pass (per-group runs for contiguous groups)
    stats_cpg: int                  # channels per statistic in stats_view
    num_groups: int                 # statistics per row (C for channel scope)
    per_sample: bool
    r1: Optional[R1Geometry]
    stats_split: Plan               # R2/R3 forward statistics pass on stats_view
    split: Plan                     # forward elementwise pass on view
    bwd_split: Plan                 # backward passes on view: half the elements per tile (x and dy loaded)
    stats_units: MergeUnits
    bwd_units: MergeUnits
    int64: bool
    fwd_traffic: Traffic
    bwd_traffic: Traffic
    eval_traffic: Traffic


def _pow2(n: int) -> int:
    return 1 << max(0, (max(n, 1) - 1).bit_length())


def r1_geometry(view: CanonicalView, num_groups: int, per_sample: bool, itemsize: int,
                limits: DeviceLimits, max_elements: int) -> Optional[R1Geometry]:
    """Geometry of the one-pass kernels, or None when a statistic's padded slice exceeds ``max_elements``."""
    B, C, S = view.B, view.C, view.S
    if not per_sample:
        geo = dict(rows=1, s_row=0, U=B, su=view.sb, V=S, sv=view.ss, K=C, sk=view.sc, cpk=1, cpv=0, ch_mode=0)
    elif num_groups == 1:
        geo = dict(rows=1, s_row=0, U=S, su=view.ss, V=C, sv=view.sc, K=B, sk=view.sb, cpk=0, cpv=1, ch_mode=2)
    else:
        cpg = C // num_groups
        geo = dict(rows=B, s_row=view.sb, U=S, su=view.ss, V=cpg, sv=view.sc, K=num_groups, sk=cpg * view.sc,
                   cpk=cpg, cpv=1, ch_mode=1)
    block_u, block_v = _pow2(geo["U"]), _pow2(geo["V"])
    if block_u * block_v > max_elements:
        return None
    K = geo["K"]
    block_k = min(_pow2(K), max(1, max_elements // (block_u * block_v)))
    # Enough programs to fill every SM: narrow the k block, but keep at least 16 contiguous bytes
    # per row when k is the contiguous axis.
    min_k = max(1, 16 // itemsize) if geo["sk"] == 1 else 1
    while block_k > min_k and geo["rows"] * math.ceil(K / block_k) < limits.sms:
        block_k //= 2
    n_kblk = math.ceil(K / block_k)
    prow = {0: (0, 0, 1), 1: (1, 0, B), 2: (0, 1, n_kblk)}[geo["ch_mode"]]
    tile = block_u * block_v * block_k
    warps = 16 if tile >= 4096 else 8 if tile >= 2048 else 4   # <= 16 fp32 per thread per tensor: no spills
    return R1Geometry(**geo, block_u=block_u, block_v=block_v, block_k=block_k, n_kblk=n_kblk,
                      prow_per_row=prow[0], prow_per_kblk=prow[1], partial_rows=prow[2], num_warps=warps)


def _traffic(regime: str, nbytes: int, l2_usable: int, backward: bool, r1: Optional[R1Geometry],
             per_sample: bool, B: int) -> Traffic:
    """DRAM bytes per pass (x-sized tensors only; statistics and partials are small) and launches."""
    if not backward:
        if regime == "R1":
            return Traffic((("r1_forward", 2 * nbytes),), 1)
        spill = 0 if regime == "R2" else max(0, nbytes - l2_usable)
        return Traffic((("stats", nbytes), ("apply", nbytes + spill)), 2)
    if regime == "R1":
        return Traffic((("r1_backward", 3 * nbytes),), 1 + (r1.partial_rows > 1))
    spill = 0 if regime == "R2" else max(0, 2 * nbytes - l2_usable)
    return Traffic((("backward_partials", 2 * nbytes), ("backward_apply", nbytes + spill)),
                   2 + (per_sample and B > 1))


@functools.lru_cache(maxsize=4096)
def _call_plan(shape: tuple, strides: tuple, itemsize: int, channel_axis: int, num_groups: int, per_sample: bool,
               limits: DeviceLimits, r1_max_elements: int, tile_bytes: int, int32_limit: int) -> Optional[CallPlan]:
    view = canonical_view(shape, strides, channel_axis, per_sample)
    if view is None:
        return None
    dense = is_dense(shape, strides)
    tile_elements = max(1, tile_bytes // itemsize)
    G = num_groups if per_sample else view.C
    stats_view, stats_cpg = view, 1 if not per_sample else view.C // G
    if per_sample:
        grouped = group_view(view, G)
        if grouped is not None:
            stats_view, stats_cpg = grouped, 1
    split = make_plan(view, limits.programs, per_sample, tile_elements)
    bwd_split = make_plan(view, limits.programs, per_sample, max(1, tile_elements // 2))
    stats_split = split if stats_view is view else make_plan(stats_view, limits.programs, True, tile_elements)
    r1 = r1_geometry(view, G, per_sample, itemsize, limits, r1_max_elements)
    nbytes = view.B * view.C * view.S * itemsize
    l2_usable = int(limits.l2_bytes * L2_USABLE_FRACTION)
    regime_fwd = "R1" if r1 else ("R2" if nbytes <= l2_usable else "R3")
    regime_bwd = "R1" if r1 else ("R2" if 2 * nbytes <= l2_usable else "R3")
    int64 = (split.int64 or stats_split.int64 or bwd_split.int64
             or needs_int64(view, max(split.partial_rows, bwd_split.partial_rows, 2 * view.B))
             or (r1 is not None and r1.partial_rows * view.C > INT32_LIMIT))
    return CallPlan(dense, regime_fwd, regime_bwd, view, stats_view, stats_cpg, G, per_sample, r1, stats_split, split,
                    bwd_split,
                    merge_units(stats_split, stats_view, stats_view.C // stats_cpg if per_sample else stats_view.C,
                                per_sample),
                    merge_units(bwd_split, view, G, per_sample), int64,
                    _traffic(regime_fwd, nbytes, l2_usable, False, r1, per_sample, view.B),
                    _traffic(regime_bwd, nbytes, l2_usable, True, r1, per_sample, view.B),
                    Traffic((("apply", 2 * nbytes),), 1))


def call_plan(x: torch.Tensor, channel_axis: int, num_groups: int, per_sample: bool) -> Optional[CallPlan]:
    """The cached plan of a call on ``x``; None (or ``dense`` False) when its strides need a copy first."""
    return _call_plan(tuple(x.shape), x.stride(), x.element_size(), channel_axis, num_groups, per_sample,
                      device_limits(x.device), R1_MAX_TILE_BYTES // 4, TILE_BYTES, INT32_LIMIT)


def group_view(view: CanonicalView, num_groups: int) -> Optional[CanonicalView]:
    """The (B, G, cpg*S) view of a per-sample scope whose groups are contiguous runs, else None.

    When a channel's positions are followed by the next channel's (NCHW, or (N, C) rows), the
    channels of a group form one strided run, so statistics can be taken per group directly.
    """
    cpg = view.C // num_groups
    if cpg == 1 or view.sc != view.S * view.ss:
        return None
    return CanonicalView(view.B, num_groups, cpg * view.S, view.sb, cpg * view.sc, view.ss)
