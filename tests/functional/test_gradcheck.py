"""gradcheck/gradgradcheck of the reference backend (and the native one where torch supports it) in float64."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import channelnorm.functional as F

F64 = torch.float64


def _inputs(shape, channel_axis=1):
    C = shape[channel_axis]
    x = (torch.randn(shape, dtype=F64) * 2 + 1).requires_grad_()
    w = torch.empty(C, dtype=F64).uniform_(0.5, 1.5).requires_grad_()
    b = torch.randn(C, dtype=F64).requires_grad_()
    return x, w, b


CASES = {
    "channel_train": lambda x, w, b, be, ax: F.channel_norm(x, None, None, w, b, training=True, channel_axis=ax,
                                                            backend=be),
    "channel_eval": lambda x, w, b, be, ax: F.channel_norm(x, torch.linspace(-1, 1, x.shape[ax], dtype=F64),
                                                           torch.linspace(0.5, 2, x.shape[ax], dtype=F64), w, b,
                                                           training=False, channel_axis=ax, backend=be),
    "group": lambda x, w, b, be, ax: F.group_norm(x, 2, w, b, channel_axis=ax, backend=be),
    "layer": lambda x, w, b, be, ax: F.layer_norm(x, w, b, channel_axis=ax, backend=be),
    "instance": lambda x, w, b, be, ax: F.instance_norm(x, None, None, w, b, channel_axis=ax, backend=be),
}


SHAPES = [((3, 4, 5), 1), ((2, 3, 2, 4), -1), ((4, 4), 1)]


# Instance norm of an (N, C) input has a single value per instance, so it is left out there.
@pytest.mark.parametrize("case,shape,axis", [(c, s, a) for c in CASES for s, a in SHAPES
                                             if not (c == "instance" and len(s) == 2)])
def test_reference_gradcheck_and_gradgradcheck(case, shape, axis):
    x, w, b = _inputs(shape, axis)
    fn = lambda x, w, b: CASES[case](x, w, b, "reference", axis)  # noqa: E731
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("case", CASES)
def test_native_gradcheck(case):
    x, w, b = _inputs((3, 4, 5))
    assert gradcheck(lambda x, w, b: CASES[case](x, w, b, "native", 1), (x, w, b))


def test_channels_last_reference_gradcheck():
    x, w, b = _inputs((2, 4, 3, 3))
    x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert gradcheck(lambda x, w, b: CASES["channel_train"](x, w, b, "reference", 1), (x, w, b))


def _spatial_major(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values with the spatial axes outermost and (N, C) innermost in memory, as the gradient of
    InstanceNorm -> flatten(2).permute(2, 0, 1) -> nn.MultiheadAttention (issue 19)."""
    order = list(range(2, t.ndim)) + [0, 1]
    return t.permute(order).contiguous().permute([order.index(d) for d in range(t.ndim)])


@pytest.mark.parametrize("shape,axis,grad_layout", [
    (shape, axis, layout) for shape, axis in [((3, 4, 2, 3), 1), ((2, 3, 2, 4), -1), ((3, 2, 5), 1)]
    for layout in ("contiguous", "channels_last", "spatial_major") if layout != "channels_last" or len(shape) == 4])
def test_native_instance_norm_gradgradcheck_for_every_incoming_gradient_layout(shape, axis, grad_layout):
    """Double backward of native instance norm (torch's own batch_norm formulas) against finite
    differences, the incoming gradient laid out as named; the first backward is differentiated at it, so a
    misread gradient layout fails too (the spatial-major one did when torch's kernel saw the spatial axes)."""
    x, w, b = _inputs(shape, axis)
    g = torch.randn(shape, dtype=F64)
    if grad_layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    elif grad_layout == "spatial_major":
        g = _spatial_major(g.movedim(axis, 1)).movedim(1, axis)
    fn = lambda x, w, b: CASES["instance"](x, w, b, "native", axis)  # noqa: E731
    assert gradgradcheck(fn, (x, w, b), grad_outputs=(g.requires_grad_(),))
