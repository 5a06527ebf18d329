"""Vectorized seeds: K members trained as one wide grouped network equal K separate runs."""
import pytest
import torch

from channelnorm.experiments.models import build_model, stack, stem_stride, unstack
from channelnorm.experiments.train import Member, MemberSGD, TrainPlan, train_members

KINDS = [("channel", {}), ("group", {}), ("layer", {}), ("layer2d", {}), ("instance", {}), ("none", {}),
         ("ghost", {"virtual_batch_size": 2}), ("frn", {}), ("evonorm_s0", {}), ("evonorm_b0", {}),
         ("batch_renorm", {"warmup_steps": 2})]


@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("kind,kwargs", KINDS, ids=[k for k, _ in KINDS])
def test_wide_forward_equals_separate_models(kind, kwargs, in_channels):
    """One forward (train mode, batch statistics) of the wide network equals each narrow model's,
    and every running statistic it updates is that model's (float64, so the tolerance is tight)."""
    seeds = (3, 5, 7)
    narrow = []
    for seed in seeds:
        torch.manual_seed(seed)
        narrow.append(build_model(kind, 4, 1, max_groups=2, in_channels=in_channels, **kwargs).double())
    wide = stack(narrow, build_model(kind, 4, 3, max_groups=2, in_channels=in_channels, **kwargs).double())
    assert wide.stem[0].weight.shape == (3 * 4, in_channels, 3, 3)
    x = [torch.randn(6, in_channels, 10, 10, dtype=torch.float64) for _ in seeds]
    out = wide(torch.cat(x, dim=1))
    for k, model in enumerate(narrow):
        torch.testing.assert_close(out[:, k], model(x[k]), rtol=1e-10, atol=1e-10)
        back = unstack(wide, build_model(kind, 4, 1, max_groups=2, in_channels=in_channels, **kwargs).double(), k, 3)
        for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_build_model_with_seeds_starts_where_single_runs_start():
    wide = build_model("channel", 4, 2, seeds=(11, 12))
    for k, seed in enumerate((11, 12)):
        torch.manual_seed(seed)
        single = build_model("channel", 4, 1)
        back = unstack(wide, build_model("channel", 4, 1), k, 2)
        for a, b in zip(single.state_dict().values(), back.state_dict().values()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("norm,norm_batch,channels_last,in_channels", [
    ("channel", 8, False, 3), ("channel", 2, False, 3), ("group", 8, False, 3), ("layer", 8, False, 3),
    ("channel", 2, True, 3), ("instance", 8, True, 3), ("layer2d", 8, False, 3),
    # grey images (Fashion-MNIST): one input channel per member; channels_last and 28x28 in float64 below
    ("channel", 2, False, 1), ("channel", 8, False, 1), ("group", 8, False, 1), ("layer", 8, False, 1)])
def test_training_k_members_equals_k_separate_runs(norm, norm_batch, channels_last, in_channels):
    """Twelve SGD steps (momentum, weight decay, warm-up + cosine) of a 3-member cell and of three
    1-member cells with the same seeds: same losses and parameters. float32 with grouped vs plain
    convolutions: the sums are ordered differently, so agreement is to ~1e-4 relative after 12
    steps (a wrong data order, init or learning rate changes them at the 1e-1 level)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, in_channels, 10, 10, generator=g), torch.randint(0, 10, (64,), generator=g)
    members = (Member(0, 0.05), Member(1, 0.1), Member(2, 0.2))
    common = dict(norm=norm, norm_batch=norm_batch, sgd_batch=8, steps=12, width=4, max_groups=2, log_points=12,
                  channels_last=channels_last, in_channels=in_channels)
    wide, wide_logs, _ = train_members(TrainPlan(members=members, **common), x, y)
    for k, member in enumerate(members):
        single, logs, _ = train_members(TrainPlan(members=(member,), **common), x, y)
        losses = [e["loss"] for e in logs[0].entries if e["kind"] == "train"]
        wide_losses = [e["loss"] for e in wide_logs[k].entries if e["kind"] == "train"]
        assert len(losses) == 12
        torch.testing.assert_close(torch.tensor(wide_losses), torch.tensor(losses), rtol=2e-4, atol=2e-5)
        for (name, a), b in zip(single.state_dict().items(),
                                (v if v.ndim == 0 else v.chunk(3)[k] for v in wide.state_dict().values())):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)


def test_member_sgd_is_torch_sgd_per_slice():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, 5))
    q = torch.nn.Parameter(p.detach().clone())
    ours = MemberSGD([p], 3, momentum=0.9, weight_decay=1e-3)
    lrs = torch.tensor([0.1, 0.2, 0.3])
    refs = [torch.nn.Parameter(q.detach()[2 * k:2 * k + 2].clone()) for k in range(3)]
    theirs = [torch.optim.SGD([r], lr=float(lrs[k]), momentum=0.9, weight_decay=1e-3) for k, r in enumerate(refs)]
    for _ in range(5):
        grad = torch.randn(6, 5)
        p.grad = grad.clone()
        ours.step(lrs)
        for k, (r, opt) in enumerate(zip(refs, theirs)):
            r.grad = grad[2 * k:2 * k + 2].clone()
            opt.step()
    torch.testing.assert_close(p.detach(), torch.cat([r.detach() for r in refs]), rtol=1e-6, atol=1e-7)


def test_a_diverged_member_stops_without_touching_the_others():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 10, 10, generator=g), torch.randint(0, 10, (64,), generator=g)
    common = dict(norm="channel", norm_batch=8, sgd_batch=8, steps=10, width=4, log_points=10, channels_last=False)
    members = (Member(0, 0.05), Member(1, 1e6))
    _, logs, _ = train_members(TrainPlan(members=members, **common), x, y)
    _, alone, _ = train_members(TrainPlan(members=members[:1], **common), x, y)
    assert logs[1].diverged_at is not None and logs[0].diverged_at is None
    a = [e["loss"] for e in logs[0].entries if e["kind"] == "train"]
    b = [e["loss"] for e in alone[0].entries if e["kind"] == "train"]
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=2e-4, atol=2e-5)


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("norm,norm_batch,channels_last,stride", [("channel", 2, True, 1), ("channel", 8, False, 1),
                                                                  ("group", 8, False, 1), ("instance", 8, True, 1),
                                                                  ("channel", 2, False, 2), ("group", 8, False, 2)])
def test_grey_28x28_members_equal_separate_runs_in_float64(float64_default, norm, norm_batch, channels_last, stride):
    """The Fashion-MNIST input (one channel, 28x28): a 3-member cell against three single runs, in
    float64 (model, data and optimizer state), so grouped and plain convolutions may differ only by
    rounding (~1e-15 relative; float32 at this size lets a near-zero bias drift by a few %). Width
    8, not 4: torch 2.13's one-thread CPU backward of a channels_last 1x1 stride-2 conv with 4 input
    channels (the width-4 shortcut) corrupts the heap on some CPUs (AMD EPYC here)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    members = (Member(0, 0.05), Member(1, 0.1), Member(2, 0.2))
    common = dict(norm=norm, norm_batch=norm_batch, sgd_batch=8, steps=12, width=8, max_groups=2, log_points=12,
                  channels_last=channels_last, in_channels=1, stem_stride=stride)
    wide, wide_logs, _ = train_members(TrainPlan(members=members, **common), x, y)
    assert wide.stem[0].weight.shape == (3 * 8, 1, 3, 3) and wide.stem[0].weight.dtype == torch.float64
    assert wide.stem[0].stride == (stride, stride)
    for k, member in enumerate(members):
        single, logs, _ = train_members(TrainPlan(members=(member,), **common), x, y)
        losses = [e["loss"] for e in logs[0].entries if e["kind"] == "train"]
        wide_losses = [e["loss"] for e in wide_logs[k].entries if e["kind"] == "train"]
        torch.testing.assert_close(torch.tensor(wide_losses), torch.tensor(losses), rtol=1e-10, atol=1e-12)
        for (name, a), b in zip(single.state_dict().items(),
                                (v if v.ndim == 0 else v.chunk(3)[k] for v in wide.state_dict().values())):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("size,stride,last", [(12, 1, 3), (16, 1, 4), (23, 1, 6), (24, 2, 3), (28, 2, 4), (32, 2, 4)])
def test_the_stem_halves_images_of_24_pixels_and_more(size, stride, last):
    """Large images (Fashion-MNIST 28, CIFAR-10 32) run the stages at half resolution; ``last`` is
    the last stage's map worked out by hand (each stride-2 3x3 conv with padding 1 gives ceil(n/2))."""
    assert stem_stride(size) == stride
    model = build_model("channel", 4, 1, stem_stride=stem_stride(size), in_channels=1)
    features = model.features(torch.randn(2, 1, size, size))
    assert features.shape[-2:] == (last, last)
