"""CPU overhead of the library's norms against torch's own modules (issue 12, item 1).

Per shape, norm and mode, the library module and the torch module run side by side in one
process, single-threaded, interleaved (ours, torch, torch, ours, ...) so that load from other
processes on a shared machine hits both alike. Each round times ``--number`` calls as one block;
per side the median and the best over ``--rounds`` rounds are kept, and the per-round ratio
(ours / torch, measured back to back) gives a noise-robust median ratio.

Pairs (affine=True, ``track_running_stats`` as torch's default for each module):

* ``channel``:  ``cn.ChannelNorm``  vs ``nn.BatchNorm2d``   (running statistics tracked)
* ``group``:    ``cn.GroupNorm``    vs ``nn.GroupNorm``     (largest divisor of C <= 8 groups,
  as the experiment uses)
* ``instance``: ``cn.InstanceNorm`` vs ``nn.InstanceNorm2d(affine=True)`` (no running statistics)

Modes: ``train_fwd`` (training forward), ``train_fwdbwd`` (forward + backward of dx, dweight,
dbias), ``eval_fwd`` (eval forward, under ``torch.no_grad``). Plus the experiment's batch-2
training step: ``ResidualCNN`` (width 16, 16x16 images, SGD momentum 0.9, weight decay 5e-4,
cross entropy) built with the library's norm and with torch's, the same weights.

    python benchmarks/bench_cpu_overhead.py                       # full grid (~several minutes)
    python benchmarks/bench_cpu_overhead.py --quick               # a quick look
    python benchmarks/bench_cpu_overhead.py --shapes 2,64,4,4 --norms channel --modes train_fwdbwd

Writes ``benchmarks/results/cpu_overhead_<UTC time>.json`` (or ``--out DIR``) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

import channelnorm as cn
from channelnorm.experiments.environment import git_revision
from channelnorm.experiments.models import ResidualCNN

NORMS = ("channel", "group", "instance")
MODES = ("train_fwd", "train_fwdbwd", "eval_fwd")
SMALL_SHAPES = ((2, 16, 16, 16), (8, 64, 8, 8), (2, 64, 4, 4), (32, 64, 8, 8))
LARGE_SHAPES = ((16, 64, 56, 56),)
SCHEMA_VERSION = 1


def groups_for(channels: int, limit: int = 8) -> int:
    """The experiment's group count: the largest divisor of ``channels`` not above ``limit``."""
    return max(d for d in range(1, min(channels, limit) + 1) if channels % d == 0)


def make_pair(norm: str, channels: int) -> tuple[nn.Module, nn.Module]:
    """(library module, torch module) with the same parameters."""
    if norm == "channel":
        ours, theirs = cn.ChannelNorm(channels), nn.BatchNorm2d(channels)
    elif norm == "group":
        g = groups_for(channels)
        ours, theirs = cn.GroupNorm(g, channels), nn.GroupNorm(g, channels)
    elif norm == "instance":
        ours, theirs = cn.InstanceNorm(channels), nn.InstanceNorm2d(channels, affine=True)
    else:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    with torch.no_grad():
        weight = torch.rand(channels) + 0.5
        bias = torch.randn(channels)
        for m in (ours, theirs):
            m.weight.copy_(weight)
            m.bias.copy_(bias)
    return ours, theirs


