"""``diagnose``: what each norm layer does to a model on the user's own batches.

The measurements users make by hand when a model is good in ``train()`` and bad in ``eval()``:
running statistics far from the population statistics (stale), batch statistics so noisy at this
batch size that training sees materially different activations than inference (small-batch noise),
batches that bring non-finite values into a layer, and how far the model's output moves between
``train()`` and ``eval()``. The report and its vocabulary are in ``diagnosis.py``.

Two passes over the batches, both under ``torch.no_grad``, the model's buffers put back after every
forward: (1) statistics, in ``train()``: each batch-statistics layer's population statistics, merged
exactly as ``recompute_stats`` merges them, and which layers saw non-finite inputs; (2) measurement,
per batch a ``train()`` forward, in which each batch-statistics layer's output is compared with the
same layer normalizing the same input with the population statistics, then an ``eval()`` forward.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Iterator
from typing import Optional

import torch
from torch import nn

from ..functional import _validation as _checks
from ..modules import NormTraits, module_traits
from .diagnosis import DiagnosisReport, LayerDiagnosis
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


class _Batches:
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


class _Layer:
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


def _watch_input(layer: _Layer):
    def pre_hook(module, args, kwargs):
        x, _ = input_and_mask(module, args, kwargs)
        layer.reached = True
        layer.bad = layer.bad or not bool(torch.isfinite(x).all())
    return pre_hook


def _population_normalizer(layer: _Layer) -> nn.Module:
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


def _compare_with_population(layer: _Layer):
    def hook(module, args, kwargs, output):
        if not module.training or not isinstance(output, torch.Tensor):
            return   # the eval forward, or a model whose train() keeps this layer in eval
        reference = layer.normalizer.forward(*args, **kwargs)
        difference = output.detach().double() - reference.double()
        if torch.isfinite(difference).all():
            layer.difference.add(difference, None)
            layer.reference.add(reference, None)
    return hook


class _ModelState:
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


class _Gap:
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


def _statistics_pass(model: nn.Module, batches: _Batches, layers: list[_Layer], state: _ModelState) -> dict:
    handles = [layer.module.register_forward_pre_hook(_watch_input(layer), with_kwargs=True) for layer in layers]
    handles += [layer.module.register_forward_pre_hook(population_pre_hook(layer.population), with_kwargs=True)
                for layer in layers if layer.population is not None]
    seen, non_finite_inputs, batch_size = 0, 0, None
    try:
        for batch in batches:
            x = _model_input(batch)
            if isinstance(x, torch.Tensor):
                if batch_size is None and x.ndim:
                    batch_size = x.shape[0]
                if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                    non_finite_inputs += 1
            model.train()
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


def _measurement_pass(model: nn.Module, batches: _Batches, layers: list[_Layer], state: _ModelState) -> _Gap:
    compared = [layer for layer in layers if layer.population is not None and layer.population.n >= 2]
    for layer in compared:
        layer.normalizer = _population_normalizer(layer)
    handles = [layer.module.register_forward_hook(_compare_with_population(layer), with_kwargs=True)
               for layer in compared]
    gap = _Gap()
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


def _stale_metrics(layer: _Layer) -> tuple[Optional[float], Optional[float]]:
    """(worst channel's |running mean - population mean| in population standard deviations,
    the running/population variance ratio of the channel furthest from 1 on a log scale)."""
    module, population = layer.module, layer.population
    if population is None or population.n < 2 or not getattr(module, "track_running_stats", False):
        return None, None
    eps = float(module.eps)
    population_var = layer.population_var()
    mean_shift = var_ratio = None
    running_mean = module._buffers.get("running_mean")
    if running_mean is not None:
        shift = (running_mean.double() - population.mean).abs() / torch.sqrt(population_var + eps)
        mean_shift = float(shift.max()) if bool(torch.isfinite(shift).all()) else math.nan
    running_var = module._buffers.get("running_var")
    if running_var is not None:
        ratio = (running_var.double() + eps) / (population_var + eps)
        worst = ratio[ratio.log().abs().argmax()] if bool(torch.isfinite(ratio.log()).all()) else math.nan
        var_ratio = float(worst)
    return mean_shift, var_ratio


def _noise_metrics(layer: _Layer) -> tuple[Optional[float], Optional[float]]:
    """(relative RMS difference of train-mode and population-normalized outputs over the layer's
    channels, the same for its worst channel)."""
    difference, reference = layer.difference, layer.reference
    if not layer.traits.uses_batch_statistics or difference.n == 0:
        return None, None
    mean_square = difference.m2 / difference.n + difference.mean.square()
    spread = torch.sqrt(reference.m2 / reference.n)     # the reference output's standard deviation
    live = spread > 0                                   # a channel constant in both is no evidence
    if not bool(live.any()):
        return 0.0, 0.0
    per_channel = torch.sqrt(mean_square[live]) / spread[live]
    return float(per_channel.square().mean().sqrt()), float(per_channel.max())


def _exceeds(value: Optional[float], limit: float) -> bool:
    return value is not None and not value <= limit   # NaN (non-finite running statistics) exceeds too


def _layer_row(layer: _Layer, thresholds: dict[str, float]) -> LayerDiagnosis:
    mean_shift, var_ratio = _stale_metrics(layer)
    noise, noise_max = _noise_metrics(layer)
    findings = []
    ratio_factor = None if var_ratio is None else max(var_ratio, 1 / var_ratio)   # NaN stays NaN
    if _exceeds(mean_shift, thresholds["max_mean_shift"]) or _exceeds(ratio_factor, thresholds["max_var_ratio"]):
        findings.append("stale_running_stats")
    if _exceeds(noise, thresholds["max_noise"]):
        findings.append("small_batch_noise")
    if layer.non_finite:
        findings.append("non_finite")
    metrics = {"batches": layer.batches, "non_finite_batches": layer.non_finite,
               "values": layer.population.n if layer.population is not None else None,
               "mean_shift": mean_shift, "var_ratio": var_ratio, "noise": noise, "noise_max": noise_max}
    return LayerDiagnosis(layer.name, type(layer.module).__name__, layer.traits.scope, tuple(findings), metrics)


def _positive(name: str, value, above: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > above or math.isinf(value):
        raise ValueError(f"diagnose: {name} must be a finite number > {above:g}, got {value!r}")
    return float(value)


def diagnose(model: nn.Module, batches: Iterable, max_batches: Optional[int] = None, *,
             max_mean_shift: float = 0.5, max_var_ratio: float = 2.0, max_noise: float = 0.25,
             max_output_change: float = 0.5) -> DiagnosisReport:
    """Measure what every norm layer of ``model`` does on ``batches``, and leave the model as it was.

    One row per norm layer (every module `module_traits` knows: this library's norms and torch's
    BatchNorm, SyncBatchNorm, InstanceNorm and GroupNorm), in module order, with findings from the
    fixed vocabulary `DiagnosisReport.FINDINGS`, the numbers behind them, and the model-level
    train/eval gap. Two passes over the batches under ``torch.no_grad`` (statistics, in ``train()``;
    then per batch one ``train()`` and one ``eval()`` forward), so a one-shot iterator is read once
    into memory, and any other iterable (list, DataLoader) is iterated twice. Population statistics
    are those of this process (no all-reduce across a process group). Modules other than norms
    switch with ``train()``/``eval()`` too (dropout), and forward hooks the user registered run.

    The model is left exactly as it was, also when a batch raises: parameters (never written),
    buffers (running statistics, ``num_batches_tracked``: put back after every forward), each
    module's training flag and its hooks (diagnose's own are removed). Nothing of a batch with
    non-finite values reaches any statistic: the user's are never updated, and such a batch is left
    out of the population statistics, the noise and the train/eval gap.

    Args:
        model: any ``nn.Module`` (torch's norms, this library's, mixed). Called as ``model(input)``.
        batches: an iterable of batches at the batch size you train with (move them to the model's
            device yourself). A batch is the model's input (a tensor), a list/tuple whose first
            element is the input (``(input, target, ...)``), or a dict whose ``"input"`` is the input.
        max_batches: use at most this many batches (> 0); None uses them all. Default: None.
        max_mean_shift: ``stale_running_stats`` when a channel's running mean is further than this
            from its population mean, in population standard deviations (``mean_shift``). Default:
            0.5: eval would shift that channel by half its spread; a running mean that tracks its
            weights (momentum 0.1) stays below ~0.2 in the worst of hundreds of channels at batch 32.
        max_var_ratio: ``stale_running_stats`` when a channel's ``(running_var + eps) /
            (population_var + eps)`` is above this or below its inverse (``var_ratio``), > 1.
            Default: 2.0: eval would scale that channel's output by more than 1.41 or less than 0.71.
        max_noise: ``small_batch_noise`` when the layer's ``noise`` (the RMS over its channels of each
            channel's RMS difference between the train-mode output and the same layer normalizing
            with the population statistics, in units of that population-normalized output's standard
            deviation) is above this. Default: 0.25: the noise of statistics over ~24 independent
            values (it is about sqrt(1.5 / n) for n of them), i.e. a batch of 24 without spatial axes.
        max_output_change: ``train_eval_gap`` when the model's output moves between ``train()`` and
            ``eval()`` by more than this, relative (``output_change``: RMS of the change over RMS of
            the eval output). Default: 0.1.

    Returns:
        A `DiagnosisReport`: ``.layers`` (one `LayerDiagnosis` per norm layer), ``.findings`` and
        ``.metrics`` (model level), ``str(report)`` a table, ``report.to_dict()``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"diagnose: model must be an nn.Module, got {type(model).__name__}")
    if max_batches is not None:
        max_batches = _checks.positive_int("max_batches", max_batches)
    thresholds = {"max_mean_shift": _positive("max_mean_shift", max_mean_shift),
                  "max_var_ratio": _positive("max_var_ratio", max_var_ratio, above=1.0),
                  "max_noise": _positive("max_noise", max_noise),
                  "max_output_change": _positive("max_output_change", max_output_change)}
    source = _Batches(batches, max_batches)
    layers = [_Layer(name, m, traits) for name, m in model.named_modules() if (traits := module_traits(m)) is not None]
    state = _ModelState(model)
    try:
        with torch.no_grad():
            metrics = _statistics_pass(model, source, layers, state)
            gap = _measurement_pass(model, source, layers, state)
    finally:
        state.restore()
    metrics.update(output_change=gap.output_change(), prediction_change=gap.prediction_change(),
                   gap_batches=gap.batches)
    findings = ("train_eval_gap",) if _exceeds(metrics["output_change"], thresholds["max_output_change"]) else ()
    rows = tuple(_layer_row(layer, thresholds) for layer in layers)
    return DiagnosisReport(layers=rows, findings=findings, metrics=metrics, thresholds=thresholds)


__all__ = ["diagnose", "DiagnosisReport", "LayerDiagnosis"]
