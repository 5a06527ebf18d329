"""Differential test: backend="auto" computes what the reference math computes, call by call.

Every norm that ``auto`` can send to torch's kernels (channel, instance, group, layer, the fused
``*_act`` forms, ghost) on every backend ``auto`` can pick, over:

* random shapes, ranks, channel axes, memory layouts, batch sizes (1 included), dtypes including
  float16/bfloat16 with large means, and incoming gradients in every memory order a model gives
  (permuted, strided, expanded, channels_last, size-1 axes with odd strides);
* every incoming-gradient layout, in float64, where any layout defect shows as an O(1) error;
* the classes of calls where torch's kernel loses precision, against a float64 oracle.

Values and every gradient (input, weight, bias) and the running statistics are compared.
"""
import math
import random

import pytest
import torch

import channelnorm.functional as F
from channelnorm.ops import dispatch
from channelnorm.ops.reference import REFERENCE

NORMS = ("channel", "channel_act", "instance", "group", "layer", "group_act", "ghost")
TRACKED = ("channel", "channel_act", "instance", "ghost")  # the norms with running statistics
PER_SAMPLE = ("instance", "group", "layer", "group_act")
HALF = (torch.float16, torch.bfloat16)


def _groups(norm, num_channels):
    if norm == "layer":
        return 1
    return 2 if num_channels % 2 == 0 else 1


def _call(norm, backend, x, axis, weight, bias, running_mean, running_var, training):
    """One forward of ``norm`` (momentum 0.3; the fused forms with a non-trivial activation)."""
    if norm == "channel":
        return F.channel_norm(x, running_mean, running_var, weight, bias, training=training, momentum=0.3,
                              channel_axis=axis, backend=backend)
    if norm == "channel_act":
        return F.channel_norm_act(x, running_mean, running_var, weight, bias, training=training, momentum=0.3,
                                  channel_axis=axis, activation="silu", backend=backend)
    if norm == "instance":
        return F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats=training, momentum=0.3,
                               channel_axis=axis, backend=backend)
    if norm == "ghost":
        # Virtual batches of 2: a batch of 3 leaves a last virtual batch of one sample.
        return F.ghost_norm(x, running_mean, running_var, weight, bias, training=training, momentum=0.3,
                            channel_axis=axis, backend=backend, virtual_batch_size=2)
    groups = _groups(norm, x.shape[axis])
    if norm == "group":
        return F.group_norm(x, groups, weight, bias, channel_axis=axis, backend=backend)
    if norm == "layer":
        return F.layer_norm(x, weight, bias, channel_axis=axis, backend=backend)
    return F.group_norm_act(x, groups, weight, bias, channel_axis=axis, activation="gelu", backend=backend)


def _strides(t: torch.Tensor):
    """The strides that address memory: those of the axes longer than 1."""
    return [st for st, n in zip(t.stride(), t.shape) if n > 1]


def _run(norm, backend, x, axis, params, training, grad, dtype=None, param_dtype=None):
    """(y, dx, dweight, dbias[, running_mean, running_var]) of one call on copies of the inputs.

    ``dtype``/``param_dtype``: cast the input / the parameters and statistics first (None: keep);
    ``grad``: the incoming gradient, in the output's dtype and on its device, used as laid out.
    The output keeps the input's strides (docs/design.md §3.1, memory format).
    """
    device = grad.device
    x = x.detach().to(dtype=dtype or x.dtype, device=device).requires_grad_()
    w, b, rm, rv = (None if p is None else p.detach().to(dtype=param_dtype or p.dtype, device=device).clone()
                    for p in params)
    w.requires_grad_()
    b.requires_grad_()
    y = _call(norm, backend, x, axis, w, b, rm, rv, training)
    assert _strides(y) == _strides(x), f"{norm} {backend}: output strides {y.stride()}, input {x.stride()}"
    grads = torch.autograd.grad(y, (x, w, b), grad)
    return tuple(t.cpu() for t in (y, *grads) + (() if rm is None else (rm, rv)))


# ---------------------------------------------------------------- layouts

def _in_memory_order(t: torch.Tensor, order) -> torch.Tensor:
    """``t``'s values laid out in memory with axis ``order[0]`` outermost and ``order[-1]`` innermost."""
    inverse = [order.index(d) for d in range(t.ndim)]
    return t.permute(order).contiguous().permute(inverse)


