"""Kernel benchmark of the Triton backend against torch eager and torch.compile (issue 4).

For each shape x layout x dtype x norm x pass (forward, backward, forward+backward) it records
the time of ``backend="triton"``, of torch's eager module in the same layout and dtype
(``nn.BatchNorm*d`` / ``nn.GroupNorm`` / ``nn.LayerNorm``) and of ``torch.compile`` of that module;
the achieved bandwidth for the minimum traffic (forward 2|X|, backward 3|X|, both 5|X|); the
device's copy bandwidth measured in the same run (``dst.copy_(src)`` of the same size, 2|X|) and
the ratio of the two; and the speedups over eager and compiled torch. Timings are medians from
``triton.testing.do_bench`` (L2 flushed between repetitions).

    python benchmarks/bench_kernels.py                       # full grid on the current GPU
    python benchmarks/bench_kernels.py --batches 32 --dtypes bf16 --layouts nhwc
    python benchmarks/bench_kernels.py --smoke --out /tmp/b  # CPU, Triton interpreter, tiny shapes:
                                                             # checks the harness runs, times mean nothing
    python benchmarks/bench_kernels.py --host-overhead       # host time per call, kernel launches stubbed
                                                             # (CPU or GPU; prints JSON)
    python benchmarks/bench_kernels.py --tune --dtypes bf16  # split kernels' (stages, tile bytes) candidates

Writes ``kernels-<device>-<time>.csv``, ``.json`` (with device, torch/triton versions, git hash) and
``.md`` (summary table and every row that misses an issue-4 target)
to ``--out`` (default ``benchmarks/results``; ``--smoke`` has no default: its numbers are not results).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the only way to run the kernels without a GPU (smoke mode)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import channelnorm.functional as CF  # noqa: E402
from channelnorm.experiments.environment import git_revision  # noqa: E402

RESNET50_SHAPES = [(64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7)]   # (C, H=W) per stage
TRANSFORMER_SHAPES = [(8192, 768), (16384, 1024), (8192, 4096)]             # (tokens, C)
SMOKE_SHAPES = [(2, 4, 3, 3), (6, 8)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PASSES = ("fwd", "bwd", "fwdbwd")
TRAFFIC = {"fwd": 2, "bwd": 3, "fwdbwd": 5}   # multiples of |X| that any implementation must move


def shapes(batches, smoke: bool, stages=None, transformer: bool = True):
    if smoke:
        return list(SMOKE_SHAPES)
    out = [(n, c, hw, hw) for n in batches for c, hw in (stages or RESNET50_SHAPES)]
    return out + (list(TRANSFORMER_SHAPES) if transformer else [])


def layouts_for(shape, layouts):
    return [l for l in layouts if len(shape) == 4] if len(shape) == 4 else ["nc"]


def make_input(shape, layout, dtype, device):
    x = torch.randn(shape, device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x


def groups_for(shape) -> int:
    """32 groups (the Group Norm paper's default) on images; one group (layer norm) on (tokens, C)."""
    return 1 if len(shape) == 2 else math.gcd(32, shape[1])


def torch_module(norm: str, shape, device):
    """torch's own module for this norm and rank, fp32 parameters (mixed precision as under autocast)."""
    C = shape[1]
    if norm == "channel":
        module = torch.nn.BatchNorm2d(C) if len(shape) == 4 else torch.nn.BatchNorm1d(C)
    elif len(shape) == 2:
        module = torch.nn.LayerNorm(C)    # GroupNorm(1, C) on (N, C) is exactly nn.LayerNorm(C)
    else:
        module = torch.nn.GroupNorm(groups_for(shape), C)
    return module.to(device).train()


def ours(norm: str, shape, device):
    C = shape[1]
    w = torch.ones(C, device=device, requires_grad=True)
    b = torch.zeros(C, device=device, requires_grad=True)
    if norm == "channel":
        rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
        return lambda x: CF.channel_norm(x, rm, rv, w, b, True, 0.1, 1e-5, backend="triton"), (w, b)
    return lambda x: CF.group_norm(x, groups_for(shape), w, b, backend="triton"), (w, b)


TIMING = {"warmup": 25, "rep": 100}   # ms of do_bench warm-up and repetitions (--quick-timing: 10 / 40)


def bench(fn, device) -> float:
    """Median milliseconds of ``fn()``."""
    if device == "cuda":
        return triton.testing.do_bench(fn, warmup=TIMING["warmup"], rep=TIMING["rep"], return_mode="median")
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def pass_fn(forward, params, x, dy, which: str):
    """A zero-argument callable running one pass of ``forward`` on ``x``."""
    if which == "fwd":
        def run():
            with torch.no_grad():
                forward(x)
        return run
    xg = x.detach().requires_grad_()
    inputs = (xg, *params)
    if which == "bwd":
        y = forward(xg)
        return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)
    return lambda: torch.autograd.grad(forward(xg), inputs, dy)


