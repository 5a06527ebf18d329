"""``results.json``: one row per main cell (norm, protocol, normalization batch, SGD batch) and
evaluation with the per-seed test errors, their mean and 95 % t interval, whether every seed
converged, and the per-seed error curves and their areas; ``variants.json``: the same rows for the
variant cells (learning-rate grid, frozen tail), each with its ``variant``."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional

from .analysis import analyse, verdicts
from .config import ConfigError, ExperimentConfig
from .grid import EVALS, Cell, cell_seeds, coupled_views, main_cells, plan, variant_cells
from .outcome import analysed_row, curve_area, row_outcome_problem
from .rundir import finished_record, read_config, read_environment, run_kind, write_json_atomic
from .stats import interval_problem, is_finite_number, mean_ci, per_seed_problem
from .storage import read_json, write_atomic


def collect(out: Path, config: ExperimentConfig) -> dict[str, list[dict[str, Any]]]:
    """{cell_id: finished seed records} for the cells of ``config``'s grid (unfinished seeds missing;
    an invalid record, or one of other settings, is a RunDirectoryError naming its file, never used)."""
    found = {}
    for cell in plan(config):
        records = [r for r in (finished_record(out, cell.key(s), config) for s in cell_seeds(cell, config)) if r is not None]
        if records:
            found[cell.cell_id] = records
    return found


def _row(cell: Cell, records: list[dict[str, Any]], evaluation: str, shared: bool) -> dict[str, Any]:
    records = sorted(records, key=lambda r: r["seed"])
    errors = [float(r["errors"][evaluation]) for r in records]
    m, ci = mean_ci(errors)
    return {
        "norm": cell.norm, "protocol": cell.protocol, "norm_batch": cell.norm_batch, "sgd_batch": cell.sgd_batch,
        "eval": evaluation, "seeds": [r["seed"] for r in records], "errors": errors, "mean": m,
        "ci95": None if ci is None else [ci[0], ci[1]],
        "converged": all(r["converged"] for r in records),
        "final_train_loss": [r["final_train_loss"] for r in records],
        "diverged": sum(bool(r["diverged"]) for r in records),
        "peak_lr": records[0]["peak_lr"], "steps": records[0]["steps"], "samples": records[0]["samples"],
        "steps_to_target": [r["steps_to_target"] for r in records],
        "curve": [r["curve"] for r in records],
        "curve_area": [curve_area(r["curve"]) for r in records],
        "runs_shared_with": "decoupled" if shared else None,
        **({"variant": cell.variant, "lr_scale": cell.lr_scale, "frozen_tail": cell.frozen_tail}
           if cell.is_variant else {}),
    }


def build_rows(found: dict[str, list[dict[str, Any]]], config: ExperimentConfig) -> list[dict[str, Any]]:
    """The rows of ``results.json`` (decoupled cells in grid order, then the coupled views)."""
    rows = []
    for cell in main_cells(config):
        if cell.protocol == "decoupled" and cell.cell_id in found:
            rows += [_row(cell, found[cell.cell_id], e, False) for e in EVALS]
    for shown, source in coupled_views(config):
        if source.cell_id in found:
            rows += [_row(shown, found[source.cell_id], e, source != shown) for e in EVALS]
    return rows


def build_variant_rows(found: dict[str, list[dict[str, Any]]], config: ExperimentConfig) -> list[dict[str, Any]]:
    """The rows of ``variants.json``."""
    return [_row(cell, found[cell.cell_id], e, False) for cell in variant_cells(config) if cell.cell_id in found
            for e in EVALS]


CSV_COLUMNS = ("norm", "protocol", "norm_batch", "sgd_batch", "eval", "seeds", "errors", "mean", "ci95",
               "converged", "final_train_loss", "diverged", "peak_lr", "steps", "runs_shared_with")


def write_results(rows: list[dict[str, Any]], out: Path, variant_rows: Optional[list[dict[str, Any]]] = None) -> None:
    """``results.json`` (the rows), ``results.csv`` (the main columns, lists joined by ';') and
    ``variants.json`` (the variant cells' rows)."""
    write_json_atomic(out / "results.json", rows, root=out)
    write_json_atomic(out / "variants.json", variant_rows or [], root=out)
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (";".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row[k])
                             if isinstance(row[k], list) else ("" if row[k] is None else row[k]))
                         for k in CSV_COLUMNS})
    write_atomic(out / "results.csv", handle.getvalue(), root=out)


