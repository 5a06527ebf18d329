"""Differential test: backend="auto" computes what the reference math computes, call by call.

Random shapes, ranks, channel axes, memory layouts (including channels_last-strided incoming
gradients), batch 1, and dtypes including float16/bfloat16 with large means. Values and every
gradient (input, weight, bias) and the running statistics are compared. Tolerances are tied to the
dtype: both sides round the same input, so they differ by a few units of the output's precision.
"""
import random

import pytest
import torch

import channelnorm.functional as F

TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _case(rng: random.Random):
    op = rng.choice(["channel", "instance", "group"])
    rank = rng.randint(3 if op == "instance" else 2, 5)
    batch = rng.choice([1, 1, 2, 3])
    channels = rng.choice([1, 2, 4, 6])
    shape = [batch, channels] + [rng.randint(1, 4) for _ in range(rank - 2)]
    if op == "channel" and batch * (shape[2] if rank > 2 else 1) < 2:
        shape[0] = 2
    if op == "instance" and all(s == 1 for s in shape[2:]):
        shape[-1] = 2  # per-instance statistics need more than one value each
    dtype = rng.choice([torch.float64, torch.float32, torch.float32, torch.float16, torch.bfloat16])
    mean = rng.choice([0.0, 0.0, 100.0])
    axis_mode = rng.choice(["first", "last", "last_view"] + (["channels_last"] if rank == 4 else []))
    grad_layout = rng.choice(["contiguous", "channels_last"]) if rank == 4 else "contiguous"
    return op, tuple(shape), dtype, mean, axis_mode, grad_layout, rng.random() < 0.5


def _lay_out(x, axis_mode):
    if axis_mode == "channels_last":
        return x.contiguous(memory_format=torch.channels_last), 1
    if axis_mode == "last":
        return x.movedim(1, -1).contiguous(), x.ndim - 1
    if axis_mode == "last_view":
        return x.movedim(1, -1), x.ndim - 1
    return x, 1


def _run(op, x, axis, params, training, backend, g):
    x = x.detach().clone().requires_grad_()
    w, b, rm, rv = (None if p is None else p.detach().clone() for p in params)
    w.requires_grad_()
    b.requires_grad_()
    if op == "channel":
        y = F.channel_norm(x, rm, rv, w, b, training=training or rm is None, momentum=0.3, channel_axis=axis,
                           backend=backend)
    elif op == "instance":
        y = F.instance_norm(x, rm, rv, w, b, use_input_stats=training or rm is None, momentum=0.3,
                            channel_axis=axis, backend=backend)
    else:
        groups = 2 if x.shape[axis] % 2 == 0 else 1
        y = F.group_norm(x, groups, w, b, channel_axis=axis, backend=backend)
    grads = torch.autograd.grad(y, (x, w, b), g(y))
    return y, grads, rm, rv


def _conditioning(op, base):
    """1 + |mean| / std of the worst statistic: float rounding of x is amplified by this much in the output."""
    if op == "channel":
        flat = base.movedim(1, 0).flatten(1)
    elif op == "instance":
        flat = base.flatten(2).flatten(0, 1)
    else:
        groups = 2 if base.shape[1] % 2 == 0 else 1
        flat = base.reshape(base.shape[0] * groups, -1)
    std = flat.std(1, unbiased=False).min().item()
    return 1.0 + flat.abs().max().item() / max(std, 1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_auto_matches_reference_on_random_calls(seed):
    rng = random.Random(seed)
    for _ in range(25):
        op, shape, dtype, mean, axis_mode, grad_layout, training = _case(rng)
        base = torch.randn(shape, dtype=torch.float64) + mean
        x, axis = _lay_out(base.to(dtype), axis_mode)
        C = shape[1]
        w = torch.rand(C) + 0.5
        b = torch.randn(C)
        if dtype == torch.float64:
            w, b = w.double(), b.double()
        tracked = op != "group" and rng.random() < 0.7
        rm = torch.randn(C, dtype=w.dtype) if tracked else None
        rv = torch.rand(C, dtype=w.dtype) + 0.5 if tracked else None
        dy = torch.randn(shape, dtype=torch.float64)

        def grad_like(y):
            g = dy.to(y.dtype)
            g = _lay_out(g, axis_mode)[0]
            return g.contiguous(memory_format=torch.channels_last) if grad_layout == "channels_last" else g

        got = _run(op, x, axis, (w, b, rm, rv), training, "auto", grad_like)
        want = _run(op, x, axis, (w, b, rm, rv), training, "reference", grad_like)
        what = f"{op} shape={shape} {dtype} mean={mean} {axis_mode} grad={grad_layout} training={training}"
        tol = TOL[dtype] * (1.0 if dtype == torch.float64 else min(_conditioning(op, base) / 50, 1e3) + 1)
        assert got[0].stride() == x.stride() or x.numel() <= 1, what
        torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol,
                                   msg=lambda m: f"{what} tol={tol:.3g}: {m}")
        for name, a, e in zip(("dx", "dweight", "dbias"), got[1], want[1]):
            scale = max(1.0, e.abs().max().item())
            torch.testing.assert_close(a.double(), e.double(), rtol=tol, atol=tol * scale * 4, msg=f"{name} {what}")
        if tracked:
            for a, e in zip(got[2:], want[2:]):
                torch.testing.assert_close(a, e, rtol=tol, atol=tol, msg=f"running stats {what}")


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
