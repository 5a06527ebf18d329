"""SyncChannelNorm across real gloo processes against one process on the concatenated batch.

Each test spawns its processes once and runs several scenarios inside them (spawning and importing
torch costs seconds per process). The oracle is ChannelNorm with ``backend="reference"`` (float64
autograd through the centered two-pass math) on the whole batch, in every rank. A worker failure
ends the other workers and fails the test; a hang fails at the join deadline.
"""
from __future__ import annotations

import copy
import datetime
import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import channelnorm as cn

DEADLINE_S = 100.0
C = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, world: int) -> None:
    ctx = mp.spawn(worker, args=(world, _free_port()), nprocs=world, join=False)
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=1.0):  # raises ProcessRaisedException when a worker failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail(f"distributed workers did not finish within {DEADLINE_S} s (hang)")


def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))


def _exit_after_teardown() -> None:
    """End a worker whose checks all passed without running the interpreter's exit hooks.

    torch 2.13's gloo teardown at interpreter exit sometimes aborts the process ("terminate called
    without an active exception", about 1 run in 10 here) after every check has passed and the
    process group is destroyed. Only the success path reaches this call; a failed check still
    raises first and fails the test through mp.spawn.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _make_batch(shape_of, sizes, channels_last, seed):
    """The full batch, the upstream gradient, and per-rank slices (identical on every rank: same seed)."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    x = torch.randn(shape_of(total), generator=gen, dtype=torch.float64) * 2.0 + 0.5
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    bounds = [sum(sizes[:r]) for r in range(len(sizes) + 1)]
    return x, g, bounds


