"""Test error of each member of a trained cell under the three evaluation statistics:

* ``ema``: eval mode, the running (exponential moving average) statistics of training;
* ``precise``: eval mode after ``recompute_stats`` set the running statistics to the population
  statistics of training images, each layer normalizing as in training (normalization batch of
  the cell) while they are gathered;
* ``batch``: train mode, each test batch of ``norm_batch`` images normalized with its own statistics.

Batch-independent norms compute the same function in all three, so they are evaluated once.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..tools.precise import recompute_stats
from .config import uses_batch_statistics
from .train import TrainPlan, build_cell_model

EVALS = ("ema", "precise", "batch")
EVAL_CHUNK = 500      # test images per forward (eval mode; memory only, no effect on the result)
PRECISE_CHUNK = 256   # training images per forward while gathering population statistics


@torch.no_grad()
def member_errors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, members: int, channels_last: bool,
                  chunk: int = EVAL_CHUNK) -> list[float]:
    """Each member's share of misclassified images (%); every member sees every image. The model's
    train/eval mode is used as it is. Non-finite logits count as wrong."""
    wrong = torch.zeros(members, dtype=torch.float64)
    for start in range(0, len(y), chunk):
        xb = x[start:start + chunk].repeat(1, members, 1, 1)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        logits = model(xb)
        logits = logits.unsqueeze(1) if members == 1 else logits
        right = (logits.argmax(dim=2) == y[start:start + chunk, None]) & torch.isfinite(logits).all(dim=2)
        wrong += (~right).sum(dim=0).double()
    return (100.0 * wrong / len(y)).tolist()


def _grouped_twin(model: nn.Module, plan: TrainPlan) -> tuple[nn.Module, int]:
    """A copy of ``model`` that, in train mode, normalizes every run of ``plan.norm_batch`` images
    with their own statistics, and the largest forward size that keeps that true. Channel norm
    becomes a ghost norm with that virtual batch (same parameters and buffers), so forwards can be
    large; the ghost norm already splits; other batch-statistic norms forward one batch at a time."""
    if plan.norm in ("channel", "ghost"):
        # seeds=(): no re-seeding of the global generator (the trained state is loaded right after)
        twin = build_cell_model(plan, seeds=(), norm_batch=plan.norm_batch, sgd_batch=plan.norm_batch + 1)
        twin.load_state_dict(model.state_dict())
        return twin, EVAL_CHUNK - EVAL_CHUNK % plan.norm_batch
    return copy.deepcopy(model), plan.norm_batch


def evaluate_members(model: nn.Module, plan: TrainPlan, test_x: torch.Tensor, test_y: torch.Tensor,
                     precise_x: torch.Tensor) -> dict[str, list[float]]:
    """{eval: per-member error %} for the three evaluations (see the module docstring).
    ``precise_x``: the training images whose population statistics the precise evaluation uses;
    its length must be a multiple of the normalization batch."""
    k = len(plan.members)
    model.eval()
    ema = member_errors(model, test_x, test_y, k, plan.channels_last)
    if not uses_batch_statistics(plan.norm):
        return {name: list(ema) for name in EVALS}
    usable = len(test_y) - len(test_y) % plan.norm_batch
    grouped, chunk = _grouped_twin(model, plan)
    grouped.train()
    batch = member_errors(grouped, test_x[:usable], test_y[:usable], k, plan.channels_last, chunk=chunk)
    step = min(chunk, PRECISE_CHUNK - PRECISE_CHUNK % plan.norm_batch)
    batches = [_wide(precise_x[s:s + step], k, plan.channels_last) for s in range(0, len(precise_x), step)]
    recompute_stats(grouped, batches, progress=False)
    grouped.eval()
    precise = member_errors(grouped, test_x, test_y, k, plan.channels_last)
    return {"ema": ema, "precise": precise, "batch": batch}


def _wide(x: torch.Tensor, members: int, channels_last: bool) -> torch.Tensor:
    xb = x.repeat(1, members, 1, 1)
    return xb.contiguous(memory_format=torch.channels_last) if channels_last else xb


def curve_evaluator(plan: TrainPlan, test_x: torch.Tensor,
                    test_y: torch.Tensor) -> Callable[[nn.Module], list[float]]:
    """For ``train_members``: each member's error on these images read with statistics that do not
    depend on the running (EMA) estimates: per-batch statistics of the cell's normalization batch
    for norms that use batch statistics (a twin model normalizes, so the trained model's buffers
    are untouched), eval mode for the others (their statistics are per sample)."""
    k = len(plan.members)
    if not uses_batch_statistics(plan.norm):
        def evaluate(model: nn.Module) -> list[float]:
            model.eval()
            return member_errors(model, test_x, test_y, k, plan.channels_last)
        return evaluate
    usable = len(test_y) - len(test_y) % plan.norm_batch
    built: dict[str, tuple[nn.Module, int]] = {}

    def evaluate_per_batch(model: nn.Module) -> list[float]:
        if not built:
            built["twin"] = _grouped_twin(model, plan)
        twin, chunk = built["twin"]
        twin.load_state_dict(model.state_dict())
        twin.train()
        return member_errors(twin, test_x[:usable], test_y[:usable], k, plan.channels_last, chunk=chunk)
    return evaluate_per_batch
