"""The whole experiment, end to end: resume check, sweep, aggregation, plot, report."""
from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

from .config import ConfigError, ExperimentConfig
from .data import load_dataset
from .environment import describe_environment, load_average, utc_now
from .plot import plot_error_vs_batch
from .report import write_report
from .results import aggregate, collect, write_results
from .rundir import check_resume, write_json_atomic
from .storage import locked, write_atomic
from .sweep import run_sweep


def run_compare(config: ExperimentConfig, command: str = "channelnorm compare", progress: bool = True) -> dict[str, Path]:
    """The whole experiment into ``config.out``, which it holds locked: a second invocation on the
    same run directory meanwhile is refused (RunDirectoryError) instead of mixing its runs in."""
    with locked(Path(config.out)):
        return _run_compare_locked(config, command, progress)


def _run_compare_locked(config: ExperimentConfig, command: str, progress: bool) -> dict[str, Path]:
    out = Path(config.out)
    resumed = check_resume(out, config)
    # read the data before anything is written: a bad --data-dir must not leave a config.json behind
    # (it would make the corrected command look like a resume with other settings)
    dataset = _describe_data(config)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", config.to_dict(), root=out)
    except OSError as error:
        raise ConfigError(f"--out {str(out)!r} cannot be used as the run directory: {error}") from error
    environment = describe_environment(config.device, config.workers)
    environment["command"] = command
    start_time, start_load, started = utc_now(), load_average(), time.perf_counter()
    counts = run_sweep(config, out, progress=progress)
    environment["sweep"] = {"started": start_time, "finished": utc_now(),
                            "wall_seconds": round(time.perf_counter() - started, 1), "resumed": resumed,
                            "load_start": start_load, "load_end": load_average(), "workers": config.workers,
                            "threads_per_worker": environment["torch_threads_per_worker"],
                            "git": environment["git"], **counts}
    environment["sweeps"] = _previous_sweeps(out) + [environment["sweep"]]
    write_json_atomic(out / "environment.json", environment, root=out)

    rows = aggregate(collect(out, config))
    write_results(rows, out)
    plot_error_vs_batch(rows, config.norms, config.batch_sizes, out / "error_vs_batch.png",
                        f"{dataset} — grid: {config.grid}")
    write_atomic(out / "report.md", write_report(rows, config, environment, dataset, "error_vs_batch.png"), root=out)
    return {name: out / name for name in ("config.json", "environment.json", "results.csv", "results.json",
                                          "error_vs_batch.png", "report.md")}


def _describe_data(config: ExperimentConfig) -> str:
    """The data set's one-line description; an unreadable --data-dir is a ConfigError naming it."""
    if config.data_dir is None:
        return load_dataset(config).describe()
    try:
        return load_dataset(config).describe()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise ConfigError(f"--data-dir {config.data_dir!r} cannot be read as CIFAR-10: {error}") from error


def _previous_sweeps(out: Path) -> list[dict]:
    """Timing of earlier invocations on this run directory (a resumed sweep keeps their history)."""
    try:
        with open(out / "environment.json") as handle:
            return list(json.load(handle).get("sweeps", []))
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return []
