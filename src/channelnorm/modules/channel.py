"""ChannelNorm: statistics per channel over the batch and spatial axes (what frameworks call BatchNorm)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import functional as F
from ..functional.core import channel_norm_validated
from .base import RunningStatsNorm


class ChannelNorm(RunningStatsNorm):
    """Normalize each channel with its mean and biased variance over every other axis.

    Drop-in for ``nn.BatchNorm1d/2d/3d`` (same buffers and ``state_dict``) that takes any rank
    >= 2 and any ``channel_axis`` (``-1`` for channels-last data as in Keras).
    """

    scope = "channel"
    uses_batch_statistics = True

    def forward(self, input: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``mask`` (bool, True = valid) excludes padding from the statistics; see ``functional.channel_norm``."""
        axis = self._check_input(input)
        running_mean, running_var, tracked = self._running_buffers()
        if mask is None:
            return channel_norm_validated(input, axis, running_mean, running_var, self.weight, self.bias,
                                          self._uses_batch_stats(), self.momentum, self.eps, self.backend, tracked)
        return F.channel_norm(input, running_mean, running_var, self.weight, self.bias,
                              training=self._uses_batch_stats(), momentum=self.momentum, eps=self.eps,
                              channel_axis=self.channel_axis, backend=self.backend,
                              num_batches_tracked=tracked, mask=mask)

    def _forward_eval_with_mask(self, input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """For subclasses with their own statistics: a mask is only meaningful where no statistics are taken."""
        if self._uses_batch_stats():
            raise ValueError(f"{type(self).__name__} does not support a statistics mask in training; "
                             f"use ChannelNorm for masked statistics")
        return ChannelNorm.forward(self, input, mask=mask)