def check_correct(ours_fn, ours_params, module, x, dy):
    """Triton's y, dx, dweight, dbias against a float64 run of torch's module: within 2x torch's own
    error in x's dtype plus 4 ulps of the largest value (the rule of tests/ops/triton/_triton_support.py).
    Returns (correct, worst error)."""
    import copy

    def run(fn, params, inp, grad):
        inp = inp.detach().requires_grad_()
        y = fn(inp)
        grads = torch.autograd.grad(y, (inp, *params), grad)
        return [y.detach(), *grads]

    ref_module = copy.deepcopy(module).double()
    ours = run(ours_fn, ours_params, x, dy)
    eager = run(module, tuple(module.parameters()), x, dy)
    ref = run(ref_module, tuple(ref_module.parameters()), x.double(), dy.double())
    ok, worst = True, 0.0
    for a, t, r in zip(ours, eager, ref):
        err = (a.double() - r).abs().max().item()
        torch_err = (t.double() - r).abs().max().item()
        floor = 4 * torch.finfo(a.dtype).eps * max(r.abs().max().item(), 1.0)
        ok = ok and err <= 2 * torch_err + floor
        worst = max(worst, err)
    return bool(ok), worst


def regimes(norm: str, x) -> dict:
    """The plan's regimes and traffic model for this call (what the kernels were designed to move)."""
    from channelnorm.ops.triton import plan
    per_sample = norm != "channel"
    C = x.shape[1]
    cp = plan.call_plan(x, 1, groups_for(tuple(x.shape)) if per_sample else C, per_sample)
    f, b = cp.fwd_traffic, cp.bwd_traffic
    return {"fwd": cp.regime_fwd, "bwd": cp.regime_bwd, "fwd_bytes": f.total_bytes, "bwd_bytes": b.total_bytes,
            "fwdbwd_bytes": f.total_bytes + b.total_bytes, "fwd_launches": f.launches, "bwd_launches": b.launches,
            "fwdbwd_launches": f.launches + b.launches}


def copy_ms(x, device) -> float:
    dst = torch.empty_like(x)
    return bench(lambda: dst.copy_(x), device)


def environment(device) -> dict:
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or 'unknown'}), "
                                                                        f"Triton interpreter",
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "git_hash": git_revision() or "unknown", "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }


def run_case(norm, shape, layout, dtype_name, passes, device, with_compile: bool) -> list[dict]:
    dtype = DTYPES[dtype_name]
    x = make_input(shape, layout, dtype, device)
    dy = make_input(shape, layout, dtype, device)
    nbytes = x.numel() * x.element_size()
    copy = copy_ms(x, device)
    copy_gbs = 2 * nbytes / copy / 1e6
    ours_fn, ours_params = ours(norm, shape, device)
    module = torch_module(norm, shape, device)
    eager_params = "fp32"
    try:
        with torch.no_grad():
            module(x)
    except RuntimeError:  # a torch kernel without mixed-precision support: give it parameters in x's dtype
        module = module.to(dtype)
        eager_params = dtype_name
    correct, max_err = check_correct(ours_fn, ours_params, module, x, dy)
    regime = regimes(norm, x)
    impls = {"triton": (ours_fn, ours_params), "eager": (module, tuple(module.parameters()))}
    if with_compile:
        torch._dynamo.reset()
        impls["compile"] = (torch.compile(module), tuple(module.parameters()))
    rows = []
    for which in passes:
        times = {}
        for name, (fn, params) in impls.items():
            try:
                times[name] = bench(pass_fn(fn, params, x, dy, which), device)
            except Exception as exc:  # recorded, not hidden: a row says which implementation failed and why
                times[name] = float("nan")
                print(f"  {name} {which} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        gbs = TRAFFIC[which] * nbytes / times["triton"] / 1e6
        rows.append({
            "norm": "layer" if (norm == "group" and len(shape) == 2) else norm,
            "shape": "x".join(map(str, shape)), "layout": layout, "dtype": dtype_name, "pass": which,
            "regime": regime["bwd" if which == "bwd" else "fwd"] if which != "fwdbwd" else
            f"{regime['fwd']}+{regime['bwd']}", "model_bytes": regime[f"{which}_bytes"],
            "model_launches": regime[f"{which}_launches"], "correct": correct, "max_err_vs_float64": max_err,
            "eager_params": eager_params, "bytes_x": nbytes, "triton_ms": times["triton"], "eager_ms": times["eager"],
            "compile_ms": times.get("compile", float("nan")), "triton_gbs": gbs, "copy_gbs": copy_gbs,
            "fraction_of_copy_bw": gbs / copy_gbs,
            "speedup_vs_eager": times["eager"] / times["triton"],
            "speedup_vs_compile": times.get("compile", float("nan")) / times["triton"],
        })
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()))
    return rows


