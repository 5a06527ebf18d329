"""Where the CPU fixed cost of the library's norms goes (issue 12): ablations and per-piece timings.

A measurement aid, not part of the library: each ablation is the library module's forward with
one more layer of the call path cut away (module check, functional validation, dispatch, layout
handling, running-statistics guard), built here from the library's own pieces as they stand at
the profiled commit (see ``benchmarks/results/cpu_overhead_profile.md``). The refactored dispatch
will move these pieces; the ablations are then stale, the numbers in the .md stay what was
measured. Nothing here changes ``src/``.

    python benchmarks/profile_cpu_overhead.py [--shape 2,64,4,4] [--rounds 15] [--number 200]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as TF
from torch import nn

import channelnorm as cn
from channelnorm import functional as F
from channelnorm.ops import dispatch, native
from channelnorm.ops.moments import commit_if_finite, effective_momentum


# ---- ChannelNorm ablations (cumulative: each cuts one more layer) ---------------------------------------

def cn_full(m, x):
    return m(x)


def cn_no_module_check(m, x):
    # ChannelNorm.forward without _check_input (functional validates the same input again)
    rm, rv, t = m._running_buffers()
    return F.channel_norm(x, rm, rv, m.weight, m.bias, training=m._uses_batch_stats(), momentum=m.momentum,
                          eps=m.eps, channel_axis=m.channel_axis, backend=m.backend, num_batches_tracked=t)


def cn_no_validation(m, x):
    # ... and without functional validation: resolve + backend call only
    rm, rv, t = m._running_buffers()
    impl = dispatch.resolve(m.backend, "channel_norm", x, 1, (m.weight, m.bias, rm, rv))
    return impl.channel_norm(x, rm, rv, m.weight, m.bias, m._uses_batch_stats(), m.momentum, m.eps, 1,
                             num_batches_tracked=t)


def cn_no_dispatch(m, x):
    # ... and without dispatch.resolve: the native backend directly
    rm, rv, t = m._running_buffers()
    return native.channel_norm(x, rm, rv, m.weight, m.bias, m._uses_batch_stats(), m.momentum, m.eps, 1,
                               num_batches_tracked=t)


def _guarded_batch_norm(x, m, training):
    rm, rv, t = m.running_mean, m.running_var, m.num_batches_tracked
    if not training:
        return TF.batch_norm(x, rm, rv, m.weight, m.bias, False, 0.0, m.eps)
    mom = effective_momentum(m.momentum, t)
    new_mean, new_var = rm.clone(), rv.clone()
    y = TF.batch_norm(x, new_mean, new_var, m.weight, m.bias, True, mom, m.eps)
    commit_if_finite(rm, rv, t, new_mean, new_var)
    return y


def cn_no_layout(m, x):
    # ... and no movedim / match_layout when the channel is already on axis 1
    return _guarded_batch_norm(x, m, m._uses_batch_stats())


def _cpu_guard_batch_norm(x, m, training):
    """Same semantics (a non-finite batch never moves the buffers) with 2 extra ops instead of 15: update
    in place, then on CPU read the batch invstd's minimum on the host (no device to synchronize) and
    restore the saved values if a statistic was not finite."""
    rm, rv, t = m.running_mean, m.running_var, m.num_batches_tracked
    if not training:
        return torch.batch_norm(x, m.weight, m.bias, rm, rv, False, 0.0, m.eps, False)
    mom = effective_momentum(m.momentum, t)
    saved = torch.cat((rm, rv))                       # 1 op: both buffers' old values
    y, _, invstd = torch.native_batch_norm(x, m.weight, m.bias, rm, rv, True, mom, m.eps)
    if float(invstd.min()) > 0.0:                     # NaN or 0 exactly when a batch statistic is not finite
        t.add_(1)
    else:                                             # rare: restore
        rm.copy_(saved[:rm.numel()])
        rv.copy_(saved[rm.numel():])
    return y


def cn_cheap_guard(m, x):
    return _cpu_guard_batch_norm(x, m, m._uses_batch_stats())


def cn_torch_semantics(m, x):
    # ... what nn.BatchNorm2d does: in-place update, no finiteness guard (a lower bound, not §3)
    if m.training:
        m.num_batches_tracked.add_(1)
        return TF.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, True, m.momentum, m.eps)
    return TF.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


CN_VARIANTS = [("library (as is)", cn_full), ("- module _check_input", cn_no_module_check),
               ("- functional validation", cn_no_validation), ("- dispatch.resolve", cn_no_dispatch),
               ("- movedim/match_layout", cn_no_layout), ("cheap guard (cat + invstd.min() host read)", cn_cheap_guard),
               ("no guard (= nn.BatchNorm2d math)", cn_torch_semantics)]


# ---- GroupNorm / InstanceNorm ablations ---------------------------------------------------------------

def gn_no_module_check(m, x):
    return F.group_norm(x, m.num_groups, m.weight, m.bias, eps=m.eps, channel_axis=m.channel_axis, backend=m.backend)


def gn_no_validation(m, x):
    impl = dispatch.resolve(m.backend, "group_norm", x, 1, (m.weight, m.bias))
    return impl.group_norm(x, m.num_groups, m.weight, m.bias, m.eps, 1)


def gn_no_dispatch(m, x):
    return native.group_norm(x, m.num_groups, m.weight, m.bias, m.eps, 1)


def gn_no_layout(m, x):
    return TF.group_norm(x, m.num_groups, m.weight, m.bias, m.eps)


def gn_aten(m, x):
    return torch.group_norm(x, m.num_groups, m.weight, m.bias, m.eps, False)


GN_VARIANTS = [("library (as is)", cn_full), ("- module _check_input", gn_no_module_check),
               ("- functional validation", gn_no_validation), ("- dispatch.resolve", gn_no_dispatch),
               ("- movedim/match_layout (F.group_norm)", gn_no_layout), ("torch.group_norm directly", gn_aten)]


def in_no_module_check(m, x):
    rm, rv, t = m._running_buffers()
    return F.instance_norm(x, rm, rv, m.weight, m.bias, use_input_stats=m._uses_batch_stats(), momentum=m.momentum,
                           eps=m.eps, channel_axis=m.channel_axis, backend=m.backend, num_batches_tracked=t)


def in_no_validation(m, x):
    impl = dispatch.resolve(m.backend, "instance_norm", x, 1, (m.weight, m.bias, None, None))
    return impl.instance_norm(x, None, None, m.weight, m.bias, True, m.momentum, m.eps, 1)


def in_no_dispatch(m, x):
    return native.instance_norm(x, None, None, m.weight, m.bias, True, m.momentum, m.eps, 1)


def in_no_layout(m, x):
    return TF.instance_norm(x, None, None, m.weight, m.bias, True, 0.0, m.eps)


IN_VARIANTS = [("library (as is)", cn_full), ("- module _check_input", in_no_module_check),
               ("- functional validation", in_no_validation), ("- dispatch.resolve", in_no_dispatch),
               ("- movedim/match_layout (F.instance_norm)", in_no_layout)]


# ---- Prototype of every fix together (monkeypatched module forwards; run the benchmark on them) -------

def _fast_path_ok(m, x) -> bool:
    """The per-call checks a constructed module still needs; anything unusual takes the library path."""
    return (type(x) is torch.Tensor and m.channel_axis == 1 and x.dtype in _FLOATS and x.ndim >= 3
            and x.shape[1] == m.num_channels and x.device.type == "cpu" and x.numel() > 0
            and (m.weight is None or m.weight.dtype in (x.dtype, torch.float32)))


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _proto_channel_forward(original):
    def forward(self, input, mask=None):
        if mask is not None or not _fast_path_ok(self, input):
            return original(self, input, mask)
        training = self.training or not self.track_running_stats
        c = self.num_channels
        if training and input.numel() // c <= 1:
            return original(self, input, mask)              # raises the library's error
        if training and self.track_running_stats:
            rm, rv, t = self.running_mean, self.running_var, self.num_batches_tracked
            mom = effective_momentum(self.momentum, t)
            saved = torch.cat((rm, rv))
            y, _, invstd = torch.native_batch_norm(input, self.weight, self.bias, rm, rv, True, mom, self.eps)
            # CPU: a host read costs no synchronization. The batch invstd is NaN or 0 exactly when a batch
            # statistic is not finite, so one reduction over C values decides whether to keep the update.
            if float(invstd.min()) > 0.0:
                t.add_(1)
            else:
                rm.copy_(saved[:c])
                rv.copy_(saved[c:])
        else:
            y = torch.batch_norm(input, self.weight, self.bias, self.running_mean, self.running_var, training,
                                 0.0, self.eps, False)
        return y if y.stride() == input.stride() else original(self, input, mask)
    return forward


def _proto_group_forward(original):
    def forward(self, input):
        if not _fast_path_ok(self, input):
            return original(self, input)
        y = torch.group_norm(input, self.num_groups, self.weight, self.bias, self.eps, False)
        return y if y.stride() == input.stride() else original(self, input)
    return forward


def _proto_instance_forward(original):
    def forward(self, input):
        if not _fast_path_ok(self, input) or self.track_running_stats:
            return original(self, input)
        y = torch.instance_norm(input, self.weight, self.bias, None, None, True, 0.0, self.eps, False)
        return y if y.stride() == input.stride() else original(self, input)
    return forward


# The prototype as a row of each ablation (built on the library's original forwards).
CN_VARIANTS.append(("prototype forward (all changes)", _proto_channel_forward(cn.ChannelNorm.forward)))
GN_VARIANTS.append(("prototype forward (all changes)", _proto_group_forward(cn.GroupNorm.forward)))
IN_VARIANTS.append(("prototype forward (all changes)", _proto_instance_forward(cn.InstanceNorm.forward)))


def install_prototype() -> None:
    """Replace the three modules' forwards by the prototype fast paths (this process only)."""
    cn.ChannelNorm.forward = _proto_channel_forward(cn.ChannelNorm.forward)
    cn.GroupNorm.forward = _proto_group_forward(cn.GroupNorm.forward)
    cn.InstanceNorm.forward = _proto_instance_forward(cn.InstanceNorm.forward)


