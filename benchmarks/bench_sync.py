"""Overhead of SyncChannelNorm over a local ChannelNorm on gloo CPU (2 processes by default).

Each process runs forward+backward of one layer on its own batch shard, in three variants:
``local`` (ChannelNorm, backend="auto": torch's kernel), ``local_reference`` (ChannelNorm with the
pure-torch math that the synchronized path also uses, so the ratio against it isolates the
communication) and ``sync`` (SyncChannelNorm). It also counts the collectives one training step
issues. Timings are medians over ``--iters`` steps after warm-up, taken on rank 0 after a barrier.

    python benchmarks/bench_sync.py                 # writes benchmarks/results/sync_overhead.{csv,json}
    python benchmarks/bench_sync.py --world 2 --iters 30 --shapes 8x32x16x16 32x64x32x32
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import channelnorm as cn  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time_steps(layer, x, iters: int, warmup: int = 3) -> float:
    """Median seconds of one forward+backward step (barrier first, so all ranks start together)."""
    g = torch.randn_like(x)
    times = []
    for i in range(warmup + iters):
        xi = x.detach().requires_grad_(True)
        dist.barrier()
        t0 = time.perf_counter()
        (layer(xi) * g).sum().backward()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _time_collectives(num_channels: int, iters: int, warmup: int = 3) -> float:
    """Median seconds of the step's two collectives alone, with the same payloads (communication floor)."""
    times = []
    for i in range(warmup + iters):
        packed = torch.zeros(3 + 2 * num_channels, dtype=torch.float64)  # header + mean + M2, float64
        parts = [torch.empty_like(packed) for _ in range(dist.get_world_size())]
        grads = torch.zeros(2 * num_channels)
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_gather(parts, packed)
        dist.all_reduce(grads)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _count_collectives(layer, x) -> dict:
    names = ("all_gather", "all_reduce", "broadcast", "all_gather_into_tensor", "reduce_scatter_tensor")
    originals = {n: getattr(dist, n) for n in names}
    counts = {"forward": 0, "backward": 0}
    phase = ["forward"]

    def wrap(fn):
        def inner(*a, **k):
            counts[phase[0]] += 1
            return fn(*a, **k)
        return inner
    for n, fn in originals.items():
        setattr(dist, n, wrap(fn))
    try:
        xi = x.detach().requires_grad_(True)
        y = layer(xi)
        phase[0] = "backward"
        y.sum().backward()
    finally:
        for n, fn in originals.items():
            setattr(dist, n, fn)
    return counts


def _worker(rank: int, world: int, port: int, shapes, iters: int, threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    rows = []
    try:
        for shape in shapes:
            torch.manual_seed(rank)
            x = torch.randn(shape)
            c = shape[1]
            variants = {
                "local": cn.ChannelNorm(c),
                "local_reference": cn.ChannelNorm(c, backend="reference"),
                "sync": cn.SyncChannelNorm(c),
            }
            timings = {name: _time_steps(layer, x, iters) for name, layer in variants.items()}
            collectives = _count_collectives(variants["sync"], x)
            comm = _time_collectives(c, iters)
            rows.append({
                "shape_per_rank": "x".join(map(str, shape)),
                "world": world,
                "local_ms": 1e3 * timings["local"],
                "local_reference_ms": 1e3 * timings["local_reference"],
                "sync_ms": 1e3 * timings["sync"],
                "collectives_only_ms": 1e3 * comm,
                "sync_over_local": timings["sync"] / timings["local"],
                "sync_over_local_reference": timings["sync"] / timings["local_reference"],
                "collectives_forward": collectives["forward"],
                "collectives_backward": collectives["backward"],
            })
        if rank == 0:
            Path(out).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()
    # torch 2.13's gloo teardown sometimes aborts at interpreter exit after all work is done
    # (tests/test_distributed.py::_exit_after_teardown); the results are written, so skip the exit hooks.
    sys.stdout.flush()
    os._exit(0)


def _git_hash() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--shapes", nargs="+", default=["8x32x16x16", "32x64x32x32"],
                        help="per-rank input shapes NxCxHxW")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sync_overhead")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{args.out}.tmp.json")
    mp.spawn(_worker, args=(args.world, _free_port(), shapes, args.iters, args.threads, str(tmp)),
             nprocs=args.world, join=True)
    rows = json.loads(tmp.read_text())
    tmp.unlink()
    env = {
        "torch": torch.__version__,
        "backend": "gloo (CPU, 127.0.0.1)",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "threads_per_process": args.threads,
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "git": _git_hash(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "iters": args.iters,
        "command": "python benchmarks/bench_sync.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    with open(f"{args.out}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) + ["torch", "git"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "torch": env["torch"], "git": env["git"]})
    print(json.dumps(env, indent=2))
    for row in rows:
        print(f"{row['shape_per_rank']:>14} world={row['world']}  local {row['local_ms']:.3f} ms  "
              f"reference {row['local_reference_ms']:.3f} ms  sync {row['sync_ms']:.3f} ms  "
              f"(collectives alone {row['collectives_only_ms']:.3f} ms)  "
              f"sync/local {row['sync_over_local']:.2f}x  sync/reference {row['sync_over_local_reference']:.2f}x  "
              f"collectives fwd={row['collectives_forward']} bwd={row['collectives_backward']}")


if __name__ == "__main__":
    main()
