"""The report ``diagnose`` returns: its fixed vocabulary of findings, rows, table, dict and plot."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union


@dataclass(frozen=True)
class LayerDiagnosis:
    """What ``diagnose`` found at one norm layer.

    Attributes:
        name: the qualified module name, as ``model.named_modules()`` gives it (``"layer1.0.bn1"``).
        kind: the module's class name (``"BatchNorm2d"``, ``"ChannelNorm"``, ...).
        scope: the norm's scope trait (``"channel"``, ``"group"``, ``"layer"``, ``"instance"``).
        findings: codes from `DiagnosisReport.FINDINGS`, empty when nothing was found.
        metrics: the numbers behind the findings (None where a number does not apply to this layer):
            ``batches`` (batches whose forward reached the layer), ``non_finite_batches`` (of those,
            with a non-finite value in the layer's input), ``values`` (values per channel behind the
            population statistics; None for norms without batch statistics), ``mean_shift`` (worst
            channel's ``|running_mean - population_mean| / sqrt(population_var + eps)``),
            ``var_ratio`` (``(running_var + eps) / (population_var + eps)`` of the channel furthest
            from 1; NaN for non-finite running statistics), ``noise`` (RMS over channels of the
            train-mode vs population-normalized output difference, relative) and ``noise_max`` (its
            worst channel).
    """

    name: str
    kind: str
    scope: str
    findings: tuple[str, ...]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class DiagnosisReport:
    """The result of `diagnose`: one row per norm layer and the model-level measurements.

    Attributes:
        layers: one `LayerDiagnosis` per norm layer, in module order.
        findings: model-level codes (``"train_eval_gap"``), empty when nothing was found.
        metrics: model-level numbers: ``batches`` (batches used), ``batch_size`` (size of axis 0 of
            the first input), ``non_finite_inputs`` (batches whose input had a non-finite value),
            ``output_change`` (RMS of ``train()`` output minus ``eval()`` output over the RMS of the
            ``eval()`` output, over the ``gap_batches`` batches where both are finite), and
            ``prediction_change`` (share of samples whose argmax over axis 1 differs; only for an
            output that is one (N, K) tensor, else None).
        thresholds: the thresholds the findings were judged by (``diagnose``'s keyword arguments).
    """

    FINDINGS: ClassVar[dict[str, str]] = {
        "stale_running_stats": "running mean/variance far from the population statistics of these batches "
                               "(mean_shift > max_mean_shift or var_ratio outside [1/max_var_ratio, "
                               "max_var_ratio]); fix: cn.recompute_stats(model, batches)",
        "small_batch_noise": "at this batch size the batch statistics make train-mode outputs differ materially "
                             "from population-normalized ones (noise > max_noise); fix: a larger or synchronized "
                             "batch (cn.convert.to_sync), or a batch-independent norm (group, layer), a ghost or "
                             "frozen norm",
        "non_finite": "a batch brought NaN/Inf into this layer's input (non_finite_batches); look at the first "
                      "such layer in module order, or at the data",
        "train_eval_gap": "the model's output moves between train() and eval() by more than max_output_change "
                          "(output_change); explained by the layer findings when there are any, else by other "
                          "train-mode modules (dropout)",
    }

    layers: tuple[LayerDiagnosis, ...]
    findings: tuple[str, ...]
    metrics: dict[str, Any]
    thresholds: dict[str, float] = field(default_factory=dict)

    def layers_with(self, code: str) -> list[str]:
        """The names of the layers with finding ``code``, in module order.

        Args:
            code: a layer finding of `FINDINGS` (``"stale_running_stats"``, ...).

        Returns:
            The ``name`` of every layer whose ``findings`` include ``code``.
        """
        if code not in self.FINDINGS:
            raise ValueError(f"diagnose: unknown finding {code!r}; the findings are {sorted(self.FINDINGS)}")
        return [row.name for row in self.layers if code in row.findings]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain lists, dicts, strings and numbers (``json.dumps`` writes it; non-finite
        numbers as ``NaN``/``Infinity``).

        Returns:
            ``{"findings", "metrics", "thresholds", "layers": [{"name", "kind", "scope", "findings",
            "metrics"}, ...]}``.
        """
        return {"findings": list(self.findings), "metrics": dict(self.metrics), "thresholds": dict(self.thresholds),
                "layers": [{"name": r.name, "kind": r.kind, "scope": r.scope, "findings": list(r.findings),
                            "metrics": dict(r.metrics)} for r in self.layers]}

    def __str__(self) -> str:
        m = self.metrics
        change = _number(m.get("output_change"), 3)
        prediction = m.get("prediction_change")
        header = [f"diagnose: {m.get('batches')} batches of {m.get('batch_size')}; train()->eval() output change "
                  f"{change}" + ("" if prediction is None else f", predictions changed {100 * prediction:.1f}%")
                  + f"; model findings: {', '.join(self.findings) or 'none'}"]
        if m.get("non_finite_inputs"):
            header.append(f"{m['non_finite_inputs']} batch(es) had non-finite values in the model's input")
        columns = ("layer", "kind", "mean shift", "var ratio", "noise", "non-finite", "findings")
        rows = [(r.name or "(model)", r.kind, _number(r.metrics["mean_shift"], 2), _number(r.metrics["var_ratio"], 2),
                 _number(r.metrics["noise"], 3), str(r.metrics["non_finite_batches"]), ", ".join(r.findings) or "-")
                for r in self.layers]
        widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(columns)]
        lines = [" ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in (columns, *rows)]
        return "\n".join(header + lines)

    @staticmethod
    def plot_noise(reports: Sequence[DiagnosisReport], path: Union[str, Path]) -> Path:
        """Plot each layer's ``noise`` against the batch size of several reports (one per batch size).

        Needs matplotlib (the ``experiments`` extra), imported only here. The dashed line is the
        ``max_noise`` threshold of the first report.

        Args:
            reports: reports of the same model at different batch sizes (``metrics["batch_size"]``).
            path: the PNG file to write.

        Returns:
            ``path`` as a ``Path``.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("DiagnosisReport.plot_noise needs matplotlib: pip install 'channelnorm[experiments]'") \
                from None
        if not reports:
            raise ValueError("DiagnosisReport.plot_noise: got no reports")
        ordered = sorted(reports, key=lambda r: r.metrics["batch_size"])
        sizes = [r.metrics["batch_size"] for r in ordered]
        figure = Figure(figsize=(7, 4.5))
        FigureCanvasAgg(figure)   # no pyplot: no global state, no display
        ax = figure.add_subplot()
        for row in ordered[0].layers:
            values = [_noise_of(r, row.name) for r in ordered]
            if any(v is not None for v in values):
                ax.plot(sizes, [math.nan if v is None else v for v in values], marker="o", label=row.name)
        limit = ordered[0].thresholds.get("max_noise")
        if limit is not None:
            ax.axhline(limit, color="black", linestyle="--", linewidth=1, label="max_noise")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_xlabel("batch size")
        ax.set_ylabel("batch-statistics noise (relative RMS)")
        ax.legend(fontsize="x-small", ncol=2)
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, format="png", dpi=100)
        return path


def _noise_of(report: DiagnosisReport, name: str) -> Optional[float]:
    return next((r.metrics["noise"] for r in report.layers if r.name == name), None)


def _number(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