def read_finished_run(path: Path, label: str) -> tuple[ExperimentConfig, list[dict[str, Any]], dict[str, Any]]:
    """``config.json`` (as a config), ``results.json`` and ``environment.json`` of the finished compare run
    in ``path``, read as the run directory's own files are (``storage.read_json``: never through a link,
    never blocking on a FIFO, strict JSON of the right type), its rows checked to be the finished grid of
    its config (``rows_problem``); a ConfigError naming ``label`` (the flag or command that named it) and
    ``path``."""
    path = Path(path)
    try:
        if run_kind(path) == "tune":
            raise ConfigError("it holds a tune run (channelnorm tune)")
        config = read_config(path / "config.json", path)
        rows = read_json(path / "results.json", path, list)
        environment = read_environment(path / "environment.json", path)
    except (OSError, ConfigError) as error:
        raise ConfigError(f"{label} {str(path)!r} holds no finished compare run: {error}") from error
    problem = rows_problem(rows, config)
    if problem:
        raise ConfigError(f"{label} {str(path)!r} holds no finished compare run of its settings: {problem}")
    return config, rows, environment


ROW_KEY = ("norm", "protocol", "norm_batch", "sgd_batch", "eval")


def rows_problem(rows: Any, config: ExperimentConfig) -> Optional[str]:
    """What keeps ``rows`` (a results.json) from being the finished grid of ``config``, or None: one
    row per planned cell and evaluation, each with what a run can produce (``row_problem``), and
    rows the analysis reads."""
    if not (isinstance(rows, list) and all(isinstance(r, dict) for r in rows)):
        return f"results.json must be a list of row objects, got {str(rows)[:80]}"
    expected = {(c.norm, c.protocol, c.norm_batch, c.sgd_batch, e) for c in main_cells(config)
                if c.protocol == "decoupled" for e in EVALS}
    expected |= {(c.norm, c.protocol, c.norm_batch, c.sgd_batch, e) for c, _ in coupled_views(config) for e in EVALS}
    seen = set()
    for row in rows:
        missing = [k for k in ROW_KEY + ("errors", "mean") if k not in row]
        if missing:
            return f"a row has no {', '.join(missing)}: {str(row)[:120]}"
        key = tuple(row[k] for k in ROW_KEY)
        if not (all(isinstance(row[k], str) for k in ("norm", "protocol", "eval"))
                and all(type(row[k]) is int for k in ("norm_batch", "sgd_batch"))):
            return f"a row's {', '.join(ROW_KEY)} must be strings and integers, got {str(key)[:120]}"
        if key not in expected:
            return f"row {key} is not a cell of this grid"
        if key in seen:
            return f"row {key} is given twice"
        seen.add(key)
        problem = row_problem(row, config.seeds)
        if problem:
            return f"row {key}: {problem}"
    if seen != expected:
        return f"{len(expected - seen)} rows of the grid are missing, e.g. {sorted(expected - seen, key=str)[0]}"
    try:
        verdicts(analyse([analysed_row(row, config) for row in rows], config))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError) as error:
        return f"its rows cannot be analysed ({type(error).__name__}: {error})"
    return None


def row_problem(row: dict[str, Any], seeds: tuple[int, ...]) -> Optional[str]:
    """What keeps one results row from being what ``build_rows`` writes for a run of ``seeds``, or
    None: the run's seeds (distinct integers, any order), one test error in [0, 100] % per seed and
    their mean and 95 % interval, per-seed final losses, curves and steps to the target, a divergence
    count that covers the seeds without a loss, a positive peak rate and samples = steps x SGD batch."""
    count = len(seeds)
    row_seeds = row.get("seeds")
    if not (isinstance(row_seeds, list) and all(type(s) is int for s in row_seeds)
            and len(set(row_seeds)) == len(row_seeds) == count and set(row_seeds) == set(seeds)):
        return f"seeds must be the run's seeds {sorted(seeds)}, each once, got {str(row_seeds)[:80]}"
    problem = (per_seed_problem(row["errors"], row["mean"], count, "errors", 0.0, 100.0)
               or interval_problem(row.get("ci95"), row["errors"]) or row_outcome_problem(row, count))
    if problem:
        return problem
    if sum(loss is None for loss in row["final_train_loss"]) > row["diverged"]:
        return (f"final_train_loss {row['final_train_loss']} has a seed without a loss that did not diverge "
                f"(diverged {row['diverged']})")
    if type(row.get("converged")) is not bool:
        return f"converged must be true or false, got {row.get('converged')!r}"
    if not (is_finite_number(row.get("peak_lr")) and row["peak_lr"] > 0):
        return f"peak_lr must be a finite number > 0, got {row.get('peak_lr')!r}"
    steps, samples = row.get("steps"), row.get("samples")
    if not (type(steps) is int and steps >= 1 and type(samples) is int and samples == steps * row["sgd_batch"]):
        return f"steps {steps!r} and samples {samples!r} must be whole numbers with samples = steps x SGD batch"
    reached = row.get("steps_to_target")
    if not (isinstance(reached, list) and len(reached) == count
            and all(s is None or (type(s) is int and 0 <= s <= steps) for s in reached)):
        return f"steps_to_target must be {count} steps from 0 to {steps} or nulls, got {str(reached)[:80]}"
    if row.get("runs_shared_with") not in (None, "decoupled"):
        return f"runs_shared_with must be null or 'decoupled', got {row.get('runs_shared_with')!r}"
    return None
