"""Keras BatchNormalization weights into a ChannelNorm and back. The oracle is Keras' own inference and
training formulas written out in float64 (Keras itself is not needed); one test also checks against
Keras 3 on the torch backend when it is installed."""
import os

import numpy as np
import pytest
import torch
from torch import nn

import channelnorm as cn
from channelnorm import convert

F64 = torch.float64
RNG = np.random.default_rng(0)


def _keras_weights(shape, scale=True, center=True):
    named = {"gamma": RNG.uniform(0.5, 1.5, shape), "beta": RNG.normal(size=shape),
             "moving_mean": RNG.normal(size=shape), "moving_variance": RNG.uniform(0.5, 2.0, shape)}
    keep = [n for n in named if (n != "gamma" or scale) and (n != "beta" or center)]
    return [named[n].astype(np.float32) for n in keep], named


def _keras_inference(x, named, eps, scale=True, center=True):
    """Keras' ops.batch_normalization with the moving statistics, channels last, in float64."""
    y = (x - named["moving_mean"]) / np.sqrt(named["moving_variance"] + eps)
    return y * (named["gamma"] if scale else 1) + (named["beta"] if center else 0)


@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False), (False, False)])
def test_loaded_layer_computes_keras_inference(scale, center):
    weights, named = _keras_weights(5, scale, center)
    named = {k: v.astype(np.float32).astype(np.float64) for k, v in named.items()}
    norm = convert.from_keras_batchnorm(weights, {"scale": scale, "center": center}, dtype=F64).eval()
    assert norm.channel_axis == -1 and norm.eps == 1e-3 and norm.momentum == pytest.approx(0.01)
    x = RNG.normal(size=(4, 3, 3, 5))
    expected = _keras_inference(x, named, 1e-3, scale, center)
    torch.testing.assert_close(norm(torch.from_numpy(x)), torch.from_numpy(expected), rtol=1e-12, atol=1e-12)
    assert (norm.bias is not None) == center
    if not scale and center:
        assert not norm.weight.requires_grad  # Keras learns no scale: the fixed 1 stays fixed


