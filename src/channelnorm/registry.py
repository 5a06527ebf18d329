"""Norm layers by name: ``create_norm`` (a module) and ``get_norm_layer`` (a class or partial for
``norm_layer=`` arguments, as timm's ``create_norm``/``get_norm_layer``), with aliases and traits.

Every kind's traits come from its class (``AffineNorm.traits()``); ``norm_traits(kind)`` reads them.
Names are case-insensitive, and ``-`` or ``_`` may be left out or written (as timm strips ``_``).
timm's norm names (``timm.layers.create_norm``) are aliases where this library has the same
computation; the timm names it has no counterpart for are refused with the reason (``TIMM_NAMES``).
"""
from __future__ import annotations

import functools
import inspect
import types
from typing import Any, Callable, Optional, Union

from torch import nn

from .modules import (
    AffineNorm, BatchRenorm, ChannelNorm, EvoNormB0, EvoNormS0, FilterResponseNorm, FrozenChannelNorm, GhostNorm,
    GroupNorm, InstanceNorm, LayerNorm, LayerNorm2d, NormTraits, SyncChannelNorm,
)

__all__ = ["create_norm", "get_norm_layer", "register_norm", "available_norms", "canonical_kind", "norm_traits",
           "accepted_kwargs", "aliases", "NormTraits", "TIMM_NAMES"]

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
        # timm strips underscores ("batch_norm_2d" is "batchnorm2d"): match the names written without them.
        squeezed = {name.replace("_", ""): _ALIASES.get(name, name) for name in (*_FACTORIES, *_ALIASES)}
        key = squeezed.get(key.replace("_", ""), key)
    if key not in _FACTORIES:
        missing = _TIMM_WITHOUT_COUNTERPART.get(kind.lower().replace("-", "").replace("_", ""))
        if missing is not None:
            raise ValueError(f"timm's norm {kind!r} has no counterpart in channelnorm: {missing}")
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


