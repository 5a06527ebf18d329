"""ops.dispatch: the op table, the GPU policy derived from committed results, and auto's routing rules."""
import json
from pathlib import Path

import pytest
import torch

import channelnorm as cn
import channelnorm.functional as F
from channelnorm.ops import dispatch
from channelnorm.ops.native import NATIVE
from channelnorm.ops.reference import REFERENCE

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _committed_gpu_rows():
    rows = []
    for path in sorted(RESULTS.glob("kernels-*.json")):
        data = json.loads(path.read_text())
        if "cpu" not in str(data["environment"].get("device", "")).lower():
            rows += data["rows"]
    return rows


def test_gpu_table_is_what_the_committed_results_show():
    assert dispatch.TRITON_ON_CUDA == dispatch.policy_from_results(_committed_gpu_rows())


def _row(norm, layout, dtype, speedup, correct=True):
    return {"norm": norm, "layout": layout, "dtype": dtype, "pass": "fwd", "speedup_vs_eager": speedup,
            "correct": correct}


def test_policy_admits_only_a_class_whose_every_row_is_correct_and_not_slower():
    rows = [_row("channel", "nhwc", "bf16", 1.3), _row("channel", "nhwc", "bf16", 1.0),
            _row("channel", "nchw", "bf16", 1.2), _row("channel", "nchw", "bf16", 0.9),   # one slow row
            _row("group", "nhwc", "fp32", 2.0, correct=False),                             # wrong output
            {k: v for k, v in _row("group", "nchw", "fp32", 2.0).items() if k != "correct"},  # unchecked
            _row("layer", "nc", "fp16", 1.1)]
    assert dispatch.policy_from_results(rows) == {dispatch.CallClass("channel", "nhwc", "bf16"),
                                                   dispatch.CallClass("group", "nc", "fp16")}


class _FakeCuda:
    """What resolve reads of a CUDA tensor, on CPU (no GPU in CI)."""

    def __init__(self, x):
        self._x = x
        self.is_cuda = True

    def __getattr__(self, name):
        return getattr(self._x, name)


