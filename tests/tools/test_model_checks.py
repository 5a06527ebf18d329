"""Model tools say what they cannot do: fold on a model in training mode, freeze on norms without running
statistics, and any tool on a lazy norm that has not run yet."""
import copy
import warnings

import pytest
import torch
from torch import nn

import channelnorm as cn
from channelnorm import convert


def test_fold_refuses_a_model_in_training_mode_naming_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), cn.ChannelNorm(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    before = copy.deepcopy(model.state_dict())
    for example in (None, torch.randn(2, 3, 4, 4)):
        with pytest.raises(ValueError, match=r"fold: the model is in training mode, and norm layer '1' and 1 more "
                                             r"with it, where it normalizes with batch statistics.*model\.eval\(\)"):
            convert.fold(model, example)
    assert type(model[1]) is cn.ChannelNorm and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.eval()
    model[3].train()  # one norm switched back on purpose in an eval model: reported, not refused
    _, report = convert.fold(model, torch.randn(2, 3, 4, 4), return_report=True)
    assert [p.norm for p in report.folded] == ["1"] and "training mode" in report.left[0].reason
    # Norms whose training mode changes nothing fold can do are not refused: a frozen norm, GroupNorm.
    frozen = nn.Sequential(nn.Conv2d(3, 4, 1), cn.FrozenChannelNorm(4), nn.Conv2d(4, 4, 1), cn.GroupNorm(2, 4))
    assert convert.fold(frozen.train(), torch.randn(2, 3, 4, 4), return_report=True)[1].num_folded == 1


def test_freeze_warns_about_the_norms_it_leaves():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), cn.GroupNorm(2, 4), cn.LayerNorm2d(4),
                          cn.ChannelNorm(4, track_running_stats=False), cn.ChannelNormAct(4),
                          cn.InstanceNorm(4, track_running_stats=True))
    with pytest.warns(UserWarning, match=r"freeze left 5 norm layer\(s\) as they were: '2' \(GroupNorm: no running "
                                         r"statistics.*'3' \(LayerNorm2d.*'4' \(ChannelNorm.*and 2 more") as record:
        convert.freeze(model)
    assert len(record) == 1 and type(model[1]) is cn.FrozenChannelNorm
    message = str(record[0].message)
    assert "ChannelNormAct" not in message  # only the first three are spelled out
    with pytest.warns(UserWarning, match="'5' \\(ChannelNormAct: a fused norm \\+ activation block\\); '6' "
                                         "\\(InstanceNorm: its running statistics are instance-scope"):
        convert.freeze(nn.Sequential(nn.Conv2d(3, 4, 1), *list(model)[1:2], *[nn.Identity()] * 3,
                                     cn.ChannelNormAct(4), cn.InstanceNorm(4, track_running_stats=True)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert.freeze(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), cn.ChannelNorm(4)))  # all frozen: silent


TOOLS = {
    "replace_norms": lambda m: convert.replace_norms(m, "group", num_groups=2),
    "to_sync": convert.to_sync,
    "freeze": convert.freeze,
    "fold": lambda m: convert.fold(m.eval()),
    "recompute_stats": lambda m: cn.recompute_stats(m, [torch.randn(2, 3, 4, 4)], progress=False),
}


@pytest.mark.parametrize("tool", TOOLS)
def test_lazy_norms_not_yet_run_are_named(tool):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.LazyBatchNorm2d()))
    with pytest.raises(ValueError, match=rf"{tool}: norm layer '1.0' is a LazyBatchNorm2d whose channel count is "
                                         rf"not known before its first forward; run the model once.*BatchNorm2d"):
        TOOLS[tool](model)
    model(torch.randn(2, 3, 4, 4))  # materialized: it is an nn.BatchNorm2d now, and every tool takes it
    TOOLS[tool](model)