def test_momentum_and_variance_conventions_in_training():
    """One training step: the running mean follows Keras' formula with Keras' momentum; the running variance
    follows PyTorch's (unbiased batch variance), the documented difference from Keras' biased one."""
    weights, named = _keras_weights(3)
    norm = convert.from_keras_batchnorm(weights, {"momentum": 0.9, "epsilon": 1e-4}, dtype=F64).train()
    x = RNG.normal(size=(6, 4, 3)) * 2 + 1
    norm(torch.from_numpy(x))
    flat = x.reshape(-1, 3)
    mm, mv = (named[k].astype(np.float32).astype(np.float64) for k in ("moving_mean", "moving_variance"))
    np.testing.assert_allclose(norm.running_mean.numpy(), 0.9 * mm + 0.1 * flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(norm.running_var.numpy(), 0.9 * mv + 0.1 * flat.var(0, ddof=1), rtol=1e-12)
    assert not np.allclose(norm.running_var.numpy(), 0.9 * mv + 0.1 * flat.var(0, ddof=0), rtol=1e-6)


def test_tf_keras_axis_list_is_a_tuple_channel_axis():
    """tf.keras' BatchNormalization(axis=[1, 3]) keeps parameters of shape (1, C1, 1, C3)."""
    weights, named = _keras_weights((1, 3, 1, 4))
    norm = convert.from_keras_batchnorm(weights, {"axis": [1, 3], "epsilon": 1e-3}, dtype=F64).eval()
    assert norm.channel_axis == (1, 3) and norm.num_channels == 12
    x = RNG.normal(size=(2, 3, 5, 4))
    named = {k: v.astype(np.float32).astype(np.float64) for k, v in named.items()}
    torch.testing.assert_close(norm(torch.from_numpy(x)), torch.from_numpy(_keras_inference(x, named, 1e-3)),
                               rtol=1e-12, atol=1e-12)


def test_non_trainable_layer_is_frozen_and_round_trips():
    weights, named = _keras_weights(4)
    frozen = convert.from_keras_batchnorm(weights, {"trainable": False, "axis": 1, "epsilon": 1e-5}, dtype=F64)
    assert type(frozen) is cn.FrozenChannelNorm and frozen.channel_axis == 1
    x = RNG.normal(size=(3, 4, 2))
    named = {k: v.astype(np.float32).astype(np.float64) for k, v in named.items()}
    expected = _keras_inference(np.moveaxis(x, 1, -1), named, 1e-5)
    torch.testing.assert_close(frozen.train()(torch.from_numpy(x)), torch.from_numpy(np.moveaxis(expected, -1, 1)),
                               rtol=1e-12, atol=1e-12)
    config, back = convert.to_keras_batchnorm(frozen)
    assert config == {"axis": 1, "epsilon": 1e-5, "center": True, "scale": True, "momentum": 0.99, "trainable": False}
    for a, b in zip(weights, back):
        np.testing.assert_array_equal(a, b)


def test_export_round_trip_and_torch_batchnorm():
    norm = cn.ChannelNorm(4, eps=1e-3, momentum=0.05, channel_axis=-1, bias=False)
    norm(torch.randn(8, 4))
    config, weights = convert.to_keras_batchnorm(norm)
    assert config == {"axis": -1, "epsilon": 1e-3, "center": False, "scale": True, "momentum": 0.95,
                      "trainable": True}
    assert [w.dtype for w in weights] == [np.float32] * 3
    again = convert.from_keras_batchnorm(weights, config)
    for name in ("weight", "running_mean", "running_var"):
        assert torch.equal(getattr(again, name), getattr(norm, name))
    assert again.bias is None and again.momentum == pytest.approx(0.05)
    bn = nn.BatchNorm2d(3)
    config, weights = convert.to_keras_batchnorm(bn)
    assert config["axis"] == 1 and config["epsilon"] == 1e-5 and len(weights) == 4


def test_what_keras_cannot_express_is_refused():
    weights, _ = _keras_weights(3)
    with pytest.raises(ValueError, match="renorm=True is not a plain BatchNormalization: .*cn.BatchRenorm"):
        convert.from_keras_batchnorm(weights, {"renorm": True})
    with pytest.raises(ValueError, match="virtual_batch_size=4 .*cn.GhostNorm"):
        convert.from_keras_batchnorm(weights, {"virtual_batch_size": 4})
    with pytest.raises(ValueError, match="scale=True and center=False has 3 weights .*got 4"):
        convert.from_keras_batchnorm(weights, {"center": False})
    with pytest.raises(ValueError, match=r"unknown weight name\(s\) \['kernel'\]"):
        convert.from_keras_batchnorm({"kernel": weights[0]})
    with pytest.raises(TypeError, match="expected a ChannelNorm, FrozenChannelNorm or nn.BatchNorm\\*d, got GroupNorm"):
        convert.to_keras_batchnorm(cn.GroupNorm(1, 3))
    with pytest.raises(ValueError, match="momentum=None is PyTorch's cumulative average"):
        convert.to_keras_batchnorm(cn.ChannelNorm(3, momentum=None))
    with pytest.raises(ValueError, match="no running statistics"):
        convert.to_keras_batchnorm(cn.ChannelNorm(3, track_running_stats=False))
    with pytest.raises(ValueError, match="takes one axis, the norm has channel_axis=\\(1, 2\\)"):
        convert.to_keras_batchnorm(cn.ChannelNorm(6, channel_axis=(1, 2)))


def test_against_keras_3_on_the_torch_backend():
    """Keras itself (an optional, heavy dependency; skipped without it): a layer trained a few steps in Keras
    loads into a ChannelNorm with the same inference output, and a ChannelNorm trained in PyTorch exports
    into a Keras layer with the same inference output."""
    if os.environ.get("KERAS_BACKEND", "torch") != "torch":
        pytest.skip("Keras is configured for another backend")
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    layer = keras.layers.BatchNormalization(momentum=0.8, epsilon=1e-3)
    layer.build((None, 6, 6, 5))
    for _ in range(3):
        layer(torch.randn(8, 6, 6, 5) * 3 + 2, training=True)
    x = torch.randn(4, 6, 6, 5) * 3 + 2
    expected = torch.as_tensor(keras.ops.convert_to_numpy(layer(x, training=False)))
    ours = convert.from_keras_batchnorm(layer).eval()
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)

    norm = cn.ChannelNorm(5, channel_axis=-1, eps=1e-3)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    for _ in range(3):
        norm(torch.randn(8, 6, 6, 5) * 2 - 1)
    config, weights = convert.to_keras_batchnorm(norm)
    theirs = keras.layers.BatchNormalization(**config)
    theirs.build((None, 6, 6, 5))
    theirs.set_weights(weights)
    got = torch.as_tensor(keras.ops.convert_to_numpy(theirs(x, training=False)))
    torch.testing.assert_close(got, norm.eval()(x), rtol=1e-5, atol=1e-5)
