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


# ---------------------------------------------------------------- layers that may compute something else (issue 19)

class _ShiftedBatchNorm(nn.BatchNorm2d):
    """A subclass with its own forward: batch norm plus 1."""

    def forward(self, input):
        return super().forward(input) + 1.0


class _AlwaysBatchStats(cn.ChannelNorm):
    """Overrides a method ChannelNorm.forward uses: batch statistics in eval mode too."""

    def _uses_batch_stats(self):
        return True


def _doubling_forward(module, input):
    return nn.BatchNorm2d.forward(module, input) * 2.0


def _instance_forward(c):
    import functools
    bn = nn.BatchNorm2d(c)
    bn.forward = functools.partial(_doubling_forward, bn)  # replaced on the instance, not the class
    return bn


def _hooked(c):
    bn = nn.BatchNorm2d(c)
    bn.register_forward_hook(lambda module, args, output: output - 0.5)
    return bn


_UNTRUSTED = {"own_forward": _ShiftedBatchNorm, "overridden_helper": _AlwaysBatchStats,
              "instance_forward": _instance_forward, "forward_hook": _hooked}
_TOOLS = {
    "replace_norms": lambda m, x: convert.replace_norms(m, "channel"),
    "to_sync": lambda m, x: convert.to_sync(m),
    "freeze": lambda m, x: convert.freeze(m),
    "fold": lambda m, x: convert.fold(m),
    "fold_example": lambda m, x: convert.fold(m, example_input=x),
}


def _conv_norm(make_norm, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), make_norm(4))
    return _randomize(model).eval()


@pytest.mark.parametrize("tool", sorted(_TOOLS))
@pytest.mark.parametrize("case", sorted(_UNTRUSTED))
def test_norm_that_may_compute_something_else_is_left_with_a_warning(tool, case):
    # Oracle: the same model, unconverted. A tool that treated the layer as its base class would
    # drop the +1, the eval-mode batch statistics, the x2 or the hook (outputs off by 0.5 to 2).
    original, model = _conv_norm(_UNTRUSTED[case]), _conv_norm(_UNTRUSTED[case])
    x = torch.randn(4, 3, 6, 6)
    with pytest.warns(UserWarning, match="left 1") as caught:
        converted = _TOOLS[tool](model, x)
    message = " ".join(str(w.message) for w in caught)
    assert "1" in message and ("forward" in message or "hook" in message or "_uses_batch_stats" in message)
    assert converted[1] is model[1] and isinstance(converted[0], nn.Conv2d)
    for mode in (False, True):
        original.train(mode)
        converted.train(mode)
        torch.testing.assert_close(converted(x), original(x), rtol=0, atol=0)


class _OtherDefaults(nn.BatchNorm2d):
    """Only __init__ differs (other defaults): it computes what BatchNorm2d computes."""

    def __init__(self, num_features):
        super().__init__(num_features, eps=1e-3, momentum=0.3)


@pytest.mark.parametrize("tool", sorted(_TOOLS))
def test_subclass_that_only_changes_defaults_converts_as_its_base(tool):
    original, model = _conv_norm(_OtherDefaults), _conv_norm(_OtherDefaults)
    x = torch.randn(4, 3, 6, 6)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left, nothing to warn about
        converted = _TOOLS[tool](model, x)
    assert type(converted[1]) is not _OtherDefaults
    expected = original(x)  # eval mode: what freeze and fold keep
    torch.testing.assert_close(converted(x), expected, rtol=1e-5, atol=1e-5)


class _ShiftedLayerNorm2d(cn.LayerNorm2d):
    """LayerNorm2d with its own forward: layer norm per position plus 1."""

    def forward(self, input):
        return super().forward(input) + 1.0


class _LayerNorm2dOtherEps(cn.LayerNorm2d):
    """Only __init__ differs: it computes what LayerNorm2d computes."""

    def __init__(self, num_channels):
        super().__init__(num_channels, eps=1e-3)


