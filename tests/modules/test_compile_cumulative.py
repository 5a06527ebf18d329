"""momentum=None (cumulative average) under torch.compile: one graph, no host read of num_batches_tracked,
and the same running statistics as eager."""
import pytest
import torch

import channelnorm as cn

CASES = {
    "channel-auto": lambda: cn.ChannelNorm(4, momentum=None),
    "channel-reference": lambda: cn.ChannelNorm(4, momentum=None, backend="reference"),
    "instance-auto": lambda: cn.InstanceNorm(4, momentum=None, track_running_stats=True),
    "ghost": lambda: cn.GhostNorm(4, virtual_batch_size=4, momentum=None),
}


@pytest.mark.parametrize("case,fullgraph", [(case, True) for case in CASES] + [("channel-auto", False)])
def test_compiled_cumulative_average_matches_eager(case, fullgraph):
    torch._dynamo.reset()
    eager, compiled = CASES[case]().train(), CASES[case]().train()
    run = torch.compile(compiled, fullgraph=fullgraph, backend="inductor")
    for step in range(3):
        x = torch.randn(8, 4, 3, 3) * (step + 1) + step
        torch.testing.assert_close(run(x), eager(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled.running_mean, eager.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compiled.running_var, eager.running_var, rtol=1e-6, atol=1e-6)
    assert int(compiled.num_batches_tracked) == int(eager.num_batches_tracked) == 3
    # A non-finite batch still leaves the statistics alone (and is not counted).
    before = compiled.running_var.clone()
    run(torch.full((8, 4, 3, 3), float("nan")))
    assert torch.equal(compiled.running_var, before) and int(compiled.num_batches_tracked) == 3