def gradient_layouts(g: torch.Tensor):
    """Incoming gradients a model can hand a norm, as (name, tensor): ``g``'s values (the expanded
    ones repeat part of them) in every memory order that matters."""
    rank = g.ndim
    spatial = list(range(2, rank))
    yield "contiguous", g
    if rank == 4:
        yield "channels_last", g.contiguous(memory_format=torch.channels_last)
    # (spatial..., N, C): InstanceNorm -> flatten(2).permute(2, 0, 1) -> MultiheadAttention.
    yield "spatial_major", _in_memory_order(g, spatial + [0, 1])
    yield "spatial_major_cn", _in_memory_order(g, spatial + [1, 0])
    yield "batch_innermost", _in_memory_order(g, [1] + spatial + [0])
    yield "reversed", _in_memory_order(g, list(range(rank))[::-1])
    big = g.new_zeros([2 * s for s in g.shape])
    strided = big[tuple(slice(None, None, 2) for _ in g.shape)]
    strided.copy_(g)
    yield "strided", strided
    yield "expanded_batch", g[:1].expand(g.shape)
    yield "expanded_last", g[..., :1].expand(g.shape)
    # Size-1 axes may carry any stride: the layouts that are contiguous and channels_last at once.
    if 1 in g.shape:
        base = _in_memory_order(g, spatial + [0, 1])
        odd = [1 if s == 1 else st for s, st in zip(g.shape, base.stride())]
        yield "odd_unit_strides", base.as_strided(g.shape, odd)


def input_layouts(x: torch.Tensor):
    """(name, input, channel axis): channels-first, channels_last, and the channel axis last (a view)."""
    yield "contiguous", x, 1
    if x.ndim == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last), 1
    yield "axis_last_view", x.movedim(1, -1), x.ndim - 1


# ---------------------------------------------------------------- random calls

TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _case(rng: random.Random):
    norm = rng.choice(NORMS)
    rank = rng.randint(3 if norm == "instance" else 2, 5)
    batch = rng.choice([1, 1, 2, 3]) if norm != "ghost" else rng.choice([2, 3, 4])
    channels = rng.choice([1, 2, 4, 6])
    shape = [batch, channels] + [rng.randint(1, 4) for _ in range(rank - 2)]
    spatial = math.prod(shape[2:])
    if norm in ("channel", "channel_act") and batch * spatial < 2:
        shape[0] = 2  # statistics per channel need more than one value each
    if norm == "ghost" and spatial < 2:
        shape[0] = rng.choice([2, 4])  # so does every virtual batch (of 2 samples)
    if norm == "instance" and all(s == 1 for s in shape[2:]):
        shape[-1] = 2  # per-instance statistics need more than one value each
    dtype = rng.choice([torch.float64, torch.float32, torch.float32, torch.float16, torch.bfloat16])
    param_dtype = dtype if dtype == torch.float64 else rng.choice([torch.float32, dtype])
    mean = rng.choice([0.0, 0.0, 100.0])
    training = rng.random() < 0.5 or norm not in TRACKED
    return norm, tuple(shape), dtype, param_dtype, mean, training


def _conditioning(norm, x, training, running_mean, running_var):
    """1 + |x| / std at the worst statistic: the float rounding of x is amplified by this much.

    A statistic of one value (its variance is exactly 0) amplifies nothing: the exact output is
    the bias, which the reference computes exactly and ``auto`` must too.
    """
    if not training and running_var is not None:
        return 1.0 + x.abs().max().item() / running_var.double().min().sqrt().item()
    if norm in ("channel", "channel_act", "ghost"):
        flat = x.movedim(1, 0).flatten(1)
    elif norm == "instance":
        flat = x.flatten(2).flatten(0, 1)
    else:
        flat = x.reshape(x.shape[0] * _groups(norm, x.shape[1]), -1)
    if flat.shape[1] < 2:
        return 1.0
    std = flat.std(1, unbiased=False)
    top = flat.abs().amax(1)
    return 1.0 + (top / std.clamp_min(1e-300)).max().item()


@pytest.mark.parametrize("seed", range(12))
def test_auto_matches_reference_on_random_calls(seed):
    rng = random.Random(seed)
    for _ in range(25):
        norm, shape, dtype, param_dtype, mean, training = _case(rng)
        base = (torch.randn(shape, dtype=torch.float64) + mean).to(dtype).double()  # exactly representable
        name, x, axis = rng.choice(list(input_layouts(base)))
        C = shape[1]
        tracked = norm in TRACKED and (not training or rng.random() < 0.7)
        params = (torch.rand(C, dtype=torch.float64) + 0.5, torch.randn(C, dtype=torch.float64),
                  torch.randn(C, dtype=torch.float64) if tracked else None,
                  torch.rand(C, dtype=torch.float64) + 0.5 if tracked else None)
        layouts = list(gradient_layouts(torch.randn(shape, dtype=torch.float64).to(dtype)))
        grad_name, grad = rng.choice(layouts)
        if axis != 1:
            grad = grad.movedim(1, -1)
        got = _run(norm, "auto", x, axis, params, training, grad, dtype, param_dtype)
        want = _run(norm, "reference", x, axis, params, training, grad, dtype, param_dtype)
        what = (f"{norm} shape={shape} {dtype} params {param_dtype} mean={mean} {name} grad={grad_name} "
                f"training={training}")
        cond = _conditioning(norm, base, training, params[2], params[3])
        tol = TOL[dtype] * (1.0 if dtype == torch.float64 else cond / 50 + 1)
        torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol, msg=lambda m: f"{what} tol={tol:.3g}: {m}")
        for label, a, e in zip(("dx", "dweight", "dbias", "running_mean", "running_var"), got[1:], want[1:]):
            scale = max(1.0, e.abs().max().item())
            torch.testing.assert_close(a.double(), e.double(), rtol=tol, atol=tol * scale * 4,
                                       msg=lambda m: f"{label} {what} tol={tol:.3g}: {m}")


