"""SyncChannelNorm: ChannelNorm whose training statistics span every rank of a process group."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from ..functional.sync import agree_on_settings, sync_channel_norm
from .channel import ChannelNorm


def _distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


class SyncChannelNorm(ChannelNorm):
    """ChannelNorm with statistics merged across ``process_group`` (default: the whole world).

    In training, each step costs one collective in forward (all_gather of per-channel count, mean
    and M2, merged exactly with Chan's formula) and one in backward (all_reduce of the per-channel
    gradient sums); see ``channelnorm.ops.distributed``. The layer's first synchronized step (and the
    first after its group changes) adds one all_gather of four numbers: every rank's
    ``num_channels``, ``channel_axis``, ``eps`` and ``momentum``, which must agree. Every rank of
    the group must run the layer, an empty batch included. Ranks that disagree on those settings
    or on the input's channel count or dtype, or a rank with invalid input, make every rank raise
    a ``ValueError``/``TypeError`` at the same point (none is left waiting in a collective). When
    every rank's batch is empty the output is empty and the running statistics stay untouched; one
    value per channel over the whole group is a ``ValueError`` on every rank.

    It computes ChannelNorm's local path instead when torch.distributed is unavailable or not
    initialized, when the group has one rank, and in eval mode (as ``nn.SyncBatchNorm``: evaluation
    never communicates, with or without running statistics). The synchronized path is pure torch
    math; ``backend`` applies to the local path.

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
        backend: the backend of the local path: ``"auto"``, ``"reference"``, ``"native"`` or
            ``"triton"``. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters and buffers. Default: None (torch's
            default device).
        dtype (torch.dtype | None): floating dtype of the parameters and buffers. Default: None (torch's
            default dtype).
        process_group (ProcessGroup | None): the ``torch.distributed`` group whose ranks share the
            statistics; None is the default (whole-world) group. Default: None.
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis``.
        - Output: the input's shape, dtype and memory format.
    """

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, process_group=None, *, bias: bool = True,
                 num_features: Optional[int] = None) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats, channel_axis, backend,
                         device, dtype, bias=bias, num_features=num_features)
        self.process_group = process_group
        # (group, world size) whose ranks agreed on the layer's settings; a plain attribute, not state.
        self._settings_agreed_with: Optional[tuple] = None

    def _needs_sync(self) -> bool:
        if not self.training or not _distributed_ready():
            return False
        return dist.get_world_size(self.process_group) > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._needs_sync():
            return super().forward(input)
        op = type(self).__name__
        # Decided identically on every rank (same group, same world size, same call history), so
        # either every rank runs the handshake here or none does.
        key = (self.process_group, dist.get_world_size(self.process_group))
        if getattr(self, "_settings_agreed_with", None) != key:
            device = input.device if isinstance(input, torch.Tensor) else "cpu"
            settings = {"num_channels": self.num_channels, "channel_axis": self.channel_axis, "eps": self.eps,
                        "momentum": self.momentum}
            agree_on_settings(op, settings, device, self.process_group)
            self._settings_agreed_with = key
        # Input validation happens inside, after the gather, so that every rank raises together.
        running_mean, running_var, tracked = self._running_buffers()
        return sync_channel_norm(input, running_mean, running_var, tracked, self.weight, self.bias, self.momentum,
                                 self.eps, self.channel_axis, self.num_channels, self.process_group, op=op)
