from .base import _NormBase
from .channel import ChannelNorm
from .group import GroupNorm, LayerNorm
from .instance import InstanceNorm
from .sync import SyncChannelNorm
from .frozen import FrozenChannelNorm

__all__ = ["_NormBase", "ChannelNorm", "GroupNorm", "LayerNorm", "InstanceNorm", "SyncChannelNorm", "FrozenChannelNorm"]
