"""Functional API: validate, then dispatch to a backend. No math here."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _checks
from ..ops import dispatch, fused, masked
from ..ops.layout import elements_per_statistic
from ..ops.reference import affine

__all__ = ["channel_norm", "group_norm", "layer_norm", "layer_norm_2d", "instance_norm", "channel_norm_act",
           "group_norm_act"]


def require_backend(op: str, backend) -> None:
    """Refuse a backend name that can never run ``op`` (modules call this at construction, so that a
    wrong name fails there and not at the first call); the rules are ``ops.dispatch.require``'s."""
    dispatch.require(op, backend)


def _empty_output(x: torch.Tensor, weight, bias, axis: int) -> torch.Tensor:
    # An empty batch has no statistics; keep the graph so parameters still get (zero) gradients.
    return affine(x * 0, weight, bias, axis).to(x.dtype)


def _check_tracked_call(op, input, channel_axis, weight, bias, running_mean, running_var, momentum, eps, backend,
                        num_batches_tracked, batch_stats_name: str, use_batch_stats: bool, batch_axis_needed: bool):
    """Checks shared by the norms with running statistics; returns (non-negative channel axis, eps)."""
    dispatch.check_backend_name(backend)
    axis = _checks.input_tensor(input, channel_axis, op, batch_axis_needed=batch_axis_needed)
    _checks.per_channel(op, input, axis, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    _checks.paired_running_stats(op, running_mean, running_var)
    _checks.running_buffers(op, running_mean, running_var, num_batches_tracked, updated=bool(use_batch_stats))
    _checks.momentum(momentum)
    eps = _checks.eps(eps)
    if not use_batch_stats and running_mean is None:
        raise ValueError(f"{op}: {batch_stats_name}=False needs running_mean and running_var")
    if use_batch_stats and running_mean is not None and momentum is None and num_batches_tracked is None:
        raise ValueError(f"{op}: momentum=None (cumulative average) needs num_batches_tracked")
    return axis, eps


def _check_channel_batch(op: str, input: torch.Tensor, axis: int) -> None:
    """Training statistics per channel need more than one value per channel in the batch."""
    n = elements_per_statistic(input.shape, input.shape[axis], per_sample=False) if input.shape[axis] else 0
    _checks.more_than_one_value(op, input, n, "channel")


def _check_group_call(op, input, num_groups, weight, bias, eps, channel_axis, backend):
    """Checks shared by the group norms; returns (non-negative channel axis, num_groups, eps)."""
    dispatch.check_backend_name(backend)
    axis = _checks.input_tensor(input, channel_axis, op, batch_axis_needed=True)
    num_channels = _checks.per_channel(op, input, axis, weight=weight, bias=bias)
    num_groups = _checks.positive_int("num_groups", num_groups)
    _checks.groups_divide(num_groups, num_channels)
    return axis, num_groups, _checks.eps(eps)


def channel_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
    backend: str = "auto",
    *,
    num_batches_tracked: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Channel normalization (batch normalization): statistics per channel over every other axis.

    ``training=True`` normalizes with the batch's mean and biased variance and, when running
    buffers are given, updates them in place (unbiased variance; skipped for non-finite batches).
    ``training=False`` normalizes with ``running_mean``/``running_var``.

    Args:
        input: the input, floating point, C channels on ``channel_axis``.
        running_mean: per-channel running mean ``(C,)`` or None, updated in place in training.
        running_var: per-channel running (unbiased) variance ``(C,)`` or None, updated in place in
            training. Give both or neither. Both floating point and not requiring grad (running
            statistics are not differentiable; torch's ``F.batch_norm`` refuses them too), and, when
            updated, one element of memory per channel (an expanded tensor is a ``ValueError``).
        weight: optional per-channel scale, shape ``(C,)``. Default: None (1).
        bias: optional per-channel shift, shape ``(C,)``. Default: None (0).
        training: normalize with the batch's statistics (and update the running ones) instead of the
            running statistics, which are then required. Default: False.
        momentum: weight of the new statistic in the running statistics, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``, which must then be given).
            Default: 0.1.
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        channel_axis: the input axis that holds the channels; negative counts from the end.
            Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"``, ``"native"`` or ``"triton"``; a named
            backend that cannot run the call is a ``ValueError`` saying why. Default: ``"auto"``.
        num_batches_tracked: keyword-only; optional 0-dim long tensor counting the updates,
            incremented in place with the running statistics (any one-element integer or floating
            tensor; anything else is a ``TypeError`` before the statistics move). Default: None.
        mask: keyword-only; optional bool tensor, True for the elements that enter the statistics
            (padding excluded; every element is still normalized, but padding reaches no gradient,
            in training and eval: padded outputs pass none to the weight, bias, statistics or valid
            inputs, so any padding value (inf, NaN, ``finfo.max``) leaves them finite): the input's
            shape without the channel axis (``(N, L)`` for ``(N, C, L)``), or the input's rank with
            size 1 on the channel axis; broadcastable. ``n`` of the unbiased correction is then the
            number of valid elements per channel. Only the reference math computes masked statistics:
            ``backend="auto"`` uses it, ``"native"``/``"triton"`` raise. Default: None.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis``.
        - Output: the input's shape, dtype and memory format.

    Returns:
        The normalized input.
    """
    op = "channel_norm"
    axis, eps = _check_tracked_call(op, input, channel_axis, weight, bias, running_mean, running_var, momentum, eps,
                                    backend, num_batches_tracked, "training", training, batch_axis_needed=False)
    if mask is not None:
        return _masked_channel_norm(input, mask, running_mean, running_var, weight, bias, training, momentum, eps,
                                    axis, backend, num_batches_tracked)
    return channel_norm_validated(input, axis, running_mean, running_var, weight, bias, training, momentum, eps,
                                  backend, num_batches_tracked)


def channel_norm_validated(input, axis, running_mean, running_var, weight, bias, training, momentum, eps, backend,
                           num_batches_tracked):
    """``channel_norm`` for a caller that validated its settings already (a module, at construction) and
    the input's type, rank and channel count (``axis``: the non-negative channel axis); no mask.
    What depends on the input's size is checked here."""
    op = "channel_norm"
    numel = input.numel()
    if numel == 0:
        return _empty_output(input, weight, bias, axis)
    # numel // C values per channel (C > 0: the input is not empty); the checker raises with the message.
    if training and numel // input.shape[axis] <= 1:
        _check_channel_batch(op, input, axis)
    impl = dispatch.resolve(backend, op, input, axis, (weight, bias, running_mean, running_var), bool(training))
    return impl.channel_norm(input, running_mean, running_var, weight, bias, bool(training), momentum, eps, axis,
                             num_batches_tracked)


def _masked_channel_norm(input, mask, running_mean, running_var, weight, bias, training, momentum, eps, axis,
                         backend, num_batches_tracked):
    op = "channel_norm"
    full_mask = _checks.stats_mask(op, input, axis, mask)
    dispatch.require("masked_channel_norm", backend)
    count = 0
    if training and input.numel() > 0:
        count = int(masked.valid_count(full_mask, input.shape, axis))  # host read: n is needed on the host
        if count <= 1:
            raise ValueError(f"{op}: expected more than 1 unmasked value per channel when training, got {count} "
                             f"(input shape {tuple(input.shape)}, mask shape {tuple(mask.shape)})")
    if input.numel() == 0:
        return _empty_output(input, weight, bias, axis)
    return masked.channel_norm(input, full_mask, running_mean, running_var, weight, bias, bool(training), momentum,
                               eps, axis, count, num_batches_tracked=num_batches_tracked)


def instance_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor] = None,
    running_var: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    use_input_stats: bool = True,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
    backend: str = "auto",
    *,
    num_batches_tracked: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Instance normalization: statistics per sample and per channel over the spatial axes.

    With ``use_input_stats=True`` each (sample, channel) is normalized with its own mean and biased
    variance and, when running buffers are given, their batch averages (mean, unbiased variance)
    are blended into them in place. With False, ``running_mean``/``running_var`` are used.

    Args:
        input: the input, floating point, C channels on ``channel_axis``.
        running_mean: per-channel running mean ``(C,)`` or None. Default: None.
        running_var: per-channel running (unbiased) variance ``(C,)`` or None; give both or neither,
            floating point, not requiring grad, and, when updated, not expanded (as
            `channel_norm`). Default: None.
        weight: optional per-channel scale, shape ``(C,)``. Default: None (1).
        bias: optional per-channel shift, shape ``(C,)``. Default: None (0).
        use_input_stats: normalize with the input's statistics instead of the running ones, which
            are then required. Default: True.
        momentum: weight of the new statistic in the running statistics, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``, which must then be given).
            Default: 0.1.
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        channel_axis: the input axis that holds the channels; negative counts from the end; not 0,
            the batch axis. Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"``, ``"native"`` or ``"triton"``; a named
            backend that cannot run the call is a ``ValueError`` saying why. Default: ``"auto"``.
        num_batches_tracked: keyword-only; optional 0-dim long tensor counting the updates,
            incremented in place with the running statistics (any one-element integer or floating
            tensor; anything else is a ``TypeError`` before the statistics move). Default: None.

    Shape:
        - Input: ``(N, C, *)``, rank 3 or more with input statistics (one value
          per sample and channel is a ``ValueError``), with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Output: the input's shape, dtype and memory format.

    Returns:
        The normalized input.
    """
    op = "instance_norm"
    axis, eps = _check_tracked_call(op, input, channel_axis, weight, bias, running_mean, running_var, momentum, eps,
                                    backend, num_batches_tracked, "use_input_stats", use_input_stats,
                                    batch_axis_needed=True)
    return instance_norm_validated(input, axis, running_mean, running_var, weight, bias, use_input_stats, momentum,
                                   eps, backend, num_batches_tracked)


def instance_norm_validated(input, axis, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                            backend, num_batches_tracked):
    """``instance_norm`` for a caller that validated its settings and the input (see ``channel_norm_validated``)."""
    op = "instance_norm"
    if axis == 0:
        _checks.not_batch_axis(op, input, axis, axis)
    numel = input.numel()
    if numel == 0:
        return _empty_output(input, weight, bias, axis)
    if use_input_stats:
        # numel // (N * C) values per (sample, channel); N, C > 0: the input is not empty.
        n = numel // (input.shape[0] * input.shape[axis])
        if n <= 1:
            _checks.more_than_one_value(op, input, n, "instance (sample and channel)")
    impl = dispatch.resolve(backend, op, input, axis, (weight, bias, running_mean, running_var),
                            bool(use_input_stats))
    return impl.instance_norm(input, running_mean, running_var, weight, bias, bool(use_input_stats), momentum, eps,
                              axis, num_batches_tracked)


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Group normalization: statistics per sample over groups of channels and the spatial axes.

    Each (sample, group of ``C // num_groups`` consecutive channels) is normalized with its mean and
    biased variance, then scaled and shifted per channel. No running statistics.

    Args:
        input: the input, floating point, C channels on ``channel_axis``.
        num_groups: G, the number of groups; must divide C.
        weight: optional per-channel scale, shape ``(C,)``. Default: None (1).
        bias: optional per-channel shift, shape ``(C,)``. Default: None (0).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        channel_axis: the input axis that holds the channels; negative counts from the end; not 0,
            the batch axis. Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"``, ``"native"`` or ``"triton"``; a named
            backend that cannot run the call is a ``ValueError`` saying why. Default: ``"auto"``.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Output: the input's shape, dtype and memory format.

    Returns:
        The normalized input.
    """
    op = "group_norm"
    axis, num_groups, eps = _check_group_call(op, input, num_groups, weight, bias, eps, channel_axis, backend)
    return group_norm_validated(input, axis, num_groups, weight, bias, eps, backend)


