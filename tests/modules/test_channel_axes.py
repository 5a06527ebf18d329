"""ChannelNorm with a tuple channel_axis (Keras 2's BatchNormalization(axis=[1, 3])): one statistic per
combination of the axes' indices, exact, against torch's BatchNorm1d on the same values laid out as (rows, C1*C3)."""
import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

import channelnorm as cn
from backends import CPU_BACKENDS

F64 = torch.float64


def _as_rows(x):
    """(N, A, B, C) -> (N*B, A*C): every (a, c) pair a column, as the pairs' statistics see them."""
    return x.permute(0, 2, 1, 3).reshape(-1, x.shape[1] * x.shape[3])


@pytest.mark.parametrize("backend", CPU_BACKENDS + ("auto",))
def test_statistics_per_pair_of_axes_match_batchnorm_on_the_rows(backend):
    ours = cn.ChannelNorm(12, channel_axis=(1, 3), backend=backend, dtype=F64)
    theirs = nn.BatchNorm1d(12, dtype=F64)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(theirs.state_dict())
    for step in range(3):
        x = (torch.randn(5, 3, 7, 4, dtype=F64) * (step + 1) + step).requires_grad_()
        y = ours(x)
        rows = _as_rows(x.detach()).requires_grad_()
        expected = theirs(rows)
        torch.testing.assert_close(_as_rows(y), expected, rtol=1e-12, atol=1e-12)
        upstream = torch.randn_like(expected)
        (_as_rows(y) * upstream).sum().backward()
        (expected * upstream).sum().backward()
        torch.testing.assert_close(_as_rows(x.grad), rows.grad, rtol=1e-10, atol=1e-10)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-12, atol=1e-12)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 7, 4, dtype=F64)
    torch.testing.assert_close(_as_rows(ours(x)), theirs(_as_rows(x)), rtol=1e-12, atol=1e-12)


def test_axis_order_and_negative_axes_do_not_matter_and_layout_is_kept():
    x = torch.randn(4, 3, 5, 2, dtype=F64)
    a = cn.ChannelNorm(6, channel_axis=(1, 3), dtype=F64)
    b = cn.ChannelNorm(6, channel_axis=(-1, 1), dtype=F64)  # the same axes: parameters in the input's order
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = a(x_cl)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, a(x), rtol=1e-12, atol=1e-12)
    adjacent = cn.ChannelNorm(15, channel_axis=(1, 2), dtype=F64)  # (N, A, B, C): one statistic per (a, b)
    ref = nn.BatchNorm1d(15, dtype=F64)(x.permute(0, 3, 1, 2).reshape(-1, 15)).reshape(4, 2, 3, 5).permute(0, 2, 3, 1)
    torch.testing.assert_close(adjacent(x), ref, rtol=1e-12, atol=1e-12)


def test_gradcheck_reference():
    norm = cn.ChannelNorm(6, channel_axis=(1, 3), backend="reference", dtype=F64, track_running_stats=False)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 2, 4, 3, dtype=F64, requires_grad=True)
    assert gradcheck(norm, (x,))


def test_tuple_axes_errors_are_clear():
    with pytest.raises(ValueError, match=r"expected the channel axes \(1, 3\) of input shape \(2, 3, 4, 5\) to hold "
                                         r"12 channels together, got sizes \[3, 5\] \(15 channels\)"):
        cn.ChannelNorm(12, channel_axis=(1, 3))(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"channel_axis \(1, -3\) names the same axis twice for input of rank 4"):
        cn.ChannelNorm(9, channel_axis=(1, -3))(torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="distinct axes"):
        cn.ChannelNorm(9, channel_axis=(1, 1))
    with pytest.raises(ValueError, match="mask is not supported with a tuple channel_axis"):
        cn.ChannelNorm(6, channel_axis=(1, 2))(torch.randn(2, 2, 3), mask=torch.ones(2, dtype=torch.bool))
    for make in (lambda: cn.ChannelNormAct(6, channel_axis=(1, 2)), lambda: cn.GhostNorm(6, channel_axis=(1, 2)),
                 lambda: cn.GroupNorm(2, 6, channel_axis=(1, 2)), lambda: cn.SyncChannelNorm(6, channel_axis=(1, 2))):
        with pytest.raises(TypeError, match="channel_axis must be an int.*taken by ChannelNorm only"):
            make()
    assert cn.ChannelNorm(3, channel_axis=(2,)).channel_axis == 2  # one axis is that axis


def test_model_tools_with_tuple_axes():
    """recompute_stats gives each pair its population statistics; fold leaves it with the reason."""
    norm = cn.ChannelNorm(6, channel_axis=(1, 3), dtype=F64)
    batches = [torch.randn(4, 2, 5, 3, dtype=F64) + i for i in range(3)]
    cn.recompute_stats(norm, batches, progress=False)
    rows = torch.cat([_as_rows(b) for b in batches])
    torch.testing.assert_close(norm.running_mean, rows.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norm.running_var, rows.var(0), rtol=1e-12, atol=1e-12)
    model = nn.Sequential(nn.Conv2d(2, 2, 1), norm).eval()
    _, report = cn.convert.fold(model, torch.randn(4, 2, 5, 3), return_report=True)
    assert report.num_folded == 0 and "per combination of the axes (1, 3)" in report.left[0].reason
