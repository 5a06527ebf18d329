"""Numerical behaviour docs/design.md §3 asks for: stable statistics, half inputs, non-finite batches, empty batches."""
import pytest
import torch

import channelnorm as cn
from backends import CPU_BACKENDS
from layouts import memory_format_of

FAMILY = {
    "channel": lambda C, **kw: cn.ChannelNorm(C, **kw),
    "group": lambda C, **kw: cn.GroupNorm(2, C, **kw),
    "layer": lambda C, **kw: cn.LayerNorm(C, **kw),
    "instance": lambda C, **kw: cn.InstanceNorm(C, **kw),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", FAMILY)
def test_large_mean_unit_variance_float32(kind, backend):
    # Catastrophic cancellation in E[x^2] - E[x]^2 would lose the unit variance at mean 1e4.
    x = torch.randn(8, 4, 16, 16) + 1e4
    norm = FAMILY[kind](4, affine=False, backend=backend)
    y = norm(x).double()
    dims = {"channel": (0, 2, 3), "instance": (2, 3)}.get(kind)
    var = y.var(dims, unbiased=False) if dims else y.flatten(1).var(1, unbiased=False)
    torch.testing.assert_close(var, torch.ones_like(var), atol=2e-3, rtol=0)
    if kind == "channel":
        torch.testing.assert_close(norm.running_mean, torch.full((4,), 1e3), rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", FAMILY)
def test_half_inputs_match_float64_within_dtype_error(kind, dtype, backend):
    x = torch.randn(4, 6, 5, 5) * 3 + 2
    norm = FAMILY[kind](6, backend=backend)
    oracle = FAMILY[kind](6, backend="reference", dtype=torch.float64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
        oracle.weight.copy_(norm.weight)
        oracle.bias.copy_(norm.bias)
    xh = x.to(dtype)
    y = norm(xh)
    assert y.dtype == dtype
    expected = oracle(xh.double())
    # One rounding of the output to `dtype` (|y| <= ~8 here) dominates: eps(dtype) * max|y|, doubled.
    tol = 2 * torch.finfo(dtype).eps * expected.abs().max().item()
    torch.testing.assert_close(y.double(), expected, atol=tol, rtol=0)
    if getattr(norm, "running_mean", None) is not None:
        assert norm.running_mean.dtype == torch.float32
        torch.testing.assert_close(norm.running_mean.double(), oracle.running_mean, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("kind", ["channel", "instance"])
def test_non_finite_batch_never_updates_running_stats(kind, bad, backend):
    norm = FAMILY[kind](3, track_running_stats=True, momentum=None, backend=backend)
    norm(torch.randn(4, 3, 5))
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    x = torch.randn(4, 3, 5)
    x[1, 2, 3] = bad
    y = norm(x)
    assert not torch.isfinite(y).all(), "the output must still show the non-finite value"
    for k, v in norm.state_dict().items():
        assert torch.equal(v, before[k]), k
    norm(torch.randn(4, 3, 5))
    assert int(norm.num_batches_tracked) == 2
    assert torch.isfinite(norm.running_mean).all() and not torch.equal(norm.running_mean, before["running_mean"])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", FAMILY)
def test_empty_batch(kind, backend):
    kw = {"track_running_stats": True} if kind in ("channel", "instance") else {}
    norm = FAMILY[kind](4, backend=backend, **kw)
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    x = torch.randn(0, 4, 3, 3, requires_grad=True)
    y = norm(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(norm.weight.grad, torch.zeros(4))
    for k, v in norm.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", FAMILY)
@pytest.mark.parametrize("fmt,shape", [(torch.channels_last, (2, 4, 3, 5)), (torch.channels_last_3d, (2, 4, 2, 3, 3))])
def test_memory_format_preserved(kind, fmt, shape, backend):
    norm = FAMILY[kind](4, backend=backend)
    x = torch.randn(shape).contiguous(memory_format=fmt)
    for training in (True, False):
        norm.train(training)
        y = norm(x)
        assert memory_format_of(y) == fmt


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_channel_axis_last_output_strides_match_input(backend):
    x = torch.randn(2, 3, 4, 5)
    norm = cn.ChannelNorm(5, channel_axis=-1, backend=backend)
    assert norm(x).is_contiguous()
    view = torch.randn(2, 5, 3, 4).movedim(1, -1)
    assert norm(view).stride() == view.stride()


def test_auto_backend_on_cpu_uses_torch_kernels_and_reference_when_they_cannot():
    from channelnorm.ops import dispatch, native
    x = torch.randn(2, 3, 4)
    assert dispatch.resolve("auto", "channel_norm", x, 1) is native.NATIVE
    # float64 parameters with a float32 input: torch's kernel would not compute this exactly.
    impl = dispatch.resolve("auto", "channel_norm", x, 1, (torch.ones(3, dtype=torch.float64),))
    assert impl is not native.NATIVE
    with pytest.raises(ValueError, match="native.*float64"):
        dispatch.resolve("native", "channel_norm", x, 1, (torch.ones(3, dtype=torch.float64),))
