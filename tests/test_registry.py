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
