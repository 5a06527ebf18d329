"""A Keras ``BatchNormalization`` layer's weights into a `ChannelNorm` and back, with Keras' conventions.

What differs between the two, and how it is handled:

* **Weights**: Keras' ``gamma``, ``beta``, ``moving_mean``, ``moving_variance`` are ChannelNorm's
  ``weight``, ``bias``, ``running_mean``, ``running_var`` (``get_weights()`` lists them in that order,
  ``gamma`` only with ``scale=True`` and ``beta`` only with ``center=True``).
* **Variance**: Keras' ``moving_variance`` averages the *biased* batch variance (keras 3.15.1,
  ``keras/src/layers/normalization/batch_normalization.py`` assigns
  ``moving_variance * momentum + variance * (1 - momentum)`` with the variance of ``ops.moments``, whose
  torch backend computes ``mean(x²) - mean(x)²``); PyTorch's ``running_var`` averages the *unbiased* one.
  Inference uses the stored value as it is in both, so it is copied unchanged and eval outputs match
  Keras'. Training on in PyTorch updates it with the unbiased variance, as ``nn.BatchNorm2d`` would
  (``n/(n-1)`` times the biased one: 1.6 % more at 64 values per channel).
* **epsilon** (Keras' default 1e-3, torch's 1e-5) and **momentum** (Keras weights the old value:
  torch's ``momentum = 1 - keras momentum``, Keras' default 0.99 is torch's 0.01) come from the layer's
  config.
* **axis**: Keras' default -1 (channels last) is ``channel_axis=-1``. tf.keras (Keras 2) also took a list
  (``axis=[1, 3]``: one statistic per combination of the axes' indices, parameters of shape
  ``(1, C1, 1, C3)``): that is ``ChannelNorm(C1 * C3, channel_axis=(1, 3))``, exact. Keras 3 takes an int.
* **trainable=False**: a Keras ``BatchNormalization`` that is not trainable runs in inference mode
  even in ``fit()`` (Keras >= 2.1.3): that is a `FrozenChannelNorm`.

Keras is not needed: the functions read any object with ``get_config()`` and ``get_weights()`` (a Keras
layer), or a config dict and the weights.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..modules import ChannelNorm, FrozenChannelNorm
from .momentum import decay_from_momentum, momentum_from_decay

__all__ = ["from_keras_batchnorm", "to_keras_batchnorm"]

_KERAS_DEFAULTS = {"axis": -1, "momentum": 0.99, "epsilon": 1e-3, "center": True, "scale": True, "trainable": True}
_WEIGHT_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")
# Config entries whose non-default values change what the layer computes, and what to use instead.
_UNSUPPORTED = {
    "renorm": (False, "Keras' batch renormalization has its own clipping schedule; channelnorm's is cn.BatchRenorm"),
    "synchronized": (False, "load it into a ChannelNorm, then synchronize with cn.convert.to_sync"),
    "virtual_batch_size": (None, "ghost batches are cn.GhostNorm"),
    "adjustment": (None, "a custom adjustment function cannot be carried over"),
}

def _config_of(layer: Any, config: Optional[Mapping[str, Any]]) -> dict:
    if config is None and hasattr(layer, "get_config"):
        config = layer.get_config()
    merged = {**_KERAS_DEFAULTS, **(config or {})}
    for key, (default, instead) in _UNSUPPORTED.items():
        value = merged.get(key, default)
        if value is not None and value != default:
            raise ValueError(f"from_keras_batchnorm: {key}={merged[key]!r} is not a plain BatchNormalization: {instead}")
    return merged


def _named_weights(layer: Any, config: dict) -> dict[str, np.ndarray]:
    weights = layer.get_weights() if hasattr(layer, "get_weights") else layer
    if isinstance(weights, Mapping):
        named = {k: weights[k] for k in _WEIGHT_NAMES if k in weights}
        unknown = sorted(set(weights) - set(_WEIGHT_NAMES))
        if unknown:
            raise ValueError(f"from_keras_batchnorm: unknown weight name(s) {unknown}; expected {list(_WEIGHT_NAMES)}")
    else:
        names = [n for n in _WEIGHT_NAMES if (n != "gamma" or config["scale"]) and (n != "beta" or config["center"])]
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(f"from_keras_batchnorm: a BatchNormalization with scale={config['scale']} and "
                             f"center={config['center']} has {len(names)} weights ({', '.join(names)}), got "
                             f"{len(weights)}")
        named = dict(zip(names, weights))
    for name in ("moving_mean", "moving_variance"):
        if name not in named:
            raise ValueError(f"from_keras_batchnorm: {name} is missing (a layer not built yet has no weights)")
    return {k: np.asarray(v) for k, v in named.items()}


def from_keras_batchnorm(layer: Any, config: Optional[Mapping[str, Any]] = None, *, dtype: Optional[torch.dtype] = None,
                         device=None) -> nn.Module:
    """A `ChannelNorm` that computes what a Keras ``BatchNormalization`` layer computes, holding its weights.

    Args:
        layer: a built Keras ``BatchNormalization`` layer (anything with ``get_weights()`` and
            ``get_config()``), or its weights: the ``get_weights()`` list (``[gamma, beta, moving_mean,
            moving_variance]``, without ``gamma``/``beta`` when ``scale``/``center`` is False) or a dict
            by those names.
        config: the layer's ``get_config()`` (``axis``, ``momentum``, ``epsilon``, ``center``,
            ``scale``, ``trainable``); read from ``layer`` when it has one, else Keras' defaults (axis -1,
            momentum 0.99, epsilon 1e-3). ``renorm``, ``synchronized``, ``virtual_batch_size`` and
            ``adjustment`` other than their defaults are a ``ValueError`` naming what to use instead.
            Default: None.
        dtype (torch.dtype | None): dtype of the parameters and buffers. Default: None (torch's default).
        device (torch.device | str | None): their device. Default: None (torch's default).

    Returns:
        A ``ChannelNorm(C, eps=epsilon, momentum=1 - momentum, channel_axis=axis)`` in training mode
        (call ``.eval()`` for inference) with ``weight``/``bias`` from ``gamma``/``beta`` (``bias=False``
        without ``center``; a fixed weight of 1, not trained, without ``scale``; ``affine=False``
        without either) and the running
        statistics from ``moving_mean``/``moving_variance`` as they are; a `FrozenChannelNorm` for a layer
        with ``trainable=False``. A list ``axis`` (tf.keras) gives a tuple ``channel_axis``.
    """
    cfg = _config_of(layer, config)
    named = _named_weights(layer, cfg)
    axis = cfg["axis"]
    axis = tuple(int(a) for a in axis) if isinstance(axis, (list, tuple)) else int(axis)
    mean = torch.as_tensor(named["moving_mean"]).reshape(-1)
    factory = {"dtype": dtype if dtype is not None else torch.get_default_dtype(), "device": device}
    num_channels = mean.numel()
    if not cfg["trainable"]:
        if isinstance(axis, tuple) and len(axis) > 1:
            raise ValueError(f"from_keras_batchnorm: a non-trainable layer becomes a FrozenChannelNorm, which takes "
                             f"one axis, got axis={list(axis)}")
        norm = FrozenChannelNorm(num_channels, eps=cfg["epsilon"], channel_axis=axis[0] if isinstance(axis, tuple)
                                 else axis, **factory)
    else:
        norm = ChannelNorm(num_channels, eps=cfg["epsilon"], momentum=momentum_from_decay(cfg["momentum"]),
                           affine=bool(cfg["scale"] or cfg["center"]), channel_axis=axis, bias=bool(cfg["center"]),
                           **factory)
    with torch.no_grad():
        for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                             ("running_var", "moving_variance")):
            target = getattr(norm, ours)
            if target is None:
                continue
            if theirs in named:
                value = torch.as_tensor(named[theirs]).reshape(-1)
                if value.numel() != num_channels:
                    raise ValueError(f"from_keras_batchnorm: {theirs} has {value.numel()} values, moving_mean "
                                     f"{num_channels}")
                target.copy_(value)
            elif isinstance(target, nn.Parameter) and ours == "weight":
                target.requires_grad_(False)  # scale=False: Keras multiplies by 1 and learns no scale
    return norm


def to_keras_batchnorm(norm: nn.Module) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The config and weights of a Keras ``BatchNormalization`` layer that computes what ``norm`` computes.

    ``keras.layers.BatchNormalization(**config)``, built for the input shape, then
    ``layer.set_weights(weights)``, gives Keras' equal of ``norm`` (the running variance is exported as
    it is; see the module notes on the variance conventions).

    Args:
        norm: a `ChannelNorm` (the class itself, not a subclass with other semantics), a
            `FrozenChannelNorm` or an ``nn.BatchNorm1d/2d/3d``, with running statistics and one int
            channel axis (Keras 3 takes one).

    Returns:
        ``(config, weights)``: ``config`` with ``axis``, ``momentum`` (``1 - norm.momentum``), ``epsilon``,
        ``center``, ``scale`` and ``trainable`` (False for a frozen norm); ``weights`` as float32 arrays in
        ``get_weights()`` order. A norm Keras cannot express (no running statistics, ``momentum=None``, a
        tuple channel axis, another class) is a ``ValueError`` or ``TypeError`` saying why.
    """
    frozen = isinstance(norm, FrozenChannelNorm)
    if not (frozen or type(norm) is ChannelNorm or type(norm) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        raise TypeError(f"to_keras_batchnorm: expected a ChannelNorm, FrozenChannelNorm or nn.BatchNorm*d, got "
                        f"{type(norm).__name__}")
    if getattr(norm, "running_mean", None) is None:
        raise ValueError("to_keras_batchnorm: the norm has no running statistics (track_running_stats=False), which "
                         "Keras' BatchNormalization always keeps and uses in inference")
    axis = getattr(norm, "channel_axis", 1)
    if isinstance(axis, tuple):
        raise ValueError(f"to_keras_batchnorm: Keras 3's BatchNormalization takes one axis, the norm has "
                         f"channel_axis={axis}")
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    config = {"axis": axis, "epsilon": float(norm.eps), "center": bias is not None, "scale": weight is not None,
              "momentum": 0.99 if frozen else decay_from_momentum(norm.momentum), "trainable": not frozen}
    arrays = [t for t in (weight, bias) if t is not None] + [norm.running_mean, norm.running_var]
    return config, [t.detach().to(device="cpu", dtype=torch.float32).numpy().copy() for t in arrays]