def interleaved(fns: dict, rounds: int, number: int) -> dict:
    """Round-robin timing of several zero-argument callables; per-call best and median in µs."""
    names = list(fns)
    for name in names:
        for _ in range(5):
            fns[name]()
    samples = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number * 1e6)
    return {n: (min(s), statistics.median(s)) for n, s in samples.items()}


def ablate(title, make_ours, make_torch, variants, shape, rounds, number):
    x = torch.randn(*shape)
    xg = x.clone().requires_grad_(True)
    g = torch.randn(*shape)
    for mode in ("train_fwd", "train_fwdbwd", "eval_fwd"):
        fns = {}
        ref = make_torch()
        for label, fn in [("torch module", None)] + variants:
            m = ref if fn is None else make_ours()
            m.train(mode != "eval_fwd")
            call = (lambda m=m: m(xg)) if fn is None else (lambda m=m, fn=fn: fn(m, xg))
            if mode == "train_fwd":
                fns[label] = call
            elif mode == "train_fwdbwd":
                fns[label] = lambda call=call: call().backward(g)
            else:
                def run(m=m, fn=fn):
                    with torch.no_grad():
                        return m(x) if fn is None else fn(m, x)
                fns[label] = run
        res = interleaved(fns, rounds, number)
        base = res["torch module"][0]
        print(f"\n{title} {mode} {tuple(shape)}  (best / median us per call; best - torch best)")
        for label, (best, med) in res.items():
            print(f"  {label:42s} {best:8.1f} {med:8.1f}   {best - base:+7.1f}")


