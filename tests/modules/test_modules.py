"""Module behaviour: batch (in)dependence, repr, resets, registry."""
import pytest
import torch
from torch import nn

import channelnorm as cn

BATCH_INDEPENDENT = {
    "group": lambda: cn.GroupNorm(2, 4),
    "layer": lambda: cn.LayerNorm(4),
    "instance": lambda: cn.InstanceNorm(4),
}


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("kind", BATCH_INDEPENDENT)
def test_per_sample_norms_ignore_other_samples(kind, backend):
    norm = BATCH_INDEPENDENT[kind]()
    norm.backend = backend
    x = torch.randn(3, 4, 5, 5)
    y = norm(x)
    x2 = x.clone()
    x2[1:] = x2[1:] * 10 + 3
    torch.testing.assert_close(norm(x2)[0], y[0], rtol=0, atol=1e-6)


def test_channel_norm_depends_on_the_batch():
    # The contrast that makes the test above meaningful.
    norm = cn.ChannelNorm(4)
    x = torch.randn(3, 4, 5, 5)
    y = norm(x)[0]
    x[1:] = x[1:] * 10 + 3
    assert (norm(x)[0] - y).abs().max() > 0.1


def test_repr_and_num_features():
    assert repr(cn.ChannelNorm(8)) == ("ChannelNorm(8, eps=1e-05, momentum=0.1, affine=True, "
                                       "track_running_stats=True, channel_axis=1, backend='auto')")
    assert repr(cn.GroupNorm(2, 8, channel_axis=-1)) == ("GroupNorm(2, 8, eps=1e-05, affine=True, "
                                                         "channel_axis=-1, backend='auto')")
    assert cn.ChannelNorm(8).num_features == 8


def test_reset_parameters_and_running_stats():
    norm = cn.ChannelNorm(3)
    with torch.no_grad():
        norm.weight.fill_(3)
    norm(torch.randn(4, 3) + 5)
    norm.reset_parameters()
    assert torch.equal(norm.weight, torch.ones(3)) and torch.equal(norm.bias, torch.zeros(3))
    assert torch.equal(norm.running_mean, torch.zeros(3)) and torch.equal(norm.running_var, torch.ones(3))
    assert int(norm.num_batches_tracked) == 0


def test_factory_kwargs():
    norm = cn.ChannelNorm(3, dtype=torch.float64)
    assert norm.weight.dtype == torch.float64 and norm.running_var.dtype == torch.float64
    assert norm.num_batches_tracked.dtype == torch.long
    assert cn.InstanceNorm(3).running_mean is None
    assert not hasattr(cn.GroupNorm(1, 3), "running_mean")  # as nn.GroupNorm: no running statistics at all
    assert cn.ChannelNorm(3, affine=False).weight is None


@pytest.mark.parametrize("kind,cls", [
    ("channel", cn.ChannelNorm), ("batch", cn.ChannelNorm), ("BN", cn.ChannelNorm),
    ("group", cn.GroupNorm), ("gn", cn.GroupNorm), ("layer", cn.LayerNorm), ("instance", cn.InstanceNorm),
    ("none", nn.Identity),
])
def test_create_norm_kinds_and_aliases(kind, cls):
    norm = cn.create_norm(kind, 32)
    assert type(norm) is cls
    assert kind.lower() in {"none"} or norm.num_channels == 32


def test_create_norm_passes_kwargs():
    gn = cn.create_norm("group", 12, num_groups=3, eps=1e-3, channel_axis=-1)
    assert (gn.num_groups, gn.eps, gn.channel_axis) == (3, 1e-3, -1)
    bn = cn.create_norm("batch", 4, momentum=None, track_running_stats=False)
    assert bn.momentum is None and bn.running_mean is None
    for kind in ("channel", "group", "layer", "instance", "none"):
        assert kind in cn.available_norms()