def test_layer_norm_2d_is_a_known_class_whose_subclasses_are_checked():
    from channelnorm.tools.known import known_norm_classes

    assert cn.LayerNorm2d in known_norm_classes()
    torch.manual_seed(0)
    model = _randomize(nn.Sequential(nn.Conv2d(3, 4, 1), cn.LayerNorm2d(4), _LayerNorm2dOtherEps(4),
                                     _ShiftedLayerNorm2d(4)))
    original, shifted = copy.deepcopy(model), model[3]
    # Were LayerNorm2d unknown, its plain instance and the defaults-only subclass would be left too ("left 3").
    with pytest.warns(UserWarning, match=r"replace_norms left 1 module\(s\).*\(3: _ShiftedLayerNorm2d defines "
                                         r"its own forward\)") as caught:
        converted = convert.replace_norms(model, "layer2d")
    assert len(caught) == 1
    assert [type(m) for m in converted[1:3]] == [cn.LayerNorm2d, cn.LayerNorm2d] and converted[3] is shifted
    assert converted[2].eps == 1e-3
    # Oracle: the unconverted model (the same per-position computation, eps carried, the +1 kept).
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(converted(x), original(x), rtol=0, atol=0)


class _UnknownBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A batch norm (running statistics, channel scope) of a class the tools do not know."""

    def _check_input_dim(self, input):
        pass


def test_freeze_names_a_channel_norm_of_an_unknown_class_and_leaves_it():
    torch.manual_seed(0)
    original = _randomize(nn.Sequential(nn.Conv2d(3, 4, 1), _UnknownBatchNorm(4), nn.BatchNorm2d(4)))
    model = copy.deepcopy(original)
    with pytest.warns(UserWarning, match=r"freeze left 1 module\(s\).*\(1: _UnknownBatchNorm is none of the "
                                         r"classes this tool knows\)") as caught:
        frozen = convert.freeze(model)
    assert len(caught) == 1 and type(frozen[1]) is _UnknownBatchNorm and type(frozen[2]) is cn.FrozenChannelNorm
    # Oracle: the original in training mode with its second norm in eval mode (what freezing it keeps); the
    # unknown norm still normalizes with the batch statistics, as a frozen copy would not.
    x = torch.randn(4, 3, 5, 5)
    original.train()[2].eval()
    torch.testing.assert_close(frozen.train()(x), original(x))


# ---------------------------------------------------------------- a norm under several names (issue 19)

class _SharedNorm(nn.Module):
    """One norm under four names: two attributes of this module, a ModuleList entry and a child of a
    Sequential; called four times per forward."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.bn = norm
        self.bn_alias = norm
        self.listed = nn.ModuleList([nn.ReLU(), norm])
        self.branch = nn.Sequential(nn.Conv2d(3, 4, 1), norm)

    def forward(self, x):
        return (self.bn(self.conv1(x)) + self.bn_alias(self.conv2(x)) + self.listed[1](self.conv1(x) * 2)
                + self.branch(x))

    def names(self):
        return [self.bn, self.bn_alias, self.listed[1], self.branch[1]]


def _shared_norm_model(make_norm, seed=0):
    torch.manual_seed(seed)
    return _randomize(_SharedNorm(make_norm(4)))


def _assert_one_module_under_every_name(model, cls):
    first, *others = model.names()
    assert type(first) is cls and all(other is first for other in others), [type(o).__name__ for o in model.names()]


def test_replace_norms_converts_a_shared_norm_once_under_every_name():
    original, model = _shared_norm_model(nn.BatchNorm2d), _shared_norm_model(nn.BatchNorm2d)
    converted = convert.replace_norms(model, "channel")
    _assert_one_module_under_every_name(converted, cn.ChannelNorm)
    # Oracle: the unconverted model. Training updates the one shared set of running statistics four
    # times per forward; copies under each name would each see one update and drift apart.
    x = torch.randn(4, 3, 5, 5)
    for step in range(3):
        torch.testing.assert_close(converted.train()(x + step), original.train()(x + step))
    torch.testing.assert_close(converted.eval()(x), original.eval()(x))


