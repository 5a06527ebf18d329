"""Functional API of the batch-robust variants (re-exported by ``channelnorm.functional``).

Validate, then dispatch. Only the reference math (``ops/robust.py``) implements these variants,
so ``backend`` must be ``"auto"`` or ``"reference"``; naming another is a ``ValueError``, never a
silent fallback. ``ghost_norm`` is the exception: each virtual batch is a plain channel norm, run
by whichever backend is asked for.
"""
from __future__ import annotations

import torch

from .. import _checks
from ..ops import dispatch, robust
from ..ops.layout import match_layout
from ..ops.reference import affine
from .core import channel_norm, channel_norm_validated

__all__ = ["batch_renorm", "ghost_norm", "filter_response_norm", "evonorm_s0", "evonorm_b0", "standardize_weight"]

def reference_only(op: str, backend: str) -> None:
    dispatch.require(op, backend)


def _empty(x, weight, bias, axis):
    return affine(x * 0, weight, bias, axis).to(x.dtype)


def _per_channel_values(op, x, axis):
    n = x.numel() // x.shape[axis] if x.shape[axis] else 0
    _checks.more_than_one_value(op, x, n, "channel")


def batch_renorm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                 eps=1e-5, channel_axis=1, backend="auto", *, num_batches_tracked=None, rmax=3.0, dmax=5.0,
                 warmup_steps=0) -> torch.Tensor:
    """Batch Renormalization (Ioffe 2017); eval (``training=False``) is `channel_norm`'s eval.

    Training: ``y = ((x - μ_B)/σ_B · r + d)·γ + β`` with ``r = clip(σ_B/σ, 1/rmax_t, rmax_t)`` and
    ``d = clip((μ_B - μ)/σ, -dmax_t, dmax_t)`` (no gradient through r and d), ``μ``,
    ``σ = sqrt(running_var + eps)`` the running statistics before this batch, and bounds ramped
    linearly from 1 and 0 at step 0 to ``rmax`` and ``dmax`` at ``warmup_steps``. The running
    statistics are then updated as `channel_norm`'s (unbiased variance). Training runs on the
    reference math only.

    Args:
        input (Tensor): the input, floating point, C channels on ``channel_axis``.
        running_mean (Tensor | None): per-channel running mean ``(C,)``, updated in place; required in
            training.
        running_var (Tensor | None): per-channel running (unbiased) variance ``(C,)``, updated in place;
            required in training. The buffers follow `channel_norm`'s rules (floating point, not
            requiring grad, not expanded).
        weight (Tensor | None): optional per-channel scale γ, shape ``(C,)``. Default: None (1).
        bias (Tensor | None): optional per-channel shift β, shape ``(C,)``. Default: None (0).
        training (bool): renormalized batch statistics (True) or the running statistics (False). Default:
            False.
        momentum (float | None): weight of the new statistic in the running statistics, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``). Default: 0.1.
        eps (float): added to the variance before the square root, > 0. Default: 1e-5.
        channel_axis (int): the input axis that holds the channels; negative counts from the end. Default:
            1.
        backend (str): ``"auto"`` or ``"reference"`` in training (the only implementation); eval runs on any
            backend `channel_norm` accepts. Default: ``"auto"``.
        num_batches_tracked (Tensor | None): keyword-only; 0-dim long tensor, the warm-up step, incremented
            in place; required in training. Default: None.
        rmax (float): keyword-only; the final bound of ``r``, >= 1. Default: 3.0.
        dmax (float): keyword-only; the final bound of ``d``, >= 0. Default: 5.0.
        warmup_steps (int): keyword-only; steps of the linear ramp of the bounds, >= 0 (0: no ramp).
            Default: 0.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis``.
        - Output: the input's shape, dtype and memory format.

    Returns:
        The normalized input.
    """
    op = "batch_renorm"
    rmax, dmax, warmup_steps = _checks.renorm_limits(rmax, dmax, warmup_steps)
    if not training:
        return channel_norm(input, running_mean, running_var, weight, bias, False, momentum, eps, channel_axis,
                            backend, num_batches_tracked=num_batches_tracked)
    reference_only(op, backend)
    axis = _checks.input_tensor(input, channel_axis, op)
    _checks.per_channel(op, input, axis, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    if running_mean is None or running_var is None or num_batches_tracked is None:
        raise ValueError(f"{op}: training needs running_mean, running_var and num_batches_tracked "
                         f"(r and d are measured against the running statistics)")
    _checks.running_buffers(op, running_mean, running_var, num_batches_tracked, updated=True)
    _checks.momentum(momentum)
    eps = _checks.eps(eps)
    return batch_renorm_validated(input, axis, running_mean, running_var, weight, bias, True, momentum, eps, backend,
                                  num_batches_tracked, rmax, dmax, warmup_steps)


def batch_renorm_validated(input, axis, running_mean, running_var, weight, bias, training, momentum, eps, backend,
                           num_batches_tracked, rmax, dmax, warmup_steps):
    """``batch_renorm`` for a caller that validated its settings (the bounds and the running statistics
    included) and the input (see ``core.channel_norm_validated``). The backend is checked here: a name
    assigned after construction may not run the training path."""
    if not training:
        return channel_norm_validated(input, axis, running_mean, running_var, weight, bias, False, momentum, eps,
                                      backend, num_batches_tracked)
    op = "batch_renorm"
    reference_only(op, backend)
    _per_channel_values(op, input, axis)
    if input.numel() == 0:
        return _empty(input, weight, bias, axis)
    return robust.batch_renorm(input, running_mean, running_var, num_batches_tracked, weight, bias, momentum, eps,
                               axis, rmax, dmax, warmup_steps)


def ghost_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               channel_axis=1, backend="auto", *, virtual_batch_size, num_batches_tracked=None) -> torch.Tensor:
    """Ghost (virtual) batch normalization: channel norm per virtual batch in training.

    In training, each run of ``virtual_batch_size`` samples along the batch axis (axis 0) is
    normalized with its own mean and biased variance; the last virtual batch has the remaining
    ``N mod virtual_batch_size`` samples when the batch does not divide evenly. Running statistics get
    one update per call: the whole batch's mean and the pooled within-virtual-batch unbiased variance
    ``Σ_k SS_k / (n - K)``. Eval is `channel_norm`'s eval.

    Args:
        input (Tensor): the input, floating point, C channels on ``channel_axis``.
        running_mean (Tensor | None): per-channel running mean ``(C,)`` or None, updated in place in
            training.
        running_var (Tensor | None): per-channel running (unbiased) variance ``(C,)`` or None, updated in
            place in training; give both or neither. The buffers follow `channel_norm`'s rules (floating
            point, not requiring grad, not expanded).
        weight (Tensor | None): optional per-channel scale γ, shape ``(C,)``. Default: None (1).
        bias (Tensor | None): optional per-channel shift β, shape ``(C,)``. Default: None (0).
        training (bool): statistics per virtual batch (True) or the running statistics (False). Default:
            False.
        momentum (float | None): weight of the new statistic in the running statistics, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``, which must then be given). Default: 0.1.
        eps (float): added to the variance before the square root, > 0. Default: 1e-5.
        channel_axis (int): the input axis that holds the channels; negative counts from the end; not 0, the
            batch axis. Default: 1.
        backend (str): the backend each virtual batch runs on: ``"auto"``, ``"reference"``, ``"native"`` or
            ``"triton"``. Default: ``"auto"``.
        virtual_batch_size (int): keyword-only, required; samples per virtual batch, > 0. Every virtual
            batch needs more than one value per channel.
        num_batches_tracked (Tensor | None): keyword-only; optional 0-dim long tensor counting the updates,
            incremented in place. Default: None.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Output: the input's shape, dtype and memory format.

    Returns:
        The normalized input.
    """
    op = "ghost_norm"
    virtual_batch_size = _checks.positive_int("virtual_batch_size", virtual_batch_size)
    if not training:
        return channel_norm(input, running_mean, running_var, weight, bias, False, momentum, eps, channel_axis,
                            backend, num_batches_tracked=num_batches_tracked)
    dispatch.check_backend_name(backend)
    axis = _checks.input_tensor(input, channel_axis, op, batch_axis_needed=True)
    _checks.per_channel(op, input, axis, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    _checks.paired_running_stats(op, running_mean, running_var)
    _checks.running_buffers(op, running_mean, running_var, num_batches_tracked, updated=True)
    _checks.momentum(momentum)
    if running_mean is not None and momentum is None and num_batches_tracked is None:
        raise ValueError(f"{op}: momentum=None (cumulative average) needs num_batches_tracked")
    eps = _checks.eps(eps)
    return ghost_norm_validated(input, axis, running_mean, running_var, weight, bias, True, momentum, eps, backend,
                                virtual_batch_size, num_batches_tracked, channel_axis)


def ghost_norm_validated(input, axis, running_mean, running_var, weight, bias, training, momentum, eps, backend,
                         virtual_batch_size, num_batches_tracked, channel_axis):
    """``ghost_norm`` for a caller that validated its settings and the input (see
    ``core.channel_norm_validated``); ``channel_axis`` is the axis as the caller was given it, named by the
    error when training meets it on the batch axis."""
    if not training:
        return channel_norm_validated(input, axis, running_mean, running_var, weight, bias, False, momentum, eps,
                                      backend, num_batches_tracked)
    op = "ghost_norm"
    if axis == 0:
        _checks.not_batch_axis(op, input, axis, channel_axis)
    if input.numel() == 0:
        return _empty(input, weight, bias, axis)
    chunks = input.split(virtual_batch_size, dim=0)
    per_channel = input.numel() // (input.shape[0] * input.shape[axis])
    smallest = chunks[-1].shape[0] * per_channel
    if smallest <= 1:
        raise ValueError(f"{op}: expected more than 1 value per channel in every virtual batch when training; "
                         f"batch of {input.shape[0]} split into virtual batches of {virtual_batch_size} leaves a "
                         f"last one with {smallest} value per channel (input shape {tuple(input.shape)})")
    # Each virtual batch is a slice of the validated input: a channel norm of its own, validated already.
    outs = [channel_norm_validated(c, axis, None, None, weight, bias, True, 0.0, eps, backend, None) for c in chunks]
    if running_mean is not None:
        robust.ghost_running_update(running_mean, running_var, num_batches_tracked, chunks, axis, momentum)
    y = torch.cat(outs, 0)
    return match_layout(y, input)


def filter_response_norm(input, weight=None, bias=None, tau=None, eps=1e-6, channel_axis=1,
                         backend="auto") -> torch.Tensor:
    """Filter Response Normalization with TLU (Singh & Krishnan 2019).

    ``ν² = mean(x²)`` over the spatial axes per sample and channel, ``y = γ·x/sqrt(ν² + |eps|) + β``,
    ``z = max(y, τ)``. No mean subtraction, no batch statistics.

    Args:
        input (Tensor): the input, floating point, C channels on ``channel_axis``.
        weight (Tensor | None): optional per-channel scale γ, shape ``(C,)``. Default: None (1).
        bias (Tensor | None): optional per-channel shift β, shape ``(C,)``. Default: None (0).
        tau (Tensor | None): optional per-channel TLU threshold τ, shape ``(C,)``; None skips the TLU (plain
            FRN). Default: None.
        eps (float | Tensor): a float > 0, or a learned one-element tensor (its absolute value is used).
            Default: 1e-6.
        channel_axis (int): the input axis that holds the channels; negative counts from the end; not 0, the
            batch axis. Default: 1.
        backend (str): ``"auto"`` or ``"reference"`` (the only implementation); ``"native"``/``"triton"``
            are a ``ValueError``. Default: ``"auto"``.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Output: the input's shape, dtype and memory format.

    Returns:
        The normalized input, after the TLU when ``tau`` is given.
    """
    op = "filter_response_norm"
    reference_only(op, backend)
    axis = _checks.input_tensor(input, channel_axis, op, batch_axis_needed=True)
    _checks.per_channel(op, input, axis, weight=weight, bias=bias, tau=tau)
    if isinstance(eps, torch.Tensor):
        if eps.numel() != 1:
            raise ValueError(f"{op}: a tensor eps must have one element, got shape {tuple(eps.shape)}")
    else:
        eps = _checks.eps(eps)
    return filter_response_norm_validated(input, axis, weight, bias, tau, eps, backend, channel_axis)


def filter_response_norm_validated(input, axis, weight, bias, tau, eps, backend, channel_axis):
    """``filter_response_norm`` for a caller that validated its settings and the input (see
    ``core.channel_norm_validated``); ``channel_axis`` is the axis as the caller was given it, named by the
    error when it is the batch axis. The backend is checked here (a name assigned after construction)."""
    op = "filter_response_norm"
    reference_only(op, backend)
    if axis == 0:
        _checks.not_batch_axis(op, input, axis, channel_axis)
    return robust.filter_response_norm(input, weight, bias, tau, eps, axis)


def evonorm_s0(input, num_groups, v, weight=None, bias=None, eps=1e-5, channel_axis=1,
               backend="auto") -> torch.Tensor:
    """EvoNorm-S0 (Liu et al. 2020): ``x·sigmoid(v·x) / group_std(x) · γ + β``; batch-independent.

    ``group_std = sqrt(var + eps)`` with the biased variance per sample over groups of
    ``C // num_groups`` channels and the spatial axes.

    Args:
        input (Tensor): the input, floating point, C channels on ``channel_axis``.
        num_groups (int): G, the number of groups of the variance; must divide C.
        v (Tensor): the per-channel sigmoid scale, shape ``(C,)``; required.
        weight (Tensor | None): optional per-channel scale γ, shape ``(C,)``. Default: None (1).
        bias (Tensor | None): optional per-channel shift β, shape ``(C,)``. Default: None (0).
        eps (float): added to the variance before the square root, > 0. Default: 1e-5.
        channel_axis (int): the input axis that holds the channels; negative counts from the end; not 0, the
            batch axis. Default: 1.
        backend (str): ``"auto"`` or ``"reference"`` (the only implementation); ``"native"``/``"triton"``
            are a ``ValueError``. Default: ``"auto"``.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Output: the input's shape, dtype and memory format.

    Returns:
        The normalized input.
    """
    op = "evonorm_s0"
    reference_only(op, backend)
    axis = _checks.input_tensor(input, channel_axis, op, batch_axis_needed=True)
    num_channels = _checks.per_channel(op, input, axis, v=v, weight=weight, bias=bias)
    if v is None:
        raise ValueError(f"{op}: v (the per-channel sigmoid scale) is required")
    num_groups = _checks.positive_int("num_groups", num_groups)
    _checks.groups_divide(num_groups, num_channels)
    eps = _checks.eps(eps)
    return evonorm_s0_validated(input, axis, num_groups, v, weight, bias, eps, backend, channel_axis)


def evonorm_s0_validated(input, axis, num_groups, v, weight, bias, eps, backend, channel_axis):
    """``evonorm_s0`` for a caller that validated its settings and the input (see
    ``filter_response_norm_validated``)."""
    op = "evonorm_s0"
    reference_only(op, backend)
    if axis == 0:
        _checks.not_batch_axis(op, input, axis, channel_axis)
    return robust.evonorm_s0(input, num_groups, v, weight, bias, eps, axis)


def evonorm_b0(input, running_var, v, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               channel_axis=1, backend="auto", *, num_batches_tracked=None) -> torch.Tensor:
    """EvoNorm-B0 (Liu et al. 2020): ``x / max(sqrt(var_batch + eps), v·x + instance_std(x)) · γ + β``.

    ``training=True`` uses the batch's biased variance per channel and updates ``running_var`` (if
    given, unbiased, as `channel_norm`); ``training=False`` uses ``running_var``.
    ``instance_std = sqrt(var + eps)`` with the biased variance per sample and channel.

    Args:
        input (Tensor): the input, floating point, C channels on ``channel_axis``.
        running_var (Tensor | None): per-channel running (unbiased) variance ``(C,)`` or None, updated in
            place in training; required when ``training=False``. Floating point, not requiring grad,
            and not expanded when updated (as `channel_norm`'s buffers).
        v (Tensor): the per-channel scale of the instance term, shape ``(C,)``; required.
        weight (Tensor | None): optional per-channel scale γ, shape ``(C,)``. Default: None (1).
        bias (Tensor | None): optional per-channel shift β, shape ``(C,)``. Default: None (0).
        training (bool): the batch variance (True) or ``running_var`` (False). Default: False.
        momentum (float | None): weight of the new statistic in the running statistics, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``, which must then be given). Default: 0.1.
        eps (float): added to the variance before the square root, > 0. Default: 1e-5.
        channel_axis (int): the input axis that holds the channels; negative counts from the end; not 0, the
            batch axis. Default: 1.
        backend (str): ``"auto"`` or ``"reference"`` (the only implementation); ``"native"``/``"triton"``
            are a ``ValueError``. Default: ``"auto"``.
        num_batches_tracked (Tensor | None): keyword-only; optional 0-dim long tensor counting the updates,
            incremented in place. Default: None.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Output: the input's shape, dtype and memory format.

    Returns:
        The normalized input.
    """
    op = "evonorm_b0"
    reference_only(op, backend)
    axis = _checks.input_tensor(input, channel_axis, op, batch_axis_needed=True)
    _checks.per_channel(op, input, axis, running_var=running_var, v=v, weight=weight, bias=bias)
    if v is None:
        raise ValueError(f"{op}: v (the per-channel instance-term scale) is required")
    _checks.running_buffers(op, None, running_var, num_batches_tracked, updated=bool(training))
    _checks.momentum(momentum)
    eps = _checks.eps(eps)
    if not training and running_var is None:
        raise ValueError(f"{op}: training=False needs running_var")
    if training and running_var is not None and momentum is None and num_batches_tracked is None:
        raise ValueError(f"{op}: momentum=None (cumulative average) needs num_batches_tracked")
    return evonorm_b0_validated(input, axis, running_var, v, weight, bias, training, momentum, eps, backend,
                                num_batches_tracked, channel_axis)


def evonorm_b0_validated(input, axis, running_var, v, weight, bias, training, momentum, eps, backend,
                         num_batches_tracked, channel_axis):
    """``evonorm_b0`` for a caller that validated its settings and the input (see
    ``filter_response_norm_validated``); the batch size is checked here."""
    op = "evonorm_b0"
    reference_only(op, backend)
    if axis == 0:
        _checks.not_batch_axis(op, input, axis, channel_axis)
    if training:
        _per_channel_values(op, input, axis)
    if input.numel() == 0:
        return _empty(input, weight, bias, axis)
    return robust.evonorm_b0(input, running_var, num_batches_tracked, v, weight, bias, bool(training), momentum, eps,
                             axis)


def standardize_weight(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Weight Standardization (Qiao et al. 2019): each output channel's filter (dim 0) standardized over
    the other dims, ``(w - mean) / sqrt(var + eps)`` with the biased variance.

    Args:
        weight: a floating convolution weight ``(out, in / groups, *kernel)``, rank 2 or more.
        eps: added to the variance, > 0. Default: 1e-5.

    Shape:
        - Weight: ``(C_out, *)``, rank 2 or more; statistics per index of dim 0.
        - Output: the weight's shape.

    Returns:
        The standardized weight, same shape and dtype.
    """
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.ndim < 2:
        raise TypeError(f"standardize_weight: weight must be a floating tensor of rank >= 2, got "
                        f"{type(weight).__name__} {getattr(weight, 'dtype', '')} {tuple(getattr(weight, 'shape', ()))}")
    return robust.standardize_weight(weight, _checks.eps(eps))