def _call(module: nn.Module, mode: str, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """A closure running one call of ``module`` in ``mode``."""
    if mode == "train_fwd":
        module.train()
        # A training forward records the graph (the input requires grad), as in a training step.
        xg = x.detach().requires_grad_(True)

        def run() -> None:
            module(xg)
        return run
    if mode == "train_fwdbwd":
        module.train()
        xg = x.detach().requires_grad_(True)

        def run() -> None:
            module(xg).backward(grad)
        return run
    if mode == "eval_fwd":
        module.eval()
        xd = x.detach()

        def run() -> None:
            with torch.no_grad():
                module(xd)
        return run
    raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def time_pair(ours: Callable[[], None], theirs: Callable[[], None], rounds: int, number: int,
              warmup: int) -> dict:
    """Interleaved timing: per round, ``number`` calls of each as one block, the order alternating."""
    for _ in range(warmup):
        ours()
        theirs()
    ours_s: list[float] = []
    theirs_s: list[float] = []
    for r in range(rounds):
        order = ((ours, ours_s), (theirs, theirs_s)) if r % 2 == 0 else ((theirs, theirs_s), (ours, ours_s))
        for fn, sink in order:
            start = time.perf_counter()
            for _ in range(number):
                fn()
            sink.append((time.perf_counter() - start) / number)
    per_round = [a / b for a, b in zip(ours_s, theirs_s)]
    return {
        "ours_us_median": statistics.median(ours_s) * 1e6, "ours_us_best": min(ours_s) * 1e6,
        "torch_us_median": statistics.median(theirs_s) * 1e6, "torch_us_best": min(theirs_s) * 1e6,
        "ratio_best": min(ours_s) / min(theirs_s),
        "ratio_median_of_rounds": statistics.median(per_round),
        "rounds": rounds, "number": number,
    }


def _number_for(shape: tuple[int, ...], base: int) -> int:
    """Fewer calls per block for large tensors, so a round stays around the same wall time."""
    numel = 1
    for s in shape:
        numel *= s
    return max(2, min(base, int(base * 32768 / max(numel, 1))) if numel > 32768 else base)


def bench_norms(shapes, norms, modes, rounds: int, number: int, warmup: int, log=print) -> list[dict]:
    rows = []
    for shape in shapes:
        x = torch.randn(*shape)
        grad = torch.randn(*shape)
        n = _number_for(shape, number)
        for norm in norms:
            for mode in modes:
                ours, theirs = make_pair(norm, shape[1])
                result = time_pair(_call(ours, mode, x, grad), _call(theirs, mode, x, grad), rounds, n,
                                   max(warmup, 1))
                row = {"norm": norm, "mode": mode, "shape": list(shape), **result}
                rows.append(row)
                log(_format_row(row))
    return rows


def build_models(norm: str, width: int, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The experiment's ResidualCNN with the library's norm and with torch's, the same weights."""
    if norm == "channel":
        ours_norm, torch_norm = cn.ChannelNorm, nn.BatchNorm2d
    elif norm == "group":
        def ours_norm(c):
            return cn.GroupNorm(groups_for(c), c)

        def torch_norm(c):
            return nn.GroupNorm(groups_for(c), c)
    elif norm == "instance":
        ours_norm = cn.InstanceNorm

        def torch_norm(c):
            return nn.InstanceNorm2d(c, affine=True)
    else:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    torch.manual_seed(seed)
    ours = ResidualCNN(ours_norm, width=width)
    theirs = ResidualCNN(torch_norm, width=width)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    # As train.train_run: SGD with momentum and weight decay; a tiny lr keeps the weights finite.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def bench_model(norms, batch: int, image_size: int, width: int, rounds: int, number: int, warmup: int,
                log=print) -> list[dict]:
    rows = []
    x = torch.rand(batch, 3, image_size, image_size)
    y = torch.randint(0, 10, (batch,))
    for norm in norms:
        ours, theirs = build_models(norm, width)
        result = time_pair(_train_step(ours, x, y), _train_step(theirs, x, y), rounds, number, max(warmup, 1))
        row = {"norm": norm, "mode": "model_train_step", "shape": [batch, 3, image_size, image_size],
               "width": width, **result}
        rows.append(row)
        log(_format_row(row))
    return rows


def _format_row(row: dict) -> str:
    shape = "x".join(map(str, row["shape"]))
    return (f"{row['norm']:9s} {row['mode']:17s} {shape:14s} ours {row['ours_us_best']:10.1f} us  "
            f"torch {row['torch_us_best']:10.1f} us  ratio(best) {row['ratio_best']:5.2f}  "
            f"ratio(median of rounds) {row['ratio_median_of_rounds']:5.2f}")


def cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _load() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be comma-separated integers like 2,16,16,16, got {text!r}")
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape must be 4 positive integers (N,C,H,W), got {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=None,
                        help="N,C,H,W shapes (default: the small shapes and (16,64,56,56))")
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per row (per side)")
    parser.add_argument("--number", type=int, default=200, help="calls per round at small shapes")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--model-norms", nargs="*", default=["channel", "group"], choices=NORMS,
                        help="norms for the batch-2 ResidualCNN training step (none: skip it)")
    parser.add_argument("--model-rounds", type=int, default=15)
    parser.add_argument("--model-number", type=int, default=20)
    parser.add_argument("--model-batch", type=int, default=2)
    parser.add_argument("--model-image-size", type=int, default=16)
    parser.add_argument("--model-width", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="few rounds and calls: a look at the numbers, not a result to commit")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return parser


def run(argv=None, log=print) -> Path:
    """Run the benchmark; return the path of the JSON written."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.rounds, args.number, args.warmup = min(args.rounds, 5), min(args.number, 50), min(args.warmup, 5)
        args.model_rounds, args.model_number = min(args.model_rounds, 3), min(args.model_number, 5)
    shapes = args.shapes or list(SMALL_SHAPES + LARGE_SHAPES)
    torch.set_num_threads(args.threads)
    load_before = _load()
    started = datetime.now(timezone.utc)
    rows = bench_norms(shapes, args.norms, args.modes, args.rounds, args.number, args.warmup, log)
    rows += bench_model(args.model_norms, args.model_batch, args.model_image_size, args.model_width,
                        args.model_rounds, args.model_number, args.warmup, log)
    result = {
        "schema_version": SCHEMA_VERSION,
        "command": " ".join([Path(sys.argv[0]).name if argv is None else "bench_cpu_overhead.py",
                             *(sys.argv[1:] if argv is None else list(argv))]),
        "started_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "environment": {
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "channelnorm": cn.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "git_hash": git_revision(),
            "load_average_before": load_before, "load_average_after": _load(),
        },
        "method": ("interleaved blocks of `number` calls, order alternating per round; *_best: fastest round, "
                   "*_median: median round (per call); ratio = ours / torch"),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cpu_overhead_{started.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {path}")
    return path


def main(argv=None) -> Path:
    return run(argv)


if __name__ == "__main__":
    main()
