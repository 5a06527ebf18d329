"""canonical_kind and norm_traits: the public facts model tools and the experiment read."""
import pytest
import torch

import channelnorm as cn
from channelnorm import registry


def test_every_kind_has_traits_and_aliases_resolve():
    for kind in cn.available_norms():
        module = cn.create_norm(kind, 8, **({"num_groups": 4} if kind in ("group", "evonorm_s0") else {}))
        expected = cn.module_traits(module) or registry.NormTraits("none", False, False)
        assert registry.norm_traits(kind) == expected   # the class's own traits, one source
    assert registry.canonical_kind("BN") == "channel" and registry.canonical_kind("gn") == "group"
    with pytest.raises(ValueError, match="unknown norm kind 'bogus'.*channel"):
        registry.canonical_kind("bogus")


@pytest.mark.parametrize("kind", ["channel", "group", "layer", "instance", "none", "batch_renorm", "ghost",
                                  "frn", "evonorm_s0", "evonorm_b0", "frozen"])
def test_uses_batch_statistics_matches_what_the_norm_computes(kind):
    # the trait is checked against behaviour: does sample 0's training output depend on sample 1?
    torch.manual_seed(0)
    kwargs = {"num_groups": 4} if kind in ("group", "evonorm_s0") else {}
    norm = cn.create_norm(kind, 8, **kwargs).train()
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    other = x.clone()
    other[1:] = other[1:] * 3 + 1
    norm = norm.double()
    first, second = norm(x)[0], norm(other)[0]
    assert registry.norm_traits(kind).uses_batch_statistics == (not torch.allclose(first, second))


# ---------------------------------------------------------------- timm's conventions for get_norm_layer

F64 = torch.float64


def _timm_equivalent(name, c):
    """The module timm's create_norm builds for ``name`` (timm.layers.create_norm._NORM_MAP), from torch's classes."""
    from torch import nn
    if name in ("batchnorm", "batchnorm2d", "batchnorm1d"):
        return nn.BatchNorm2d(c)
    if name == "groupnorm":  # timm's GroupNorm(num_channels, num_groups=32)
        return nn.GroupNorm(min(32, c), c)
    if name == "groupnorm1":
        return nn.GroupNorm(1, c)
    if name in ("layernorm2d", "layernorm2dfp32"):  # nn.LayerNorm over the channels moved last
        ln = nn.LayerNorm(c, eps=1e-6, dtype=F64)
        return lambda x: ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    if name == "frozenbatchnorm2d":  # torchvision's: batch norm with fixed statistics
        bn = nn.BatchNorm2d(c).eval()
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
        return bn
    raise KeyError(name)


@pytest.mark.parametrize("name", [n for n, kind in registry.TIMM_NAMES.items() if kind is not None])
def test_timm_names_compute_what_timm_builds(name):
    c = 32
    ours = cn.get_norm_layer(name)(c)
    theirs = _timm_equivalent(name, c)
    if isinstance(theirs, torch.nn.Module):
        ours.load_state_dict(theirs.state_dict(), strict=True)
        theirs = theirs.double()
    ours = ours.double()
    x = torch.randn(4, c, 3, 3, dtype=F64) * 2 + 1
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)


def test_timm_names_without_a_counterpart_are_refused_with_the_reason():
    refused = [n for n, kind in registry.TIMM_NAMES.items() if kind is None and n != "layernorm"]
    assert "rmsnorm2d" in refused and "simplenorm" in refused
    for name in refused:
        with pytest.raises(ValueError, match=f"timm's norm '{name}' has no counterpart in channelnorm"):
            cn.get_norm_layer(name)
    # The one name whose meaning differs: "layernorm" is this library's LayerNorm (GroupNorm(1, C)).
    assert cn.get_norm_layer("layernorm") is cn.LayerNorm


def test_names_ignore_case_and_underscores_as_timm():
    assert cn.get_norm_layer("batch_norm_2d") is cn.ChannelNorm
    assert cn.get_norm_layer("Frozen_Batch_Norm_2d") is cn.FrozenChannelNorm
    assert registry.canonical_kind("group_norm") == "group" and registry.canonical_kind("evonorms0") == "evonorm_s0"
    assert registry.canonical_kind("syncbatchnorm") == "sync_channel"


def test_get_norm_layer_takes_a_class_a_function_a_partial_or_none():
    import functools

    from torch import nn
    assert cn.get_norm_layer(cn.ChannelNorm) is cn.ChannelNorm
    assert cn.get_norm_layer(nn.BatchNorm2d) is nn.BatchNorm2d  # a class stays itself, as in timm
    bound = cn.get_norm_layer(cn.LayerNorm2d, eps=1e-3)
    assert isinstance(bound, functools.partial) and bound(8).eps == 1e-3 and bound(8).num_channels == 8
    # torchvision's idiom: positional arguments of the partial stay in front of the channel count
    gn = cn.get_norm_layer(functools.partial(nn.GroupNorm, 4), eps=1e-3)(8)
    assert type(gn) is nn.GroupNorm and gn.num_groups == 4 and gn.num_channels == 8 and gn.eps == 1e-3
    # timm's unbind and rebind: the new keywords override the partial's
    layer = cn.get_norm_layer(functools.partial(cn.ChannelNorm, eps=1e-3, momentum=0.2), eps=1e-4)(6)
    assert layer.eps == 1e-4 and layer.momentum == 0.2

    def make(c, eps=1e-5):
        return cn.LayerNorm2d(c, eps=eps)
    assert cn.get_norm_layer(make) is make and cn.get_norm_layer(make, eps=1e-3)(4).eps == 1e-3
    assert cn.get_norm_layer(None) is None


def test_get_norm_layer_refuses_what_it_cannot_use():
    import functools

    from torch import nn
    with pytest.raises(TypeError, match=r"get_norm_layer\(ChannelNorm\) got unexpected keyword argument\(s\) "
                                        r"num_groups; it accepts: num_channels, eps"):
        cn.get_norm_layer(cn.ChannelNorm, num_groups=2)
    with pytest.raises(TypeError, match="unexpected keyword argument.*group"):
        cn.get_norm_layer(functools.partial(nn.BatchNorm2d, momentum=0.1), group=2)
    with pytest.raises(TypeError, match="got a BatchNorm2d instance \\(pass its class instead\\)"):
        cn.get_norm_layer(nn.BatchNorm2d(3))
    with pytest.raises(TypeError, match="got int 3"):
        cn.get_norm_layer(3)
    with pytest.raises(TypeError, match=r"get_norm_layer\(None\) is no norm"):
        cn.get_norm_layer(None, eps=1e-3)
