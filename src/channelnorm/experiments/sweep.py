"""Runs the grid: plans the runs, skips finished ones, spreads the rest over worker processes,
and shows progress (one bar for the sweep, one per worker for its current run)."""
from __future__ import annotations

import multiprocessing
import os
import queue
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Optional

import torch

from .config import BATCH_STATISTIC_NORMS, ExperimentConfig
from .data import Dataset, load_dataset
from .lifeline import exit_with_parent
from .rundir import finished_record, prepare_run_dir, write_record
from .storage import RunDirectoryError
from .train import RunSpec, train_run

try:
    from tqdm.auto import tqdm
except ImportError:  # the experiments extra brings tqdm; without it, no bars
    tqdm = None


def plan(config: ExperimentConfig) -> list[RunSpec]:
    """Every run of the grid, costliest first (small batches take the most steps; robust variants
    run on the slower reference math), so that the last runs to start are short ones."""
    specs = [RunSpec(norm, bs, seed) for norm in config.norms for bs in config.batch_sizes for seed in config.seeds]
    return sorted(specs, key=lambda s: (s.batch_size, s.norm in BATCH_STATISTIC_NORMS, s.seed))


def execute(spec: RunSpec, config: ExperimentConfig, data: Dataset, out: Path, progress=None) -> dict[str, Any]:
    """Train one run and write its record last and atomically: a run is finished iff its record exists
    (stamped with the fingerprint of its settings, which resuming checks)."""
    folder = prepare_run_dir(out, spec.run_id)       # inside out, no links followed
    record = train_run(spec, config, data, folder, progress)
    return write_record(out, spec, config, record)


# ---- worker processes (spawned: torch's thread pools do not survive fork) ----
_worker_state: dict[str, Any] = {}


def _worker_init(config: ExperimentConfig, out: str, messages) -> None:
    exit_with_parent()         # a killed sweep must not leave its workers idling with their data
    torch.set_num_threads(1)   # two single-threaded runs beat one two-threaded run on small batches
    _worker_state.update(config=config, out=Path(out), data=load_dataset(config), messages=messages)


def _worker_run(spec: RunSpec) -> dict[str, Any]:
    state = _worker_state
    pid = os.getpid()

    def progress(done: int, total: int) -> None:
        state["messages"].put((pid, spec.run_id, done, total))

    state["messages"].put((pid, spec.run_id, 0, 1))
    return execute(spec, state["config"], state["data"], state["out"], progress)


class _Bars:
    """The sweep bar plus one bar per worker slot (or nothing, without tqdm or when disabled)."""

    def __init__(self, total: int, initial: int, slots: int, enabled: bool) -> None:
        self.enabled = enabled and tqdm is not None
        self.sweep = tqdm(total=total, initial=initial, desc="sweep", unit="run", position=0,
                          dynamic_ncols=True) if self.enabled else None
        self.slots: dict[int, Any] = {}
        self.current: dict[int, str] = {}     # slot -> the run its bar shows
        self.max_slots = slots

    def run_progress(self, slot_key: int, run_id: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self.slots.get(slot_key)
        if bar is None:
            if len(self.slots) >= self.max_slots:
                return
            bar = tqdm(total=total, desc=run_id, unit="img", unit_scale=True, position=len(self.slots) + 1,
                       leave=False, dynamic_ncols=True, mininterval=0.5)
            self.slots[slot_key] = bar
            self.current[slot_key] = run_id
        if self.current.get(slot_key) != run_id:
            self.current[slot_key] = run_id
            bar.reset(total=total)
            bar.set_description(run_id, refresh=False)
        elif bar.total != total:        # the run's first message only says that it started
            bar.total = total
        bar.update(done - bar.n)

    def run_finished(self) -> None:
        if self.sweep is not None:
            self.sweep.update(1)

    def close(self) -> None:
        for bar in self.slots.values():
            bar.close()
        if self.sweep is not None:
            self.sweep.close()


def run_sweep(config: ExperimentConfig, out: Path, progress: bool = True) -> dict[str, int]:
    """Run every unfinished run of ``config``'s grid into ``out``; returns counts of runs executed
    and skipped (already finished)."""
    specs = plan(config)
    pending = [s for s in specs if finished_record(out, s, config) is None]   # other settings: an error
    counts = {"executed": len(pending), "skipped": len(specs) - len(pending)}
    workers = min(config.workers, len(pending)) if pending else 0
    bars = _Bars(len(specs), counts["skipped"], max(1, workers), progress)
    try:
        if workers <= 1:
            _run_here(pending, config, out, bars)
        else:
            _run_in_workers(pending, config, out, bars, workers)
    finally:
        bars.close()
    return counts


def _run_here(pending: list[RunSpec], config: ExperimentConfig, out: Path, bars: _Bars) -> None:
    if not pending:
        return
    data = load_dataset(config)
    # with workers > 1 every run is meant to be computed single-threaded (as in _worker_init); a
    # resume that leaves one run pending lands here and must not compute it with other threads
    # (CPU reductions then round differently, so the run's numbers would depend on how the sweep was split)
    threads = torch.get_num_threads()
    if config.workers > 1:
        torch.set_num_threads(1)
    try:
        for spec in pending:
            execute(spec, config, data, out, lambda done, total, rid=spec.run_id: bars.run_progress(0, rid, done, total))
            bars.run_finished()
    finally:
        torch.set_num_threads(threads)


def _run_in_workers(pending: list[RunSpec], config: ExperimentConfig, out: Path, bars: _Bars, workers: int) -> None:
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=(config, str(out), messages)) as pool:
        futures: dict[Future, RunSpec] = {pool.submit(_worker_run, spec): spec for spec in pending}
        remaining = set(futures)
        try:
            while remaining:
                _drain(messages, bars, timeout=0.2)
                done, remaining = wait(remaining, timeout=0, return_when=FIRST_COMPLETED)
                for future in done:
                    error: Optional[BaseException] = future.exception()
                    if isinstance(error, RunDirectoryError):   # already names the file and what to do
                        raise error
                    if error is not None:
                        raise RuntimeError(f"run {futures[future].run_id} failed: {error!r}") from error
                    bars.run_finished()
        except BaseException:
            # finished runs are on disk; drop the queued ones instead of waiting for them
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _drain(messages, bars: _Bars, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, run_id, done, total = messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return
        bars.run_progress(pid, run_id, done, total)