def summarize(rows) -> str:
    """Markdown: per (layout, dtype, pass) the geometric-mean speedups and the worst fraction of copy
    bandwidth, then every row that misses a target (correct against float64; >= 1.0x eager, >= 1.5x
    eager on NHWC or bf16, >= 1.0x torch.compile, >= 85% of copy bandwidth on R1/R2 rows)."""
    def geomean(values):
        values = [v for v in values if v == v and v > 0]
        return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")

    lines = ["| layout | dtype | pass | speedup vs eager (geomean) | vs torch.compile (geomean) | min fraction of copy bw |",
             "|---|---|---|---|---|---|"]
    groups = sorted({(r["layout"], r["dtype"], r["pass"]) for r in rows})
    for key in groups:
        sel = [r for r in rows if (r["layout"], r["dtype"], r["pass"]) == key]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {geomean(r['speedup_vs_eager'] for r in sel):.2f} | "
                     f"{geomean(r['speedup_vs_compile'] for r in sel):.2f} | "
                     f"{min(r['fraction_of_copy_bw'] for r in sel):.2f} |")
    misses = []
    for r in rows:
        eager_target = 1.5 if (r["layout"] == "nhwc" or r["dtype"] == "bf16") else 1.0
        why = []
        if not r["speedup_vs_eager"] >= eager_target:
            why.append(f"{r['speedup_vs_eager']:.2f}x eager < {eager_target}x")
        if r["speedup_vs_compile"] == r["speedup_vs_compile"] and r["speedup_vs_compile"] < 1.0:
            why.append(f"{r['speedup_vs_compile']:.2f}x torch.compile < 1.0x")
        if r.get("regime") in ("R1", "R2") and r["fraction_of_copy_bw"] < 0.85:
            why.append(f"{r['fraction_of_copy_bw']:.0%} of copy bandwidth < 85% ({r['regime']})")
        if r.get("correct") is False:
            why.append(f"not correct (max error {r['max_err_vs_float64']:.3g} vs float64)")
        if why:
            misses.append(f"- {r['norm']} {r['shape']} {r['layout']} {r['dtype']} {r['pass']}: " + "; ".join(why))
    lines += ["", f"Rows missing a target: {len(misses)} of {len(rows)}", *misses]
    return "\n".join(lines) + "\n"


def write(rows, env, out: Path, tag: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = "kernels-" + re.sub(r"[^A-Za-z0-9]+", "_", env["device"]).strip("_")[:40] + "-" + \
        env["date_utc"].replace(":", "").replace("-", "")[:15] + (f"-{tag}" if tag else "")
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    (out / f"{stem}.md").write_text(f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}, "
                                    f"git {env['git_hash'][:12]}, {env['date_utc']}\n\n" + summarize(rows))
    return out / stem


class NoOpLaunches:
    """Replace every Triton kernel of the backend with a stub that records its launch and does nothing.

    What is left is the host path of a call: layout checks, the cached plan, allocations, the
    autograd node and the argument lists, i.e. what a GPU would wait on before the first kernel.
    """

    def __init__(self):
        self.log: list[str] = []

    def __enter__(self):
        try:
            from channelnorm.ops.triton import norm as kernels
        except ImportError:   # before the host path moved into ops/triton/norm.py (measured "before" exports)
            from channelnorm.ops.triton import _kernels as kernels
        self._module, self._saved = kernels, {}
        for name, obj in vars(kernels).items():
            if isinstance(obj, triton.runtime.jit.KernelInterface) and not name.startswith("_"):
                self._saved[name] = obj
                setattr(kernels, name, _StubKernel(name, self.log))
        return self

    def __exit__(self, *exc):
        for name, obj in self._saved.items():
            setattr(self._module, name, obj)


