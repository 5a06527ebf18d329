"""A module checks its settings at construction and its input once per call: the functional form's
``*_validated`` entry points skip what the module checked already, and the errors stay those of the
functional form (its op name, the channel axis as the module was given it)."""
import pytest
import torch

import channelnorm as cn
from channelnorm import _checks

MODULES = {
    "ChannelNorm": lambda: cn.ChannelNorm(4),
    "ChannelNormAct": lambda: cn.ChannelNormAct(4),
    "GroupNorm": lambda: cn.GroupNorm(2, 4),
    "GroupNormAct": lambda: cn.GroupNormAct(2, 4),
    "LayerNorm2d": lambda: cn.LayerNorm2d(4),
    "InstanceNorm": lambda: cn.InstanceNorm(4, track_running_stats=True),
    "GhostNorm": lambda: cn.GhostNorm(4, virtual_batch_size=2),
    "BatchRenorm": lambda: cn.BatchRenorm(4),
    "FilterResponseNorm": lambda: cn.FilterResponseNorm(4),
    "EvoNormS0": lambda: cn.EvoNormS0(4, num_groups=2),
    "EvoNormB0": lambda: cn.EvoNormB0(4),
}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_checks_its_input_once_per_call(name, training, monkeypatch):
    calls = []
    check = _checks.input_tensor

    def counted(*args, **kwargs):
        calls.append(args[2])
        return check(*args, **kwargs)

    monkeypatch.setattr(_checks, "input_tensor", counted)
    norm = MODULES[name]().train(training)
    x = torch.randn(4, 4, 3, 3)
    oracle = MODULES[name]().train(training)
    oracle.backend = "reference"
    torch.testing.assert_close(norm(x), oracle(x), rtol=1e-5, atol=1e-5)
    assert calls[:1] == [name] and len(calls) == 2, calls  # one check per call: norm's, then oracle's


@pytest.mark.parametrize("make, op", [(lambda: cn.GroupNormAct(2, 4, channel_axis=-3), "group_norm_act"),
                                      (lambda: cn.GhostNorm(4, channel_axis=-3, virtual_batch_size=2), "ghost_norm"),
                                      (lambda: cn.FilterResponseNorm(4, channel_axis=-3), "filter_response_norm"),
                                      (lambda: cn.EvoNormS0(4, num_groups=2, channel_axis=-3), "evonorm_s0"),
                                      (lambda: cn.EvoNormB0(4, channel_axis=-3), "evonorm_b0")])
def test_a_per_sample_module_names_its_channel_axis_as_given_when_it_is_the_batch_axis(make, op):
    # channel_axis=-3 is axis 0 of a rank-3 input: the batch axis, which per-sample statistics need.
    with pytest.raises(ValueError, match=rf"^{op}: statistics are per sample along axis 0, so channel_axis cannot be 0 "
                                         rf"\(got channel_axis=-3 for shape \(4, 3, 5\)\)$"):
        make().train()(torch.randn(4, 3, 5))


@pytest.mark.parametrize("make, op, plain", [
    (lambda: cn.ChannelNormAct(4), "channel_norm_act", lambda x: torch.nn.functional.batch_norm(x, None, None, training=True)),
    (lambda: cn.GroupNormAct(2, 4), "group_norm_act", lambda x: torch.nn.functional.group_norm(x, 2)),
])
def test_a_fused_module_checks_the_residual_of_each_call(make, op, plain):
    norm, x, residual = make(), torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    with pytest.raises(ValueError, match=rf"^{op}: residual shape \(3, 4\) must equal the input shape \(3, 4, 5\)$"):
        norm(x, torch.randn(3, 4))
    with pytest.raises(TypeError, match=rf"^{op}: residual must have the input's dtype and device"):
        norm(x, residual.double())
    # The oracle: torch's own norm (weight 1, bias 0, as a new module's), the residual added, then ReLU.
    torch.testing.assert_close(norm(x, residual), torch.relu(plain(x) + residual), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_weight_resized_after_construction_fails_naming_both_sizes(name, backend):
    # Checked once per call means the module trusts its own parameters; a user who swaps one for a
    # tensor of another size still gets an error that names 5 and 4 (torch's own words on the native
    # path, as nn.BatchNorm2d gives; ours on the reference path), never a silent broadcast or a count of
    # N * C elements (what torch.instance_norm would say).
    norm = MODULES[name]().train()
    norm.backend = backend
    norm.weight = torch.nn.Parameter(torch.ones(5))
    with pytest.raises((ValueError, RuntimeError)) as caught:
        norm(torch.randn(2, 4, 3, 3))
    message = str(caught.value)
    assert "5" in message and "4" in message and "10" not in message and "8 " not in message, message


SETTINGS = {  # module -> (setting, a bad value, the error's words, a good value)
    "ChannelNorm": [("eps", -1.0, "eps must be a finite number > 0, got -1.0", 1e-3),
                    ("momentum", 2.0, r"momentum must be a number in \[0, 1\] or None, got 2.0", None),
                    ("channel_axis", "x", "channel_axis must be an int, got str 'x'", -3)],
    "ChannelNormAct": [("eps", float("nan"), "eps must be a finite number > 0, got nan", 1e-3),
                       ("momentum", -0.5, r"momentum must be a number in \[0, 1\] or None, got -0.5", 0.5)],
    "GroupNorm": [("num_groups", 3, r"num_channels \(4\) must be divisible by num_groups \(3\)", 4),
                  ("eps", 0.0, "eps must be a finite number > 0, got 0.0", 1e-3)],
    "GroupNormAct": [("num_groups", 0, "num_groups must be a positive integer, got 0", 1)],
    "LayerNorm2d": [("eps", -1e-6, "eps must be a finite number > 0", 1e-3)],
    "InstanceNorm": [("momentum", float("inf"), r"momentum must be a number in \[0, 1\]", 0.3)],
    "GhostNorm": [("virtual_batch_size", 0, "virtual_batch_size must be a positive integer, got 0", 1)],
    "BatchRenorm": [("rmax", 0.5, "rmax must be a finite number >= 1, got 0.5", 2.0),
                    ("dmax", -1, "dmax must be a finite number >= 0, got -1", 0.5),
                    ("warmup_steps", -2, "warmup_steps must be an integer >= 0, got -2", 0)],
}


@pytest.mark.parametrize("name, setting, bad, message, good",
                         [(n, *case) for n, cases in SETTINGS.items() for case in cases])
def test_a_setting_assigned_after_construction_is_checked_when_set_and_then_used(name, setting, bad, message, good):
    # forward trusts its settings (checked once), so a later assignment is checked where it happens: the
    # error names the value and the module keeps its old setting; a good value is what forward then uses.
    norm = MODULES[name]().train()
    before = getattr(norm, setting)
    with pytest.raises((ValueError, TypeError), match=message):
        setattr(norm, setting, bad)
    assert getattr(norm, setting) == before
    setattr(norm, setting, good)
    oracle = MODULES[name]().train()
    oracle.backend = "reference"
    object.__setattr__(oracle, setting, good)      # the oracle takes the value without our check
    x = torch.randn(4, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(norm(x), oracle(x), rtol=1e-5, atol=1e-5)
    if norm.training and getattr(norm, "running_mean", None) is not None and setting != "momentum":
        torch.testing.assert_close(norm.running_mean, oracle.running_mean)
