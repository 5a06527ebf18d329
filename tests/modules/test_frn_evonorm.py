"""FilterResponseNorm and EvoNorm-S0/B0 against float64 oracles written here from the papers' equations."""
import pytest
import torch

import channelnorm as cn

F64 = torch.float64


def frn_oracle(x, gamma, beta, tau, eps):
    """Singh & Krishnan 2019, Alg. 1, NCHW: nu2 = mean over (H, W) of x^2."""
    nu2 = x.pow(2).mean(dim=(2, 3), keepdim=True)
    y = gamma.view(1, -1, 1, 1) * (x / torch.sqrt(nu2 + abs(eps))) + beta.view(1, -1, 1, 1)
    return y if tau is None else torch.max(y, tau.view(1, -1, 1, 1))


def s0_oracle(x, groups, v, gamma, beta, eps):
    n, c, h, w = x.shape
    var = x.reshape(n, groups, -1).var(dim=2, unbiased=False)  # (N, G) over (C/G, H, W)
    std = torch.sqrt(var + eps).repeat_interleave(c // groups, dim=1).view(n, c, 1, 1)
    return x * torch.sigmoid(v.view(1, -1, 1, 1) * x) / std * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


def b0_oracle(x, v, gamma, beta, eps, batch_var=None):
    if batch_var is None:
        batch_var = x.var(dim=(0, 2, 3), unbiased=False)
    inst_std = torch.sqrt(x.var(dim=(2, 3), unbiased=False, keepdim=True) + eps)
    left = torch.sqrt(batch_var + eps).view(1, -1, 1, 1)
    right = v.view(1, -1, 1, 1) * x + inst_std
    return x / torch.max(left, right) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


def _randomize(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def _nhwc(fn, x):
    """Run ``fn`` on the channels-last version of NCHW ``x`` and return NCHW."""
    return fn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- FRN


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("tlu", [True, False])
def test_frn_matches_oracle(axis, tlu):
    torch.manual_seed(0)
    frn = _randomize(cn.FilterResponseNorm(4, eps=1e-3, tlu=tlu, channel_axis=axis, dtype=F64))
    x = torch.randn(3, 4, 5, 6, dtype=F64) * 2
    expected = frn_oracle(x, frn.weight.detach(), frn.bias.detach(), frn.tau.detach() if tlu else None, 1e-3)
    got = frn(x) if axis == 1 else _nhwc(frn, x)
    torch.testing.assert_close(got, expected)
    assert tlu == ("tau" in frn.state_dict())


def test_frn_learnable_eps_uses_its_absolute_value_and_learns():
    torch.manual_seed(1)
    frn = _randomize(cn.FilterResponseNorm(3, eps=0.5, learnable_eps=True, dtype=F64))
    with torch.no_grad():
        frn.eps_param.fill_(-0.25)
    x = torch.randn(2, 3, 2, 2, dtype=F64)
    torch.testing.assert_close(frn(x), frn_oracle(x, frn.weight, frn.bias, frn.tau, 0.25).detach())
    frn(x).sum().backward()
    assert frn.eps_param.grad is not None and frn.eps_param.grad.abs() > 0
    frn.reset_parameters()
    assert float(frn.eps_param.detach()) == 0.5


def test_frn_and_s0_are_batch_independent():
    torch.manual_seed(2)
    x = torch.randn(5, 4, 3, 3, dtype=F64)
    for norm in (_randomize(cn.FilterResponseNorm(4, dtype=F64)), _randomize(cn.EvoNormS0(4, 2, dtype=F64))):
        whole = norm(x)
        for i in range(5):
            torch.testing.assert_close(norm(x[i:i + 1]), whole[i:i + 1])


def test_frn_gradcheck():
    torch.manual_seed(3)
    frn = _randomize(cn.FilterResponseNorm(2, eps=1e-2, learnable_eps=True, dtype=F64))
    with torch.no_grad():
        frn.tau.copy_(torch.tensor([-0.3, 0.2], dtype=F64))  # TLU active on some elements, no ties
    x = torch.randn(2, 2, 3, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, *p: frn(t), (x, frn.weight, frn.bias, frn.tau, frn.eps_param))


# ---------------------------------------------------------------- EvoNorm-S0


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("groups", [1, 2, 6])
def test_evonorm_s0_matches_oracle(axis, groups):
    torch.manual_seed(4)
    s0 = _randomize(cn.EvoNormS0(6, groups, channel_axis=axis, dtype=F64))
    x = torch.randn(3, 6, 4, 5, dtype=F64) * 3 + 1
    expected = s0_oracle(x, groups, s0.v.detach(), s0.weight.detach(), s0.bias.detach(), s0.eps)
    got = s0(x) if axis == 1 else _nhwc(s0, x)
    torch.testing.assert_close(got, expected)
    s0.eval()  # no batch statistics: eval is the same function
    torch.testing.assert_close(s0(x) if axis == 1 else _nhwc(s0, x), expected)


def test_evonorm_s0_gradcheck():
    torch.manual_seed(5)
    s0 = _randomize(cn.EvoNormS0(4, 2, dtype=F64))
    x = torch.randn(2, 4, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, *p: s0(t), (x, s0.v, s0.weight, s0.bias))


# ---------------------------------------------------------------- EvoNorm-B0


@pytest.mark.parametrize("axis", [1, -1])
def test_evonorm_b0_matches_oracle_train_and_eval(axis):
    torch.manual_seed(6)
    b0 = _randomize(cn.EvoNormB0(5, channel_axis=axis, dtype=F64))
    with torch.no_grad():
        b0.v.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0], dtype=F64))  # both sides of the max get used
    x = torch.randn(4, 5, 3, 6, dtype=F64) * 2 + 0.5
    params = (b0.v.detach(), b0.weight.detach(), b0.bias.detach(), b0.eps)
    got = b0(x) if axis == 1 else _nhwc(b0, x)
    torch.testing.assert_close(got, b0_oracle(x, *params))
    n = x.numel() // 5
    expected_var = 0.9 + 0.1 * x.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(b0.running_var, expected_var)
    assert int(b0.num_batches_tracked) == 1 and n > 1
    assert "running_mean" not in b0.state_dict()
    b0.eval()
    y = torch.randn(2, 5, 3, 6, dtype=F64)
    got = b0(y) if axis == 1 else _nhwc(b0, y)
    torch.testing.assert_close(got, b0_oracle(y, *params, batch_var=expected_var))
    torch.testing.assert_close(b0.running_var, expected_var)  # eval never updates


