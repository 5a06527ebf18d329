"""BatchRenorm and GhostNorm against float64 oracles written here from the papers' equations."""
import pytest
import torch

import channelnorm as cn

F64 = torch.float64


def _per_channel(x, axis):
    """(C, n) view of x: every element of a channel in one row."""
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _from_per_channel(rows, like, axis):
    moved = like.movedim(axis, 0)
    return rows.reshape(moved.shape).movedim(0, axis)


def renorm_oracle(x, rm, rv, w, b, eps, rmax, dmax, axis=1):
    """Ioffe 2017, Algorithm 1, with sigma = sqrt(running_var + eps) and r, d treated as constants."""
    xc = _per_channel(x, axis)
    mu_b = xc.mean(1, keepdim=True)
    sig_b = ((xc - mu_b) ** 2).mean(1, keepdim=True).add(eps).sqrt()
    sig = (rv + eps).sqrt()[:, None]
    r = (sig_b / sig).clamp(1 / rmax, rmax).detach()
    d = ((mu_b - rm[:, None]) / sig).clamp(-dmax, dmax).detach()
    y = ((xc - mu_b) / sig_b * r + d) * w[:, None] + b[:, None]
    return _from_per_channel(y, x, axis)


def ghost_oracle(x, w, b, eps, vbs, axis=1):
    outs = []
    for start in range(0, x.shape[0], vbs):
        chunk = x[start:start + vbs]
        xc = _per_channel(chunk, axis)
        mean = xc.mean(1, keepdim=True)
        var = ((xc - mean) ** 2).mean(1, keepdim=True)
        y = (xc - mean) / (var + eps).sqrt() * w[:, None] + b[:, None]
        outs.append(_from_per_channel(y, chunk, axis))
    return torch.cat(outs)


def ghost_running_oracle(x, vbs, axis=1):
    """Whole-batch mean; pooled within-virtual-batch unbiased variance sum_k SS_k / (n - K)."""
    xc = _per_channel(x, axis)
    ss, k = 0.0, 0
    for start in range(0, x.shape[0], vbs):
        cc = _per_channel(x[start:start + vbs], axis)
        ss = ss + ((cc - cc.mean(1, keepdim=True)) ** 2).sum(1)
        k += 1
    return xc.mean(1), ss / (xc.shape[1] - k)


def _randomize(norm, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.num_channels, generator=g, dtype=F64) + 0.5)
        norm.bias.copy_(torch.randn(norm.num_channels, generator=g, dtype=F64))
    return norm


