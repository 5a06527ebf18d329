"""Triton backend semantics beyond elementwise accuracy: running statistics, non-finite batches,
numerical stability, determinism, split reductions, fused variants, layouts and dispatch."""
import pytest
import torch

from _triton_support import DEVICE, assert_close_to_reference, force_regime, run_fwd_bwd, to_float64

import channelnorm as cn
import channelnorm.functional as F
from channelnorm.ops import dispatch, native
from channelnorm.ops.triton import backend, plan


@pytest.fixture
def many_splits(monkeypatch):
    """Split regime (R2): tiny tiles and many programs, so every statistic is merged from many partials."""
    force_regime(monkeypatch, "R2")


@pytest.mark.parametrize("regime", ["R1", "R2"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_match_the_reference(momentum, regime, monkeypatch):
    force_regime(monkeypatch, regime)   # the update is fused into R1's kernel / R2's last program
    ours = cn.ChannelNorm(4, momentum=momentum, backend="triton").to(DEVICE)
    ref = cn.ChannelNorm(4, momentum=momentum, backend="reference").double()
    for step in range(3):
        x = torch.randn(3, 4, 5) * (step + 1) + step
        ours(x.to(DEVICE))
        ref(x.double())
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 3
    torch.testing.assert_close(ours.running_mean.cpu().double(), ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var.cpu().double(), ref.running_var, rtol=1e-5, atol=1e-6)
    ours.eval()
    ref.eval()
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(ours(x.to(DEVICE)).cpu().double(), ref(x.double()), rtol=1e-5, atol=1e-5)


def test_half_precision_module_buffers():
    ours = cn.ChannelNorm(4, backend="triton", dtype=torch.float16).to(DEVICE)
    ref = cn.ChannelNorm(4, backend="reference").double()
    x = (torch.randn(3, 4, 5) * 2 + 1).half()
    y = ours(x.to(DEVICE))
    ref(x.double())
    assert y.dtype == torch.float16 and ours.running_var.dtype == torch.float16
    torch.testing.assert_close(ours.running_mean.cpu().double(), ref.running_mean, rtol=2e-3, atol=1e-3)
    torch.testing.assert_close(ours.running_var.cpu().double(), ref.running_var, rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("regime", ["R1", "R2"])
def test_instance_norm_running_statistics(regime, monkeypatch):
    force_regime(monkeypatch, regime)
    ours = cn.InstanceNorm(4, track_running_stats=True, momentum=None, backend="triton").to(DEVICE)
    ref = cn.InstanceNorm(4, track_running_stats=True, momentum=None, backend="reference").double()
    for _ in range(2):
        x = torch.randn(3, 4, 6) + 2
        ours(x.to(DEVICE))
        ref(x.double())
    torch.testing.assert_close(ours.running_mean.cpu().double(), ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var.cpu().double(), ref.running_var, rtol=1e-5, atol=1e-6)
    assert ours.num_batches_tracked.item() == 2


@pytest.mark.parametrize("regime", ["R1", "R2"])
def test_non_finite_batch_never_updates_running_statistics(regime, monkeypatch):
    force_regime(monkeypatch, regime)
    norm = cn.ChannelNorm(3, backend="triton").to(DEVICE)
    norm(torch.randn(4, 3, 5, device=DEVICE))
    before = [t.clone() for t in (norm.running_mean, norm.running_var, norm.num_batches_tracked)]
    x = torch.randn(4, 3, 5, device=DEVICE)
    x[1, 2, 3] = float("nan")
    y = norm(x)
    assert torch.isnan(y[:, 2]).all() and torch.isfinite(y[:, :2]).all()
    for old, new in zip(before, (norm.running_mean, norm.running_var, norm.num_batches_tracked)):
        assert torch.equal(old, new)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_mean_1e4_still_normalizes_to_unit_variance(layout, many_splits):
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64) + 1e4
    x32 = x.float().to(DEVICE)
    if layout == "channels_last":
        x32 = x32.contiguous(memory_format=torch.channels_last)
    y = F.channel_norm(x32, None, None, training=True, backend="triton").double().cpu()
    assert (y.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    yg = F.group_norm(x32, 1, backend="triton").double().cpu()
    assert (yg.var(dim=(1, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    # The pivot shift keeps fp32 precision relative to the spread, not to the 1e4 offset.
    ref = F.channel_norm(x.float().double(), None, None, training=True, backend="reference")
    assert (y - ref).abs().max() < 1e-5
    dy = torch.randn(x.shape, dtype=torch.float64)
    ours = run_fwd_bwd(lambda x: F.group_norm(x, 3, backend="triton"), x32, (), dy.float().to(DEVICE))
    reference = run_fwd_bwd(lambda x: F.group_norm(x, 3, backend="reference"), x.float().double(), (), dy.float().double())
    assert (ours[1].cpu().double() - reference[1]).abs().max() < 1e-4


@pytest.mark.parametrize("layout,shape", [("contiguous", (3, 5, 6, 7)), ("channels_last", (3, 5, 6, 7)),
                                          ("channels_last", (2, 20, 3, 3))])   # 20 channels: several channel blocks
def test_many_partials_merge_exactly(layout, shape, many_splits):
    x = torch.randn(shape) * 3 + 1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    C = shape[1]
    w, b, dy = torch.randn(C), torch.randn(C), torch.randn(shape)
    for make in (lambda be: lambda x, w, b: F.channel_norm(x, None, None, w, b, True, backend=be),
                 lambda be: lambda x, w, b: F.group_norm(x, 5, w, b, backend=be)):
        ours = run_fwd_bwd(make("triton"), x.to(DEVICE), (w.to(DEVICE), b.to(DEVICE)), dy.to(DEVICE))
        torch_own = run_fwd_bwd(make("native"), x, (w, b), dy)
        reference = run_fwd_bwd(make("reference"), x.double(), to_float64((w, b)), dy.double())
        assert_close_to_reference(ours, torch_own, reference, ("y", "dx", "dweight", "dbias"))


def test_rows_grouped_per_program(monkeypatch):
    monkeypatch.setattr(plan, "target_programs", lambda device: 2)   # 7 rows -> programs of 3, 3 and 1 rows
    x, dy = torch.randn(7, 3, 4, 4) * 2 + 3, torch.randn(7, 3, 4, 4)
    w, b = torch.randn(3), torch.randn(3)
    make = lambda be: lambda x, w, b: F.channel_norm(x, None, None, w, b, True, backend=be)  # noqa: E731
    ours = run_fwd_bwd(make("triton"), x.to(DEVICE), (w.to(DEVICE), b.to(DEVICE)), dy.to(DEVICE))
    torch_own = run_fwd_bwd(make("native"), x, (w, b), dy)
    reference = run_fwd_bwd(make("reference"), x.double(), to_float64((w, b)), dy.double())
    assert_close_to_reference(ours, torch_own, reference, ("y", "dx", "dweight", "dbias"))


@pytest.mark.parametrize("make,shape", [
    (lambda be: lambda x, w, b: F.channel_norm(x, None, None, w, b, True, backend=be), (3, 4, 5)),
    (lambda be: lambda x, w, b: F.group_norm_act(x, 2, w, b, activation="silu", backend=be), (3, 4, 5)),
    (lambda be: lambda x, w, b: F.layer_norm(x, w, b, backend=be), (5, 4)),      # row-block backward
], ids=["channel", "group", "layer_rows"])
@pytest.mark.parametrize("regime", ["R1", "R2"])
def test_int64_offsets_give_the_same_results(make, shape, regime, monkeypatch):
    """The 64-bit indexing variant (chosen past 2**31 elements), forced on tiny tensors: every kernel
    of the forward and backward must take it (a row index that is a plain int included)."""
    monkeypatch.setattr(plan, "INT32_LIMIT", 0)
    force_regime(monkeypatch, regime)   # R2: partial and merge indices in int64 too
    x, dy = torch.randn(shape) + 1, torch.randn(shape)
    C = shape[1]
    w, b = torch.randn(C), torch.randn(C)
    ours = run_fwd_bwd(make("triton"), x.to(DEVICE), (w.to(DEVICE), b.to(DEVICE)), dy.to(DEVICE))
    torch_own = run_fwd_bwd(make("native"), x, (w, b), dy)
    reference = run_fwd_bwd(make("reference"), x.double(), to_float64((w, b)), dy.double())
    assert_close_to_reference(ours, torch_own, reference, ("y", "dx", "dweight", "dbias"))


@pytest.mark.parametrize("shape,axis", [((5, 300), -1), ((4, 6, 5), 0)])
def test_wide_channel_rows_and_channel_axis_zero(shape, axis):
    x, dy = torch.randn(shape) + 2, torch.randn(shape)
    C = shape[axis]
    w, b = torch.randn(C), torch.randn(C)
    make = lambda be: lambda x, w, b: F.channel_norm(x, None, None, w, b, True, channel_axis=axis, backend=be)  # noqa: E731
    ours = run_fwd_bwd(make("triton"), x.to(DEVICE), (w.to(DEVICE), b.to(DEVICE)), dy.to(DEVICE))
    torch_own = run_fwd_bwd(make("native"), x, (w, b), dy)
    reference = run_fwd_bwd(make("reference"), x.double(), to_float64((w, b)), dy.double())
    assert_close_to_reference(ours, torch_own, reference, ("y", "dx", "dweight", "dbias"))


def test_weight_and_bias_gradients_are_deterministic(many_splits):
    x = torch.randn(4, 6, 5, 5, device=DEVICE).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(6, device=DEVICE), torch.randn(6, device=DEVICE)
    dy = torch.randn(4, 6, 5, 5, device=DEVICE)
    for fn in (lambda x, w, b: F.channel_norm(x, None, None, w, b, True, backend="triton"),
               lambda x, w, b: F.group_norm_act(x, 3, w, b, activation="silu", backend="triton")):
        first = run_fwd_bwd(fn, x, (w, b), dy)
        second = run_fwd_bwd(fn, x, (w, b), dy)
        for a, c in zip(first, second):
            assert torch.equal(a, c)


ACT_CASES = [("relu", True, "channel"), ("silu", False, "channel"), ("gelu", True, "group"),
             ("none", True, "group"), ("relu", False, "group"), ("gelu", False, "channel_eval")]


@pytest.mark.parametrize("activation,with_residual,norm", ACT_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_activation_and_residual_match_the_composition(activation, with_residual, norm, dtype):
    x = (torch.randn(3, 4, 5, 2) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
    r = torch.randn(3, 4, 5, 2).to(dtype) if with_residual else None
    w, b, dy = torch.randn(4), torch.randn(4), torch.randn(3, 4, 5, 2).to(dtype)
    rm, rv = torch.randn(4), torch.rand(4) + 0.5

    def make(backend):
        def fn(x, w, b, *res):
            res = res[0] if res else None
            if norm == "group":
                return F.group_norm_act(x, 2, w, b, activation=activation, residual=res, backend=backend)
            training = norm == "channel"
            stats = (None, None) if training else (rm.to(x.device, torch.float32 if x.dtype != torch.float64
                                                         else x.dtype), rv.to(x.device, rm.dtype if x.dtype
                                                                              != torch.float64 else x.dtype))
            return F.channel_norm_act(x, *stats, w, b, training, activation=activation, residual=res,
                                      backend=backend)
        return fn

    params = (w, b) + ((r,) if r is not None else ())
    names = ("y", "dx", "dweight", "dbias") + (("dresidual",) if r is not None else ())
    ours = run_fwd_bwd(make("triton"), x.to(DEVICE), [p.to(DEVICE) for p in params], dy.to(DEVICE))
    torch_own = run_fwd_bwd(make("native"), x, params, dy)
    reference = run_fwd_bwd(make("reference"), x.double(), to_float64(params), dy.double())
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(ours, torch_own, reference, names)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_over_rows_backward(dtype):
    """(N, C) rows with one group take the row-block backward kernel (several programs of 16 rows)."""
    x = (torch.randn(37, 20) * 2 + 3).to(dtype)
    r, dy = torch.randn(37, 20).to(dtype), torch.randn(37, 20).to(dtype)
    w, b = torch.randn(20), torch.randn(20)
    make = lambda be: lambda x, w, b, r: F.group_norm_act(x, 1, w, b, activation="silu", residual=r,  # noqa: E731
                                                          backend=be)
    ours = run_fwd_bwd(make("triton"), x.to(DEVICE), [t.to(DEVICE) for t in (w, b, r)], dy.to(DEVICE))
    torch_own = run_fwd_bwd(make("native"), x, (w, b, r), dy)
    reference = run_fwd_bwd(make("reference"), x.double(), to_float64((w, b, r)), dy.double())
    assert_close_to_reference(ours, torch_own, reference, ("y", "dx", "dweight", "dbias", "dresidual"))


def test_fused_modules_keep_batchnorm_state_dicts():
    bn = torch.nn.BatchNorm2d(4)
    m = cn.ChannelNormAct(4, activation="relu", backend="triton").to(DEVICE)
    m.load_state_dict(bn.state_dict())
    x, r = torch.randn(2, 4, 3, 3, device=DEVICE), torch.randn(2, 4, 3, 3, device=DEVICE)
    y = m(x, r)
    expected = torch.relu(cn.ChannelNorm(4, backend="reference")(x.cpu().double()) + r.cpu().double())
    assert (y.cpu().double() - expected).abs().max() < 1e-5
    g = cn.GroupNormAct(2, 4, activation="gelu", backend="triton").to(DEVICE)
    assert set(g.state_dict()) == set(torch.nn.GroupNorm(2, 4).state_dict())
    assert "activation='gelu'" in repr(g)


def test_gradient_with_other_strides_than_the_input():
    x = torch.randn(2, 4, 3, 5, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = F.channel_norm(x, None, None, training=True, backend="triton")
    assert y.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn(2, 4, 3, 5, device=DEVICE)                     # contiguous NCHW
    y.backward(dy)
    xr = x.detach().cpu().double().requires_grad_()
    F.channel_norm(xr, None, None, training=True, backend="reference").backward(dy.cpu().double())
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert (x.grad.cpu().double() - xr.grad).abs().max() < 1e-5
    # y.sum() hands back an expanded (stride 0) gradient.
    x.grad = None
    F.group_norm_act(x, 2, activation="gelu", backend="triton").sum().backward()
    xr.grad = None
    F.group_norm_act(xr, 2, activation="gelu", backend="reference").sum().backward()
    assert (x.grad.cpu().double() - xr.grad).abs().max() < 1e-5


def test_strided_and_expanded_parameters_and_buffers():
    """weight/bias/running buffers that are views (every other element of a larger tensor, an expanded
    scalar) are read, and updated in place, element for element, never as if they were dense."""
    x, dy = torch.randn(4, 3, 5) * 2 + 1, torch.randn(4, 3, 5)
    params = torch.randn(2, 6)                                  # weight = params[0, ::2], bias = params[1, ::2]
    buffers = torch.stack([torch.randn(6), torch.rand(6) + 0.5])  # running_mean/var = buffers[i, ::2]
    results = {}
    for be, dev, dt in (("triton", DEVICE, torch.float32), ("reference", "cpu", torch.float64)):
        p = params.to(dev, dt).detach().clone().requires_grad_()
        stats = buffers.to(dev, dt).clone()
        xx = x.to(dev, dt).detach().clone().requires_grad_()
        y1 = F.channel_norm(xx, stats[0, ::2], stats[1, ::2], p[0, ::2], p[1, ::2], True, backend=be)
        y2 = F.channel_norm_act(xx, stats[0, ::2], stats[1, ::2], p[0, ::2], None, False, activation="silu",
                                backend=be)
        y3 = F.group_norm(xx, 3, torch.ones(1, device=dev, dtype=dt).expand(3), p[1, ::2], backend=be)
        torch.autograd.backward([y1, y2, y3], [dy.to(dev, dt)] * 3)
        results[be] = [t.detach().cpu().double() for t in (y1, y2, y3, xx.grad, p.grad, stats)]
    for name, a, r in zip(("y1", "y2", "y3", "dx", "dparams", "buffers"), results["triton"], results["reference"]):
        assert (a - r).abs().max() < 1e-4, name


def test_expanded_input_is_copied_not_misread():
    x = torch.randn(1, 4, 1, 5, device=DEVICE).expand(3, 4, 2, 5)   # overlapping strides
    y = F.group_norm(x, 2, backend="triton")
    ref = F.group_norm(x.cpu().double(), 2, backend="reference")
    assert (y.cpu().double() - ref).abs().max() < 1e-5


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the CPU path of the backend choice")
def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match=r"backend='triton' cannot run channel_norm here: input is on cpu.*CUDA"):
        F.channel_norm(torch.randn(2, 3, 4), None, None, training=True, backend="triton")


def test_float64_is_refused_with_a_reason():
    with pytest.raises(ValueError, match=r"backend='triton' cannot run group_norm here: .*float64.*reference"):
        F.group_norm(torch.randn(2, 4, 3, dtype=torch.float64, device=DEVICE), 2, backend="triton")


def test_auto_uses_torch_kernels_until_committed_gpu_results_favour_triton():
    x = torch.randn(2, 3, 4, device=DEVICE)
    chosen = dispatch.resolve("auto", "channel_norm", x, 1, (None, None, None, None))
    assert chosen is native.NATIVE  # no committed GPU result: torch's kernels on CUDA too
    assert dispatch.resolve("triton", "group_norm", x, 1, (None, None)) is backend.TRITON
    assert backend.unsupported_reason("frn", x) is not None


def test_conversions_leave_fused_blocks_alone():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), cn.ChannelNormAct(4), cn.GroupNormAct(2, 4),
                                cn.ChannelNorm(4)).eval()
    cn.convert.freeze(model)
    cn.convert.replace_norms(model, "group", num_groups=2)
    cn.convert.fold(model)
    assert type(model[1]) is cn.ChannelNormAct and type(model[2]) is cn.GroupNormAct
    assert type(model[3]) is not cn.ChannelNorm      # the plain norm was converted
