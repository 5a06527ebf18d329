"""The two passes of ``diagnose`` over the user's batches, and what they gather per norm layer.

Both run under ``torch.no_grad`` and put the model's buffers back after every forward, so every batch
sees the model as the user gave it. (1) ``statistics_pass``, in ``train()``: each batch-statistics
layer's population statistics (``precise.Population``, as ``recompute_stats``), and which layers saw
non-finite inputs. (2) ``measurement_pass``, per batch a ``train()`` forward, in which each
batch-statistics layer's output is compared with the same layer normalizing the same input with the
population statistics, then an ``eval()`` forward for the model's train/eval gap.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Iterator
from typing import Optional

import torch
from torch import nn

from ..modules import NormTraits
from .precise import Population, input_and_mask, population_pre_hook

_OWNER = "diagnose"


def _model_input(batch):
    """What the model is called with: the batch itself (a tensor), its first element, or its "input"."""
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise ValueError("diagnose: got an empty list/tuple as a batch; its first element must be the input")
        return batch[0]
    if isinstance(batch, dict):
        if "input" not in batch:
            raise ValueError(f"diagnose: a dict batch needs the key 'input' (the model's input); got keys "
                             f"{sorted(map(str, batch))}")
        return batch["input"]
    return batch


class Batches:
    """The first ``limit`` batches, readable twice: a one-shot iterator is read once into a list; any
    other iterable (a list, a DataLoader) is iterated again for the second pass."""

    def __init__(self, batches: Iterable, limit: Optional[int]) -> None:
        if isinstance(batches, torch.Tensor):
            raise TypeError("diagnose: batches must be an iterable of batches (a list, a DataLoader, ...), got one "
                            "tensor; for a single batch x pass [x]")
        if not isinstance(batches, Iterable):
            raise TypeError(f"diagnose: batches must be an iterable of batches, got {type(batches).__name__}")
        self.source = list(itertools.islice(batches, limit)) if isinstance(batches, Iterator) else batches
        self.limit = limit

    def __iter__(self):
        return itertools.islice(iter(self.source), self.limit)


class Layer:
    """One norm layer and what the passes gather about it."""

    def __init__(self, name: str, module: nn.Module, traits: NormTraits) -> None:
        self.name, self.module, self.traits = name, module, traits
        self.axis = getattr(module, "channel_axis", 1)   # torch's norms keep channels on axis 1
        self.batches = self.non_finite = 0
        self.reached = self.bad = False                  # in the current batch
        # Batch statistics: population of the inputs (pass 1); in pass 2, the train-mode output minus
        # the population-normalized output, and the population-normalized output itself.
        self.population = Population(self.axis, _OWNER) if traits.uses_batch_statistics else None
        self.difference = Population(self.axis, _OWNER)
        self.reference = Population(self.axis, _OWNER)
        self.normalizer: Optional[nn.Module] = None

    def end_batch(self) -> None:
        self.batches += self.reached
        self.non_finite += self.bad
        self.reached = self.bad = False

    def population_var(self) -> torch.Tensor:
        """Unbiased, as ``recompute_stats`` writes it into ``running_var``."""
        return self.population.m2 / (self.population.n - 1)


def _watch_input(layer: Layer):
    def pre_hook(module, args, kwargs):
        x, _ = input_and_mask(module, args, kwargs)
        layer.reached = True
        layer.bad = layer.bad or not bool(torch.isfinite(x).all())
    return pre_hook


def _population_normalizer(layer: Layer) -> nn.Module:
    """A shallow copy of the layer in eval mode whose running statistics are the population's: it
    shares the parameters, never the user's buffers, and is called through ``forward`` (no hooks)."""
    module = layer.module
    normalizer = copy.copy(module)
    buffers = dict(module._buffers)
    kept = getattr(module, "running_stats", ("running_mean", "running_var"))  # EvoNorm-B0 keeps the variance
    statistics = {"running_mean": layer.population.mean, "running_var": layer.population_var()}
    # the dtype of the layer's own statistics, or of its affine when it keeps none (as torch's norms)
    floating = [t for t in (*module.buffers(recurse=False), *module.parameters(recurse=False)) if t.is_floating_point()]
    dtype = floating[0].dtype if floating else torch.get_default_dtype()
    for name in kept:
        buffers[name] = statistics[name].to(buffers[name].dtype if buffers.get(name) is not None else dtype)
    if buffers.get("num_batches_tracked") is None:
        buffers["num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=layer.population.mean.device)
    normalizer.__dict__["_buffers"] = buffers
    normalizer.__dict__["training"] = False
    normalizer.__dict__["track_running_stats"] = True   # eval reads the statistics even if the layer keeps none
    return normalizer


def _compare_with_population(layer: Layer):
    def hook(module, args, kwargs, output):
        if not module.training or not isinstance(output, torch.Tensor):
            return   # the eval forward, or a model whose train() keeps this layer in eval
        reference = layer.normalizer.forward(*args, **kwargs)
        difference = output.detach().double() - reference.double()
        if torch.isfinite(difference).all():
            layer.difference.add(difference, None)
            layer.reference.add(reference, None)
    return hook


class ModelState:
    """Every module's training flag and a copy of every buffer, put back with ``restore_buffers`` after
    each forward (so every batch sees the model as it was) and with ``restore`` at the end."""

    def __init__(self, model: nn.Module) -> None:
        self.modes = [(m, m.training) for m in model.modules()]
        self.buffers = [(b, b.clone()) for b in model.buffers()]

    def restore_buffers(self) -> None:
        with torch.no_grad():
            for buffer, value in self.buffers:
                buffer.copy_(value)

    def restore(self) -> None:
        self.restore_buffers()
        for m, mode in self.modes:
            m.training = mode


def _floating_tensors(output) -> list[torch.Tensor]:
    """The floating-point tensors of a model output (a tensor, or lists, tuples and dicts of them)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _floating_tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _floating_tensors(item)]
    return []


class Gap:
    """The model's output in train() against eval(), pooled over the batches where both are finite."""

    def __init__(self) -> None:
        self.squared_change = self.squared_eval = 0.0
        self.batches = self.rows = self.flips = 0
        self.classifier = True   # every output so far a single (N, K) tensor

    def add(self, trained, evaluated) -> None:
        train_out, eval_out = _floating_tensors(trained), _floating_tensors(evaluated)
        if not eval_out or len(train_out) != len(eval_out):
            return
        if not all(bool(torch.isfinite(t).all()) for t in train_out + eval_out):
            return
        for t, e in zip(train_out, eval_out):
            self.squared_change += float((t.double() - e.double()).square().sum())
            self.squared_eval += float(e.double().square().sum())
        self.batches += 1
        single = len(eval_out) == 1 and eval_out[0].ndim == 2 and eval_out[0].shape[1] >= 2
        self.classifier = self.classifier and single
        if single:
            self.rows += eval_out[0].shape[0]
            self.flips += int((train_out[0].argmax(1) != eval_out[0].argmax(1)).sum())

    def output_change(self) -> Optional[float]:
        if self.batches == 0:
            return None
        return math.sqrt(self.squared_change / self.squared_eval) if self.squared_eval > 0 else math.inf

    def prediction_change(self) -> Optional[float]:
        return self.flips / self.rows if self.batches and self.classifier and self.rows else None


def statistics_pass(model: nn.Module, batches: Batches, layers: list[Layer], state: ModelState) -> dict:
    handles = [layer.module.register_forward_pre_hook(_watch_input(layer), with_kwargs=True) for layer in layers]
    handles += [layer.module.register_forward_pre_hook(population_pre_hook(layer.population), with_kwargs=True)
                for layer in layers if layer.population is not None]
    seen, non_finite_inputs, batch_size = 0, 0, None
    model.train()
    try:
        for batch in batches:
            x = _model_input(batch)
            if isinstance(x, torch.Tensor):
                if batch_size is None and x.ndim:
                    batch_size = x.shape[0]
                if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                    non_finite_inputs += 1
            model(x)
            state.restore_buffers()
            for layer in layers:
                layer.end_batch()
            seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("diagnose: batches gave no batch")
    return {"batches": seen, "batch_size": batch_size, "non_finite_inputs": non_finite_inputs}


def measurement_pass(model: nn.Module, batches: Batches, layers: list[Layer], state: ModelState) -> Gap:
    compared = [layer for layer in layers if layer.population is not None and layer.population.n >= 2]
    for layer in compared:
        layer.normalizer = _population_normalizer(layer)
    handles = [layer.module.register_forward_hook(_compare_with_population(layer), with_kwargs=True)
               for layer in compared]
    gap = Gap()
    try:
        for batch in batches:
            x = _model_input(batch)
            model.train()
            trained = model(x)
            state.restore_buffers()
            model.eval()
            gap.add(trained, model(x))
    finally:
        for h in handles:
            h.remove()
    return gap
