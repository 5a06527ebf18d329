"""Weight Standardization (Qiao et al. 2019), the pairing the Group Norm follow-up recommends with GN.

Each output channel's filter is standardized over (in_channels/groups, *kernel) before the
convolution: ``ŵ = (w - mean) / sqrt(var + eps)`` with the biased variance.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..functional import _validation as _checks
from .. import functional as F


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` that convolves with the standardized weight (the stored ``weight`` stays raw,
    so state dicts are plain ``nn.Conv2d`` ones). Same arguments as ``nn.Conv2d`` plus ``eps``."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = _checks.eps(eps)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, F.standardize_weight(self.weight, self.eps), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"


class WeightStandardization(nn.Module):
    """Parametrization ``w -> standardize(w)`` (per output channel, dim 0) for ``torch.nn.utils.parametrize``."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = _checks.eps(eps)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return F.standardize_weight(weight, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_standardization(conv: nn.Module, eps: float = 1e-5) -> nn.Module:
    """Register Weight Standardization on ``conv.weight`` (an ``nn.Conv1d/2d/3d``); returns ``conv``.

    Remove it with ``torch.nn.utils.parametrize.remove_parametrizations(conv, "weight")``
    (``leave_parametrized=True`` keeps the standardized values).
    """
    if not isinstance(conv, _CONVS) or isinstance(conv, WSConv2d):
        raise TypeError(f"weight_standardization needs an nn.Conv1d, nn.Conv2d or nn.Conv3d (not a transposed "
                        f"conv, whose dim 0 is the input channel, nor a WSConv2d), got {type(conv).__name__}")
    if parametrize.is_parametrized(conv, "weight") and any(
            isinstance(p, WeightStandardization) for p in conv.parametrizations.weight):
        raise ValueError(f"{type(conv).__name__}.weight is already weight-standardized")
    parametrize.register_parametrization(conv, "weight", WeightStandardization(eps))
    return conv


