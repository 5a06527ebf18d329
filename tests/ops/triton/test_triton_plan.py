"""Host-side choices of the Triton backend (pure integers: no kernel runs, no GPU needed)."""
import pytest
import torch

pytest.importorskip("triton")
from channelnorm.ops.triton import plan  # noqa: E402


def _view(x, axis, per_sample=False):
    return plan.canonical_view(tuple(x.shape), x.stride(), axis, per_sample)


def test_canonical_view_nchw_keeps_spatial_contiguous():
    x = torch.empty(2, 3, 4, 5)
    assert _view(x, 1) == plan.CanonicalView(B=2, C=3, S=20, sb=60, sc=20, ss=1)
    assert _view(x, 1, per_sample=True) == plan.CanonicalView(B=2, C=3, S=20, sb=60, sc=20, ss=1)


def test_canonical_view_channels_last_collapses_batch_into_positions():
    x = torch.empty(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    assert _view(x, 1) == plan.CanonicalView(B=1, C=3, S=40, sb=0, sc=1, ss=3)
    # Per sample the batch stays its own axis.
    assert _view(x, 1, per_sample=True) == plan.CanonicalView(B=2, C=3, S=20, sb=60, sc=1, ss=3)


def test_canonical_view_channel_last_view_of_nchw():
    x = torch.empty(2, 3, 4, 5).movedim(1, -1)   # (N, H, W, C) with NCHW memory
    assert _view(x, 3) == plan.CanonicalView(B=2, C=3, S=20, sb=60, sc=20, ss=1)


def test_canonical_view_refuses_what_one_stride_cannot_address():
    x = torch.empty(2, 4, 3, 5)                 # channel axis 2 between two spatial axes
    assert _view(x, 2) is not None              # channel scope: (N*H) rows of W
    assert _view(x, 2, per_sample=True) is None  # per sample: H and W are split by C -> the backend copies


def test_is_dense():
    assert plan.is_dense((2, 3, 4), (12, 4, 1))
    assert plan.is_dense((2, 3, 4, 5), torch.empty(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).stride())
    assert not plan.is_dense((2, 3), (0, 1))        # expanded
    assert not plan.is_dense((2, 3), (6, 2))        # a slice with gaps


def test_tile_shape_follows_the_contiguous_axis():
    nchw = plan.CanonicalView(B=32, C=64, S=112 * 112, sb=64 * 112 * 112, sc=112 * 112, ss=1)
    block_s, block_c = plan.tile_shape(nchw)
    assert block_c == 1 and block_s == plan.TILE_ELEMENTS
    nhwc = plan.CanonicalView(B=1, C=64, S=32 * 112 * 112, sb=0, sc=1, ss=64)
    block_s, block_c = plan.tile_shape(nhwc)
    assert block_c == 64 and block_s * block_c == plan.TILE_ELEMENTS
    tokens = plan.CanonicalView(B=8192, C=4096, S=1, sb=4096, sc=1, ss=1)     # per-sample (N, C) rows
    assert plan.tile_shape(tokens) == (1, plan.TILE_ELEMENTS)
    late = plan.CanonicalView(B=2, C=2048, S=49, sb=2048 * 49, sc=49, ss=1)   # 7x7: widen over channels
    block_s, block_c = plan.tile_shape(late)
    assert block_s == 64 and block_c == plan.TILE_ELEMENTS // 64


def test_split_strategy_small_c_huge_spatial_splits_positions():
    stem = plan.CanonicalView(B=1, C=64, S=32 * 112 * 112, sb=0, sc=1, ss=64)   # NHWC stem, batch 32
    p = plan.make_plan(stem, target_programs=4 * 132)
    assert p.n_cblk == 1 and p.n_chunks >= 4 * 132 // 2
    assert p.chunk_len % p.block_s == 0 and p.n_chunks * p.chunk_len >= stem.S
    assert (p.n_chunks - 1) * p.chunk_len < stem.S           # no empty chunk


def test_split_strategy_large_c_small_spatial_does_not_split():
    late = plan.CanonicalView(B=2, C=2048, S=49, sb=2048 * 49, sc=49, ss=1)
    p = plan.make_plan(late, target_programs=4 * 132)
    assert p.n_chunks == 1 and p.n_cblk * late.B >= 64


def test_channel_scope_groups_rows_so_each_channel_has_few_partials():
    stem = plan.CanonicalView(B=32, C=64, S=112 * 112, sb=64 * 112 * 112, sc=112 * 112, ss=1)   # NCHW, batch 32
    p = plan.make_plan(stem, target_programs=4 * 132)
    assert p.rows_per_prog == 3 and p.n_chunks == 1 and p.partial_rows == 11
    per_sample = plan.make_plan(stem, target_programs=4 * 132, per_sample=True)
    assert per_sample.rows_per_prog == 1 and per_sample.n_row_groups == 32


def test_int64_indexing_chosen_only_past_int32():
    small = plan.CanonicalView(B=32, C=256, S=56 * 56, sb=256 * 56 * 56, sc=56 * 56, ss=1)
    assert not plan.make_plan(small, 528).int64
    big = plan.CanonicalView(B=1, C=64, S=2**26, sb=0, sc=1, ss=64)             # 2**32 elements, NHWC
    assert plan.make_plan(big, 528).int64
    edge = plan.CanonicalView(B=1, C=1, S=2**31, sb=0, sc=1, ss=1)             # last offset 2**31 - 1
    assert not plan.needs_int64(edge)
    assert plan.needs_int64(plan.CanonicalView(B=1, C=1, S=2**31 + 1, sb=0, sc=1, ss=1))


def test_plans_cover_every_element_exactly_once():
    import random
    rng = random.Random(0)
    for _ in range(500):
        C, B, S = rng.randint(1, 3000), rng.randint(1, 300), rng.randint(1, 200_000)
        channels_fast = rng.random() < 0.5
        view = (plan.CanonicalView(B, C, S, C * S, 1, C) if channels_fast
                else plan.CanonicalView(B, C, S, C * S, S, 1))
        per_sample = rng.random() < 0.5
        p = plan.make_plan(view, target_programs=rng.choice([4, 528, 1056]), per_sample=per_sample)
        assert p.block_s * p.block_c <= plan.TILE_ELEMENTS
        assert p.chunk_len % p.block_s == 0                                   # kernels rely on it
        assert (p.n_chunks - 1) * p.chunk_len < S <= p.n_chunks * p.chunk_len
        assert (p.n_row_groups - 1) * p.rows_per_prog < B <= p.n_row_groups * p.rows_per_prog
        assert (p.n_cblk - 1) * p.block_c < C <= p.n_cblk * p.block_c
        assert (p.n_sblk - 1) * p.block_s < S <= p.n_sblk * p.block_s
        if per_sample:
            assert p.rows_per_prog == 1


def test_groups_that_are_contiguous_runs_get_per_group_statistics():
    from channelnorm.ops.triton.plan import group_view
    nchw = _view(torch.empty(2, 8, 3, 5), 1, per_sample=True)
    assert group_view(nchw, 2) == plan.CanonicalView(B=2, C=2, S=60, sb=120, sc=60, ss=1)
    tokens = _view(torch.empty(6, 8), 1, per_sample=True)                   # layer norm over (N, C)
    assert group_view(tokens, 1) == plan.CanonicalView(B=6, C=1, S=8, sb=8, sc=8, ss=1)
    nhwc = _view(torch.empty(2, 8, 3, 5).contiguous(memory_format=torch.channels_last), 1, per_sample=True)
    assert group_view(nhwc, 2) is None                                       # channels interleave: per channel
    assert group_view(nchw, 8) is None                                       # instance norm: nothing to group


# ------------------------------------------------------------------------ regimes and traffic model

H100 = plan.DeviceLimits(programs=4 * 132, sms=132, l2_bytes=50 * 2**20)


def _plan(shape, dtype=torch.float32, channels_last=False, num_groups=None, limits=H100):
    x = torch.empty(shape, dtype=dtype, device="meta")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    per_sample = num_groups is not None
    return plan._call_plan(tuple(x.shape), x.stride(), x.element_size(), 1, num_groups or shape[1], per_sample,
                           limits, plan.R1_MAX_ELEMENTS, plan.TILE_BYTES, plan.INT32_LIMIT), x.numel() * x.element_size()


def test_regime_follows_slice_size_and_l2():
    late, _ = _plan((2, 2048, 7, 7), torch.bfloat16, channels_last=True)
    assert late.regime_fwd == late.regime_bwd == "R1"               # a channel's 98 values fit in registers
    group, _ = _plan((2, 2048, 7, 7), torch.bfloat16, channels_last=True, num_groups=32)
    assert group.regime_fwd == "R1" and group.r1.ch_mode == 1        # a group's 49 x 64 values too
    tokens, _ = _plan((8192, 1024), torch.bfloat16, num_groups=1)
    assert tokens.regime_fwd == "R1" and tokens.r1.ch_mode == 2      # layer norm rows: k runs over rows
    mid, nbytes = _plan((16, 256, 56, 56), torch.bfloat16)          # 25.7 MB: x fits in half the L2, x + dy not
    assert nbytes <= H100.l2_bytes // 2 < 2 * nbytes
    assert (mid.regime_fwd, mid.regime_bwd) == ("R2", "R3")
    stem, nbytes = _plan((32, 64, 112, 112), torch.bfloat16)         # 51 MB: larger than the L2
    assert (stem.regime_fwd, stem.regime_bwd) == ("R3", "R3")


def test_late_stage_nhwc_gets_a_program_per_sm():
    """The design review found 16 programs for the (2, 2048, 7, 7) NHWC statistics pass."""
    for dtype in (torch.float32, torch.bfloat16):
        p, _ = _plan((2, 2048, 7, 7), dtype, channels_last=True)
        assert p.r1.programs >= H100.sms
        assert p.r1.block_k * torch.empty((), dtype=dtype).element_size() >= 16   # 16 contiguous bytes per row


@pytest.mark.parametrize("shape,dtype,channels_last,num_groups", [
    ((2, 2048, 7, 7), torch.bfloat16, True, None), ((2, 2048, 7, 7), torch.float32, False, 32),
    ((8192, 1024), torch.bfloat16, False, 1), ((8, 256, 56, 56), torch.bfloat16, False, None),
    ((8, 256, 56, 56), torch.float32, True, 32), ((32, 64, 112, 112), torch.bfloat16, True, None),
])
def test_traffic_model_per_regime(shape, dtype, channels_last, num_groups):
    p, X = _plan(shape, dtype, channels_last, num_groups)
    l2u = int(H100.l2_bytes * plan.L2_USABLE_FRACTION)
    per_sample_rows = num_groups is not None and shape[0] > 1
    expected_fwd = {"R1": (2 * X, 1), "R2": (2 * X, 2), "R3": (2 * X + X - l2u, 2)}[p.regime_fwd]
    assert (p.fwd_traffic.total_bytes, p.fwd_traffic.launches) == expected_fwd
    extra = 1 if (p.regime_bwd == "R1" and p.r1.partial_rows > 1) or (p.regime_bwd != "R1" and per_sample_rows) else 0
    expected_bwd = {"R1": 3 * X, "R2": 3 * X, "R3": 3 * X + 2 * X - l2u}[p.regime_bwd]
    assert (p.bwd_traffic.total_bytes, p.bwd_traffic.launches) == (expected_bwd, (1 if p.regime_bwd == "R1" else 2)
                                                                    + extra)
    assert (p.eval_traffic.total_bytes, p.eval_traffic.launches) == (2 * X, 1)
    # Every regime is within 2x of the minimum (2|X| / 3|X|); R1 and R2 reach it.
    assert p.fwd_traffic.total_bytes < 3 * X and p.bwd_traffic.total_bytes < 5 * X


def test_call_plans_are_cached_per_shape_strides_dtype_and_device():
    x = torch.empty(4, 8, 5, 5)
    first = plan.call_plan(x, 1, 8, False)
    hits = plan._call_plan.cache_info().hits
    assert plan.call_plan(torch.empty(4, 8, 5, 5), 1, 8, False) is first
    assert plan._call_plan.cache_info().hits == hits + 1
    assert plan.call_plan(x.contiguous(memory_format=torch.channels_last), 1, 8, False) is not first
    assert plan.call_plan(x.half(), 1, 8, False) is not first


def test_partial_and_merge_indices_count_toward_int64():
    view = plan.CanonicalView(B=1, C=4096, S=1000, sb=0, sc=1, ss=4096)          # 4M elements: offsets int32
    assert not plan.needs_int64(view)
    assert plan.needs_int64(view, partial_rows=2**20)                               # partials: 2**32 entries
    big = plan.CanonicalView(B=1, C=64, S=2**26, sb=0, sc=1, ss=64)                 # 2**32 elements, NHWC
    p = plan._call_plan((2**26, 64), (64, 1), 2, 1, 64, False, H100, plan.R1_MAX_ELEMENTS, plan.TILE_BYTES,
                        plan.INT32_LIMIT)
    assert p.view == big and p.int64 and p.regime_fwd == "R3"
