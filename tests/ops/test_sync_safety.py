"""SyncChannelNorm when ranks disagree or hold nothing: same error on every rank, never a hang or a crash.

Real gloo processes on 127.0.0.1 (the pattern of tests/ops/test_distributed.py). After every expected
error the group must still work: the next synchronized step is compared with one process that sees
the whole batch (ChannelNorm, float64), which also shows that no rank was left inside a collective.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import channelnorm as cn
from test_distributed import _exit_after_teardown, _init, _spawn

C = 3
F64 = dict(dtype=torch.float64)


def _still_in_step(rank: int, world: int) -> None:
    """A normal step after an error: all ranks reach it together and match one process on the full batch."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2 * world, C, 4, generator=gen, **F64) * 3 + 1
    local = x[2 * rank:2 * rank + 2].clone().requires_grad_(True)
    full = x.clone().requires_grad_(True)
    m, ref = cn.SyncChannelNorm(C, **F64), cn.ChannelNorm(C, backend="reference", **F64)
    y, y_ref = m(local), ref(full)
    # float64 throughout; the merge reorders sums only: a few ulps.
    torch.testing.assert_close(y, y_ref[2 * rank:2 * rank + 2], rtol=1e-12, atol=1e-12)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(local.grad, full.grad[2 * rank:2 * rank + 2], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.running_var, ref.running_var, rtol=1e-12, atol=1e-12)


def _check_all_empty(rank: int) -> None:
    """Every rank empty: an empty output as ChannelNorm gives, running statistics and counter untouched."""
    m = cn.SyncChannelNorm(C, **F64)
    with torch.no_grad():
        m.weight.fill_(2.0)
        m.running_mean.fill_(0.5)
    local = cn.ChannelNorm(C, **F64)
    local.load_state_dict(m.state_dict())
    for shape in [(0, C, 4), (0, C)]:
        x = torch.randn(shape, **F64, requires_grad=True)
        y = m(x)
        y_local = local(x)
        assert y.shape == y_local.shape == x.shape and y.dtype == x.dtype
        y.sum().backward()  # no collective in backward either: every rank skips it alike
        assert x.grad.shape == x.shape
        assert torch.equal(m.weight.grad, torch.zeros(C, **F64)) and torch.equal(m.bias.grad, torch.zeros(C, **F64))
        m.zero_grad()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(m, name), getattr(local, name)), name
    assert int(m.num_batches_tracked) == 0


def _check_module_channel_mismatch(rank: int, world: int) -> None:
    """Layers built with different num_channels: ValueError on every rank naming each rank's count."""
    channels = C + (1 if rank == world - 1 else 0)
    m = cn.SyncChannelNorm(channels, **F64)
    x = torch.randn(4, channels, 2, **F64)
    counts = ", ".join(f"rank {r}: {C + (1 if r == world - 1 else 0)}" for r in range(world))
    with pytest.raises(ValueError, match=f"disagree on num_channels \\({counts}\\)"):
        m(x)
    assert int(m.num_batches_tracked) == 0


def _check_settings_mismatch(rank: int, world: int) -> None:
    """Same channel count, other eps / momentum / channel_axis on the last rank: ValueError naming the setting."""
    last = rank == world - 1
    cases = [("eps", dict(eps=1e-3 if last else 1e-5), "rank 0: 1e-05"),
             ("momentum", dict(momentum=None if last else 0.1), f"rank {world - 1}: None"),
             ("channel_axis", dict(channel_axis=-1 if last else 1), f"rank {world - 1}: -1")]
    for name, kwargs, shown in cases:
        m = cn.SyncChannelNorm(C, **kwargs, **F64)
        x = torch.randn(4, C, C, **F64)  # C on both axes 1 and -1: only the handshake can tell
        with pytest.raises(ValueError, match=f"disagree on {name} \\(.*{shown}"):
            m(x)


