"""Norm + residual add + activation modules: ``act(norm(x) + residual)``, fused on the Triton backend.

They subclass the plain norms, so parameters, buffers and ``state_dict`` keys stay those of
``nn.BatchNorm*d`` / ``nn.GroupNorm``; the activation is configuration, not state.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..functional import _validation as _checks
from .. import functional as F
from .channel import ChannelNorm
from .group import GroupNorm


class ChannelNormAct(ChannelNorm):
    """``ChannelNorm`` followed by an optional residual add and ``activation`` ("relu", "silu", "gelu", "none")."""

    includes_activation = True
    takes_residual = True
    functional_op = "channel_norm_act"
    _repr_fields = ChannelNorm._repr_fields + ("activation",)

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, *, activation: str = "relu", bias: bool = True,
                 num_features: Optional[int] = None) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats, channel_axis, backend, device,
                         dtype, bias=bias, num_features=num_features)
        self.activation = _checks.activation(type(self).__name__, activation)

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check_input(input)
        running_mean, running_var, tracked = self._running_buffers()
        return F.channel_norm_act(input, running_mean, running_var, self.weight, self.bias,
                                  training=self._uses_batch_stats(), momentum=self.momentum, eps=self.eps,
                                  channel_axis=self.channel_axis, activation=self.activation, residual=residual,
                                  backend=self.backend, num_batches_tracked=tracked)


class GroupNormAct(GroupNorm):
    """``GroupNorm`` followed by an optional residual add and ``activation``."""

    includes_activation = True
    takes_residual = True
    functional_op = "group_norm_act"
    _repr_fields = GroupNorm._repr_fields + ("activation",)

    def __init__(self, num_groups: int, num_channels: Optional[int] = None, eps: float = 1e-5, affine: bool = True,
                 channel_axis: int = 1, backend: str = "auto", device=None, dtype=None, *,
                 activation: str = "relu", bias: bool = True, num_features: Optional[int] = None) -> None:
        super().__init__(num_groups, num_channels, eps, affine, channel_axis, backend, device, dtype, bias=bias,
                         num_features=num_features)
        self.activation = _checks.activation(type(self).__name__, activation)

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check_input(input)
        return F.group_norm_act(input, self.num_groups, self.weight, self.bias, eps=self.eps,
                                channel_axis=self.channel_axis, activation=self.activation, residual=residual,
                                backend=self.backend)
