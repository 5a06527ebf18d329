"""Model conversion: swap norm layers, synchronize them, freeze them, fold them into convolutions.

Every function walks the module tree, replaces modules in their parent (the tree, names and
``state_dict`` prefixes are kept) and returns the model; a model that is itself a norm comes back
replaced, so always use the return value. The model is changed in place, as
``nn.SyncBatchNorm.convert_sync_batchnorm`` does. A module registered under several names (two
attributes, two parents, a ``ModuleList`` and an attribute) is converted once and every name then
refers to the one replacement, so what the model shared stays shared.

Norm layers recognised: ``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``, ``nn.InstanceNorm1d/2d/3d``,
``nn.GroupNorm``, and channelnorm's ChannelNorm, SyncChannelNorm, GroupNorm, LayerNorm, InstanceNorm,
FrozenChannelNorm and the other exported norms. ``nn.LayerNorm`` is not a channel norm (its affine is
per element of ``normalized_shape``) and is left alone, and so are the fused blocks ChannelNormAct and
GroupNormAct: their activation and residual input have no counterpart in a plain norm, so swapping
or freezing them would silently drop part of the computation.

A conversion assumes the layer computes what its class computes. A layer that may not is left as it
was and named, with the reason, in one ``UserWarning`` per call: a subclass that defines its own
``forward`` (or overrides a method that forward uses, such as ``_check_input_dim``), a layer whose
``forward`` was replaced on the instance, one with hooks (a replacement would drop them) or a
parametrized tensor, and, for `replace_norms` and `freeze`, a norm class the tools do not know.
Subclasses that change only ``__init__`` (other defaults) or ``extra_repr`` convert as their base
class does.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import nn

from . import fold as _fold
from ._model_checks import refuse_uninitialized_norms
from .keras import from_keras_batchnorm, to_keras_batchnorm
from .known import behaves_as, known_norm_classes
from .stateless import drop_running_stats
from ..modules import ChannelNorm, FrozenChannelNorm, SyncChannelNorm, module_traits
from ..registry import accepted_kwargs, canonical_kind, create_norm

__all__ = ["replace_norms", "to_sync", "from_sync", "freeze", "unfreeze", "fold", "FoldReport", "drop_running_stats",
           "from_keras_batchnorm", "to_keras_batchnorm"]

_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


# ---------------------------------------------------------------- tree walking

Converter = Callable[[str, nn.Module], Optional[nn.Module]]


def _replace_everywhere(model: nn.Module, convert: Converter) -> nn.Module:
    """Replace every module for which ``convert(name, module)`` returns a module, under every name.

    Each distinct module is converted once (depth first, replaced modules not entered), under its
    first qualified name; then every registration of it (two attributes of one parent, two parents,
    a ModuleList and an attribute) is pointed at its one replacement, so the tree keeps sharing what
    it shared. Nothing is changed before every conversion has been built (a failing one leaves the
    model as it was).
    """
    replacement: dict[int, nn.Module] = {}
    parents: list[nn.Module] = []
    visited: set[int] = set()

    def visit(module: nn.Module, name: str) -> None:
        if id(module) in visited:
            return
        visited.add(id(module))
        new = convert(name, module)
        if new is not None:
            replacement[id(module)] = new
            return
        parents.append(module)
        for child_name, child in module._modules.items():
            if child is not None:
                visit(child, f"{name}.{child_name}" if name else child_name)

    visit(model, "")
    for parent in parents:
        for attr, child in list(parent._modules.items()):
            if child is not None and id(child) in replacement:
                setattr(parent, attr, replacement[id(child)])
    return replacement.get(id(model), model)


def _warn_skipped(tool: str, skipped: list[tuple[str, str]]) -> None:
    """One warning naming every module a tool left because it may compute something else than its class."""
    if skipped:
        listing = "; ".join(f"{name or '(the model itself)'}: {reason}" for name, reason in skipped)
        warnings.warn(f"{tool} left {len(skipped)} module(s) unchanged: converting them could change what the "
                      f"model computes ({listing})", UserWarning, stacklevel=3)


def _known(m: nn.Module) -> tuple[Optional[type], Optional[str]]:
    return behaves_as(m, known_norm_classes())


def _is_norm(m: nn.Module) -> bool:
    """A norm layer that converts: fused blocks (norm + residual + activation) never do."""
    return module_traits(m) is not None and not getattr(type(m), "takes_residual", False)


def _family(m: nn.Module) -> Optional[tuple[str, bool]]:
    """Statistics scope and whether the activation is built in: running statistics carry over only
    between norms where both agree (they then mean the same thing)."""
    traits = module_traits(m)
    if traits is None or not _is_norm(m):
        return None
    return traits.scope, traits.includes_activation


def _tensor_like(m: nn.Module) -> Optional[torch.Tensor]:
    for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
        if t.is_floating_point():
            return t
    return None


def _num_channels(m: nn.Module) -> int:
    for name in ("num_channels", "num_features"):
        if hasattr(m, name):
            return int(getattr(m, name))
    raise TypeError(f"cannot tell the channel count of {type(m).__name__}")


def _tracks_running_stats(m: nn.Module) -> bool:
    # FrozenChannelNorm has running statistics and no switch for them.
    return getattr(m, "running_mean", None) is not None and bool(getattr(m, "track_running_stats", True))


def _config(m: nn.Module) -> dict:
    """Constructor arguments of ``m`` in create_norm's vocabulary."""
    cfg = {"eps": float(m.eps), "affine": getattr(m, "affine", True),
           "channel_axis": getattr(m, "channel_axis", 1)}
    if _tracks_running_stats(m) and hasattr(m, "momentum"):
        cfg["momentum"] = m.momentum  # only meaningful where running statistics exist
    if hasattr(m, "track_running_stats"):
        cfg["track_running_stats"] = bool(m.track_running_stats)
    if cfg["affine"] and getattr(m, "weight", None) is not None and getattr(m, "bias", None) is None:
        cfg["bias"] = False  # torch's bias=False: a scale without a shift
    if getattr(m, "num_groups", None) is not None:
        cfg["num_groups"] = int(m.num_groups)
    if getattr(m, "process_group", None) is not None:
        cfg["process_group"] = m.process_group
    like = _tensor_like(m)
    if like is not None:
        cfg["device"], cfg["dtype"] = like.device, like.dtype
    return cfg


