"""``recompute_stats``: precise running statistics after training (as detectron2's PreciseBN).

Every ChannelNorm-family layer that tracks running statistics (ChannelNorm, BatchRenorm,
GhostNorm, EvoNormB0's running_var, and subclasses) and every ``torch.nn`` BatchNorm gets the
exact population mean and unbiased variance of the inputs it saw over the given batches. The
per-batch statistics are merged with Chan's pairwise formulas in float64, so the result is the
statistic of all elements at once. (detectron2 averages the per-batch variances instead, which
misses the spread of the batch means.) InstanceNorm layers are left alone.
"""
from __future__ import annotations

import inspect
import itertools
import warnings
from typing import Iterable, Optional

import torch
from torch import nn

from .. import _checks
from ..modules import module_traits
from ..modules.channel import flatten_channel_axes
from ._model_checks import refuse_uninitialized_norms
from ..ops.masked import valid_count
from ..ops.moments import chan_merge, moments, reduce_dims


def _targets(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """(layer, channel axis) for every layer whose running statistics are recomputed."""
    found = []
    for m in model.modules():
        traits = module_traits(m)
        # Running statistics estimate batch statistics only where the norm uses them in training.
        if traits is not None and traits.uses_batch_statistics and getattr(m, "track_running_stats", False):
            found.append((m, getattr(m, "channel_axis", 1)))
    return found


class Population:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch (Chan et al.).

    Shared with ``diagnose``, which gathers its population statistics the same way. ``owner`` names
    the tool in the error a bad statistics mask raises.
    """

    def __init__(self, axis: int, owner: str = "recompute_stats") -> None:
        self.axis, self.owner, self.n, self.mean, self.m2 = axis, owner, 0, None, None

    def add(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        if isinstance(self.axis, tuple):  # ChannelNorm over several axes: one merged channel axis, last
            x = flatten_channel_axes(x, self.axis, "recompute_stats")[0]
        axis = self.axis % x.ndim if isinstance(self.axis, int) else x.ndim - 1
        xf = x.detach().to(torch.float64)
        full = None
        if mask is None:
            nb = x.numel() // x.shape[axis]
        else:
            full = _checks.stats_mask(self.owner, x, axis, mask)
            nb = int(valid_count(full, x.shape, axis))
        if nb == 0:
            return
        mean, var = moments(xf, reduce_dims(x.ndim, axis), full, nb)
        mean, m2 = mean.flatten(), var.flatten() * nb
        if not (torch.isfinite(mean).all() and torch.isfinite(m2).all()):
            return  # a batch with non-finite statistics never updates running statistics
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mean, m2
            return
        counts = torch.tensor([self.n, nb], dtype=torch.float64)
        _, self.mean, self.m2 = chan_merge(counts, torch.stack([self.mean, mean]), torch.stack([self.m2, m2]))
        self.n += nb


def input_and_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The input and the statistics ``mask`` (None if its forward takes none) of a call to ``module``.

    Bound to the forward's signature: a second positional argument is a mask only where the forward
    names it so (ChannelNormAct's is the residual).
    """
    arguments = inspect.signature(module.forward).bind(*args, **kwargs).arguments
    return next(iter(arguments.values())), arguments.get("mask")


def population_pre_hook(population: Population):
    """A forward pre-hook (``with_kwargs=True``) that adds each input of the layer to ``population``."""
    def pre_hook(module, args, kwargs):
        population.add(*input_and_mask(module, args, kwargs))
    return pre_hook


def _progress(batches, total, enabled: bool):
    if not enabled:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn("recompute_stats: tqdm is not installed, so no progress bar (pip install tqdm, or pass "
                      "progress=False)", stacklevel=3)
        return batches
    return tqdm(batches, total=total, desc="recompute_stats", unit="batch")


def _forward(model: nn.Module, batch) -> None:
    # As torch.optim.swa_utils.update_bn: a (list, tuple) batch is (input, target, ...).
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    model(batch)


def recompute_stats(model: nn.Module, batches: Iterable, num_batches: Optional[int] = None,
                    progress: bool = True) -> nn.Module:
    """Set every norm's running statistics to the population statistics over ``batches``.

    ``model`` runs forward in train mode under ``torch.no_grad`` on each batch (a tensor, or a
    list/tuple whose first element is the input; move it to the model's device yourself), at most
    ``num_batches`` of them (None: all). Layers normalize with their batch statistics as in
    training, while their running statistics are held fixed (momentum 0) and replaced at the end
    by the population mean and unbiased variance of the inputs each layer saw. Momentum, each
    module's train/eval mode and every other buffer of the model (``num_batches_tracked``, i.e.
    BatchRenorm's warm-up step; InstanceNorm's running statistics; ...) are restored, and on an
    error the recomputed statistics too. A layer no batch reached is unchanged.
    Statistics are those of this process (no all-reduce across a process group).

    Args:
        model: the model, changed in place: every layer whose traits say it uses batch statistics
            and that tracks running statistics (ChannelNorm and its variants, ``nn.BatchNorm*d``).
        batches: an iterable of batches: tensors, or lists/tuples whose first element is the input.
        num_batches: use the first ``num_batches`` batches (> 0; fewer is a ``ValueError``); None
            uses them all. Default: None.
        progress: show a tqdm progress bar (a warning, no bar, when tqdm is missing). Default: True.

    Returns:
        ``model`` itself.
    """
    if num_batches is not None:
        num_batches = _checks.positive_int("num_batches", num_batches)
    if not isinstance(model, nn.Module):
        raise TypeError(f"recompute_stats: model must be an nn.Module, got {type(model).__name__}")
    refuse_uninitialized_norms(model, "recompute_stats")
    targets = _targets(model)
    modes = {m: m.training for m in model.modules()}
    momenta = [(m, m.momentum) for m, _ in targets]
    # Every buffer is put back afterwards except the recomputed statistics: the forwards must not
    # move other state (num_batches_tracked, InstanceNorm's running stats, ...).
    saved = [(b, b.clone()) for b in model.buffers()]
    populations = [Population(axis) for _, axis in targets]
    handles = [m.register_forward_pre_hook(population_pre_hook(p), with_kwargs=True)
               for (m, _), p in zip(targets, populations)]
    try:
        total = num_batches if num_batches is not None else (len(batches) if hasattr(batches, "__len__") else None)
        for m, _ in targets:
            m.momentum = 0.0
        model.train()
        seen = 0
        with torch.no_grad():
            limited = batches if num_batches is None else itertools.islice(batches, num_batches)
            for batch in _progress(limited, total, progress):
                _forward(model, batch)
                seen += 1
        if num_batches is not None and seen < num_batches:
            raise ValueError(f"recompute_stats: num_batches={num_batches} but batches gave only {seen}")
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        for h in handles:
            h.remove()
        for m, momentum in momenta:
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    with torch.no_grad():
        for (m, _), pop in zip(targets, populations):
            if pop.n < 2:
                continue  # no batch reached it (or a single value): nothing to estimate
            if m.running_mean is not None:  # EvoNorm-B0 keeps only the variance
                m.running_mean.copy_(pop.mean.to(m.running_mean.dtype))
            m.running_var.copy_((pop.m2 / (pop.n - 1)).to(m.running_var.dtype))
    return model
