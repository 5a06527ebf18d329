"""ChannelNormAct / GroupNormAct take the activation as timm's norm + act layers do (``act_layer``: a name,
a class or an instance; ``act_kwargs``; ``apply_act``; ``inplace``). The oracle is the plain norm followed
by torch's own activation module, in float64."""
import functools

import pytest
import torch
from torch import nn

import channelnorm as cn

F64 = torch.float64

BLOCKS = {
    "channel": (lambda **kw: cn.ChannelNormAct(6, **kw), lambda: cn.ChannelNorm(6)),
    "group": (lambda **kw: cn.GroupNormAct(3, 6, **kw), lambda: cn.GroupNorm(3, 6)),
}
FUSED = [("relu", "relu"), (nn.ReLU, "relu"), (nn.ReLU(inplace=True), "relu"), ("swish", "silu"), (nn.SiLU, "silu"),
         ("gelu", "gelu"), (nn.GELU, "gelu"), (nn.GELU(), "gelu"), ("identity", "none"), (nn.Identity, "none")]
COMPOSED = [("gelu_tanh", lambda: nn.GELU(approximate="tanh")), ("mish", nn.Mish), ("hard_swish", nn.Hardswish),
            (nn.GELU(approximate="tanh"), lambda: nn.GELU(approximate="tanh")), (nn.ELU, nn.ELU),
            (nn.Sigmoid(), nn.Sigmoid)]


def _compare(block, plain, act, residual=True):
    x = torch.randn(4, 6, 3, 3, dtype=F64)
    res = torch.randn_like(x) if residual else None
    block, plain = block.double().train(), plain.double().train()
    with torch.no_grad():
        for m in (block, plain):
            m.weight.copy_(torch.linspace(0.5, 1.5, 6))
            m.bias.copy_(torch.linspace(-0.5, 0.5, 6))
    expected = act.double()(plain(x) + (0 if res is None else res))
    torch.testing.assert_close(block(x, res) if residual else block(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", BLOCKS)
@pytest.mark.parametrize("act_layer,fused", FUSED, ids=[repr(a) for a, _ in FUSED])
def test_fused_activations_given_as_act_layer_stay_fused(norm, act_layer, fused):
    make, plain = BLOCKS[norm]
    block = make(act_layer=act_layer)
    assert block.activation == fused and block.act is None
    oracle = {"relu": nn.ReLU(), "silu": nn.SiLU(), "gelu": nn.GELU(), "none": nn.Identity()}[fused]
    _compare(block, plain(), oracle)


@pytest.mark.parametrize("norm", BLOCKS)
@pytest.mark.parametrize("act_layer,torch_act", COMPOSED, ids=[repr(a) for a, _ in COMPOSED])
def test_other_activations_run_after_the_norm_and_residual(norm, act_layer, torch_act):
    make, plain = BLOCKS[norm]
    block = make(act_layer=act_layer)
    assert block.activation == "none" and isinstance(block.act, nn.Module)
    _compare(block, plain(), torch_act())


def test_act_kwargs_apply_act_inplace_and_parameterised_activations():
    leaky = cn.ChannelNormAct(6, act_layer=nn.LeakyReLU, act_kwargs={"negative_slope": 0.2}, inplace=True)
    assert leaky.act.negative_slope == 0.2 and leaky.act.inplace
    _compare(leaky, cn.ChannelNorm(6), nn.LeakyReLU(0.2))
    off = cn.ChannelNormAct(6, act_layer=nn.SiLU, apply_act=False)
    assert off.activation == "none" and off.act is None
    _compare(off, cn.ChannelNorm(6), nn.Identity())
    assert cn.ChannelNormAct(6, apply_act=False).activation == "none"
    prelu = cn.GroupNormAct(3, 6, act_layer=nn.PReLU(6))  # its weight is state, under the name timm uses
    assert set(prelu.state_dict()) == {"weight", "bias", "act.weight"}
    _compare(prelu, cn.GroupNorm(3, 6), prelu.act)


def test_timm_style_factory_call():
    """timm builds norm + act layers as norm_act_layer(C, apply_act=..., act_kwargs=..., inplace=...)."""
    factory = functools.partial(cn.ChannelNormAct, act_layer="silu")
    block = factory(6, apply_act=True, act_kwargs=None, inplace=True)
    assert block.activation == "silu" and block.act is None


def test_bad_activation_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="give activation='silu' or act_layer=.*not both"):
        cn.ChannelNormAct(6, activation="silu", act_layer=nn.ReLU)
    with pytest.raises(ValueError, match="unknown act_layer 'swishy'; choose one of .*mish"):
        cn.GroupNormAct(3, 6, act_layer="swishy")
    with pytest.raises(TypeError, match="act_kwargs=.*cannot apply to an activation instance"):
        cn.ChannelNormAct(6, act_layer=nn.ReLU(), act_kwargs={"inplace": True})
    with pytest.raises(TypeError, match="act_kwargs=.*needs an act_layer"):
        cn.ChannelNormAct(6, act_kwargs={"negative_slope": 0.1})
    with pytest.raises(TypeError, match="act_layer must be a name, an nn.Module class or instance"):
        cn.ChannelNormAct(6, act_layer=3)
    with pytest.raises(TypeError, match="built a Tensor, not an nn.Module"):
        cn.ChannelNormAct(6, act_layer=lambda: torch.zeros(1))
