"""GroupNorm and LayerNorm: statistics per sample over groups of channels (one group: LayerNorm)."""
from __future__ import annotations

from typing import Optional

import torch

from ..functional import _validation as _checks
from ..functional.core import group_norm_validated
from .base import AffineNorm, channel_count


class GroupNorm(AffineNorm):
    """``nn.GroupNorm`` with any rank >= 2 and any channel axis but 0 (the batch axis)."""

    scope = "group"
    functional_op = "group_norm"
    _repr_fields = ("num_groups", "num_channels", "eps", "affine", "channel_axis", "backend")
    _repr_positional = 2

    def __init__(self, num_groups: int, num_channels: Optional[int] = None, eps: float = 1e-5, affine: bool = True,
                 channel_axis: int = 1, backend: str = "auto", device=None, dtype=None, *, bias: bool = True,
                 num_features: Optional[int] = None) -> None:
        num_groups = _checks.positive_int("num_groups", num_groups)
        num_channels = channel_count(type(self).__name__, num_channels, num_features)
        _checks.groups_divide(num_groups, num_channels)
        self.num_groups = num_groups
        super().__init__(num_channels, eps, affine, channel_axis, backend, device, dtype, bias=bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        axis = self._check_input(input)
        return group_norm_validated(input, axis, self.num_groups, self.weight, self.bias, self.eps, self.backend)


class LayerNorm(GroupNorm):
    """Per-sample statistics over (C, spatial) with a per-channel affine: ``GroupNorm(1, C)``.

    This is the Group Norm paper's LN. It is not ``nn.LayerNorm``, whose affine is per element of
    ``normalized_shape``; its state dict matches ``nn.GroupNorm(1, C)``.
    """

    scope = "layer"
    _repr_fields = ("num_channels", "eps", "affine", "channel_axis", "backend")
    _repr_positional = 1

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, affine: bool = True,
                 channel_axis: int = 1, backend: str = "auto", device=None, dtype=None, *, bias: bool = True,
                 num_features: Optional[int] = None) -> None:
        super().__init__(1, num_channels, eps, affine, channel_axis, backend, device, dtype, bias=bias,
                         num_features=num_features)
