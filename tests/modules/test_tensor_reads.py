"""The modules read weight, bias and the running buffers from the parameter and buffer dicts (a fast
path, ``AffineNorm._affine`` / ``RunningStatsNorm._running_buffers``): whatever replaces those tensors
the way torch allows (parametrizations, ``functional_call``, reassignment, ``bias=False``, frozen
buffers) must still be what the forward uses. The oracle is torch's functional with the tensors the
module exposes as attributes."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import channelnorm as cn

TOL = dict(rtol=1e-5, atol=1e-6)


class Doubled(nn.Module):
    def forward(self, w):
        return 2 * w


def _oracle(m, x, training):
    """torch's batch_norm (eval: no running update) with the tensors the module exposes as attributes."""
    if isinstance(m, cn.GroupNorm):
        return nn.functional.group_norm(x, m.num_groups, m.weight, m.bias, m.eps)
    if isinstance(m, cn.InstanceNorm):
        return nn.functional.instance_norm(x, None, None, m.weight, m.bias, True, 0.0, m.eps)
    if training:
        return nn.functional.batch_norm(x, None, None, m.weight, m.bias, True, 0.0, m.eps)
    return nn.functional.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


MAKERS = [lambda: cn.ChannelNorm(4), lambda: cn.GroupNorm(2, 4), lambda: cn.InstanceNorm(4)]


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("name", ["weight", "bias"])
def test_a_parametrized_affine_tensor_is_what_the_forward_uses(make, name):
    m = make().train()
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-1, 1)
    parametrize.register_parametrization(m, name, Doubled())
    x = torch.randn(3, 4, 5, 5)
    assert name not in m._parameters  # the fast path's dict misses: it must fall back to the attribute
    torch.testing.assert_close(m(x), _oracle(m, x, training=True), **TOL)


@pytest.mark.parametrize("make", MAKERS)
def test_functional_call_substitutes_the_affine_parameters(make):
    m = make().train()
    x = torch.randn(3, 4, 5, 5)
    weight, bias = torch.rand(4) + 0.5, torch.randn(4)
    y = torch.func.functional_call(m, {"weight": weight, "bias": bias}, (x,))
    m2 = make().train()
    with torch.no_grad():
        m2.weight.copy_(weight)
        m2.bias.copy_(bias)
    torch.testing.assert_close(y, _oracle(m2, x, training=True), **TOL)
    # the module's own parameters are back afterwards
    torch.testing.assert_close(m.weight, torch.ones(4))


def test_functional_call_substitutes_the_running_statistics_in_eval():
    m = cn.ChannelNorm(4).eval()
    x = torch.randn(3, 4, 5, 5)
    mean, var = torch.randn(4), torch.rand(4) + 0.5
    y = torch.func.functional_call(m, {"running_mean": mean, "running_var": var}, (x,))
    expected = nn.functional.batch_norm(x, mean, var, m.weight, m.bias, False, 0.0, m.eps)
    torch.testing.assert_close(y, expected, **TOL)


def test_reassigned_parameter_and_bias_false_and_deleted_buffers_are_read_as_attributes():
    m = cn.ChannelNorm(4, bias=False).eval()
    m.weight = nn.Parameter(torch.rand(4) + 0.5)
    m.running_mean = torch.randn(4)  # reassigning a registered buffer keeps it in the buffer dict
    x = torch.randn(2, 4, 3)
    assert m.bias is None
    torch.testing.assert_close(m(x), _oracle(m, x, training=False), **TOL)
    # A buffer deleted and set back as a plain attribute leaves the dict: the fallback reads the attribute.
    var = torch.rand(4) + 0.5
    del m.running_var
    m.running_var = var
    assert "running_var" not in m._buffers
    torch.testing.assert_close(m(x), _oracle(m, x, training=False), **TOL)


@pytest.mark.parametrize("make", [
    lambda: cn.FrozenChannelNorm(4), lambda: cn.ChannelNorm(4, affine=False), lambda: cn.GroupNorm(2, 4, bias=False),
    lambda: cn.InstanceNorm(4, track_running_stats=True), lambda: cn.GhostNorm(4, virtual_batch_size=2),
    lambda: cn.EvoNormB0(4), lambda: cn.ChannelNormAct(4),
])
def test_dict_reads_return_the_attribute_tensors_themselves(make):
    m = make()
    weight, bias = m._affine()
    assert weight is m.weight and bias is m.bias
    if hasattr(m, "_running_buffers"):
        expected = ((m.running_mean, m.running_var, m.num_batches_tracked) if m.track_running_stats
                    else (None, None, None))
        assert all(a is b for a, b in zip(m._running_buffers(), expected))
