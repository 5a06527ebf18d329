"""Channel statistics synchronized across processes with ``torch.distributed`` (SyncChannelNorm's math).

Collectives per training step, whatever the number of ranks:

* forward: ONE ``all_gather`` of a packed per-rank float64 tensor
  ``[count, dtype code, channels, mean(C), M2(C)]``; every rank then checks the headers (same
  channel count and input dtype everywhere, or every rank raises the same error at the same point)
  and merges the statistics in rank order with Chan's parallel formula
  (``mean = Σ nᵢ·meanᵢ / n``, ``M2 = Σ M2ᵢ + Σ nᵢ·(meanᵢ − mean)²``). The statistics are centered on
  every rank (never ``E[x²] − E[x]²``), and the merge is exact for uneven batches and for ranks that
  hold no samples (``nᵢ = 0`` contributes nothing). Every rank computes the same numbers in the
  same order, so the ranks agree bit for bit.
* backward: ONE ``all_reduce`` (sum) of the packed per-channel ``[Σ dy, Σ dy·x̂]``.

Once per layer (its first synchronized step, and again if its group changes), ``agree_on_settings``
gathers each rank's ``num_channels``, ``channel_axis``, ``eps`` and ``momentum`` in a fixed-size tensor: the per-step payload's size depends on
the channel count, and an ``all_gather`` of tensors whose sizes differ between ranks is undefined
(gloo aborts one process, the other reads garbage). After that handshake the payload has the same
size on every rank whatever its input, so a rank with a wrong channel count or another dtype is
reported on every rank instead of breaking the collective. The payload is float64 for the same
reason: its size must not depend on the input dtype (it also carries counts exactly up to 2⁵³).

The input gradient equals that of one process seeing the concatenated batch. Weight and bias
gradients are each rank's local sums, as ``nn.SyncBatchNorm`` returns them: DDP (or the caller)
reduces parameter gradients across ranks.

Statistics are computed in float32, or float64 for float64 input, merged in float64 and returned
in that statistics dtype. When every rank's batch is empty the output is empty, parameters get zero
gradients, and no statistics are returned (``n == 0``), without a second collective.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

# Input checks run after the gather so every rank raises together; they are the functional API's checks.
from .. import _checks
from .layout import channel_shape, match_layout, stats_dtype
from .moments import chan_merge, moments, reduce_dims
from .reference import affine

_PAYLOAD_DTYPE = torch.float64  # same size on every rank whatever the input dtype; exact counts
_HEADER = 3  # count, dtype code, channel count
# Input dtypes a rank can report; 0 means "not a floating tensor" (the rank's own check raises).
_DTYPE_CODES = {dtype: code for code, dtype in enumerate(_checks.FLOAT_DTYPES, start=1)}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def local_moments(x: torch.Tensor, channel_axis: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Per-channel ``(count, mean, M2)`` of this rank's ``x``; zeros for an empty batch."""
    acc = stats_dtype(x.dtype)
    num_channels = x.shape[channel_axis]
    count = x.numel() // num_channels if num_channels else 0
    if count == 0:
        zeros = torch.zeros(num_channels, dtype=acc, device=x.device)
        return 0, zeros, zeros.clone()
    mean, var = moments(x.to(acc), reduce_dims(x.ndim, channel_axis))
    return count, mean.reshape(-1), var.reshape(-1) * count


def _pack(count: int, mean: torch.Tensor, m2: torch.Tensor, dtype_code: Optional[int] = None,
          channels: Optional[int] = None) -> torch.Tensor:
    """``[count, dtype code, channels, mean(C), M2(C)]`` in float64 (codes default to ``mean``'s own)."""
    code = _DTYPE_CODES.get(mean.dtype, 0) if dtype_code is None else dtype_code
    channels = mean.numel() if channels is None else channels
    head = torch.tensor([float(count), float(code), float(channels)], dtype=_PAYLOAD_DTYPE, device=mean.device)
    return torch.cat([head, mean.to(_PAYLOAD_DTYPE), m2.to(_PAYLOAD_DTYPE)])


