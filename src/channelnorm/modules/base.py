"""The two base classes of every norm, as torch splits them, and the class-level traits.

* ``AffineNorm``: channel count, ``eps``, channel axis, backend, and the per-channel affine
  (``weight``, and ``bias`` unless ``bias=False``). Norms without running statistics (GroupNorm,
  LayerNorm, FilterResponseNorm, EvoNorm-S0) derive from it.
* ``RunningStatsNorm``: adds ``momentum``, ``track_running_stats`` and the running buffers
  (ChannelNorm and its variants, InstanceNorm, EvoNorm-B0).

Parameter and buffer names, dtypes and ``state_dict`` keys are those of ``torch.nn.BatchNorm*d``
(``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``), so state dicts
load strictly in both directions, also with torch's modules built with ``bias=False``.

Traits (class attributes that model tools and the experiment read instead of type tests):
``scope`` (which elements share a statistic), ``uses_batch_statistics`` (in training, one sample's
output depends on the others) and ``includes_activation`` (no activation should follow it).
"""
from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from .. import _checks
from ..functional.core import require_backend


class NormTraits(NamedTuple):
    """Facts about a norm that model tools and the experiment read.

    Attributes:
        scope: the axes its statistics cover: ``"channel"`` (per channel over batch and spatial
            axes), ``"group"``, ``"layer"`` (per sample over channels and spatial axes),
            ``"instance"`` (per sample and channel), ``"position"`` (per sample and spatial position,
            over the channels: `LayerNorm2d`) or ``"none"``.
        uses_batch_statistics: in training, its output for one sample depends on the other samples.
        includes_activation: it replaces norm + activation (no activation should follow it).
    """

    scope: str
    uses_batch_statistics: bool
    includes_activation: bool


def channel_count(cls_name: str, num_channels, num_features) -> int:
    """``num_channels``, or torch's name for it, ``num_features``; exactly one of them."""
    if num_features is not None:
        if num_channels is not None and num_channels != num_features:
            raise TypeError(f"{cls_name}: got num_channels={num_channels!r} and num_features={num_features!r}; "
                            f"give one of them (num_features is torch's name for num_channels)")
        num_channels = num_features
    if num_channels is None:
        raise TypeError(f"{cls_name}() needs the channel count: num_channels (or torch's num_features)")
    return _checks.positive_int("num_channels", num_channels)


def channel_axis_setting(owner: type, value):
    """``channel_axis`` as the module keeps it: an int, or for a class that accepts one a tuple of at least
    two distinct ints (a one-element tuple is its int)."""
    if not isinstance(value, (tuple, list)):
        return _checks.channel_axis_arg(value)
    if not owner.accepts_axis_tuple:
        raise TypeError(f"{owner.__name__}: channel_axis must be an int, got {value!r}; a tuple of axes (Keras' axis "
                        f"list) is taken by ChannelNorm only")
    axes = tuple(_checks.channel_axis_arg(a) for a in value)
    if not axes or len(set(axes)) != len(axes):
        raise ValueError(f"{owner.__name__}: channel_axis as a tuple needs distinct axes, got {value!r}")
    return axes[0] if len(axes) == 1 else axes


def _checked_num_groups(module: nn.Module, value):
    value = _checks.positive_int("num_groups", value)
    channels = module.__dict__.get("num_channels")
    if channels is not None:
        _checks.groups_divide(value, channels)
    return value


# The settings a module's forward trusts without checking them per call: each is checked whenever it is
# set, at construction or by a later assignment (``norm.eps = 0`` is a ValueError there, not a NaN later).
SETTING_CHECKS = {
    "eps": lambda module, value: _checks.eps(value),
    "momentum": lambda module, value: _checks.momentum(value),
    "channel_axis": lambda module, value: channel_axis_setting(type(module), value),
    "num_groups": _checked_num_groups,
    "virtual_batch_size": lambda module, value: _checks.positive_int("virtual_batch_size", value),
    "rmax": lambda module, value: _checks.renorm_limits(value, 0.0, 0)[0],
    "dmax": lambda module, value: _checks.renorm_limits(1.0, value, 0)[1],
    "warmup_steps": lambda module, value: _checks.renorm_limits(1.0, 0.0, value)[2],
}


