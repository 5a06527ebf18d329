"""Parity with torch's own modules in float64: outputs, gradients, running statistics, over steps."""
import pytest
import torch
from torch import nn

import channelnorm as cn
from backends import CPU_BACKENDS
from layouts import LAYOUTS, applicable, to_layout

F64 = torch.float64
SHAPES = {2: (6, 3), 3: (4, 3, 5), 4: (3, 3, 4, 5), 5: (2, 3, 3, 4, 2)}
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
TORCH_IN = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}


def _randomize_affine(theirs: nn.Module, ours: nn.Module) -> None:
    if getattr(theirs, "weight", None) is not None:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.uniform_(-0.5, 0.5)
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)


def _step(ours, theirs, x, layout, compare_grads=True):
    """One forward/backward through both modules; compare outputs and gradients."""
    x_theirs = x.clone().requires_grad_(True)
    x_ours_leaf = x.clone().requires_grad_(True)
    x_ours, axis, back = to_layout(x_ours_leaf, layout)
    assert ours.channel_axis == axis or ours.channel_axis % x.ndim == axis % x.ndim
    y_theirs = theirs(x_theirs)
    y_ours = ours(x_ours)
    assert y_ours.shape == x_ours.shape
    torch.testing.assert_close(back(y_ours), y_theirs)
    if not compare_grads:
        return
    upstream = torch.randn_like(y_theirs)
    (y_theirs * upstream).sum().backward()
    (back(y_ours) * upstream).sum().backward()
    torch.testing.assert_close(x_ours_leaf.grad, x_theirs.grad)
    if getattr(theirs, "weight", None) is not None:
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad)
        theirs.weight.grad = theirs.bias.grad = ours.weight.grad = ours.bias.grad = None


def _compare_buffers(ours, theirs, count=True):
    if theirs.running_mean is None:
        assert ours.running_mean is None and ours.running_var is None
        return
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    if count:
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)


def _cases(ranks, exclude=()):
    """(rank, layout) pairs where the layout exists and is distinct at that rank."""
    return [(r, lay) for r in ranks for lay in LAYOUTS if applicable(lay, r) and (r, lay) not in exclude]


def _axis(layout, rank):
    return to_layout(torch.zeros(SHAPES[rank]), layout)[1]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None, 0.0])
