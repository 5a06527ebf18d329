"""``channelnorm tune``: the learning-rate sweep that ``compare`` reads its per-norm learning rates from.

Each norm trains at the SGD batch of the protocol (plain channel norm for ``channel``) under the
same schedule and number of steps as ``compare``, for every learning rate of the grid and every
tuning seed, all as one wide network (members = learning rate x seed). It trains on the training
set minus its last ``val_size`` images and is scored on those held-out training images
(``data.validation_split`` drops the test set before anything runs, so tuning never sees it).
The chosen rate per norm is the one with the lowest mean validation error (running statistics).
A rate chosen at the edge of the grid is followed beyond it (a factor of 2 at a time, at most
``EDGE_STEPS`` times), so that the choice is bracketed. Rerunning into the same ``--out`` reuses the
(norm, learning rate) cells it holds when they were trained under the same settings, so a sweep can
be extended by a norm or a rate without training the rest again.
"""
from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .config import ConfigError, ExperimentConfig, canonical_norm
from .data import Dataset, load_dataset, validation_split
from .evaluate import evaluate_members
from .lifeline import exit_with_parent
from .models import stem_stride
from .rundir import write_json_atomic
from .stats import interval_problem, is_finite_number, mean_ci, per_seed_problem
from .storage import RunDirectoryError, read_json, write_atomic
from .train import Member, TrainPlan, train_members

LR_GRID = (0.025, 0.05, 0.1, 0.2, 0.4)
TUNE_SEEDS = (100, 101)      # other seeds than the comparison's, so its seeds stay untouched by the choice
EDGE_STEPS = 2               # how far beyond the grid a rate chosen at its edge is followed
SELECTION = "lowest mean validation error (running statistics) among learning rates where no seed diverged"


def check_sizes(config: ExperimentConfig) -> None:
    """A ConfigError when ``config.val_size`` held out of the training set leaves less than one SGD
    batch to train on (checked before anything trains; ``train_size`` None, all of a folder's
    images, is checked once the data set is read and its size known)."""
    n = config.train_size
    if n is not None and n - config.val_size < config.sgd_batch:
        raise ConfigError(f"--val-size {config.val_size} held out of {n} training images leaves {n - config.val_size}"
                          f" to train on, less than one SGD batch of {config.sgd_batch}; use a --val-size of at most "
                          f"{n - config.sgd_batch} (or a larger --train-size)")


def read_previous_tuning(out: Path) -> Optional[dict[str, Any]]:
    """The earlier ``tuning.json`` in ``out`` (its cells may be reused) as stored, or None when there
    is none; a ConfigError naming the file when it cannot be read as JSON (``reusable_cells`` checks
    its content)."""
    path = out / "tuning.json"
    try:
        return read_json(path, out, dict)
    except FileNotFoundError:
        return None
    except RunDirectoryError as error:
        raise ConfigError(f"{error}; it is not a tuning result this command wrote: remove it, or use another "
                          "--out") from None


def tune_norm(norm: str, config: ExperimentConfig, data: Dataset, lrs: Sequence[float],
              seeds: Sequence[int]) -> dict[str, Any]:
    """Train ``norm`` at every (lr, seed) and score each on ``data.test_*`` (the validation split)."""
    members = tuple(Member(seed, lr) for lr in lrs for seed in seeds)
    plan = TrainPlan(norm=norm, norm_batch=config.sgd_batch, sgd_batch=config.sgd_batch,
                     steps=config.steps(config.sgd_batch), members=members, width=config.width,
                     max_groups=config.max_groups, momentum=config.momentum, weight_decay=config.weight_decay,
                     warmup_fraction=config.warmup_fraction, log_points=config.log_points,
                     channels_last=config.channels_last, in_channels=data.in_channels,
                     stem_stride=stem_stride(data.image_shape[-1]))
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
    return {"norm": norm, "per_lr": per_lr, "chosen_lr": choose(per_lr), "train_seconds": round(seconds, 1)}


def choose(per_lr: Sequence[dict[str, Any]]) -> float:
    """The rate with the lowest mean validation error among those where no seed diverged."""
    usable = [p for p in per_lr if p["diverged"] == 0] or list(per_lr)
    return min(usable, key=lambda p: p["mean"])["lr"]


