"""SyncChannelNorm: ChannelNorm whose training statistics span every rank of a process group."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from ..functional import _validation as _checks
from ..ops.distributed import sync_channel_norm
from ..ops.moments import update_running_stats
from .channel import ChannelNorm


def _distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


class SyncChannelNorm(ChannelNorm):
    """ChannelNorm with statistics merged across ``process_group`` (default: the whole world).

    In training, each step costs one collective in forward (all_gather of per-channel count, mean
    and M2, merged exactly with Chan's formula) and one in backward (all_reduce of the per-channel
    gradient sums); see ``channelnorm.ops.distributed``. Every rank of the group must run the layer,
    an empty batch included. It computes ChannelNorm's local path instead when torch.distributed
    is unavailable or not initialized, when the group has one rank, and in eval mode (as
    ``nn.SyncBatchNorm``: evaluation never communicates, with or without running statistics).
    The synchronized path is pure torch math; ``backend`` applies to the local path.
    """

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, process_group=None, *, bias: bool = True,
                 num_features: Optional[int] = None) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats, channel_axis, backend,
                         device, dtype, bias=bias, num_features=num_features)
        self.process_group = process_group

    def _needs_sync(self) -> bool:
        if not self.training or not _distributed_ready():
            return False
        return dist.get_world_size(self.process_group) > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._needs_sync():
            return super().forward(input)
        self._check_input(input)
        axis = self.channel_axis % input.ndim
        y, n, mean, var = sync_channel_norm(input, self.weight, self.bias, axis, self.eps, self.process_group)
        if self.track_running_stats:
            # Every rank merged the same statistics, so the buffers stay identical across ranks.
            update_running_stats(self.running_mean, self.running_var, self.num_batches_tracked, mean, var, n,
                                 self.momentum)
        return y