def _check_input_channel_mismatch(rank: int, world: int) -> None:
    """Same layer, but rank 1 feeds C + 1 channels: its usual error there, a naming error elsewhere."""
    m = cn.SyncChannelNorm(C, **F64)
    m(torch.randn(3, C, **F64))  # the handshake is behind us: the next error comes from the step's header
    before = m.running_var.clone()
    x = torch.randn(4, C + 1 if rank == 1 else C, 2, **F64)
    if rank == 1:
        match = f"expected input with {C} channels on axis 1, got {C + 1}.*every rank of the process group raises"
    else:
        match = f"expected input with {C} channels on every rank.*rank 1: {C + 1} channels, torch.float64"
    with pytest.raises(ValueError, match=match):
        m(x)
    assert torch.equal(m.running_var, before)
    # Not a floating tensor on one rank: TypeError there, ValueError naming it on the others.
    x = torch.randn(4, C, **F64)
    if rank == 0:
        x = x.to(torch.int64)
    error, match = (TypeError, "floating") if rank == 0 else (ValueError, "rank 0: not a floating tensor")
    with pytest.raises(error, match=match):
        m(x)


def _check_dtype_mismatch(rank: int, world: int) -> None:
    """float32 on one rank, float64 on another (different statistics dtypes): TypeError on every rank."""
    m = cn.SyncChannelNorm(C)
    dtypes = [torch.float64 if r == world - 1 else torch.float32 for r in range(world)]
    listed = ", ".join(f"rank {r}: {d}" for r, d in enumerate(dtypes))
    with pytest.raises(TypeError, match=f"different dtypes \\({listed}\\)"):
        m(torch.randn(4, C, 2, dtype=dtypes[rank]))
    assert int(m.num_batches_tracked) == 0
    # bfloat16 against float32: same statistics dtype, still not one batch: refused too.
    with pytest.raises(TypeError, match="different dtypes"):
        m(torch.randn(4, C, 2, dtype=torch.bfloat16 if rank == 0 else torch.float32))


def _check_uneven_empty_matches_single_process(rank: int, world: int) -> None:
    """Some ranks empty, the rest not (the merge path the empty-everywhere rule must not disturb)."""
    sizes = [0] * (world - 1) + [5]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(sum(sizes), C, 3, generator=gen, **F64) + 2
    lo = sum(sizes[:rank])
    m, ref = cn.SyncChannelNorm(C, **F64), cn.ChannelNorm(C, backend="reference", **F64)
    y, y_ref = m(x[lo:lo + sizes[rank]]), ref(x)
    torch.testing.assert_close(y, y_ref[lo:lo + sizes[rank]], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)
    assert int(m.num_batches_tracked) == 1


def _worker(rank: int, world: int, port: int) -> None:
    _init(rank, world, port)
    try:
        _check_all_empty(rank)
        _still_in_step(rank, world)
        _check_module_channel_mismatch(rank, world)
        _still_in_step(rank, world)
        _check_settings_mismatch(rank, world)
        _still_in_step(rank, world)
        _check_input_channel_mismatch(rank, world)
        _still_in_step(rank, world)
        _check_dtype_mismatch(rank, world)
        _still_in_step(rank, world)
        _check_uneven_empty_matches_single_process(rank, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_after_teardown()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("world", [2, 3])
def test_sync_disagreeing_and_empty_ranks(world):
    _spawn(_worker, world)


def test_payload_header_round_trip_and_exact_counts():
    """The per-step payload: header decoded as written, counts exact past float32's 2**24."""
    from channelnorm.ops.distributed import _check_headers, _pack, merge_moments

    rows = torch.stack([_pack(2 ** 40 + 1, torch.ones(C), torch.zeros(C)),
                        _pack(0, torch.zeros(C), torch.zeros(C))])
    n, mean, var = merge_moments(rows, C, torch.float32)
    assert int(n) == 2 ** 40 + 1 and mean.dtype == torch.float32
    torch.testing.assert_close(mean, torch.ones(C))
    _check_headers("op", rows[:, :3].tolist(), C, None)  # same dtype (float32), same channels: passes
    mixed = torch.stack([rows[0], _pack(1, torch.zeros(C, **F64), torch.zeros(C, **F64))])
    with pytest.raises(TypeError, match="rank 0: torch.float32, rank 1: torch.float64"):
        _check_headers("op", mixed[:, :3].tolist(), C, None)