def piece_timings(shape, rounds, number):
    """Each piece of the ChannelNorm training call path alone (µs per call)."""
    from channelnorm import _checks
    from channelnorm.functional.core import _check_channel_batch, _check_tracked_call
    m = cn.ChannelNorm(shape[1])
    x = torch.randn(*shape, requires_grad=True)
    rm, rv, t = m.running_mean, m.running_var, m.num_batches_tracked
    nm, nv = rm.clone(), rv.clone()
    fns = {
        "module _check_input": lambda: m._check_input(x),
        "functional _check_tracked_call": lambda: _check_tracked_call(
            "channel_norm", x, 1, m.weight, m.bias, rm, rv, 0.1, 1e-5, "auto", t, "training", True, False),
        "functional _check_channel_batch": lambda: _check_channel_batch("channel_norm", x, 1),
        "dispatch.resolve (auto, CPU)": lambda: dispatch.resolve("auto", "channel_norm", x, 1, (m.weight, m.bias, rm, rv)),
        "x.movedim(1, 1) + y.movedim(1, 1)": lambda: x.movedim(1, 1).movedim(1, 1),
        "2 x clone of running buffers": lambda: (rm.clone(), rv.clone()),
        "commit_if_finite": lambda: commit_if_finite(nm, nv, None, nm, nv),
        "F.batch_norm (training, buffers)": lambda: TF.batch_norm(x, nm, nv, m.weight, m.bias, True, 0.1, 1e-5),
        "torch.batch_norm (same call)": lambda: torch.batch_norm(x, m.weight, m.bias, nm, nv, True, 0.1, 1e-5,
                                                                 False),
        "num_batches_tracked.add_(1)": lambda: t.add_(1),
        "isinstance(1e-5, numbers.Real)": lambda: _checks.eps(1e-5),
    }
    res = interleaved(fns, rounds, number)
    print(f"\npieces of the ChannelNorm training forward {tuple(shape)} (best / median us per call)")
    for label, (best, med) in res.items():
        print(f"  {label:42s} {best:8.2f} {med:8.2f}")


