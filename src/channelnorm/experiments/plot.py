"""Plots: error against normalization batch (decoupled and coupled) and error against steps.

Bars are 95 % confidence intervals (t, over seeds), clipped to [0, 100]. The y range is set by
the cells that matter (channel norm's cells and the batch-independent norms near them); a norm far
off that range (no norm, a diverged cell) is named in a note instead of squashing the lines.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in worker processes and CI
import matplotlib.pyplot as plt  # noqa: E402

from .storage import write_atomic  # noqa: E402

EVAL_LABELS = {"ema": "running (EMA) statistics", "precise": "precise population statistics",
               "batch": "statistics of each test batch"}


def _save(fig, path: Path) -> None:
    """The figure as PNG, written atomically and never through a link in the file's place."""
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, image.getvalue(), root=Path(path).parent)


def _yerr(row: dict[str, Any]) -> tuple[float, float]:
    if row["ci95"] is None:
        return 0.0, 0.0
    low, high = max(0.0, row["ci95"][0]), min(100.0, row["ci95"][1])
    return row["mean"] - low, high - row["mean"]


def _errorbar(ax, rows: list[dict[str, Any]], label: str, **style) -> None:
    rows = [r for r in rows if r is not None]
    if not rows:
        return
    errs = [_yerr(r) for r in rows]
    ax.errorbar([r["norm_batch"] for r in rows], [r["mean"] for r in rows],
                yerr=[[e[0] for e in errs], [e[1] for e in errs]], marker="o", capsize=3, label=label, **style)


def _batch_axis(ax, batches: list[int]) -> None:
    ordered = sorted(set(batches), reverse=True)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ordered)
    ax.set_xticklabels([str(b) for b in ordered])
    ax.set_xlim(max(ordered) * 1.3, min(ordered) / 1.3)     # large batch on the left, as the GN paper
    ax.grid(True, alpha=0.3)


def plot_batch_panels(rows: list[dict[str, Any]], sgd_batch: int, path: Path, title: str) -> None:
    """Left: decoupled (SGD batch fixed), channel norm per evaluation against its normalization
    batch, batch-independent norms as bands. Right: coupled (SGD batch = normalization batch)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    channel = {e: sorted((r for r in rows if r["norm"] == "channel" and r["protocol"] == "decoupled"
                          and r["eval"] == e and r["sgd_batch"] == sgd_batch), key=lambda r: -r["norm_batch"])
               for e in EVAL_LABELS}
    for e, label in EVAL_LABELS.items():
        _errorbar(left, channel[e], f"channel, {label}")
    focus = [r["mean"] for rs in channel.values() for r in rs]
    low, high = (min(focus), max(focus)) if focus else (0.0, 100.0)
    span = max(high - low, 2.0)
    off_scale = []
    others = [r for r in rows if r["protocol"] == "decoupled" and r["eval"] == "ema" and r["norm"] != "channel"
              and r["norm_batch"] == sgd_batch]
    batches = [r["norm_batch"] for rs in channel.values() for r in rs] or [sgd_batch]
    colours = iter(["tab:red", "tab:purple", "tab:brown", "tab:gray", "tab:olive", "tab:cyan", "tab:pink"])
    for r in others:
        if not r["converged"]:
            off_scale.append(f"{r['norm']} {r['mean']:.1f} % (not converged)")
            continue
        if r["mean"] > high + 3 * span or r["mean"] < low - 3 * span:
            off_scale.append(f"{r['norm']} {r['mean']:.1f} %")
            continue
        colour = next(colours, "black")
        left.axhline(r["mean"], linestyle="--", linewidth=1, color=colour, label=f"{r['norm']} (trained once, EMA)")
        if r["ci95"] is not None:
            left.axhspan(max(0.0, r["ci95"][0]), min(100.0, r["ci95"][1]), color=colour, alpha=0.10)
    _batch_axis(left, batches)
    left.set_xlabel(f"normalization batch (SGD batch {sgd_batch})")
    left.set_ylabel("test error (%), bars: 95 % CI")
    left.set_title("decoupled: only the normalization batch changes", fontsize=10)
    if off_scale:
        left.text(0.02, 0.98, "not drawn: " + ", ".join(off_scale), transform=left.transAxes, fontsize=7, va="top")
    if left.get_legend_handles_labels()[0]:     # nothing to label when no cell is drawn
        left.legend(fontsize=7, loc="lower right")

    coupled_norms = list(dict.fromkeys(r["norm"] for r in rows if r["protocol"] == "coupled"))
    for norm in coupled_norms:
        _errorbar(right, sorted((r for r in rows if r["protocol"] == "coupled" and r["norm"] == norm
                                 and r["eval"] == "ema"), key=lambda r: -r["norm_batch"]), f"{norm} (EMA)")
    coupled_batches = [r["norm_batch"] for r in rows if r["protocol"] == "coupled"]
    if coupled_batches:
        _batch_axis(right, coupled_batches)
    right.set_xlabel("batch (SGD batch = normalization batch; LR scaled linearly)")
    right.set_ylabel("test error (%), bars: 95 % CI")
    right.set_title("coupled (--full): small-SGD-batch training", fontsize=10)
    if coupled_norms:
        right.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_curves(rows: list[dict[str, Any]], sgd_batch: int, path: Path, target: Optional[float]) -> None:
    """Test error (per-batch statistics, curve subset) against steps, mean over seeds, per norm at
    the SGD batch (decoupled)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for r in rows:
        if r["protocol"] != "decoupled" or r["eval"] != "ema" or r["norm_batch"] != sgd_batch or not r["curve"]:
            continue
        curves = [c for c in r["curve"] if c]        # a seed that diverged early has none
        if not curves:
            continue
        steps = [s for s, _ in max(curves, key=len)]
        means = [sum(c[i][1] for c in curves if len(c) > i) / sum(1 for c in curves if len(c) > i)
                 for i in range(len(steps))]
        ax.plot(steps, means, marker=".", label=f"{r['norm']} (LR {r['peak_lr']:.3g})")
    if target is not None:
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label=f"target {target:g} %")
    ax.set_yscale("log")
    ax.set_xlabel(f"steps (SGD batch {sgd_batch})")
    ax.set_ylabel("test error (%, per-batch statistics), mean over seeds")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
