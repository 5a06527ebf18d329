"""Host launchers for the fixed-order reductions of per-program partials (small tensors).

Both take a logical ``[S_out, R, K]`` array given by strides and reduce over R; the result is a
contiguous ``[S_out, K]`` fp32 tensor. No atomics: the same input gives bitwise the same output.
"""
from __future__ import annotations

import math

import torch

from . import _kernels
from .plan import TILE_ELEMENTS


def _blocks(R: int, K: int) -> tuple[int, int]:
    # Narrow column blocks (16 fp32 = 64 contiguous bytes per row) so even C = 64 gets several
    # programs, and tall row blocks so a program needs few sequential steps.
    block_k = max(1, min(16, 1 << math.ceil(math.log2(max(K, 1)))))
    block_r = max(1, min(TILE_ELEMENTS // block_k, 1 << math.ceil(math.log2(max(R, 1)))))
    return block_r, block_k


def merge_stats(count, mean, m2, S_out: int, R: int, K: int, so: int, sr: int, sk: int):
    """Chan-merge partial (count, mean, M2) over R; returns three [S_out, K] tensors."""
    block_r, block_k = _blocks(R, K)
    n_kblk = math.ceil(K / block_k)
    outs = [torch.empty(S_out, K, device=count.device, dtype=torch.float32) for _ in range(3)]
    _kernels.merge_stats_kernel[(S_out * n_kblk,)](count, mean, m2, *outs, R, K, so, sr, sk, n_kblk,
                                                  BLOCK_R=block_r, BLOCK_K=block_k)
    return outs


def sum_rows(values, S_out: int, R: int, K: int, so: int, sr: int, sk: int) -> torch.Tensor:
    """Sum over R in a fixed order; returns [S_out, K]."""
    block_r, block_k = _blocks(R, K)
    n_kblk = math.ceil(K / block_k)
    out = torch.empty(S_out, K, device=values.device, dtype=torch.float32)
    _kernels.sum_rows_kernel[(S_out * n_kblk,)](values, out, R, K, so, sr, sk, n_kblk,
                                               BLOCK_R=block_r, BLOCK_K=block_k)
    return out