class _StubKernel:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(self.name)
        return launch


def host_overhead(device: str, reps: int = 400) -> list[dict]:
    """Microseconds of host time per call of the Triton backend's entry points with no-op kernels.

    Best of 5 rounds of ``reps`` calls each, after a warm-up (plans cached). Entry points of
    ``ops/triton/backend.py`` (what ``ops.dispatch`` calls), so the functional layer's own checks
    are not counted. ``autograd_floor_*`` is an empty custom autograd node with the same inputs:
    torch's own fixed cost, which every fwd_bwd row includes (``Tensor.backward`` starts the engine).
    """
    from channelnorm.ops.triton import backend
    C = 64
    x = torch.randn(2, C, 4, 4, device=device)   # small: CPU allocations of large buffers would dominate
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.ones(C, device=device, requires_grad=True), torch.zeros(C, device=device, requires_grad=True)
    rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
    nbt = torch.zeros((), dtype=torch.long, device=device)
    xg = x.detach().requires_grad_()
    dy = torch.randn_like(x)

    def train(inp):
        return backend.channel_norm(inp, rm, rv, w, b, True, 0.1, 1e-5, 1, nbt)

    class Floor(torch.autograd.Function):   # torch's own cost of one custom autograd node, for reference
        @staticmethod
        def forward(ctx, inp, *params):
            return torch.empty_like(inp)

        @staticmethod
        def backward(ctx, grad):
            return (grad,) + (None,) * 2

    cases = {
        "autograd_floor_fwd": lambda: Floor.apply(xg, w, b),
        "autograd_floor_fwd_bwd": lambda: Floor.apply(xg, w, b).backward(dy),
        "channel_train_fwd": lambda: train(xg),
        "channel_train_fwd_nhwc": lambda: train(x_nhwc.requires_grad_()),
        "channel_train_fwd_bwd": lambda: train(xg).backward(dy),
        "channel_eval_fwd": lambda: backend.channel_norm(xg, rm, rv, w, b, False, 0.1, 1e-5, 1, nbt),
        "channel_eval_fwd_no_grad": lambda: backend.channel_norm(x, rm, rv, None, None, False, 0.1, 1e-5, 1, nbt),
        "group_fwd": lambda: backend.group_norm(xg, 32, w, b, 1e-5, 1),
        "group_fwd_bwd": lambda: backend.group_norm(xg, 32, w, b, 1e-5, 1).backward(dy),
    }
    from channelnorm.ops.triton import plan
    try:
        from channelnorm.ops.triton.norm import norm_backward
    except ImportError:   # before the host path moved into ops/triton/norm.py (measured "before" exports)
        from channelnorm.ops.triton.backward import norm_backward
    if hasattr(plan, "call_plan"):   # (absent before kernels v2, whose host path this also measures)
        cp = plan.call_plan(x, 1, C, False)
        stats = torch.zeros((3, C), device=device)
        # The backward's own host path (what NormFunction.backward runs), without autograd's engine.
        cases["channel_backward_host"] = lambda: norm_backward(dy, x, w, b, None, stats, C, False, True, 1e-5, 1, 0,
                                                               False, cp)
    rows = []
    with NoOpLaunches() as stub:
        for name, fn in cases.items():
            for _ in range(20):
                fn()
            best = best_cpu = float("inf")
            for _ in range(5):
                t0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(reps):
                    fn()
                best = min(best, (time.perf_counter() - t0) / reps)
                best_cpu = min(best_cpu, (time.thread_time() - c0) / reps)
            stub.log.clear()
            fn()
            # Wall time, and this thread's CPU time (what a loaded machine inflates less).
            rows.append({"case": name, "host_us_per_call": round(best * 1e6, 2),
                         "host_cpu_us_per_call": round(best_cpu * 1e6, 2), "launches_per_call": len(stub.log),
                         "kernels": list(stub.log)})
            print(rows[-1])
    return rows


TUNE_SHAPES = [((32, 256, 56, 56), "nhwc"), ((32, 256, 56, 56), "nchw"), ((32, 64, 112, 112), "nhwc"),
               ((8, 512, 28, 28), "nchw")]


