"""Runs the grid: plans the cells, skips finished ones, spreads the rest over worker processes,
and shows progress (one bar for the sweep, one per worker for its current cell).

A cell is one norm at one (normalization batch, SGD batch) with all its seeds, trained as one wide
network (``train.train_members``). Each seed is still a run of its own on disk: its
``metrics.jsonl`` and ``record.json`` under ``runs/<run_id>/``; a cell is finished iff every seed's
record passes ``rundir.finished_record`` (a damaged record, or one of other settings, stops the
sweep with a RunDirectoryError naming it). Workers exit when the main process dies.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import queue
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Optional

import torch

from .config import ExperimentConfig
from .data import Dataset, load_dataset
from .evaluate import curve_evaluator, evaluate_members
from .lifeline import exit_with_parent
from .models import stem_stride
from .grid import Cell, cell_seeds, plan
from .ranks import bind_local_device
from .rundir import finished_record, new_record, prepare_run_dir, write_record
from .storage import RunDirectoryError, write_atomic
from .train import Member, TrainPlan, train_members
from .tuned_lrs import run_lr

try:
    from tqdm.auto import tqdm
except ImportError:  # the experiments extra brings tqdm; without it, no bars
    tqdm = None


def cell_finished(out: Path, cell: Cell, config: ExperimentConfig) -> bool:
    return all(finished_record(out, cell.key(seed), config) is not None for seed in cell_seeds(cell, config))


def train_plan(cell: Cell, config: ExperimentConfig, data: Dataset) -> TrainPlan:
    lr = run_lr(cell, config)   # linear scaling rule, then the variant's factor
    steps = config.steps(cell.sgd_batch)
    return TrainPlan(norm=cell.norm, norm_batch=cell.norm_batch, sgd_batch=cell.sgd_batch,
                     steps=steps, members=tuple(Member(s, lr) for s in cell_seeds(cell, config)),
                     width=config.width, max_groups=config.max_groups, momentum=config.momentum,
                     weight_decay=config.weight_decay, warmup_fraction=config.warmup_fraction,
                     log_points=config.log_points, curve_points=config.curve_points,
                     channels_last=config.channels_last, in_channels=data.in_channels,
                     stem_stride=stem_stride(data.image_shape[-1]),
                     frozen_tail_step=steps - round(config.frozen_tail * steps) if cell.frozen_tail else None)


def execute(cell: Cell, config: ExperimentConfig, data: Dataset, out: Path, progress=None) -> list[dict[str, Any]]:
    """Train and evaluate one cell; write each seed's metrics and, last and atomically, its record."""
    tplan = train_plan(cell, config, data)
    k = len(tplan.members)
    for member in tplan.members:     # inside ``out`` without links, no stale metrics or temporary files
        prepare_run_dir(out, cell.run_id(member.seed))
    curve = curve_evaluator(tplan, data.test_x[:config.curve_size], data.test_y[:config.curve_size])
    precise_n = min(config.precise_size, len(data.train_y)) // cell.norm_batch * cell.norm_batch
    model, logs, train_seconds = train_members(tplan, data.train_x, data.train_y, curve, progress,
                                               population_x=data.train_x[:precise_n])
    started = time.perf_counter()
    errors = evaluate_members(model, tplan, data.test_x, data.test_y, data.train_x[:precise_n])
    eval_seconds = time.perf_counter() - started
    records = []
    for j, (member, log) in enumerate(zip(tplan.members, logs)):
        run_id = cell.run_id(member.seed)
        member_errors = {name: values[j] for name, values in errors.items()}
        entries = log.entries + [{"kind": "final", **{f"{n}_error": e for n, e in member_errors.items()}}]
        write_atomic(out / "runs" / run_id / "metrics.jsonl", "".join(json.dumps(entry) + "\n" for entry in entries),
                     root=out)
        record = new_record(cell, member, tplan, log, member_errors, config,
                            seconds=(train_seconds, eval_seconds), members=k)
        records.append(write_record(out, cell.key(member.seed), config, record))
    return records


# ---- worker processes (spawned: torch's thread pools do not survive fork) ----
_worker_state: dict[str, Any] = {}


