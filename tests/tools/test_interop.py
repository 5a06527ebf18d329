"""Each row of docs/interop.md: what torch's, torchvision's, timm's and Apex's batch-norm tools do with this
library's norms (work, or skip/raise rather than compute something else), and that the cn.convert
equivalent named there does the job. timm and torchvision rows run where those packages are installed."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import channelnorm as cn
from channelnorm import convert

F64 = torch.float64


def _model(norm):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norm, nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3, 5, 5) * 2 + 1)
    return model


def test_isinstance_based_tools_skip_channelnorm_rather_than_misconvert_it():
    """ChannelNorm is not a _BatchNorm, so every tool that converts by that type (convert_sync_batchnorm, Apex's
    convert_syncbn_model, timm's freeze/convert helpers) leaves it alone instead of turning, e.g., a
    channel_axis=-1 norm into a channels-first SyncBatchNorm; cn.is_norm finds it."""
    for norm in (cn.ChannelNorm(4), cn.ChannelNorm(4, channel_axis=-1), cn.SyncChannelNorm(4), cn.FrozenChannelNorm(4)):
        assert not isinstance(norm, (_BatchNorm, nn.BatchNorm2d, nn.SyncBatchNorm))
        assert cn.is_norm(norm) and isinstance(norm, cn.NORM_TYPES)


def test_convert_sync_batchnorm_skips_it_and_to_sync_does_the_job():
    model = _model(cn.ChannelNorm(4, channel_axis=1))
    model.add_module("extra", nn.Identity())
    same = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert type(same[1]) is cn.ChannelNorm  # skipped: it still computes ChannelNorm, not something else
    synced = convert.to_sync(model)
    assert type(synced[1]) is cn.SyncChannelNorm and synced[1].channel_axis == 1
    lastaxis = convert.to_sync(cn.ChannelNorm(4, channel_axis=-1))
    assert type(lastaxis) is cn.SyncChannelNorm and lastaxis.channel_axis == -1  # the axis is kept
    torch_bn = convert.to_sync(nn.Sequential(nn.BatchNorm2d(4)))
    assert type(torch_bn[0]) is cn.SyncChannelNorm


def test_fuse_modules_raises_and_fold_does_the_job():
    model = _model(cn.ChannelNorm(4)).eval()
    with pytest.raises(AssertionError, match="did not find fuser method"):
        torch.ao.quantization.fuse_modules(copy.deepcopy(model), [["0", "1"]])
    x = torch.randn(2, 3, 5, 5)
    expected = model(x)
    folded, report = convert.fold(model, x, return_report=True)
    assert report.num_folded == 1 and isinstance(folded[1], nn.Identity)
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_fuse_conv_bn_eval_works_on_the_channel_axis_of_the_conv():
    """torch.nn.utils.fusion.fuse_conv_bn_eval reads running_mean/var, eps, weight and bias: with the norm on
    the conv's channel axis (channel_axis=1) it folds exactly what the pair computes."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    model = _model(cn.ChannelNorm(4)).eval()
    x = torch.randn(2, 3, 5, 5)
    fused = fuse_conv_bn_eval(model[0], model[1])
    torch.testing.assert_close(fused(x), model[1](model[0](x)), rtol=1e-5, atol=1e-5)


def test_fx_tracing_raises_and_a_leaf_tracer_works():
    model = _model(cn.ChannelNorm(4)).eval()
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got Proxy"):
        torch.fx.symbolic_trace(model)

    class NormLeafTracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return cn.is_norm(m) or super().is_leaf_module(m, qualname)

    graph_module = torch.fx.GraphModule(model, NormLeafTracer().trace(model))
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(graph_module(x), model(x), rtol=0, atol=0)


def test_replace_all_batch_norm_modules_skips_it_vmap_says_so_and_drop_running_stats_does_the_job():
    model = _model(cn.ChannelNorm(4))
    torch.func.replace_all_batch_norm_modules_(model)
    assert model[1].track_running_stats  # skipped
    xs = torch.randn(3, 6, 3, 5, 5)
    with pytest.raises(RuntimeError, match="running_mean or running_var, which will be updated in place"):
        torch.func.vmap(model, randomness="same")(xs)
    mixed = nn.Sequential(model, cn.GroupNorm(1, 2), nn.BatchNorm2d(2), cn.InstanceNorm(2, track_running_stats=True),
                          cn.FrozenChannelNorm(2))
    assert convert.drop_running_stats(mixed) is mixed
    for m in (model[1], mixed[2], mixed[3]):
        assert not m.track_running_stats and m.running_mean is None and m.num_batches_tracked is None
    assert mixed[4].running_mean is not None  # a frozen norm keeps its fixed statistics
    for mode in (mixed.train, mixed.eval):
        mode()
        batched = torch.func.vmap(mixed)(xs)
        torch.testing.assert_close(batched, torch.stack([mixed(x) for x in xs]), rtol=1e-5, atol=1e-5)
    assert "running_mean" not in mixed.state_dict()
    with pytest.raises(ValueError, match="norm layer '1' is a BatchRenorm, which cannot compute without"):
        convert.drop_running_stats(nn.Sequential(cn.ChannelNorm(2), cn.BatchRenorm(2)))


def test_isinstance_init_code_and_weight_decay_exclusion():
    """Code that finds norms by isinstance(m, nn.BatchNorm2d) misses ours; cn.is_norm finds them. Init loops
    that set weight 1 and bias 0 leave ours where they start anyway."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), cn.ChannelNorm(4), cn.LayerNorm2d(4), nn.BatchNorm2d(4), nn.Linear(4, 2))
    assert [type(m).__name__ for m in model if isinstance(m, nn.BatchNorm2d)] == ["BatchNorm2d"]
    no_decay = [p for m in model.modules() if cn.is_norm(m) for p in m.parameters(recurse=False)]
    assert len(no_decay) == 6
    fresh = cn.ChannelNorm(4)
    assert torch.equal(fresh.weight, torch.ones(4)) and torch.equal(fresh.bias, torch.zeros(4))


def test_torchvision_frozen_batchnorm_state_dict_loads_into_frozen_channelnorm():
    """torchvision.ops.FrozenBatchNorm2d keeps weight, bias, running_mean and running_var as buffers."""
    state = {"weight": torch.rand(4), "bias": torch.randn(4), "running_mean": torch.randn(4),
             "running_var": torch.rand(4) + 0.5}
    frozen = cn.FrozenChannelNorm(4)
    frozen.load_state_dict(state, strict=True)
    x = torch.randn(2, 4, 3, 3)
    shape = (1, 4, 1, 1)
    expected = (x - state["running_mean"].view(shape)) / (state["running_var"].view(shape) + 1e-5).sqrt() \
        * state["weight"].view(shape) + state["bias"].view(shape)
    torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-5)


def test_torchvision_resnet_takes_get_norm_layer():
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18(num_classes=10).eval()
    ours = torchvision.models.resnet18(num_classes=10, norm_layer=cn.get_norm_layer("batchnorm2d")).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


def test_timm_helpers():
    timm = pytest.importorskip("timm")
    from timm.layers import convert_sync_batchnorm, freeze_batch_norm_2d, get_norm_layer
    model = _model(cn.ChannelNorm(4))
    assert type(freeze_batch_norm_2d(copy.deepcopy(model))[1]) is cn.ChannelNorm  # skipped
    assert type(convert_sync_batchnorm(copy.deepcopy(model))[1]) is cn.ChannelNorm  # skipped
    assert type(convert.freeze(copy.deepcopy(model))[1]) is cn.FrozenChannelNorm
    assert get_norm_layer(cn.LayerNorm2d) is cn.LayerNorm2d
    assert timm is not None