def guard_timings(shape, rounds, number):
    """Ways to keep the library's non-finite rule (ops/running_stats.py) around an in-place
    torch.batch_norm (µs per training forward)."""
    c = shape[1]
    x = torch.randn(*shape, requires_grad=True)
    w, b = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
    rm, rv, t = torch.zeros(c), torch.ones(c), torch.tensor(0)

    def bn(mean, var):
        return torch.batch_norm(x, w, b, mean, var, True, 0.1, 1e-5, False)

    def restore_unless(ok, saved):
        if ok:
            t.add_(1)
        else:
            rm.copy_(saved[:c])
            rv.copy_(saved[c:])

    def no_guard():
        bn(rm, rv)
        t.add_(1)

    def clone_commit_if_finite():          # what native.py does now
        nm, nv = rm.clone(), rv.clone()
        bn(nm, nv)
        commit_if_finite(rm, rv, t, nm, nv)

    def cat_isfinite_host():
        saved = torch.cat((rm, rv))
        bn(rm, rv)
        restore_unless(bool(torch.isfinite(rm).all()) and bool(torch.isfinite(rv).all()), saved)

    def cat_sum64_host():
        saved = torch.cat((rm, rv))
        bn(rm, rv)
        restore_unless(math.isfinite(float(rm.sum(dtype=torch.float64)) + float(rv.sum(dtype=torch.float64))), saved)

    def cat_foreach_maxabs_host():
        saved = torch.cat((rm, rv))
        bn(rm, rv)
        restore_unless(all(math.isfinite(v.item()) for v in torch._foreach_norm((rm, rv), math.inf)), saved)

    def cat_native_invstd_min_host():
        # native_batch_norm also returns the batch's invstd: NaN or 0 exactly when a batch statistic is not
        # finite (inf/NaN input makes the variance NaN or inf), so one reduction over C values decides.
        saved = torch.cat((rm, rv))
        _, _, invstd = torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
        restore_unless(float(invstd.min()) > 0.0, saved)

    fns = {f.__name__: f for f in (no_guard, clone_commit_if_finite, cat_isfinite_host, cat_sum64_host,
                                   cat_foreach_maxabs_host, cat_native_invstd_min_host)}
    fns["torch.isfinite(64 floats) alone"] = lambda: torch.isfinite(rm)
    fns["rm.sum(dtype=float64).item() alone"] = lambda: rm.sum(dtype=torch.float64).item()
    res = interleaved(fns, rounds, number)
    print(f"\nrunning-statistics guard variants, training forward {tuple(shape)} (best / median us; best - no_guard)")
    for label, (best, med) in res.items():
        print(f"  {label:42s} {best:8.2f} {med:8.2f}   {best - res['no_guard'][0]:+7.2f}")


