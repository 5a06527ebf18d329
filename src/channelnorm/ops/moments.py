"""The running-statistics update shared by every backend (DESIGN §3).

``running ← (1 - m)·running + m·batch`` with the unbiased variance, ``m = 1/num_batches_tracked``
when ``momentum`` is None, and a batch whose statistics are not finite never updates anything.
The finiteness test is a tensor op (``torch.where``), so the update never synchronizes the device.
"""
from __future__ import annotations

from typing import Optional

import torch


def effective_momentum(momentum: Optional[float], num_batches_tracked: Optional[torch.Tensor]) -> float:
    """PyTorch's exponential-average factor; ``None`` means a cumulative average."""
    if momentum is not None:
        return float(momentum)
    # Same host read as nn.BatchNorm's `1.0 / float(num_batches_tracked)`, taken before the increment.
    return 1.0 / (float(num_batches_tracked) + 1.0)


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
    m = effective_momentum(momentum, num_batches_tracked)
    with torch.no_grad():
        batch_mean = batch_mean.detach().to(running_mean.dtype)
        unbiased = batch_var.detach().to(running_var.dtype) * (n / (n - 1))
        new_mean = running_mean * (1.0 - m) + batch_mean * m
        new_var = running_var * (1.0 - m) + unbiased * m
    commit_if_finite(running_mean, running_var, num_batches_tracked, new_mean, new_var)
