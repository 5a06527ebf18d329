"""``results.json``: one row per main cell (norm, protocol, normalization batch, SGD batch) and
evaluation with the per-seed test errors, their mean and 95 % t interval, whether every seed
converged, and the per-seed error curves and their areas; ``variants.json``: the same rows for the
variant cells (learning-rate grid, frozen tail), each with its ``variant``."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional

from .analysis import analyse, verdicts
from .config import ConfigError, ExperimentConfig
from .grid import EVALS, Cell, cell_seeds, coupled_views, main_cells, plan, variant_cells
from .outcome import analysed_row, curve_area, row_outcome_problem
from .rundir import finished_record, write_json_atomic
from .stats import mean_ci, per_seed_problem
from .storage import RunDirectoryError, read_text, write_atomic


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
    in ``path``, read as the run directory's own files are (never through a link, never blocking on a
    FIFO), its rows checked to be the finished grid of its config (``rows_problem``); a ConfigError
    naming ``label`` (the flag or command that named it) and ``path``."""
    def read(name: str) -> Any:
        return json.loads(read_text(path / name, path))
    try:
        config, rows, environment = (ExperimentConfig.from_dict(read("config.json")), read("results.json"),
                                     read("environment.json"))
    except (OSError, RunDirectoryError, UnicodeDecodeError, json.JSONDecodeError, ConfigError, TypeError,
            AttributeError) as error:
        raise ConfigError(f"{label} {str(path)!r} holds no finished compare run: {error}") from error
    problem = rows_problem(rows, config) if isinstance(environment, dict) else \
        f"environment.json is not an object: {environment!r}"
    if problem:
        raise ConfigError(f"{label} {str(path)!r} holds no finished compare run of its settings: {problem}")
    return config, rows, environment


ROW_KEY = ("norm", "protocol", "norm_batch", "sgd_batch", "eval")


def rows_problem(rows: Any, config: ExperimentConfig) -> Optional[str]:
    """What keeps ``rows`` (a results.json) from being the finished grid of ``config``, or None:
    one row per planned cell and evaluation, each with one finite error per seed and their mean,
    and rows the analysis reads."""
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
        if key not in expected:
            return f"row {key} is not a cell of this grid"
        if key in seen:
            return f"row {key} is given twice"
        seen.add(key)
        problem = (per_seed_problem(row["errors"], row["mean"], len(config.seeds), "errors")
                   or row_outcome_problem(row, len(config.seeds)))
        if problem:
            return f"row {key}: {problem}"
    if seen != expected:
        return f"{len(expected - seen)} rows of the grid are missing, e.g. {sorted(expected - seen, key=str)[0]}"
    try:
        verdicts(analyse([analysed_row(row, config) for row in rows], config))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as error:
        return f"its rows cannot be analysed ({type(error).__name__}: {error})"
    return None