def tune(dtype_name: str) -> list[dict]:
    """Forward+backward time of the split (R2/R3) kernels for each ``plan.TUNE_CANDIDATES`` entry
    (pipeline stages, tile bytes) on a few ResNet shapes; the best per shape is marked."""
    from channelnorm.ops.triton import plan
    defaults = (plan.NUM_STAGES, plan.TILE_BYTES)
    rows = []
    try:
        for shape, layout in TUNE_SHAPES:
            x = make_input(shape, layout, DTYPES[dtype_name], "cuda")
            dy = make_input(shape, layout, DTYPES[dtype_name], "cuda")
            fn, params = ours("channel", shape, "cuda")
            times = {}
            for stages, tile in plan.TUNE_CANDIDATES:
                plan.NUM_STAGES, plan.TILE_BYTES = stages, tile
                times[(stages, tile)] = bench(pass_fn(fn, params, x, dy, "fwdbwd"), "cuda")
            best = min(times, key=times.get)
            for (stages, tile), ms in times.items():
                rows.append({"shape": "x".join(map(str, shape)), "layout": layout, "dtype": dtype_name,
                             "num_stages": stages, "tile_bytes": tile, "fwdbwd_ms": ms,
                             "best": (stages, tile) == best, "default": (stages, tile) == defaults})
                print(rows[-1])
    finally:
        plan.NUM_STAGES, plan.TILE_BYTES = defaults
    return rows


def stage(text: str) -> tuple[int, int]:
    """``C:HW`` (channels, height = width) of a ResNet stage, e.g. ``256:56``."""
    try:
        channels, size = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a stage is C:HW, two integers such as 256:56, got {text!r}") from None
    if channels <= 0 or size <= 0:
        raise argparse.ArgumentTypeError(f"a stage's channels and size must be positive, got {text!r}")
    return channels, size


def build_parser() -> argparse.ArgumentParser:
    """The command line (also checked against every invocation in gpu_check.sh by the test suite)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 8, 2])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--layouts", nargs="+", default=["nchw", "nhwc"], choices=["nchw", "nhwc"])
    parser.add_argument("--norms", nargs="+", default=["channel", "group"], choices=["channel", "group"])
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; on CPU under the Triton interpreter")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--stages", nargs="+", metavar="C:HW", type=stage,
                        help="ResNet stages to run, e.g. 256:56 2048:7")
    parser.add_argument("--no-transformer", action="store_true", help="skip the (tokens, C) shapes")
    parser.add_argument("--quick-timing", action="store_true", help="do_bench warm-up 10 ms, repetitions 40 ms")
    parser.add_argument("--tag", default="", help="added to the output file names")
    parser.add_argument("--tune", action="store_true",
                        help="time the split kernels' (num_stages, tile bytes) candidates on a few shapes (GPU)")
    parser.add_argument("--host-overhead", action="store_true",
                        help="host time per call with the kernel launches stubbed out (prints JSON)")
    return parser


def main(argv=None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick_timing:
        TIMING.update(warmup=10, rep=40)
    if args.tune:
        if device != "cuda":
            parser.error("--tune needs a CUDA device")
        out = args.out or ROOT / "benchmarks" / "results"
        env = environment(device)
        rows = [r for d in args.dtypes for r in tune(d)]
        stem = out / ("tune-" + re.sub(r"[^A-Za-z0-9]+", "_", env["device"]).strip("_")[:40] + "-"
                      + env["date_utc"].replace(":", "").replace("-", "")[:15])
        out.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
        print(f"wrote {stem}.json")
        return stem
    if args.host_overhead:
        rows = host_overhead(device)
        print(json.dumps({"environment": environment(device), "torch_threads": torch.get_num_threads(),
                          "rows": rows}, indent=1))
        return None
    if device == "cpu" and not args.smoke:
        parser.error("no CUDA device: only --smoke runs here (the interpreter's times are not kernel times)")
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out: its numbers are not results and do not belong in benchmarks/results")
    out = args.out or ROOT / "benchmarks" / "results"
    env = environment(device)
    env["command"] = "python benchmarks/bench_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:])
    stages = args.stages or None
    rows, path = [], None
    for shape in shapes(args.batches, args.smoke, stages, not args.no_transformer):
        for layout in layouts_for(shape, args.layouts):
            for dtype_name in args.dtypes:
                for norm in args.norms:
                    rows += run_case(norm, shape, layout, dtype_name, args.passes, device,
                                     with_compile=not args.no_compile and not args.smoke)
                    # Written after every case: a run stopped by a time limit leaves what it measured.
                    path = write(rows, env, out, args.tag)
    print(summarize(rows))
    print(f"wrote {path}.csv, .json and .md")
    return path


if __name__ == "__main__":
    main()