def test_synthetic_gpu_result_moves_only_its_class_to_triton(monkeypatch):
    from channelnorm.ops.triton import backend as triton_backend
    nhwc = torch.randn(2, 4, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    nchw = torch.randn(2, 4, 3, 3, dtype=torch.bfloat16)
    monkeypatch.setattr(triton_backend, "unsupported_reason", lambda op, x, *p: None)  # "a GPU is here"
    for x in (nhwc, nchw):
        assert dispatch.resolve("auto", "channel_norm", _FakeCuda(x), 1) is NATIVE  # no evidence: torch
    table = dispatch.policy_from_results([_row("channel", "nhwc", "bf16", 1.4)])
    monkeypatch.setattr(dispatch, "TRITON_ON_CUDA", table)
    assert dispatch.resolve("auto", "channel_norm", _FakeCuda(nhwc), 1) is triton_backend.TRITON
    assert dispatch.resolve("auto", "channel_norm_act", _FakeCuda(nhwc), 1) is triton_backend.TRITON
    assert dispatch.resolve("auto", "channel_norm", _FakeCuda(nchw), 1) is NATIVE
    assert dispatch.resolve("auto", "group_norm", _FakeCuda(nhwc), 1) is NATIVE
    assert dispatch.resolve("auto", "channel_norm", _FakeCuda(nhwc.float()), 1) is NATIVE
    # A CPU tensor stays on CPU: bfloat16 batch norm there runs the reference (torch's CPU half kernel is inexact).
    assert dispatch.resolve("auto", "channel_norm", nhwc, 1) is dispatch.REFERENCE
    assert dispatch.resolve("triton", "channel_norm", _FakeCuda(nchw), 1) is triton_backend.TRITON


def test_every_op_has_an_entry_and_reference_only_ops_refuse_other_names():
    for op in ("channel_norm", "instance_norm", "group_norm", "channel_norm_act", "group_norm_act", "ghost_norm",
               "masked_channel_norm", "batch_renorm", "filter_response_norm", "evonorm_s0", "evonorm_b0",
               "sync_channel_norm", "layer_norm_2d"):
        spec = dispatch.OP_TABLE[op]
        assert "reference" in spec.backends
        for name in ("native", "triton"):
            if name not in spec.backends:
                with pytest.raises(ValueError, match=f"backend='{name}' cannot"):
                    dispatch.require(op, name)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        dispatch.require("channel_norm", "fast")


def test_backends_implement_the_protocol():
    for impl in (REFERENCE, NATIVE):
        assert isinstance(impl.name, str)
        for method in ("unsupported_reason", "inexact_reason", "channel_norm", "instance_norm", "group_norm", "channel_norm_act",
                       "group_norm_act", "layer_norm_2d"):
            assert callable(getattr(impl, method))


# ---------------------------------------------------------------- the routing rules (issue: auto == reference)

def test_half_cpu_input_with_many_values_per_channel_goes_to_the_reference():
    # A constant float16 channel of 1e4: torch's CPU kernel gives running_var 162 and outputs up to 1.26.
    n = 2 ** 20
    x = torch.full((1, 1, n), 1e4, dtype=torch.float16)
    # Few values are not enough either (36 per channel: 57x the reference's error), so every half CPU
    # batch/instance norm call is routed away; group norm stays on torch's kernel, which matches.
    for values in (n, 36):
        for op in ("channel_norm", "channel_norm_act", "instance_norm"):
            assert NATIVE.inexact_reason(op, x[..., :values], 1) is not None
    assert NATIVE.inexact_reason("group_norm", x[..., :36], 1) is None
    assert NATIVE.inexact_reason("channel_norm", x[..., :36].float(), 1) is None
    norm = cn.ChannelNorm(1, momentum=1.0, dtype=torch.float16)
    y = norm(x)
    assert y.abs().max().item() == 0.0
    assert norm.running_var.item() == 0.0
    yi = F.instance_norm(x.view(1, 1, 1024, 1024), use_input_stats=True)
    assert yi.abs().max().item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_cpu_channel_norm_with_given_statistics_stays_on_torchs_kernel(dtype):
    # Eval with running statistics computes no statistics, and torch's kernel matches the reference
    # there; batch statistics (training, or no running statistics) and instance norm still go away.
    x = (torch.randn(4, 3, 16, 16, dtype=torch.float64) * 0.5 + 100).to(dtype)
    params = (None, None, torch.full((3,), 100.0), torch.full((3,), 0.25))
    assert dispatch.resolve("auto", "channel_norm", x, 1, params, training=False) is NATIVE
    assert dispatch.resolve("auto", "channel_norm_act", x, 1, params, training=False) is NATIVE
    assert dispatch.resolve("auto", "channel_norm", x, 1, params, training=True) is REFERENCE
    assert dispatch.resolve("auto", "instance_norm", x, 1, params, training=False) is REFERENCE
    norm = cn.ChannelNorm(3).eval()
    norm.running_mean.fill_(100.0)
    norm.running_var.fill_(0.25)
    got = norm(x)
    want = F.channel_norm(x.double(), norm.running_mean.double(), norm.running_var.double(), norm.weight.double(),
                          norm.bias.double(), training=False, backend="reference")
    # float64 oracle on the same half input: what remains is the rounding of the output to half (one
    # unit in the last place: 2**-11 relative in float16, 2**-8 in bfloat16), allowed twice
    ulp = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=2 * ulp, atol=2 * ulp)


MIXED_CALLS = {
    # (half-precision input, then weight, bias, running statistics of both float32 and the input's dtype)
    "channel eval": lambda x, w, b, rm, rv, be: F.channel_norm(x, rm, rv, w, b, training=False, backend=be),
    "channel training": lambda x, w, b, rm, rv, be: F.channel_norm(x, rm, rv, w, b, training=True, backend=be),
    "instance, given statistics": lambda x, w, b, rm, rv, be: F.instance_norm(x, rm, rv, w, b, use_input_stats=False,
                                                                             backend=be),
    "group": lambda x, w, b, rm, rv, be: F.group_norm(x, 3, w, b, backend=be),
}


