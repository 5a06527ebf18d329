"""Aggregation over seeds: one row per (norm, batch size), mean and sample standard deviation."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Optional

from .config import ExperimentConfig
from .rundir import finished_record, write_json_atomic
from .storage import write_atomic
from .train import RunSpec

# per-run values that get a mean and a std over the seeds that did not diverge
AVERAGED = ("eval_error", "batch_stat_error", "train_eval_gap", "loss_at_quarter", "final_train_loss", "seconds")


def mean_std(values: Iterable[Optional[float]]) -> tuple[Optional[float], Optional[float], int]:
    """Mean, sample standard deviation (ddof=1; None for fewer than two values) and count of the
    finite values; (None, None, 0) when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None, 0
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, None, len(finite)
    variance = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(variance), len(finite)


def collect(out: Path, config: ExperimentConfig) -> list[dict[str, Any]]:
    """The finished records of the runs in ``config``'s grid (unfinished ones are missing; an invalid
    one, or one of other settings, is a RunDirectoryError naming its file, never averaged in)."""
    records = []
    for norm in config.norms:
        for bs in config.batch_sizes:
            for seed in config.seeds:
                record = finished_record(out, RunSpec(norm, bs, seed), config)
                if record is not None:
                    records.append(record)
    return records


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (norm, batch size), in the order the records first name them. Diverged runs are
    counted (``diverged``) and left out of the means: their error is not a property of the norm's
    accuracy but of its failure, which the report lists separately."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["norm"], int(record["batch_size"])), []).append(record)
    rows = []
    for (norm, bs), runs in groups.items():
        healthy = [r for r in runs if not r["diverged"]]
        row: dict[str, Any] = {"norm": norm, "batch_size": bs, "runs": len(runs),
                               "diverged": len(runs) - len(healthy),
                               "seeds": sorted(int(r["seed"]) for r in runs)}
        for key in AVERAGED:
            mean, std, _ = mean_std(r.get(key) for r in healthy)
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        reached = [r["samples_to_target"] for r in healthy if r.get("samples_to_target") is not None]
        row["reached_target"] = len(reached)
        row["samples_to_target_mean"] = mean_std(reached)[0]
        row["steps_to_target_mean"] = None if not reached else row["samples_to_target_mean"] / bs
        row["samples"] = max(int(r["planned_samples"]) for r in runs)
        rows.append(row)
    return rows


def write_results(rows: list[dict[str, Any]], out: Path) -> None:
    """``results.json`` (the rows as they are) and ``results.csv`` (same columns, seeds joined by ';')."""
    write_json_atomic(out / "results.json", rows, root=out)
    handle = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (";".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v))
                             for k, v in row.items()})
    write_atomic(out / "results.csv", handle.getvalue(), root=out)
