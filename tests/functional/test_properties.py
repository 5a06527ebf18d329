"""Property tests: random shapes, channel axes and scopes against a numpy float64 oracle.

The oracle below is written independently of ``channelnorm.ops.reference``: it moves the channel
axis to the end with numpy and reduces explicitly.
"""
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import channelnorm.functional as F

BACKENDS = st.sampled_from(["reference", "native"])


def numpy_norm(x: np.ndarray, axis: int, groups: int, per_sample: bool, eps: float, w, b) -> np.ndarray:
    moved = np.moveaxis(x, axis, -1)  # (N, ..., C); axis 0 stays the batch axis when axis != 0
    C = moved.shape[-1]
    grouped = moved.reshape(moved.shape[:-1] + (groups, C // groups))
    reduce = tuple(range(1 if per_sample else 0, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean = grouped.mean(axis=reduce, keepdims=True)
    var = ((grouped - mean) ** 2).mean(axis=reduce, keepdims=True)
    y = ((grouped - mean) / np.sqrt(var + eps)).reshape(moved.shape) * w + b
    return np.moveaxis(y, -1, axis)


@st.composite
def problems(draw, per_sample):
    """(shape, channel_axis, seed); the channel axis may be given negative, never 0 when per sample."""
    rank = draw(st.integers(2, 5))
    shape = [draw(st.integers(1, 4)) for _ in range(rank)]
    axis = draw(st.integers(1 if per_sample else 0, rank - 1))
    shape[axis] = draw(st.sampled_from([2, 3, 4, 6]))
    other = next(d for d in range(rank) if d != axis)
    shape[other] = max(shape[other], 2)  # at least 2 values per channel, so training statistics exist
    negative = draw(st.booleans())
    return tuple(shape), axis - rank if negative else axis, draw(st.integers(0, 2**16))


@settings(max_examples=60, deadline=None)
@given(problems(per_sample=False), BACKENDS)
def test_channel_norm_matches_numpy(problem, backend):
    shape, axis, seed = problem
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1
    C = shape[axis]
    w, b = torch.rand(C, generator=g, dtype=torch.float64) + 0.5, torch.randn(C, generator=g, dtype=torch.float64)
    y = F.channel_norm(x, None, None, w, b, training=True, channel_axis=axis, backend=backend)
    expected = numpy_norm(x.numpy(), axis % len(shape), C, False, 1e-5, w.numpy(), b.numpy())
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(problems(per_sample=True), BACKENDS, st.integers(0, 2))
def test_group_norm_matches_numpy(problem, backend, group_choice):
    shape, axis, seed = problem
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 - 1
    C = shape[axis]
    groups = [1, C, [d for d in (2, 3) if C % d == 0][0]][group_choice]
    w, b = torch.rand(C, generator=g, dtype=torch.float64) + 0.5, torch.randn(C, generator=g, dtype=torch.float64)
    y = F.group_norm(x, groups, w, b, channel_axis=axis, backend=backend)
    expected = numpy_norm(x.numpy(), axis % len(shape), groups, True, 1e-5, w.numpy(), b.numpy())
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-9, atol=1e-9)
