"""convert.fold never changes what a model computes; it reports what it folded and what it left, and why.

Oracles: the unfolded model itself (folding must not change outputs), and for the float64 check an
independent float64 re-computation of norm(layer(x)) from the modules' parameters.
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
    """Non-trivial running statistics and affine parameters on every norm, then eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 2 + 0.2)
            if getattr(m, "num_batches_tracked", None) is not None and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
    return model.eval()


# ---------------------------------------------------------------- the wrong-axis case (issue: outputs changed by 0.05-0.18)

@pytest.mark.parametrize("make_norm", [lambda c: cn.ChannelNorm(c, channel_axis=1), lambda c: nn.BatchNorm1d(c)],
                         ids=["ChannelNorm", "BatchNorm1d"])
@pytest.mark.parametrize("use_example", [False, True])
def test_linear_then_norm_over_axis_1_of_3d_input_is_left_alone(make_norm, use_example):
    torch.manual_seed(0)
    # Linear acts on the last axis (F=6) of (N, L, F); the norm normalizes axis 1 (L=6, same size).
    model = _randomize(nn.Sequential(nn.Linear(4, 6), make_norm(6)))
    x = torch.randn(5, 6, 4)
    expected = model(x)
    folded, report = convert.fold(model, example_input=x if use_example else None, return_report=True)
    assert report.folded == [] and [n.norm for n in report.left] == ["1"]
    assert "axis" in report.left[0].reason
    assert not isinstance(folded[1], nn.Identity)
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=0)  # untouched: bit for bit


@pytest.mark.parametrize("make_norm", [lambda c: cn.ChannelNorm(c, channel_axis=1), lambda c: nn.BatchNorm1d(c)],
                         ids=["ChannelNorm", "BatchNorm1d"])
def test_linear_then_norm_on_2d_input_folds_with_example_input(make_norm):
    torch.manual_seed(1)
    model = _randomize(nn.Sequential(nn.Linear(4, 6), make_norm(6)))
    x = torch.randn(8, 4)
    expected = model(x)
    # Without an example the rank is unknown (3-D input would be the case above): left, with the reason.
    _, report = convert.fold(copy.deepcopy(model), return_report=True)
    assert report.num_folded == 0 and "example_input" in report.left[0].reason
    folded, report = convert.fold(model, example_input=x, return_report=True)
    assert [(p.layer, p.norm) for p in report.folded] == [("0", "1")]
    assert isinstance(folded[1], nn.Identity)
    # float32: weights are folded in float64 and rounded once; the matmul then rounds differently
    # by a few ulps of values of order 1-10.
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_channels_last_norm_after_linear_folds_without_example():
    torch.manual_seed(2)
    model = _randomize(nn.Sequential(nn.Linear(4, 6), cn.ChannelNorm(6, channel_axis=-1)))
    x = torch.randn(5, 3, 4)
    expected = model(x)
    folded, report = convert.fold(model, return_report=True)
    assert report.num_folded == 1 and isinstance(folded[1], nn.Identity)
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- shared outputs and shared modules

class _ConvWithSkip(nn.Module):
    """The conv's output feeds the norm and, unnormalized, a skip path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        out = self.conv(x)
        return self.bn(out) + out


def test_conv_whose_output_also_feeds_a_skip_path_is_left_unfolded():
    torch.manual_seed(3)
    model = _randomize(_ConvWithSkip())
    x = torch.randn(2, 4, 5, 5)
    expected = model(x)
    folded, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 0
    assert report.left[0].norm == "bn" and "skip" in report.left[0].reason
    assert isinstance(folded.bn, nn.BatchNorm2d)
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=0)


class _ConvReturned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = cn.ChannelNorm(4)

    def forward(self, x):
        out = self.conv(x)
        return self.bn(out), out  # the conv output is itself a model output


def test_conv_output_returned_by_the_model_is_left_unfolded():
    model = _randomize(_ConvReturned())
    x = torch.randn(2, 3, 4, 4)
    _, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 0 and "also used" in report.left[0].reason


class _ReadsShapeThenInPlace(nn.Module):
    """Reading the conv output's shape is not a use; modifying it in place after the norm is."""

    def __init__(self, in_place_after: bool) -> None:
        super().__init__()
        self.conv, self.bn, self.in_place_after = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), in_place_after

    def forward(self, x):
        out = self.conv(x)
        if out.shape[1] != 4 or out.ndim != 4 or out.size(0) < 1:
            raise RuntimeError("unexpected shape")
        y = self.bn(out)
        if self.in_place_after:
            out.relu_()
            y = y + out
        return y