def _check_keywords(factory: Callable[..., Any], kwargs: dict, caller: str, shown: str) -> None:
    """Refuse keywords ``factory`` cannot take, now rather than when the model builds its first norm."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"{caller}({shown}) got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"it accepts: {', '.join(accepted) or 'none'}")


NormLayer = Union[str, type, Callable[..., nn.Module], functools.partial, None]


def get_norm_layer(kind: NormLayer, **kwargs: Any) -> Optional[Callable[..., nn.Module]]:
    """A class or ``functools.partial`` to pass as ``norm_layer=`` (torchvision, timm).

    ``kind`` is what timm's ``get_norm_layer`` takes, so model code can resolve any ``norm_layer``
    argument through it:

    * a name: this library's kinds and aliases, and timm's names where the computation is the same
      (``"batchnorm"``, ``"batchnorm1d"``, ``"batchnorm2d"`` -> `ChannelNorm`; ``"groupnorm"`` ->
      `GroupNorm` with the channel count first and 32 groups by default; ``"groupnorm1"`` -> `LayerNorm`;
      ``"layernorm2d"`` -> `LayerNorm2d`; ``"frozenbatchnorm2d"`` -> `FrozenChannelNorm`; see
      ``TIMM_NAMES``). ``get_norm_layer(name, **kwargs)(C)`` builds what
      ``create_norm(name, C, **kwargs)`` builds. One timm name means something else here:
      ``"layernorm"`` is this library's `LayerNorm` (``GroupNorm(1, C)``, the Group Norm paper's);
      timm's ``"layernorm"`` is ``nn.LayerNorm`` over the last axis, which is
      ``get_norm_layer("layernorm2d", channel_axis=-1)`` here. timm's names without a counterpart
      (``"rmsnorm"``, ``"simplenorm"``, ...) are a ``ValueError`` that says so.
    * a class (this library's norms, torch's, timm's, your own) or a function that builds a norm:
      returned as it is, or with ``kwargs`` bound, as timm does. A torch class stays torch's
      (``get_norm_layer(nn.BatchNorm2d)`` is ``nn.BatchNorm2d``); name it to get this library's.
    * a ``functools.partial``: its function is resolved as above and its arguments are kept, with
      ``kwargs`` overriding its keywords (timm's unbind and rebind).
    * None: None (no norm), as timm.

    Keyword arguments the result cannot take are a ``TypeError`` now, not when the model is built.
    The result takes the channel count as the classes do: positionally, or as ``num_channels=`` or
    ``num_features=``. ``"none"`` gives a factory of ``nn.Identity`` that accepts and ignores the norm
    keywords torchvision and timm pass (``norm_layer(C, eps=1e-6)``).

    Args:
        kind (str | type | Callable | functools.partial | None): a name from ``available_norms()``,
            an alias or a timm name; a norm class or function; a partial of one; or None.
        **kwargs: constructor arguments bound into the result (checked now, as ``create_norm`` does).

    Returns:
        The class (or function) itself when nothing is bound, else a ``functools.partial``; None for
        ``kind=None``. Anything else (a module instance, a number) is a ``TypeError``.
    """
    if kind is None:
        if kwargs:
            raise TypeError(f"get_norm_layer(None) is no norm, so it takes no arguments; got {', '.join(kwargs)}")
        return None
    if isinstance(kind, str):
        factory = _checked_factory(kind, kwargs, "get_norm_layer")
        if not kwargs and isinstance(factory, type):
            return factory
        return functools.partial(factory, **kwargs)
    if isinstance(kind, functools.partial):
        # timm's unbind/rebind: the partial's keywords, overridden by the new ones; its positional
        # arguments (torchvision's ``partial(nn.GroupNorm, 32)``) stay in front of the channel count.
        merged = {**kind.keywords, **kwargs}
        _check_keywords(kind.func, merged, "get_norm_layer", repr(kind))
        return functools.partial(kind.func, *kind.args, **merged)
    if (isinstance(kind, type) and issubclass(kind, nn.Module)) or isinstance(kind, types.FunctionType):
        if not kwargs:
            return kind
        _check_keywords(kind, kwargs, "get_norm_layer", getattr(kind, "__name__", repr(kind)))
        return functools.partial(kind, **kwargs)
    shown = (f"a {type(kind).__name__} instance (pass its class instead)" if isinstance(kind, nn.Module)
             else f"{type(kind).__name__} {kind!r}")
    raise TypeError(f"get_norm_layer: kind must be a norm name, an nn.Module class, a function, a functools.partial "
                    f"or None, got {shown}")


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


register_norm("channel", ChannelNorm, aliases=("batch", "batchnorm", "bn", "channelnorm", "cn", "batchnorm1d",
                                            "batchnorm2d", "batchnorm3d"))
register_norm("group", _group, aliases=("groupnorm", "gn"), traits=GroupNorm.traits())
register_norm("layer", LayerNorm, aliases=("layernorm", "ln", "groupnorm1"))
register_norm("layer2d", LayerNorm2d, aliases=("layernorm2d", "layer_2d", "layer_norm_2d", "ln2d", "layernorm2dfp32"))
register_norm("instance", InstanceNorm, aliases=("instancenorm", "in", "instancenorm1d", "instancenorm2d",
                                                 "instancenorm3d"))
register_norm("none", _identity, aliases=("identity",))
register_norm("sync_channel", SyncChannelNorm, aliases=("syncbn", "sync_batch", "syncchannelnorm", "syncbatchnorm"))
register_norm("frozen", FrozenChannelNorm, aliases=("frozen_channel", "frozenbn", "frozen_bn", "frozenbatchnorm2d"))
register_norm("batch_renorm", BatchRenorm, aliases=("batchrenorm", "brn", "renorm"))
register_norm("ghost", GhostNorm, aliases=("ghost_norm", "ghostnorm", "gbn", "virtual_batch_norm", "vbn"))
register_norm("frn", FilterResponseNorm, aliases=("filter_response_norm", "filterresponsenorm"))
register_norm("evonorm_s0", EvoNormS0, aliases=("evonorms0",))
register_norm("evonorm_b0", EvoNormB0, aliases=("evonormb0",))

TIMM_NAMES: dict[str, Optional[str]] = {
    "batchnorm": "channel", "batchnorm1d": "channel", "batchnorm2d": "channel",
    "groupnorm": "group", "groupnorm1": "layer",
    "layernorm": None, "layernormfp32": None,
    "layernorm2d": "layer2d", "layernorm2dfp32": "layer2d",
    "rmsnorm": None, "rmsnorm2d": None, "rmsnormfp32": None, "rmsnorm2dfp32": None,
    "simplenorm": None, "simplenorm2d": None, "simplenormfp32": None, "simplenorm2dfp32": None,
    "frozenbatchnorm2d": "frozen",
}
"""Every name of timm's norm factory (``timm.layers.create_norm._NORM_MAP``) and the kind it is here,
or None where this library has no norm that computes the same. ``"layernorm"`` is None because the
name means `LayerNorm` here (``GroupNorm(1, C)``) and ``nn.LayerNorm`` over the last axis in timm; timm's
is ``LayerNorm2d(C, channel_axis=-1)``. The ``fp32`` variants compute in float32, as this library's
norms always do for their statistics."""

_TIMM_WITHOUT_COUNTERPART = {
    "layernormfp32": "it is nn.LayerNorm over the last axis in float32; use 'layernorm2d' with channel_axis=-1",
    **{name: "RMS norm (no mean subtraction) is not one of its norms"
       for name in ("rmsnorm", "rmsnorm2d", "rmsnormfp32", "rmsnorm2dfp32")},
    **{name: "timm's SimpleNorm (RMS scaling without a shift) is not one of its norms"
       for name in ("simplenorm", "simplenorm2d", "simplenormfp32", "simplenorm2dfp32")},
}