class AffineNorm(nn.Module):
    """Base of every norm: channel count, eps, channel axis, backend and the per-channel affine.

    Subclasses set the traits (``scope``, ``uses_batch_statistics``, ``includes_activation``) as class
    attributes and define ``forward``; norms without running statistics derive from it directly.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end.
            A subclass with ``accepts_axis_tuple`` (ChannelNorm) also takes a tuple of axes.
            Default: 1.
        backend: ``"auto"``, ``"reference"``, ``"native"`` or ``"triton"``. A backend that can never
            run this norm is a ``ValueError`` here, one that cannot run a given call a ``ValueError``
            at that call. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters and buffers. Default: None (torch's
            default device).
        dtype (torch.dtype | None): floating dtype of the parameters and buffers. Default: None (torch's
            default dtype).
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.

    Shape:
        - Input: ``(N, C, *)``, the C channels on ``channel_axis``, as the subclass accepts.
        - Output: the input's shape.
    """

    scope: ClassVar[str] = "none"
    uses_batch_statistics: ClassVar[bool] = False
    includes_activation: ClassVar[bool] = False
    # forward takes a residual added before the activation (fused blocks): never swapped for a plain norm.
    takes_residual: ClassVar[bool] = False
    # The functional op this module runs: backends that can never run it are refused at construction.
    functional_op: ClassVar[str] = "channel_norm"
    # weight and bias as buffers (frozen norms) instead of parameters.
    affine_buffers: ClassVar[bool] = False
    # Constructor arguments shown by extra_repr, in order; subclasses extend or trim this.
    _repr_fields: ClassVar[tuple[str, ...]] = ("num_channels", "eps", "affine", "channel_axis", "backend")
    _repr_positional: ClassVar[int] = 1  # leading fields shown without a name, as torch shows num_features
    # channel_axis may be a tuple of axes (Keras 2's axis list; statistics per combination of their indices).
    accepts_axis_tuple: ClassVar[bool] = False

    def __setattr__(self, name: str, value: Any) -> None:
        # Only assignments pay the check (one dict lookup for other names); forward reads plain attributes.
        check = SETTING_CHECKS.get(name)
        if check is not None:
            value = check(self, value)
        super().__setattr__(name, value)

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__()
        self.num_channels = _checks.positive_int("num_channels", num_channels)
        self.eps = eps  # checked by __setattr__ (SETTING_CHECKS), as any later assignment
        self.affine = bool(affine)
        self.channel_axis = channel_axis_setting(type(self), channel_axis)
        require_backend(self.functional_op, backend)
        self.backend = backend
        _checks.parameter_dtype(type(self).__name__, dtype)
        factory = {"device": device, "dtype": dtype}
        with_bias = self.affine and bool(bias)
        if self.affine_buffers:
            self.register_buffer("weight", torch.ones(self.num_channels, **factory))
            self.register_buffer("bias", torch.zeros(self.num_channels, **factory))
        else:
            self.weight = nn.Parameter(torch.empty(self.num_channels, **factory)) if self.affine else None
            self.bias = nn.Parameter(torch.empty(self.num_channels, **factory)) if with_bias else None
        AffineNorm.reset_parameters(self)

    @classmethod
    def traits(cls) -> NormTraits:
        """This class's `NormTraits` (its ``scope``, ``uses_batch_statistics`` and ``includes_activation``)."""
        return NormTraits(cls.scope, cls.uses_batch_statistics, cls.includes_activation)

    @property
    def num_features(self) -> int:
        """``nn.BatchNorm``'s name for ``num_channels`` (for code written against torch's norms)."""
        return self.num_channels

    def reset_parameters(self) -> None:
        """Set ``weight`` to 1 and ``bias`` to 0 (parameters only; a frozen norm's buffers stay)."""
        if self.affine and not self.affine_buffers:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _affine(self) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``(self.weight, self.bias)`` for a forward call.

        Read from the parameter (or, for frozen norms, buffer) dict: an attribute read of a registered
        tensor goes through ``nn.Module.__getattr__`` (~0.6 us each on CPU, a fifth of a small norm's
        Python cost), a dict lookup costs ~30 ns. A name in neither dict (``bias=False`` keeps None as
        a plain attribute; a parametrization replaces the parameter with a property) is read as an
        attribute, so what the forward sees is always what ``self.weight`` / ``self.bias`` return.
        """
        tensors = self._buffers if self.affine_buffers else self._parameters
        weight = tensors["weight"] if "weight" in tensors else self.weight
        bias = tensors["bias"] if "bias" in tensors else self.bias
        return weight, bias

    def _check_input(self, input) -> int:
        # The settings were checked at construction; per call only the input (returns its channel axis, >= 0).
        axis = _checks.input_tensor(input, self.channel_axis, type(self).__name__)
        if input.shape[axis] != self.num_channels:
            _checks.channel_count(type(self).__name__, input, axis, self.num_channels)  # raises, naming both
        return axis

    def extra_repr(self) -> str:
        shown = []
        for i, name in enumerate(self._repr_fields):
            value = getattr(self, name)
            shown.append(repr(value) if i < self._repr_positional else f"{name}={value!r}")
        if self.affine and self.bias is None:
            shown.append("bias=False")
        return ", ".join(shown)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata, strict: bool,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        # load_state_dict(..., assign=True) installs the given tensors themselves, and a plain load casts
        # complex values to real: refuse non-floating affine and statistics as construction and .to() do.
        for name in ("weight", "bias", "running_mean", "running_var"):
            value = state_dict.get(prefix + name)
            if isinstance(value, torch.Tensor) and not value.is_floating_point():
                raise TypeError(f"{type(self).__name__}: state_dict[{prefix + name!r}] has dtype {value.dtype}; "
                                f"parameters and buffers of a norm must be floating point")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _apply(self, fn, recurse=True):
        # module.to(torch.complex64) would cast the statistics and affine silently: refuse it up front.
        probe = fn(torch.zeros(0))
        if isinstance(probe, torch.Tensor) and not probe.is_floating_point():
            raise TypeError(f"{type(self).__name__}: parameters and buffers must stay floating point, got a "
                            f"conversion to {probe.dtype}")
        return super()._apply(fn, recurse)


class RunningStatsNorm(AffineNorm):
    """Base of the norms with running statistics: ``momentum``, ``track_running_stats`` and the buffers.

    The buffers are ``running_mean`` (initialised to 0), ``running_var`` (to 1) and
    ``num_batches_tracked`` (to 0), with ``nn.BatchNorm*d``'s names, dtypes and ``state_dict`` keys;
    a subclass keeps only the statistics in its ``running_stats`` class attribute.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        momentum: weight of the new batch statistic in the running statistics, in [0, 1];
            None is a cumulative average (weight ``1 / num_batches_tracked``). Default: 0.1.
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        track_running_stats: keep the running buffers, updated in training and used in eval;
            with False they are None and eval uses the input's own statistics too. Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end.
            Default: 1.
        backend: ``"auto"``, ``"reference"``, ``"native"`` or ``"triton"``. A backend that can never
            run this norm is a ``ValueError`` here, one that cannot run a given call a ``ValueError``
            at that call. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters and buffers. Default: None (torch's
            default device).
        dtype (torch.dtype | None): floating dtype of the parameters and buffers. Default: None (torch's
            default dtype).
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, the C channels on ``channel_axis``, as the subclass accepts.
        - Output: the input's shape.
    """

    # Running buffers this norm keeps (EvoNorm-B0 keeps only the variance).
    running_stats: ClassVar[tuple[str, ...]] = ("running_mean", "running_var")
    # It cannot compute without its running statistics (track_running_stats=False is refused).
    needs_running_stats: ClassVar[bool] = False
    _version = 2
    _repr_fields = ("num_channels", "eps", "momentum", "affine", "track_running_stats", "channel_axis", "backend")

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, *, bias: bool = True,
                 num_features: Optional[int] = None) -> None:
        num_channels = channel_count(type(self).__name__, num_channels, num_features)
        super().__init__(num_channels, eps, affine, channel_axis, backend, device, dtype, bias=bias)
        self.momentum = momentum  # checked by __setattr__
        self.track_running_stats = bool(track_running_stats)
        factory = {"device": device, "dtype": dtype}
        initial = {"running_mean": torch.zeros, "running_var": torch.ones}
        for name, make in initial.items():
            # A statistic the norm does not keep is None, as torch's when track_running_stats=False.
            kept = self.track_running_stats and name in self.running_stats
            self.register_buffer(name, make(self.num_channels, **factory) if kept else None)
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
                             if self.track_running_stats else None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, ``num_batches_tracked`` 0 (nothing without running statistics)."""
        if self.track_running_stats:
            for name in self.running_stats:
                getattr(self, name).fill_(1 if name == "running_var" else 0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, then ``weight`` to 1 and ``bias`` to 0."""
        self.reset_running_stats()
        super().reset_parameters()

    def _uses_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def _running_buffers(self):
        """Buffers handed to the functional op: updated in training, read in eval (as nn.BatchNorm)."""
        if self.track_running_stats:
            # The buffer dict, not attribute reads (see ``_affine``); a name removed from it falls back.
            buffers = self._buffers
            try:
                return buffers["running_mean"], buffers["running_var"], buffers["num_batches_tracked"]
            except KeyError:
                return self.running_mean, self.running_var, self.num_batches_tracked
        return None, None, None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata, strict: bool,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        # As nn.BatchNorm: state dicts from before num_batches_tracked existed load with 0.
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long,
                                           device=self.num_batches_tracked.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


# torch's norms with a per-channel affine, and their traits (torch's classes carry none).
_TORCH_TRAITS: dict[type, NormTraits] = {
    _BatchNorm: NormTraits("channel", True, False),
    _InstanceNorm: NormTraits("instance", False, False),
    nn.GroupNorm: NormTraits("group", False, False),
}

NORM_TYPES: tuple[type, ...] = (AffineNorm, *_TORCH_TRAITS)
"""Every norm class with a per-channel affine: this library's (``AffineNorm`` and subclasses) and
torch's BatchNorm, SyncBatchNorm, InstanceNorm and GroupNorm. Code that finds BatchNorm layers by
type (weight-decay exclusion, fusers) can test ``isinstance(m, NORM_TYPES)`` instead."""


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a norm layer with a per-channel affine: ``isinstance(module, NORM_TYPES)``.

    For code that finds ``nn.BatchNorm*d`` layers by type (weight-decay exclusion, fusers).

    Args:
        module: any module.

    Returns:
        True for every norm of this library and for torch's BatchNorm, SyncBatchNorm, InstanceNorm and
        GroupNorm; False otherwise (``nn.LayerNorm``, whose affine is per element, is not one).
    """
    return isinstance(module, NORM_TYPES)


def module_traits(module: nn.Module) -> Optional[NormTraits]:
    """The traits of a norm layer, this library's or torch's.

    Args:
        module: any module.

    Returns:
        The layer's `NormTraits` (its class's for this library's norms; channel scope with batch
        statistics for torch's BatchNorm, instance scope for InstanceNorm, group scope for GroupNorm),
        or None for a module that is not one of `NORM_TYPES`.
    """
    if isinstance(module, AffineNorm):
        return module.traits()
    for cls, traits in _TORCH_TRAITS.items():
        if isinstance(module, cls):
            return traits
    return None