@pytest.mark.parametrize("rank,layout", _cases([2, 3, 4, 5]))
def test_channel_norm_matches_batchnorm(rank, layout, momentum, affine, track, backend):
    C = SHAPES[rank][1]
    kw = dict(momentum=momentum, affine=affine, track_running_stats=track, dtype=F64)
    theirs = TORCH_BN[rank](C, **kw)
    ours = cn.ChannelNorm(C, channel_axis=_axis(layout, rank), backend=backend, **kw)
    _randomize_affine(theirs, ours)
    for step in range(3):
        x = torch.randn(SHAPES[rank], dtype=F64) * (step + 1) + step
        _step(ours, theirs, x, layout)
        _compare_buffers(ours, theirs)
    ours.eval()
    theirs.eval()
    _step(ours, theirs, torch.randn(SHAPES[rank], dtype=F64) + 0.5, layout)
    _compare_buffers(ours, theirs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("rank,layout", _cases([3, 4, 5]))
def test_instance_norm_matches_torch(rank, layout, affine, track, backend):
    C = SHAPES[rank][1]
    kw = dict(momentum=0.3, affine=affine, track_running_stats=track, dtype=F64)
    theirs = TORCH_IN[rank](C, **kw)
    ours = cn.InstanceNorm(C, channel_axis=_axis(layout, rank), backend=backend, **kw)
    _randomize_affine(theirs, ours)
    for step in range(3):
        _step(ours, theirs, torch.randn(SHAPES[rank], dtype=F64) * (step + 1) - step, layout)
        # torch's InstanceNorm never increments num_batches_tracked; ours counts like BatchNorm.
        _compare_buffers(ours, theirs, count=False)
    if track:
        assert int(ours.num_batches_tracked) == 3
    ours.eval()
    theirs.eval()
    _step(ours, theirs, torch.randn(SHAPES[rank], dtype=F64), layout)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("rank,layout", _cases([2, 3, 4, 5], exclude=[(2, "axis_last_view")]))
def test_group_norm_matches_torch(rank, layout, groups, affine, backend):
    shape = list(SHAPES[rank])
    shape[1] = 6
    theirs = nn.GroupNorm(groups, 6, affine=affine, dtype=F64)
    axis = to_layout(torch.zeros(shape), layout)[1]
    ours = (cn.LayerNorm(6, affine=affine, channel_axis=axis, backend=backend, dtype=F64) if groups == 1
            else cn.GroupNorm(groups, 6, affine=affine, channel_axis=axis, backend=backend, dtype=F64))
    _randomize_affine(theirs, ours)
    for training in (True, False):
        ours.train(training)
        theirs.train(training)
        _step(ours, theirs, torch.randn(shape, dtype=F64) * 3 + 1, layout)


def test_momentum_none_is_cumulative_average():
    ours = cn.ChannelNorm(3, momentum=None, dtype=F64)
    batches = [torch.randn(5, 3, 4, dtype=F64) * (i + 1) + i for i in range(4)]
    for b in batches:
        ours(b)
    means = torch.stack([b.mean((0, 2)) for b in batches]).mean(0)
    vars_ = torch.stack([b.var((0, 2), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(ours.running_mean, means)
    torch.testing.assert_close(ours.running_var, vars_)
    assert int(ours.num_batches_tracked) == 4


@pytest.mark.parametrize("make", [
    lambda: (nn.BatchNorm1d(4), cn.ChannelNorm(4)),
    lambda: (nn.BatchNorm2d(4), cn.ChannelNorm(4, channel_axis=-1)),
    lambda: (nn.BatchNorm3d(4, affine=False), cn.ChannelNorm(4, affine=False)),
    lambda: (nn.BatchNorm2d(4, track_running_stats=False), cn.ChannelNorm(4, track_running_stats=False)),
    lambda: (nn.GroupNorm(2, 4), cn.GroupNorm(2, 4)),
    lambda: (nn.GroupNorm(1, 4), cn.LayerNorm(4)),
    lambda: (nn.InstanceNorm2d(4, affine=True, track_running_stats=True), cn.InstanceNorm(4, track_running_stats=True)),
    lambda: (nn.InstanceNorm1d(4), cn.InstanceNorm(4, affine=False)),
])
def test_state_dict_loads_strictly_both_ways(make):
    theirs, ours = make()
    state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v + 7
             for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(state, strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, state[k]) and v.dtype == state[k].dtype, k
    back, _ = make()
    back.load_state_dict(ours.state_dict(), strict=True)
    assert set(back.state_dict()) == set(ours.state_dict())


def test_old_state_dict_without_num_batches_tracked_loads():
    ours = cn.ChannelNorm(3)
    state = nn.BatchNorm2d(3).state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    ours.load_state_dict(state, strict=True)
    assert int(ours.num_batches_tracked) == 0


def test_instance_norm_momentum_none_is_cumulative_average_of_instance_statistics():
    ours = cn.InstanceNorm(3, momentum=None, track_running_stats=True, dtype=F64)
    batches = [torch.randn(4, 3, 6, dtype=F64) * (i + 1) - i for i in range(3)]
    for b in batches:
        ours(b)
    means = torch.stack([b.mean(2).mean(0) for b in batches]).mean(0)
    vars_ = torch.stack([b.var(2, unbiased=True).mean(0) for b in batches]).mean(0)
    torch.testing.assert_close(ours.running_mean, means)
    torch.testing.assert_close(ours.running_var, vars_)
