"""InstanceNorm: statistics per sample and per channel over the spatial axes."""
from __future__ import annotations

from typing import Optional

import torch

from ..functional.core import instance_norm_validated
from .base import RunningStatsNorm


class InstanceNorm(RunningStatsNorm):
    """Normalize each sample and channel over the spatial axes: ``nn.InstanceNorm1d/2d/3d`` for any rank.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with one mean and biased variance per
    (sample, channel). Unlike torch's, ``affine`` defaults to True (docs/design.md §2)
    and ``momentum=None`` is a cumulative average. With ``track_running_stats=True``, training
    blends the batch average of the per-instance mean and unbiased variance into ``running_mean``
    and ``running_var`` (as torch does), and eval normalizes with them.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        momentum: weight of the new statistic in the running statistics, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``). Default: 0.1.
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        track_running_stats: keep ``running_mean``, ``running_var`` and ``num_batches_tracked`` and
            use them in eval; with False (the default, as torch) eval uses the input's own
            statistics. Default: False.
        channel_axis: the input axis that holds the channels; negative counts from the end; not 0,
            the batch axis. Default: 1.
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
        - Input: ``(N, C, *)`` with the C channels on ``channel_axis`` and the batch on axis 0;
          statistics from the input need more than one value per (sample, channel), so rank 3 or
          more (rank 2 only in eval with running statistics).
        - Output: the input's shape, dtype and memory format.
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
        weight, bias = self._affine()
        return instance_norm_validated(input, axis, running_mean, running_var, weight, bias,
                                       self._uses_batch_stats(), self.momentum, self.eps, self.backend, tracked)