def test_evonorm_b0_gradcheck_and_no_running_stats():
    torch.manual_seed(7)
    b0 = _randomize(cn.EvoNormB0(3, track_running_stats=False, dtype=F64))
    with torch.no_grad():
        b0.v.copy_(torch.tensor([1.0, -0.5, 0.3], dtype=F64))
    x = torch.randn(3, 3, 2, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, *p: b0(t), (x, b0.v, b0.weight, b0.bias))
    b0.eval()  # no running stats: batch statistics in eval too
    torch.testing.assert_close(b0(x), b0_oracle(x, b0.v, b0.weight, b0.bias, b0.eps))
    assert b0.running_var is None and b0.running_mean is None


def test_variants_errors():
    for cls in (cn.FilterResponseNorm, cn.EvoNormB0):
        with pytest.raises(ValueError, match="backend='native' cannot run"):
            cls(4, backend="native")
    with pytest.raises(ValueError, match="backend='triton' cannot run"):
        cn.EvoNormS0(4, 2, backend="triton")
    with pytest.raises(ValueError, match="divisible by num_groups"):
        cn.EvoNormS0(6, 4)
    with pytest.raises(ValueError, match="channel_axis cannot be 0"):
        cn.FilterResponseNorm(3, channel_axis=0)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="more than 1 value"):
        cn.EvoNormB0(3)(torch.randn(1, 3))
    with pytest.raises(TypeError, match="floating"):
        cn.EvoNormS0(4, 2)(torch.ones(2, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="eps"):
        cn.functional.filter_response_norm(torch.randn(2, 3, 4), eps=-1.0)
