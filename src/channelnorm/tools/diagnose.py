"""``diagnose``: what each norm layer does to a model on the user's own batches.

The measurements users make by hand when a model is good in ``train()`` and bad in ``eval()``:
running statistics far from the population statistics (stale), batch statistics so noisy at this
batch size that training sees materially different activations than inference (small-batch noise),
batches that bring non-finite values into a layer, and how far the model's output moves between
``train()`` and ``eval()``. The report and its vocabulary are in ``diagnosis.py``.

This module turns what the two passes gathered (``diagnose_passes.py``) into numbers and findings.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Optional

import torch
from torch import nn

from .. import _checks
from ..modules import module_traits
from .diagnose_passes import Batches, Layer, ModelState, measurement_pass, statistics_pass
from .diagnosis import DiagnosisReport, LayerDiagnosis


def _stale_metrics(layer: Layer) -> tuple[Optional[float], Optional[float]]:
    """(worst channel's |running mean - population mean| in population standard deviations,
    the running/population variance ratio of the channel furthest from 1 on a log scale)."""
    module, population = layer.module, layer.population
    if population is None or population.n < 2 or not getattr(module, "track_running_stats", False):
        return None, None
    eps = float(module.eps)
    population_var = layer.population_var()
    mean_shift = var_ratio = None
    running_mean = getattr(module, "running_mean", None)
    if running_mean is not None:
        shift = (running_mean.double() - population.mean).abs() / torch.sqrt(population_var + eps)
        mean_shift = float(shift.max()) if bool(torch.isfinite(shift).all()) else math.nan
    running_var = getattr(module, "running_var", None)
    if running_var is not None:
        ratio = (running_var.double() + eps) / (population_var + eps)
        worst = ratio[ratio.log().abs().argmax()] if bool(torch.isfinite(ratio.log()).all()) else math.nan
        var_ratio = float(worst)
    return mean_shift, var_ratio


def _noise_metrics(layer: Layer) -> tuple[Optional[float], Optional[float]]:
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


def _layer_row(layer: Layer, thresholds: dict[str, float]) -> LayerDiagnosis:
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
            weights (momentum 0.1) scatters by ~0.13 in the worst of 500 channels at batch 32 without
            spatial axes.
        max_var_ratio: ``stale_running_stats`` when a channel's ``(running_var + eps) /
            (population_var + eps)`` is above this or below its inverse (``var_ratio``), > 1.
            Default: 2.0: eval would scale that channel's output by more than 1.41 or less than 0.71.
        max_noise: ``small_batch_noise`` when the layer's ``noise`` (the RMS over its channels of each
            channel's RMS difference between the train-mode output and the same layer normalizing
            with the population statistics, in units of that population-normalized output's standard
            deviation) is above this. Default: 0.25: the noise of statistics over ~24 independent
            values (it is about sqrt(1.5 / n) for n of them), i.e. a batch of 24 without spatial axes;
            in the experiment's network the worst layer measures 0.20 at batch 8 (where the experiment
            found no test-error penalty) and 0.40 at batch 2 (where it found one).
        max_output_change: ``train_eval_gap`` when the model's output moves between ``train()`` and
            ``eval()`` by more than this, relative (``output_change``: RMS of the change over RMS of
            the eval output). Default: 0.5: in the same network 0.37 at batch 8, 0.68 at batch 2.

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
    source = Batches(batches, max_batches)
    layers = [Layer(name, m, traits) for name, m in model.named_modules() if (traits := module_traits(m)) is not None]
    state = ModelState(model)
    try:
        with torch.no_grad():
            metrics = statistics_pass(model, source, layers, state)
            gap = measurement_pass(model, source, layers, state)
    finally:
        state.restore()
    metrics.update(output_change=gap.output_change(), prediction_change=gap.prediction_change(),
                   gap_batches=gap.batches)
    findings = ("train_eval_gap",) if _exceeds(metrics["output_change"], thresholds["max_output_change"]) else ()
    rows = tuple(_layer_row(layer, thresholds) for layer in layers)
    return DiagnosisReport(layers=rows, findings=findings, metrics=metrics, thresholds=thresholds)


__all__ = ["diagnose", "DiagnosisReport", "LayerDiagnosis"]
