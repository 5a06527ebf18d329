"""``drop_running_stats``: norms that keep no state between calls, for ``torch.func`` transforms (``vmap``
over a model, model ensembling), as ``torch.func.replace_all_batch_norm_modules_`` does for torch's
BatchNorm, which skips this library's norms."""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..modules.base import RunningStatsNorm

__all__ = ["drop_running_stats"]


def drop_running_stats(model: nn.Module) -> nn.Module:
    """Stop every norm of ``model`` from keeping running statistics, in place.

    Every norm with ``track_running_stats=True`` (this library's: ChannelNorm and its variants,
    InstanceNorm, EvoNorm-B0, the fused blocks; and torch's ``nn.BatchNorm*d``/``nn.SyncBatchNorm``)
    gets ``running_mean``, ``running_var`` and ``num_batches_tracked`` set to None and
    ``track_running_stats=False``, exactly as ``torch.func.replace_all_batch_norm_modules_`` does for
    torch's: it then normalizes with each input's own statistics in eval mode too and updates nothing in
    place, which ``torch.func.vmap`` requires. A `FrozenChannelNorm` keeps its fixed statistics (it updates
    nothing). A norm that cannot compute without running statistics (`BatchRenorm`) is a ``ValueError``
    naming it, before anything changes.

    Args:
        model: the model, changed in place.

    Returns:
        ``model`` itself.
    """
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, (RunningStatsNorm, _BatchNorm)) and m.track_running_stats]
    for name, m in found:
        if getattr(m, "needs_running_stats", False):
            raise ValueError(f"drop_running_stats: norm layer {name or '(the model itself)'!r} is a "
                             f"{type(m).__name__}, which cannot compute without its running statistics")
    for _, m in found:
        m.running_mean = None
        m.running_var = None
        m.num_batches_tracked = None
        m.track_running_stats = False
    return model
