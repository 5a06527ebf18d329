"""ChannelNorm: statistics per channel over the batch and spatial axes (what frameworks call BatchNorm)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .. import _checks
from .. import functional as F
from ..functional.core import channel_norm_validated
from .base import RunningStatsNorm


def flatten_channel_axes(x: torch.Tensor, axes: Sequence[int], owner: str) -> tuple[torch.Tensor, list[int], list[int]]:
    """``x`` with the channel ``axes`` moved last (in the input's order) and merged into one axis, as Keras 2
    lays out the parameters of ``BatchNormalization(axis=[...])``; returns it, the axes (non-negative,
    sorted) and their sizes. ``unflatten(-1, sizes).movedim(last, axes)`` undoes it."""
    order = [_checks.input_tensor(x, a, owner) for a in axes]
    if len(set(order)) != len(order):
        raise ValueError(f"{owner}: channel_axis {tuple(axes)} names the same axis twice for input of rank {x.ndim} "
                         f"(shape {tuple(x.shape)})")
    order.sort()
    k = x.ndim - len(order)
    return x.movedim(order, list(range(k, x.ndim))).flatten(k), order, [x.shape[a] for a in order]


class ChannelNorm(RunningStatsNorm):
    """Normalize each channel with its mean and biased variance over every other axis.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, one ``mean`` and ``var`` per channel over the
    batch and spatial axes. A drop-in for ``nn.BatchNorm1d/2d/3d`` (same buffers and ``state_dict``
    keys, loadable strictly both ways) that takes input of any rank from 2 up and any
    ``channel_axis`` (``-1`` for channels-last data, as in Keras).

    In training, and whenever ``track_running_stats=False``, the statistics are the batch's, with the
    biased variance. Training with running statistics also updates ``running_mean`` and
    ``running_var`` (the unbiased variance, ``var * n / (n - 1)`` over the ``n`` values per channel)
    and adds 1 to ``num_batches_tracked``; a batch whose statistics are not finite updates nothing.
    Eval with running statistics normalizes with them.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        momentum: weight of the new batch statistic in the running statistics, in [0, 1]:
            ``running = (1 - momentum) * running + momentum * batch``; None is a cumulative average
            (weight ``1 / num_batches_tracked``). Default: 0.1.
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        track_running_stats: keep ``running_mean``, ``running_var`` and ``num_batches_tracked``;
            with False they are None and eval uses the batch's statistics too. Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end. A tuple of
            axes (Keras 2's ``BatchNormalization(axis=[1, 3])``) normalizes per combination of their
            indices: ``num_channels`` is the product of their sizes, the statistics are over the other
            axes, and the parameters and buffers are 1-D in row-major order of the axes sorted as in
            the input (the input is reshaped, so the result is exact; a copy is made when the axes
            are not adjacent). Subclasses take an int only. Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"`` (pure torch math), ``"native"`` (torch's
            kernels) or ``"triton"`` (fused kernels). A named backend that cannot run a call is a
            ``ValueError`` saying why, never a silent fallback. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters and buffers. Default: None (torch's
            default device).
        dtype (torch.dtype | None): floating dtype of the parameters and buffers. Default: None (torch's
            default dtype).
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis``
          (``(N, *, C)`` with ``channel_axis=-1``).
        - Output: the input's shape, dtype and memory format.
    """

    scope = "channel"
    uses_batch_statistics = True
    accepts_axis_tuple = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass with its own forward reads channel_axis as an int unless it says otherwise.
        if "forward" in vars(cls) and "accepts_axis_tuple" not in vars(cls):
            cls.accepts_axis_tuple = False

    def forward(self, input: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalize ``input``.

        Args:
            input: the input, C channels on ``channel_axis``.
            mask: optional bool tensor, True for the elements that enter the statistics (padding
                excluded; every element is still normalized): the input's shape without the channel
                axis, or the input's rank with size 1 on the channel axis, broadcastable. Only the
                reference math computes masked statistics; see `channelnorm.functional.channel_norm`.

        Returns:
            The normalized input, same shape, dtype and memory format.
        """
        if type(self.channel_axis) is tuple:
            return self._forward_axes(input, mask)
        axis = self._check_input(input)
        running_mean, running_var, tracked = self._running_buffers()
        weight, bias = self._affine()
        if mask is None:
            return channel_norm_validated(input, axis, running_mean, running_var, weight, bias,
                                          self._uses_batch_stats(), self.momentum, self.eps, self.backend, tracked)
        return F.channel_norm(input, running_mean, running_var, weight, bias,
                              training=self._uses_batch_stats(), momentum=self.momentum, eps=self.eps,
                              channel_axis=self.channel_axis, backend=self.backend,
                              num_batches_tracked=tracked, mask=mask)

    def _forward_axes(self, input: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """A tuple ``channel_axis``: the channel axes merged into one last axis, normalized, put back."""
        name = type(self).__name__
        if mask is not None:
            raise ValueError(f"{name}: a statistics mask is not supported with a tuple channel_axis "
                             f"{self.channel_axis}")
        flat, order, sizes = flatten_channel_axes(input, self.channel_axis, name)
        if math.prod(sizes) != self.num_channels:
            raise ValueError(f"{name}: expected the channel axes {self.channel_axis} of input shape "
                             f"{tuple(input.shape)} to hold {self.num_channels} channels together, got sizes "
                             f"{sizes} ({math.prod(sizes)} channels)")
        running_mean, running_var, tracked = self._running_buffers()
        weight, bias = self._affine()
        y = channel_norm_validated(flat, flat.ndim - 1, running_mean, running_var, weight, bias,
                                   self._uses_batch_stats(), self.momentum, self.eps, self.backend, tracked)
        y = y.unflatten(-1, sizes).movedim(list(range(input.ndim - len(order), input.ndim)), order)
        if y.stride() != input.stride():  # back to the input's memory layout
            y = torch.empty_like(input).copy_(y)
        return y

    def _forward_eval_with_mask(self, input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """For subclasses with their own statistics: a mask is only meaningful where no statistics are taken."""
        if self._uses_batch_stats():
            raise ValueError(f"{type(self).__name__} does not support a statistics mask in training; "
                             f"use ChannelNorm for masked statistics")
        return ChannelNorm.forward(self, input, mask=mask)