def _copy_state(old: nn.Module, new: nn.Module, stats: bool) -> None:
    """Copy weight/bias (and running statistics when ``stats``) where both sides have them, same shape."""
    for name in ("weight", "bias") + (_STAT_BUFFERS if stats else ()):
        src, dst = getattr(old, name, None), getattr(new, name, None)
        if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.shape == dst.shape:
            _copy_value(src, dst)


def _carry_state(old: nn.Module, new: nn.Module, stats: bool) -> None:
    """Give ``new`` ``old``'s very weight/bias (and running statistics when ``stats``) tensors where they fit
    (same shape, dtype, device, and a Parameter where ``new`` has a Parameter): weights tied to other
    modules stay tied and an optimizer built before the conversion keeps training them. Where they do
    not fit (another dtype asked for, a frozen norm's buffers), the values are copied."""
    for name in ("weight", "bias") + (_STAT_BUFFERS if stats else ()):
        src, dst = getattr(old, name, None), getattr(new, name, None)
        if not (isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.shape == dst.shape):
            continue
        fits = src.dtype == dst.dtype and src.device == dst.device
        if fits and name in new._parameters and isinstance(src, nn.Parameter):
            setattr(new, name, src)
        elif fits and name in new._buffers and not isinstance(src, nn.Parameter):
            setattr(new, name, src)
        else:
            _copy_value(src, dst)


def _copy_value(src: torch.Tensor, dst: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src)
    if isinstance(src, nn.Parameter) and isinstance(dst, nn.Parameter):
        dst.requires_grad_(src.requires_grad)


