"""Channel statistics synchronized across processes with ``torch.distributed`` (SyncChannelNorm's math).

Collectives per training step, whatever the number of ranks:

* forward: ONE ``all_gather`` of a packed per-rank tensor ``[count_hi, count_lo, mean(C), M2(C)]``;
  every rank then merges the gathered statistics in rank order with Chan's parallel formula
  (``mean = Σ nᵢ·meanᵢ / n``, ``M2 = Σ M2ᵢ + Σ nᵢ·(meanᵢ − mean)²``). The statistics are centered on
  every rank (never ``E[x²] − E[x]²``), and the merge is exact for uneven batches and for ranks that
  hold no samples (``nᵢ = 0`` contributes nothing). Every rank computes the same numbers in the
  same order, so the ranks agree bit for bit.
* backward: ONE ``all_reduce`` (sum) of the packed per-channel ``[Σ dy, Σ dy·x̂]``.

The input gradient equals that of one process seeing the concatenated batch. Weight and bias
gradients are each rank's local sums, as ``nn.SyncBatchNorm`` returns them: DDP (or the caller)
reduces parameter gradients across ranks.

Statistics live in float32, or float64 for float64 input (DESIGN §3). The count travels split in
two float parts (``hi·2²⁴ + lo``) so it stays exact in float32 up to 2⁴⁸ elements per channel.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .layout import channel_shape, match_layout, stats_dtype
from .moments import chan_merge, reduce_dims

_COUNT_SPLIT = float(2 ** 24)  # integers below 2**24 are exact in float32


def local_moments(x: torch.Tensor, channel_axis: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Per-channel ``(count, mean, M2)`` of this rank's ``x``; zeros for an empty batch."""
    acc = stats_dtype(x.dtype)
    num_channels = x.shape[channel_axis]
    count = x.numel() // num_channels if num_channels else 0
    if count == 0:
        zeros = torch.zeros(num_channels, dtype=acc, device=x.device)
        return 0, zeros, zeros.clone()
    # torch's var_mean is a centered (Welford) reduction: stable for large means, one call.
    var, mean = torch.var_mean(x.to(acc), reduce_dims(x.ndim, channel_axis), correction=0)
    return count, mean, var * count


def _pack(count: int, mean: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    hi, lo = divmod(count, int(_COUNT_SPLIT))
    head = torch.tensor([float(hi), float(lo)], dtype=mean.dtype, device=mean.device)
    return torch.cat([head, mean, m2])


def merge_moments(gathered: torch.Tensor, num_channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan merge of ``gathered`` (``world × (2 + 2C)``, rows in rank order) → ``(n, mean, biased var)``.

    ``n`` is a 0-d float64 tensor holding the exact total count.
    """
    # Counts are rebuilt in float64 (exact to 2**53); the moments stay in the stats dtype.
    exact = gathered[:, :2].to(torch.float64)
    counts64 = exact[:, 0] * _COUNT_SPLIT + exact[:, 1]                 # (W,)
    means = gathered[:, 2:2 + num_channels]                             # (W, C)
    m2s = gathered[:, 2 + num_channels:]                                # (W, C)
    n, mean, m2 = chan_merge(counts64, means, m2s)
    var = m2 / n.clamp_min(1).to(gathered.dtype)
    return n, mean, var


def _world_size(group) -> int:
    return dist.get_world_size(group)


def gather_moments(packed: torch.Tensor, group) -> torch.Tensor:
    """The one forward collective: every rank's packed moments, stacked in rank order."""
    parts = [torch.empty_like(packed) for _ in range(_world_size(group))]
    dist.all_gather(parts, packed.contiguous(), group=group)
    return torch.stack(parts)


class _SyncChannelNormFunction(torch.autograd.Function):
    """Thin Function: forward = local moments → gather → merge → normalize; backward = one all_reduce."""

    @staticmethod
    def forward(ctx, x, weight, bias, channel_axis: int, eps: float, group, stats_out: list):
        num_channels = x.shape[channel_axis]
        count, mean_local, m2_local = local_moments(x, channel_axis)
        gathered = gather_moments(_pack(count, mean_local, m2_local), group)
        n, mean, var = merge_moments(gathered, num_channels)
        total = int(n.item())  # one host read, needed for the n-dependent checks and the unbiased update
        stats_out.extend([total, mean, var])
        if total <= 1:
            # Same on every rank (they all merged the same numbers), so all ranks raise together.
            return x  # caller raises before using this
        invstd = torch.rsqrt(var + eps)
        shape = channel_shape(x.ndim, channel_axis, num_channels)
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
        # y = (x - mean)·invstd·weight + bias, centered first (no cancellation for large means).
        centered = x.to(mean.dtype) - mean.view(shape)
        if bias is None:
            y = centered.mul_(scale.view(shape))
        else:
            y = torch.addcmul(bias.to(mean.dtype).view(shape), centered, scale.view(shape))
        y = y.to(x.dtype)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.channel_axis, ctx.group, ctx.total = channel_axis, group, total
        ctx.bias_dtype = None if bias is None else bias.dtype
        return match_layout(y, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight, mean, invstd = ctx.saved_tensors
        axis = ctx.channel_axis
        num_channels = x.shape[axis]
        shape = channel_shape(x.ndim, axis, num_channels)
        dims = reduce_dims(x.ndim, axis)
        acc = mean.dtype
        dy = grad_out.to(acc)
        xmu = x.to(acc) - mean.view(shape)
        if x.numel():
            sum_dy = dy.sum(dims)
            sum_dy_xhat = (dy * xmu).sum(dims) * invstd
        else:  # an empty rank still joins the collective, with zeros
            sum_dy = torch.zeros(num_channels, dtype=acc, device=x.device)
            sum_dy_xhat = torch.zeros_like(sum_dy)
        packed = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=ctx.group)
        mean_dy, mean_dy_xhat = packed[:num_channels] / ctx.total, packed[num_channels:] / ctx.total
        grad_x = None
        if ctx.needs_input_grad[0]:
            # dx = (dy - mean(dy) - x̂·mean(dy·x̂))·invstd·weight, with x̂ = (x - mean)·invstd.
            scale = invstd if weight is None else invstd * weight.to(acc)
            dx = torch.addcmul((-mean_dy * scale).view(shape), dy, scale.view(shape))
            dx.addcmul_(xmu, (scale * invstd * mean_dy_xhat).view(shape), value=-1)
            grad_x = match_layout(dx.to(x.dtype), x)
        grad_w = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_b = sum_dy.to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None


def sync_channel_norm(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    channel_axis: int,
    eps: float,
    group=None,
) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """Normalize ``x`` with statistics over the whole ``group``; return ``(y, n, mean, biased var)``.

    Every rank of ``group`` must call this (an empty batch included), or the collective hangs.
    ``channel_axis`` must already be non-negative and validated. Raises ``ValueError`` on every rank
    when the group holds at most one value per channel.
    """
    stats: list = []
    y = _SyncChannelNormFunction.apply(x, weight, bias, channel_axis, eps, group, stats)
    total, mean, var = stats
    if total <= 1:
        raise ValueError(f"sync_channel_norm: expected more than 1 value per channel across the process group "
                         f"when training, got {total} (local input shape {tuple(x.shape)})")
    return y, total, mean, var
