"""Training of one cell: K members (seed, learning rate) of one norm at one (normalization batch,
SGD batch) trained side by side as one wide network (``models.ResidualCNN(models=K)``).

Member k sees exactly what a single run with its seed would see: its own initialization
(``build_model(seeds=...)``), its own data order (a generator seeded with its seed), its own loss
(the sum of the members' mean losses has, for each member's parameters, that member's gradient),
and its own optimizer state (``MemberSGD`` is torch's SGD applied slice by slice). A member whose
loss turns non-finite is stopped (learning rate 0) and marked diverged; the others go on.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ..modules import is_norm, module_traits
from ..tools.precise import recompute_stats
from .models import ResidualCNN, build_model

ProgressCallback = Callable[[int, int], None]   # (steps done, steps total)


@dataclass(frozen=True)
class Member:
    seed: int
    peak_lr: float


@dataclass(frozen=True)
class TrainPlan:
    """What one cell trains: the norm, its normalization batch, the SGD batch and the schedule."""
    norm: str
    norm_batch: int
    sgd_batch: int
    steps: int
    members: tuple[Member, ...]
    width: int
    max_groups: int = 8
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.1
    log_points: int = 20
    curve_points: int = 30
    channels_last: bool = False
    in_channels: int = 3          # of the images (the data set's), read by the network's stem
    stem_stride: int = 1          # models.stem_stride of the image size: 2 halves large images
    frozen_tail_step: Optional[int] = None   # from this 0-based step on, norms use population statistics


def norm_settings(norm: str, norm_batch: int, sgd_batch: int) -> tuple[str, dict[str, Any]]:
    """The library norm that realises ``norm`` at this normalization batch: channel norm below the
    SGD batch is a ghost norm whose virtual batch is the normalization batch (at the SGD batch it is
    the plain channel norm); every other kind is itself (its function does not depend on the batch)."""
    if norm == "channel" and norm_batch < sgd_batch:
        return "ghost", {"virtual_batch_size": norm_batch}
    return norm, {}


def build_cell_model(plan: TrainPlan, seeds: Optional[Sequence[int]] = None, norm_batch: Optional[int] = None,
                     sgd_batch: Optional[int] = None) -> ResidualCNN:
    kind, kwargs = norm_settings(plan.norm, norm_batch or plan.norm_batch, sgd_batch or plan.sgd_batch)
    if kind == "batch_renorm":
        # Ioffe (2017) relaxed the bounds gradually from plain batch norm (rmax 1, dmax 0) to 3 and 5
        # over a large part of training; the ramp here reaches them at half of the steps
        kwargs = {"rmax": 3.0, "dmax": 5.0, "warmup_steps": max(1, plan.steps // 2)}
    model = build_model(kind, plan.width, len(plan.members), plan.max_groups,
                        seeds=tuple(m.seed for m in plan.members) if seeds is None else seeds,
                        in_channels=plan.in_channels, stem_stride=plan.stem_stride, **kwargs)
    return model.to(memory_format=torch.channels_last) if plan.channels_last else model


def schedule(step: int, steps: int, warmup_fraction: float) -> float:
    """Factor of the peak learning rate at 0-based ``step``: linear warm-up over the first
    ``warmup_fraction`` of the steps (reaching 1 at its last step), then cosine decay to 0."""
    warmup = int(round(warmup_fraction * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class MemberSGD:
    """SGD with momentum and weight decay (torch.optim.SGD's update, dampening 0, no Nesterov)
    with one learning rate per member. Every parameter of the wide network is laid out member by
    member along dim 0, so member k's slice gets ``lrs[k]``."""

    def __init__(self, params: Sequence[nn.Parameter], members: int, momentum: float, weight_decay: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.members, self.momentum, self.weight_decay = members, momentum, weight_decay
        self.buffers: list[Optional[torch.Tensor]] = [None] * len(self.params)

    def _per_slice(self, values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return values.repeat_interleave(p.shape[0] // self.members).view(-1, *([1] * (p.ndim - 1)))

    @torch.no_grad()
    def step(self, lrs: torch.Tensor) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            buf = self.buffers[i]
            if buf is None:
                buf = self.buffers[i] = d.clone()
            else:
                buf.mul_(self.momentum).add_(d)
            p.sub_(self._per_slice(lrs, p) * buf)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


@dataclass
class MemberLog:
    """What one member's training wrote: the metrics lines and the summary numbers."""
    entries: list[dict[str, Any]] = field(default_factory=list)
    diverged_at: Optional[int] = None
    final_train_loss: Optional[float] = None


def batch_indices(seed: int, n: int, batch: int, steps: int) -> torch.Tensor:
    """(steps, batch) training indices of the member with ``seed``: epochs of a seeded permutation,
    a new permutation when the rest of one does not fill a batch."""
    order = torch.Generator().manual_seed(seed)
    rows, cursor, permutation = [], n, None
    for _ in range(steps):
        if cursor + batch > n:
            permutation, cursor = torch.randperm(n, generator=order), 0
        rows.append(permutation[cursor:cursor + batch])
        cursor += batch
    return torch.stack(rows) if rows else torch.empty(0, batch, dtype=torch.long)


def wide_input(x: torch.Tensor, indices: Sequence[torch.Tensor], channels_last: bool) -> torch.Tensor:
    """Member k's images side by side on the channel axis: (B, C, H, W) images give (B, K*C, H, W)."""
    batch = torch.cat([x[i] for i in indices], dim=1)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def curve_steps(steps: int, points: int) -> set[int]:
    """The 1-based steps after which the error curve is read: ``points`` evenly spaced, the last one
    after the last step."""
    return {max(1, round(steps * (i + 1) / points)) for i in range(points)}


def freeze_batch_statistics(model: nn.Module) -> None:
    """Put every norm that normalizes with batch statistics in eval mode (population statistics,
    no running updates) and keep the rest of ``model`` as it is: the FrozenBN tail."""
    for module in model.modules():
        if is_norm(module) and module_traits(module).uses_batch_statistics:
            module.eval()


def conv_backend(channels_last: bool):
    """The context the training runs in: oneDNN off for channels_last convolutions on the CPU, whose
    backward of a strided 1x1 convolution corrupts the heap in torch 2.13 on AVX2 CPUs (seen here:
    "corrupted double-linked list", an abort inside ``loss.backward()``); torch's own kernels run
    instead. NCHW (the experiment's default) keeps oneDNN, and its flags untouched (setting them
    prints a TF32 warning on CPU builds)."""
    return torch.backends.mkldnn.flags(enabled=False) if channels_last else contextlib.nullcontext()


def train_members(plan: TrainPlan, train_x: torch.Tensor, train_y: torch.Tensor,
                  curve: Optional[Callable[[nn.Module], list[float]]] = None,
                  progress: Optional[ProgressCallback] = None,
                  model: Optional[ResidualCNN] = None,
                  population_x: Optional[torch.Tensor] = None) -> tuple[ResidualCNN, list[MemberLog], float]:
    """Train the cell's K members; returns the wide model, each member's log and the seconds taken
    (see ``_train`` for what is trained; this runs it under ``conv_backend``).

    ``curve(model)`` is called at ``curve_points`` evenly spaced steps (and after the last) and
    returns each member's error then; it lands in the logs as ``kind: "curve"`` entries. With
    ``plan.frozen_tail_step``, the running statistics are set to the population statistics of
    ``population_x`` (``recompute_stats``, normalizing as in training) at that step, and the norms
    train from then on with those statistics held fixed."""
    with conv_backend(plan.channels_last):
        return _train(plan, train_x, train_y, curve, progress, model, population_x)


def _train(plan: TrainPlan, train_x: torch.Tensor, train_y: torch.Tensor,
           curve: Optional[Callable[[nn.Module], list[float]]], progress: Optional[ProgressCallback],
           model: Optional[ResidualCNN],
           population_x: Optional[torch.Tensor]) -> tuple[ResidualCNN, list[MemberLog], float]:
    k = len(plan.members)
    model = model if model is not None else build_cell_model(plan)
    optimizer = MemberSGD(list(model.parameters()), k, plan.momentum, plan.weight_decay)
    peaks = torch.tensor([m.peak_lr for m in plan.members], dtype=torch.float32)
    alive = torch.ones(k, dtype=torch.bool)
    orders = [batch_indices(m.seed, len(train_y), plan.sgd_batch, plan.steps) for m in plan.members]
    logs = [MemberLog() for _ in plan.members]
    log_every = max(1, plan.steps // plan.log_points)
    read_at = curve_steps(plan.steps, plan.curve_points)
    frozen = False
    window = torch.zeros(k, dtype=torch.float64)
    window_steps = 0
    start = time.perf_counter()
    model.train()
    for step in range(plan.steps):
        if plan.frozen_tail_step is not None and step == plan.frozen_tail_step:
            if population_x is None:
                raise ValueError("a frozen tail needs population_x, the images of the population statistics")
            recompute_stats(model, population_batches(population_x, plan), progress=False)
            frozen = True
            freeze_batch_statistics(model)
        indices = [order[step] for order in orders]
        x = wide_input(train_x, indices, plan.channels_last)
        y = torch.stack([train_y[i] for i in indices], dim=1)           # (B, K)
        logits = model(x) if k > 1 else model(x).unsqueeze(1)           # (B, K, classes)
        losses = nn.functional.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(dim=0)
        values = losses.detach().double()
        newly_dead = alive & ~torch.isfinite(values)
        for j in torch.nonzero(newly_dead).flatten().tolist():
            logs[j].diverged_at = step + 1
            logs[j].entries.append({"kind": "diverged", "step": step + 1, "loss": float(values[j])})
        alive &= ~newly_dead
        if not alive.any():
            break
        optimizer.zero_grad()
        losses[alive].sum().backward()
        lrs = peaks * schedule(step, plan.steps, plan.warmup_fraction) * alive
        optimizer.step(lrs)
        for j in torch.nonzero(newly_dead).flatten().tolist():
            silence_member(model, optimizer, j, k)     # after the step: autograd still held its weights
        window += torch.where(alive, values, torch.zeros_like(values))
        window_steps += 1
        done = step + 1
        if done % log_every == 0 or done == plan.steps:
            for j, log in enumerate(logs):
                if alive[j]:
                    loss = float(window[j]) / window_steps
                    log.entries.append({"kind": "train", "step": done, "samples": done * plan.sgd_batch,
                                        "lr": float(lrs[j]), "loss": loss})
                    log.final_train_loss = loss
            window.zero_()
            window_steps = 0
            if progress is not None:
                progress(done, plan.steps)
        if curve is not None and done in read_at:
            errors = curve(model)
            model.train()
            if frozen:
                freeze_batch_statistics(model)
            for j, log in enumerate(logs):
                if alive[j]:
                    log.entries.append({"kind": "curve", "step": done, "samples": done * plan.sgd_batch,
                                        "error": errors[j]})
    return model, logs, time.perf_counter() - start


def population_batches(x: torch.Tensor, plan: TrainPlan, chunk: int = 256) -> list[torch.Tensor]:
    """``x`` as wide batches (every member sees every image) of a multiple of the normalization
    batch, for ``recompute_stats``."""
    nb = plan.norm_batch
    # a ghost norm splits any multiple of its virtual batch; a plain one normalizes what it is given
    step = nb if nb >= plan.sgd_batch else max(nb, chunk - chunk % nb)
    k = len(plan.members)
    return [wide_input(x, [torch.arange(s, min(s + step, len(x)))] * k, plan.channels_last)
            for s in range(0, len(x) - len(x) % plan.norm_batch, step)]


@torch.no_grad()
def silence_member(model: nn.Module, optimizer: MemberSGD, index: int, members: int) -> None:
    """Zero a diverged member's parameters, momentum and running statistics (variance 1), so that its
    slice computes finite zeros: a non-finite statistic anywhere in a layer would otherwise stop the
    running-statistics update of the whole layer, i.e. of every other member too."""
    for p in model.parameters():
        p.chunk(members)[index].zero_()
    for buf in optimizer.buffers:
        if buf is not None:
            buf.chunk(members)[index].zero_()
    for name, b in model.named_buffers():
        if b.ndim and b.is_floating_point():
            b.chunk(members)[index].fill_(1.0 if name.endswith("running_var") else 0.0)

