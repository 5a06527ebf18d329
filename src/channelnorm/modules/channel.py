"""ChannelNorm: statistics per channel over the batch and spatial axes (what frameworks call BatchNorm)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import functional as F
from ..functional.core import channel_norm_validated
from .base import RunningStatsNorm


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
        channel_axis: the input axis that holds the channels; negative counts from the end.
            Default: 1.
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

    def _forward_eval_with_mask(self, input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """For subclasses with their own statistics: a mask is only meaningful where no statistics are taken."""
        if self._uses_batch_stats():
            raise ValueError(f"{type(self).__name__} does not support a statistics mask in training; "
                             f"use ChannelNorm for masked statistics")
        return ChannelNorm.forward(self, input, mask=mask)
