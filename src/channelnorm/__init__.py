"""channelnorm: channel normalization and its family for PyTorch."""
import sys

from . import functional
from .modules import (
    NORM_TYPES, BatchRenorm, ChannelNorm, ChannelNormAct, EvoNormB0, EvoNormS0, FilterResponseNorm, FrozenChannelNorm,
    GhostNorm, GroupNorm, GroupNormAct, InstanceNorm, LayerNorm, LayerNorm2d, NormTraits, SyncChannelNorm, WSConv2d,
    is_norm, module_traits, weight_standardization,
)
from .registry import available_norms, create_norm, get_norm_layer, norm_traits, register_norm
from .tools import convert
from .tools.diagnose import DiagnosisReport, LayerDiagnosis, diagnose
from .tools.momentum import decay_from_momentum, momentum_from_decay
from .tools.precise import recompute_stats

__version__ = "0.1.0"

# The model tools live in tools/, but users import them as `channelnorm.convert` (also
# `from channelnorm.convert import fold`), so that module path keeps working.
sys.modules[__name__ + ".convert"] = convert

__all__ = [
    "ChannelNorm", "GroupNorm", "LayerNorm", "LayerNorm2d", "InstanceNorm", "ChannelNormAct", "GroupNormAct",
    "SyncChannelNorm", "FrozenChannelNorm", "BatchRenorm", "GhostNorm", "FilterResponseNorm", "EvoNormS0", "EvoNormB0", "WSConv2d",
    "weight_standardization",
    "create_norm", "get_norm_layer", "register_norm", "available_norms", "norm_traits", "NormTraits",
    "is_norm", "module_traits", "NORM_TYPES",
    "functional", "convert", "recompute_stats", "momentum_from_decay", "decay_from_momentum",
    "diagnose", "DiagnosisReport", "LayerDiagnosis",
]
