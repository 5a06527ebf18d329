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
    """``act(channel_norm(x) + residual)``: a ``ChannelNorm``, an optional residual add, then ``activation``.

    Parameters, buffers, ``state_dict`` and the running-statistics rules are ChannelNorm's. The Triton
    backend fuses the three steps (forward and backward); the other backends compose them from torch
    ops with the same result.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        momentum: weight of the new batch statistic in the running statistics, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``). Default: 0.1.
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        track_running_stats: keep ``running_mean``, ``running_var`` (unbiased) and
            ``num_batches_tracked``; with False they are None and eval uses the batch's statistics
            too. Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end.
            Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"`` (pure torch math), ``"native"`` (torch's
            kernels) or ``"triton"`` (fused kernels). A named backend that cannot run a call is a
            ``ValueError`` saying why, never a silent fallback. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters and buffers. Default: None (torch's
            default device).
        dtype (torch.dtype | None): floating dtype of the parameters and buffers. Default: None (torch's
            default dtype).
        activation: keyword-only; ``"relu"``, ``"silu"``, ``"gelu"`` (exact, not tanh) or ``"none"`` (or
            None). Default: ``"relu"``.
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis``.
        - Residual (optional, in ``forward``): the input's shape, dtype and device.
        - Output: the input's shape, dtype and memory format.
    """

    includes_activation = True
    takes_residual = True
    functional_op = "channel_norm_act"
    _repr_fields = ChannelNorm._repr_fields + ("activation",)

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, *, activation: str = "relu", bias: bool =
                     True,
                 num_features: Optional[int] = None) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats, channel_axis, backend, device,
                         dtype, bias=bias, num_features=num_features)
        self.activation = _checks.activation(type(self).__name__, activation)

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``act(norm(input) + residual)``.

        Args:
            input: the input, C channels on ``channel_axis``.
            residual: optional tensor added after the norm and before the activation; the input's
                shape, dtype and device.

        Returns:
            The output, same shape, dtype and memory format as ``input``.
        """
        self._check_input(input)
        running_mean, running_var, tracked = self._running_buffers()
        return F.channel_norm_act(input, running_mean, running_var, self.weight, self.bias,
                                  training=self._uses_batch_stats(), momentum=self.momentum, eps=self.eps,
                                  channel_axis=self.channel_axis, activation=self.activation, residual=residual,
                                  backend=self.backend, num_batches_tracked=tracked)


class GroupNormAct(GroupNorm):
    """``act(group_norm(x) + residual)``: a ``GroupNorm``, an optional residual add, then ``activation``.

    Parameters and ``state_dict`` are GroupNorm's. The Triton backend fuses the three steps; the other
    backends compose them from torch ops with the same result.

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
        activation: keyword-only; ``"relu"``, ``"silu"``, ``"gelu"`` (exact, not tanh) or ``"none"`` (or
            None). Default: ``"relu"``.
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Residual (optional, in ``forward``): the input's shape, dtype and device.
        - Output: the input's shape, dtype and memory format.
    """

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
        """``act(norm(input) + residual)``.

        Args:
            input: the input, C channels on ``channel_axis``.
            residual: optional tensor added after the norm and before the activation; the input's
                shape, dtype and device.

        Returns:
            The output, same shape, dtype and memory format as ``input``.
        """
        self._check_input(input)
        return F.group_norm_act(input, self.num_groups, self.weight, self.bias, eps=self.eps,
                                channel_axis=self.channel_axis, activation=self.activation, residual=residual,
                                backend=self.backend)
