"""Norm + residual add + activation: fused where a backend has it, composed in torch otherwise.

``y = act(norm(x) + residual)``. The Triton backend fuses ``channel_norm_act``/``group_norm_act``
(one pass, the activation's backward recomputed from x); the reference and native backends inherit
``ComposedActivation``, the same semantics from torch ops, so the fused API works on every backend.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

def activate(y: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(y)
    if activation == "silu":
        return F.silu(y)
    if activation == "gelu":
        return F.gelu(y)  # exact (erf) form, as the kernel
    return y


def _compose(y: torch.Tensor, residual: Optional[torch.Tensor], activation: str) -> torch.Tensor:
    if residual is not None:
        y = y + residual
    return activate(y, activation)


class ComposedActivation:
    """``channel_norm_act``/``group_norm_act`` composed from a backend's plain norms and torch ops.

    The reference and native backends inherit these; the Triton backend fuses them instead.
    """

    def channel_norm_act(self, x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                         activation="none", residual=None, num_batches_tracked=None) -> torch.Tensor:
        y = self.channel_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                              num_batches_tracked=num_batches_tracked)
        return _compose(y, residual, activation)

    def group_norm_act(self, x, num_groups, weight, bias, eps, channel_axis, activation="none",
                       residual=None) -> torch.Tensor:
        return _compose(self.group_norm(x, num_groups, weight, bias, eps, channel_axis), residual, activation)
