"""``channelnorm tune``: the learning-rate sweep that ``compare`` reads its per-norm learning rates from.

Each norm trains at the SGD batch of the protocol (plain channel norm for ``channel``) under the
same schedule and number of steps as ``compare``, for every learning rate of the grid and every
tuning seed, all as one wide network (members = learning rate x seed). It trains on the training
set minus its last ``val_size`` images and is scored on those held-out training images
(``data.validation_split`` drops the test set before anything runs, so tuning never sees it).
The chosen rate per norm is the one with the lowest mean validation error (running statistics).
"""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .config import ExperimentConfig
from .data import Dataset, load_dataset, validation_split
from .evaluate import evaluate_members
from .lifeline import exit_with_parent
from .rundir import write_json_atomic
from .storage import write_atomic
from .stats import mean_ci
from .train import Member, TrainPlan, train_members

LR_GRID = (0.025, 0.05, 0.1, 0.2, 0.4)
TUNE_SEEDS = (100, 101)      # other seeds than the comparison's, so its seeds stay untouched by the choice


def tune_norm(norm: str, config: ExperimentConfig, data: Dataset, lrs: Sequence[float],
              seeds: Sequence[int]) -> dict[str, Any]:
    """Train ``norm`` at every (lr, seed) and score each on ``data.test_*`` (the validation split)."""
    members = tuple(Member(seed, lr) for lr in lrs for seed in seeds)
    plan = TrainPlan(norm=norm, norm_batch=config.sgd_batch, sgd_batch=config.sgd_batch,
                     steps=config.steps(config.sgd_batch), members=members, width=config.width,
                     max_groups=config.max_groups, momentum=config.momentum, weight_decay=config.weight_decay,
                     warmup_fraction=config.warmup_fraction, log_points=config.log_points,
                     channels_last=config.channels_last)
    model, logs, seconds = train_members(plan, data.train_x, data.train_y)
    precise_n = min(config.precise_size, len(data.train_y)) // plan.norm_batch * plan.norm_batch
    errors = evaluate_members(model, plan, data.test_x, data.test_y, data.train_x[:precise_n])["ema"]
    per_lr = []
    for lr in lrs:
        picked = [j for j, m in enumerate(members) if m.peak_lr == lr]
        values = [errors[j] for j in picked]
        mean, ci = mean_ci(values)
        per_lr.append({"lr": lr, "seeds": [members[j].seed for j in picked], "val_errors": values, "mean": mean,
                       "ci95": None if ci is None else list(ci),
                       "final_train_loss": [logs[j].final_train_loss for j in picked],
                       "diverged": sum(logs[j].diverged_at is not None for j in picked)})
    usable = [p for p in per_lr if p["diverged"] == 0] or per_lr
    chosen = min(usable, key=lambda p: p["mean"])["lr"]
    return {"norm": norm, "per_lr": per_lr, "chosen_lr": chosen, "train_seconds": round(seconds, 1)}


def _tune_worker(args) -> dict[str, Any]:
    norm, config, lrs, seeds = args
    torch.set_num_threads(1)
    data = validation_split(load_dataset(config), config.val_size)
    return tune_norm(norm, config, data, lrs, seeds)


def run_tuning(config: ExperimentConfig, lrs: Sequence[float] = LR_GRID, seeds: Sequence[int] = TUNE_SEEDS,
               workers: Optional[int] = None) -> dict[str, Any]:
    """Tune every norm of ``config.norms``; norms run in parallel worker processes (1 thread each)."""
    jobs = [(norm, config, tuple(lrs), tuple(seeds)) for norm in config.norms]
    workers = min(workers or config.workers, len(jobs))
    if workers <= 1:
        results = [_tune_worker(job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers, initializer=exit_with_parent) as pool:
            results = pool.map(_tune_worker, jobs, chunksize=1)
    return {"sgd_batch": config.sgd_batch, "lr_grid": list(lrs), "seeds": list(seeds),
            "selection": "lowest mean validation error (running statistics) among learning rates where no seed "
                         "diverged", "norms": {r["norm"]: r for r in results}}


def write_tuning(tuning: dict[str, Any], config: ExperimentConfig, environment: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "tuning.json", {**tuning, "config": config.to_dict(), "environment": environment}, root=out)
    lines = ["# Learning-rate tuning (held-out validation split of the training set; the test set is never used)",
             "", f"Command: `{environment.get('command', 'channelnorm tune')}`", "",
             f"SGD batch {tuning['sgd_batch']}, {config.steps(config.sgd_batch)} steps, tuning seeds "
             f"{tuning['seeds']}, validation images {config.val_size}. Selection: {tuning['selection']}.", "",
             "| norm | " + " | ".join(f"LR {lr:g}" for lr in tuning["lr_grid"]) + " | chosen |",
             "|---|" + "---|" * (len(tuning["lr_grid"]) + 1)]
    for norm, result in tuning["norms"].items():
        cells = []
        for p in result["per_lr"]:
            loss = max((v for v in p["final_train_loss"] if v is not None), default=None)
            text = f"{p['mean']:.2f} %" + (f" (loss ≤ {loss:.3f})" if loss is not None else "")
            cells.append(text + (f", {p['diverged']} diverged" if p["diverged"] else ""))
        lines.append(f"| {norm} | " + " | ".join(cells) + f" | **{result['chosen_lr']:g}** |")
    edge = [n for n, r in tuning["norms"].items() if r["chosen_lr"] in (min(tuning["lr_grid"]), max(tuning["lr_grid"]))]
    lines += ["", "Cells: mean validation error over the tuning seeds (the largest final training loss)."]
    if edge:
        lines.append(f"Chosen at the edge of the grid (a better rate may lie beyond it): {', '.join(edge)}.")
    lines.append("")
    write_atomic(out / "report.md", "\n".join(lines), root=out)


def render_defaults(tuning: dict[str, Any]) -> str:
    """The text of ``tuned_lrs.py`` for these tuning results."""
    chosen = {norm: r["chosen_lr"] for norm, r in tuning["norms"].items()}
    path = Path(__file__).with_name("tuned_lrs.py")
    text = path.read_text()
    start = text.index("TUNED: dict[str, float] = ")
    end = text.index("\n", start)
    text = text[:start] + f"TUNED: dict[str, float] = {json.dumps(chosen)}" + text[end:]
    start = text.index("TUNED_AT_BATCH = ")
    end = text.index("\n", start)
    return text[:start] + f"TUNED_AT_BATCH = {tuning['sgd_batch']}" + text[end:]
