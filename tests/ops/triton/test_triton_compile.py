"""The Triton backend under torch.compile: custom-op registration (opcheck) and fullgraph tracing.

Without a GPU the ops run the interpreted kernels on CPU tensors; inductor treats a custom op as
an opaque call either way, so the traced graph is the one a GPU run compiles.
"""
import pytest
import torch

from _triton_support import DEVICE

import channelnorm as cn
from channelnorm.ops.triton import custom_ops


def _args(per_sample, use_batch_stats, residual, activation):
    x = torch.randn(2, 4, 3, device=DEVICE, requires_grad=True)
    w = torch.randn(4, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    r = torch.randn(2, 4, 3, device=DEVICE, requires_grad=True) if residual else None
    stats = (None, None) if use_batch_stats else (torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE))
    return (x, w, b, r, *stats, 2 if per_sample else 4, per_sample, use_batch_stats, 1e-5, 1, activation)


@pytest.mark.parametrize("per_sample,use_batch_stats,residual,activation",
                         [(True, True, True, 2), (False, True, False, 1), (False, False, True, 3)])
def test_custom_ops_pass_opcheck(per_sample, use_batch_stats, residual, activation):
    args = _args(per_sample, use_batch_stats, residual, activation)
    torch.library.opcheck(custom_ops.norm_fwd, args)
    y, pivot, shift, var = custom_ops.norm_fwd(*args)
    x, w, b, r = (t.detach() if t is not None else None for t in args[:4])
    bwd_args = (torch.randn_like(y), x, w, b, r, pivot, shift, var, *args[6:], residual)
    torch.library.opcheck(custom_ops.norm_bwd, bwd_args)


@pytest.mark.parametrize("with_count", [True, False])
def test_running_stats_update_op_passes_opcheck(with_count):
    rm, rv = torch.randn(5, device=DEVICE), torch.rand(5, device=DEVICE) + 0.5
    nbt = torch.tensor(3, device=DEVICE) if with_count else None
    stats = (torch.randn(5, device=DEVICE), torch.randn(5, device=DEVICE), torch.rand(5, device=DEVICE))
    torch.library.opcheck(custom_ops.running_stats_update, (rm, rv, nbt, *stats, 1.25, 0.1))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        cn.ChannelNorm(4, backend="triton"),
        cn.GroupNormAct(2, 4, activation="silu", backend="triton"),
    ).to(DEVICE)


@pytest.mark.slow
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_fullgraph_compile_matches_eager(compile_backend):
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    eager, compiled = _model(), _model()
    y = eager(x)
    y.square().sum().backward()
    torch._dynamo.reset()
    yc = torch.compile(compiled, backend=compile_backend, fullgraph=True)(x)
    yc.square().sum().backward()
    torch.testing.assert_close(yc, y)
    torch.testing.assert_close(compiled[0].weight.grad, eager[0].weight.grad)
    torch.testing.assert_close(compiled[1].running_var, eager[1].running_var)
    assert compiled[1].num_batches_tracked.item() == 1


@pytest.mark.slow
def test_kernels_compile_for_sm90_pipelined_vectorized_without_spills():
    """The GPU compiler, not the interpreter: lower the kernels to sm_90 PTX/cubin (no GPU needed);
    statistics loops use cp.async, main layouts vector accesses, nothing spills."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell"  # triton's sm_90+ ptxas
    if not ptxas.exists():
        pytest.skip("this triton wheel has no bundled ptxas")
    script = Path(__file__).with_name("triton_sm90_compile.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "compiled" in done.stdout