def merge_moments(gathered: torch.Tensor, num_channels: int,
                  dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan merge of ``gathered`` (``world × (3 + 2C)``, rows in rank order) → ``(n, mean, biased var)``.

    ``n`` is a 0-d float64 tensor holding the exact total count; ``mean`` and ``var`` are merged in
    float64 and returned in ``dtype`` (default: float64).
    """
    counts = gathered[:, 0]                                             # (W,) exact in float64
    means = gathered[:, _HEADER:_HEADER + num_channels]                 # (W, C)
    m2s = gathered[:, _HEADER + num_channels:_HEADER + 2 * num_channels]
    n, mean, m2 = chan_merge(counts, means, m2s)
    var = m2 / n.clamp_min(1)
    dtype = dtype or gathered.dtype
    return n, mean.to(dtype), var.to(dtype)


def _world_size(group) -> int:
    return dist.get_world_size(group)


def _all_gather(tensor: torch.Tensor, group) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.stack(parts)


def gather_moments(packed: torch.Tensor, group) -> torch.Tensor:
    """The one forward collective: every rank's packed moments, stacked in rank order."""
    return _all_gather(packed, group)


def agree_on_settings(op: str, settings: dict, device, group=None) -> None:
    """Check that every rank of ``group`` built the layer with the same ``settings`` (one fixed-size all_gather).

    ``settings`` maps names to numbers (``None`` allowed), e.g. ``num_channels``, ``channel_axis``,
    ``eps``, ``momentum``. Called once per layer before its first synchronized step; every rank must
    call it at the same point with the same names. Raises ``ValueError`` on every rank, naming the
    setting and each rank's value, when they differ: a different ``num_channels`` would make the
    per-step payloads differ in size, the others would silently give the ranks different
    normalizations or running statistics.
    """
    values = [float("nan") if v is None else float(v) for v in settings.values()]
    gathered = _all_gather(torch.tensor(values, dtype=_PAYLOAD_DTYPE, device=device), group).tolist()
    for column, name in enumerate(settings):
        seen = [row[column] for row in gathered]
        if any(v != seen[0] and not (v != v and seen[0] != seen[0]) for v in seen):  # NaN (None) equals NaN
            listed = ", ".join(f"rank {r}: {_setting_text(v)}" for r, v in enumerate(seen))
            raise ValueError(f"{op}: the ranks of the process group disagree on {name} ({listed}); "
                             f"every rank must build the layer with the same {name}")


def _setting_text(value: float) -> str:
    if value != value:
        return "None"
    return str(int(value)) if value == int(value) else repr(value)


def _describe(code: float, channels: float) -> str:
    if code == 0:
        return "not a floating tensor"
    if channels < 0:
        return f"{_CODE_DTYPES[int(code)]} input of rank < 2 or with channel_axis out of range"
    return f"{int(channels)} channels, {_CODE_DTYPES[int(code)]}"


def _check_headers(op: str, headers: list, num_channels: int, local_error: Optional[Exception]) -> None:
    """Same decision on every rank: all inputs valid with ``num_channels`` channels and one dtype, or raise.

    ``headers``: each rank's ``[count, dtype code, channels]`` (the gathered tensor's first columns, on the host).
    """
    rows = [row[1:_HEADER] for row in headers]
    bad = [r for r, (code, channels) in enumerate(rows) if code == 0 or int(channels) != num_channels]
    if bad:
        if local_error is not None:  # this rank's own input: its usual message, plus that every rank stops
            raise type(local_error)(f"{local_error} (every rank of the process group raises)") from local_error
        listed = ", ".join(f"rank {r}: {_describe(*rows[r])}" for r in bad)
        raise ValueError(f"{op}: expected input with {num_channels} channels on every rank of the process group, "
                         f"got invalid input on {listed}")
    codes = {int(code) for code, _ in rows}
    if len(codes) > 1:
        listed = ", ".join(f"rank {r}: {_CODE_DTYPES[int(code)]}" for r, (code, _) in enumerate(rows))
        raise TypeError(f"{op}: the ranks of the process group got inputs of different dtypes ({listed}); "
                        f"synchronized statistics need one dtype on every rank")


class _SyncChannelNormFunction(torch.autograd.Function):
    """Thin Function: forward normalizes with the merged statistics; backward = one all_reduce."""

    @staticmethod
    def forward(ctx, x, weight, bias, channel_axis: int, eps: float, group, mean, var, total: int):
        num_channels = x.shape[channel_axis]
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
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def _local_payload(x, channel_axis: int, num_channels: int, op: str, device) -> tuple[torch.Tensor,
                                                                                        Optional[Exception]]:
    """This rank's packed moments, or a header-only payload and the error its input deserves."""
    try:
        axis = _checks.input_tensor(x, channel_axis, op)
        _checks.channel_count(op, x, channel_axis, num_channels)
    except (TypeError, ValueError) as error:
        code = _DTYPE_CODES.get(getattr(x, "dtype", None), 0)
        ok_rank = isinstance(x, torch.Tensor) and x.ndim >= 2 and -x.ndim <= channel_axis < x.ndim
        channels = x.shape[channel_axis] if ok_rank else -1
        zeros = torch.zeros(num_channels, dtype=_PAYLOAD_DTYPE, device=device)
        return _pack(0, zeros, zeros, dtype_code=code, channels=channels), error
    count, mean, m2 = local_moments(x, axis)
    return _pack(count, mean, m2, dtype_code=_DTYPE_CODES[x.dtype], channels=num_channels), None


def sync_channel_norm(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    channel_axis: int,
    eps: float,
    group=None,
    num_channels: Optional[int] = None,
    op: str = "sync_channel_norm",
) -> tuple[torch.Tensor, int, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Normalize ``x`` with statistics over the whole ``group``; return ``(y, n, mean, biased var)``.

    Every rank of ``group`` must call this (an empty batch included), or the collective hangs, and
    every rank must pass the same ``num_channels`` (``SyncChannelNorm`` checks that once with
    ``agree_on_settings``); ``None`` takes it from ``x``. The input is validated after the gather, so
    a rank with invalid input (wrong channel count, not a floating tensor, rank < 2) or a dtype that
    differs from the other ranks' makes every rank raise (``ValueError``/``TypeError``) at the same
    point instead of leaving the others in a collective. Also raises ``ValueError`` on every rank
    when the group holds exactly one value per channel. When it holds none (every batch empty), ``y``
    is empty, ``n == 0`` and ``mean``/``var`` are ``None``.
    """
    if num_channels is None:
        num_channels = x.shape[channel_axis % x.ndim]
    device = x.device if isinstance(x, torch.Tensor) else (weight.device if weight is not None else "cpu")
    with torch.no_grad():  # statistics are constants for autograd; backward has its own formula
        packed, local_error = _local_payload(x, channel_axis, num_channels, op, device)
    gathered = gather_moments(packed, group)
    # The step's one host read: every rank's header, for the checks, the n-dependent rules and the
    # unbiased running-variance update (counts are exact integers in float64).
    headers = gathered[:, :_HEADER].tolist()
    _check_headers(op, headers, num_channels, local_error)
    axis = channel_axis % x.ndim
    total = int(sum(row[0] for row in headers))
    if total == 0:
        # Same on every rank: no statistics anywhere, and no collective in backward either.
        return affine(x * 0, weight, bias, axis).to(x.dtype), 0, None, None
    if total == 1:
        raise ValueError(f"{op}: expected more than 1 value per channel across the process group "
                         f"when training, got {total} (local input shape {tuple(x.shape)})")
    _, mean, var = merge_moments(gathered, num_channels, stats_dtype(x.dtype))
    y = _SyncChannelNormFunction.apply(x, weight, bias, axis, eps, group, mean, var, total)
    return y, total, mean, var
