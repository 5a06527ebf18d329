"""Masked statistics with inf, NaN and finfo.max padding, in training and eval: values and every
gradient equal a float64 oracle computed on the valid elements only."""
import pytest
import torch

import channelnorm as cn

F64 = torch.float64


def _oracle(valid, weight, bias, eps):
    """(k, C) valid elements: plain float64 batch norm math, written independently."""
    mean = valid.mean(0)
    var = (valid - mean).square().mean(0)
    return (valid - mean) / torch.sqrt(var + eps) * weight + bias


# "max"/"-max": the dtype's largest finite value (masked_fill(~mask, finfo.max) padding), whose
# distance to the mean overflows to inf once scaled by invstd.
FILLS = [float("inf"), float("-inf"), float("nan"), "max", "-max"]


def _padded_input(fill, dtype):
    torch.manual_seed(0)
    lengths = [5, 2, 4]
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]          # (N, L)
    if isinstance(fill, str):
        fill = torch.finfo(dtype).max * (-1 if fill.startswith("-") else 1)
    x = (torch.randn(3, 4, 5, dtype=F64) * 2 + 3).to(dtype).masked_fill(~mask[:, None, :], fill).to(F64)
    weight = torch.rand(4, dtype=F64) + 0.5
    bias = torch.randn(4, dtype=F64)
    g = torch.randn(3, 4, 5, dtype=F64)
    return lengths, mask, x, weight, bias, g


@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_padding_reaches_neither_statistics_nor_gradients(fill, dtype):
    lengths, mask, x, weight, bias, g = _padded_input(fill, dtype)
    xs, ws, bs = (t.to(dtype).clone().requires_grad_() for t in (x, weight, bias))
    rm, rv = torch.zeros(4, dtype=dtype), torch.ones(4, dtype=dtype)
    y = cn.functional.channel_norm(xs, rm, rv, ws, bs, training=True, momentum=1.0, mask=mask)
    # The loss sees the valid outputs only (padded outputs are inf/NaN: NaN in, NaN out).
    loss = torch.where(mask[:, None, :], y * g.to(dtype), torch.zeros((), dtype=dtype)).sum()
    dx, dw, db = torch.autograd.grad(loss, (xs, ws, bs))

    xo, wo, bo = (t.clone().requires_grad_() for t in (x, weight, bias))
    valid = xo.permute(0, 2, 1)[mask]                                          # (k, C)
    yo = _oracle(valid, wo, bo, 1e-5)
    (yo * g.permute(0, 2, 1)[mask]).sum().backward()

    tol = dict(rtol=1e-10, atol=1e-10) if dtype == F64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(y.permute(0, 2, 1)[mask].double(), yo.detach(), **tol)
    torch.testing.assert_close(dw.double(), wo.grad, **tol)
    torch.testing.assert_close(db.double(), bo.grad, **tol)
    valid_dx = dx.permute(0, 2, 1)[mask]
    torch.testing.assert_close(valid_dx.double(), xo.grad.permute(0, 2, 1)[mask], **tol)
    assert (dx.permute(0, 2, 1)[~mask] == 0).all()        # no gradient to padding from the statistics
    k = int(mask.sum())
    torch.testing.assert_close(rm.double(), valid.detach().mean(0), **tol)
    torch.testing.assert_close(rv.double(), valid.detach().var(0) * 1, **tol)   # unbiased over k values
    assert k == sum(lengths)


@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_eval_padding_reaches_no_gradient(fill, dtype):
    # Eval normalizes with running statistics; the mask still keeps padding out of every gradient.
    lengths, mask, x, weight, bias, g = _padded_input(fill, dtype)
    rm, rv = torch.randn(4, dtype=F64), torch.rand(4, dtype=F64) + 0.5
    xs, ws, bs = (t.to(dtype).clone().requires_grad_() for t in (x, weight, bias))
    y = cn.functional.channel_norm(xs, rm.to(dtype), rv.to(dtype), ws, bs, training=False, mask=mask)
    loss = torch.where(mask[:, None, :], y * g.to(dtype), torch.zeros((), dtype=dtype)).sum()
    dx, dw, db = torch.autograd.grad(loss, (xs, ws, bs))

    xo, wo, bo = (t.clone().requires_grad_() for t in (x, weight, bias))
    valid = xo.permute(0, 2, 1)[mask]                                          # (k, C)
    yo = (valid - rm) / torch.sqrt(rv + 1e-5) * wo + bo
    (yo * g.permute(0, 2, 1)[mask]).sum().backward()

    tol = dict(rtol=1e-10, atol=1e-10) if dtype == F64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(y.permute(0, 2, 1)[mask].double(), yo.detach(), **tol)
    torch.testing.assert_close(dw.double(), wo.grad, **tol)
    torch.testing.assert_close(db.double(), bo.grad, **tol)
    torch.testing.assert_close(dx.permute(0, 2, 1)[mask].double(), xo.grad.permute(0, 2, 1)[mask], **tol)
    assert (dx.permute(0, 2, 1)[~mask] == 0).all()
    # Finite padding is still normalized with the running statistics, as every element is.
    if fill in ("max", "-max"):
        finite = torch.isfinite(y.permute(0, 2, 1)[~mask])
        expected = ((x - rm[:, None]) / torch.sqrt(rv[:, None] + 1e-5) * weight[:, None] + bias[:, None])
        torch.testing.assert_close(y.permute(0, 2, 1)[~mask][finite].double(),
                                   expected.permute(0, 2, 1)[~mask][finite], rtol=1e-5, atol=0)
