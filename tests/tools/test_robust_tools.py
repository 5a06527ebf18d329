"""Weight Standardization, recompute_stats, momentum converters, and create_norm for the robust kinds."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import channelnorm as cn

F64 = torch.float64


def ws_oracle(w, eps):
    flat = w.reshape(w.shape[0], -1)
    var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).reshape(w.shape)


# ---------------------------------------------------------------- Weight Standardization


def test_wsconv2d_convolves_with_standardized_weight():
    torch.manual_seed(0)
    conv = cn.WSConv2d(3, 4, 3, padding=1, groups=1, eps=1e-4, dtype=F64)
    x = torch.randn(2, 3, 5, 5, dtype=F64, requires_grad=True)
    expected = F.conv2d(x, ws_oracle(conv.weight, 1e-4), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)
    assert torch.autograd.gradcheck(lambda t, w: F.conv2d(t, cn.functional.standardize_weight(w, 1e-4)),
                                    (x[:1, :, :3, :3].detach().requires_grad_(), conv.weight))
    nn.Conv2d(3, 4, 3, padding=1, dtype=F64).load_state_dict(conv.state_dict())  # plain conv state dict


@pytest.mark.parametrize("conv_cls, shape", [(nn.Conv1d, (2, 4, 9)), (nn.Conv2d, (2, 4, 6, 6)),
                                             (nn.Conv3d, (1, 4, 4, 4, 4))])
def test_weight_standardization_parametrization(conv_cls, shape):
    torch.manual_seed(1)
    conv = conv_cls(4, 6, 3, groups=2, dtype=F64)
    raw = conv.weight.detach().clone()
    cn.weight_standardization(conv, eps=1e-6)
    torch.testing.assert_close(conv.weight, ws_oracle(raw, 1e-6))
    x = torch.randn(shape, dtype=F64)
    conv(x).sum().backward()
    assert conv.parametrizations.weight.original.grad is not None
    with pytest.raises(ValueError, match="already weight-standardized"):
        cn.weight_standardization(conv)


def test_weight_standardization_refuses_other_modules():
    for m in (nn.Linear(3, 4), nn.ConvTranspose2d(3, 4, 3), cn.WSConv2d(3, 4, 3)):
        with pytest.raises(TypeError, match="nn.Conv1d, nn.Conv2d or nn.Conv3d"):
            cn.weight_standardization(m)


# ---------------------------------------------------------------- recompute_stats


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cn.ChannelNorm(3, dtype=F64)
        self.b = nn.BatchNorm2d(3, dtype=F64)
        self.c = cn.BatchRenorm(3, channel_axis=-1, dtype=F64, warmup_steps=100)
        self.d = cn.EvoNormB0(3, dtype=F64)
        self.e = cn.InstanceNorm(3, track_running_stats=True, dtype=F64)

    def forward(self, x):
        h = self.b(self.a(x) * 2 + 1)
        return self.e(self.d(self.c(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) + 0.5))


def _population(t):
    per_channel = t.movedim(1, 0).reshape(t.shape[1], -1)
    return per_channel.mean(1), per_channel.var(1, unbiased=True)


def test_recompute_stats_gives_exact_population_statistics():
    torch.manual_seed(2)
    net = _Net()
    net.c.num_batches_tracked.fill_(7)  # BatchRenorm's warm-up step survives
    net.e.running_mean.fill_(0.25)
    batches = [torch.randn(n, 3, 4, 4, dtype=F64) * s + o for n, s, o in [(5, 1.0, 0.0), (2, 3.0, 4.0), (7, 0.5, -2)]]
    net.eval()
    net.a.momentum = None
    cn.recompute_stats(net, [(b, "label") for b in batches], progress=False)
    assert not net.training and net.a.momentum is None and net.b.momentum == 0.1
    assert int(net.c.num_batches_tracked) == 7 and int(net.a.num_batches_tracked) == 0
    # expected layer inputs: each layer normalizes with its batch statistics (train mode)
    h_b = [F.batch_norm(b, None, None, training=True) * 2 + 1 for b in batches]
    h_c = [F.batch_norm(h, None, None, training=True) for h in h_b]
    for layer, inputs in [(net.a, batches), (net.b, h_b), (net.c, h_c)]:
        mean, var = _population(torch.cat(inputs))
        torch.testing.assert_close(layer.running_mean, mean)
        torch.testing.assert_close(layer.running_var, var)
    assert torch.equal(net.e.running_mean, torch.full((3,), 0.25, dtype=F64))  # InstanceNorm left alone


def test_recompute_stats_num_batches_and_errors():
    torch.manual_seed(3)
    norm = cn.ChannelNorm(2, dtype=F64)
    batches = [torch.randn(4, 2, dtype=F64) + i for i in range(4)]
    cn.recompute_stats(norm, iter(batches), num_batches=2, progress=False)
    torch.testing.assert_close(norm.running_mean, _population(torch.cat(batches[:2]))[0])
    before = norm.running_mean.clone()
    with pytest.raises(ValueError, match="num_batches=9 but batches gave only 4"):
        cn.recompute_stats(norm, batches, num_batches=9, progress=False)
    assert torch.equal(norm.running_mean, before)  # an error restores every buffer
    with pytest.raises(ValueError, match="num_batches"):
        cn.recompute_stats(norm, batches, num_batches=0)
    cn.recompute_stats(norm, batches)  # with the tqdm bar


def test_recompute_stats_respects_masks():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = cn.ChannelNorm(2, dtype=F64)

        def forward(self, batch):
            x, mask = batch
            return self.norm(x, mask=mask)

    torch.manual_seed(4)
    model = Masked()
    x = torch.randn(3, 2, 5, dtype=F64)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 3])[:, None]
    cn.recompute_stats(model, [[(x, mask)]], progress=False)
    valid = x.permute(0, 2, 1)[mask]
    torch.testing.assert_close(model.norm.running_mean, valid.mean(0))
    torch.testing.assert_close(model.norm.running_var, valid.var(0, unbiased=True))


def test_recompute_stats_takes_a_positional_residual_for_what_it_is():
    """ChannelNormAct's second positional argument is the residual, not a statistics mask."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = cn.ChannelNormAct(3, dtype=F64)

        def forward(self, x):
            return self.norm(x, x * 2)

    torch.manual_seed(6)
    model = Block()
    batches = [torch.randn(4, 3, 5, 5, dtype=F64) + 1 for _ in range(2)]
    cn.recompute_stats(model, batches, progress=False)
    mean, var = _population(torch.cat(batches))   # of the normalized input, not of the residual
    torch.testing.assert_close(model.norm.running_mean, mean)
    torch.testing.assert_close(model.norm.running_var, var)