def _step(norm, x):
    x = x.clone().requires_grad_(True)
    y = norm(x)
    g = torch.Generator().manual_seed(1)
    (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum().backward()
    return y.detach(), x.grad, norm.weight.grad.clone(), norm.bias.grad.clone()


# ---------------------------------------------------------------- BatchRenorm


@pytest.mark.parametrize("axis, shape", [(1, (6, 3, 4, 5)), (-1, (6, 4, 5, 3)), (1, (8, 3))])
def test_batch_renorm_is_channel_norm_when_rmax_1_dmax_0(axis, shape):
    torch.manual_seed(0)
    brn = _randomize(cn.BatchRenorm(3, channel_axis=axis, dtype=F64, rmax=1.0, dmax=0.0))
    ref = _randomize(cn.ChannelNorm(3, channel_axis=axis, dtype=F64))
    for _ in range(3):  # later steps have running stats far from the batch: r, d would matter
        x = torch.randn(shape, dtype=F64) * 3 + 2
        for a, b in zip(_step(brn, x), _step(ref, x)):
            torch.testing.assert_close(a, b)
        brn.zero_grad(), ref.zero_grad()
    torch.testing.assert_close(brn.running_mean, ref.running_mean)
    torch.testing.assert_close(brn.running_var, ref.running_var)
    assert int(brn.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    brn.eval(), ref.eval()
    x = torch.randn(shape, dtype=F64)
    torch.testing.assert_close(brn(x), ref(x))


def _far_running_stats(norm):
    """Running statistics that make some channels clip r/d and others not."""
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([0.0, 5.0, -40.0], dtype=F64))
        norm.running_var.copy_(torch.tensor([1.0, 0.05, 90.0], dtype=F64))


@pytest.mark.parametrize("axis", [1, -1])
def test_batch_renorm_matches_paper_after_warmup(axis):
    torch.manual_seed(1)
    brn = _randomize(cn.BatchRenorm(3, channel_axis=axis, dtype=F64, rmax=2.0, dmax=1.5, warmup_steps=10))
    _far_running_stats(brn)
    brn.num_batches_tracked.fill_(25)  # past warm-up: full targets
    x = torch.randn(5, 3, 4, 2, dtype=F64).movedim(1, axis) * 2 + 1
    rm, rv = brn.running_mean.clone(), brn.running_var.clone()
    expected = renorm_oracle(x, rm, rv, brn.weight.detach(), brn.bias.detach(), brn.eps, 2.0, 1.5, axis % 4)
    xg = x.clone().requires_grad_(True)
    y = brn(xg)
    torch.testing.assert_close(y, expected)
    # gradients: r and d are constants (stop-gradient), the oracle's autograd sees the same graph
    xo = x.clone().requires_grad_(True)
    renorm_oracle(xo, rm, rv, brn.weight.detach(), brn.bias.detach(), brn.eps, 2.0, 1.5, axis % 4).sum().backward()
    y.sum().backward()
    torch.testing.assert_close(xg.grad, xo.grad)
    # running stats: exactly ChannelNorm's update
    n = x.numel() // 3
    xc = _per_channel(x, axis % 4)
    torch.testing.assert_close(brn.running_mean, 0.9 * rm + 0.1 * xc.mean(1))
    torch.testing.assert_close(brn.running_var, 0.9 * rv + 0.1 * xc.var(1, unbiased=True))
    assert n > 1


def test_batch_renorm_warmup_schedule_is_linear():
    torch.manual_seed(2)
    x = torch.randn(6, 3, 5, dtype=F64) * 2 + 1
    for step, frac in [(0, 0.0), (5, 0.5), (8, 0.8), (10, 1.0), (1000, 1.0)]:
        brn = _randomize(cn.BatchRenorm(3, dtype=F64, rmax=3.0, dmax=2.0, warmup_steps=10))
        _far_running_stats(brn)
        brn.num_batches_tracked.fill_(step)
        rm, rv = brn.running_mean.clone(), brn.running_var.clone()
        rmax_t, dmax_t = 1 + 2.0 * frac, 2.0 * frac
        expected = renorm_oracle(x, rm, rv, brn.weight.detach(), brn.bias.detach(), brn.eps, rmax_t, dmax_t)
        torch.testing.assert_close(brn(x), expected, msg=f"step {step}")
    # step 0 of a warm-up is plain ChannelNorm whatever the running statistics
    brn = _randomize(cn.BatchRenorm(3, dtype=F64, rmax=3.0, dmax=2.0, warmup_steps=10))
    _far_running_stats(brn)
    ref = _randomize(cn.ChannelNorm(3, dtype=F64))
    torch.testing.assert_close(brn(x), ref(x))


def test_batch_renorm_gradcheck_and_state_dict():
    torch.manual_seed(3)
    brn = _randomize(cn.BatchRenorm(2, dtype=F64, rmax=1.5, dmax=0.5))
    # r and d carry no gradient, so finite differences agree with autograd only where they are
    # locally constant: running statistics far enough away that both are clipped in every channel.
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([30.0, -20.0], dtype=F64))
        brn.running_var.copy_(torch.tensor([0.01, 100.0], dtype=F64))
    brn.momentum = 0.0  # keep r/d's reference fixed across gradcheck's many forwards
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: brn(t), (x,))
    bn = torch.nn.BatchNorm2d(2, dtype=F64)
    brn.load_state_dict(bn.state_dict(), strict=True)
    bn.load_state_dict(brn.state_dict(), strict=True)


def test_batch_renorm_errors():
    with pytest.raises(ValueError, match="track_running_stats"):
        cn.BatchRenorm(3, track_running_stats=False)
    with pytest.raises(ValueError, match="native"):
        cn.BatchRenorm(3, backend="native")
    with pytest.raises(ValueError, match="rmax"):
        cn.BatchRenorm(3, rmax=0.5)
    with pytest.raises(ValueError, match="dmax"):
        cn.BatchRenorm(3, dmax=-1.0)
    with pytest.raises(ValueError, match="rmax"):
        cn.BatchRenorm(3, rmax=float("inf"))
    with pytest.raises(ValueError, match="warmup_steps"):
        cn.BatchRenorm(3, warmup_steps=-1)
    with pytest.raises(ValueError, match="warmup_steps"):
        cn.BatchRenorm(3, warmup_steps=2.5)
    with pytest.raises(ValueError, match="expected input with 3 channels on axis 1, got 2 channels"):
        cn.BatchRenorm(3)(torch.randn(4, 2, 5))
    with pytest.raises(ValueError, match="more than 1 value"):
        cn.BatchRenorm(3)(torch.randn(1, 3))


