"""Weight Standardization (Qiao et al. 2019), the pairing the Group Norm follow-up recommends with GN.

Each output channel's filter is standardized over (in_channels/groups, *kernel) before the
convolution: ``ŵ = (w - mean) / sqrt(var + eps)`` with the biased variance.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import _checks
from .. import functional as F


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` that convolves with the standardized weight.

    Each output channel's filter is standardized, ``(w - mean) / sqrt(var + eps)`` over
    ``(in_channels / groups, kH, kW)`` with the biased variance, at every forward; the stored
    ``weight`` stays raw, so state dicts are plain ``nn.Conv2d`` ones.

    Args:
        *args (Any): ``nn.Conv2d``'s positional arguments (``in_channels, out_channels, kernel_size, ...``).
        eps: keyword-only; added to the filter variance, > 0. Default: 1e-5.
        **kwargs (Any): ``nn.Conv2d``'s keyword arguments (``stride``, ``padding``, ``groups``, ``bias``,
            ...).

    Shape:
        - Input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``, as ``nn.Conv2d``.
        - Output: ``(N, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``, as ``nn.Conv2d``.
    """

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = _checks.eps(eps)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, F.standardize_weight(self.weight, self.eps), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"


class WeightStandardization(nn.Module):
    """Parametrization ``w -> standardize(w)`` (per output channel, dim 0) for ``torch.nn.utils.parametrize``.

    ``weight_standardization(conv)`` registers it; its forward is
    `channelnorm.functional.standardize_weight`.

    Args:
        eps: added to the filter variance, > 0. Default: 1e-5.

    Shape:
        - Input: a convolution weight ``(C_out, C_in / groups, *kernel)``, rank 2 or more.
        - Output: the same shape and dtype, each ``[c]`` slice with mean 0 and biased variance
          ``var / (var + eps)``.
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = _checks.eps(eps)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return F.standardize_weight(weight, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_standardization(conv: nn.Module, eps: float = 1e-5) -> nn.Module:
    """Register Weight Standardization on ``conv.weight`` (a parametrization: the stored weight stays raw).

    Remove it with ``torch.nn.utils.parametrize.remove_parametrizations(conv, "weight")``
    (``leave_parametrized=True`` keeps the standardized values).

    Args:
        conv: an ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` (not a transposed convolution, whose
            dim 0 is the input channel, nor a ``WSConv2d``), changed in place. Already
            weight-standardized is a ``ValueError``.
        eps: added to the filter variance, > 0. Default: 1e-5.

    Returns:
        ``conv`` itself.
    """
    if not isinstance(conv, _CONVS) or isinstance(conv, WSConv2d):
        raise TypeError(f"weight_standardization needs an nn.Conv1d, nn.Conv2d or nn.Conv3d (not a transposed "
                        f"conv, whose dim 0 is the input channel, nor a WSConv2d), got {type(conv).__name__}")
    if parametrize.is_parametrized(conv, "weight") and any(
            isinstance(p, WeightStandardization) for p in conv.parametrizations.weight):
        raise ValueError(f"{type(conv).__name__}.weight is already weight-standardized")
    parametrize.register_parametrization(conv, "weight", WeightStandardization(eps))
    return conv


