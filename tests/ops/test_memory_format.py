"""Every backend gives the output in the input's memory layout (strides), for every layout and op.

Values are checked elsewhere; this file checks strides only, so a backend that computes the right
numbers in the wrong layout (e.g. contiguous output for channels_last input) fails here.
"""
import importlib.util

import pytest
import torch

import channelnorm.functional as F
from layouts import LAYOUTS, applicable, to_layout

BACKENDS = ["reference", "native"] + (["triton"] if importlib.util.find_spec("triton") else [])
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _ops(C):
    w = torch.rand(C, device=DEVICE) + 0.5
    b = torch.randn(C, device=DEVICE)
    rm, rv = torch.zeros(C, device=DEVICE), torch.ones(C, device=DEVICE)
    return {
        "channel_train": lambda x, a, k: F.channel_norm(x, rm.clone(), rv.clone(), w, b, True, channel_axis=a, backend=k),
        "channel_eval": lambda x, a, k: F.channel_norm(x, rm, rv, w, b, False, channel_axis=a, backend=k),
        "instance": lambda x, a, k: F.instance_norm(x, None, None, w, b, channel_axis=a, backend=k),
        "group": lambda x, a, k: F.group_norm(x, 2, w, b, channel_axis=a, backend=k),
        "channel_act": lambda x, a, k: F.channel_norm_act(x, rm.clone(), rv.clone(), w, b, True, channel_axis=a,
                                                          activation="relu", backend=k),
        "group_act": lambda x, a, k: F.group_norm_act(x, 2, w, b, channel_axis=a, activation="silu", backend=k),
    }


def _inputs():
    for rank, shape in ((3, (2, 4, 6)), (4, (2, 4, 3, 5)), (5, (2, 4, 2, 3, 3))):
        for layout in LAYOUTS + ("channels_last_3d", "sliced"):
            if layout == "channels_last_3d" and rank != 5:
                continue
            if layout not in ("channels_last_3d", "sliced") and not applicable(layout, rank):
                continue
            yield rank, shape, layout


def _make(shape, layout):
    x = torch.randn(shape, device=DEVICE)
    if layout == "channels_last_3d":
        return x.contiguous(memory_format=torch.channels_last_3d), 1
    if layout == "sliced":  # not dense: every other element of the last axis
        big = torch.randn(*shape[:-1], shape[-1] * 2, device=DEVICE)
        return big[..., ::2], 1
    ours, axis, _ = to_layout(x, layout)
    return ours, axis


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rank,shape,layout", list(_inputs()))
def test_output_has_the_input_layout(rank, shape, layout, backend):
    x, axis = _make(shape, layout)
    for name, op in _ops(4).items():
        if name == "instance" and rank < 3:
            continue
        y = op(x, axis, backend)
        if layout == "sliced":
            # A non-dense input gives a dense output in the same axis order.
            assert y.is_contiguous(), (name, backend, y.stride())
        else:
            assert y.stride() == x.stride(), (name, backend, layout, y.stride(), x.stride())