def wrapper_timings(shape, rounds, number):
    """Cost of the wrapper kinds the GPU path uses, around the same CPU kernels (µs per call):
    a direct aten call, a plain ``torch.autograd.Function`` and a ``torch.library.custom_op`` with
    ``register_autograd`` (both calling native_batch_norm / native_batch_norm_backward)."""
    c = shape[1]
    x = torch.randn(*shape, requires_grad=True)
    g = torch.randn(*shape)
    w, b = torch.rand(c, requires_grad=True), torch.zeros(c, requires_grad=True)

    class BatchNormFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b):
            y, mean, invstd = torch.native_batch_norm(x, w, b, None, None, True, 0.0, 1e-5)
            ctx.save_for_backward(x, w, mean, invstd)
            return y

        @staticmethod
        def backward(ctx, dy):
            x, w, mean, invstd = ctx.saved_tensors
            return torch.ops.aten.native_batch_norm_backward(dy, x, w, None, None, mean, invstd, True, 1e-5,
                                                             [True, True, True])

    @torch.library.custom_op("cn_profile::bn_fwd", mutates_args=())
    def bn_fwd(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, mean, invstd = torch.native_batch_norm(x, w, b, None, None, True, 0.0, 1e-5)
        return y, mean, invstd

    @bn_fwd.register_fake
    def _(x, w, b):
        return torch.empty_like(x), x.new_empty(x.shape[1]), x.new_empty(x.shape[1])

    @torch.library.custom_op("cn_profile::bn_bwd", mutates_args=())
    def bn_bwd(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, mean: torch.Tensor,
               invstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.ops.aten.native_batch_norm_backward(dy, x, w, None, None, mean, invstd, True, 1e-5,
                                                         [True, True, True])

    @bn_bwd.register_fake
    def _(dy, x, w, mean, invstd):
        return torch.empty_like(x), torch.empty_like(w), torch.empty_like(w)

    def setup(ctx, inputs, output):
        x, w, _ = inputs
        ctx.save_for_backward(x, w, output[1], output[2])

    def backward(ctx, dy, _dmean, _dinvstd):
        x, w, mean, invstd = ctx.saved_tensors
        return bn_bwd(dy, x, w, mean, invstd)

    bn_fwd.register_autograd(backward, setup_context=setup)

    calls = {
        "torch.native_batch_norm (aten, autograd built in)":
            lambda: torch.native_batch_norm(x, w, b, None, None, True, 0.0, 1e-5)[0],
        "torch.autograd.Function": lambda: BatchNormFunction.apply(x, w, b),
        "torch.library.custom_op + register_autograd": lambda: bn_fwd(x, w, b)[0],
    }
    for mode in ("forward", "forward+backward"):
        fns = {k: (f if mode == "forward" else (lambda f=f: f().backward(g))) for k, f in calls.items()}
        res = interleaved(fns, rounds, number)
        base = next(iter(res.values()))[0]
        print(f"\nwrappers around native_batch_norm, {mode} {tuple(shape)} (best / median us; best - aten)")
        for label, (best, med) in res.items():
            print(f"  {label:50s} {best:8.1f} {med:8.1f}   {best - base:+7.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="2,64,4,4")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--number", type=int, default=200)
    p.add_argument("--only", nargs="*", default=["pieces", "guards", "wrappers", "channel", "group", "instance"])
    p.add_argument("--prototype", nargs=argparse.REMAINDER, default=None,
                   help="install the prototype fast paths, then run bench_cpu_overhead.py with these arguments")
    a = p.parse_args(argv)
    if a.prototype is not None:
        import importlib.util
        from pathlib import Path
        spec = importlib.util.spec_from_file_location("bench_cpu_overhead",
                                                      Path(__file__).resolve().parent / "bench_cpu_overhead.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        install_prototype()
        path = bench.run(a.prototype)
        import json
        import sys
        data = json.loads(path.read_text())
        data["command"] = " ".join(["profile_cpu_overhead.py", *(sys.argv[1:] if argv is None else argv)])
        data["prototype"] = "module forwards replaced by profile_cpu_overhead.install_prototype (not the library)"
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path
    torch.set_num_threads(1)
    shape = tuple(int(s) for s in a.shape.split(","))
    c = shape[1]
    g = max(d for d in range(1, min(c, 8) + 1) if c % d == 0)
    if "pieces" in a.only:
        piece_timings(shape, a.rounds, a.number)
    if "guards" in a.only:
        guard_timings(shape, a.rounds, a.number)
    if "wrappers" in a.only:
        wrapper_timings(shape, a.rounds, a.number)
    if "channel" in a.only:
        ablate("ChannelNorm vs nn.BatchNorm2d", lambda: cn.ChannelNorm(c), lambda: nn.BatchNorm2d(c), CN_VARIANTS,
               shape, a.rounds, a.number)
    if "group" in a.only:
        ablate("GroupNorm vs nn.GroupNorm", lambda: cn.GroupNorm(g, c), lambda: nn.GroupNorm(g, c), GN_VARIANTS,
               shape, a.rounds, a.number)
    if "instance" in a.only:
        ablate("InstanceNorm vs nn.InstanceNorm2d", lambda: cn.InstanceNorm(c),
               lambda: nn.InstanceNorm2d(c, affine=True), IN_VARIANTS, shape, a.rounds, a.number)


if __name__ == "__main__":
    main()
