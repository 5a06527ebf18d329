"""channelnorm: channel normalization and its family for PyTorch."""
from . import functional
from .modules import ChannelNorm, GroupNorm, InstanceNorm, LayerNorm
from .registry import available_norms, create_norm, register_norm
from .modules.sync import SyncChannelNorm
from .modules.frozen import FrozenChannelNorm
from . import convert

__version__ = "0.1.0"

__all__ = [
    "ChannelNorm",
    "GroupNorm",
    "LayerNorm",
    "InstanceNorm",
    "create_norm",
    "register_norm",
    "available_norms",
    "functional",
    "SyncChannelNorm",
    "FrozenChannelNorm",
    "convert",
]