# ---------------------------------------------------------------- momentum converters


def test_momentum_converters_round_trip_and_validate():
    assert math.isclose(cn.momentum_from_decay(0.99), 0.01, abs_tol=1e-15)
    assert math.isclose(cn.decay_from_momentum(0.1), 0.9, abs_tol=1e-15)
    for m in (0.0, 0.001, 0.1, 0.5, 1.0):
        assert math.isclose(cn.momentum_from_decay(cn.decay_from_momentum(m)), m, abs_tol=1e-15)
    # the converted value drives the same update as Keras' moving average
    running, batch, decay = 2.0, 5.0, 0.99
    m = cn.momentum_from_decay(decay)
    assert math.isclose((1 - m) * running + m * batch, decay * running + (1 - decay) * batch, rel_tol=1e-14)
    for bad in (-0.1, 1.5, float("nan"), True, "0.9"):
        with pytest.raises(ValueError, match="decay must be a number in"):
            cn.momentum_from_decay(bad)
    with pytest.raises(ValueError, match="cumulative average"):
        cn.decay_from_momentum(None)
    with pytest.raises(ValueError, match="momentum must be a number in"):
        cn.decay_from_momentum(2)


# ---------------------------------------------------------------- create_norm


@pytest.mark.parametrize("kind, kwargs, cls, attrs", [
    ("batch_renorm", dict(rmax=2.0, dmax=1.0, warmup_steps=10), cn.BatchRenorm, dict(rmax=2.0, warmup_steps=10)),
    ("brn", {}, cn.BatchRenorm, dict(rmax=3.0, dmax=5.0, warmup_steps=0)),
    ("ghost", dict(virtual_batch_size=4), cn.GhostNorm, dict(virtual_batch_size=4)),
    ("frn", dict(learnable_eps=True), cn.FilterResponseNorm, dict(learnable_eps=True)),
    ("evonorm_s0", dict(num_groups=4), cn.EvoNormS0, dict(num_groups=4)),
    ("EvoNorm-B0", dict(momentum=0.2), cn.EvoNormB0, dict(momentum=0.2)),
])
def test_create_norm_robust_kinds(kind, kwargs, cls, attrs):
    norm = cn.create_norm(kind, 8, **kwargs)
    assert type(norm) is cls and norm.num_channels == 8
    for k, v in attrs.items():
        assert getattr(norm, k) == v
    x = torch.randn(8, 8, 3, 3)
    assert norm(x).shape == x.shape
    for name in ("batch_renorm", "ghost", "frn", "evonorm_s0", "evonorm_b0"):
        assert name in cn.available_norms()