# ---------------------------------------------------------------- every gradient layout

LAYOUT_SHAPES = [(3, 4, 2, 3), (1, 4, 3, 2), (2, 2, 1, 3), (3, 2, 4), (2, 4, 2, 1, 2)]


def _check_gradient_layouts(norm, backend, dtype, shapes, tol, only=None, device="cpu"):
    """``backend`` in ``dtype`` on ``device`` against the float64 reference, for every input layout and
    incoming-gradient layout (``only``: these gradient layouts)."""
    torch.manual_seed(0)
    checked = 0
    for shape in shapes:
        base = (torch.randn(shape, dtype=torch.float64) * 2 + 1).to(dtype).double()
        C = shape[1]
        params = [(torch.rand(C, dtype=torch.float64) + 0.5), torch.randn(C, dtype=torch.float64),
                  torch.randn(C, dtype=torch.float64), torch.rand(C, dtype=torch.float64) + 0.5]
        params = [p.to(dtype).double() for p in params]
        # (training, with running statistics): the tracked norms also train without them (InstanceNorm's
        # default), a code path of its own in the native backend.
        modes = ((True, True), (False, True), (True, False)) if norm in TRACKED else ((True, False),)
        for training, tracked in modes:
            p = params if tracked else params[:2] + [None, None]
            g = torch.randn(shape, dtype=torch.float64).to(dtype).double()
            for in_name, x, axis in input_layouts(base):
                for (grad_name, grad), (_, grad64) in zip(gradient_layouts(g.to(dtype=dtype, device=device)),
                                                          gradient_layouts(g)):
                    if only is not None and grad_name not in only:
                        continue
                    if axis != 1:
                        grad, grad64 = grad.movedim(1, -1), grad64.movedim(1, -1)
                    got = _run(norm, backend, x, axis, p, training, grad, dtype, dtype)
                    want = _run(norm, "reference", x, axis, p, training, grad64)
                    what = (f"{norm} {backend} {shape} input {in_name} grad {grad_name} training={training} "
                            f"tracked={tracked}")
                    for label, a, e in zip(("y", "dx", "dweight", "dbias", "running_mean", "running_var"), got,
                                           want):
                        scale = max(1.0, e.abs().max().item())
                        torch.testing.assert_close(a.double(), e, rtol=tol, atol=tol * scale,
                                                   msg=lambda m: f"{label} {what}: {m}")
                    checked += 1
    assert checked > 0


@pytest.mark.parametrize("backend", ["auto", "native"])
@pytest.mark.parametrize("norm", NORMS)
def test_every_incoming_gradient_layout_gives_the_reference_gradients(norm, backend):
    """float64 against the float64 reference: every layout defect is an O(1) error (issue 19: torch's
    InstanceNorm kernel gave wrong weight gradients when the gradient's spatial axes came first)."""
    shapes = [s for s in LAYOUT_SHAPES if norm != "instance" or math.prod(s[2:]) > 1]
    _check_gradient_layouts(norm, backend, torch.float64, shapes, 1e-10)


