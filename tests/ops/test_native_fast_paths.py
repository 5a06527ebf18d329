"""The CPU fast paths of the native backend keep the semantics of the slower forms they replace.

* The running-statistics guard updates CPU buffers in place and undoes a batch whose statistics are
  not finite (``moments.snapshot`` and ``moments.keep_if_finite``); the reference backend's tensor-op
  rule (``moments.commit_if_finite``) is the oracle, batch after batch.
* Channel axis 1 runs torch's kernel without moving the axis; the output and the input gradient
  keep the input's strides (channels_last included).
* Modules check their settings at construction only; a backend name assigned later is still refused.
"""
import pytest
import torch

import channelnorm as cn
from channelnorm.ops import moments

CPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _batches(dtype: torch.dtype, overflow: bool):
    """(name, input of shape (2, 3, 2), finite statistics?) in the order the modules see them.

    Every bad batch spoils one channel with a pair [-v, v] along the last axis (so inside one
    instance too): NaN, inf, +-max (the biased variance overflows), and, with ``overflow``, a pair
    whose biased variance a**2 = 0.8 max is finite but whose unbiased one, a**2 n/(n-1) with n = 2
    (instance) or 4 (channel), is not.
    """
    good = lambda seed: torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(seed)).to(dtype)
    pair = lambda v: torch.tensor([-v, v], dtype=torch.float64).to(dtype)
    nan, inf, huge, big = good(1), good(2), good(3), good(4)
    nan[1, 0, 1] = float("nan")
    inf[0, 2, 0] = float("-inf")
    huge[:, 1] = pair(torch.finfo(dtype).max)
    big[:, 2] = pair((torch.finfo(dtype).max * 0.8) ** 0.5)
    batches = [("good", good(0), True), ("nan", nan, False), ("good", good(5), True), ("inf", inf, False),
               ("huge", huge, False)]
    if overflow:
        batches.append(("overflow", big, False))
    return batches + [("good", good(6), True)]


@pytest.mark.parametrize("momentum", [1.0, None])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("kind", ["channel", "instance"])
def test_in_place_guard_matches_the_reference_rule_batch_after_batch(kind, dtype, momentum):
    make = {"channel": cn.ChannelNorm, "instance": cn.InstanceNorm}[kind]
    fast = make(3, momentum=momentum, track_running_stats=True, dtype=dtype)
    oracle = make(3, momentum=momentum, track_running_stats=True, dtype=dtype, backend="reference")
    # momentum 1 makes the buffers the unbiased batch statistics, so the n/(n-1) overflow reaches them
    # in every dtype (with a smaller momentum torch blends in float32 before rounding to a half buffer).
    for name, x, finite in _batches(dtype, overflow=momentum == 1.0):
        before = {k: v.clone() for k, v in fast.state_dict().items()}
        fast(x)
        oracle(x)
        if not finite:
            for k, v in fast.state_dict().items():
                assert torch.equal(v, before[k]), (name, k)
        else:
            assert int(fast.num_batches_tracked) == int(before["num_batches_tracked"]) + 1, name
        assert int(fast.num_batches_tracked) == int(oracle.num_batches_tracked), name
        # Both blend the same batch statistics; they differ by the kernels' rounding in `dtype`.
        tol = 4 * torch.finfo(dtype).eps
        torch.testing.assert_close(fast.running_mean, oracle.running_mean, rtol=tol, atol=tol)
        torch.testing.assert_close(fast.running_var, oracle.running_var, rtol=tol, atol=tol)
    assert int(fast.num_batches_tracked) == 3


def test_finite_buffers_whose_test_overflows_still_commit():
    # The cheap test reduces the buffers (sum of mean * var); a reduction that overflows is settled
    # element-wise, not rejected. Mean 1e13 and variance 1e36 per channel: finite, product 1e49.
    c, a, mu = 4, 1e18, 1e13
    x = (mu + torch.tensor([-a, a]).repeat(32)).unsqueeze(1).repeat(1, c)
    norm = cn.ChannelNorm(c, momentum=1.0)
    norm(x)
    assert int(norm.num_batches_tracked) == 1
    assert torch.isfinite(norm.running_mean).all() and torch.isfinite(norm.running_var).all()
    assert not torch.isfinite(torch.dot(norm.running_mean, norm.running_var))
    torch.testing.assert_close(norm.running_mean.double(), x.double().mean(0), rtol=1e-5, atol=0)
    torch.testing.assert_close(norm.running_var.double(), x.double().var(0), rtol=1e-5, atol=0)