# ---------------------------------------------------------------- GhostNorm


@pytest.mark.parametrize("backend", ["auto", "reference", "native"])
@pytest.mark.parametrize("vbs", [6, 64])
def test_ghost_is_channel_norm_when_one_virtual_batch(backend, vbs):
    torch.manual_seed(4)
    ghost = _randomize(cn.GhostNorm(3, dtype=F64, backend=backend, virtual_batch_size=vbs))
    ref = _randomize(cn.ChannelNorm(3, dtype=F64, backend=backend))
    for _ in range(2):
        x = torch.randn(6, 3, 4, 4, dtype=F64) * 2 + 1
        for a, b in zip(_step(ghost, x), _step(ref, x)):
            torch.testing.assert_close(a, b)
        ghost.zero_grad(), ref.zero_grad()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ghost, name), getattr(ref, name))


@pytest.mark.parametrize("axis, n, vbs", [(1, 8, 4), (1, 7, 3), (-1, 7, 2), (1, 5, 4)])
def test_ghost_matches_oracle(axis, n, vbs):
    torch.manual_seed(5)
    ghost = _randomize(cn.GhostNorm(3, dtype=F64, channel_axis=axis, virtual_batch_size=vbs))
    x = torch.randn(n, 3, 3, 2, dtype=F64).movedim(1, axis)
    x = x + torch.arange(n, dtype=F64).view(n, 1, 1, 1)  # virtual batches differ in mean
    a = axis % 4
    torch.testing.assert_close(ghost(x), ghost_oracle(x, ghost.weight.detach(), ghost.bias.detach(), ghost.eps, vbs, a))
    mean, var = ghost_running_oracle(x, vbs, a)
    torch.testing.assert_close(ghost.running_mean, 0.1 * mean)
    torch.testing.assert_close(ghost.running_var, 0.9 + 0.1 * var)
    ghost.eval()
    ref = _randomize(cn.ChannelNorm(3, dtype=F64, channel_axis=axis))
    ref.load_state_dict(ghost.state_dict())
    ref.eval()
    torch.testing.assert_close(ghost(x), ref(x))


def test_ghost_gradcheck_and_cumulative_momentum():
    torch.manual_seed(6)
    ghost = _randomize(cn.GhostNorm(2, dtype=F64, virtual_batch_size=2, track_running_stats=False))
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ghost(t), (x,))
    cum = cn.GhostNorm(2, dtype=F64, virtual_batch_size=2, momentum=None)
    batches = [torch.randn(4, 2, 3, dtype=F64) for _ in range(3)]
    for b in batches:
        cum(b)
    stats = [ghost_running_oracle(b, 2) for b in batches]
    torch.testing.assert_close(cum.running_mean, sum(m for m, _ in stats) / 3)
    torch.testing.assert_close(cum.running_var, sum(v for _, v in stats) / 3)


def test_ghost_errors():
    with pytest.raises(ValueError, match="virtual_batch_size"):
        cn.GhostNorm(3, virtual_batch_size=0)
    with pytest.raises(ValueError, match="last one with 1 value"):
        cn.GhostNorm(3, virtual_batch_size=2)(torch.randn(5, 3))
    with pytest.raises(ValueError, match="channel_axis cannot be 0"):
        cn.GhostNorm(3, channel_axis=0)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="unknown backend"):
        cn.GhostNorm(3, backend="cuda")


def test_mask_only_in_eval_for_renorm_and_ghost():
    x = torch.randn(4, 3, 5, dtype=F64)
    mask = torch.ones(4, 5, dtype=torch.bool)
    for norm in (cn.BatchRenorm(3, dtype=F64), cn.GhostNorm(3, dtype=F64, virtual_batch_size=2)):
        with pytest.raises(ValueError, match="does not support a statistics mask in training"):
            norm(x, mask=mask)
        norm.eval()
        torch.testing.assert_close(norm(x, mask=mask), norm(x))