def _worker_init(config: ExperimentConfig, out: str, messages) -> None:
    exit_with_parent()         # first: a worker must not outlive a killed sweep
    torch.set_num_threads(1)   # two single-threaded cells beat one two-threaded cell at these sizes
    bind_local_device(config.device)   # under torchrun: this rank's GPU, as its main process
    _worker_state.update(config=config, out=Path(out), data=load_dataset(config), messages=messages)


def _worker_run(cell: Cell) -> list[dict[str, Any]]:
    state = _worker_state
    pid = os.getpid()

    def progress(done: int, total: int) -> None:
        state["messages"].put((pid, cell.cell_id, done, total))

    state["messages"].put((pid, cell.cell_id, 0, 1))
    return execute(cell, state["config"], state["data"], state["out"], progress)


class _Bars:
    """The sweep bar plus one bar per worker slot (or nothing, without tqdm or when disabled)."""

    def __init__(self, total: int, initial: int, slots: int, enabled: bool) -> None:
        self.enabled = enabled and tqdm is not None
        self.sweep = tqdm(total=total, initial=initial, desc="sweep", unit="cell", position=0,
                          dynamic_ncols=True) if self.enabled else None
        self.slots: dict[int, Any] = {}
        self.current: dict[int, str] = {}
        self.max_slots = slots

    def run_progress(self, slot_key: int, cell_id: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self.slots.get(slot_key)
        if bar is None:
            if len(self.slots) >= self.max_slots:
                return
            bar = tqdm(total=total, desc=cell_id, unit="step", position=len(self.slots) + 1, leave=False,
                       dynamic_ncols=True, mininterval=0.5)
            self.slots[slot_key] = bar
            self.current[slot_key] = cell_id
        if self.current.get(slot_key) != cell_id:
            self.current[slot_key] = cell_id
            bar.reset(total=total)
            bar.set_description(cell_id, refresh=False)
        elif bar.total != total:
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


def run_sweep(config: ExperimentConfig, out: Path, progress: bool = True,
              cells: Optional[list[Cell]] = None) -> dict[str, int]:
    """Run every unfinished cell of ``config``'s grid (or of ``cells``: one rank's share, see
    ``ranks.py``) into ``out``; returns counts of cells executed and skipped (already finished)."""
    cells = plan(config) if cells is None else cells
    pending = [c for c in cells if not cell_finished(out, c, config)]
    counts = {"executed": len(pending), "skipped": len(cells) - len(pending)}
    workers = min(config.workers, len(pending)) if pending else 0
    bars = _Bars(len(cells), counts["skipped"], max(1, workers), progress)
    try:
        if workers <= 1:
            _run_here(pending, config, out, bars)
        else:
            _run_in_workers(pending, config, out, bars, workers)
    finally:
        bars.close()
    return counts


def _run_here(pending: list[Cell], config: ExperimentConfig, out: Path, bars: _Bars) -> None:
    if not pending:
        return
    data = load_dataset(config)
    # every cell computes with one torch thread, in a worker or here: CPU reductions round
    # differently with other thread counts, so a cell's numbers must not depend on --workers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for cell in pending:
            execute(cell, config, data, out,
                    lambda done, total, cid=cell.cell_id: bars.run_progress(0, cid, done, total))
            bars.run_finished()
    finally:
        torch.set_num_threads(threads)


def _run_in_workers(pending: list[Cell], config: ExperimentConfig, out: Path, bars: _Bars, workers: int) -> None:
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=(config, str(out), messages)) as pool:
        futures: dict[Future, Cell] = {pool.submit(_worker_run, cell): cell for cell in pending}
        remaining = set(futures)
        try:
            while remaining:
                _drain(messages, bars, timeout=0.2)
                done, remaining = wait(remaining, timeout=0, return_when=FIRST_COMPLETED)
                for future in done:
                    error: Optional[BaseException] = future.exception()
                    if isinstance(error, RunDirectoryError):
                        raise error        # names the file and what to do: no wrapping
                    if error is not None:
                        raise RuntimeError(f"cell {futures[future].cell_id} failed: {error!r}") from error
                    bars.run_finished()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _drain(messages, bars: _Bars, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, cell_id, done, total = messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return
        bars.run_progress(pid, cell_id, done, total)