@pytest.mark.parametrize("mean_dtype,var_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float32)])
@pytest.mark.parametrize("spoiled", ["mean", "var", "neither"])
def test_keep_if_finite_restores_both_buffers_from_the_snapshot_or_counts_the_batch(mean_dtype, var_dtype, spoiled):
    # The CPU form of the rule (ops/native._run_tracked): snapshot, an in-place update, keep_if_finite.
    # Either both buffers come back exactly as they were (one non-finite element in either is enough)
    # and the batch is not counted, or the update stays and the batch is counted. Mixed dtypes take
    # the probe's other branch (sum + sum instead of a dot product).
    mean, var = torch.tensor([1.0, 2.0], dtype=mean_dtype), torch.tensor([3.0, 4.0], dtype=var_dtype)
    tracked = torch.tensor(5)
    before = mean.clone(), var.clone()
    saved = moments.snapshot(mean, var)
    mean.copy_(torch.tensor([7.0, float("nan") if spoiled == "mean" else 8.0]))
    var.copy_(torch.tensor([float("inf") if spoiled == "var" else 9.0, 10.0]))
    moments.keep_if_finite(saved, mean, var, tracked)
    if spoiled == "neither":
        assert torch.equal(mean, torch.tensor([7.0, 8.0], dtype=mean_dtype))
        assert torch.equal(var, torch.tensor([9.0, 10.0], dtype=var_dtype)) and int(tracked) == 6
    else:
        assert torch.equal(mean, before[0]) and torch.equal(var, before[1]) and int(tracked) == 5
        assert mean.dtype == mean_dtype and var.dtype == var_dtype


@pytest.mark.parametrize("kind", ["channel", "group", "instance"])
@pytest.mark.parametrize("fmt,shape", [(torch.channels_last, (2, 4, 3, 5)), (torch.contiguous_format, (2, 4, 3, 5)),
                                       (torch.channels_last_3d, (2, 4, 2, 3, 3))])
def test_channel_axis_one_keeps_strides_of_output_and_input_gradient(kind, fmt, shape):
    make = {"channel": lambda: cn.ChannelNorm(4), "group": lambda: cn.GroupNorm(2, 4),
            "instance": lambda: cn.InstanceNorm(4)}[kind]
    norm, oracle = make(), make()
    oracle.backend = "reference"
    x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
    xr = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    y, yr = norm(x), oracle(xr)
    assert y.stride() == x.stride()
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    grad = torch.randn(shape).contiguous(memory_format=fmt)
    y.backward(grad)
    yr.backward(grad)
    assert x.grad.stride() == x.stride()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-4)


def test_backend_name_assigned_after_construction_is_refused_by_name():
    norm = cn.ChannelNorm(3)
    norm.backend = "cuda-fast"
    with pytest.raises(ValueError, match="unknown backend 'cuda-fast'"):
        norm(torch.randn(2, 3, 4))


@pytest.mark.parametrize("norm_cls", [cn.ChannelNorm, cn.InstanceNorm])
def test_a_restored_non_finite_batch_still_backpropagates(norm_cls):
    # The restore after a NaN batch must not break backward through torch's kernel (which saved
    # the running buffers): the gradient is that of the reference backend, NaN where the input is.
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    x[0, 1, 2, 2] = float("nan")
    grads = {}
    for backend in ("native", "reference"):
        norm = norm_cls(3, backend=backend, track_running_stats=True)
        before = norm.running_mean.clone(), norm.running_var.clone()
        leaf = x.clone().requires_grad_()
        norm(leaf).pow(2).sum().backward()
        torch.testing.assert_close(norm.running_mean, before[0])
        torch.testing.assert_close(norm.running_var, before[1])
        grads[backend] = (leaf.grad, norm.weight.grad)
    for got, want in zip(grads["native"], grads["reference"]):
        torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-4, atol=1e-5)


def _layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "moved":  # channels on the last axis, seen through a view with the channels on axis 1
        return x.movedim(1, -1).contiguous().movedim(-1, 1)
    return x

def _bitwise_cases(test):
    """The layouts, input/parameter dtypes and affine settings both bit-for-bit comparisons with torch run."""
    for decorator in (pytest.mark.parametrize("affine", [True, False]),
                      pytest.mark.parametrize("dtype,param_dtype", [
                          (torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.float32),
                          (torch.float16, torch.float16), (torch.float16, torch.float32)]),
                      pytest.mark.parametrize("layout", ["contiguous", "channels_last", "moved"])):
        test = decorator(test)
    return test


