"""Synchronized channel norm: statistics over every rank of a ``torch.distributed`` group.

The module ``SyncChannelNorm`` calls these; the collectives and the math are in
``ops/distributed.py``, the running-statistics rule in ``ops/moments.py``.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops import distributed as _distributed
from ..ops.moments import update_running_stats


# The one-time settings handshake is a collective with nothing to validate or dispatch: the module
# reaches it through functional like everything else, but it is ops' own function.
agree_on_settings = _distributed.agree_on_settings


def sync_channel_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    num_batches_tracked: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    momentum: Optional[float],
    eps: float,
    channel_axis: int,
    num_channels: int,
    process_group=None,
    op: str = "sync_channel_norm",
) -> torch.Tensor:
    """Channel norm in training with statistics merged over every rank of ``process_group``.

    Every rank must call it (an empty batch included). Only the reference math (in
    ``ops/distributed.py``) implements it, whatever backend the layer names for its local path.
    Running statistics, when given, are updated
    in place with the merged statistics (identical on every rank), unless no rank had any value.

    Args:
        input: this rank's input, floating point, ``num_channels`` channels on ``channel_axis``.
        running_mean: per-channel running mean ``(C,)`` or None.
        running_var: per-channel running (unbiased) variance ``(C,)`` or None.
        num_batches_tracked: 0-dim long tensor counting updates, or None.
        weight: optional per-channel scale ``(C,)``.
        bias: optional per-channel shift ``(C,)``.
        momentum: weight of the new statistic in the running statistics; None is a cumulative average.
        eps: added to the variance before the square root, > 0.
        channel_axis: the input axis that holds the channels.
        num_channels: the channel count every rank agreed on.
        process_group (ProcessGroup | None): the group; None is the default group. Default: None.
        op: the caller's name, for error messages. Default: ``"sync_channel_norm"``.

    Shape:
        - Input: ``(N, C, *)`` on this rank (N may differ between ranks, also 0).
        - Output: the input's shape, dtype and memory format.

    Returns:
        The normalized input.
    """
    y, n, mean, var = _distributed.sync_channel_norm(input, weight, bias, channel_axis, eps, process_group,
                                                     num_channels=num_channels, op=op)
    if running_mean is not None and n > 0:
        update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, n, momentum)
    return y
