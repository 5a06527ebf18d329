"""Which modules compute what their class is known to compute: the model tools change only those.

A conversion (swap, synchronize, freeze, fold) is correct for a module only when the module runs
the ``forward`` of a class the tool knows. A subclass of ``nn.BatchNorm2d`` that adds a term in its
own ``forward``, an instance whose ``forward`` was replaced, a module with hooks or a parametrized
weight all compute something else while passing an ``isinstance`` test; `behaves_as` tells them
apart, and the tools leave those modules alone with the reason.

``behaves_as`` compares, between the module's class and the nearest known class above it, every
class attribute that the known class's ``forward`` can reach: the names its code reads (``self._affine``,
``self._check_input_dim``, ...), followed through every method of the class that those names are, and
the methods ``nn.Module.__call__`` runs. A subclass that only changes ``__init__`` (other defaults) or
``extra_repr`` behaves as its base; one that overrides any reachable method does not.
"""
from __future__ import annotations

import functools
import inspect
import types
from typing import Any, Iterable, Optional

from torch import nn
from torch.nn.utils import parametrize

from .. import modules as _modules

__all__ = ["behaves_as", "known_norm_classes", "nearest_known"]

# Methods Python or nn.Module call without naming them in forward's code.
_IMPLICIT = ("forward", "__call__", "_call_impl", "_wrapped_call_impl", "__getattr__", "__getattribute__",
             "__iter__", "__len__", "__getitem__", "__bool__")
_MISSING = object()
# Class attributes that may differ between a class and its subclass without changing what forward does.
_PLAIN_VALUES = (type(None), bool, int, float, str, tuple, frozenset)


def known_norm_classes() -> tuple[type, ...]:
    """The norm classes whose ``forward`` the model tools know: torch's BatchNorm1d/2d/3d, SyncBatchNorm,
    InstanceNorm1d/2d/3d and GroupNorm, and every norm class this library exports (read at call time,
    so a class added to ``channelnorm.modules`` is known without a change here)."""
    ours = tuple(cls for cls in (getattr(_modules, name) for name in _modules.__all__)
                 if isinstance(cls, type) and issubclass(cls, _modules.AffineNorm)
                 and cls.forward is not nn.Module.forward)  # the abstract bases have no forward
    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
            nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm) + ours


def nearest_known(module: nn.Module, classes: Iterable[type]) -> Optional[type]:
    """The first of ``classes`` in ``type(module).__mro__`` (the closest known ancestor), or None."""
    classes = tuple(classes)
    return next((cls for cls in type(module).__mro__ if cls in classes), None)


def behaves_as(module: nn.Module, classes: Iterable[type], *, hooks_matter: bool = True
               ) -> tuple[Optional[type], Optional[str]]:
    """The known class ``module`` is an instance of, and why it may compute something else.

    Args:
        module: any module.
        classes: the known classes.
        hooks_matter: a module with forward or backward hooks counts as computing something else
            (the hooks may change its output, and a replacement would drop them). Default: True.

    Returns:
        ``(cls, None)`` when ``module`` computes exactly what ``cls`` (the nearest of ``classes`` in
        its MRO) computes; ``(cls, reason)`` when it may not; ``(None, reason)`` when it is an
        instance of none of ``classes``.
    """
    cls = nearest_known(module, classes)
    own = type(module)
    if cls is None:
        return None, f"{own.__name__} is none of the classes this tool knows"
    if parametrize.is_parametrized(module):
        return cls, f"{own.__name__} has a parametrized tensor (torch.nn.utils.parametrize)"
    replaced = _methods_forward_reaches(cls) & vars(module).keys()
    if replaced:
        return cls, f"its {sorted(replaced)[0]} is replaced on the instance"
    overridden = _overridden(own, cls)
    if overridden is not None:
        what = ("its own forward" if overridden == "forward"
                else f"its own {overridden}, which {cls.__name__}.forward uses")
        return cls, f"{own.__name__} defines {what}"
    if hooks_matter and _has_hooks(module):
        return cls, f"{own.__name__} has hooks registered (they may change its output)"
    return cls, None


@functools.lru_cache(maxsize=None)
def _overridden(own: type, cls: type) -> Optional[str]:
    """The first name ``cls``'s forward reaches that ``own`` (a subclass) resolves to something else."""
    if own is cls:
        return None
    for name in sorted(_names_forward_reaches(cls)):
        if not _same(inspect.getattr_static(own, name, _MISSING), inspect.getattr_static(cls, name, _MISSING)):
            return name
    return None


@functools.lru_cache(maxsize=None)
def _methods_forward_reaches(cls: type) -> frozenset[str]:
    """The names forward reaches that are methods (or properties) of ``cls``: an instance attribute of
    that name replaces the method."""
    return frozenset(name for name in _names_forward_reaches(cls)
                     if callable(value := inspect.getattr_static(cls, name, _MISSING))
                     or isinstance(value, (property, staticmethod, classmethod)))


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    return type(a) is type(b) and isinstance(a, _PLAIN_VALUES) and a == b


@functools.lru_cache(maxsize=None)
def _names_forward_reaches(cls: type) -> frozenset[str]:
    """Every attribute name ``cls``'s forward (and the call machinery around it) can read, following
    the methods of ``cls`` (and of its bases, through ``super()``) that those names are."""
    seen: set[str] = set()
    todo = list(_IMPLICIT)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for klass in cls.__mro__:
            for code in _code_of(klass.__dict__.get(name)):
                todo.extend(_names_in(code))
    # Dunder names other than the implicit calls are class machinery (__dict__, __class__): the same
    # behaviour has a different object per class.
    return frozenset(n for n in seen if n in _IMPLICIT or not (n.startswith("__") and n.endswith("__")))


def _code_of(value: Any) -> list[types.CodeType]:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        return [code for f in (value.fget, value.fset) if f is not None for code in _code_of(f)]
    code = getattr(value, "__code__", None)
    return [code] if isinstance(code, types.CodeType) else []


def _names_in(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:  # nested functions, lambdas, comprehensions
        if isinstance(const, types.CodeType):
            names |= _names_in(const)
    return names
