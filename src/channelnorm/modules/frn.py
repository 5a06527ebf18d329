"""FilterResponseNorm: per-sample, per-channel normalization by the mean square, with a TLU."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F
from .base import AffineNorm, channel_count


class FilterResponseNorm(AffineNorm):
    """Filter Response Normalization + Thresholded Linear Unit (Singh & Krishnan 2019).

    ``ν² = mean(x²)`` over the spatial axes per sample and channel, ``y = γ·x/sqrt(ν² + |eps|) + β``,
    ``z = max(y, τ)``. No mean subtraction and no batch statistics: batch-independent. It replaces
    both the norm and the activation. ``tlu=False`` drops τ (plain FRN); ``learnable_eps=True``
    makes eps a scalar parameter ``eps_param`` (initialised to ``eps``; its absolute value is used).
    On (N, C) input there are no spatial axes and ``ν² = x²``, so FRN is close to ``sign(x)``.
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
        self._check_input(input)
        eps = self.eps_param if self.eps_param is not None else self.eps
        return F.filter_response_norm(input, self.weight, self.bias, self.tau, eps, self.channel_axis, self.backend)
