"""layer_norm_2d: per-position statistics over the channels (timm's LayerNorm2d) on every CPU backend.

The oracle is timm's own formula, ``F.layer_norm`` over the channels-last view, in float64.
"""
import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import channelnorm.functional as F
from backends import CPU_BACKENDS

F64 = torch.float64
# (shape, channel_axis): ranks 2 to 5, the channel axis first, in the middle, last, negative, and 0.
CASES = [((6, 5), 1), ((4, 3, 7), 1), ((3, 8, 4, 5), 1), ((3, 4, 5, 8), -1), ((2, 3, 6, 4, 2), 2),
         ((2, 6, 3, 4, 2), 1), ((5, 3, 4), 0)]
# Tolerances against the float64 oracle, tied to the output dtype's precision (unit-scale outputs).
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=4e-3),
       torch.bfloat16: dict(rtol=1.6e-2, atol=3.2e-2)}


def timm_formula(x, weight, bias, eps, axis):
    """timm's LayerNorm2d generalised: F.layer_norm over the channel axis moved last, in float64."""
    xm = x.to(F64).movedim(axis, -1)
    w = None if weight is None else weight.to(F64)
    b = None if bias is None else bias.to(F64)
    return TF.layer_norm(xm, (xm.shape[-1],), w, b, eps).movedim(-1, axis)


def _affine(c, dtype=torch.float32):
    return torch.empty(c, dtype=dtype).uniform_(0.5, 1.5), torch.randn(c, dtype=dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ("auto",))
@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_timm_formula(backend, shape, axis, dtype):
    x = (torch.randn(shape) * 3 + 2).to(dtype)
    w, b = _affine(shape[axis], dtype)
    y = F.layer_norm_2d(x, w, b, eps=1e-6, channel_axis=axis, backend=backend)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.to(F64), timm_formula(x, w, b, 1e-6, axis), **TOL[dtype])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_without_affine_and_float64_is_exact(backend):
    x = torch.randn(3, 5, 4, 4, dtype=F64)
    y = F.layer_norm_2d(x, eps=1e-5, backend=backend)
    torch.testing.assert_close(y, timm_formula(x, None, None, 1e-5, 1), rtol=1e-12, atol=1e-12)
    # Each position has mean 0 and biased variance 1/(1 + eps/var) over its channels.
    torch.testing.assert_close(y.mean(1), torch.zeros(3, 4, 4, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_statistics_are_per_position_not_shared(backend):
    """Changing one position (or one sample) changes no other position's output."""
    x = torch.randn(2, 6, 3, 3)
    y = F.layer_norm_2d(x, backend=backend)
    x2 = x.clone()
    x2[1, :, 2, 0] = x2[1, :, 2, 0] * 50 + 7
    y2 = F.layer_norm_2d(x2, backend=backend)
    changed = (y2 - y).abs().amax(1) > 0
    assert changed[1, 2, 0] and changed.sum() == 1


@pytest.mark.parametrize("mean", [0.0, 100.0, 1e4])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("c", [3, 96])
def test_native_is_as_accurate_as_the_reference_in_float32(mean, channels_last, c):
    """Why auto may send CPU calls to torch's layer_norm: against the float64 oracle its error stays within
    3x the reference's (measured ratio up to 1.5x at mean 1e4; the batch_norm kernels the dispatch avoids
    are 10-100x worse), and the reference stays within float32 rounding of the mean's magnitude."""
    x = torch.randn(2, c, 7, 7) + mean
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    oracle = timm_formula(x, None, None, 1e-6, 1)
    err = {be: (F.layer_norm_2d(x, backend=be).to(F64) - oracle).abs().max().item() for be in CPU_BACKENDS}
    # The inputs are exact in float32; centering them costs a few ulps of the mean (measured: 7 at C=3).
    assert err["reference"] <= 32 * torch.finfo(torch.float32).eps * max(mean, 1.0)
    assert err["native"] <= 3 * err["reference"] + 1e-6, err


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape,axis", [((3, 4, 5), 1), ((2, 3, 2, 4), -1), ((4, 4), 1), ((3, 2, 4), 0)])
def test_gradcheck(backend, shape, axis):
    x = (torch.randn(shape, dtype=F64) * 2 + 1).requires_grad_()
    w = torch.empty(shape[axis], dtype=F64).uniform_(0.5, 1.5).requires_grad_()
    b = torch.randn(shape[axis], dtype=F64).requires_grad_()
    fn = lambda x, w, b: F.layer_norm_2d(x, w, b, channel_axis=axis, backend=backend)  # noqa: E731
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("backend", CPU_BACKENDS + ("auto",))
def test_memory_format_is_preserved(backend):
    x = torch.randn(2, 6, 4, 5).contiguous(memory_format=torch.channels_last)
    y = F.layer_norm_2d(x, *_affine(6), backend=backend)
    assert y.is_contiguous(memory_format=torch.channels_last)
    z = F.layer_norm_2d(x.contiguous(), backend=backend)
    assert z.is_contiguous()
    # A non-dense view comes back dense, laid out as torch.empty_like lays it out (as torch's norms do).
    strided = torch.randn(2, 6, 4, 10)[..., ::2]
    assert F.layer_norm_2d(strided, backend=backend).stride() == torch.empty_like(strided).stride()


def test_empty_input_gives_an_empty_output_with_gradients():
    w, b = (t.requires_grad_() for t in _affine(4))
    y = F.layer_norm_2d(torch.randn(0, 4, 3, 3), w, b)
    assert y.shape == (0, 4, 3, 3)
    y.sum().backward()
    assert w.grad is not None and float(w.grad.abs().sum()) == 0.0


def test_bad_input_gets_clear_errors():
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="backend='triton' cannot run layer_norm_2d.*'native', 'reference'"):
        F.layer_norm_2d(x, backend="triton")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        F.layer_norm_2d(x, backend="fast")
    with pytest.raises(ValueError, match="rank >= 2"):
        F.layer_norm_2d(torch.randn(4))
    with pytest.raises(TypeError, match="floating"):
        F.layer_norm_2d(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="expected input with 5 channels on axis 1.*got 4"):
        F.layer_norm_2d(x, torch.ones(5))
    with pytest.raises(ValueError, match="channel_axis 3 is out of range for input of rank 3"):
        F.layer_norm_2d(x, channel_axis=3)
    with pytest.raises(ValueError, match="eps must be a finite number > 0, got 0"):
        F.layer_norm_2d(x, eps=0)
