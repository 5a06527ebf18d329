"""Norm layers by name: ``create_norm`` (a module) and ``get_norm_layer`` (a class or partial for
``norm_layer=`` arguments, as timm's ``create_norm``/``get_norm_layer``), with aliases and traits.

Every kind's traits come from its class (``AffineNorm.traits()``); ``norm_traits(kind)`` reads them.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

from torch import nn

from .modules import (
    AffineNorm, BatchRenorm, ChannelNorm, EvoNormB0, EvoNormS0, FilterResponseNorm, FrozenChannelNorm, GhostNorm,
    GroupNorm, InstanceNorm, LayerNorm, LayerNorm2d, NormTraits, SyncChannelNorm,
)

__all__ = ["create_norm", "get_norm_layer", "register_norm", "available_norms", "canonical_kind", "norm_traits",
           "accepted_kwargs", "aliases", "NormTraits"]

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}
_KIND_TRAITS: dict[str, NormTraits] = {}
_NO_NORM = NormTraits("none", False, False)


def register_norm(kind: str, factory: Callable[..., nn.Module], aliases: tuple[str, ...] = (),
                  traits: Optional[NormTraits] = None) -> None:
    """Make ``create_norm(kind, num_channels, **kwargs)`` call ``factory(num_channels, **kwargs)``.

    Registering an existing kind or alias replaces it.

    Args:
        kind: the canonical name.
        factory: a norm class, or a callable taking the channel count first and its options as
            keyword arguments (``create_norm`` checks them against its signature).
        aliases: other names for ``kind``. Default: none.
        traits: the kind's `NormTraits`; by default the class's own (``factory.traits()``), or
            no statistics at all (scope ``"none"``) for a factory that is not one of this library's
            norm classes. Default: None.
    """
    _FACTORIES[kind] = factory
    for alias in aliases:
        _ALIASES[alias] = kind
    if traits is None:
        traits = factory.traits() if isinstance(factory, type) and issubclass(factory, AffineNorm) else _NO_NORM
    _KIND_TRAITS[kind] = traits


def canonical_kind(kind: str) -> str:
    """The canonical name of a kind or alias (``"bn"`` -> ``"channel"``).

    Args:
        kind: a kind or alias, any case, ``-`` or ``_``.

    Returns:
        The canonical kind. Unknown kinds are a ``ValueError`` listing the choices; a ``kind`` that is
        not a string is a ``TypeError``.
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a string, got {type(kind).__name__}")
    key = kind.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _FACTORIES:
        choices = sorted(set(_FACTORIES) | set(_ALIASES))
        raise ValueError(f"unknown norm kind {kind!r}; choose one of {', '.join(choices)}")
    return key


def norm_traits(kind: str) -> NormTraits:
    """The traits of the norm named ``kind``.

    Args:
        kind: a kind or alias, as `create_norm` takes.

    Returns:
        The kind's `NormTraits`: its scope, whether it uses batch statistics in training and whether
        it includes its activation.
    """
    return _KIND_TRAITS[canonical_kind(kind)]


def available_norms() -> list[str]:
    """The norms ``create_norm`` builds.

    Returns:
        The canonical kind names, sorted (aliases not included; see `aliases`).
    """
    return sorted(_FACTORIES)


def aliases() -> dict[str, str]:
    """The registered aliases.

    Returns:
        A new dict from every alias to the canonical kind it names (``{"bn": "channel", ...}``).
    """
    return dict(_ALIASES)


def accepted_kwargs(kind: str) -> Optional[list[str]]:
    """The keyword arguments ``create_norm(kind, C, ...)`` takes besides the channel count.

    Args:
        kind: a kind or alias.

    Returns:
        Their names in signature order (``num_channels``/``num_features`` left out), or None when the
        kind's factory takes ``**kwargs`` (anything is passed on).
    """
    factory = _FACTORIES[canonical_kind(kind)]
    params = inspect.signature(factory).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("num_channels", "num_features", "self")]


