"""Triton kernels on a real GPU at real shapes (skipped without CUDA; run them on a CUDA machine)."""
import pytest
import torch

from _triton_support import assert_close_to_reference, run_fwd_bwd, to_float64

import channelnorm.functional as F
from channelnorm.ops.triton import plan

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

RESNET_SHAPES = [(8, 64, 112, 112), (8, 256, 56, 56), (8, 512, 28, 28), (2, 1024, 14, 14), (2, 2048, 7, 7)]


def _fns(norm):
    if norm == "channel":
        return lambda be: lambda x, w, b: F.channel_norm(x, None, None, w, b, True, backend=be)
    return lambda be: lambda x, w, b: F.group_norm(x, 32, w, b, backend=be)


@pytest.mark.parametrize("shape", RESNET_SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", ["channel", "group"])
def test_resnet_shapes_against_float64(shape, channels_last, dtype, norm):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, device="cuda") * 2 + 1).to(dtype).contiguous(memory_format=fmt)
    C = shape[1]
    w, b = torch.randn(C, device="cuda"), torch.randn(C, device="cuda")
    dy = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=fmt)
    make = _fns(norm)
    ours = run_fwd_bwd(make("triton"), x, (w, b), dy)
    torch_own = run_fwd_bwd(make("native"), x, (w, b), dy)
    reference = run_fwd_bwd(make("reference"), x.double(), to_float64((w, b)), dy.double())
    assert ours[0].is_contiguous(memory_format=fmt)
    assert_close_to_reference(ours, torch_own, reference, ("y", "dx", "dweight", "dbias"))


@pytest.mark.parametrize("shape", [(4096, 1024), (65536, 256)])
def test_transformer_like_shapes(shape):
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    w, b = torch.randn(shape[1], device="cuda"), torch.randn(shape[1], device="cuda")
    dy = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    make = _fns("channel")
    ours = run_fwd_bwd(make("triton"), x, (w, b), dy)
    torch_own = run_fwd_bwd(make("native"), x, (w, b), dy)
    reference = run_fwd_bwd(make("reference"), x.double(), to_float64((w, b)), dy.double())
    assert_close_to_reference(ours, torch_own, reference, ("y", "dx", "dweight", "dbias"))


def test_deterministic_weight_gradients_on_gpu():
    x = torch.randn(32, 64, 56, 56, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(64, device="cuda"), torch.randn(64, device="cuda")
    dy = torch.randn_like(x)
    fn = lambda x, w, b: F.channel_norm_act(x, None, None, w, b, True, activation="relu", backend="triton")  # noqa: E731
    first, second = run_fwd_bwd(fn, x, (w, b), dy), run_fwd_bwd(fn, x, (w, b), dy)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_more_than_2_31_elements_uses_int64_offsets():
    free, _ = torch.cuda.mem_get_info()
    numel = 2**31 + 2**20
    if free < 40 * 2**30:
        pytest.skip("needs ~40 GB of free GPU memory")
    C = 64
    x = torch.randn(numel // C, C, device="cuda", dtype=torch.bfloat16)   # channel-last: offsets pass 2**31
    x[-1] += 100                                                         # the tail must be seen
    y = F.channel_norm(x, None, None, training=True, channel_axis=-1, backend="triton")
    assert torch.isfinite(y).all()
    assert abs(y[:, 0].float().mean().item()) < 1e-2
    # The last row (beyond 2**31 elements) was normalized with the statistics, not left unwritten.
    expected_last = (x[-1].float() - x.float().mean(0)) / x.float().var(0, unbiased=False).add(1e-5).sqrt()
    assert (y[-1].float() - expected_last).abs().max() < 0.1


@pytest.mark.parametrize("regime,shape,channels_last", [
    ("R1", (8, 512, 7, 7), True), ("R2", (16, 256, 28, 28), False), ("R3", (32, 256, 56, 56), True)])
def test_each_regime_at_its_real_size(regime, shape, channels_last):
    """Default thresholds: the shape lands in the regime (plan), and forward, backward and the running
    statistics (fused into the statistics pass) match float64 and torch."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, device="cuda") * 2 + 3).to(torch.bfloat16).contiguous(memory_format=fmt)
    cp = plan.call_plan(x, 1, shape[1], False)
    assert (cp.regime_fwd, cp.regime_bwd) == (regime, regime)
    C = shape[1]
    w, b = torch.randn(C, device="cuda"), torch.randn(C, device="cuda")
    dy = torch.randn(shape, device="cuda").to(torch.bfloat16).contiguous(memory_format=fmt)
    make = _fns("channel")
    ours = run_fwd_bwd(make("triton"), x, (w, b), dy)
    torch_own = run_fwd_bwd(make("native"), x, (w, b), dy)
    reference = run_fwd_bwd(make("reference"), x.double(), to_float64((w, b)), dy.double())
    assert_close_to_reference(ours, torch_own, reference, ("y", "dx", "dweight", "dbias"))
    rm, rv = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
    F.channel_norm(x, rm, rv, w, b, True, 0.1, backend="triton")
    xd = x.double()
    dims = (0, 2, 3)
    torch.testing.assert_close(rm.double(), 0.1 * xd.mean(dims), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rv.double(), 0.9 + 0.1 * xd.var(dims, unbiased=True), rtol=1e-4, atol=1e-4)
