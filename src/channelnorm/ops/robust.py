"""Reference math for the batch-robust variants (docs/design.md §5): pure torch, autograd differentiates it.

Statistics are accumulated in float32 (float64 for float64 input) and centered two-pass, as in
``reference``. Validation lives in ``channelnorm.functional.robust``; nothing here checks input.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .layout import channel_shape, match_layout, stats_dtype
from .reference import affine
from .moments import blend_if_finite, momentum_weight, moments, reduce_dims, update_running_stats


# ---------------------------------------------------------------- Batch Renormalization


def renorm_bounds(rmax: float, dmax: float, warmup_steps: int, step: torch.Tensor):
    """Clipping bounds at ``step`` (training steps taken so far, i.e. num_batches_tracked).

    Linear ramp: with ``f = min(step / warmup_steps, 1)`` (``f = 1`` when ``warmup_steps == 0``),
    ``rmax_t = 1 + (rmax - 1)·f`` and ``dmax_t = dmax·f``. Step 0 is plain ChannelNorm (r = 1, d = 0).
    Tensor ops, so reading the step never synchronizes the device.
    """
    if warmup_steps == 0:
        frac = torch.ones((), dtype=torch.float64, device=step.device)
    else:
        frac = (step.to(torch.float64) / warmup_steps).clamp(max=1.0)
    return 1.0 + (rmax - 1.0) * frac, dmax * frac


def batch_renorm(x, running_mean, running_var, num_batches_tracked, weight, bias, momentum, eps, channel_axis,
                 rmax, dmax, warmup_steps) -> torch.Tensor:
    """Ioffe (2017) training step: ``y = (x - μ_B)/σ_B · r + d``, r and d without gradient.

    ``r = clip(σ_B/σ, 1/rmax_t, rmax_t)``, ``d = clip((μ_B - μ)/σ, -dmax_t, dmax_t)`` with
    ``σ_B = sqrt(var_B + eps)``, ``σ = sqrt(running_var + eps)``, ``μ = running_mean`` taken before
    this batch's running-statistics update (which then is exactly ChannelNorm's).
    """
    acc = stats_dtype(x.dtype)
    xf = x.to(acc)
    mean, var = moments(xf, reduce_dims(x.ndim, channel_axis))
    invstd = torch.rsqrt(var + eps)
    with torch.no_grad():
        shape = channel_shape(x.ndim, channel_axis, x.shape[channel_axis])
        sigma = torch.sqrt(running_var.to(acc).view(shape) + eps)
        r_bound, d_bound = (b.to(acc) for b in renorm_bounds(rmax, dmax, warmup_steps, num_batches_tracked))
        r = torch.minimum(torch.maximum((var + eps).sqrt() / sigma, 1.0 / r_bound), r_bound)
        d = torch.minimum(torch.maximum((mean - running_mean.to(acc).view(shape)) / sigma, -d_bound), d_bound)
    y = affine((xf - mean) * invstd * r + d, weight, bias, channel_axis).to(x.dtype)
    n = x.numel() // x.shape[channel_axis]
    update_running_stats(running_mean, running_var, num_batches_tracked, mean.reshape(-1), var.reshape(-1), n,
                         momentum)
    return match_layout(y, x)


# ---------------------------------------------------------------- Ghost (virtual) batch norm


def ghost_running_update(running_mean, running_var, num_batches_tracked, chunks: Sequence[torch.Tensor],
                         channel_axis: int, momentum: Optional[float]) -> None:
    """One running-statistics update per forward from the virtual batches' statistics.

    Mean: the count-weighted average of the virtual-batch means (= the whole batch's mean).
    Variance: the pooled within-virtual-batch unbiased variance ``Σ_k SS_k / (n - K)`` (``SS_k`` the
    sum of squared deviations from virtual batch k's own mean, ``K`` virtual batches, ``n`` elements
    per channel): the unbiased estimate of the variance each virtual batch is normalized with. For
    one virtual batch it is exactly ChannelNorm's update.
    """
    with torch.no_grad():
        acc = stats_dtype(chunks[0].dtype)
        total_sum, total_ss, n = 0.0, 0.0, 0
        for chunk in chunks:
            c = chunk.to(acc)
            count = c.numel() // c.shape[channel_axis]
            mean, var = moments(c, reduce_dims(c.ndim, channel_axis))
            total_sum = total_sum + mean.reshape(-1) * count
            total_ss = total_ss + var.reshape(-1) * count
            n += count
        k = len(chunks)
        m = momentum_weight(momentum, num_batches_tracked, running_mean)
    blend_if_finite(running_mean, running_var, num_batches_tracked, total_sum / n, total_ss / (n - k), m)


# ---------------------------------------------------------------- Filter Response Normalization


def filter_response_norm(x, weight, bias, tau, eps, channel_axis) -> torch.Tensor:
    """Singh & Krishnan (2019): ``ν² = mean(x²)`` over the spatial axes per sample and channel,
    ``y = γ·x/sqrt(ν² + |eps|) + β``, then the TLU ``max(y, τ)`` when ``tau`` is given.
    ``eps`` is a float or a (learned) scalar tensor."""
    acc = stats_dtype(x.dtype)
    xf = x.to(acc)
    dims = reduce_dims(x.ndim, 0, channel_axis)
    nu2 = xf.square().mean(dims, keepdim=True) if dims else xf.square()
    eps_t = eps.to(acc).abs() if isinstance(eps, torch.Tensor) else abs(eps)
    y = affine(xf * torch.rsqrt(nu2 + eps_t), weight, bias, channel_axis)
    if tau is not None:
        y = torch.maximum(y, tau.to(acc).view(channel_shape(x.ndim, channel_axis, x.shape[channel_axis])))
    return match_layout(y.to(x.dtype), x)


# ---------------------------------------------------------------- EvoNorm (Liu et al. 2020)


def evonorm_s0(x, num_groups, v, weight, bias, eps, channel_axis) -> torch.Tensor:
    """EvoNorm-S0: ``y = x·sigmoid(v·x) / sqrt(var_group(x) + eps) · γ + β``, var per sample per group
    of channels over (C/G, spatial), biased."""
    acc = stats_dtype(x.dtype)
    shape = channel_shape(x.ndim, channel_axis, x.shape[channel_axis])
    xf = x.to(acc)
    grouped = xf.unflatten(channel_axis, (num_groups, x.shape[channel_axis] // num_groups))
    _, var = moments(grouped, reduce_dims(grouped.ndim, 0, channel_axis))
    std = torch.sqrt(var + eps).expand_as(grouped).flatten(channel_axis, channel_axis + 1)
    y = xf * torch.sigmoid(v.to(acc).view(shape) * xf) / std
    return match_layout(affine(y, weight, bias, channel_axis).to(x.dtype), x)


def evonorm_b0(x, running_var, num_batches_tracked, v, weight, bias, use_batch_stats, momentum, eps,
               channel_axis) -> torch.Tensor:
    """EvoNorm-B0: ``y = x / max(sqrt(var_batch + eps), v·x + sqrt(var_instance + eps)) · γ + β``.

    ``var_batch``: biased variance per channel over (N, spatial) in training (running_var, which
    tracks the unbiased variance as ChannelNorm, in eval); ``var_instance``: per sample and channel
    over the spatial axes.
    """
    acc = stats_dtype(x.dtype)
    shape = channel_shape(x.ndim, channel_axis, x.shape[channel_axis])
    xf = x.to(acc)
    if use_batch_stats:
        _, var_b = moments(xf, reduce_dims(x.ndim, channel_axis))
        if running_var is not None:
            n = x.numel() // x.shape[channel_axis]
            update_running_var(running_var, num_batches_tracked, var_b.reshape(-1), n, momentum)
    else:
        var_b = running_var.to(acc).view(shape)
    _, var_i = moments(xf, reduce_dims(x.ndim, 0, channel_axis))
    denom = torch.maximum(torch.sqrt(var_b + eps), v.to(acc).view(shape) * xf + torch.sqrt(var_i + eps))
    return match_layout(affine(xf / denom, weight, bias, channel_axis).to(x.dtype), x)


def update_running_var(running_var, num_batches_tracked, batch_var, n, momentum) -> None:
    """ChannelNorm's running-variance update (unbiased, non-finite batches skipped) for a norm with no running mean."""
    update_running_stats(running_var.new_zeros(running_var.shape), running_var, num_batches_tracked,
                         torch.zeros_like(batch_var), batch_var, n, momentum)


# ---------------------------------------------------------------- Weight Standardization


def standardize_weight(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qiao et al. (2019): per output channel (dim 0), ``(w - mean) / sqrt(var + eps)`` over the other
    dims (in, *kernel), biased variance."""
    w = weight.to(stats_dtype(weight.dtype))
    mean, var = moments(w, list(range(1, w.ndim)))
    return ((w - mean) * torch.rsqrt(var + eps)).to(weight.dtype)
