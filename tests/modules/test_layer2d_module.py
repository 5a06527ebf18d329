"""LayerNorm2d: the module, its parity with torch's nn.LayerNorm on the channels-last view, its state dict,
its registry entry and traits, and how the model tools treat its scope."""
import copy

import pytest
import torch
from torch import nn

import channelnorm as cn
from backends import CPU_BACKENDS

F64 = torch.float64


def _torch_pair(c, eps=1e-6):
    theirs = nn.LayerNorm(c, eps=eps, dtype=F64)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
    return theirs


@pytest.mark.parametrize("backend", CPU_BACKENDS + ("auto",))
@pytest.mark.parametrize("channels_last", [False, True])
def test_parity_with_nn_layernorm_on_nhwc_outputs_and_gradients(backend, channels_last):
    theirs = _torch_pair(6)
    ours = cn.LayerNorm2d(6, backend=backend, dtype=F64)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 6, 4, 5, dtype=F64) * 2 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours = ours(x_ours)
    y_theirs = theirs(x_theirs.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-12, atol=1e-12)
    assert y_ours.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    upstream = torch.randn_like(y_theirs)
    (y_ours * upstream).sum().backward()
    (y_theirs * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-10, atol=1e-10)


def test_channel_axis_minus_one_is_nn_layernorm_itself():
    """On channels-last tensors (NHWC images, (N, L, C) tokens) LayerNorm2d(C, channel_axis=-1) is nn.LayerNorm(C)."""
    theirs = _torch_pair(8, eps=1e-5)
    ours = cn.LayerNorm2d(8, eps=1e-5, channel_axis=-1, dtype=F64)
    ours.load_state_dict(theirs.state_dict())
    for shape in ((4, 7, 8), (2, 3, 5, 8)):
        x = torch.randn(shape, dtype=F64)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_state_dict_keys_are_timms_and_load_strictly_both_ways():
    ours = cn.LayerNorm2d(5)
    assert list(ours.state_dict()) == ["weight", "bias"]
    theirs = nn.LayerNorm(5)  # timm's LayerNorm2d is an nn.LayerNorm subclass: the same keys and shapes
    with torch.no_grad():
        theirs.weight.uniform_()
        theirs.bias.uniform_()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    back = nn.LayerNorm(5)
    back.load_state_dict(ours.state_dict(), strict=True)
    assert torch.equal(back.bias, theirs.bias)
    assert list(cn.LayerNorm2d(5, affine=False).state_dict()) == []
    assert list(cn.LayerNorm2d(5, bias=False).state_dict()) == ["weight"]


def test_defaults_and_repr_follow_timm():
    m = cn.LayerNorm2d(4)
    assert m.eps == 1e-6 and m.affine and m.channel_axis == 1 and m.num_features == 4
    assert repr(m) == "LayerNorm2d(4, eps=1e-06, affine=True, channel_axis=1, backend='auto')"
    assert cn.LayerNorm2d(num_features=4).num_channels == 4


def test_training_and_eval_compute_the_same_without_any_buffer():
    m = cn.LayerNorm2d(4)
    x = torch.randn(2, 4, 3, 3)
    y_train = m.train()(x)
    assert torch.equal(m.eval()(x), y_train)
    assert list(m.buffers()) == []


def test_errors_name_the_values():
    with pytest.raises(ValueError, match="backend='triton' cannot run layer_norm_2d"):
        cn.LayerNorm2d(4, backend="triton")
    with pytest.raises(ValueError, match="num_channels must be a positive integer, got 0"):
        cn.LayerNorm2d(0)
    with pytest.raises(ValueError, match="LayerNorm2d: expected input with 4 channels on axis 1, got 3"):
        cn.LayerNorm2d(4)(torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match="floating"):
        cn.LayerNorm2d(4)(torch.ones(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="rank >= 2"):
        cn.LayerNorm2d(4)(torch.randn(4))


def test_registry_names_traits_and_norm_layer():
    for name in ("layer2d", "layernorm2d", "layer-2d", "layer_norm_2d", "LayerNorm2d"):
        m = cn.create_norm(name, 6)
        assert type(m) is cn.LayerNorm2d and m.eps == 1e-6
    assert cn.norm_traits("layernorm2d") == cn.NormTraits("position", False, False)
    assert cn.LayerNorm2d.traits().scope == "position"
    assert cn.get_norm_layer("layernorm2d") is cn.LayerNorm2d
    assert cn.is_norm(cn.LayerNorm2d(3)) and cn.module_traits(cn.LayerNorm2d(3)).scope == "position"


def test_model_tools_handle_the_position_scope():
    """replace_norms carries the affine both ways (no statistics to carry); freeze and recompute_stats
    leave it (it has no running statistics); fold reports it as not foldable."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].weight.uniform_()
    weight = model[1].weight.detach().clone()
    cn.convert.replace_norms(model, "layernorm2d")
    assert type(model[1]) is cn.LayerNorm2d and torch.equal(model[1].weight, weight)
    cn.convert.replace_norms(model, "channel")
    assert type(model[1]) is cn.ChannelNorm and torch.equal(model[1].weight, weight)
    assert int(model[1].num_batches_tracked) == 0

    ln = nn.Sequential(nn.Conv2d(3, 4, 1), cn.LayerNorm2d(4)).eval()
    before = copy.deepcopy(ln.state_dict())
    cn.recompute_stats(ln, [torch.randn(2, 3, 4, 4)], progress=False)
    assert all(torch.equal(v, ln.state_dict()[k]) for k, v in before.items())
    _, report = cn.convert.fold(ln, torch.randn(2, 3, 4, 4), return_report=True)
    assert report.num_folded == 0 and "LayerNorm2d is not a norm with running statistics" in report.left[0].reason
