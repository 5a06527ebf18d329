"""GroupNorm and LayerNorm: statistics per sample over groups of channels (one group: LayerNorm)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _checks
from ..functional.core import group_norm_validated
from .base import AffineNorm, channel_count


class GroupNorm(AffineNorm):
    """Normalize each sample over groups of channels: ``nn.GroupNorm`` for any rank and channel axis.

    The C channels are split into ``num_groups`` groups of ``C // num_groups`` consecutive channels;
    each (sample, group) is normalized with its own mean and biased variance over the group's channels
    and the spatial axes, then scaled and shifted per channel:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``. No running statistics: training and eval
    compute the same, independent of the other samples. The ``state_dict`` is ``nn.GroupNorm``'s.

    Args:
        num_groups: G, the number of groups; must divide ``num_channels``.
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end; not 0,
            the batch axis. Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"`` (pure torch math), ``"native"`` (torch's
            kernels) or ``"triton"`` (fused kernels). A named backend that cannot run a call is a
            ``ValueError`` saying why, never a silent fallback. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters. Default: None (torch's default
            device).
        dtype (torch.dtype | None): floating dtype of the parameters. Default: None (torch's default dtype).
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Output: the input's shape, dtype and memory format.
    """

    scope = "group"
    functional_op = "group_norm"
    _repr_fields = ("num_groups", "num_channels", "eps", "affine", "channel_axis", "backend")
    _repr_positional = 2

    def __init__(self, num_groups: int, num_channels: Optional[int] = None, eps: float = 1e-5, affine: bool = True,
                 channel_axis: int = 1, backend: str = "auto", device=None, dtype=None, *, bias: bool =
                     True,
                 num_features: Optional[int] = None) -> None:
        num_groups = _checks.positive_int("num_groups", num_groups)
        num_channels = channel_count(type(self).__name__, num_channels, num_features)
        _checks.groups_divide(num_groups, num_channels)
        self.num_groups = num_groups
        super().__init__(num_channels, eps, affine, channel_axis, backend, device, dtype, bias=bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        axis = self._check_input(input)
        weight, bias = self._affine()
        return group_norm_validated(input, axis, self.num_groups, weight, bias, self.eps, self.backend)


class LayerNorm(GroupNorm):
    """Per-sample statistics over (C, spatial) with a per-channel affine: ``GroupNorm(1, C)``.

    This is the Group Norm paper's LN: one mean and biased variance per sample over all channels and
    spatial axes. It is not ``nn.LayerNorm``, whose affine is per element of ``normalized_shape``;
    its state dict matches ``nn.GroupNorm(1, C)``.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end; not 0,
            the batch axis. Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"`` (pure torch math), ``"native"`` (torch's
            kernels) or ``"triton"`` (fused kernels). A named backend that cannot run a call is a
            ``ValueError`` saying why, never a silent fallback. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters. Default: None (torch's default
            device).
        dtype (torch.dtype | None): floating dtype of the parameters. Default: None (torch's default dtype).
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Output: the input's shape, dtype and memory format.
    """

    scope = "layer"
    _repr_fields = ("num_channels", "eps", "affine", "channel_axis", "backend")
    _repr_positional = 1

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, affine: bool = True,
                 channel_axis: int = 1, backend: str = "auto", device=None, dtype=None, *, bias: bool =
                     True,
                 num_features: Optional[int] = None) -> None:
        super().__init__(1, num_channels, eps, affine, channel_axis, backend, device, dtype, bias=bias,
                         num_features=num_features)
