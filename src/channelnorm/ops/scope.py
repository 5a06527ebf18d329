"""The statistics scope: which elements share a mean and a variance.

Every member of the family is a ``Scope``. The channel axis is split into ``num_groups`` groups of
``C // num_groups`` channels; statistics are taken per group, and per sample too when
``per_sample`` is set (the batch axis is axis 0).

=============  ==========  ==========
norm           per_sample  num_groups
=============  ==========  ==========
ChannelNorm    False       C
InstanceNorm   True        C
GroupNorm      True        G
LayerNorm      True        1
=============  ==========  ==========
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    per_sample: bool
    num_groups: int

    def reduce_dims(self, ndim: int, channel_axis: int) -> list[int]:
        """Axes reduced over, in the grouped view ``x.unflatten(channel_axis, (G, C // G))``."""
        keep = {channel_axis}
        if self.per_sample:
            keep.add(0)
        return [d for d in range(ndim + 1) if d not in keep]


def channel_scope(num_channels: int) -> Scope:
    return Scope(per_sample=False, num_groups=num_channels)


def instance_scope(num_channels: int) -> Scope:
    return Scope(per_sample=True, num_groups=num_channels)


def group_scope(num_groups: int) -> Scope:
    return Scope(per_sample=True, num_groups=num_groups)