def test_freeze_and_unfreeze_convert_a_shared_norm_once_under_every_name():
    original = _shared_norm_model(cn.ChannelNorm)
    frozen = convert.freeze(_shared_norm_model(cn.ChannelNorm))
    _assert_one_module_under_every_name(frozen, cn.FrozenChannelNorm)
    x = torch.randn(4, 3, 5, 5)
    # A frozen model computes in training mode what the original computes in eval mode; a name left
    # unfrozen would use the batch statistics instead.
    torch.testing.assert_close(frozen.train()(x), original.eval()(x))
    thawed = convert.unfreeze(frozen)
    _assert_one_module_under_every_name(thawed, cn.ChannelNorm)
    # Thawed, training mode uses batch statistics again, as the original does; a name left frozen would not.
    torch.testing.assert_close(thawed.train()(x), original.train()(x))


def test_to_sync_and_from_sync_convert_a_shared_norm_once_under_every_name():
    original, model = _shared_norm_model(nn.BatchNorm2d), _shared_norm_model(nn.BatchNorm2d)
    synced = convert.to_sync(model)
    _assert_one_module_under_every_name(synced, cn.SyncChannelNorm)
    x = torch.randn(4, 3, 5, 5)
    # One process, no process group: the local path, as the original (two ranks: test_to_sync_*_two_ranks).
    torch.testing.assert_close(synced.train()(x), original.train()(x))
    back = convert.from_sync(synced)
    _assert_one_module_under_every_name(back, cn.ChannelNorm)
    torch.testing.assert_close(back.eval()(x), original.eval()(x))


def test_replace_norms_keeps_tied_norm_weights_and_the_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    model[3].weight = model[1].weight  # tied scale
    _randomize(model)
    original = copy.deepcopy(model)  # deepcopy keeps the tie
    opt, opt_ref = (torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, original))  # built before converting
    converted = convert.replace_norms(model, "channel")
    assert converted[1].weight is converted[3].weight
    x = torch.randn(4, 3, 5, 5)
    for m, o in ((converted, opt), (original, opt_ref)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    # Oracle: the unconverted model after the same step. Copied weights would not be in the optimizer
    # (nothing trained) and would no longer be tied.
    torch.testing.assert_close(converted(x), original(x))
    torch.testing.assert_close(converted[1].weight, original[1].weight)


# ---------------------------------------------------------------- to_sync across two real processes

def _sync_worker(rank: int, world: int, port: int) -> None:
    import datetime
    import os
    import sys

    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 + 1
    local = x[rank * 4:(rank + 1) * 4]
    # to_sync: the oracle is the unconverted model on the whole batch (synchronized statistics are the
    # statistics of the concatenated batch); every name of the shared norm must synchronize.
    original = _shared_norm_model(nn.BatchNorm2d).double().train()
    synced = convert.to_sync(_shared_norm_model(nn.BatchNorm2d).double()).train()
    torch.testing.assert_close(synced(local), original(x)[rank * 4:(rank + 1) * 4])
    torch.testing.assert_close(synced.bn.running_var, original.bn.running_var)
    # from_sync: the oracle is the original on this rank's batch alone; no name may still synchronize.
    local_model = convert.from_sync(convert.to_sync(_shared_norm_model(nn.BatchNorm2d).double())).train()
    torch.testing.assert_close(local_model(local), _shared_norm_model(nn.BatchNorm2d).double().train()(local))
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # torch 2.13's gloo teardown at exit can abort after success (see tests/ops/test_distributed.py)


def test_to_sync_and_from_sync_of_a_shared_norm_two_ranks():
    import socket
    import time

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.spawn(_sync_worker, args=(2, port), nprocs=2, join=False)
    deadline = time.monotonic() + 100.0
    while not ctx.join(timeout=1.0):  # raises when a worker failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail("workers did not finish in 100 s")
