"""cn.diagnose: findings on cases where the answer is known, metrics against float64 math written out
here, and the model left exactly as it was (state dict bit for bit, training flags, hooks), also when a
batch raises.

Oracles: the formulas of each metric in float64 on the layer inputs captured separately; the same
model with torch's BatchNorm and with this library's ChannelNorm (same numbers); a GhostNorm model at
batch 32 with virtual batches of 2, which normalizes exactly as the plain model at batch 2.
"""
from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import channelnorm as cn
from channelnorm.experiments.models import build_model
from channelnorm.experiments.synthetic import make_images
from channelnorm.experiments.train import Member, TrainPlan, build_cell_model, train_members

F64 = torch.float64
LAYER_CODES = {"stale_running_stats", "small_batch_noise", "non_finite"}


# ---------------------------------------------------------------- helpers

def _snapshot(model: nn.Module):
    """Everything diagnose must leave alone: state dict bytes, each module's training flag, its hook dicts."""
    state = {k: (v.dtype, tuple(v.shape), v.detach().cpu().numpy().tobytes()) for k, v in model.state_dict().items()}
    flags = [(name, m.training) for name, m in model.named_modules()]
    hooks = [(name, {attr: list(d.items()) for attr, d in vars(m).items() if "hook" in attr and isinstance(d, dict)})
             for name, m in model.named_modules()]
    return state, flags, hooks