def _check_scenario(rank, ranks, sizes, shape_of, *, channel_axis=1, channels_last=False, affine=True,
                    momentum=0.1, steps=2, group=None, seed=0):
    """Run ``steps`` training steps on ``ranks`` (members of ``group``) and compare with one process."""
    if rank not in ranks:
        return
    me = ranks.index(rank)
    sync = cn.SyncChannelNorm(C, affine=affine, momentum=momentum, channel_axis=channel_axis,
                              dtype=torch.float64, process_group=group)
    ref = cn.ChannelNorm(C, affine=affine, momentum=momentum, channel_axis=channel_axis,
                         dtype=torch.float64, backend="reference")
    if affine:
        with torch.no_grad():
            w = torch.linspace(0.5, 1.5, C, dtype=torch.float64)
            b = torch.linspace(-0.3, 0.2, C, dtype=torch.float64)
            for m in (sync, ref):
                m.weight.copy_(w)
                m.bias.copy_(b)
    for step in range(steps):
        x, g, bounds = _make_batch(shape_of, sizes, channels_last, seed + step)
        lo, hi = bounds[me], bounds[me + 1]
        x_local = x[lo:hi].clone().requires_grad_(True)
        if channels_last:
            x_local = x_local.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        x_full = x.clone().requires_grad_(True)
        for m in (sync, ref):
            if affine:
                m.weight.grad = None
                m.bias.grad = None
        y_local = sync(x_local)
        (y_local * g[lo:hi]).sum().backward()
        y_full = ref(x_full)
        (y_full * g).sum().backward()

        what = f"rank {rank} sizes {sizes} step {step}"
        torch.testing.assert_close(y_local, y_full[lo:hi], msg=lambda m: f"{what} output: {m}")
        if channels_last:
            assert y_local.is_contiguous(memory_format=torch.channels_last), what
        torch.testing.assert_close(x_local.grad, x_full.grad[lo:hi], msg=lambda m: f"{what} input grad: {m}")
        if affine:
            # Parameter grads are local sums (as nn.SyncBatchNorm); their sum over ranks is the full grad.
            for name in ("weight", "bias"):
                grad = getattr(sync, name).grad.clone()
                dist.all_reduce(grad, group=group)
                torch.testing.assert_close(grad, getattr(ref, name).grad, msg=lambda m: f"{what} {name} grad: {m}")
        torch.testing.assert_close(sync.running_mean, ref.running_mean, msg=lambda m: f"{what} running_mean: {m}")
        torch.testing.assert_close(sync.running_var, ref.running_var, msg=lambda m: f"{what} running_var: {m}")
        assert int(sync.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1, what

    # Eval never communicates and uses the (identical) running statistics.
    sync.eval()
    ref.eval()
    x, _, bounds = _make_batch(shape_of, sizes, channels_last, seed + 99)
    lo, hi = bounds[me], bounds[me + 1]
    torch.testing.assert_close(sync(x[lo:hi]), ref(x)[lo:hi])


def _check_ddp(rank: int, world: int) -> None:
    """DDP around a to_sync model: outputs, running stats and (averaged) grads match one process."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv1d(2, C, 3), cn.ChannelNorm(C), nn.ReLU(), nn.Conv1d(C, C, 1),
                         nn.BatchNorm1d(C)).to(torch.float64)
    ref = copy.deepcopy(base)
    model = DDP(cn.convert.to_sync(base))
    assert sum(isinstance(m, cn.SyncChannelNorm) for m in model.modules()) == 2
    x, _, bounds = _make_batch(lambda n: (n, 2, 10), [3, 5], False, 11)
    g = torch.randn(8, C, 8, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    lo, hi = bounds[rank], bounds[rank + 1]
    y = model(x[lo:hi])
    (y * g[lo:hi]).sum().backward()
    y_ref = ref(x)
    (y_ref * g).sum().backward()
    torch.testing.assert_close(y, y_ref[lo:hi])
    # DDP averages the ranks' local parameter gradients; their sum is the full-batch gradient.
    for (name, p), p_ref in zip(model.module.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad * world, p_ref.grad, msg=lambda m: f"rank {rank} DDP {name}: {m}")
    for (name, b), b_ref in zip(model.module.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, b_ref, msg=lambda m: f"rank {rank} DDP {name}: {m}")


def _check_collectives_per_step() -> None:
    """One training step of a SyncChannelNorm layer costs one all_gather and one all_reduce (after its first)."""
    calls = []
    originals = {name: getattr(dist, name) for name in ("all_gather", "all_reduce", "broadcast",
                                                         "all_gather_into_tensor", "reduce_scatter")}
    def counting(name):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return originals[name](*args, **kwargs)
        return wrapper
    for name in originals:
        setattr(dist, name, counting(name))
    try:
        m = cn.SyncChannelNorm(C, dtype=torch.float64)
        x = torch.randn(4, C, 5, dtype=torch.float64, requires_grad=True)
        m(x)  # a layer's first step adds the one-time num_channels handshake (one more all_gather)
        assert calls == ["all_gather", "all_gather"], calls
        calls.clear()
        y = m(x)
        assert calls == ["all_gather"], calls
        y.sum().backward()
        assert calls == ["all_gather", "all_reduce"], calls
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


def _worker_two(rank: int, world: int, port: int) -> None:
    _init(rank, world, port)
    try:
        nchw = lambda n: (n, C, 4, 5)  # noqa: E731
        _check_scenario(rank, [0, 1], [3, 3], nchw)
        _check_scenario(rank, [0, 1], [1, 5], lambda n: (n, C, 7))  # uneven, rank 3
        _check_scenario(rank, [0, 1], [2, 3], nchw, channels_last=True)
        _check_scenario(rank, [0, 1], [4, 1], lambda n: (n, 4, 5, C), channel_axis=-1)
        _check_scenario(rank, [0, 1], [0, 4], nchw)  # rank 0 holds an empty batch
        _check_scenario(rank, [0, 1], [5, 2], lambda n: (n, C), affine=False, momentum=None, steps=3)

        _check_ddp(rank, world)
        _check_collectives_per_step()

        # Bad input (here on every rank) is refused with the usual message, on every rank together.
        with pytest.raises(ValueError, match=f"expected input with {C} channels"):
            cn.SyncChannelNorm(C)(torch.randn(4, C + 1, 2))

        # One value per channel over the whole group is an error on every rank (no hang).
        m = cn.SyncChannelNorm(C, dtype=torch.float64)
        x = torch.randn((1 if rank == 0 else 0, C), dtype=torch.float64)
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            m(x)
        assert int(m.num_batches_tracked) == 0

        # A non-finite batch on one rank: outputs show NaN everywhere, running stats stay untouched.
        m = cn.SyncChannelNorm(C, dtype=torch.float64)
        x = torch.randn(4, C, 3, dtype=torch.float64)
        if rank == 1:
            x[0, 0, 0] = float("nan")
        y = m(x)
        assert torch.isnan(y[:, 0]).all() and not torch.isnan(y[:, 1:]).any()
        assert torch.equal(m.running_mean, torch.zeros(C, dtype=torch.float64))
        assert int(m.num_batches_tracked) == 0

        # bfloat16 input, float32 parameters: statistics in float32; compare with one process in float32.
        m = cn.SyncChannelNorm(C)
        ref = cn.ChannelNorm(C, backend="reference")
        x, g, bounds = _make_batch(lambda n: (n, C, 6), [2, 3], False, 21)
        xb = x.to(torch.bfloat16)
        lo, hi = bounds[rank], bounds[rank + 1]
        x_local = xb[lo:hi].clone().requires_grad_(True)
        y = m(x_local)
        assert y.dtype == torch.bfloat16
        (y.float() * g[lo:hi].float()).sum().backward()
        x_full = xb.float().requires_grad_(True)
        y_ref = ref(x_full)
        (y_ref * g.float()).sum().backward()
        # bfloat16 rounding of the output/grad (8 bits of mantissa) bounds the difference.
        torch.testing.assert_close(y.float(), y_ref[lo:hi], rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(x_local.grad.float(), x_full.grad[lo:hi], rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(m.running_var, ref.running_var)

        # float32 input with a large mean: statistics stay centered, unit variance comes out.
        m = cn.SyncChannelNorm(C)
        x = torch.randn(64, C, 8, generator=torch.Generator().manual_seed(rank)) + 1e4
        y = m(x)
        yd = y.double()
        sums = torch.stack([yd.sum((0, 2)), yd.square().sum((0, 2))])  # float64 moments of the output
        dist.all_reduce(sums)
        count = world * 64 * 8
        var = sums[1] / count - (sums[0] / count).square()
        torch.testing.assert_close(var, torch.ones(C, dtype=torch.float64), atol=1e-3, rtol=0)
    finally:
        dist.destroy_process_group()
    _exit_after_teardown()


def _worker_three(rank: int, world: int, port: int) -> None:
    _init(rank, world, port)
    try:
        _check_scenario(rank, [0, 1, 2], [2, 0, 3], lambda n: (n, C, 3, 2))
        _check_scenario(rank, [0, 1, 2], [1, 1, 1], lambda n: (n, C, 2, 2, 2))  # rank-5 input, one sample each
        # Sub-group {0, 2}; rank 1 sits out of it. new_group must be called by every rank.
        pair = dist.new_group([0, 2])
        alone = [dist.new_group([r]) for r in range(world)][rank]
        _check_scenario(rank, [0, 2], [3, 2], lambda n: (n, C, 6), group=pair, seed=7)
        # A one-rank group falls back to the local path (no collective would match on other ranks).
        m = cn.SyncChannelNorm(C, dtype=torch.float64, process_group=alone)
        ref = cn.ChannelNorm(C, dtype=torch.float64)
        x = torch.randn(4, C, 3, dtype=torch.float64)
        torch.testing.assert_close(m(x), ref(x))
        torch.testing.assert_close(m.running_var, ref.running_var)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_after_teardown()


@pytest.mark.timeout(150)
def test_sync_matches_single_process_two_ranks():
    _spawn(_worker_two, 2)


@pytest.mark.timeout(150)
def test_sync_three_ranks_uneven_empty_and_subgroup():
    _spawn(_worker_three, 3)


def test_falls_back_to_local_without_process_group():
    assert not dist.is_initialized()
    torch.manual_seed(0)
    x = torch.randn(5, C, 4, dtype=torch.float64)
    sync = cn.SyncChannelNorm(C, dtype=torch.float64)
    ref = cn.ChannelNorm(C, dtype=torch.float64)
    torch.testing.assert_close(sync(x), ref(x))
    torch.testing.assert_close(sync.running_var, ref.running_var)
    assert isinstance(cn.create_norm("syncbn", C), cn.SyncChannelNorm)
    # Same state dict as nn.BatchNorm (strict, both directions).
    bn = nn.BatchNorm1d(C, dtype=torch.float64)
    bn.load_state_dict(sync.state_dict())
    sync.load_state_dict(bn.state_dict())
    assert isinstance(cn.create_norm("sync_channel", C, process_group=None), cn.SyncChannelNorm)


def test_merge_is_exact_for_uneven_and_empty_parts():
    from channelnorm.ops.distributed import _pack, local_moments, merge_moments

    torch.manual_seed(1)
    x = torch.randn(9, C, 5, dtype=torch.float64) * 3 + 2
    parts = [x[:0], x[:2], x[2:3], x[3:]]
    packed = torch.stack([_pack(*local_moments(p, 1)) for p in parts])
    n, mean, var = merge_moments(packed, C)
    assert int(n) == 9 * 5
    torch.testing.assert_close(mean, x.mean((0, 2)))
    torch.testing.assert_close(var, x.var((0, 2), unbiased=False))
    # Counts past float32's 2**24 integer range survive the split encoding.
    big = _pack(2 ** 30 + 3, torch.zeros(C), torch.zeros(C))
    assert int(merge_moments(big[None], C)[0]) == 2 ** 30 + 3
