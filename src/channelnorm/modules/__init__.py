from .base import _NormBase
from .channel import ChannelNorm
from .group import GroupNorm, LayerNorm
from .instance import InstanceNorm
from .sync import SyncChannelNorm

__all__ = ["_NormBase", "ChannelNorm", "GroupNorm", "LayerNorm", "InstanceNorm", "SyncChannelNorm"]
