"""Statistics primitives, written once: the axes reduced over, moments (optionally masked), the Chan
merge of partial moments, and the running-statistics update shared by every backend.

Moments are centered two-pass (the mean, then the mean of squared deviations), never
``E[x²] − E[x]²``. A mask selects values with ``torch.where``, never a multiplication, so
non-finite values outside it reach neither the moments nor their gradients.

Running update: ``running ← (1 - m)·running + m·batch`` with the unbiased variance,
``m = 1/num_batches_tracked`` when ``momentum`` is None, and a batch whose statistics are not
finite never updates anything. The finiteness test is a tensor op (``torch.where``), so the update
never synchronizes the device. On CPU, where a host read synchronizes nothing, torch's kernels
update the buffers in place and ``keep_if_finite`` restores them from one copy (``snapshot``,
taken before the kernel) when needed: this costs a few microseconds instead of the tens that the
tensor-op test costs on small inputs.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

# Adding a tensor costs ~1 us less than adding the Python int 1, which is first wrapped in a new tensor
# (measured in a small norm's forward+backward loop). CPU, so it adds to a counter on any device.
_ONE = torch.ones((), dtype=torch.long, device="cpu")


def reduce_dims(ndim: int, *keep: int) -> list[int]:
    """Every axis of a rank-``ndim`` tensor but ``keep`` (e.g. the channel axis, and 0 per sample)."""
    return [d for d in range(ndim) if d not in keep]


def moments(x: torch.Tensor, dims: Sequence[int], mask: Optional[torch.Tensor] = None,
            count=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of ``x`` over ``dims`` (kept as size-1 axes), centered two-pass.

    With ``mask`` (bool, broadcastable to ``x``, True = counted) only the selected values count and
    ``count`` is their number per statistic; values outside the mask may be anything, inf and NaN
    included. No ``dims``: the values themselves and a zero variance.
    """
    if not dims:
        return x, torch.zeros_like(x)
    if mask is None:
        mean = x.mean(dims, keepdim=True)
        return mean, (x - mean).square().mean(dims, keepdim=True)
    zero = x.new_zeros(())
    mean = torch.where(mask, x, zero).sum(dims, keepdim=True) / count
    centered = torch.where(mask, x - mean, zero)
    return mean, centered.square().sum(dims, keepdim=True) / count


def chan_merge(counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor):
    """Merge K partial moments exactly (Chan et al.): ``counts`` (K,), ``means`` and ``m2s`` (K, C) in a
    fixed order → ``(n, mean, m2)`` of all the values at once. ``m2`` is the sum of squared deviations;
    parts with count 0 contribute nothing."""
    n = counts.sum()
    weights = (counts / n.clamp_min(1)).to(means.dtype).unsqueeze(1)
    mean = (weights * means).sum(0)
    m2 = m2s.sum(0) + (counts.to(means.dtype).unsqueeze(1) * (means - mean).square()).sum(0)
    return n, mean, m2


def effective_momentum(momentum: Optional[float], num_batches_tracked: Optional[torch.Tensor]) -> float:
    """PyTorch's exponential-average factor; ``None`` means a cumulative average."""
    if momentum is not None:
        return float(momentum)
    # Same host read as nn.BatchNorm's `1.0 / float(num_batches_tracked)`, taken before the increment.
    return 1.0 / (float(num_batches_tracked) + 1.0)


def momentum_weight(momentum: Optional[float], num_batches_tracked: Optional[torch.Tensor],
                    like: torch.Tensor) -> "float | torch.Tensor":
    """The weight of the new batch in the running statistics, without a host read: ``momentum`` itself, or
    for ``momentum=None`` (a cumulative average) ``1 / (num_batches_tracked + 1)`` as a 0-dim tensor of
    ``like``'s dtype and device, so torch.compile traces it in one graph and a GPU never waits for the host."""
    if momentum is not None:
        return float(momentum)
    return 1.0 / (num_batches_tracked.to(device=like.device, dtype=like.dtype) + 1.0)


def blend_if_finite(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    num_batches_tracked: Optional[torch.Tensor],
    batch_mean: torch.Tensor,
    unbiased_var: torch.Tensor,
    m: "float | torch.Tensor",
) -> None:
    """``running ← (1 - m)·running + m·batch`` for both buffers, committed only when all of it is finite."""
    with torch.no_grad():
        new_mean = running_mean * (1.0 - m) + batch_mean.detach().to(running_mean.dtype) * m
        new_var = running_var * (1.0 - m) + unbiased_var.detach().to(running_var.dtype) * m
    commit_if_finite(running_mean, running_var, num_batches_tracked, new_mean, new_var)


def commit_if_finite(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    num_batches_tracked: Optional[torch.Tensor],
    new_mean: torch.Tensor,
    new_var: torch.Tensor,
) -> None:
    """Write the candidate running statistics only when all of them are finite."""
    finite = torch.isfinite(new_mean).all() & torch.isfinite(new_var).all()
    with torch.no_grad():
        running_mean.copy_(torch.where(finite, new_mean.to(running_mean.dtype), running_mean))
        running_var.copy_(torch.where(finite, new_var.to(running_var.dtype), running_var))
        if num_batches_tracked is not None:
            num_batches_tracked.add_(finite.to(num_batches_tracked.dtype))


def snapshot(running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """One copy of both buffers (one op) for ``keep_if_finite`` to restore from."""
    return torch.cat((running_mean, running_var))


def keep_if_finite(
    saved: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    num_batches_tracked: Optional[torch.Tensor],
) -> None:
    """After an in-place update of both buffers: count the batch if both came out finite, else restore
    them from ``saved`` (their ``snapshot`` before the update).

    Same rule as ``commit_if_finite`` (``num_batches_tracked`` counts only committed batches), with a
    host read, so for CPU buffers. One reduction tests both buffers: ``sum(mean * var)`` is finite
    only if every element is (an inf times 0 is NaN, and an inf or NaN term makes the sum inf or
    NaN); a non-finite result (also finite values whose products overflow) is settled element-wise.
    Buffers never require grad, so no ``no_grad`` block is needed (one costs more than the test itself).
    """
    if running_mean.dtype is running_var.dtype:  # dtypes are singletons
        probe = running_mean.dot(running_var)  # the method form is ~0.2 us cheaper than torch.dot
    else:
        probe = running_mean.sum() + running_var.sum()
    finite = math.isfinite(probe.item())
    if not finite:
        finite = bool(torch.isfinite(running_mean).all()) and bool(torch.isfinite(running_var).all())
    if finite:
        if num_batches_tracked is not None:
            num_batches_tracked.add_(_ONE)
    else:
        # Through .data: torch's kernel saved the buffers for backward, and a tracked in-place
        # restore would bump their version and break backward. A training backward reads only the
        # batch statistics, so restoring the values cannot change a gradient.
        running_mean.data.copy_(saved[:running_mean.numel()])
        running_var.data.copy_(saved[running_mean.numel():])


def update_running_stats(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    num_batches_tracked: Optional[torch.Tensor],
    batch_mean: torch.Tensor,
    batch_var: torch.Tensor,
    n: int,
    momentum: Optional[float],
) -> None:
    """Blend per-channel batch statistics (biased ``batch_var`` over ``n`` elements) into the buffers."""
    m = momentum_weight(momentum, num_batches_tracked, running_mean)
    with torch.no_grad():
        unbiased = batch_var.detach().to(running_var.dtype) * (n / (n - 1))
    blend_if_finite(running_mean, running_var, num_batches_tracked, batch_mean, unbiased, m)
