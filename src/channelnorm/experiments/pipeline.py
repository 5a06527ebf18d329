"""The whole experiment, end to end: resume check, sweep, rows, analysis, plots, report.

``run_compare`` holds ``--out`` locked for the whole invocation, and every file it writes goes
through ``storage.write_atomic`` inside ``--out`` (atomic, never through a link)."""
from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .analysis import analyse
from .claims import interval_agreement
from .config import ConfigError, ExperimentConfig
from .data import load_dataset
from .environment import CODE_PATH_FIELDS, describe_environment, load_average, utc_now
from .mechanism import measure
from .models import build_model, stem_stride
from .outcome import analysed_row
from .plot import plot_batch_panels, plot_curves
from .ranks import detect_world, run_on_ranks
from .report import render
from .results import build_rows, build_variant_rows, collect, read_finished_run, write_results
from .rundir import OUTPUTS, check_resume, claim_run_kind, read_environment, write_json_atomic
from .storage import NotPlainFileError, locked, write_atomic
from .sweep import run_sweep


def run_compare(config: ExperimentConfig, command: str = "channelnorm compare", progress: bool = True,
                reproduction_dir: Optional[Path] = None) -> dict[str, Path]:
    """The whole experiment into ``config.out``, which it holds locked: a second invocation on the
    same run directory meanwhile is refused (RunDirectoryError) instead of mixing its runs in.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the ranks share the cells and rank 0 writes the
    outputs (``ranks.py``); every other rank returns no paths."""
    world = detect_world()
    if world.distributed:
        return run_on_ranks(world, config, command, progress, reproduction_dir)
    with locked(Path(config.out)):
        return _run_compare_locked(config, command, progress, reproduction_dir)


def _run_compare_locked(config: ExperimentConfig, command: str, progress: bool,
                        reproduction_dir: Optional[Path]) -> dict[str, Path]:
    prepared = prepare_run(config, reproduction_dir)
    started = start_sweep(prepared, command)
    counts = run_sweep(prepared.config, Path(prepared.config.out), progress=progress)
    return finish_run(prepared, started, counts)


@dataclass
class PreparedRun:
    """A run directory checked and holding ``config.json``: what the sweep and the outputs need."""
    config: ExperimentConfig            # sizes resolved (``resolve_sizes``)
    dataset: Any
    resumed: bool
    repro_rows: Optional[tuple[list, dict]]
    reproduction_dir: Optional[Path]
    history: list[dict]                 # earlier sweeps of this run directory (``environment.json``)


def prepare_run(config: ExperimentConfig, reproduction_dir: Optional[Path] = None) -> PreparedRun:
    """Read the data, check a resume and the reproduction, and write ``config.json``.

    Args:
        config: the experiment; the caller holds ``config.out`` locked.
        reproduction_dir: ``--reproduction``, read and checked now (before hours of training).

    Returns:
        A ``PreparedRun``; a ConfigError (or RunDirectoryError) naming what is refused."""
    out = Path(config.out)
    claim_run_kind(out, "compare", record=False)     # a tune run's directory is never written into
    # read the data before anything is written: a bad --data-dir must not leave a config.json behind
    dataset = _load(config)
    config = resolve_sizes(config, dataset)
    resumed = check_resume(out, config)
    if reproduction_dir is not None and _same_directory(reproduction_dir, out):
        raise ConfigError(f"--reproduction {str(reproduction_dir)!r} is --out itself: a reproduction is a rerun of "
                          "the same grid in another run directory (e.g. under ATEN_CPU_CAPABILITY=avx2)")
    repro_rows = _read_reproduction(reproduction_dir, config) if reproduction_dir is not None else None
    history = _previous_sweeps(out)   # read (a damaged one refused) before hours of training, not after
    try:
        out.mkdir(parents=True, exist_ok=True)
        claim_run_kind(out, "compare")
        write_json_atomic(out / "config.json", config.to_dict(), root=out)
    except OSError as error:
        raise ConfigError(f"--out {str(out)!r} cannot be used as the run directory: {error}") from error
    return PreparedRun(config, dataset, resumed, repro_rows, reproduction_dir, history)


def start_sweep(prepared: PreparedRun, command: str) -> dict[str, Any]:
    """The environment as the sweep starts (the code that runs is the code of this moment), and
    when and under what load it started.

    Args:
        prepared: what ``prepare_run`` returned.
        command: the command line, kept in ``environment.json``.

    Returns:
        What ``finish_run`` takes as ``started``."""
    config = prepared.config
    environment = describe_environment(config.device, config.workers)
    environment["command"] = command
    return {"environment": environment, "started": utc_now(), "load_start": load_average(),
            "clock": time.perf_counter()}


def finish_run(prepared: PreparedRun, started: dict[str, Any], counts: dict[str, int],
               sweep_extra: Optional[dict[str, Any]] = None) -> dict[str, Path]:
    """``environment.json`` (this sweep's timing and ``counts`` appended to its history) and the
    outputs from the finished runs.

    Args:
        prepared: what ``prepare_run`` returned.
        started: what ``start_sweep`` returned.
        counts: cells ``executed`` and ``skipped`` by the sweep.
        sweep_extra: more fields of this sweep's entry (under torchrun: the ranks).

    Returns:
        {output name: path}."""
    config, out = prepared.config, Path(prepared.config.out)
    environment = started["environment"]
    environment["sweep"] = {"started": started["started"], "finished": utc_now(),
                            "wall_seconds": round(time.perf_counter() - started["clock"], 1),
                            "resumed": prepared.resumed, "load_start": started["load_start"],
                            "load_end": load_average(), "workers": config.workers,
                            "cpu_capability": environment["cpu_capability"], "git": environment["git"], **counts,
                            **(sweep_extra or {})}
    environment["sweeps"] = prepared.history + [environment["sweep"]]
    write_json_atomic(out / "environment.json", environment, root=out)
    write_outputs(config, out, environment, prepared.dataset, prepared.repro_rows, prepared.reproduction_dir)
    return {name: out / name for name in OUTPUTS}


