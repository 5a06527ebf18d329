"""FrozenChannelNorm: ChannelNorm with fixed statistics and affine, all buffers (torchvision's FrozenBatchNorm2d)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..functional import _validation as _checks
from .. import functional as F
from ..ops import dispatch


class FrozenChannelNorm(nn.Module):
    """Normalize with ``running_mean``/``running_var`` and a fixed ``weight``/``bias``.

    All four are buffers: nothing is trained, nothing is updated, ``train()`` changes nothing. Its
    state dict loads from a ``ChannelNorm``/``nn.BatchNorm*d`` state dict (``num_batches_tracked``
    is dropped, as torchvision does).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, channel_axis: int = 1, backend: str = "auto",
                 device=None, dtype=None) -> None:
        super().__init__()
        self.num_channels = _checks.positive_int("num_channels", num_channels)
        self.eps = _checks.eps(eps)
        self.channel_axis = _checks.channel_axis_arg(channel_axis)
        dispatch.check_backend_name(backend)
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(self.num_channels, **factory))
        self.register_buffer("bias", torch.zeros(self.num_channels, **factory))
        self.register_buffer("running_mean", torch.zeros(self.num_channels, **factory))
        self.register_buffer("running_var", torch.ones(self.num_channels, **factory))

    @property
    def num_features(self) -> int:
        return self.num_channels

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.channel_norm(input, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                              eps=self.eps, channel_axis=self.channel_axis, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, channel_axis={self.channel_axis}, backend={self.backend!r}"

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata, strict: bool,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