def group_norm_validated(input, axis, num_groups, weight, bias, eps, backend):
    """``group_norm`` for a caller that validated its settings and the input (see ``channel_norm_validated``)."""
    if axis == 0:
        _checks.not_batch_axis("group_norm", input, axis, axis)
    if input.numel() == 0:
        return _empty_output(input, weight, bias, axis)
    impl = dispatch.resolve(backend, "group_norm", input, axis, (weight, bias), num_groups=num_groups)
    return impl.group_norm(input, num_groups, weight, bias, eps, axis)


def layer_norm(
    input: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Layer normalization over (C, spatial) per sample with a per-channel affine: ``group_norm`` with 1 group.

    Args:
        input: the input, floating point, C channels on ``channel_axis``.
        weight: optional per-channel scale, shape ``(C,)``. Default: None (1).
        bias: optional per-channel shift, shape ``(C,)``. Default: None (0).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        channel_axis: the input axis that holds the channels; negative counts from the end; not 0,
            the batch axis. Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"``, ``"native"`` or ``"triton"``; a named
            backend that cannot run the call is a ``ValueError`` saying why. Default: ``"auto"``.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Output: the input's shape, dtype and memory format.

    Returns:
        The normalized input.
    """
    return group_norm(input, 1, weight, bias, eps, channel_axis, backend)


def layer_norm_2d(
    input: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-6,
    channel_axis: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Layer normalization per position over the channels (timm's ``LayerNorm2d``, ConvNeXt's norm).

    Every position (each index of every axis but the channel axis: sample and spatial location) is
    normalized with the mean and biased variance of its C channel values, then scaled and shifted
    per channel: ``y = (x - mean) / sqrt(var + eps) * weight + bias``. This is ``nn.LayerNorm(C)``
    applied to the channels-last view; nothing is shared between positions or samples.

    Args:
        input: the input, floating point, C channels on ``channel_axis``.
        weight: optional per-channel scale, shape ``(C,)``. Default: None (1).
        bias: optional per-channel shift, shape ``(C,)``. Default: None (0).
        eps: added to the variance before the square root, > 0. Default: 1e-6 (timm's).
        channel_axis: the input axis that holds the channels; negative counts from the end; any axis.
            Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"`` or ``"native"`` (torch's ``layer_norm`` on
            the channels-last view); ``"triton"`` has no kernel for it and is a ``ValueError``.
            Default: ``"auto"``.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis``.
        - Output: the input's shape, dtype and memory format.

    Returns:
        The normalized input.
    """
    op = "layer_norm_2d"
    dispatch.require(op, backend)
    axis = _checks.input_tensor(input, channel_axis, op)
    _checks.per_channel(op, input, axis, weight=weight, bias=bias)
    return layer_norm_2d_validated(input, axis, weight, bias, _checks.eps(eps), backend)


def layer_norm_2d_validated(input, axis, weight, bias, eps, backend):
    """``layer_norm_2d`` for a caller that validated its settings and the input (see ``channel_norm_validated``)."""
    if input.numel() == 0:
        return _empty_output(input, weight, bias, axis)
    impl = dispatch.resolve(backend, "layer_norm_2d", input, axis, (weight, bias))
    return impl.layer_norm_2d(input, weight, bias, eps, axis)


def channel_norm_act(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
    activation: str = "relu",
    residual: Optional[torch.Tensor] = None,
    backend: str = "auto",
    *,
    num_batches_tracked: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``act(channel_norm(input) + residual)``: channel norm, residual add and activation in one call.

    Same running-statistics behaviour as `channel_norm`. The Triton backend fuses the norm, the
    residual add and the activation (forward and backward); the other backends compose them from
    torch ops with the same result.

    Args:
        input: the input, floating point, C channels on ``channel_axis``.
        running_mean: per-channel running mean ``(C,)`` or None, updated in place in training.
        running_var: per-channel running (unbiased) variance ``(C,)`` or None, updated in place in
            training. Give both or neither. Both floating point and not requiring grad (running
            statistics are not differentiable; torch's ``F.batch_norm`` refuses them too), and, when
            updated, one element of memory per channel (an expanded tensor is a ``ValueError``).
        weight: optional per-channel scale, shape ``(C,)``. Default: None (1).
        bias: optional per-channel shift, shape ``(C,)``. Default: None (0).
        training: normalize with the batch's statistics (and update the running ones) instead of the
            running statistics, which are then required. Default: False.
        momentum: weight of the new statistic in the running statistics, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``, which must then be given).
            Default: 0.1.
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        channel_axis: the input axis that holds the channels; negative counts from the end.
            Default: 1.
        activation: ``"relu"``, ``"silu"``, ``"gelu"`` (exact, not tanh) or ``"none"`` (or None).
            Default: ``"relu"``.
        residual: optional tensor added after the norm, before the activation; the input's shape,
            dtype and device. Default: None.
        backend: ``"auto"`` (picks per call), ``"reference"``, ``"native"`` or ``"triton"``; a named
            backend that cannot run the call is a ``ValueError`` saying why. Default: ``"auto"``.
        num_batches_tracked: keyword-only; optional 0-dim long tensor counting the updates,
            incremented in place with the running statistics (any one-element integer or floating
            tensor; anything else is a ``TypeError`` before the statistics move). Default: None.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis``.
        - Residual: the input's shape.
        - Output: the input's shape, dtype and memory format.

    Returns:
        ``act(norm(input) + residual)``.
    """
    op = "channel_norm_act"
    axis, eps = _check_tracked_call(op, input, channel_axis, weight, bias, running_mean, running_var, momentum, eps,
                                    backend, num_batches_tracked, "training", training, batch_axis_needed=False)
    activation = _checks.activation(op, activation)
    return channel_norm_act_validated(input, axis, running_mean, running_var, weight, bias, training, momentum, eps,
                                      activation, residual, backend, num_batches_tracked)


def channel_norm_act_validated(input, axis, running_mean, running_var, weight, bias, training, momentum, eps,
                               activation, residual, backend, num_batches_tracked):
    """``channel_norm_act`` for a caller that validated its settings (``activation`` included) and the input
    (see ``channel_norm_validated``); the residual, a per-call argument, is checked here."""
    op = "channel_norm_act"
    _checks.residual(op, input, residual)
    if training:
        _check_channel_batch(op, input, axis)
    if input.numel() == 0:
        return fused.activate(_empty_output(input, weight, bias, axis) + (0 if residual is None else residual),
                              activation)
    impl = dispatch.resolve(backend, op, input, axis, (weight, bias, running_mean, running_var), bool(training))
    return impl.channel_norm_act(input, running_mean, running_var, weight, bias, bool(training), momentum, eps, axis,
                                 activation=activation, residual=residual, num_batches_tracked=num_batches_tracked)


def group_norm_act(
    input: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
    activation: str = "relu",
    residual: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``act(group_norm(input) + residual)``: group norm, residual add and activation in one call.

    Fused on the Triton backend, composed from torch ops on the others (same result).

    Args:
        input: the input, floating point, C channels on ``channel_axis``.
        num_groups: G, the number of groups; must divide C.
        weight: optional per-channel scale, shape ``(C,)``. Default: None (1).
        bias: optional per-channel shift, shape ``(C,)``. Default: None (0).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        channel_axis: the input axis that holds the channels; negative counts from the end; not 0,
            the batch axis. Default: 1.
        activation: ``"relu"``, ``"silu"``, ``"gelu"`` (exact, not tanh) or ``"none"`` (or None).
            Default: ``"relu"``.
        residual: optional tensor added after the norm, before the activation; the input's shape,
            dtype and device. Default: None.
        backend: ``"auto"`` (picks per call), ``"reference"``, ``"native"`` or ``"triton"``; a named
            backend that cannot run the call is a ``ValueError`` saying why. Default: ``"auto"``.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Residual: the input's shape.
        - Output: the input's shape, dtype and memory format.

    Returns:
        ``act(norm(input) + residual)``.
    """
    op = "group_norm_act"
    axis, num_groups, eps = _check_group_call(op, input, num_groups, weight, bias, eps, channel_axis, backend)
    activation = _checks.activation(op, activation)
    return group_norm_act_validated(input, axis, num_groups, weight, bias, eps, activation, residual, backend,
                                    channel_axis)


def group_norm_act_validated(input, axis, num_groups, weight, bias, eps, activation, residual, backend,
                             channel_axis):
    """``group_norm_act`` for a caller that validated its settings (``activation`` included) and the input
    (see ``channel_norm_validated``); ``channel_axis`` is the axis as the caller was given it, named by the
    error when it is the batch axis. The residual, a per-call argument, is checked here."""
    op = "group_norm_act"
    if axis == 0:
        _checks.not_batch_axis(op, input, axis, channel_axis)
    _checks.residual(op, input, residual)
    if input.numel() == 0:
        return fused.activate(_empty_output(input, weight, bias, axis) + (0 if residual is None else residual),
                              activation)
    impl = dispatch.resolve(backend, op, input, axis, (weight, bias), num_groups=num_groups)
    return impl.group_norm_act(input, num_groups, weight, bias, eps, axis, activation=activation, residual=residual)

