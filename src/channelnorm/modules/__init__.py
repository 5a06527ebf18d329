from .base import _NormBase
from .channel import ChannelNorm
from .group import GroupNorm, LayerNorm
from .instance import InstanceNorm

__all__ = ["_NormBase", "ChannelNorm", "GroupNorm", "LayerNorm", "InstanceNorm"]

# Batch-robust variants (DESIGN §5)
from .evonorm import EvoNormB0, EvoNormS0  # noqa: E402
from .frn import FilterResponseNorm  # noqa: E402
from .ghost import GhostNorm  # noqa: E402
from .renorm import BatchRenorm  # noqa: E402
from .weight_std import WeightStandardization, WSConv2d, weight_standardization  # noqa: E402

__all__ += ["BatchRenorm", "GhostNorm", "FilterResponseNorm", "EvoNormS0", "EvoNormB0", "WSConv2d",
            "WeightStandardization", "weight_standardization"]
