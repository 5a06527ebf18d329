"""FrozenChannelNorm: ChannelNorm with fixed statistics and affine, all buffers (torchvision's FrozenBatchNorm2d)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from .. import functional as F
from .base import AffineNorm, channel_count


class FrozenChannelNorm(AffineNorm):
    """Normalize with ``running_mean``/``running_var`` and a fixed ``weight``/``bias``.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``. All four are buffers
    (initialised to 0, 1, 1 and 0): nothing is trained, nothing is updated, ``train()`` changes
    nothing. Its state dict loads from a ``ChannelNorm``/``nn.BatchNorm*d`` state dict
    (``num_batches_tracked`` is dropped, as torchvision does). ``cn.convert.freeze`` builds these from
    a trained model.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to ``running_var`` before the square root, > 0. Default: 1e-5.
        channel_axis: the input axis that holds the channels; negative counts from the end.
            Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"`` (pure torch math), ``"native"`` (torch's
            kernels) or ``"triton"`` (fused kernels). A named backend that cannot run a call is a
            ``ValueError`` saying why, never a silent fallback. Default: ``"auto"``.
        device (torch.device | str | None): device of the buffers. Default: None (torch's default device).
        dtype (torch.dtype | None): floating dtype of the buffers. Default: None (torch's default dtype).
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis``.
        - Output: the input's shape, dtype and memory format.
    """

    scope = "channel"
    affine_buffers = True
    _repr_fields = ("num_channels", "eps", "channel_axis", "backend")

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, *, num_features: Optional[int] = None) -> None:
        super().__init__(channel_count(type(self).__name__, num_channels, num_features), eps, True, channel_axis,
                         backend, device, dtype)
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("running_mean", torch.zeros(self.num_channels, **factory))
        self.register_buffer("running_var", torch.ones(self.num_channels, **factory))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.channel_norm(input, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                              eps=self.eps, channel_axis=self.channel_axis, backend=self.backend)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata, strict: bool,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
