"""Triton kernels against the float64 reference, forward and backward, over layouts x dtypes x ranks.

Tolerance tied to the dtype: our error <= 2x the error of PyTorch's own kernels in the same dtype
(backend="native": F.batch_norm / F.group_norm / F.instance_norm) plus a floor (tests/ops/triton/_triton_support.py).
Without a GPU this runs under TRITON_INTERPRET=1, so shapes are tiny; a covering subset is used:
every layout x rank in float32, a spread of them in bfloat16 and float16. Shapes this small take
the one-pass kernels (R1); a second set forces the split kernels (R2, and R3 whose kernels are R2's
with a different traffic model) on a covering subset.
"""
import pytest
import torch

from _triton_support import DEVICE, assert_close_to_reference, force_regime, run_fwd_bwd, to_float64
from layouts import applicable, to_layout

import channelnorm.functional as F

BASE_SHAPES = {2: (6, 4), 3: (3, 4, 5), 4: (2, 4, 3, 5), 5: (2, 4, 2, 3, 3)}
ALL_LAYOUT_RANKS = [(layout, rank) for layout in ("contiguous", "channels_last", "axis_last", "axis_last_view",
                                                  "axis_middle")
                    for rank in (2, 3, 4, 5) if applicable(layout, rank)]
LOW_PRECISION_LAYOUT_RANKS = [("contiguous", 2), ("contiguous", 4), ("channels_last", 4), ("axis_last", 3),
                              ("axis_last_view", 4), ("channels_last", 5)]
NORMS = ("channel_train", "channel_eval", "group", "layer", "instance")
CASES = ([(norm, layout, rank, torch.float32) for norm in NORMS for layout, rank in ALL_LAYOUT_RANKS]
         + [(norm, layout, rank, dtype) for dtype in (torch.bfloat16, torch.float16) for norm in NORMS
            for layout, rank in LOW_PRECISION_LAYOUT_RANKS])
CASES = [c for c in CASES if not (c[0] == "instance" and c[2] == 2)]  # instance norm needs a spatial axis


def _norm_fn(norm, axis, backend, running):
    if norm == "channel_train":
        return lambda x, w, b: F.channel_norm(x, None, None, w, b, True, channel_axis=axis, backend=backend)
    if norm == "channel_eval":
        rm, rv = running
        return lambda x, w, b: F.channel_norm(x, rm.to(x.device, torch.float64 if x.dtype == torch.float64 else rm.dtype),
                                              rv.to(x.device, torch.float64 if x.dtype == torch.float64 else rv.dtype),
                                              w, b, False, channel_axis=axis, backend=backend)
    if norm == "group":
        return lambda x, w, b: F.group_norm(x, 2, w, b, channel_axis=axis, backend=backend)
    if norm == "layer":
        return lambda x, w, b: F.layer_norm(x, w, b, channel_axis=axis, backend=backend)
    return lambda x, w, b: F.instance_norm(x, None, None, w, b, channel_axis=axis, backend=backend)


SPLIT_LAYOUT_RANKS = [("contiguous", 2), ("contiguous", 4), ("channels_last", 4), ("axis_last", 3),
                      ("axis_last_view", 4), ("axis_middle", 4), ("channels_last", 5)]
SPLIT_CASES = ([("R2", norm, layout, rank, torch.float32) for norm in NORMS for layout, rank in SPLIT_LAYOUT_RANKS]
               + [("R2", norm, layout, rank, dtype) for dtype in (torch.bfloat16, torch.float16) for norm in NORMS
                  for layout, rank in (("contiguous", 4), ("channels_last", 4))]
               + [("R3", norm, "channels_last", 4, torch.bfloat16) for norm in NORMS])
SPLIT_CASES = [c for c in SPLIT_CASES if not (c[1] == "instance" and c[3] == 2)]


@pytest.mark.parametrize("regime,norm,layout,rank,dtype", SPLIT_CASES,
                         ids=[f"{g}-{n}-{l}-r{r}-{str(d)[6:]}" for g, n, l, r, d in SPLIT_CASES])
def test_split_regimes_match_reference(regime, norm, layout, rank, dtype, monkeypatch):
    force_regime(monkeypatch, regime)
    test_forward_backward_match_reference(norm, layout, rank, dtype)


@pytest.mark.parametrize("norm,layout,rank,dtype", CASES,
                         ids=[f"{n}-{l}-r{r}-{str(d)[6:]}" for n, l, r, d in CASES])
def test_forward_backward_match_reference(norm, layout, rank, dtype):
    base = (torch.randn(BASE_SHAPES[rank]) * 2 + 0.5).to(dtype)   # values exactly representable in dtype
    x, axis, _ = to_layout(base.to(DEVICE), layout)
    C = x.shape[axis]
    w = torch.randn(C, device=DEVICE)
    b = torch.randn(C, device=DEVICE)
    dy = torch.randn(x.shape, device=DEVICE).to(dtype)
    running = (torch.randn(C), torch.rand(C) + 0.5)
    ours = run_fwd_bwd(_norm_fn(norm, axis, "triton", running), x, (w, b), dy)
    torch_own = run_fwd_bwd(_norm_fn(norm, axis, "native", running), x.cpu(), (w.cpu(), b.cpu()), dy.cpu())
    reference = run_fwd_bwd(_norm_fn(norm, axis, "reference", running), x.cpu().double(),
                            to_float64((w.cpu(), b.cpu())), dy.cpu().double())
    assert ours[0].dtype == dtype and ours[0].stride() == x.stride()
    assert_close_to_reference(ours, torch_own, reference, ("y", "dx", "dweight", "dbias"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parameters_in_the_input_dtype(dtype):
    x = (torch.randn(3, 4, 5) * 3).to(dtype).to(DEVICE)
    w, b = torch.randn(4).to(dtype).to(DEVICE), torch.randn(4).to(dtype).to(DEVICE)
    dy = torch.randn(3, 4, 5).to(dtype).to(DEVICE)
    for fn in (lambda backend: lambda x, w, b: F.channel_norm(x, None, None, w, b, True, backend=backend),
               lambda backend: lambda x, w, b: F.group_norm(x, 2, w, b, backend=backend)):
        ours = run_fwd_bwd(fn("triton"), x, (w, b), dy)
        torch_own = run_fwd_bwd(fn("native"), x.cpu(), (w.cpu(), b.cpu()), dy.cpu())
        reference = run_fwd_bwd(fn("reference"), x.cpu().double(), to_float64((w.cpu(), b.cpu())), dy.cpu().double())
        assert ours[2].dtype == dtype
        assert_close_to_reference(ours, torch_own, reference, ("y", "dx", "dweight", "dbias"))


def test_without_affine_parameters():
    x = torch.randn(2, 4, 3, 5, device=DEVICE)
    dy = torch.randn_like(x)
    for fn in (lambda backend: lambda x: F.channel_norm(x, None, None, None, None, True, backend=backend),
               lambda backend: lambda x: F.group_norm(x, 2, backend=backend)):
        ours = run_fwd_bwd(fn("triton"), x, (), dy)
        torch_own = run_fwd_bwd(fn("native"), x.cpu(), (), dy.cpu())
        reference = run_fwd_bwd(fn("reference"), x.cpu().double(), (), dy.cpu().double())
        assert_close_to_reference(ours, torch_own, reference, ("y", "dx"))