# ---------------------------------------------------------------- replace_norms

def _build(kind: str, old: nn.Module, kwargs: dict) -> nn.Module:
    cfg = _config(old)
    accepted = accepted_kwargs(kind)
    if accepted is None:  # a factory taking **kwargs: pass only what the caller gave
        carried = {}
    else:
        carried = {k: v for k, v in cfg.items() if k in accepted and k != "track_running_stats"}
    new = create_norm(kind, _num_channels(old), **{**carried, **kwargs})
    # Running-statistics tracking carries over only within a family (an InstanceNorm's default
    # track_running_stats=False must not turn a converted ChannelNorm's off, and vice versa).
    same_family = _family(new) is not None and _family(new) == _family(old)
    if (same_family and accepted is not None and "track_running_stats" in accepted
            and "track_running_stats" not in kwargs
            and getattr(new, "track_running_stats", None) != cfg.get("track_running_stats")):
        new = create_norm(kind, _num_channels(old), **{**carried, **kwargs,
                                                        "track_running_stats": cfg["track_running_stats"]})
    if "device" in cfg and accepted is None:
        new = new.to(device=cfg["device"], dtype=cfg["dtype"])
    _carry_state(old, new, stats=same_family)
    new.train(old.training)
    return new


def replace_norms(model: nn.Module, kind: str, **kwargs) -> nn.Module:
    """Replace every norm layer of ``model`` with ``create_norm(kind, C, **kwargs)``.

    Carried from each old layer where the new kind takes them (explicit ``kwargs`` win): ``eps``,
    ``affine``, ``channel_axis`` (1 for torch's norms), ``num_groups``, ``momentum`` (from layers
    with running statistics), ``process_group``, ``device`` and ``dtype``; ``track_running_stats``
    only between norms of the same family. The new layer takes over the old one's ``weight``/``bias``
    Parameter objects (ties to other modules and optimizer references keep working) where shape,
    dtype and device fit, and copies their values otherwise (a frozen norm's buffers); running
    statistics and ``num_batches_tracked`` carry over only within the same family. The
    training/eval mode of each layer is kept. A norm registered under several names becomes one new
    layer under all of them.

    Left as they are, named in a ``UserWarning`` with the reason: norms that may not compute what
    their class computes (a subclass with its own ``forward``, hooks, a parametrized weight; see the
    module documentation) and norm classes the tools do not know (a replacement would drop whatever
    their ``forward`` adds). Fused norm + activation blocks are left silently, as documented above.

    Args:
        model: the model, changed in place (layers are replaced in their parents). A lazy norm not yet
            run (``nn.LazyBatchNorm2d``) is a ``ValueError`` naming it.
        kind: the new norm's name (``available_norms()`` or an alias); unknown is a ``ValueError``
            before anything changes.
        **kwargs (Any): constructor arguments of the new kind, overriding the carried ones.

    Returns:
        ``model``, or the new layer when ``model`` is itself one of the layers replaced.
    """
    canonical_kind(kind)  # fail on an unknown kind before touching the model
    refuse_uninitialized_norms(model, "replace_norms")
    skipped: list[tuple[str, str]] = []

    def convert(name: str, m: nn.Module) -> Optional[nn.Module]:
        if not _is_norm(m):
            return None
        _, problem = _known(m)
        if problem is not None:
            skipped.append((name, problem))
            return None
        return _build(kind, m, kwargs)

    model = _replace_everywhere(model, convert)
    _warn_skipped("replace_norms", skipped)
    return model