def _assert_unchanged(model: nn.Module, before) -> None:
    state, flags, hooks = _snapshot(model)
    assert state.keys() == before[0].keys()
    changed = [k for k in state if state[k] != before[0][k]]
    assert not changed, f"state_dict entries changed: {changed}"
    assert flags == before[1]
    assert hooks == before[2]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18Layout(nn.Module):
    """torchvision's resnet18 module tree (conv1, bn1, layer1.0.bn1, ..., layer2.0.downsample.1, fc), at
    ``width`` channels in the first stage instead of 64 so that it runs in a test."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = (width, 2 * width, 4 * width, 8 * width), width
        for i, cout in enumerate(widths):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2),
                                                         BasicBlock(cout, cout, 1)))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Structured inputs (not white noise): a per-image colour and brightness plus a smooth pattern."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-1, 1, size)
    pattern = torch.sin(3 * grid[None, None, :, None] * torch.rand(n, 3, 1, 1, generator=g) * 4
                        + grid[None, None, None, :] * torch.randn(n, 3, 1, 1, generator=g))
    return torch.randn(n, 3, 1, 1, generator=g) * 0.5 + pattern + 0.3 * torch.randn(n, 3, size, size, generator=g)


def _split(x: torch.Tensor, batch: int) -> list[torch.Tensor]:
    return list(x.split(batch))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = ResNet18Layout()
    train = _images(256, seed=1)
    cn.recompute_stats(model, _split(train, 64), progress=False)   # healthy: running = population
    return model, train


def _mlp() -> nn.Sequential:
    """Inputs without spatial axes: batch norm (torch's and this library's) and group/layer norms."""
    return nn.Sequential(
        nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(),
        nn.Linear(32, 32), cn.ChannelNorm(32), nn.ReLU(),
        nn.Linear(32, 32), nn.GroupNorm(4, 32), nn.ReLU(),
        nn.Linear(32, 32), cn.GroupNorm(4, 32), cn.LayerNorm(32), nn.ReLU(),
        nn.Linear(32, 10),
    )


# ---------------------------------------------------------------- metrics against float64 math


def test_metrics_are_the_documented_formulas():
    torch.manual_seed(1)
    lin, bn = nn.Linear(6, 5, dtype=F64), nn.BatchNorm1d(5, dtype=F64)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(5, dtype=F64) + 0.5)
        bn.bias.copy_(torch.randn(5, dtype=F64))
        bn.running_mean.copy_(torch.randn(5, dtype=F64))
        bn.running_var.copy_(torch.rand(5, dtype=F64) * 3 + 0.2)
    model = nn.Sequential(lin, bn)
    batches = [torch.randn(8, 6, dtype=F64) * s + o for s, o in [(1.0, 0.0), (2.0, 1.0), (0.5, -1.0)]]
    report = cn.diagnose(model, batches)

    eps, w, b, rm, rv = bn.eps, bn.weight.detach(), bn.bias.detach(), bn.running_mean, bn.running_var
    with torch.no_grad():
        h = [lin(x) for x in batches]
    stacked = torch.cat(h)
    pm, pv = stacked.mean(0), stacked.var(0, unbiased=True)
    ratio = (rv + eps) / (pv + eps)
    trained = [(t - t.mean(0)) / torch.sqrt(t.var(0, unbiased=False) + eps) * w + b for t in h]
    population = [(t - pm) / torch.sqrt(pv + eps) * w + b for t in h]
    evaluated = [(t - rm) / torch.sqrt(rv + eps) * w + b for t in h]
    diff, pop = torch.cat(trained) - torch.cat(population), torch.cat(population)
    per_channel = diff.square().mean(0).sqrt() / pop.std(0, unbiased=False)
    change = torch.cat(trained) - torch.cat(evaluated)

    row = report.layers[0]
    assert (row.name, row.kind, row.scope) == ("1", "BatchNorm1d", "channel")
    m = row.metrics
    assert m["batches"] == 3 and m["values"] == 24 and m["non_finite_batches"] == 0
    assert m["mean_shift"] == pytest.approx(float(((rm - pm).abs() / torch.sqrt(pv + eps)).max()), rel=1e-10)
    assert m["var_ratio"] == pytest.approx(float(ratio[ratio.log().abs().argmax()]), rel=1e-10)
    assert m["noise"] == pytest.approx(float(per_channel.square().mean().sqrt()), rel=1e-10)
    assert m["noise_max"] == pytest.approx(float(per_channel.max()), rel=1e-10)
    assert report.metrics["output_change"] == pytest.approx(
        float(change.square().sum().sqrt() / torch.cat(evaluated).square().sum().sqrt()), rel=1e-10)
    flips = (torch.cat(trained).argmax(1) != torch.cat(evaluated).argmax(1)).double().mean()
    assert report.metrics["prediction_change"] == pytest.approx(float(flips), abs=1e-12)
    assert report.metrics["batches"] == report.metrics["gap_batches"] == 3 and report.metrics["batch_size"] == 8


def test_torch_batchnorm_and_channelnorm_give_the_same_report():
    torch.manual_seed(2)
    torch_model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1),
                                nn.BatchNorm2d(4))
    ours = cn.convert.replace_norms(copy.deepcopy(torch_model), "channel")
    assert isinstance(ours[1], cn.ChannelNorm)
    batches = [torch.randn(4, 3, 6, 6) + i for i in range(3)]
    a, b = cn.diagnose(torch_model, batches), cn.diagnose(ours, batches)
    assert [r.name for r in a.layers] == [r.name for r in b.layers] == ["1", "4"]
    for ra, rb in zip(a.layers, b.layers):
        assert ra.findings == rb.findings
        for key in ("mean_shift", "var_ratio", "noise", "noise_max"):
            assert ra.metrics[key] == pytest.approx(rb.metrics[key], rel=1e-4), key


# ---------------------------------------------------------------- known answers


def test_healthy_model_at_a_large_batch_has_no_findings(resnet):
    model, train = resnet
    report = cn.diagnose(model, _split(train[:128], 64))
    expected = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert [r.name for r in report.layers] == expected and "layer2.0.downsample.1" in expected
    assert all(r.findings == () for r in report.layers), str(report)
    assert report.findings == (), str(report)
    # Running statistics are those of 256 images, these 128 are half of them: with a per-image offset in every
    # channel a channel's mean has ~128 independent values, so the two differ by ~0.06 standard deviations,
    # ~0.2 in the worst of 128 channels.
    assert max(r.metrics["mean_shift"] for r in report.layers) < 0.25


def test_shifted_running_statistics_are_stale_on_exactly_that_layer(resnet):
    model, train = resnet
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.layer2[0].bn1.running_mean += 3 * model.layer2[0].bn1.running_var.sqrt()
        model.layer3[1].bn2.running_var *= 4
    report = cn.diagnose(model, _split(train, 64))
    assert report.layers_with("stale_running_stats") == ["layer2.0.bn1", "layer3.1.bn2"], str(report)
    rows = {r.name: r.metrics for r in report.layers}
    assert rows["layer2.0.bn1"]["mean_shift"] == pytest.approx(3.0, rel=1e-3)   # running var = population var
    assert rows["layer3.1.bn2"]["var_ratio"] == pytest.approx(4.0, rel=1e-3)
    assert report.findings == ("train_eval_gap",)   # eval now uses the wrong statistics


def test_resnet_at_batch_2_is_noisy_and_at_64_is_not(resnet):
    model, train = resnet
    large = cn.diagnose(model, _split(train[:128], 64))
    small = cn.diagnose(model, _split(train[:32], 2))
    assert large.layers_with("small_batch_noise") == []
    flagged = small.layers_with("small_batch_noise")
    assert {"layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2"} <= set(flagged), str(small)
    for a, b in zip(small.layers, large.layers):
        assert a.metrics["noise"] > 2 * b.metrics["noise"], (a.name, a.metrics["noise"], b.metrics["noise"])
    assert small.findings == ("train_eval_gap",) and large.findings == ()
    assert small.metrics["output_change"] > 3 * large.metrics["output_change"]


def test_batches_of_two_without_spatial_axes_flag_batch_norm_never_group_norm():
    torch.manual_seed(3)
    model = _mlp()
    x = torch.randn(1024, 16)
    cn.recompute_stats(model, _split(x, 256), progress=False)
    small = cn.diagnose(model, _split(x[:64], 2))
    assert small.layers_with("small_batch_noise") == ["1", "4"], str(small)
    assert [r.kind for r in small.layers] == ["BatchNorm1d", "ChannelNorm", "GroupNorm", "GroupNorm", "LayerNorm"]
    for row in small.layers[2:]:   # batch-independent: not measured, never flagged, even at any threshold
        assert row.metrics["noise"] is None and row.metrics["mean_shift"] is None and row.findings == ()
    assert cn.diagnose(model, _split(x[:64], 2), max_noise=1e-9).layers_with("small_batch_noise") == ["1", "4"]
    # with statistics over two values a channel is normalized to +-1: the noise is near its ceiling
    assert all(r.metrics["noise"] > 0.6 for r in small.layers[:2])
    large = cn.diagnose(model, _split(x, 256))
    assert large.layers_with("small_batch_noise") == [] and large.findings == ()
    assert small.findings == ("train_eval_gap",)


def test_a_batch_with_nan_is_reported_and_reaches_no_statistic():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), cn.ChannelNorm(4),
                          nn.Flatten(), nn.Linear(64, 5))
    good = [torch.randn(8, 3, 6, 6) for _ in range(4)]
    cn.recompute_stats(model, good, progress=False)
    bad = good[2].clone()
    bad[0, 1, 2, 3] = float("nan")
    batches = good[:2] + [bad] + good[2:]
    before = _snapshot(model)
    report = cn.diagnose(model, batches)
    _assert_unchanged(model, before)
    assert report.layers_with("non_finite") == ["1", "4"]
    assert all(r.metrics["non_finite_batches"] == 1 and r.metrics["batches"] == 5 for r in report.layers)
    assert report.metrics["non_finite_inputs"] == 1 and report.metrics["gap_batches"] == 4
    # the NaN batch contributes nothing: every number is that of the finite batches alone
    clean = cn.diagnose(model, good)
    for r, c in zip(report.layers, clean.layers):
        assert r.findings == ("non_finite",) and c.findings == ()
        for key in ("values", "mean_shift", "var_ratio", "noise", "noise_max"):
            assert r.metrics[key] == pytest.approx(c.metrics[key], rel=1e-12), key
    assert report.metrics["output_change"] == pytest.approx(clean.metrics["output_change"], rel=1e-12)
    # what diagnose protects against: a training step of torch's BatchNorm on that batch poisons its statistics
    trained = copy.deepcopy(model).train()
    with torch.no_grad():
        trained(bad)
    assert torch.isnan(trained[1].running_mean).all() and torch.isfinite(trained[4].running_mean).all()
    poisoned = cn.diagnose(trained, good)
    assert poisoned.layers_with("stale_running_stats") == ["1"]
    assert math.isnan(poisoned.layers[0].metrics["mean_shift"])


# ---------------------------------------------------------------- the model is left exactly as it was


class _RaisesInEval(nn.Module):
    def forward(self, x):
        if not self.training:
            raise RuntimeError("eval forward fails")
        return x


def _every_norm() -> nn.Module:
    """One of each: torch's and this library's, with and without running statistics, fused, robust."""
    torch.manual_seed(5)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8, momentum=None)
            self.bn_untracked = nn.BatchNorm2d(8, track_running_stats=False)
            self.channel = cn.ChannelNorm(8)
            self.renorm = cn.BatchRenorm(8, warmup_steps=10)
            self.ghost = cn.GhostNorm(8, virtual_batch_size=2)
            self.evo_b0 = cn.EvoNormB0(8)
            self.instance = cn.InstanceNorm(8, track_running_stats=True)
            self.torch_instance = nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
            self.frozen = cn.FrozenChannelNorm(8)
            self.act = cn.ChannelNormAct(8)
            self.group_act = cn.GroupNormAct(2, 8)
            self.frn = cn.FilterResponseNorm(8)
            self.evo_s0 = cn.EvoNormS0(8, num_groups=2)
            self.torch_group = nn.GroupNorm(2, 8)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

        def forward(self, x):
            h = self.ghost(self.renorm(self.channel(self.bn_untracked(self.bn(self.stem(x))))))
            h = self.frozen(self.torch_instance(self.instance(self.evo_b0(h))))
            h = self.group_act(self.act(h, h), h)
            return self.head(self.torch_group(self.evo_s0(self.frn(h))))

    net = Net()
    with torch.no_grad():
        for m in net.modules():
            for name in ("running_mean", "running_var"):
                t = getattr(m, name, None)
                if isinstance(t, torch.Tensor):
                    t.copy_(torch.rand_like(t) + 0.5)
            if getattr(m, "num_batches_tracked", None) is not None:
                m.num_batches_tracked.fill_(3)
    return net


def test_every_norm_kind_gets_a_row_and_the_model_is_unchanged():
    net = _every_norm()
    net.eval()
    net.channel.train()   # mixed flags survive
    calls = []
    net.bn.register_forward_hook(lambda m, i, o: calls.append("bn"))
    net.renorm.register_forward_pre_hook(lambda m, a, k: None, with_kwargs=True)
    before = _snapshot(net)
    report = cn.diagnose(net, [torch.randn(4, 3, 5, 5) for _ in range(3)])
    _assert_unchanged(net, before)
    assert calls   # the user's hooks ran (they are part of the model) and are still there
    names = [r.name for r in report.layers]
    assert names == ["bn", "bn_untracked", "channel", "renorm", "ghost", "evo_b0", "instance", "torch_instance",
                     "frozen", "act", "group_act", "frn", "evo_s0", "torch_group"]
    rows = {r.name: r for r in report.layers}
    batch_stats = {"bn", "bn_untracked", "channel", "renorm", "ghost", "evo_b0", "act"}
    for name, row in rows.items():
        assert (row.metrics["noise"] is not None) == (name in batch_stats), name
        assert row.scope == cn.module_traits(getattr(net, name)).scope
    assert rows["bn_untracked"].metrics["mean_shift"] is None          # no running statistics to be stale
    assert rows["evo_b0"].metrics["mean_shift"] is None and rows["evo_b0"].metrics["var_ratio"] is not None
    assert rows["frozen"].metrics["mean_shift"] is None                # fixed buffers, not running statistics
    assert all(set(r.findings) <= LAYER_CODES for r in report.layers)


def test_the_model_is_unchanged_when_a_batch_raises():
    net = _every_norm().train()
    before = _snapshot(net)
    batches = [torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5), torch.randn(4, 5, 5, 5)]  # third: 5 channels
    with pytest.raises(RuntimeError):
        cn.diagnose(net, batches)
    _assert_unchanged(net, before)
    # raising in the second pass, after a train() forward moved every running statistic
    wrapped = nn.Sequential(net, _RaisesInEval())
    before = _snapshot(wrapped)
    with pytest.raises(RuntimeError, match="eval forward fails"):
        cn.diagnose(wrapped, batches[:2])
    _assert_unchanged(wrapped, before)


# ---------------------------------------------------------------- the experiment's own cells


def test_experiment_cell_noise_is_larger_at_batch_2_and_ghost_batches_measure_the_same():
    torch.manual_seed(6)
    x, y = make_images(256, 16, seed=0, noise=0.05, colour_variation=0.5, contrast_variation=0.3)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    plan = TrainPlan(norm="channel", norm_batch=32, sgd_batch=32, steps=24, members=(Member(0, 0.4),), width=4,
                     log_points=1, curve_points=1, channels_last=False)
    model, _, _ = train_members(plan, x, y)
    cn.recompute_stats(model, _split(x, 64), progress=False)
    held_out = x[:64]
    at_32 = cn.diagnose(model, _split(held_out, 32))
    at_2 = cn.diagnose(model, _split(held_out, 2))
    assert [r.name for r in at_2.layers][:3] == ["stem.1", "blocks.0.norm1", "blocks.0.norm2"]
    for a, b in zip(at_2.layers, at_32.layers):
        assert a.metrics["noise"] > 1.5 * b.metrics["noise"], (a.name, a.metrics["noise"], b.metrics["noise"])
    # The experiment's normalization batch 2 is a ghost norm over virtual batches of 2 inside an SGD batch of 32;
    # diagnose measures what the layer does, so that cell at batch 32 reads as the plain cell at batch 2.
    ghost = build_cell_model(plan, norm_batch=2)
    ghost.load_state_dict(model.state_dict())
    assert isinstance(ghost.stem[1], cn.GhostNorm)
    at_32_ghost = cn.diagnose(ghost, _split(held_out, 32))
    for a, g in zip(at_2.layers, at_32_ghost.layers):
        assert g.metrics["noise"] == pytest.approx(a.metrics["noise"], rel=1e-3), a.name
    # and the group-norm cell has nothing to measure at any batch size
    group_cell = cn.diagnose(build_model("group", 4), _split(held_out, 2))
    assert [r.scope for r in group_cell.layers] == ["group"] * 9
    assert all(r.metrics["noise"] is None and r.findings == () for r in group_cell.layers)


# ---------------------------------------------------------------- inputs, errors, report


def test_batch_forms_give_the_same_report():
    torch.manual_seed(7)

    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))

        def forward(self, x):
            out = self.body(x)
            return out, {"aux": out.sum(1)}

    model = TwoOutputs()
    xs = [torch.randn(5, 4) for _ in range(4)]
    reference = cn.diagnose(model, xs)
    forms = [[(x, torch.zeros(5)) for x in xs], [{"input": x, "target": 0} for x in xs], iter(xs), (x for x in xs)]
    for batches in forms:
        report = cn.diagnose(model, batches)
        assert report.to_dict() == reference.to_dict()
    assert reference.metrics["prediction_change"] is None   # the output is not one (N, K) tensor
    assert reference.metrics["output_change"] > 0
    assert cn.diagnose(model, xs, max_batches=2).metrics["batches"] == 2
    assert cn.diagnose(model, iter(xs), max_batches=2).layers[0].metrics["values"] == 10


def test_bad_arguments_are_clear_errors():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    xs = [torch.randn(5, 4)]
    with pytest.raises(TypeError, match="model must be an nn.Module, got list"):
        cn.diagnose([model], xs)
    with pytest.raises(TypeError, match=r"got one tensor; for a single batch x pass \[x\]"):
        cn.diagnose(model, xs[0])
    with pytest.raises(TypeError, match="iterable of batches, got int"):
        cn.diagnose(model, 3)
    with pytest.raises(ValueError, match=r"needs the key 'input'.*\['features', 'label'\]"):
        cn.diagnose(model, [{"features": xs[0], "label": 1}])
    with pytest.raises(ValueError, match="batches gave no batch"):
        cn.diagnose(model, [])
    with pytest.raises(ValueError, match="max_batches must be a positive integer"):
        cn.diagnose(model, xs, max_batches=0)
    with pytest.raises(ValueError, match=r"max_var_ratio must be a finite number > 1, got 1.0"):
        cn.diagnose(model, xs, max_var_ratio=1.0)
    for name in ("max_mean_shift", "max_noise", "max_output_change"):
        for bad in (0, -1.0, float("nan"), float("inf"), "0.5", True):
            with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
                cn.diagnose(model, xs, **{name: bad})
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_stale'"):
        cn.diagnose(model, xs, max_stale=1.0)
    with pytest.raises(ValueError, match="unknown finding 'stale'"):
        cn.diagnose(model, xs).layers_with("stale")


def test_report_table_dict_and_vocabulary():
    torch.manual_seed(8)
    model = _mlp()
    x = torch.randn(256, 16)
    cn.recompute_stats(model, _split(x, 128), progress=False)
    with torch.no_grad():
        model[4].running_mean += 2.0
    report = cn.diagnose(model, _split(x[:32], 2))
    assert set(cn.DiagnosisReport.FINDINGS) == LAYER_CODES | {"train_eval_gap"}
    text = str(report)
    lines = text.splitlines()
    assert "16 batches of 2" in lines[0] and "train_eval_gap" in lines[0]
    assert lines[1].split()[:3] == ["layer", "kind", "mean"]
    row_4 = next(line for line in lines if line.startswith("4 "))
    assert "ChannelNorm" in row_4 and "stale_running_stats, small_batch_noise" in row_4
    row_7 = next(line for line in lines if line.startswith("7 "))
    assert row_7.split()[1:6] == ["GroupNorm", "-", "-", "-", "0"] and row_7.rstrip().endswith("-")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["findings"] == ["train_eval_gap"] and data["thresholds"]["max_noise"] == 0.25
    assert [row["name"] for row in data["layers"]] == ["1", "4", "7", "10", "11"]
    assert data["layers"][1]["findings"] == ["stale_running_stats", "small_batch_noise"]
    assert data["layers"][1]["metrics"]["mean_shift"] == report.layers[1].metrics["mean_shift"]


def test_plot_noise_writes_a_png(tmp_path, monkeypatch):
    torch.manual_seed(9)
    model = _mlp()
    x = torch.randn(128, 16)
    reports = [cn.diagnose(model, _split(x[:16 * b], b)) for b in (16, 2, 4)]
    path = cn.DiagnosisReport.plot_noise(reports, tmp_path / "noise.png")
    assert path == tmp_path / "noise.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="got no reports"):
        cn.DiagnosisReport.plot_noise([], tmp_path / "none.png")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'channelnorm\[experiments\]'"):
        cn.DiagnosisReport.plot_noise(reports, tmp_path / "again.png")


def test_reference_benchmark_runs(load_script):
    """benchmarks/diagnose_reference.py (the numbers behind the defaults, and the cost) at toy sizes."""
    script = load_script(Path(__file__).resolve().parents[2] / "benchmarks" / "diagnose_reference.py")
    lines = []
    script.main(["--steps", "2", "--images", "32", "--cost-size", "32", "--cost-batches", "1", "--repeat", "1"],
                log=lines.append)
    text = "\n".join(lines)
    assert "--steps 2" in text and "torch " + torch.__version__ in text
    assert "| stem.1 |" in text and "| **output_change** |" in text and "cn.diagnose" in text
