"""Torch's vocabulary on our norms: num_features=, bias=False, norm_layer= factories, finding norms by type;
and parameters that must stay floating point with eps > 0."""
import functools

import pytest
import torch
from torch import nn

import channelnorm as cn

F64 = dict(dtype=torch.float64)
# Every norm taking a channel count, with the arguments it needs besides it.
CHANNEL_NORMS = [(cn.ChannelNorm, {}), (cn.InstanceNorm, {}), (cn.LayerNorm, {}), (cn.SyncChannelNorm, {}),
                 (cn.FrozenChannelNorm, {}), (cn.BatchRenorm, {}), (cn.GhostNorm, {}),
                 (cn.FilterResponseNorm, {}), (cn.EvoNormS0, {"num_groups": 2}), (cn.EvoNormB0, {}),
                 (cn.ChannelNormAct, {}), (functools.partial(cn.GroupNorm, 2), {}),
                 (functools.partial(cn.GroupNormAct, 2), {})]


@pytest.mark.parametrize("make,kwargs", CHANNEL_NORMS)
def test_num_features_is_torchs_name_for_num_channels(make, kwargs):
    norm = make(num_features=6, **kwargs)
    assert norm.num_channels == 6 and norm.num_features == 6
    with pytest.raises(TypeError, match="num_channels=4 and num_features=6"):
        make(num_channels=4, num_features=6, **kwargs)


@pytest.mark.parametrize("ours,theirs,x_shape", [
    (lambda: cn.ChannelNorm(4, bias=False, **F64), lambda: nn.BatchNorm2d(4, bias=False, **F64), (3, 4, 5, 5)),
    (lambda: cn.GroupNorm(2, 4, bias=False, **F64), lambda: nn.GroupNorm(2, 4, bias=False, **F64), (3, 4, 5, 5)),
    (lambda: cn.InstanceNorm(4, track_running_stats=True, bias=False, **F64),
     lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True, bias=False, **F64), (3, 4, 5, 5)),
])
def test_bias_false_matches_torch_and_state_dicts_load_strictly_both_ways(ours, theirs, x_shape):
    a, b = ours(), theirs()
    assert a.bias is None and a.weight is not None and "bias" not in a.state_dict()
    with torch.no_grad():
        b.weight.copy_(torch.rand(4, **F64) + 0.5)
    a.load_state_dict(b.state_dict(), strict=True)
    theirs().load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(x_shape, **F64)
    torch.testing.assert_close(a.train()(x), b.train()(x))
    assert "bias=False" in repr(a)


def test_replace_norms_converts_a_torch_model_built_with_bias_false():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, **F64), nn.BatchNorm2d(4, bias=False, **F64))
    with torch.no_grad():
        model[1].weight.copy_(torch.rand(4, **F64) + 0.5)
    x = torch.randn(2, 3, 5, 5, **F64)
    expected = model(x)
    converted = cn.convert.replace_norms(model, "channel")
    assert type(converted[1]) is cn.ChannelNorm and converted[1].bias is None
    torch.testing.assert_close(converted(x), expected)
    synced = cn.convert.to_sync(nn.Sequential(nn.BatchNorm2d(4, bias=False)))
    assert synced[0].bias is None


def test_get_norm_layer_builds_what_create_norm_builds_from_a_channel_count():
    assert cn.get_norm_layer("bn") is cn.ChannelNorm
    layer = cn.get_norm_layer("gn", num_groups=2, eps=1e-3)
    assert isinstance(layer, functools.partial)
    built = layer(8)   # torchvision's resnet calls norm_layer(num_features)
    assert isinstance(built, cn.GroupNorm) and built.num_groups == 2 and built.eps == 1e-3
    assert repr(built) == repr(cn.create_norm("group", 8, num_groups=2, eps=1e-3))
    with pytest.raises(TypeError, match=r"get_norm_layer\('channel'\).*num_groups"):
        cn.get_norm_layer("channel", num_groups=2)
    with pytest.raises(ValueError, match="unknown norm kind"):
        cn.get_norm_layer("bogus")


def test_code_that_finds_norms_by_type_finds_ours():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), cn.ChannelNorm(4), nn.BatchNorm2d(4), cn.GroupNorm(2, 4),
                          cn.FrozenChannelNorm(4), nn.LayerNorm(4), nn.Linear(4, 2))
    found = [type(m) for m in model.modules() if cn.is_norm(m)]
    assert found == [cn.ChannelNorm, nn.BatchNorm2d, cn.GroupNorm, cn.FrozenChannelNorm]
    assert all(isinstance(m, cn.NORM_TYPES) == cn.is_norm(m) for m in model.modules())
    # the weight-decay exclusion idiom: every norm parameter, ours and torch's
    no_decay = {id(p) for m in model.modules() if cn.is_norm(m) for p in m.parameters(recurse=False)}
    assert no_decay == {id(p) for i in (1, 2, 3) for p in model[i].parameters()}
    assert cn.module_traits(model[1]) == cn.norm_traits("channel")
    assert cn.module_traits(model[2]).uses_batch_statistics and cn.module_traits(model[6]) is None


@pytest.mark.parametrize("eps", [0, 0.0, -1e-5])
def test_eps_must_be_positive(eps):
    with pytest.raises(ValueError, match=f"eps must be a finite number > 0, got {eps!r}"):
        cn.ChannelNorm(3, eps=eps)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        cn.functional.channel_norm(torch.randn(2, 3), None, None, training=True, eps=eps)


@pytest.mark.parametrize("make,kwargs", CHANNEL_NORMS)
def test_integer_and_complex_parameters_are_refused(make, kwargs):
    with pytest.raises(TypeError, match="floating dtype.*torch.int64"):
        make(num_channels=4, dtype=torch.int64, **kwargs)
    norm = make(num_channels=4, **kwargs)
    with pytest.raises(TypeError, match="must stay floating point.*complex64"):
        norm.to(torch.complex64)
    assert all(t.is_floating_point() for t in norm.parameters())
    assert norm.double().weight.dtype == torch.float64   # floating conversions still work