def beyond_edge(per_lr: Sequence[dict[str, Any]]) -> Optional[float]:
    """The next rate to try when the choice sits at an edge of the rates measured (and did not
    diverge there): twice the largest or half the smallest; None when the choice is bracketed."""
    rates = sorted(p["lr"] for p in per_lr)
    chosen = choose(per_lr)
    if len(rates) < 2 or any(p["diverged"] for p in per_lr if p["lr"] == chosen):
        return None
    if chosen == rates[-1]:
        nxt = chosen * 2
    elif chosen == rates[0]:
        nxt = chosen / 2
    else:
        return None
    return nxt if _is_rate(nxt) else None   # never past what a float holds (inf, or 0 below the smallest)


def _tune_worker(args) -> dict[str, Any]:
    norm, config, lrs, seeds, known = args
    torch.set_num_threads(1)
    data = validation_split(load_dataset(config), config.val_size)
    per_lr, seconds = list(known), 0.0
    todo = [lr for lr in dict.fromkeys(lrs) if lr not in {p["lr"] for p in per_lr}]   # each rate once
    for _ in range(1 + EDGE_STEPS):
        if todo:
            result = tune_norm(norm, config, data, todo, seeds)
            per_lr += result["per_lr"]
            seconds += result["train_seconds"]
        nxt = beyond_edge(per_lr)
        todo = [nxt] if nxt is not None and nxt not in {p["lr"] for p in per_lr} else []
        if not todo:
            break
    per_lr.sort(key=lambda p: p["lr"])
    return {"norm": norm, "per_lr": per_lr, "chosen_lr": choose(per_lr), "train_seconds": round(seconds, 1),
            "reused_lrs": [p["lr"] for p in known]}


def reusable_cells(previous: Optional[dict[str, Any]], config: ExperimentConfig, seeds: Sequence[int],
                   where: str = "tuning.json") -> dict[str, list[dict[str, Any]]]:
    """Per norm, the cells of an earlier tuning (``tuning.json``, read from ``where``) that this one
    would train again identically: the same training settings (``training_identity``) and the same
    tuning seeds. A tuning of other settings gives nothing (``channelnorm tune`` refuses such an
    ``--out``); one not shaped as ``run_tuning`` writes it, or whose cells do not add up, is a ConfigError
    naming ``where`` and the value (a hand-edited cell must never be reused or reach ``tuned_lrs.json``)."""
    if previous is None or settings_mismatch(previous, config, seeds, where):
        return {}
    norms = previous.get("norms")
    if not isinstance(norms, dict):
        raise ConfigError(f"{where}: norms must be a mapping of norm name to its tuning, got {norms!r}")
    for name, result in norms.items():
        _check_norm(name, result, list(seeds), where)
    measured = {p["lr"] for r in norms.values() for p in r["per_lr"]}
    if not measured <= set(previous["lr_grid"]):
        raise ConfigError(f"{where}: lr_grid {previous['lr_grid']} misses measured learning rates "
                          f"{sorted(measured - set(previous['lr_grid']))}")
    return {norm: list(r["per_lr"]) for norm, r in norms.items()}


def settings_mismatch(previous: Any, config: ExperimentConfig, seeds: Sequence[int],
                      where: str = "tuning.json") -> list[str]:
    """The training settings (and ``seeds`` when the tuning seeds differ) in which an earlier tuning
    differs from ``config``; empty when its cells would be trained again identically."""
    there = _check_header(previous, where).training_identity()
    here = config.training_identity()
    return sorted(k for k in here if here[k] != there.get(k)) + (["seeds"] if previous["seeds"] != list(seeds) else [])


def _check_header(previous: Any, where: str) -> ExperimentConfig:
    """The settings an earlier tuning ran under (its config, seeds and invocation history checked)."""
    if not isinstance(previous, dict):
        raise ConfigError(f"{where}: expected a JSON object as this command writes, got {type(previous).__name__}")
    if not isinstance(previous.get("config"), dict):
        raise ConfigError(f"{where}: config must be the settings object this command writes, got "
                          f"{previous.get('config')!r}")
    try:
        there = ExperimentConfig.from_dict(previous["config"])
    except (ConfigError, TypeError, ValueError) as error:
        raise ConfigError(f"{where}: its config cannot be read: {error}") from None
    seeds = previous.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(type(s) is int and s >= 0 for s in seeds)
            and len(set(seeds)) == len(seeds)):
        raise ConfigError(f"{where}: seeds must be a list of distinct integers >= 0, got {seeds!r}")
    if previous.get("sgd_batch") != there.sgd_batch or type(previous.get("sgd_batch")) is not int:
        raise ConfigError(f"{where}: sgd_batch {previous.get('sgd_batch')!r} is not its config's SGD batch "
                          f"{there.sgd_batch}")
    grid = previous.get("lr_grid")
    if not (isinstance(grid, list) and all(_is_rate(lr) for lr in grid) and grid == sorted(set(grid))):
        raise ConfigError(f"{where}: lr_grid must be increasing learning rates (finite numbers > 0), got {grid!r}")
    environments = previous.get("environments", [])
    if not (isinstance(environments, list) and all(isinstance(e, dict) for e in environments)):
        raise ConfigError(f"{where}: environments must be a list of objects, got {environments!r}")
    if not isinstance(previous.get("environment", {}), dict):
        raise ConfigError(f"{where}: environment must be an object, got {previous.get('environment')!r}")
    for environment in environments + [previous.get("environment") or {}]:
        if not isinstance(environment.get("command", ""), str):
            raise ConfigError(f"{where}: an environment's command must be a string, got {environment['command']!r}")
    return there


