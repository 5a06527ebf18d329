"""LayerNorm2d: statistics per position (sample and spatial location) over the channels, as ConvNeXt."""
from __future__ import annotations

from typing import Optional

import torch

from ..functional.core import layer_norm_2d_validated
from .base import AffineNorm, channel_count


class LayerNorm2d(AffineNorm):
    """Normalize each position over the channels: timm's ``LayerNorm2d`` for any rank and channel axis.

    Each position (every index of the axes other than ``channel_axis``: the sample and the spatial
    location) gets its own mean and biased variance over its C channel values;
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with a per-channel ``weight`` and ``bias``.
    This is ``nn.LayerNorm(C)`` on the channels-last view, the norm of ConvNeXt. No running
    statistics: training and eval compute the same, independent of the other samples and positions.
    Its ``state_dict`` keys are ``weight`` and ``bias``, as timm's ``LayerNorm2d`` and
    ``nn.LayerNorm(C)``. Unlike `LayerNorm` (``GroupNorm(1, C)``, one statistic per sample over the
    channels and the spatial axes), nothing is shared across positions.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-6 (timm's).
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end
            (``-1`` normalizes channels-last tensors such as ``(N, H, W, C)`` or tokens ``(N, L, C)``).
            Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"`` (pure torch math) or ``"native"``
            (torch's ``layer_norm`` on the channels-last view). ``"triton"`` has no kernel for this
            norm and is a ``ValueError``. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters. Default: None (torch's default
            device).
        dtype (torch.dtype | None): floating dtype of the parameters. Default: None (torch's default dtype).
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis``.
        - Output: the input's shape, dtype and memory format.
    """

    scope = "position"
    functional_op = "layer_norm_2d"

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-6, affine: bool = True,
                 channel_axis: int = 1, backend: str = "auto", device=None, dtype=None, *, bias: bool = True,
                 num_features: Optional[int] = None) -> None:
        super().__init__(channel_count(type(self).__name__, num_channels, num_features), eps, affine, channel_axis,
                         backend, device, dtype, bias=bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        axis = self._check_input(input)
        weight, bias = self._affine()
        return layer_norm_2d_validated(input, axis, weight, bias, self.eps, self.backend)
