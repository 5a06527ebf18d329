"""Shape and memory-layout helpers shared by the backends."""
from __future__ import annotations

import math

import torch


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are accumulated in float32, or float64 for float64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def channel_shape(ndim: int, channel_axis: int, num_channels: int) -> list[int]:
    """Shape that broadcasts a per-channel vector along ``channel_axis``."""
    shape = [1] * ndim
    shape[channel_axis] = num_channels
    return shape


def match_layout(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return ``y`` with the strides of ``like`` (memory format is preserved, e.g. channels_last)."""
    if y.stride() == like.stride() or y.numel() <= 1:
        return y
    out = torch.empty_like(like, dtype=y.dtype)
    out.copy_(y)
    return out


def elements_per_statistic(shape: torch.Size, num_groups: int, per_sample: bool) -> int:
    """Number of elements that share one mean/variance (``n`` of docs/design.md §3.1)."""
    n = math.prod(shape) // num_groups
    if per_sample and shape[0] > 0:
        n //= shape[0]
    return n
