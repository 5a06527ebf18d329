"""Host-side decisions for the kernels: the canonical strided view, tile shapes, split counts, index width.

Nothing here launches a kernel; everything is plain integers so it can be unit-tested without a GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

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
