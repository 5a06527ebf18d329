"""One training run: a norm, a batch size, a seed. Writes ``metrics.jsonl`` and returns a summary record."""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..registry import create_norm
from .config import ExperimentConfig
from .data import Dataset
from .models import SELF_ACTIVATED_NORMS, ResidualCNN

ProgressCallback = Callable[[int, int], None]   # (samples done, samples total)


@dataclass(frozen=True)
class RunSpec:
    norm: str
    batch_size: int
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.norm}-bs{self.batch_size}-seed{self.seed}"


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def norm_kwargs(kind: str, num_channels: int, batch_size: int, total_steps: int,
                config: ExperimentConfig) -> dict[str, Any]:
    """The per-kind settings the comparison uses (everything else is the registry's default)."""
    if kind in ("group", "evonorm_s0"):
        return {"num_groups": largest_divisor_at_most(num_channels, config.max_groups)}
    if kind == "ghost":
        return {"virtual_batch_size": min(config.ghost_batch, batch_size)}
    if kind == "batch_renorm":
        return {"rmax": 3.0, "dmax": 5.0, "warmup_steps": max(1, round(config.renorm_warmup_fraction * total_steps))}
    return {}


def build_model(spec: RunSpec, config: ExperimentConfig, total_steps: int) -> nn.Module:
    def make_norm(channels: int) -> nn.Module:
        return create_norm(spec.norm, channels, **norm_kwargs(spec.norm, channels, spec.batch_size, total_steps,
                                                               config))
    return ResidualCNN(make_norm, width=config.width, norm_is_activated=spec.norm in SELF_ACTIVATED_NORMS)


def learning_rate(config: ExperimentConfig, batch_size: int, samples_seen: int, total_samples: int) -> float:
    """Peak LR scaled linearly with the batch (Goyal et al.; the Group Norm paper), linear warm-up
    over the first ``warmup_fraction`` of the samples, then cosine decay to zero."""
    peak = config.base_lr * batch_size / config.reference_batch
    warmup = config.warmup_fraction * total_samples
    if samples_seen < warmup:
        # The step ending past the warm-up (when it does not divide by the batch) gets the peak, not more.
        return peak * min(1.0, (samples_seen + batch_size) / warmup)
    progress = (samples_seen - warmup) / max(1.0, total_samples - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def correct_predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: str,
                        batch_statistics: bool) -> torch.Tensor:
    """Bool per test image: classified right. ``batch_statistics``: the norms normalize each batch of
    ``batch_size`` test images with its own statistics (train mode, on a copy so that no running
    statistic moves), over whole batches only (a smaller remainder would change the statistics'
    noise; the result then covers the first images); otherwise eval mode with the running
    statistics. Non-finite logits count as wrong."""
    if batch_statistics:
        model = copy.deepcopy(model).train()
        usable = len(y) - len(y) % batch_size
        if usable:      # a test set smaller than one batch is one (smaller) batch
            x, y = x[:usable], y[:usable]
    else:
        model.eval()
    right = []
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size].to(device))
        target = y[start:start + batch_size].to(device)
        right.append(((logits.argmax(dim=1) == target) & torch.isfinite(logits).all(dim=1)).cpu())
    return torch.cat(right)


def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: str,
               batch_statistics: bool) -> float:
    """Share of misclassified images (see ``correct_predictions``)."""
    return 1.0 - float(correct_predictions(model, x, y, batch_size, device, batch_statistics).float().mean())


