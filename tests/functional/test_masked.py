"""Masked statistics: equal to ChannelNorm run on the gathered valid elements."""
import pytest
import torch

import channelnorm as cn

F64 = torch.float64


def _gathered(x, mask):
    """Valid elements of NCL ``x`` under an (N, L) mask, as an (k, C) batch for a plain ChannelNorm."""
    return x.permute(0, 2, 1)[mask]


def _lengths_mask(lengths, length):
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def _affine(norm, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.num_channels, generator=g, dtype=F64) + 0.5)
        norm.bias.copy_(torch.randn(norm.num_channels, generator=g, dtype=F64))
    return norm


@pytest.mark.parametrize("mask_rank", ["without_channel", "with_channel"])
def test_masked_statistics_equal_statistics_of_valid_elements(mask_rank):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 7, dtype=F64) * 2 + 1
    mask = _lengths_mask([7, 3, 5, 1], 7)
    x = x.masked_fill(~mask[:, None, :], float("nan"))  # padding holds garbage: it must not leak
    given = mask if mask_rank == "without_channel" else mask[:, None, :]
    ours = _affine(cn.ChannelNorm(3, dtype=F64))
    ref = _affine(cn.ChannelNorm(3, dtype=F64))
    valid = _gathered(x, mask)
    y = ours(x, mask=given)
    y_ref = ref(valid)
    torch.testing.assert_close(_gathered(y, mask), y_ref)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)  # n = number of valid elements
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert torch.isnan(y[~mask[:, None, :].expand_as(y)]).all()  # padding is normalized too (NaN in, NaN out)


def test_masked_output_covers_invalid_elements_and_channels_last():
    torch.manual_seed(1)
    x = torch.randn(3, 6, 2, dtype=F64)  # (N, L, C), channels last
    mask = _lengths_mask([6, 2, 4], 6)
    norm = _affine(cn.ChannelNorm(2, channel_axis=-1, dtype=F64, track_running_stats=False))
    y = norm(x, mask=mask)
    valid = x[mask]  # (k, C)
    mean, var = valid.mean(0), valid.var(0, unbiased=False)
    expected = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.detach() + norm.bias.detach()
    torch.testing.assert_close(y, expected)


def test_masked_broadcast_mask_drops_whole_samples():
    torch.manual_seed(2)
    x = torch.randn(5, 3, 4, 4, dtype=F64)
    keep = torch.tensor([True, False, True, True, False])
    y = cn.functional.channel_norm(x, None, None, training=True, mask=keep.view(5, 1, 1))
    ref = cn.functional.channel_norm(x[keep], None, None, training=True)
    torch.testing.assert_close(y[keep], ref)


def test_masked_gradcheck_and_eval():
    torch.manual_seed(3)
    x = torch.randn(3, 2, 5, dtype=F64, requires_grad=True)
    mask = _lengths_mask([5, 2, 3], 5)
    w = torch.rand(2, dtype=F64, requires_grad=True)
    b = torch.randn(2, dtype=F64, requires_grad=True)
    valid = mask[:, None, :].expand(3, 2, 5)
    fn = lambda t, w, b: cn.functional.channel_norm(t, None, None, w, b, training=True, mask=mask)  # noqa: E731
    # The valid outputs are differentiable in everything; padded outputs are normalized too, but
    # padding reaches no gradient: they pass none to the weight, bias or valid inputs.
    assert torch.autograd.gradcheck(lambda t, w, b: fn(t, w, b)[valid], (x, w, b))
    dx, dw, db = torch.autograd.grad(fn(x, w, b)[~valid].sum(), (x, w, b))
    assert not dw.any() and not db.any() and not dx[valid].any()
    norm = cn.ChannelNorm(2, dtype=F64)
    norm(x.detach(), mask=mask)
    norm.eval()  # eval uses running statistics: the mask has nothing to exclude
    torch.testing.assert_close(norm(x.detach(), mask=mask), norm(x.detach()))


def test_masked_errors():
    x = torch.randn(2, 3, 4)
    norm = cn.ChannelNorm(3)
    with pytest.raises(TypeError, match="torch.bool"):
        norm(x, mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="does not fit input shape"):
        norm(x, mask=torch.ones(2, 3, 4, dtype=torch.bool))  # channel axis must be size 1
    with pytest.raises(ValueError, match="not broadcastable"):
        norm(x, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="more than 1 unmasked value"):
        norm(x, mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="backend='native' cannot compute masked"):
        cn.ChannelNorm(3, backend="native")(x, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be"):
        norm(x, mask=[[True] * 4] * 2)
