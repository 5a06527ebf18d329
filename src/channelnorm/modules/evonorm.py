"""EvoNorm-S0 (batch-independent) and EvoNorm-B0 (batch variance + instance std), Liu et al. 2020."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import _checks
from ..functional.robust import evonorm_b0_validated, evonorm_s0_validated
from .base import AffineNorm, RunningStatsNorm, channel_count


class EvoNormS0(AffineNorm):
    """EvoNorm-S0: ``y = x·sigmoid(v·x) / sqrt(var_group(x) + eps) · γ + β``, batch-independent.

    ``var_group`` is the biased variance per sample over groups of ``num_channels // num_groups``
    channels and the spatial axes (as GroupNorm); it replaces norm + activation. ``v`` is a
    per-channel parameter initialised to 1. Only the reference math implements it.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        num_groups: G, the number of groups of the variance; must divide ``num_channels``.
            Default: 32.
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        affine: learn a per-channel scale ``weight`` (γ, initialised to 1) and shift ``bias``
            (β, initialised to 0). Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end; not 0,
            the batch axis. Default: 1.
        backend: ``"auto"`` or ``"reference"`` (the only implementation); ``"native"``/``"triton"``
            are a ``ValueError``. Default: ``"auto"``.
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
    includes_activation = True
    functional_op = "evonorm_s0"
    _repr_fields = ("num_channels", "num_groups", "eps", "affine", "channel_axis", "backend")

    def __init__(self, num_channels: Optional[int] = None, num_groups: int = 32, eps: float = 1e-5,
                 affine: bool = True, channel_axis: int = 1, backend: str = "auto", device=None, dtype=None,
                     *,
                 bias: bool = True, num_features: Optional[int] = None) -> None:
        num_channels = channel_count(type(self).__name__, num_channels, num_features)
        self.num_groups = num_groups  # its value checked by AffineNorm.__setattr__; the divisor below
        _checks.groups_divide(self.num_groups, num_channels)
        super().__init__(num_channels, eps, affine, channel_axis, backend, device, dtype, bias=bias)
        self.v = nn.Parameter(torch.ones(self.num_channels, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "v", None) is not None:
            nn.init.ones_(self.v)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        axis = self._check_input(input)
        weight, bias = self._affine()
        return evonorm_s0_validated(input, axis, self.num_groups, self.v, weight, bias, self.eps, self.backend,
                                    self.channel_axis)


class EvoNormB0(RunningStatsNorm):
    """``y = x / max(sqrt(var_batch + eps), v·x + sqrt(var_instance + eps)) · γ + β``.

    ``var_batch`` is the biased variance per channel over (N, spatial) in training, the running
    variance in eval; ``running_var`` is updated as ChannelNorm's (unbiased, ``momentum``; None is a
    cumulative average). There is no running mean: the buffers are ``running_var`` and
    ``num_batches_tracked`` only. ``v`` is a per-channel parameter initialised to 1; ``var_instance``
    is the biased variance per sample and channel over the spatial axes. Only the reference math
    implements it.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to both variances before the square root, > 0. Default: 1e-5.
        momentum: weight of the new batch variance in ``running_var``, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``). Default: 0.1.
        affine: learn a per-channel scale ``weight`` (γ, initialised to 1) and shift ``bias``
            (β, initialised to 0). Default: True.
        track_running_stats: keep ``running_var`` and ``num_batches_tracked`` and use them in eval;
            with False they are None and eval uses the batch variance too. Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end; not 0,
            the batch axis. Default: 1.
        backend: ``"auto"`` or ``"reference"`` (the only implementation); ``"native"``/``"triton"``
            are a ``ValueError``. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters and buffers. Default: None (torch's
            default device).
        dtype (torch.dtype | None): floating dtype of the parameters and buffers. Default: None (torch's
            default dtype).
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Output: the input's shape, dtype and memory format.
    """

    scope = "channel"
    uses_batch_statistics = True
    includes_activation = True
    functional_op = "evonorm_b0"
    running_stats = ("running_var",)  # B0 only uses the variance; the state dict holds what it uses

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, *, bias: bool = True,
                 num_features: Optional[int] = None) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats, channel_axis, backend, device,
                         dtype, bias=bias, num_features=num_features)
        self.v = nn.Parameter(torch.ones(self.num_channels, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "v", None) is not None:
            nn.init.ones_(self.v)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        axis = self._check_input(input)
        running_var = self.running_var if self.track_running_stats else None
        tracked = self.num_batches_tracked if self.track_running_stats else None
        weight, bias = self._affine()
        return evonorm_b0_validated(input, axis, running_var, self.v, weight, bias, self._uses_batch_stats(),
                                    self.momentum, self.eps, self.backend, tracked, self.channel_axis)
