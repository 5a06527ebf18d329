"""Export and compilation of models with channelnorm layers.

The oracle is the eager model itself: ``torch.export`` and ONNX (run with onnxruntime) must give
its eval outputs; ``torch.compile`` must give its train and eval outputs, gradients and running
statistics.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import channelnorm as cn


class SmallCNN(nn.Module):
    """All four norms, one of them channels-last (channel_axis=-1), plus a FrozenChannelNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1), cn.ChannelNorm(8)
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, padding=1), cn.GroupNorm(2, 8)
        self.c3, self.n3 = nn.Conv2d(8, 8, 3, padding=1), cn.LayerNorm(8)
        self.c4, self.n4 = nn.Conv2d(8, 8, 3, padding=1), cn.InstanceNorm(8)
        self.n5 = cn.ChannelNorm(8, channel_axis=-1)
        self.n6 = cn.FrozenChannelNorm(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.n1(self.c1(x)))
        x = torch.relu(self.n2(self.c2(x)))
        x = torch.relu(self.n3(self.c3(x)))
        x = torch.relu(self.n4(self.c4(x)))
        x = self.n5(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.n6(x)
        return self.fc(x.mean((2, 3)))


def _eval_model(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for i in range(3):
            model(torch.randn(6, 3, 8, 8) * (1 + i) + i)
        for norm in (model.n1, model.n2, model.n5):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        model.n6.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_torch_export_matches_eager_with_dynamic_batch():
    model = _eval_model()
    x = torch.randn(2, 3, 8, 8)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    exported = program.module()
    for n in (2, 5):
        xi = torch.randn(n, 3, 8, 8)
        torch.testing.assert_close(exported(xi), model(xi), rtol=1e-5, atol=1e-6)
    xc = torch.randn(3, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(exported(xc), model(xc), rtol=1e-5, atol=1e-6)


def test_onnx_export_runs_in_onnxruntime():
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = _eval_model(1)
    x = torch.randn(2, 3, 8, 8)
    onnx_program = torch.onnx.export(model, (x,), dynamo=True, verbose=False,
                                     dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for n in (2, 4):
        xi = torch.randn(n, 3, 8, 8)
        out = torch.from_numpy(session.run(None, {name: xi.numpy()})[0])
        # float32 end to end; onnxruntime fuses and reorders ops, so allow float32 rounding noise.
        torch.testing.assert_close(out, model(xi), rtol=1e-4, atol=1e-5)


def test_torch_compile_matches_eager_in_train_and_eval():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), cn.ChannelNorm(6), nn.ReLU(),
        cn.GroupNorm(2, 6), cn.InstanceNorm(6, track_running_stats=True),
    )
    eager = copy.deepcopy(model)
    compiled = torch.compile(model)
    x = torch.randn(4, 3, 8, 8)
    g = torch.randn(4, 6, 8, 8)  # a random upstream gradient (sum(y²) of a normalized y is ~constant)
    for step in range(2):
        xc = (x + step).requires_grad_(True)
        xe = (x + step).requires_grad_(True)
        yc, ye = compiled(xc), eager(xe)
        torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5)
        (yc * g).sum().backward()
        (ye * g).sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(model.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
    model.eval()
    eager.eval()
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
