"""Shared pieces of the Triton tests: device, tolerance rule, and a forward+backward runner."""
import pytest
import torch

triton = pytest.importorskip("triton")

# On a CUDA machine the kernels run compiled on the GPU; otherwise conftest turned on Triton's
# CPU interpreter and they run on CPU tensors.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Floor of the tolerance, in units of the compared tensor's dtype epsilon times its largest
# reference magnitude. Every result is rounded to its dtype at the end, so a few roundings of the
# largest value are unavoidable whatever the algorithm; PyTorch's own error can by chance be
# smaller than that (it, too, computes in fp32 and rounds once), and 2x of a lucky error would
# otherwise demand bit-exact agreement. 4 ulps covers the final rounding plus fp32 accumulation
# order differences, and is still far below a real bug (which shows as errors of O(1)).
FLOOR_ULPS = 4


def run_fwd_bwd(fn, x, params, dy):
    """(y, dx, *dparams) of ``fn(x, *params)`` for upstream gradient ``dy``; None params stay None."""
    x = x.detach().requires_grad_()
    params = [p.detach().requires_grad_() if p is not None else None for p in params]
    y = fn(x, *params)
    y.backward(dy)
    return [y.detach(), x.grad] + [p.grad if p is not None else None for p in params]


def to_float64(tensors):
    return [t.double() if t is not None else None for t in tensors]


def assert_close_to_reference(ours, torch_same_dtype, reference, names):
    """Each of ours is within 2x PyTorch's own error (same dtype) against the float64 reference, plus a floor."""
    for name, a, t, r in zip(names, ours, torch_same_dtype, reference):
        if r is None:
            continue
        assert a.dtype == t.dtype, f"{name}: dtype {a.dtype}, torch gives {t.dtype}"
        r = r.to(a.device)
        err = (a.double() - r).abs().max().item()
        torch_err = (t.double().to(a.device) - r).abs().max().item()
        floor = FLOOR_ULPS * torch.finfo(a.dtype).eps * max(r.abs().max().item(), 1.0)
        assert err <= 2 * torch_err + floor, (f"{name}: error {err:.3g} vs torch's {torch_err:.3g} "
                                              f"(+ floor {floor:.3g})")


def force_regime(monkeypatch, regime: str):
    """Make tiny test shapes take a regime's kernels (the plans are cached per these settings).

    R1: the default for shapes this small. R2: one-pass tiles refused, 16-element fp32 tiles and 64
    programs, so every statistic is merged from several partials by the elected last program.
    (With 8-element tiles one case of 59 lands at 1.2x the dweight tolerance: fp32 rounding of the
    g*xhat products, as large as torch's own fp32 sum of the same products; torch's CPU kernel, the
    yardstick, accumulates in double.)
    R3: R2 with a device L2 too small to hold x: same kernels, the traffic model adds the spill.
    """
    from channelnorm.ops.triton import plan
    if regime == "R1":
        return
    monkeypatch.setattr(plan, "R1_MAX_TILE_BYTES", 0)
    monkeypatch.setattr(plan, "TILE_BYTES", 64)
    monkeypatch.setattr(plan, "MIN_TILES_PER_PROGRAM", 1)
    l2 = 50 * 2**20 if regime == "R2" else 64
    monkeypatch.setattr(plan, "device_limits", lambda device: plan.DeviceLimits(64, 16, l2))