def test_create_norm_robust_errors():
    with pytest.raises(TypeError, match="unexpected keyword argument.*rmax"):
        cn.create_norm("ghost", 4, rmax=2.0)
    with pytest.raises(TypeError, match="virtual_batch_size"):
        cn.create_norm("batch_renorm", 4, virtual_batch_size=2)
    with pytest.raises(ValueError, match="virtual_batch_size must be a positive integer"):
        cn.create_norm("ghost", 4, virtual_batch_size=0)
    with pytest.raises(ValueError, match="dmax must be"):
        cn.create_norm("batch_renorm", 4, dmax=-1)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        cn.create_norm("evonorm_s0", 16)  # default 32 groups, as "group"
    with pytest.raises(ValueError, match="unknown norm kind 'evonorm_x'"):
        cn.create_norm("evonorm_x", 4)


# ---------------------------------------------------------------- layout, dtype, empty batch (every variant)

_KINDS = [("batch_renorm", dict(warmup_steps=3)), ("ghost", dict(virtual_batch_size=2)), ("frn", {}),
          ("evonorm_s0", dict(num_groups=2)), ("evonorm_b0", {})]


@pytest.mark.parametrize("kind, kwargs", _KINDS)
def test_variants_keep_layout_dtype_and_handle_empty_batches(kind, kwargs):
    torch.manual_seed(5)
    x64 = torch.randn(4, 4, 3, 3, dtype=F64) * 3 + 100  # offset: statistics must be centered
    norm64 = cn.create_norm(kind, 4, dtype=F64, **kwargs)
    norm32 = cn.create_norm(kind, 4, **kwargs)
    norm32.load_state_dict(norm64.state_dict())
    y64 = norm64(x64)
    y32 = norm32(x64.float().contiguous(memory_format=torch.channels_last))
    assert y32.dtype == torch.float32 and y32.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y32, y64.float(), atol=1e-4, rtol=1e-4)  # float32 stats of O(100)-offset data
    ybf = norm32(x64.to(torch.bfloat16))
    assert ybf.dtype == torch.bfloat16
    empty = norm32(torch.randn(0, 4, 3, 3))
    assert empty.shape == (0, 4, 3, 3)
    if hasattr(norm32, "num_batches_tracked") and norm32.num_batches_tracked is not None:
        assert int(norm32.num_batches_tracked) == 2  # the empty batch did not count