def _checked_factory(kind: str, kwargs: dict, caller: str) -> Callable[..., nn.Module]:
    key = canonical_kind(kind)
    accepted = accepted_kwargs(key)
    unknown = sorted(set(kwargs) - set(accepted)) if accepted is not None else []
    if unknown:
        raise TypeError(f"{caller}({kind!r}) got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"it accepts: {', '.join(accepted) or 'none'}")
    return _FACTORIES[key]


def create_norm(kind: str, num_channels: int, **kwargs: Any) -> nn.Module:
    """Build the norm named ``kind`` for ``num_channels`` channels.

    Args:
        kind: a name from ``available_norms()`` or an alias (``"bn"``, ``"gn"``, ...).
        num_channels: the channel count.
        **kwargs: the kind's constructor arguments (``num_groups=`` for ``"group"``, ...).

    Returns:
        The module. Unknown kinds are a ``ValueError`` listing the choices; keyword arguments the
        kind does not take are a ``TypeError`` naming them and what it does take.
    """
    return _checked_factory(kind, kwargs, "create_norm")(num_channels, **kwargs)


def get_norm_layer(kind: str, **kwargs: Any) -> Callable[..., nn.Module]:
    """A class or ``functools.partial`` to pass as ``norm_layer=`` (torchvision, timm).

    ``get_norm_layer(kind, **kwargs)(C)`` builds what ``create_norm(kind, C, **kwargs)`` builds, so
    ``torchvision.models.resnet18(norm_layer=cn.get_norm_layer("group", num_groups=32))`` works. The
    result takes the channel count as the classes do: positionally, or as ``num_channels=`` or
    ``num_features=``. ``"none"`` gives a factory of ``nn.Identity`` that accepts and ignores the norm
    keywords torchvision and timm pass (``norm_layer(C, eps=1e-6)``).

    Args:
        kind: a name from ``available_norms()`` or an alias.
        **kwargs: constructor arguments bound into the result (checked now, as ``create_norm`` does).

    Returns:
        The class itself when it takes the channel count first and no arguments are bound, else a
        ``functools.partial``.
    """
    factory = _checked_factory(kind, kwargs, "get_norm_layer")
    if not kwargs and isinstance(factory, type):
        return factory
    return functools.partial(factory, **kwargs)


def _identity(num_channels: Optional[int] = None, eps: Any = None, momentum: Any = None, affine: Any = None,
              track_running_stats: Any = None, channel_axis: Any = None, backend: Any = None, device: Any = None,
              dtype: Any = None, *, bias: Any = None, num_features: Optional[int] = None) -> nn.Module:
    """No normalization: an ``nn.Identity``. It takes, and ignores, the channel count and the norm keywords
    that torchvision and timm pass to a ``norm_layer`` (``eps=``, ``momentum=``, ``affine=``, ...), so
    ``"none"`` can stand in for any norm; other keywords are still a ``TypeError``."""
    return nn.Identity()


def _group(num_channels: Optional[int] = None, num_groups: int = 32, eps: float = 1e-5, affine: bool = True,
           channel_axis: int = 1, backend: str = "auto", device=None, dtype=None, *, bias: bool = True,
           num_features: Optional[int] = None) -> nn.Module:
    # The channel count positionally, or as num_channels= / num_features= (as GroupNorm itself takes it).
    return GroupNorm(num_groups, num_channels, eps, affine, channel_axis, backend, device, dtype, bias=bias,
                     num_features=num_features)


register_norm("channel", ChannelNorm, aliases=("batch", "batchnorm", "bn", "channelnorm", "cn"))
register_norm("group", _group, aliases=("groupnorm", "gn"), traits=GroupNorm.traits())
register_norm("layer", LayerNorm, aliases=("layernorm", "ln"))
register_norm("layer2d", LayerNorm2d, aliases=("layernorm2d", "layer_2d", "layer_norm_2d", "ln2d"))
register_norm("instance", InstanceNorm, aliases=("instancenorm", "in"))
register_norm("none", _identity, aliases=("identity",))
register_norm("sync_channel", SyncChannelNorm, aliases=("syncbn", "sync_batch", "syncchannelnorm"))
register_norm("frozen", FrozenChannelNorm, aliases=("frozen_channel", "frozenbn", "frozen_bn"))
register_norm("batch_renorm", BatchRenorm, aliases=("batchrenorm", "brn", "renorm"))
register_norm("ghost", GhostNorm, aliases=("ghost_norm", "ghostnorm", "gbn", "virtual_batch_norm", "vbn"))
register_norm("frn", FilterResponseNorm, aliases=("filter_response_norm", "filterresponsenorm"))
register_norm("evonorm_s0", EvoNormS0, aliases=("evonorms0",))
register_norm("evonorm_b0", EvoNormB0, aliases=("evonormb0",))
