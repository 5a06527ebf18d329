"""``error_vs_batch.png``: error against batch size, one line per norm, in the Group Norm paper's style."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in worker processes and CI
import matplotlib.pyplot as plt  # noqa: E402

from .storage import write_atomic  # noqa: E402

PANELS = (("eval_error", "eval mode (running statistics)"),
          ("batch_stat_error", "train mode (statistics of test batches of that size)"))


def plot_error_vs_batch(rows: list[dict[str, Any]], norms: tuple[str, ...], batch_sizes: tuple[int, ...],
                        path: Path, title: str) -> None:
    """Two panels (running-statistics error, batch-statistics error); x is the batch size on a log2
    axis running from large to small, as in the paper's Figure 1; error bars are one std over seeds."""
    by_key = {(r["norm"], r["batch_size"]): r for r in rows}
    ordered = sorted(batch_sizes, reverse=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, (key, label) in zip(axes, PANELS):
        for norm in norms:
            xs, ys, es = [], [], []
            for bs in ordered:
                row = by_key.get((norm, bs))
                if row is None or row[f"{key}_mean"] is None:
                    continue
                xs.append(bs)
                ys.append(100 * row[f"{key}_mean"])
                es.append(100 * (row[f"{key}_std"] or 0.0))
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=norm)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ordered)
        ax.set_xticklabels([str(b) for b in ordered])
        ax.set_xlim(max(ordered) * 1.3, min(ordered) / 1.3)   # descending: large batch on the left
        ax.set_xlabel("batch size (images per step)")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test error (%)")
    if axes[0].get_legend_handles_labels()[0]:      # nothing to label when every run diverged
        axes[0].legend(title="norm", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, image.getvalue())        # never through a link in the file's place
