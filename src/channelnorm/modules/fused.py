"""Norm + residual add + activation modules: ``act(norm(x) + residual)``, fused on the Triton backend.

They subclass the plain norms, so parameters, buffers and ``state_dict`` keys stay those of
``nn.BatchNorm*d`` / ``nn.GroupNorm``; the activation is configuration, not state (unless an
``act_layer`` with parameters, such as ``nn.PReLU``, is given: it is then the submodule ``act``,
as in timm's ``BatchNormAct2d``).

The activation is named by ``activation`` (the ones the kernels fuse) or, as timm's norm + act
layers take it, by ``act_layer``: a name, an ``nn.Module`` class or an instance. An ``act_layer``
that is one of the fused activations (``nn.ReLU``, ``nn.SiLU``, ``nn.GELU()`` with its exact
form, ``nn.Identity``, or their names) is fused; any other runs as a module after the fused
norm + residual.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .. import _checks
from ..functional.core import channel_norm_act_validated, group_norm_act_validated
from .channel import ChannelNorm
from .group import GroupNorm

ACT_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "celu": nn.CELU, "selu": nn.SELU,
    "gelu": nn.GELU, "gelu_tanh": functools.partial(nn.GELU, approximate="tanh"), "silu": nn.SiLU, "swish": nn.SiLU,
    "mish": nn.Mish, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "hard_sigmoid": nn.Hardsigmoid,
    "hardsigmoid": nn.Hardsigmoid, "hard_swish": nn.Hardswish, "hardswish": nn.Hardswish, "prelu": nn.PReLU,
    "identity": nn.Identity,
}
"""The ``act_layer`` names the norm + activation blocks take: timm's activation names
(``timm.layers.create_act``) and the torch module each builds. ``"relu"``, ``"silu"``/``"swish"``,
``"gelu"`` and ``"identity"`` are fused; the others run after the fused norm + residual."""
_FUSED_TYPES = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Identity: "none"}

ActLayer = Union[str, type, nn.Module, Callable[..., nn.Module], None]


def resolve_activation(owner: str, activation: Optional[str], act_layer: ActLayer, act_kwargs: Optional[dict],
                       apply_act: bool, inplace: bool) -> tuple[str, Optional[nn.Module]]:
    """The fused activation's name and, for an activation the kernels do not fuse, the module that runs
    after them: ``(name, None)`` or ``("none", module)``."""
    if act_layer is None:
        if act_kwargs:
            raise TypeError(f"{owner}: act_kwargs={act_kwargs!r} needs an act_layer to pass them to")
        return (_checks.activation(owner, activation) if apply_act else "none"), None
    if activation != "relu":
        raise ValueError(f"{owner}: give activation={activation!r} or act_layer={act_layer!r}, not both")
    if not apply_act:
        return "none", None
    module = _activation_module(owner, act_layer, act_kwargs or {}, inplace)
    if type(module) in _FUSED_TYPES:
        return _FUSED_TYPES[type(module)], None
    if type(module) is nn.GELU and module.approximate == "none":
        return "gelu", None
    return "none", module


def _activation_module(owner: str, act_layer: ActLayer, act_kwargs: dict, inplace: bool) -> nn.Module:
    if isinstance(act_layer, nn.Module):
        if act_kwargs:
            raise TypeError(f"{owner}: act_kwargs={act_kwargs!r} cannot apply to an activation instance "
                            f"({act_layer!r}); pass its class")
        return act_layer
    if isinstance(act_layer, str):
        key = act_layer.lower()
        if key in ("", "none"):
            key = "identity"
        if key not in ACT_LAYERS:
            raise ValueError(f"{owner}: unknown act_layer {act_layer!r}; choose one of {', '.join(sorted(ACT_LAYERS))}, "
                             f"or pass an nn.Module class or instance")
        act_layer = ACT_LAYERS[key]
    if not callable(act_layer):
        raise TypeError(f"{owner}: act_layer must be a name, an nn.Module class or instance, or None, got "
                        f"{type(act_layer).__name__} {act_layer!r}")
    kwargs = dict(act_kwargs)
    if inplace and "inplace" not in kwargs and "inplace" in _parameters(act_layer):
        kwargs["inplace"] = True  # as timm passes it; the activation reads a fresh tensor either way
    module = act_layer(**kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{owner}: act_layer {act_layer!r} built a {type(module).__name__}, not an nn.Module")
    return module


def _parameters(factory) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return ()


class ChannelNormAct(ChannelNorm):
    """``act(channel_norm(x) + residual)``: a ``ChannelNorm``, an optional residual add, then ``activation``.

    Parameters, buffers, ``state_dict`` and the running-statistics rules are ChannelNorm's. The Triton
    backend fuses the three steps (forward and backward); the other backends compose them from torch
    ops with the same result.

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        momentum: weight of the new batch statistic in the running statistics, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``). Default: 0.1.
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        track_running_stats: keep ``running_mean``, ``running_var`` (unbiased) and
            ``num_batches_tracked``; with False they are None and eval uses the batch's statistics
            too. Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end.
            Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"`` (pure torch math), ``"native"`` (torch's
            kernels) or ``"triton"`` (fused kernels). A named backend that cannot run a call is a
            ``ValueError`` saying why, never a silent fallback. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters and buffers. Default: None (torch's
            default device).
        dtype (torch.dtype | None): floating dtype of the parameters and buffers. Default: None (torch's
            default dtype).
        activation: keyword-only; ``"relu"``, ``"silu"``, ``"gelu"`` (exact, not tanh) or ``"none"`` (or
            None). Default: ``"relu"``.
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).
        act_layer (str | type | nn.Module | None): keyword-only; the activation as timm's
            ``BatchNormAct2d`` takes it: a timm name (``"relu"``, ``"gelu_tanh"``, ``"mish"``, ... see
            ``ACT_LAYERS``), an ``nn.Module`` class (built with ``act_kwargs``) or an instance. Fused
            when it is one of ``activation``'s, else run as the submodule ``act`` after the norm and
            residual. Replaces ``activation``, which must then keep its default. Default: None.
        act_kwargs (dict | None): keyword-only; arguments for building ``act_layer`` from a name or
            class. Default: None.
        apply_act: keyword-only; False means no activation at all, whatever ``activation`` or
            ``act_layer`` say (timm's switch). Default: True.
        inplace: keyword-only; passed to an ``act_layer`` class that takes it, as timm does (the
            result is the same either way). Default: False.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis``.
        - Residual (optional, in ``forward``): the input's shape, dtype and device.
        - Output: the input's shape, dtype and memory format.
    """

    includes_activation = True
    takes_residual = True
    functional_op = "channel_norm_act"
    _repr_fields = ChannelNorm._repr_fields + ("activation",)

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, *, activation: Optional[str] = "relu",
                 bias: bool = True, num_features: Optional[int] = None, act_layer: ActLayer = None,
                 act_kwargs: Optional[dict[str, Any]] = None, apply_act: bool = True, inplace: bool = False) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats, channel_axis, backend, device,
                         dtype, bias=bias, num_features=num_features)
        self.activation, self.act = resolve_activation(type(self).__name__, activation, act_layer, act_kwargs,
                                                       apply_act, inplace)

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``act(norm(input) + residual)``.

        Args:
            input: the input, C channels on ``channel_axis``.
            residual: optional tensor added after the norm and before the activation; the input's
                shape, dtype and device.

        Returns:
            The output, same shape, dtype and memory format as ``input``.
        """
        axis = self._check_input(input)
        running_mean, running_var, tracked = self._running_buffers()
        weight, bias = self._affine()
        y = channel_norm_act_validated(input, axis, running_mean, running_var, weight, bias, self._uses_batch_stats(),
                                       self.momentum, self.eps, self.activation, residual, self.backend, tracked)
        return y if self.act is None else self.act(y)


class GroupNormAct(GroupNorm):
    """``act(group_norm(x) + residual)``: a ``GroupNorm``, an optional residual add, then ``activation``.

    Parameters and ``state_dict`` are GroupNorm's. The Triton backend fuses the three steps; the other
    backends compose them from torch ops with the same result.

    Args:
        num_groups: G, the number of groups; must divide ``num_channels``.
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end; not 0,
            the batch axis. Default: 1.
        backend: ``"auto"`` (picks per call), ``"reference"`` (pure torch math), ``"native"`` (torch's
            kernels) or ``"triton"`` (fused kernels). A named backend that cannot run a call is a
            ``ValueError`` saying why, never a silent fallback. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters. Default: None (torch's default
            device).
        dtype (torch.dtype | None): floating dtype of the parameters. Default: None (torch's default dtype).
        activation: keyword-only; ``"relu"``, ``"silu"``, ``"gelu"`` (exact, not tanh) or ``"none"`` (or
            None). Default: ``"relu"``.
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).
        act_layer (str | type | nn.Module | None): keyword-only; the activation as timm's
            ``GroupNormAct`` takes it: a timm name, an ``nn.Module`` class (built with ``act_kwargs``)
            or an instance; fused when it is one of ``activation``'s, else run as the submodule ``act``.
            Replaces ``activation``, which must then keep its default. Default: None.
        act_kwargs (dict | None): keyword-only; arguments for building ``act_layer`` from a name or
            class. Default: None.
        apply_act: keyword-only; False means no activation at all. Default: True.
        inplace: keyword-only; passed to an ``act_layer`` class that takes it, as timm does (the
            result is the same either way). Default: False.

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0.
        - Residual (optional, in ``forward``): the input's shape, dtype and device.
        - Output: the input's shape, dtype and memory format.
    """

    includes_activation = True
    takes_residual = True
    functional_op = "group_norm_act"
    _repr_fields = GroupNorm._repr_fields + ("activation",)

    def __init__(self, num_groups: int, num_channels: Optional[int] = None, eps: float = 1e-5, affine: bool = True,
                 channel_axis: int = 1, backend: str = "auto", device=None, dtype=None, *,
                 activation: Optional[str] = "relu", bias: bool = True, num_features: Optional[int] = None,
                 act_layer: ActLayer = None, act_kwargs: Optional[dict[str, Any]] = None, apply_act: bool = True,
                 inplace: bool = False) -> None:
        super().__init__(num_groups, num_channels, eps, affine, channel_axis, backend, device, dtype, bias=bias,
                         num_features=num_features)
        self.activation, self.act = resolve_activation(type(self).__name__, activation, act_layer, act_kwargs,
                                                       apply_act, inplace)

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``act(norm(input) + residual)``.

        Args:
            input: the input, C channels on ``channel_axis``.
            residual: optional tensor added after the norm and before the activation; the input's
                shape, dtype and device.

        Returns:
            The output, same shape, dtype and memory format as ``input``.
        """
        axis = self._check_input(input)
        weight, bias = self._affine()
        y = group_norm_act_validated(input, axis, self.num_groups, weight, bias, self.eps, self.activation, residual,
                                     self.backend, self.channel_axis)
        return y if self.act is None else self.act(y)
