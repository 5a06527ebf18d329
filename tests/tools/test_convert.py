"""channelnorm.convert: replace_norms, to_sync/from_sync, freeze/unfreeze, fold.

Oracles: PyTorch's own norm modules (same semantics where the names match) and the unconverted
model itself (folding and freezing must not change eval outputs).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import channelnorm as cn
from channelnorm import convert

F64 = dict(dtype=torch.float64)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm non-trivial affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name in ("weight", "bias", "running_mean"):
                t = getattr(m, name, None)
                if isinstance(t, torch.Tensor) and t.ndim == 1 and not isinstance(m, (nn.Conv2d, nn.Linear)):
                    t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype))
            rv = getattr(m, "running_var", None)
            if isinstance(rv, torch.Tensor):
                rv.copy_(torch.rand(rv.shape, generator=gen, dtype=rv.dtype) + 0.5)
    return model


def _torch_model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.GroupNorm(4, 8), nn.ReLU()),
        nn.Conv2d(8, 8, 1), nn.InstanceNorm2d(8, affine=True),
    ).to(**F64)


# ---------------------------------------------------------------- replace_norms

def test_replace_batchnorm_with_channel_keeps_state_and_outputs():
    torch.manual_seed(0)
    ref = _randomize(_torch_model())
    ours = convert.replace_norms(copy.deepcopy(ref), "channel")
    assert isinstance(ours[1], cn.ChannelNorm) and isinstance(ours[3][1], cn.ChannelNorm)
    assert ours[1].weight.dtype == torch.float64
    # The BatchNorm keeps its running statistics; the tree and state_dict keys are unchanged.
    assert set(ours.state_dict()) >= {k for k in ref.state_dict() if k.startswith("1.")}
    torch.testing.assert_close(ours[1].running_var, ref[1].running_var)
    torch.testing.assert_close(ours[3][1].weight, ref[3][1].weight)
    x = torch.randn(4, 3, 6, 6, **F64)
    bn_only = copy.deepcopy(ref)
    bn_only[3][1] = nn.BatchNorm2d(8, **F64)
    bn_only[3][1].load_state_dict(ours[3][1].state_dict())
    bn_only[5] = nn.BatchNorm2d(8, **F64)
    bn_only[5].load_state_dict(ours[5].state_dict())
    for mode in (True, False):
        ours.train(mode)
        bn_only.train(mode)
        torch.testing.assert_close(ours(x), bn_only(x))
    torch.testing.assert_close(ours[1].running_mean, bn_only[1].running_mean)


def test_replace_channel_with_group_and_back_carries_affine():
    model = _randomize(nn.Sequential(nn.Conv1d(2, 8, 1), cn.ChannelNorm(8, eps=1e-3, **F64)).to(**F64))
    grouped = convert.replace_norms(copy.deepcopy(model), "gn", num_groups=2)
    norm = grouped[1]
    assert isinstance(norm, cn.GroupNorm) and norm.num_groups == 2 and norm.eps == 1e-3
    assert not hasattr(norm, "running_mean")  # as nn.GroupNorm: no running statistics at all
    torch.testing.assert_close(norm.weight, model[1].weight)
    x = torch.randn(3, 2, 5, **F64)
    oracle = nn.GroupNorm(2, 8, eps=1e-3, **F64)
    oracle.load_state_dict({"weight": model[1].weight, "bias": model[1].bias})
    torch.testing.assert_close(grouped(x), oracle(model[0](x)))
    # Back to channel: running statistics are fresh (GroupNorm had none), weights carry over.
    back = convert.replace_norms(grouped, "channel")
    assert back[1].track_running_stats and torch.equal(back[1].running_var, torch.ones(8, **F64))
    torch.testing.assert_close(back[1].bias, model[1].bias)


@pytest.mark.parametrize("kind,torch_norm", [
    ("group", lambda: nn.GroupNorm(2, 6, eps=1e-4)),
    ("instance", lambda: nn.InstanceNorm1d(6, affine=True, track_running_stats=True, momentum=0.3)),
])
def test_replace_torch_norms_with_same_kind_matches_torch(kind, torch_norm):
    ref = _randomize(nn.Sequential(torch_norm()).to(**F64))
    ours = convert.replace_norms(copy.deepcopy(ref), kind)
    x = torch.randn(4, 6, 7, **F64)
    torch.testing.assert_close(ours(x), ref(x))  # training mode; instance updates running stats
    for name in ("running_mean", "running_var"):
        if getattr(ref[0], name, None) is not None:
            torch.testing.assert_close(getattr(ours[0], name), getattr(ref[0], name))


def test_replace_norms_keeps_mode_requires_grad_and_handles_bare_norm():
    bn = nn.BatchNorm1d(4)
    bn.eval()
    bn.weight.requires_grad_(False)
    new = convert.replace_norms(bn, "channel")
    assert isinstance(new, cn.ChannelNorm) and not new.training and not new.weight.requires_grad
    assert isinstance(convert.replace_norms(nn.Sequential(nn.BatchNorm1d(4)), "none")[0], nn.Identity)


def test_replace_norms_rejects_bad_kind_and_kwargs_without_changing_model():
    model = nn.Sequential(nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="unknown norm kind 'bogus'"):
        convert.replace_norms(model, "bogus")
    assert isinstance(model[0], nn.BatchNorm1d)
    with pytest.raises(TypeError, match="num_group"):
        convert.replace_norms(model, "channel", num_group=2)


# ---------------------------------------------------------------- to_sync / from_sync

def test_to_sync_and_back_share_tensors_and_match_locally():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), cn.ChannelNorm(4, momentum=None), nn.Sequential(nn.BatchNorm2d(4)))
    weight, running_var = model[1].weight, model[2][0].running_var
    ref = copy.deepcopy(model)
    synced = convert.to_sync(model, process_group=None)
    assert type(synced[1]) is cn.SyncChannelNorm and type(synced[2][0]) is cn.SyncChannelNorm
    assert synced[1].weight is weight and synced[2][0].running_var is running_var
    assert synced[1].momentum is None and set(synced.state_dict()) == set(ref.state_dict())
    x = torch.randn(4, 3, 5, 5)
    # No process group initialized: the local path, identical to the unconverted model.
    torch.testing.assert_close(synced(x), ref(x))
    torch.testing.assert_close(synced[2][0].running_var, ref[2][0].running_var)
    back = convert.from_sync(synced)
    assert type(back[1]) is cn.ChannelNorm and back[1].weight is weight


# ---------------------------------------------------------------- freeze / unfreeze

def test_freeze_uses_running_stats_without_updates_or_grads():
    model = _randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), cn.ChannelNorm(4, affine=False),
                                     cn.GroupNorm(2, 4)))
    ref = copy.deepcopy(model).eval()
    frozen = convert.freeze(model).train()
    assert isinstance(frozen[1], cn.FrozenChannelNorm) and isinstance(frozen[2], cn.FrozenChannelNorm)
    assert isinstance(frozen[3], cn.GroupNorm)  # no running statistics: left alone
    assert {n for n, _ in frozen.named_parameters()} == {"0.weight", "0.bias", "3.weight", "3.bias"}
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    before = frozen[1].running_mean.clone()
    y = frozen(x)
    torch.testing.assert_close(y, ref(x))  # train mode, yet running statistics are used
    y.square().sum().backward()
    assert x.grad is not None and torch.equal(frozen[1].running_mean, before)
    thawed = convert.unfreeze(frozen).eval()
    assert type(thawed[1]) is cn.ChannelNorm and thawed[1].weight.requires_grad
    torch.testing.assert_close(thawed(x), ref(x))


def test_frozen_loads_batchnorm_state_dict_and_registry():
    bn = _randomize(nn.Sequential(nn.BatchNorm2d(5)))[0]
    frozen = cn.create_norm("frozen", 5)
    assert isinstance(frozen, cn.FrozenChannelNorm) and list(frozen.parameters()) == []
    frozen.load_state_dict(bn.state_dict())  # strict; num_batches_tracked is dropped
    x = torch.randn(3, 5, 4, 4)
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    with pytest.raises(ValueError, match="num_channels"):
        cn.FrozenChannelNorm(0)
    # replace_norms(..., "frozen") carries running statistics like freeze does.
    replaced = convert.replace_norms(nn.Sequential(copy.deepcopy(bn)), "frozen")
    assert isinstance(replaced[0], cn.FrozenChannelNorm)
    torch.testing.assert_close(replaced(x), bn(x))


# ---------------------------------------------------------------- fold

def _trained(model: nn.Module, x: torch.Tensor, steps: int = 3) -> nn.Module:
    """A few training steps so the running statistics are not the initial ones."""
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(x + 0.1 * i)
    return model.eval()


@pytest.mark.parametrize("channels_last", [False, True])
def test_fold_conv_chains_matches_unfolded(channels_last):
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=2, bias=False), cn.ChannelNorm(6, affine=False))
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), inner,
                          nn.Conv2d(6, 4, 1), cn.create_norm("frozen", 4)).to(**F64)
    _randomize(model)
    x = torch.randn(4, 3, 9, 9, **F64) * 3 + 1
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    _trained(model, x)
    expected = model(x)
    # channel_axis=1 norms after a conv need the example to show the input is batched (tests/test_fold.py).
    folded = convert.fold(copy.deepcopy(model), example_input=x)
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[3][1], nn.Identity)
    assert isinstance(folded[5], nn.Identity)
    out = folded(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_fold_conv1d_conv3d_linear_float32():
    torch.manual_seed(1)
    cases = [
        (nn.Sequential(nn.Conv1d(2, 5, 3), cn.ChannelNorm(5)), torch.randn(3, 2, 8)),
        (nn.Sequential(nn.Conv3d(2, 3, 2), nn.BatchNorm3d(3)), torch.randn(2, 2, 4, 4, 4)),
        (nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)), torch.randn(8, 4)),
        (nn.Sequential(nn.Linear(4, 6), cn.ChannelNorm(6, channel_axis=-1)), torch.randn(5, 3, 4)),
    ]
    for model, x in cases:
        _randomize(model)
        _trained(model, x)
        expected = model(x)
        folded = convert.fold(copy.deepcopy(model), example_input=x)
        assert isinstance(folded[1], nn.Identity), model
        # float32: parameters are folded in float64 and rounded once; outputs differ by a few ulps
        # of the float32 conv accumulation.
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_fold_skips_what_is_not_a_fixed_affine_map():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), cn.ChannelNorm(4),                              # training mode
        nn.Conv2d(4, 4, 1), cn.ChannelNorm(4, track_running_stats=False),   # eval, batch statistics
        nn.Conv2d(4, 4, 1), cn.GroupNorm(2, 4),                             # not a channel norm
        nn.Linear(4, 4), cn.ChannelNorm(4, channel_axis=2),                 # channel axis is not the features
    )
    model.eval()
    model[1].train()
    folded = convert.fold(model)
    assert not any(isinstance(m, nn.Identity) for m in folded)


def test_convert_is_importable_by_its_public_module_path():
    import importlib

    import channelnorm as cn
    from channelnorm.convert import fold, replace_norms

    assert importlib.import_module("channelnorm.convert") is cn.convert
    assert fold is cn.convert.fold and replace_norms is cn.convert.replace_norms
