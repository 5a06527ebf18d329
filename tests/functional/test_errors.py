"""Every bad input of docs/design.md §3.4 is a clear exception that names the offending values."""
import pytest
import torch

import channelnorm as cn
import channelnorm.functional as F


@pytest.mark.parametrize("make", [
    lambda: cn.ChannelNorm(3), lambda: cn.GroupNorm(1, 3), lambda: cn.LayerNorm(3), lambda: cn.InstanceNorm(3),
    lambda: cn.ChannelNorm(3, affine=False, track_running_stats=False), lambda: cn.GroupNorm(3, 3, affine=False),
])
def test_wrong_channel_count_names_expected_and_got(make):
    with pytest.raises(ValueError, match=r"expected input with 3 channels on axis 1, got 5 channels"):
        make()(torch.randn(2, 5, 4))


@pytest.mark.parametrize("make", [lambda: cn.ChannelNorm(3), lambda: cn.GroupNorm(3, 3), lambda: cn.InstanceNorm(3)])
def test_rank_below_two(make):
    with pytest.raises(ValueError, match=r"rank >= 2.*\(3,\)"):
        make()(torch.randn(3))


def test_single_value_per_channel_in_training():
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*\(1, 3\)"):
        cn.ChannelNorm(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"more than 1 value per instance.*\(4, 3, 1\)"):
        cn.InstanceNorm(3)(torch.randn(4, 3, 1))
    cn.ChannelNorm(3).eval()(torch.randn(1, 3))  # eval uses running statistics: fine


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("make", [lambda: cn.ChannelNorm(3), lambda: cn.GroupNorm(1, 3), lambda: cn.InstanceNorm(3)])
def test_integer_and_bool_inputs(make, dtype):
    with pytest.raises(TypeError, match=str(dtype)):
        make()(torch.ones(2, 3, 4, dtype=dtype))


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"num_channels \(6\).*num_groups \(4\)"):
        cn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"num_channels \(6\).*num_groups \(4\)"):
        F.group_norm(torch.randn(2, 6, 3), 4)
    with pytest.raises(ValueError, match="num_groups must be a positive integer, got 0"):
        cn.GroupNorm(0, 6)


def test_unknown_kind_and_backend_list_choices():
    with pytest.raises(ValueError, match=r"unknown norm kind 'bacth'.*channel.*group.*instance.*layer.*none"):
        cn.create_norm("bacth", 4)
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'.*'auto'.*'reference'.*'native'.*'triton'"):
        cn.ChannelNorm(4, backend="cuda")
    with pytest.raises(ValueError, match=r"unknown backend 'fast'"):
        F.channel_norm(torch.randn(2, 4), None, None, training=True, backend="fast")


def test_unknown_kwargs_name_the_kind():
    with pytest.raises(TypeError, match=r"create_norm\('channel'\).*num_groups.*accepts: eps"):
        cn.create_norm("channel", 4, num_groups=2)


def test_channel_axis_checks():
    with pytest.raises(ValueError, match=r"channel_axis 3 is out of range for input of rank 3"):
        cn.ChannelNorm(4, channel_axis=3)(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match=r"channel_axis cannot be 0"):
        cn.GroupNorm(2, 4, channel_axis=0)(torch.randn(4, 2, 3))
    with pytest.raises(TypeError, match=r"channel_axis must be an int, got float"):
        cn.ChannelNorm(4, channel_axis=1.0)


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -1.0}, r"eps must be a finite number > 0, got -1.0"),
    ({"eps": float("nan")}, r"eps must be a finite number"),
    # > 0 as Python floats, but 0 (or a flushed subnormal) in float32, where statistics are computed
    ({"eps": 1e-46}, r"eps=1e-46 is below float32's smallest normal number"),
    ({"eps": 1e-40}, r"eps=1e-40 is below float32's smallest normal number"),
    ({"momentum": 1.5}, r"momentum must be a number in \[0, 1\] or None, got 1.5"),
    ({"num_channels": 0}, r"num_channels must be a positive integer, got 0"),
    ({"num_channels": 2.5}, r"num_channels must be a positive integer, got 2.5"),
])
def test_constructor_arguments(kwargs, match):
    args = {"num_channels": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        cn.ChannelNorm(**args)


@pytest.mark.parametrize("eps", [1e-46, 1e-320])
def test_functional_eps_that_is_zero_in_float32_is_refused(eps):
    x = torch.randn(2, 4, 3, dtype=torch.float64)  # refused for float64 input too: one rule for every dtype
    for call in (lambda: F.channel_norm(x, None, None, training=True, eps=eps),
                 lambda: F.group_norm(x, 2, eps=eps),
                 lambda: F.instance_norm(x, eps=eps)):
        with pytest.raises(ValueError, match=rf"eps={eps!r} is below float32's smallest normal"):
            call()


def test_functional_argument_checks():
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"expected input with 3 channels on axis 1 \(the size of running_mean\), got 4"):
        F.channel_norm(x, torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(ValueError, match=r"weight must be 1-D.*got shape \(4, 1\)"):
        F.channel_norm(x, None, None, weight=torch.ones(4, 1), training=True)
    with pytest.raises(ValueError, match="training=False needs running_mean"):
        F.channel_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="both be tensors or both be None"):
        F.channel_norm(x, torch.zeros(4), None, training=True)
    with pytest.raises(ValueError, match="momentum=None .* needs num_batches_tracked"):
        F.channel_norm(x, torch.zeros(4), torch.ones(4), training=True, momentum=None)
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        F.channel_norm([[1.0, 2.0]], None, None, training=True)


def test_explicit_backend_that_cannot_run_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"backend='triton' cannot run channel_norm here: .+"):
        cn.ChannelNorm(3, backend="triton")(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"backend='native' cannot run instance_norm here: .*rank 2"):
        F.instance_norm(torch.randn(2, 3), torch.zeros(3), torch.ones(3), use_input_stats=False, backend="native")


@pytest.mark.parametrize("kind", ["channel", "layer", "instance", "frn", "batch_renorm", "ghost", "evonorm_b0"])
def test_an_eps_too_large_for_a_float_is_a_value_error_naming_it(kind):
    # 10**400 is a valid Python int; float() of it overflows (it was an OverflowError traceback).
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0, got 1000000000.*too large for a float"):
        cn.create_norm(kind, 8, eps=10 ** 400)
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0, got an integer of 16610 bits"):
        cn.create_norm(kind, 8, eps=10 ** 5000)  # too long even to print: described by its size


def test_huge_integers_in_other_number_arguments_are_value_errors():
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0, got 10000"):
        F.channel_norm(x, None, None, training=True, eps=10 ** 400)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\] or None, got 10000"):
        cn.ChannelNorm(4, momentum=10 ** 400)
    with pytest.raises(ValueError, match=r"rmax must be a finite number >= 1, got 10000"):
        F.batch_renorm(x, torch.zeros(4), torch.ones(4), training=True, num_batches_tracked=torch.tensor(0),
                       rmax=10 ** 400)
    with pytest.raises(ValueError, match=r"decay must be a number in \[0, 1\], got 10000"):
        cn.momentum_from_decay(10 ** 400)
    assert cn.ChannelNorm(4, eps=2).eps == 2.0  # an ordinary int is still taken
