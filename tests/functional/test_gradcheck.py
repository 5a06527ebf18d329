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