def _is_rate(value: Any) -> bool:
    return is_finite_number(value) and value > 0


def _check_norm(name: Any, result: Any, seeds: list[int], where: str) -> None:
    """One norm's entry of an earlier tuning of the same settings: its cells as ``tune_norm`` writes
    them (one per rate, the tuning seeds, a mean that is the mean of its errors) and the rate
    ``choose`` picks from them."""
    try:
        known = canonical_norm(name) == name
    except ConfigError as error:
        raise ConfigError(f"{where}: norm {name!r} is not a norm this command tunes: {error}") from None
    if not known:
        raise ConfigError(f"{where}: norm {name!r} is an alias; tunings name norms as {canonical_norm(name)!r}")
    if not isinstance(result, dict) or result.get("norm") != name:
        raise ConfigError(f"{where}: the entry of norm {name!r} is not its tuning result: {result!r}")
    cells = result.get("per_lr")
    if not (isinstance(cells, list) and cells):
        raise ConfigError(f"{where}: norm {name!r}: per_lr must be a non-empty list of cells, got {cells!r}")
    rates = set()
    for cell in cells:
        _check_cell(name, cell, seeds, where)
        if cell["lr"] in rates:
            raise ConfigError(f"{where}: norm {name!r}: learning rate {cell['lr']!r} is measured twice")
        rates.add(cell["lr"])
    chosen = result.get("chosen_lr")
    if not _is_rate(chosen) or chosen != choose(cells):
        raise ConfigError(f"{where}: norm {name!r}: chosen_lr {chosen!r} is not the rate its cells choose "
                          f"({choose(cells)!r})")
    seconds = result.get("train_seconds")
    if not (is_finite_number(seconds) and seconds >= 0):
        raise ConfigError(f"{where}: norm {name!r}: train_seconds must be a finite number >= 0, got {seconds!r}")
    reused = result.get("reused_lrs", [])
    if not (isinstance(reused, list) and all(lr in rates for lr in reused) and len(set(reused)) == len(reused)):
        raise ConfigError(f"{where}: norm {name!r}: reused_lrs must list rates of its cells, each once, got "
                          f"{reused!r}")


def _check_cell(name: str, cell: Any, seeds: list[int], where: str) -> None:
    """One (norm, learning rate) cell as ``tune_norm`` writes it: the tuning seeds, one validation
    error in [0, 100] % per seed with their mean and 95 % interval, one final training loss (a
    finite number >= 0, or null for a seed that diverged before its first log) per seed, and a
    divergence count that covers the seeds without a loss."""
    if not isinstance(cell, dict):
        raise ConfigError(f"{where}: norm {name!r}: a cell of per_lr is not an object: {cell!r}")
    lr = cell.get("lr")
    if not _is_rate(lr):
        raise ConfigError(f"{where}: norm {name!r}: a cell's lr must be a finite number > 0, got {lr!r}")
    what = f"{where}: norm {name!r}, lr {lr!r}:"
    if cell.get("seeds") != seeds:
        raise ConfigError(f"{what} seeds {cell.get('seeds')!r} are not the tuning seeds {seeds}")
    problem = (per_seed_problem(cell.get("val_errors"), cell.get("mean"), len(seeds), "val_errors", 0.0, 100.0)
               or interval_problem(cell.get("ci95"), cell["val_errors"]))
    if problem:
        raise ConfigError(f"{what} {problem}")
    losses = cell.get("final_train_loss")
    if not (isinstance(losses, list) and len(losses) == len(seeds)
            and all(v is None or (is_finite_number(v) and v >= 0) for v in losses)):
        raise ConfigError(f"{what} final_train_loss must hold one finite number >= 0 (or null) per seed, got "
                          f"{losses!r}")
    diverged = cell.get("diverged")
    if not (type(diverged) is int and 0 <= diverged <= len(seeds)):
        raise ConfigError(f"{what} diverged must be a count of seeds from 0 to {len(seeds)}, got {diverged!r}")
    if sum(v is None for v in losses) > diverged:
        raise ConfigError(f"{what} final_train_loss {losses} has a seed without a loss that did not diverge "
                          f"(diverged {diverged})")