@pytest.mark.parametrize("call", sorted(MIXED_CALLS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_with_parameters_of_two_dtypes_is_computed_not_handed_to_torch(call, dtype):
    # torch's CPU kernels take half-precision input with parameters and statistics all of the input's
    # dtype or all float32, and raise a RuntimeError on a mix: auto computes the call with the reference
    # math, and backend="native" is a ValueError saying why.
    x = (torch.randn(4, 3, 5, 5, dtype=torch.float64) + 2).to(dtype)
    w, b = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)
    rm, rv = torch.randn(3, dtype=torch.float64) + 2, torch.rand(3, dtype=torch.float64) + 0.5
    fn = MIXED_CALLS[call]
    got = fn(x, w.to(dtype), b.float(), rm.float(), rv.to(dtype), "auto")
    want = fn(x.double(), w.to(dtype).double(), b.float().double(), rm.float().double(), rv.to(dtype).double(),
              "reference")
    # float64 oracle on the same rounded inputs: the reference computes in float32 and rounds the output
    # to half once (2**-11 relative in float16, 2**-8 in bfloat16); normalized values are at most ~4.
    ulp = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=2 * ulp, atol=8 * ulp)
    with pytest.raises(ValueError, match=rf"{dtype} input with parameters and statistics all {dtype} or all float32"):
        fn(x, w.to(dtype), b.float(), rm.float(), rv.to(dtype), "native")
    # one dtype throughout, or float32 throughout, still runs torch's kernel
    fn(x, w.float(), b.float(), rm.float(), rv.float(), "native")
    fn(x, w.to(dtype), b.to(dtype), rm.to(dtype), rv.to(dtype), "native")


def test_instance_norm_batch_one_with_channels_last_gradient_matches_the_reference():
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    dx, = torch.autograd.grad(F.instance_norm(x), x, g)
    ref, = torch.autograd.grad(F.instance_norm(x, backend="reference"), x, g)
    torch.testing.assert_close(dx, ref, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda t: F.instance_norm(t), (x,))


@pytest.mark.parametrize("make", [lambda: cn.ChannelNorm(3), lambda: cn.InstanceNorm(3, track_running_stats=True),
                                  lambda: cn.GroupNorm(3, 3)])
def test_float64_input_into_a_float32_module_is_computed(make):
    norm = make().train()
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    oracle = make().double().train()
    y = norm(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, oracle(x), rtol=1e-6, atol=1e-6)
    for name in ("running_mean", "running_var"):
        if getattr(norm, name, None) is not None:
            assert getattr(norm, name).dtype == torch.float32
            torch.testing.assert_close(getattr(norm, name), getattr(oracle, name).float())


@pytest.mark.parametrize("op", ["channel", "instance", "group"])
def test_gradient_with_ambiguous_strides_on_a_size_one_axis_matches_the_reference(op):
    # Strides (4, 1, 1, 2) on shape (3, 2, 1, 2): both contiguous and channels_last to torch's CPU
    # kernels, whose batch_norm backward then gives input gradients off by O(1).
    fn = {"channel": lambda t, k: F.channel_norm(t, None, None, training=True, backend=k),
          "instance": lambda t, k: F.instance_norm(t, backend=k),
          "group": lambda t, k: F.group_norm(t, 2, backend=k)}[op]
    x = torch.randn(3, 2, 1, 2, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, 1, 2, dtype=torch.float64).movedim(1, -1).contiguous(
        memory_format=torch.channels_last).movedim(-1, 1)
    assert g.stride() == (4, 1, 1, 2)
    got, = torch.autograd.grad(fn(x, "auto"), x, g)
    want, = torch.autograd.grad(fn(x, "reference"), x, g)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