@pytest.mark.parametrize("norm", ["channel", "instance", "group"])
def test_triton_takes_every_incoming_gradient_layout(norm):
    """``auto`` picks Triton on CUDA for the classes of ``dispatch.TRITON_ON_CUDA``: its backward gets
    the layouts above too (float32; on CPU through Triton's interpreter, so a few layouts only)."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _check_gradient_layouts(norm, "triton", torch.float32, [(3, 4, 1, 3)], 1e-4,
                            only=("spatial_major", "odd_unit_strides", "expanded_batch"), device=device)


def test_instance_norm_before_multihead_attention_gets_the_reference_gradients():
    """The reported model: InstanceNorm -> flatten(2).permute(2, 0, 1) -> nn.MultiheadAttention."""
    def gradients(backend):
        torch.manual_seed(0)
        norm = F.instance_norm
        attention = torch.nn.MultiheadAttention(8, 2).double()
        x = torch.randn(3, 8, 4, 5, dtype=torch.float64, requires_grad=True)
        w = torch.rand(8, dtype=torch.float64, requires_grad=True)
        tokens = norm(x, weight=w, backend=backend).flatten(2).permute(2, 0, 1)
        out, _ = attention(tokens, tokens, tokens)
        return torch.autograd.grad(out.square().sum(), (x, w))

    for a, e in zip(gradients("auto"), gradients("reference")):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- precision classes

def _precision_case(case, norm):
    """(input in float64, exactly representable in the test dtype; channel axis; params; dtype;
    parameter dtype) for a class of calls where torch's CPU group_norm loses precision."""
    torch.manual_seed(1)
    dtype, pdtype = torch.float32, torch.float32
    if case == "one_channel_on_the_last_axis":
        # The moved view (N, 1, H, W) is contiguous and channels_last at once.
        C, axis = 1, -1
        x = torch.randn(8, 5, 6, 1, dtype=torch.float64) + 100
    elif case == "one_value_per_group":
        # LayerNorm of one channel, GroupNorm of one channel per group, no spatial extent.
        C, axis = (1 if norm == "layer" else 2), 1
        x = torch.randn((4, C) if norm != "group_act" else (4, C, 1), dtype=torch.float64) + 100
    else:
        dtype = pdtype = case
        C, axis = 6, 1
        x = torch.randn(4, C, 3, dtype=torch.float64) * 3 + 100
    x = x.to(dtype).double()
    params = [(torch.rand(C, dtype=torch.float64) + 0.5).to(pdtype).double(),
              torch.randn(C, dtype=torch.float64).to(pdtype).double(), None, None]
    return x, axis, params, dtype, pdtype


@pytest.mark.parametrize("norm", ["group", "layer", "group_act"])
@pytest.mark.parametrize("case", ["one_channel_on_the_last_axis", "one_value_per_group", torch.bfloat16,
                                  torch.float16])
def test_auto_is_as_accurate_as_the_reference_where_torchs_group_norm_is_not(case, norm):
    """Against a float64 oracle, auto's error (output and every gradient) is at most twice the
    reference's in the same dtype plus one rounding of the largest value.

    torch's CPU group_norm misses that by orders of magnitude here: errors of 2e-3 against the
    reference's 5e-6 with one channel on axis -1 at mean 100; 2e-3 where the exact output is the
    bias (one value per group); a weight gradient 15-175x less accurate with half-precision
    parameters at mean 100.
    """
    x, axis, params, dtype, pdtype = _precision_case(case, norm)
    grad64 = torch.randn(x.shape, dtype=torch.float64).to(dtype).double()
    oracle = _run(norm, "reference", x, axis, params, True, grad64)
    grad = grad64.to(dtype)
    auto = _run(norm, "auto", x, axis, params, True, grad, dtype, pdtype)
    reference = _run(norm, "reference", x, axis, params, True, grad, dtype, pdtype)
    for label, a, r, o in zip(("y", "dx", "dweight", "dbias"), auto, reference, oracle):
        err, ref_err = (a.double() - o).abs().max().item(), (r.double() - o).abs().max().item()
        floor = torch.finfo(a.dtype).eps * max(o.abs().max().item(), 1.0)
        assert err <= 2 * ref_err + floor, f"{case} {norm} {label}: auto's error {err:.3g}, reference's {ref_err:.3g}"
    # The rule is the class, not these values: auto sends every such call to the reference.
    op = "group_norm_act" if norm == "group_act" else "group_norm"
    weight = params[0].to(pdtype)
    chosen = dispatch.resolve("auto", op, x.to(dtype), axis % x.ndim, (weight, weight),
                              num_groups=_groups(norm, x.shape[axis]))
    assert chosen is REFERENCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auto_matches_reference_for_half_input_with_many_values_per_channel_and_a_large_mean(dtype):
    x = (torch.randn(4, 2, 256, 256, dtype=torch.float64) * 0.5 + 1e4).to(dtype)
    x[:, 1] = 1e4  # a constant channel: zero variance, output exactly the bias
    rm, rv = torch.zeros(2), torch.ones(2)
    rm2, rv2 = rm.clone(), rv.clone()
    got = F.channel_norm(x, rm, rv, training=True, momentum=1.0)
    want = F.channel_norm(x, rm2, rv2, training=True, momentum=1.0, backend="reference")
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(rv, rv2, rtol=1e-3, atol=1e-3)
    assert rv[1].item() == 0.0 and got[:, 1].abs().max().item() == 0.0