def run_tuning(config: ExperimentConfig, lrs: Sequence[float] = LR_GRID, seeds: Sequence[int] = TUNE_SEEDS,
               workers: Optional[int] = None, previous: Optional[dict[str, Any]] = None,
               where: str = "tuning.json") -> dict[str, Any]:
    """Tune every norm of ``config.norms``; norms run in parallel worker processes (1 thread each).

    ``previous``: an earlier ``tuning.json`` (read from ``where``, named in errors) of the same
    settings; its cells are reused and its norms that this call does not tune are kept as they are."""
    check_sizes(config)
    known = reusable_cells(previous, config, seeds, where)
    jobs = [(norm, config, tuple(lrs), tuple(seeds), tuple(known.get(norm, ()))) for norm in config.norms]
    workers = min(workers or config.workers, len(jobs))
    if workers <= 1:
        results = [_tune_worker(job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers, initializer=exit_with_parent) as pool:
            results = pool.map(_tune_worker, jobs, chunksize=1)
    # a reused tuning keeps its norms, in their order, with those tuned now replaced
    norms = dict(previous["norms"]) if known else {}
    norms.update((r["norm"], r) for r in results)
    grid = sorted(set(lrs) | {p["lr"] for r in norms.values() for p in r["per_lr"]})
    return {"sgd_batch": config.sgd_batch, "lr_grid": grid, "seeds": list(seeds), "selection": SELECTION,
            "norms": norms}


def write_tuning(tuning: dict[str, Any], config: ExperimentConfig, environment: dict[str, Any], out: Path,
                 previous: Optional[dict[str, Any]] = None) -> None:
    """``tuning.json`` and ``report.md``; ``previous``: the earlier tuning this one extends (its
    invocations are kept, so the file names every command that measured one of its cells)."""
    out.mkdir(parents=True, exist_ok=True)
    earlier = [] if previous is None else previous.get("environments") or [previous.get("environment")]
    environments = [e for e in earlier if e] + [environment]
    write_json_atomic(out / "tuning.json", {**tuning, "config": config.to_dict(), "environment": environment,
                                            "environments": environments}, root=out)
    grid = tuning["lr_grid"]
    commands = list(dict.fromkeys(e.get("command", "channelnorm tune") for e in environments))
    lines = ["# Learning-rate tuning (held-out validation split of the training set; the test set is never used)",
             "", "Command" + ("s" if len(commands) > 1 else "") + ": " + ", then ".join(f"`{c}`" for c in commands),
             "", f"SGD batch {tuning['sgd_batch']}, {config.steps(config.sgd_batch)} steps, tuning seeds "
             f"{tuning['seeds']}, validation images {config.val_size}. Selection: {tuning['selection']}; a "
             f"rate chosen at the edge of the rates tried is followed beyond it (x2 or /2, up to {EDGE_STEPS} "
             "times).", "",
             "| norm | " + " | ".join(f"LR {lr:g}" for lr in grid) + " | chosen |",
             "|---|" + "---|" * (len(grid) + 1)]
    for norm, result in tuning["norms"].items():
        by_lr = {p["lr"]: p for p in result["per_lr"]}
        cells = [_cell(by_lr[lr]) if lr in by_lr else "—" for lr in grid]
        lines.append(f"| {norm} | " + " | ".join(cells) + f" | **{result['chosen_lr']:g}** |")
    edge = [n for n, r in tuning["norms"].items() if beyond_edge(r["per_lr"]) is not None]
    lines += ["", "Cells: mean validation error over the tuning seeds (the largest final training loss); — not tried."]
    if edge:
        lines.append(f"Still chosen at the edge of the rates tried (a better rate may lie beyond): {', '.join(edge)}.")
    lines.append("")
    write_atomic(out / "report.md", "\n".join(lines), root=out)


def _cell(p: dict[str, Any]) -> str:
    loss = max((v for v in p["final_train_loss"] if v is not None), default=None)
    text = f"{p['mean']:.2f} %" + (f" (loss ≤ {loss:.3f})" if loss is not None else "")
    return text + (f", {p['diverged']} diverged" if p["diverged"] else "")
