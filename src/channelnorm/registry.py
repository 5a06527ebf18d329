"""``create_norm``: a norm layer from its name, with aliases (in the manner of timm's create_norm)."""
from __future__ import annotations

import inspect
from typing import Callable, NamedTuple, Optional

from torch import nn

from .modules import ChannelNorm, GroupNorm, InstanceNorm, LayerNorm
from .modules.sync import SyncChannelNorm
from .modules.frozen import FrozenChannelNorm

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}


def register_norm(kind: str, factory: Callable[..., nn.Module], aliases: tuple[str, ...] = ()) -> None:
    """Make ``create_norm(kind, num_channels, **kwargs)`` call ``factory(num_channels, **kwargs)``."""
    _FACTORIES[kind] = factory
    for alias in aliases:
        _ALIASES[alias] = kind


class NormTraits(NamedTuple):
    """Facts about a norm kind that model tools and the experiment read.

    Attributes:
        scope: the axes its statistics cover: ``"channel"`` (per channel over batch and spatial
            axes), ``"group"``, ``"layer"``, ``"instance"`` (per sample and channel) or ``"none"``.
        uses_batch_statistics: in training, its output for one sample depends on the other samples.
        includes_activation: it replaces norm + activation (no activation should follow it).
    """

    scope: str
    uses_batch_statistics: bool
    includes_activation: bool


def canonical_kind(kind: str) -> str:
    """The canonical name of ``kind`` (``"bn"`` -> ``"channel"``); unknown kinds are a ``ValueError``."""
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a string, got {type(kind).__name__}")
    key = kind.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _FACTORIES:
        choices = sorted(set(_FACTORIES) | set(_ALIASES))
        raise ValueError(f"unknown norm kind {kind!r}; choose one of {', '.join(choices)}")
    return key


def norm_traits(kind: str) -> NormTraits:
    """The :class:`NormTraits` of the norm named ``kind`` (aliases accepted)."""
    return _TRAITS[canonical_kind(kind)]


def available_norms() -> list[str]:
    """Canonical kind names accepted by ``create_norm`` (aliases not included)."""
    return sorted(_FACTORIES)


def _identity(num_channels: int) -> nn.Module:
    return nn.Identity()


def _group(num_channels: int, num_groups: int = 32, eps: float = 1e-5, affine: bool = True, channel_axis: int = 1,
           backend: str = "auto", device=None, dtype=None) -> nn.Module:
    return GroupNorm(num_groups, num_channels, eps, affine, channel_axis, backend, device, dtype)


def _accepted(factory: Callable[..., nn.Module]) -> Optional[list[str]]:
    """Keyword arguments ``factory`` takes besides num_channels; None when it forwards ``**kwargs``."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "num_channels"]


def create_norm(kind: str, num_channels: int, **kwargs) -> nn.Module:
    """Build the norm named ``kind`` for ``num_channels`` channels.

    Unknown kinds are a ``ValueError`` listing the choices; keyword arguments the kind does not
    take are a ``TypeError`` naming them and what it does take.
    """
    key = canonical_kind(kind)
    factory = _FACTORIES[key]
    accepted = _accepted(factory)
    unknown = sorted(set(kwargs) - set(accepted)) if accepted is not None else []
    if unknown:
        raise TypeError(f"create_norm({kind!r}) got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"it accepts: {', '.join(accepted) or 'none'}")
    return factory(num_channels, **kwargs)


register_norm("channel", ChannelNorm, aliases=("batch", "batchnorm", "bn", "channelnorm", "cn"))
register_norm("group", _group, aliases=("groupnorm", "gn"))
register_norm("layer", LayerNorm, aliases=("layernorm", "ln"))
register_norm("instance", InstanceNorm, aliases=("instancenorm", "in"))
register_norm("none", _identity, aliases=("identity",))
register_norm("sync_channel", SyncChannelNorm, aliases=("syncbn", "sync_batch", "syncchannelnorm"))
register_norm("frozen", FrozenChannelNorm, aliases=("frozen_channel", "frozenbn", "frozen_bn"))

# Batch-robust variants (DESIGN §5)
from .modules import BatchRenorm, EvoNormB0, EvoNormS0, FilterResponseNorm, GhostNorm  # noqa: E402

register_norm("batch_renorm", BatchRenorm, aliases=("batchrenorm", "brn", "renorm"))
register_norm("ghost", GhostNorm, aliases=("ghost_norm", "ghostnorm", "gbn", "virtual_batch_norm", "vbn"))
register_norm("frn", FilterResponseNorm, aliases=("filter_response_norm", "filterresponsenorm"))
register_norm("evonorm_s0", EvoNormS0, aliases=("evonorms0",))
register_norm("evonorm_b0", EvoNormB0, aliases=("evonormb0",))

# Interim table; the facts move onto the classes as class-level traits.
_TRAITS = {
    "channel": NormTraits("channel", True, False),
    "sync_channel": NormTraits("channel", True, False),
    "batch_renorm": NormTraits("channel", True, False),
    "ghost": NormTraits("channel", True, False),
    "frozen": NormTraits("channel", False, False),
    "group": NormTraits("group", False, False),
    "layer": NormTraits("layer", False, False),
    "instance": NormTraits("instance", False, False),
    "none": NormTraits("none", False, False),
    "frn": NormTraits("instance", False, True),
    "evonorm_s0": NormTraits("group", False, True),
    "evonorm_b0": NormTraits("channel", True, True),
}
