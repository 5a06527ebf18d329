"""InstanceNorm: statistics per sample and per channel over the spatial axes."""
from __future__ import annotations

from typing import Optional

import torch

from ..functional.core import instance_norm_validated
from .base import RunningStatsNorm


class InstanceNorm(RunningStatsNorm):
    """``nn.InstanceNorm1d/2d/3d`` for any rank >= 3 and any channel axis but 0.

    Unlike torch's, ``affine`` defaults to True (DESIGN §2) and ``momentum=None`` is a cumulative
    average here too; running statistics (``track_running_stats=True``) average the per-instance
    statistics over the batch, as torch does.
    """

    scope = "instance"
    functional_op = "instance_norm"

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = False, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, *, bias: bool = True,
                 num_features: Optional[int] = None) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats, channel_axis, backend,
                         device, dtype, bias=bias, num_features=num_features)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        axis = self._check_input(input)
        running_mean, running_var, tracked = self._running_buffers()
        return instance_norm_validated(input, axis, running_mean, running_var, self.weight, self.bias,
                                       self._uses_batch_stats(), self.momentum, self.eps, self.backend, tracked)
