"""Running statistics handed to the functional API are checked before anything is written to them.

Every backend behaves the same (issue 19): integer buffers are a TypeError naming the dtype (they
were silently never updated), buffers that require grad a ValueError in training and eval (as
torch's ``F.batch_norm``, which refuses them; the reference used to differentiate through them),
expanded buffers a ValueError when the call would update them (they folded every channel into one
value), and a ``num_batches_tracked`` that is not a one-element tensor a TypeError before the
running statistics move (it used to fail after updating them).
"""
import pytest
import torch

import channelnorm.functional as F

BACKENDS = ("auto", "reference", "native")
C = 3


def _calls(backend, training):
    """Every functional op that takes running statistics: (name, call(running_mean, running_var, nbt))."""
    x = torch.randn(4, C, 5) + torch.arange(C, dtype=torch.float32).view(1, C, 1)
    v = torch.ones(C)
    calls = [
        ("channel_norm", lambda rm, rv, n: F.channel_norm(x, rm, rv, training=training, backend=backend,
                                                          num_batches_tracked=n)),
        ("channel_norm_act", lambda rm, rv, n: F.channel_norm_act(x, rm, rv, training=training, backend=backend,
                                                                  num_batches_tracked=n)),
        ("instance_norm", lambda rm, rv, n: F.instance_norm(x, rm, rv, use_input_stats=training, backend=backend,
                                                            num_batches_tracked=n)),
        ("ghost_norm", lambda rm, rv, n: F.ghost_norm(x, rm, rv, training=training, backend=backend,
                                                      virtual_batch_size=2, num_batches_tracked=n)),
    ]
    if backend != "native":  # reference-only ops: "native" is refused by name
        calls += [
            ("batch_renorm", lambda rm, rv, n: F.batch_renorm(
                x, rm, rv, training=training, backend=backend,
                num_batches_tracked=torch.tensor(0) if n is None else n)),
            ("evonorm_b0", lambda rm, rv, n: F.evonorm_b0(x, rv, v, training=training, backend=backend,
                                                          num_batches_tracked=n)),
        ]
    return calls


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_running_buffers_are_a_type_error_naming_the_dtype(backend, training):
    for name, call in _calls(backend, training):
        rm, rv = torch.zeros(C, dtype=torch.long), torch.ones(C, dtype=torch.long)
        with pytest.raises(TypeError, match=r"running_(mean|var) must be a floating tensor.*torch.int64"):
            call(rm, rv, None)
        assert rm.tolist() == [0] * C and rv.tolist() == [1] * C, name


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_running_buffers_that_require_grad_are_refused_on_every_backend(backend, training):
    for name, call in _calls(backend, training):
        rm, rv = torch.zeros(C, requires_grad=True), torch.ones(C, requires_grad=True)
        with pytest.raises(ValueError, match=r"running_(mean|var) requires grad.*not differentiable.*detach"):
            call(rm, rv, None)
        assert rm.tolist() == [0.0] * C and rv.tolist() == [1.0] * C, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_expanded_running_buffers_are_refused_when_they_would_be_updated(backend):
    for name, call in _calls(backend, True):
        rm, rv = torch.zeros(1).expand(C), torch.ones(1).expand(C)
        with pytest.raises(ValueError, match=r"running_(mean|var) is expanded \(stride 0 over its 3 channels\)"):
            call(rm, rv, None)
        assert rm.tolist() == [0.0] * C and rv.tolist() == [1.0] * C, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_expanded_running_buffers_are_read_in_eval_as_their_values(backend):
    # Nothing is written in eval: an expanded buffer is just its values (as in torch).
    for name, call in _calls(backend, False):
        expanded = call(torch.zeros(1).expand(C), (torch.ones(1) * 2).expand(C), None)
        dense = call(torch.zeros(C), torch.full((C,), 2.0), None)
        torch.testing.assert_close(expanded, dense, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tracked", [0, 0.0, torch.zeros(2, dtype=torch.long), torch.tensor(False),
                                     torch.zeros((), dtype=torch.complex64)])
def test_num_batches_tracked_is_checked_before_the_running_statistics_move(backend, tracked):
    for name, call in _calls(backend, True):
        rm, rv = torch.zeros(C), torch.ones(C)
        with pytest.raises(TypeError, match=r"num_batches_tracked must be a one-element"):
            call(rm, rv, tracked)
        assert rm.tolist() == [0.0] * C and rv.tolist() == [1.0] * C, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_buffers_still_update(backend):
    # The checks refuse only the cases above: a float counter and long counter both count.
    for counter in (torch.tensor(0), torch.zeros((), dtype=torch.float64), torch.zeros(1, dtype=torch.int32)):
        for name, call in _calls(backend, True):
            rm, rv, n = torch.zeros(C), torch.ones(C), counter.clone()
            call(rm, rv, n)
            assert n.item() == 1 and not torch.equal(rv, torch.ones(C)), name