def _convert_known(model: nn.Module, tool: str, targets: Callable[[Optional[type], nn.Module], bool],
                   build: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace, under every name, each module ``targets`` accepts (given its nearest known norm class, None
    for a class the tools do not know), when it computes what that class computes; warn about the ones
    that may not."""
    skipped: list[tuple[str, str]] = []

    def convert(name: str, m: nn.Module) -> Optional[nn.Module]:
        cls, problem = _known(m)
        if not targets(cls, m):
            return None
        if problem is not None:
            skipped.append((name, problem))
            return None
        return build(m)

    model = _replace_everywhere(model, convert)
    _warn_skipped(tool, skipped)
    return model


# ---------------------------------------------------------------- sync

def _share_state(old: nn.Module, new: nn.Module) -> nn.Module:
    """Make ``new`` use ``old``'s very tensors, so optimizers and references keep working."""
    for name in ("weight", "bias") + _STAT_BUFFERS:
        value = getattr(old, name, None)
        if value is not None:
            setattr(new, name, value)
    new.train(old.training)
    return new


def _channel_norm_args(m: nn.Module) -> dict:
    like = _tensor_like(m)
    return dict(eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=m.track_running_stats,
                bias=m.bias is not None if m.affine else True,
                channel_axis=getattr(m, "channel_axis", 1), backend=getattr(m, "backend", "auto"),
                device=None if like is None else like.device, dtype=None if like is None else like.dtype)


_TO_SYNC = (ChannelNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def to_sync(model: nn.Module, process_group=None) -> nn.Module:
    """Turn every ``ChannelNorm`` and ``nn.BatchNorm1d/2d/3d`` into a ``SyncChannelNorm``.

    The new layers share the old ones' parameter and buffer tensors (as
    ``nn.SyncBatchNorm.convert_sync_batchnorm``), so call it before building the optimizer or after,
    either works. A layer registered under several names becomes one ``SyncChannelNorm`` under all of
    them. Subclasses that keep their base's ``forward`` convert as their base. Left as they are:
    ChannelNorm's variants with other semantics (GhostNorm, BatchRenorm, ...) and ``nn.SyncBatchNorm``;
    and, named in a ``UserWarning`` with the reason, ChannelNorm/BatchNorm layers that may not compute
    what their class computes (a subclass with its own ``forward``, hooks, a parametrized weight).

    Args:
        model: the model, changed in place (layers are replaced in their parents). A lazy norm not yet
            run is a ``ValueError`` naming it.
        process_group (ProcessGroup | None): the ``torch.distributed`` group the new layers synchronize
            over; None is the default (whole-world) group. Default: None.

    Returns:
        ``model``, or the new layer when ``model`` is itself one of the layers replaced.
    """
    def build(m: nn.Module) -> nn.Module:
        return _share_state(m, SyncChannelNorm(m.num_features, **_channel_norm_args(m), process_group=process_group))

    refuse_uninitialized_norms(model, "to_sync")
    return _convert_known(model, "to_sync", lambda cls, m: cls in _TO_SYNC, build)


def from_sync(model: nn.Module) -> nn.Module:
    """Turn every ``SyncChannelNorm`` back into a ``ChannelNorm`` (sharing its tensors).

    A layer registered under several names becomes one ``ChannelNorm`` under all of them; a
    ``SyncChannelNorm`` that may not compute what its class computes (a subclass with its own
    ``forward``, hooks, a parametrized weight) is left and named in a ``UserWarning``.

    Args:
        model: the model, changed in place (layers are replaced in their parents).

    Returns:
        ``model``, or the new layer when ``model`` is itself one of the layers replaced.
    """
    return _convert_known(model, "from_sync", lambda cls, m: cls is SyncChannelNorm,
                          lambda m: _share_state(m, ChannelNorm(m.num_channels, **_channel_norm_args(m))))


# ---------------------------------------------------------------- freeze

def _freezable(cls: Optional[type], m: nn.Module) -> bool:
    # An unknown class (cls None) with these traits is a target too: left, it is named with its reason.
    return cls is not FrozenChannelNorm and _family(m) == ("channel", False) and _tracks_running_stats(m)


def _frozen(m: nn.Module) -> nn.Module:
    like = _tensor_like(m)
    frozen = FrozenChannelNorm(_num_channels(m), eps=m.eps, channel_axis=getattr(m, "channel_axis", 1),
                               backend=getattr(m, "backend", "auto"), device=like.device, dtype=like.dtype)
    _copy_state(m, frozen, stats=True)
    frozen.train(m.training)
    return frozen


def freeze(model: nn.Module) -> nn.Module:
    """Replace every channel norm with running statistics by a ``FrozenChannelNorm``.

    Affected: ChannelNorm and its variants that normalize with the running statistics in eval mode
    (SyncChannelNorm, GhostNorm, BatchRenorm), ``nn.BatchNorm*d``/``nn.SyncBatchNorm`` with
    ``track_running_stats=True``. They then normalize with the running statistics in train and eval
    mode, never update them, and have no parameters: the frozen layer holds a copy of the values at
    the time of the call (a weight tied to another module no longer follows it). A layer registered
    under several names becomes one frozen layer under all of them. Norms without running
    statistics (GroupNorm, LayerNorm, LayerNorm2d, InstanceNorm, ...) and fused norm + activation
    blocks are left unchanged, and one ``UserWarning`` names them (there is nothing to freeze them
    to). Channel norms that may not compute what their class computes (a subclass with its own
    ``forward``, hooks, a parametrized weight, a norm class the tools do not know) are left too, named
    in another ``UserWarning`` with the reason. A lazy norm not yet run (``nn.LazyBatchNorm2d``) is a
    ``ValueError`` naming it.

    Args:
        model: the model, changed in place (layers are replaced in their parents).

    Returns:
        ``model``, or the new layer when ``model`` is itself one of the layers replaced.
    """
    refuse_uninitialized_norms(model, "freeze")
    model = _convert_known(model, "freeze", _freezable, _frozen)
    _warn_about_unfrozen(model)
    return model


def _warn_about_unfrozen(model: nn.Module) -> None:
    """One warning naming the norm layers freeze left as they were (freeze has nothing to fix them to)."""
    left = []
    for name, m in model.named_modules():
        if module_traits(m) is None or isinstance(m, FrozenChannelNorm):
            continue
        if getattr(type(m), "takes_residual", False):
            why = "a fused norm + activation block"
        elif not _tracks_running_stats(m):
            why = "no running statistics: it normalizes every input with that input's own statistics"
        elif _family(m) != ("channel", False):
            why = f"its running statistics are {module_traits(m).scope}-scope, not per channel over the batch"
        else:
            continue  # freezable, yet left: _convert_known's warning named it with the reason
        left.append(f"{name or '(the model itself)'!r} ({type(m).__name__}: {why})")
    if left:
        shown = "; ".join(left[:3]) + (f"; and {len(left) - 3} more" if len(left) > 3 else "")
        warnings.warn(f"freeze left {len(left)} norm layer(s) as they were: {shown}", UserWarning, stacklevel=3)


def _unfrozen(m: nn.Module) -> nn.Module:
    new = ChannelNorm(m.num_channels, eps=m.eps, channel_axis=m.channel_axis, backend=m.backend,
                      device=m.weight.device, dtype=m.weight.dtype)
    _copy_state(m, new, stats=True)
    new.train(m.training)
    return new


def unfreeze(model: nn.Module) -> nn.Module:
    """Replace every ``FrozenChannelNorm`` by a trainable ``ChannelNorm`` holding the same values.

    ``num_batches_tracked`` starts at 0 (a frozen layer does not keep it). A layer registered under
    several names becomes one ``ChannelNorm`` under all of them; a ``FrozenChannelNorm`` that may not
    compute what its class computes (a subclass with its own ``forward``, hooks) is left and named in
    a ``UserWarning``.

    Args:
        model: the model, changed in place (layers are replaced in their parents).

    Returns:
        ``model``, or the new layer when ``model`` is itself one of the layers replaced.
    """
    return _convert_known(model, "unfreeze", lambda cls, m: cls is FrozenChannelNorm, _unfrozen)


# ---------------------------------------------------------------- fold

# fold lives in its own module (finding the real data edges is most of it); re-exported here.
fold = _fold.fold
FoldReport = _fold.FoldReport
