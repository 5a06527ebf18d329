from .base import _NormBase
from .channel import ChannelNorm
from .group import GroupNorm, LayerNorm
from .instance import InstanceNorm

__all__ = ["_NormBase", "ChannelNorm", "GroupNorm", "LayerNorm", "InstanceNorm"]