def train_run(spec: RunSpec, config: ExperimentConfig, data: Dataset, run_dir: Path,
              progress: Optional[ProgressCallback] = None) -> dict[str, Any]:
    """Train one model, logging to ``run_dir/metrics.jsonl``; return the run's summary record."""
    torch.manual_seed(spec.seed)
    device = config.device
    n_train = len(data.train_y)
    steps = int(config.epochs * n_train) // spec.batch_size
    total = steps * spec.batch_size       # the same for every batch size that divides epochs * n_train
    model = build_model(spec, config, steps).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(spec.seed)
    log_every = max(1, steps // config.log_points)
    eval_steps = {max(1, round(steps * (i + 1) / config.eval_points)) for i in range(config.eval_points)}
    eval_batch = 500
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = open(run_dir / "metrics.jsonl", "w")

    def log(**entry: Any) -> None:
        metrics.write(json.dumps(entry) + "\n")

    start = time.perf_counter()
    permutation, cursor = torch.randperm(n_train, generator=order), 0
    window_loss, window_steps = 0.0, 0
    samples_to_target: Optional[int] = None
    diverged_at: Optional[int] = None
    model.train()
    for step in range(1, steps + 1):
        if cursor + spec.batch_size > n_train:
            permutation, cursor = torch.randperm(n_train, generator=order), 0
        index = permutation[cursor:cursor + spec.batch_size]
        cursor += spec.batch_size
        lr = learning_rate(config, spec.batch_size, (step - 1) * spec.batch_size, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = nn.functional.cross_entropy(model(data.train_x[index].to(device)), data.train_y[index].to(device))
        value = float(loss.detach())
        if not math.isfinite(value):
            diverged_at = step * spec.batch_size
            log(kind="diverged", step=step, samples=diverged_at, loss=value)
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window_loss, window_steps = window_loss + value, window_steps + 1
        if step % log_every == 0 or step == steps:
            mean_loss = window_loss / window_steps
            log(kind="train", step=step, samples=step * spec.batch_size, lr=lr, loss=mean_loss)
            if samples_to_target is None and mean_loss <= config.target_loss:
                samples_to_target = step * spec.batch_size
            window_loss, window_steps = 0.0, 0
            if progress is not None:
                progress(step * spec.batch_size, total)
        if step in eval_steps and step != steps:
            log(kind="eval", step=step, samples=step * spec.batch_size,
                eval_error=error_rate(model, data.test_x, data.test_y, eval_batch, device, False))
            model.train()
    train_seconds = time.perf_counter() - start

    eval_right = correct_predictions(model, data.test_x, data.test_y, eval_batch, device, batch_statistics=False)
    batch_right = correct_predictions(model, data.test_x, data.test_y, spec.batch_size, device, batch_statistics=True)
    eval_error = 1.0 - float(eval_right.float().mean())
    batch_stat_error = 1.0 - float(batch_right.float().mean())
    # the gap compares the two modes on the same images (batch statistics may leave out a remainder)
    gap = float(eval_right[:len(batch_right)].float().mean() - batch_right.float().mean())
    steps_done = step if diverged_at is None else step - 1
    record = {
        "run_id": spec.run_id, "norm": spec.norm, "batch_size": spec.batch_size, "seed": spec.seed,
        "steps": steps_done, "samples": steps_done * spec.batch_size, "planned_samples": total,
        "peak_lr": config.base_lr * spec.batch_size / config.reference_batch,
        "diverged": diverged_at is not None, "diverged_at_samples": diverged_at,
        "eval_error": eval_error,                       # eval mode: running statistics
        "batch_stat_error": batch_stat_error,           # train mode: statistics of test batches of this size
        "train_eval_gap": gap,
        "final_train_loss": _last_train_loss(run_dir, metrics),
        "loss_at_quarter": None, "samples_to_target": samples_to_target,
        "train_seconds": train_seconds, "seconds": time.perf_counter() - start,
        "norm_kwargs": {str(c): norm_kwargs(spec.norm, c, spec.batch_size, steps, config)
                        for c in (config.width, 2 * config.width, 4 * config.width)},
    }
    log(kind="final", eval_error=eval_error, batch_stat_error=batch_stat_error,
        train_eval_gap=record["train_eval_gap"], diverged=record["diverged"])
    metrics.close()
    record["loss_at_quarter"] = loss_at_fraction(run_dir / "metrics.jsonl", total, 0.25)
    return record


def _last_train_loss(run_dir: Path, metrics) -> Optional[float]:
    metrics.flush()
    losses = [e["loss"] for e in read_metrics(run_dir / "metrics.jsonl") if e["kind"] == "train"]
    return losses[-1] if losses else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def loss_at_fraction(path: Path, total_samples: int, fraction: float) -> Optional[float]:
    """Mean training loss of the logging window that ends at ``fraction`` of the samples (or the
    first one after it); None when the run stopped before."""
    for entry in read_metrics(path):
        if entry["kind"] == "train" and entry["samples"] >= fraction * total_samples:
            return entry["loss"]
    return None
