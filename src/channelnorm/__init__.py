"""channelnorm: channel normalization and its family for PyTorch."""
from . import functional
from .modules import ChannelNorm, ChannelNormAct, GroupNorm, GroupNormAct, InstanceNorm, LayerNorm
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
    "ChannelNormAct",
    "GroupNormAct",
    "create_norm",
    "register_norm",
    "available_norms",
    "functional",
    "SyncChannelNorm",
    "FrozenChannelNorm",
    "convert",
]

# Batch-robust variants and tools (DESIGN §5)
from .modules import (  # noqa: E402
    BatchRenorm, EvoNormB0, EvoNormS0, FilterResponseNorm, GhostNorm, WSConv2d, weight_standardization,
)
from .momentum import decay_from_momentum, momentum_from_decay  # noqa: E402
from .precise import recompute_stats  # noqa: E402

__all__ += ["BatchRenorm", "GhostNorm", "FilterResponseNorm", "EvoNormS0", "EvoNormB0", "WSConv2d",
            "weight_standardization", "recompute_stats", "momentum_from_decay", "decay_from_momentum"]
