"""Norm layers: parameters, buffers, scope and traits; each forward calls ``channelnorm.functional``."""
from .base import NORM_TYPES, AffineNorm, NormTraits, RunningStatsNorm, is_norm, module_traits
from .channel import ChannelNorm
from .evonorm import EvoNormB0, EvoNormS0
from .frn import FilterResponseNorm
from .frozen import FrozenChannelNorm
from .fused import ChannelNormAct, GroupNormAct
from .ghost import GhostNorm
from .group import GroupNorm, LayerNorm
from .instance import InstanceNorm
from .layer2d import LayerNorm2d
from .renorm import BatchRenorm
from .sync import SyncChannelNorm
from .weight_std import WeightStandardization, WSConv2d, weight_standardization

__all__ = [
    "AffineNorm", "RunningStatsNorm", "NormTraits", "NORM_TYPES", "is_norm", "module_traits",
    "ChannelNorm", "GroupNorm", "LayerNorm", "LayerNorm2d", "InstanceNorm", "SyncChannelNorm", "FrozenChannelNorm",
    "ChannelNormAct", "GroupNormAct",  # norm + residual add + activation
    # batch-robust variants
    "BatchRenorm", "GhostNorm", "FilterResponseNorm", "EvoNormS0", "EvoNormB0",
    "WSConv2d", "WeightStandardization", "weight_standardization",
]