def write_outputs(config: ExperimentConfig, out: Path, environment: dict[str, Any], dataset,
                  repro_rows: Optional[tuple[list, dict]] = None, reproduction_dir: Optional[Path] = None) -> None:
    """Rows, analysis, plots and report from the finished runs in ``out``."""
    found = collect(out, config)
    rows, variant_rows = build_rows(found, config), build_variant_rows(found, config)
    write_results(rows, out, variant_rows)
    analysis = analyse(rows, config, variant_rows)
    mechanism = measure(dataset.test_x[:1000], config.width, config.max_groups)
    repro = None
    if repro_rows is not None:
        there_rows, there_env = repro_rows
        repro = {**reproduction(rows, there_rows, analysis, config), "path": str(reproduction_dir),
                 "environment": {k: there_env.get(k) for k in CODE_PATH_FIELDS}}
    write_json_atomic(out / "analysis.json", {**analysis, "mechanism": mechanism, "reproduction": repro}, root=out)
    title = f"{dataset.describe()} — grid: {config.grid}"
    plot_batch_panels(rows, config.sgd_batch, out / "error_vs_batch.png", title)
    plot_curves(rows, config.sgd_batch, out / "curves.png", config.target_error)
    c, _, size = dataset.image_shape
    network = build_model("channel", config.width, in_channels=c, stem_stride=stem_stride(size))
    write_atomic(out / "report.md", render(rows, analysis, mechanism, config, environment, dataset.describe(), repro,
                                           variant_rows, sum(p.numel() for p in network.parameters())), root=out)


def reproduction(here_rows: list[dict[str, Any]], there_rows: list[dict[str, Any]], analysis: dict[str, Any],
                 config: ExperimentConfig) -> dict[str, Any]:
    """A rerun of the same grid (another CPU code path): its claims, whether each claim's effect lies
    inside the other run's interval (both ways), and how far the cells moved."""
    there_claims = analyse(there_rows, config)["claims"]
    key = ("norm", "protocol", "norm_batch", "sgd_batch", "eval")
    other = {tuple(r[k] for k in key): r for r in there_rows}
    pairs = [(r, other[tuple(r[k] for k in key)]) for r in here_rows if tuple(r[k] for k in key) in other]
    return {"claims_there": there_claims, "agreement": interval_agreement(analysis["claims"], there_claims),
            "cells": [{"norm": a["norm"], "protocol": a["protocol"], "norm_batch": a["norm_batch"],
                       "sgd_batch": a["sgd_batch"], "here": a["mean"], "there": b["mean"]}
                      for a, b in pairs if a["eval"] == "ema"],
            "max_mean_change": max((abs(a["mean"] - b["mean"]) for a, b in pairs), default=0.0),
            "rows_compared": len(pairs), "rows_missing": len(here_rows) - len(pairs),
            # seed by seed, whatever order each file lists its seeds in
            "rows_identical": sum(sorted(zip(a["seeds"], a["errors"])) == sorted(zip(b["seeds"], b["errors"]))
                                  for a, b in pairs)}


def resolve_sizes(config: ExperimentConfig, dataset) -> ExperimentConfig:
    """``train_size``/``test_size`` None ('all' of a CIFAR-10 folder) become the counts read, so
    that the number of steps follows the data actually there."""
    changes = {}
    if config.train_size is None:
        changes["train_size"] = len(dataset.train_y)
    if config.test_size is None:
        changes["test_size"] = len(dataset.test_y)
    return config.with_(**changes) if changes else config


def _load(config: ExperimentConfig):
    """The data set; missing or unreadable files are a ConfigError naming them."""
    if config.data == "synthetic":
        return load_dataset(config)
    try:
        return load_dataset(config)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        if config.data == "cifar10":
            raise ConfigError(f"--data-dir {config.data_dir!r} cannot be read as CIFAR-10: {error}") from error
        raise ConfigError(f"--data {config.data}: {error}") from error


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _read_reproduction(path: Path, config: ExperimentConfig) -> tuple[list, dict]:
    """The rows and environment of a finished run of the same grid under the same training settings,
    its rows re-analysed under ``config``'s thresholds (``converged``, ``steps_to_target``).

    Read and checked now (``results.read_finished_run``), before this run trains for hours: rows that
    the analysis cannot read, or that are not the grid of its settings, would otherwise fail (or
    compare nothing) only at the end."""
    there, rows, environment = read_finished_run(path, "--reproduction")
    here_settings, there_settings = config.reproduction_identity(), there.reproduction_identity()
    differ = sorted(k for k in here_settings if here_settings[k] != there_settings.get(k))
    if differ:
        raise ConfigError(f"--reproduction {str(path)!r} ran other settings ({', '.join(differ)}: "
                          + "; ".join(f"{there_settings.get(k)!r} there, {here_settings[k]!r} here" for k in differ)
                          + "); a reproduction reruns the same grid")
    # Its analysis thresholds may be other than ours: both runs are judged under ours.
    return [analysed_row(row, config) for row in rows], environment


def _previous_sweeps(out: Path) -> list[dict]:
    """Timing of earlier invocations on this run directory (a resumed sweep keeps their history); a
    RunDirectoryError naming ``environment.json`` when it is there but not what a run writes."""
    try:
        return list(read_environment(out / "environment.json", out).get("sweeps", []))
    # a link, folder or FIFO in its place holds no history of ours (the new file replaces it)
    except (FileNotFoundError, NotPlainFileError):
        return []
