"""Checks the model tools run on a whole model before changing it, so a mistake is named, not obscure."""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from ..modules import ChannelNorm, SyncChannelNorm, module_traits


def refuse_uninitialized_norms(model: nn.Module, tool: str) -> None:
    """A lazy norm (``nn.LazyBatchNorm2d``, ...) has no channel count, parameters or statistics before its first
    forward: name it instead of failing on its 0 channels or uninitialized buffers."""
    for name, m in model.named_modules():
        if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() and module_traits(m) is not None:
            where = repr(name) if name else "(the model itself)"
            becomes = getattr(m, "cls_to_become", None)
            after = f" (it then becomes a {becomes.__name__})" if becomes is not None else ""
            raise ValueError(f"{tool}: norm layer {where} is a {type(m).__name__} whose channel count is not known "
                             f"before its first forward; run the model once on an example batch first{after}")


def refuse_training_norms(model: nn.Module, tool: str) -> None:
    """A model left in training mode: its channel norms normalize with batch statistics, so there is nothing
    fixed to fold. Say so (as torch's ``fuse_conv_bn_eval`` refuses them) instead of folding nothing
    silently. A model in eval mode with a norm switched back to training on purpose is not refused (the
    report lists that norm)."""
    if not model.training:
        return
    training = [name or "(the model itself)" for name, m in model.named_modules()
                if m.training and (isinstance(m, _BatchNorm) or type(m) in (ChannelNorm, SyncChannelNorm))
                and m.track_running_stats]
    if training:
        more = f" and {len(training) - 1} more" if len(training) > 1 else ""
        raise ValueError(f"{tool}: the model is in training mode, and norm layer {training[0]!r}{more} with it, "
                         f"where it normalizes with batch statistics, so it cannot be folded; call model.eval() "
                         f"first")
