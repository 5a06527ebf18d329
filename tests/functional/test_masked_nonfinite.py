"""Masked statistics with inf and NaN padding: values and every gradient equal a float64 oracle
computed on the valid elements only."""
import pytest
import torch

import channelnorm as cn

F64 = torch.float64


def _oracle(valid, weight, bias, eps):
    """(k, C) valid elements: plain float64 batch norm math, written independently."""
    mean = valid.mean(0)
    var = (valid - mean).square().mean(0)
    return (valid - mean) / torch.sqrt(var + eps) * weight + bias


@pytest.mark.parametrize("fill", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_non_finite_padding_reaches_neither_statistics_nor_gradients(fill, dtype):
    torch.manual_seed(0)
    lengths = [5, 2, 4]
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]          # (N, L)
    x = (torch.randn(3, 4, 5, dtype=F64) * 2 + 3).masked_fill(~mask[:, None, :], fill)
    weight = torch.rand(4, dtype=F64) + 0.5
    bias = torch.randn(4, dtype=F64)
    g = torch.randn(3, 4, 5, dtype=F64)

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