def _bitwise_input_and_grad(dtype, layout):
    """The (4, 5, 3, 2) input and incoming gradient the bit-for-bit comparisons with torch share."""
    gen = torch.Generator().manual_seed(3)
    x0 = _layout((torch.randn(4, 5, 3, 2, generator=gen) * 3 + 1).to(dtype), layout)
    return x0, _layout(torch.randn(4, 5, 3, 2, generator=gen).to(dtype), layout)


def _bitwise_leaves(x0, param_dtype):
    """Fresh leaves for one kernel: a copy of ``x0`` in its layout, and the 5-channel weight and bias."""
    x = x0.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    w = (torch.rand(5, generator=torch.Generator().manual_seed(4)) + 0.5).to(param_dtype).requires_grad_()
    b = torch.randn(5, generator=torch.Generator().manual_seed(5)).to(param_dtype).requires_grad_()
    return x, w, b



@_bitwise_cases
def test_cpu_training_kernel_is_torch_batch_norm_bit_for_bit(layout, dtype, param_dtype, affine):
    # The CPU training path calls native_batch_norm (what torch.batch_norm reaches on CPU) directly: the
    # output, both running buffers, the count and every gradient must be exactly torch.batch_norm's.
    from channelnorm.ops.native import _cpu_training_batch_norm

    def through_torch(x, weight, bias, rm, rv, tracked, momentum, eps):
        tracked.add_(1)
        return torch.batch_norm(x, weight, bias, rm, rv, True, momentum, eps, False)

    x0, grad = _bitwise_input_and_grad(dtype, layout)
    results = []
    for kernel in (through_torch, _cpu_training_batch_norm):
        x, w, b = _bitwise_leaves(x0, param_dtype)
        rm, rv = torch.full((5,), 0.5, dtype=param_dtype), torch.full((5,), 2.0, dtype=param_dtype)
        tracked = torch.tensor(3)
        weight, bias = (w, b) if affine else (None, None)
        y = kernel(x, weight, bias, rm, rv, tracked, 0.3, 1e-5)
        y.backward(grad)
        results.append((y.detach(), y.stride(), rm, rv, tracked, x.grad, x.grad.stride(), w.grad, b.grad))
    names = ("y", "y strides", "running_mean", "running_var", "num_batches_tracked", "dx", "dx strides", "dw", "db")
    for name, ours, theirs in zip(names, results[1], results[0]):
        if isinstance(theirs, torch.Tensor):
            assert torch.equal(ours, theirs), name
        else:
            assert ours == theirs, name


@pytest.mark.parametrize("backend", ["native", "auto"])
@pytest.mark.parametrize("replaced", ["weight", "bias", "running_mean", "running_var"])
def test_a_module_tensor_replaced_by_one_of_another_size_is_refused_before_the_kernel_runs(backend, replaced):
    # A module checks its tensors' sizes at construction only; one replaced later (``m.weight.data =``,
    # a pruning tool) must still be refused as nn.BatchNorm2d refuses it, before any buffer is
    # written: native_batch_norm itself indexes past a too-short tensor without checking.
    norm = cn.ChannelNorm(3, backend=backend).train()
    reference = torch.nn.BatchNorm2d(3).train()
    for module in (norm, reference):
        getattr(module, replaced).data = torch.full((2,), 0.5)
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match=f"{replaced} should contain 3 elements not 2"):
        reference(x)
    before = {name: b.clone() for name, b in norm.named_buffers()}
    with pytest.raises(RuntimeError, match=f"{replaced} should contain 3 elements not 2"):
        norm(x)
    for name, buffer in norm.named_buffers():
        assert torch.equal(buffer, before[name]), name


