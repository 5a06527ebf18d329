"""FilterResponseNorm: per-sample, per-channel normalization by the mean square, with a TLU."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..functional.robust import filter_response_norm_validated
from .base import AffineNorm, channel_count


class FilterResponseNorm(AffineNorm):
    """Filter Response Normalization + Thresholded Linear Unit (Singh & Krishnan 2019).

    ``ν² = mean(x²)`` over the spatial axes per sample and channel, ``y = γ·x/sqrt(ν² + |eps|) + β``,
    ``z = max(y, τ)``. No mean subtraction and no batch statistics: batch-independent. It replaces
    both the norm and the activation. ``tlu=False`` drops τ (plain FRN); ``learnable_eps=True``
    makes eps a scalar parameter ``eps_param`` (initialised to ``eps``; its absolute value is used).
    On (N, C) input there are no spatial axes and ``ν² = x²``, so FRN is close to ``sign(x)``.
    Only the reference math implements it.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to ``ν²``, > 0 (with ``learnable_eps``, the initial value). Default: 1e-6.
        affine: learn a per-channel scale ``weight`` (γ, initialised to 1) and shift ``bias``
            (β, initialised to 0). Default: True.
        tlu: learn the per-channel threshold ``tau`` (τ, initialised to 0) of the TLU; False
            drops it (no activation). Default: True.
        learnable_eps: make eps a learned scalar parameter ``eps_param``. Default: False.
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

    scope = "instance"
    includes_activation = True
    functional_op = "filter_response_norm"
    _repr_fields = ("num_channels", "eps", "affine", "tlu", "learnable_eps", "channel_axis", "backend")

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-6, affine: bool = True, tlu: bool = True,
                 learnable_eps: bool = False, channel_axis: int = 1, backend: str = "auto", device=None,
                 dtype=None, *, bias: bool = True, num_features: Optional[int] = None) -> None:
        self.tlu = bool(tlu)
        self.learnable_eps = bool(learnable_eps)
        super().__init__(channel_count(type(self).__name__, num_channels, num_features), eps, affine, channel_axis,
                         backend, device, dtype, bias=bias)
        factory = {"device": device, "dtype": dtype}
        self.tau = nn.Parameter(torch.zeros(self.num_channels, **factory)) if self.tlu else None
        self.eps_param = nn.Parameter(torch.tensor(self.eps, **factory)) if self.learnable_eps else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "tau", None) is not None:
            nn.init.zeros_(self.tau)
        if getattr(self, "eps_param", None) is not None:
            with torch.no_grad():
                self.eps_param.fill_(self.eps)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        axis = self._check_input(input)
        eps = self.eps_param if self.eps_param is not None else self.eps
        weight, bias = self._affine()
        return filter_response_norm_validated(input, axis, weight, bias, self.tau, eps, self.backend, self.channel_axis)
