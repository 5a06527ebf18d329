"""The eager host path of the Triton backend: one plain autograd node, cached plans, and exactly the
launches the plan's traffic model counts, per regime (kernels stubbed: no kernel runs, no timing)."""
from pathlib import Path

import pytest
import torch

from _triton_support import DEVICE, force_regime

from channelnorm.ops.triton import backend, custom_ops, plan

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
HARNESS = ROOT / "benchmarks" / "bench_kernels.py"


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script(HARNESS)


def _calls(shape, channels_last):
    C = shape[1]
    x = torch.randn(shape, device=DEVICE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.ones(C, device=DEVICE, requires_grad=True), torch.zeros(C, device=DEVICE, requires_grad=True)
    rm, rv = torch.zeros(C, device=DEVICE), torch.ones(C, device=DEVICE)
    nbt = torch.zeros((), dtype=torch.long, device=DEVICE)
    return {
        "channel": (lambda xg: backend.channel_norm(xg, rm, rv, w, b, True, 0.1, 1e-5, 1, nbt), C, False),
        "group": (lambda xg: backend.group_norm(xg, 2, w, b, 1e-5, 1), 2, True),
    }, x


@pytest.mark.parametrize("regime", ["R1", "R2", "R3"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_launches_per_call_match_the_traffic_model(regime, channels_last, monkeypatch, bench):
    force_regime(monkeypatch, regime)
    calls, x = _calls((2, 4, 3, 5), channels_last)
    for name, (fn, groups, per_sample) in calls.items():
        cp = plan.call_plan(x, 1, groups, per_sample)
        assert (cp.regime_fwd, cp.regime_bwd) == (regime, regime), name
        with bench.NoOpLaunches() as stub:
            xg = x.detach().requires_grad_()
            y = fn(xg)
            forward_launches = len(stub.log)
            y.backward(torch.ones_like(y))
        assert forward_launches == cp.fwd_traffic.launches, (name, stub.log)
        assert len(stub.log) - forward_launches == cp.bwd_traffic.launches, (name, stub.log)
        # Merge, finalize and the running-statistics update never take launches of their own.
        assert not {"running_update_kernel"} & set(stub.log)


def test_eval_forward_is_one_launch(bench):
    calls, x = _calls((2, 4, 3, 5), False)
    rm, rv = torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE)
    with bench.NoOpLaunches() as stub:
        backend.channel_norm(x, rm, rv, None, None, False, 0.1, 1e-5, 1)
    assert stub.log == ["apply_kernel"]


def test_eager_calls_skip_torch_library_dispatch(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("eager call went through the torch.library custom op")

    monkeypatch.setattr(custom_ops, "norm_fwd", refuse)
    monkeypatch.setattr(custom_ops, "norm_bwd", refuse)
    monkeypatch.setattr(custom_ops, "running_stats_update", refuse)
    calls, x = _calls((2, 4, 3, 5), False)
    for fn, _, _ in calls.values():
        xg = x.detach().requires_grad_()
        y = fn(xg)
        assert type(y.grad_fn).__name__ == "NormFunctionBackward"
        y.sum().backward()
        assert xg.grad is not None


def test_repeated_calls_reuse_one_plan(bench):
    calls, x = _calls((2, 4, 3, 5), True)
    fn = calls["channel"][0]
    fn(x)
    misses = plan._call_plan.cache_info().misses
    with bench.NoOpLaunches():
        for _ in range(5):
            fn(x.detach().requires_grad_()).sum().backward()
    assert plan._call_plan.cache_info().misses == misses