@_bitwise_cases
def test_cpu_instance_norm_is_torch_instance_norm_bit_for_bit(layout, dtype, param_dtype, affine):
    # Without running statistics the native backend calls native_batch_norm on the (1, N * C, L) view
    # itself instead of torch.instance_norm: where torch's kernel reads the gradient right (one laid out as
    # the input), the output and every gradient must be exactly torch.instance_norm's (the output in the
    # input's memory format, which torch's is not).
    from channelnorm.ops.native import instance_norm

    def through_torch(x, weight, bias, eps):
        return torch.instance_norm(x, weight, bias, None, None, True, 0.0, eps, False)

    def native(x, weight, bias, eps):
        return instance_norm(x, None, None, weight, bias, True, 0.1, eps, 1)

    x0, grad = _bitwise_input_and_grad(dtype, layout)
    results = []
    for kernel in (through_torch, native):
        x, w, b = _bitwise_leaves(x0, param_dtype)
        weight, bias = (w, b) if affine else (None, None)
        y = kernel(x, weight, bias, 1e-5)
        y.backward(grad)
        results.append((y.detach(), x.grad, x.grad.stride(), w.grad, b.grad))
    assert y.stride() == x0.stride()
    for name, ours, theirs in zip(("y", "dx", "dx strides", "dw", "db"), results[1], results[0]):
        if isinstance(theirs, torch.Tensor):
            assert torch.equal(ours, theirs), name
        else:
            assert ours == theirs, name


@pytest.mark.parametrize("backend", ["native", "auto"])
@pytest.mark.parametrize("replaced", ["weight", "bias"])
def test_an_instance_norm_parameter_replaced_by_one_of_another_size_is_refused(backend, replaced):
    # As for ChannelNorm above: native_batch_norm indexes past a too-short weight or bias without checking,
    # so the CPU instance-norm path must refuse one as nn.InstanceNorm2d does — in training and in eval,
    # naming the sizes the user set (torch counts N * C elements: "12 elements not 8").
    norm = cn.InstanceNorm(3, backend=backend)
    reference = torch.nn.InstanceNorm2d(3, affine=True)
    for module in (norm, reference):
        getattr(module, replaced).data = torch.full((2,), 0.5)
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match=f"{replaced} should contain 12 elements not 8"):
        reference(x)
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode), pytest.raises(
                ValueError, match=rf"^instance_norm: expected input with 2 channels on axis 1 \(the size of {replaced}\), "
                                  rf"got 3 channels \(input shape \(4, 3, 5, 5\)\)$"):
            norm(x)


def _spatial_major(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values laid out (spatial..., N, C) in memory: the gradient that InstanceNorm ->
    flatten(2).permute(2, 0, 1) -> nn.MultiheadAttention hands the norm (issue 19)."""
    order = list(range(2, t.ndim)) + [0, 1]
    return t.permute(order).contiguous().permute([order.index(d) for d in range(t.ndim)])


def _instance_gradients(norm, x, grad):
    """(y, dx, dweight, dbias) of ``norm`` at ``x`` for the incoming gradient ``grad`` (used as laid out)."""
    x = x.detach().clone().requires_grad_()
    y = norm(x)
    return (y, *torch.autograd.grad(y, (x, norm.weight, norm.bias), grad))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_instance_norm_is_one_graph_and_exact_for_a_spatial_major_gradient(backend):
    # torch.compile(fullgraph=True) traces the CPU instance-norm path in one graph; in float64 its output
    # and gradients match the reference backend for the gradient layout torch's kernel misread.
    torch.manual_seed(0)
    native = cn.InstanceNorm(4, dtype=torch.float64)
    with torch.no_grad():
        native.weight.uniform_(0.5, 1.5)
        native.bias.normal_()
    reference = cn.InstanceNorm(4, dtype=torch.float64, backend="reference")
    reference.load_state_dict(native.state_dict())
    compiled = torch.compile(native, fullgraph=True, backend=backend)
    x = torch.randn(3, 4, 2, 5, dtype=torch.float64) * 2 + 1
    grad = _spatial_major(torch.randn(3, 4, 2, 5, dtype=torch.float64))
    for got, want in zip(_instance_gradients(compiled, x, grad), _instance_gradients(reference, x, grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_per_sample_gradients_of_instance_norm_through_torch_func():
    # torch.func.vmap(torch.func.grad(...)) over the CPU instance-norm path: each sample's weight and bias
    # gradients are those of the reference backend (float64).
    torch.manual_seed(0)
    native = cn.InstanceNorm(4, dtype=torch.float64)
    reference = cn.InstanceNorm(4, dtype=torch.float64, backend="reference")
    params = {"weight": torch.rand(4, dtype=torch.float64) + 0.5, "bias": torch.randn(4, dtype=torch.float64)}
    xs = torch.randn(5, 2, 4, 3, 3, dtype=torch.float64)

    def per_sample(norm):
        loss = lambda p, x: torch.func.functional_call(norm, p, (x,)).pow(3).sum()  # noqa: E731
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs)

    got, want = per_sample(native), per_sample(reference)
    for name in params:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-10)