@pytest.mark.parametrize("in_place_after", [False, True])
def test_metadata_reads_do_not_block_folding_but_later_uses_do(in_place_after):
    model = _randomize(_ReadsShapeThenInPlace(in_place_after))
    x = torch.randn(2, 3, 4, 4)
    expected = model(x)
    _, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == (0 if in_place_after else 1), report
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


class _BranchesOnData(nn.Module):
    """On positive inputs the conv output also feeds a skip path: the example alone cannot prove a fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        out = self.conv(x)
        if x.mean() > 0:
            return self.bn(out) + out
        return self.bn(out)


def test_forward_that_branches_on_tensor_values_is_not_folded():
    model = _randomize(_BranchesOnData())
    negative = -torch.rand(2, 3, 4, 4) - 1  # takes the branch without the skip path
    positive = torch.rand(2, 3, 4, 4) + 1
    expected = model(positive)
    _, report = convert.fold(model, example_input=negative, return_report=True)
    assert report.num_folded == 0 and "__bool__" in report.left[0].reason
    torch.testing.assert_close(model(positive), expected, rtol=0, atol=0)


def test_model_that_is_a_norm_comes_back_unchanged_with_a_reason():
    bn = _randomize(nn.BatchNorm2d(3))
    folded, report = convert.fold(bn, example_input=torch.randn(1, 3, 2, 2), return_report=True)
    assert folded is bn and report.num_folded == 0 and "model itself" in report.left[0].reason


def test_shared_conv_and_norm_called_twice_are_left():
    conv, bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = conv, bn

        def forward(self, x):
            return self.bn(self.conv(self.bn(self.conv(x))))

    model = _randomize(Twice())
    x = torch.randn(2, 3, 4, 4)
    expected = model(x)
    _, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 0 and "2 times" in report.left[0].reason
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_conv_then_channelnorm_needs_example_to_prove_batched_input():
    # An unbatched (C, H, W) input would put the conv's channels on axis 0 while ChannelNorm
    # normalizes axis 1; nn.BatchNorm2d only accepts 4-D input, so it folds without an example.
    model = _randomize(nn.Sequential(nn.Conv2d(3, 4, 1), cn.ChannelNorm(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    _, report = convert.fold(copy.deepcopy(model), return_report=True)
    assert [p.norm for p in report.folded] == ["3"] and report.left[0].norm == "1"
    _, report = convert.fold(model, example_input=torch.randn(2, 3, 4, 4), return_report=True)
    assert [p.norm for p in report.folded] == ["1", "3"] and report.left == []


def test_unbatched_conv_output_with_norm_over_height_is_left():
    # Unbatched (3, 4, 5) -> conv output (4, 4, 5): ChannelNorm(4) normalizes axis 1 = height.
    model = _randomize(nn.Sequential(nn.Conv2d(3, 4, 1), cn.ChannelNorm(4)))
    x = torch.randn(3, 4, 5)
    expected = model(x)
    _, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 0 and "axis 1 of the 3-D output" in report.left[0].reason
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_training_mode_example_run_leaves_buffers_and_mode_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5))
    _randomize(model)
    model[2].train()  # dropout in training mode: the verification replays the same random numbers
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 4, 4)
    _, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 1
    assert model[2].training
    for key in ("1.running_mean", "1.running_var"):
        assert key not in model.state_dict()  # the norm is gone, its statistics folded
    train_model = _randomize(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))).train()
    stats = {k: v.clone() for k, v in train_model.state_dict().items()}
    # A norm in training mode is refused up front, naming it (it would fold nothing).
    with pytest.raises(ValueError, match="fold: the model is in training mode, and norm layer '1'.*call model.eval\\(\\) first"):
        convert.fold(train_model, example_input=x, return_report=True)
    for key, value in stats.items():  # nothing ran: the running statistics are untouched
        torch.testing.assert_close(train_model.state_dict()[key], value, rtol=0, atol=0)
    assert before  # (the first model's state was read before folding)


def test_fused_blocks_and_other_norms_are_reported_with_reasons():
    model = _randomize(nn.Sequential(nn.Conv2d(3, 4, 1), cn.ChannelNormAct(4), nn.Conv2d(4, 4, 1), cn.GroupNorm(2, 4),
                                     nn.Conv2d(4, 4, 1), cn.ChannelNorm(4, track_running_stats=False)))
    _, report = convert.fold(model, example_input=torch.randn(2, 3, 4, 4), return_report=True)
    reasons = {n.norm: n.reason for n in report.left}
    assert report.num_folded == 0 and set(reasons) == {"1", "3", "5"}
    assert "fused" in reasons["1"] and "GroupNorm" in reasons["3"] and "no running statistics" in reasons["5"]


def test_fold_without_report_returns_the_model_and_warns_about_foldable_norms_left():
    model = _randomize(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)))
    with pytest.warns(UserWarning, match="return_report=True"):
        assert convert.fold(model) is model


# ---------------------------------------------------------------- custom forward: a torchvision-style ResNet-18

class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class _ResNet18(nn.Module):
    """torchvision's resnet18 layout (torchvision is not a dependency): 20 BatchNorm2d, 17 in custom forwards."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(width, 2)
        self.layer2 = self._make_layer(width * 2, 2, stride=2)
        self.layer3 = self._make_layer(width * 4, 2, stride=2)
        self.layer4 = self._make_layer(width * 8, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [_BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [_BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _trained_resnet(dtype=torch.float32) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(4)
    model = _ResNet18().to(dtype)
    x = torch.randn(4, 3, 32, 32, dtype=dtype)
    model.train()
    with torch.no_grad():  # a few steps so running statistics are data-like, not the initial ones
        for i in range(3):
            model(x + 0.1 * i)
    return model.eval(), x


def test_resnet18_custom_forward_folds_all_20_norms_with_example_input():
    model, x = _trained_resnet()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20
    expected = model(x)
    # Without an example nothing folds: every pair sits below a custom forward (the model's, a block's),
    # which could also call the conv or read its weight (see test_tied_weight_read_in_a_custom_forward...).
    _, report = convert.fold(copy.deepcopy(model), return_report=True)
    assert report.num_folded == 0 and len(report.left) == 20
    assert all("custom forward" in n.reason and "example_input" in n.reason for n in report.left)

    folded, report = convert.fold(model, example_input=x, return_report=True)
    assert report.method == "traced" and report.num_folded == 20 and report.left == []
    assert ("layer1.0.conv1", "layer1.0.bn1") in {(p.layer, p.norm) for p in report.folded}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    out = folded(x)
    # float32: each of the 20 folds rounds the conv weights once (relative 2^-24 ≈ 6e-8) and changes
    # the summation order nowhere else; through 20 layers of 10 logits of order 1 this is measured
    # at 5e-8 max abs diff on logits up to 0.14 (torch 2.13 CPU); 1e-4 leaves room and still fails a
    # wrong fold (errors of 1e-2 and up).
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    # New inputs (not the example) give the same outputs too: folding is input-independent.
    x2 = torch.randn(2, 3, 40, 40)
    torch.testing.assert_close(folded(x2), _trained_resnet()[0](x2), rtol=1e-4, atol=1e-4)


def test_resnet18_float64_matches_float64_oracle():
    model, x = _trained_resnet(torch.float64)
    original = copy.deepcopy(model)
    folded, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 20
    # float64: one rounding of each folded weight (2^-53 relative) through 20 layers.
    torch.testing.assert_close(folded(x), original(x), rtol=1e-10, atol=1e-10)
    # Oracle, independent of fold's code: bn(conv(z)) written out from the ORIGINAL parameters, on
    # inputs the example never showed; each folded conv alone must reproduce it.
    gen = torch.Generator().manual_seed(5)
    for pair in report.folded:
        conv, bn = original.get_submodule(pair.layer), original.get_submodule(pair.norm)
        z = torch.randn(2, conv.in_channels, 6, 6, generator=gen, **F64)
        c = (1, -1, 1, 1)
        oracle = ((conv(z) - bn.running_mean.view(c)) / torch.sqrt(bn.running_var.view(c) + bn.eps)
                  * bn.weight.view(c) + bn.bias.view(c))
        # up to 3*3*128 products summed in float64: ~1e-13 relative at most
        torch.testing.assert_close(folded.get_submodule(pair.layer)(z), oracle, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the safety net: verification on the example undoes every fold

class _ReadsNormAttribute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return y * self.bn2.running_var.mean()  # needs the norm module itself, not only its output


def test_folded_model_that_fails_on_the_example_is_restored():
    model = _randomize(_ReadsNormAttribute())
    x = torch.randn(2, 3, 4, 4)
    expected = model(x)
    folded, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 0 and len(report.left) == 2
    assert all("every fold was undone" in n.reason and "AttributeError" in n.reason for n in report.left)
    assert isinstance(folded.bn1, nn.BatchNorm2d) and isinstance(folded.bn2, nn.BatchNorm2d)
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=0)  # original parameters back, bit for bit


def test_a_wrong_fold_is_caught_by_the_example_and_undone(monkeypatch):
    from channelnorm.tools import fold as fold_module

    real = fold_module._fold_into

    def off_by_a_bit(layer, norm):  # a bug that the structural checks cannot see
        real(layer, norm)
        with torch.no_grad():
            layer.bias.add_(1e-2)

    monkeypatch.setattr(fold_module, "_fold_into", off_by_a_bit)
    model, x = _trained_resnet()
    expected = model(x)
    _, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 0 and len(report.left) == 20
    assert "differed from the original" in report.left[0].reason
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


# ---------------------------------------------------------------- outputs fold cannot see through pytree

class _Stash:
    """A user object a forward hands back (no dataclass, no pytree registration)."""

    def __init__(self, **values) -> None:
        self.__dict__.update(values)


class _Slotted:
    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value


_ESCAPES = {
    # how the unnormalized conv output f escapes: fold must leave the pair, whatever the container
    "attribute": lambda self, f, y: (setattr(self, "last", f), y)[1],
    "global_list": lambda self, f, y: (_KEPT.append(f), y)[1],
    "object": lambda self, f, y: _Stash(features={"f": [f]}, logits=y),
    "dict_key_object": lambda self, f, y: {"out": y, "extra": _Stash(inner=_Stash(f=f))},
}
_KEPT: list = []


class _Escapes(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv, self.bn, self.how = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), how

    def forward(self, x):
        f = self.conv(x)
        return _ESCAPES[self.how](self, f, self.bn(f))


@pytest.mark.parametrize("how", sorted(_ESCAPES))
def test_conv_output_that_escapes_into_any_container_is_left_unfolded(how):
    model = _randomize(_Escapes(how))
    _, report = convert.fold(model, example_input=torch.randn(2, 3, 6, 6), return_report=True)
    _KEPT.clear()
    assert report.num_folded == 0
    assert "also used outside this norm" in report.left[0].reason, report


class _ReturnsWrapped(nn.Module):
    """Only normalized values leave the forward, wrapped in a user object: folding is verified through it."""

    def __init__(self, slotted: bool = False) -> None:
        super().__init__()
        self.conv, self.bn, self.slotted = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), slotted

    def forward(self, x):
        y = self.bn(self.conv(x))
        return _Slotted(y) if self.slotted else _Stash(out={"y": (y, y.shape, "tag")})


def test_output_inside_a_plain_object_is_verified_and_folded():
    model = _randomize(_ReturnsWrapped())
    x = torch.randn(2, 3, 6, 6)
    expected = model(x).out["y"][0]
    _, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 1 and report.max_abs_diff is not None
    torch.testing.assert_close(model(x).out["y"][0], expected, rtol=1e-5, atol=1e-6)


def test_output_fold_cannot_compare_folds_nothing():
    model = _randomize(_ReturnsWrapped(slotted=True))  # no __dict__: fold cannot reach the value
    _, report = convert.fold(model, example_input=torch.randn(2, 3, 6, 6), return_report=True)
    assert report.num_folded == 0 and "cannot compare" in report.left[0].reason
    assert "_Slotted" in report.left[0].reason


# ---------------------------------------------------------------- weights used elsewhere (issue 19)

class _TiedAutoencoder(nn.Module):
    """The decoder reads the encoder conv's weight (tied weights), from a custom forward."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        return torch.nn.functional.conv_transpose2d(self.enc(x), self.enc[0].weight, padding=1)


@pytest.mark.parametrize("use_example", [False, True])
def test_tied_weight_read_in_a_custom_forward_is_not_folded(use_example):
    torch.manual_seed(6)
    model = _randomize(_TiedAutoencoder())
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    # Folding the norm into enc[0] would hand the decoder the folded weight (output off by ~17 %).
    folded, report = convert.fold(model, example_input=x if use_example else None, return_report=True)
    assert report.num_folded == 0
    reason = report.left[0].reason
    assert ("read outside its own call" in reason) if use_example else ("custom forward" in reason), reason
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=0)


def test_weight_registered_in_another_module_is_not_folded():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.ConvTranspose2d(8, 3, 3, padding=1))
    model[3].weight = model[0].weight  # a tied-weight autoencoder built from modules
    _randomize(model)
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    for example in (None, x):
        folded, report = convert.fold(model, example_input=example, return_report=True)
        reason = report.left[0].reason
        assert report.num_folded == 0, report
        # Without an example the registration shows the tie; with one, the decoder's read shows it first.
        assert ("tied" in reason and "3" in reason) if example is None else ("read outside its own call" in reason)
        assert folded[3].weight is folded[0].weight  # the tie holds
        torch.testing.assert_close(folded(x), expected, rtol=0, atol=0)


class _SmallOutputReadsWeight(nn.Module):
    """A large output and a small second one that reads the conv's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) * 100, self.conv.weight.sum() * 1e-3


def test_small_second_output_that_reads_the_weight_is_not_changed():
    model = _randomize(_SmallOutputReadsWeight())
    x = torch.randn(2, 3, 4, 4)
    big, small = model(x)
    _, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 0 and "read outside its own call" in report.left[0].reason
    big_after, small_after = model(x)
    torch.testing.assert_close(small_after, small, rtol=0, atol=0)  # was changed by ~24 %
    torch.testing.assert_close(big_after, big, rtol=0, atol=0)


class _LargeAndSmallOutputs(nn.Module):
    """A large output the fold does not touch and a small one it does."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 5)
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        return 1e4 * self.head(x.mean((2, 3))), self.bn(self.conv(x))


def test_each_output_tensor_is_verified_with_its_own_tolerance(monkeypatch):
    from channelnorm.tools import fold as fold_module

    real = fold_module._fold_into

    def off_by_a_bit(layer, norm):  # a wrong fold the structural checks cannot see: 1e-2 on outputs of ~1
        real(layer, norm)
        with torch.no_grad():
            layer.bias.add_(1e-2)

    monkeypatch.setattr(fold_module, "_fold_into", off_by_a_bit)
    model = _randomize(_LargeAndSmallOutputs())
    x = torch.randn(2, 3, 4, 4)
    large, small = model(x)
    # Scaled to the largest output (~1e4), 1e-2 would pass; scaled to the small output's own ~3, it fails.
    _, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 0 and "output tensor 1" in report.left[0].reason, report
    large_after, small_after = model(x)
    torch.testing.assert_close(small_after, small, rtol=0, atol=0)
    torch.testing.assert_close(large_after, large, rtol=0, atol=0)


def test_correct_fold_passes_each_tensors_tolerance_in_every_dtype():
    # The other side of the tolerance: a correct fold of a model with outputs of very different sizes
    # is accepted in float64, float32, bfloat16 and float16 (tolerance sqrt(eps) of each output).
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        torch.manual_seed(8)
        model = _randomize(_LargeAndSmallOutputs()).to(dtype)
        x = torch.randn(2, 3, 4, 4, dtype=dtype)
        large, small = model(x)
        _, report = convert.fold(model, example_input=x, return_report=True)
        assert report.num_folded == 1, (dtype, report)
        eps = torch.finfo(dtype).eps
        # Oracle: the unfolded model; one rounding of the folded weight and bias, a few eps of the output.
        torch.testing.assert_close(model(x)[1], small, rtol=8 * eps, atol=8 * eps * small.abs().max().item())


# ---------------------------------------------------------------- nn.Sequential order and names (issue 19)

def test_norm_registered_twice_in_sequentials_is_left_without_example():
    bn = nn.BatchNorm2d(4)  # runs at both places: folding it into one conv would change the other
    model = _randomize(nn.Sequential(nn.Conv2d(3, 4, 1), bn, nn.Conv2d(4, 4, 1), bn))
    x = torch.randn(2, 3, 4, 4)
    expected = model(x)
    for example in (None, x):
        _, report = convert.fold(model, example_input=example, return_report=True)
        assert report.num_folded == 0 and ("several names" in report.left[0].reason if example is None
                                           else "2 times" in report.left[0].reason), report
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_sequential_with_a_child_registered_twice_follows_its_real_order():
    act = nn.ReLU()  # one ReLU at two places: named_children() lists it once and shifts the order
    model = _randomize(nn.Sequential(nn.Conv2d(3, 4, 1), act, nn.Conv2d(4, 4, 1), act, nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 4, 4)
    expected = model(x)
    _, report = convert.fold(model, return_report=True)
    # The norm's input is the ReLU's output, not the second conv's: folding into that conv would
    # move the norm before the ReLU.
    assert report.num_folded == 0 and "ReLU" in report.left[0].reason, report
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


class _NormWithAlias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.norm = self.features[1]  # the same norm under a second name

    def forward(self, x):
        return self.features(x)


def test_norm_under_two_names_is_folded_under_both_names_with_example():
    model = _randomize(_NormWithAlias())
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    _, report = convert.fold(copy.deepcopy(model), return_report=True)
    assert report.num_folded == 0  # below a custom forward, which may call either name
    folded, report = convert.fold(model, example_input=x, return_report=True)
    assert report.num_folded == 1
    assert isinstance(folded.norm, nn.Identity) and folded.norm is folded.features[1]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_plain_subclass_of_linear_folds_but_one_that_transforms_its_weight_does_not():
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear  # a Linear subclass that changes nothing

    class Halved(nn.Linear):
        def forward(self, input):
            return torch.nn.functional.linear(input, self.weight * 0.5, self.bias)

    for layer, folds in ((NonDynamicallyQuantizableLinear(4, 6), True), (Halved(4, 6), False)):
        model = _randomize(nn.Sequential(layer, cn.ChannelNorm(6, channel_axis=-1)))
        x = torch.randn(5, 4)
        expected = model(x)
        _, report = convert.fold(model, return_report=True)
        assert report.num_folded == int(folds), report
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
