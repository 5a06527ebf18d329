"""Functional API: validate, then dispatch to a backend. No math here.

``core``: the family (channel, group, layer, layer-2d, instance norm and their fused norm + activation forms);
``robust``: the batch-robust variants; ``sync``: synchronized channel norm. The argument checks they
share are ``channelnorm._checks``, below both this package and ``ops``.
"""
from .core import (
    channel_norm, channel_norm_act, group_norm, group_norm_act, instance_norm, layer_norm, layer_norm_2d,
)
from .robust import batch_renorm, evonorm_b0, evonorm_s0, filter_response_norm, ghost_norm, standardize_weight

__all__ = ["channel_norm", "group_norm", "layer_norm", "layer_norm_2d", "instance_norm", "channel_norm_act",
           "group_norm_act", "batch_renorm", "ghost_norm", "filter_response_norm", "evonorm_s0", "evonorm_b0", "standardize_weight"]
