"""The numbers behind ``cn.diagnose``'s default thresholds, and what a diagnosis costs on CPU.

1. **Reference** (``--reference``): the experiment's network (``channelnorm compare``'s ResidualCNN,
   channel norm), trained briefly at batch 32 on the synthetic shapes (``--steps`` SGD steps), its
   running statistics recomputed, then diagnosed on ``--images`` training images at batch 2, 4, 8, 16 and
   32: each layer's ``noise`` and the model's ``output_change`` per batch size. The experiment measured
   a test-error penalty at normalization batch 2 and none at 8 (docs/results/report.md), which is where
   ``max_noise`` and ``max_output_change`` sit.
2. **Cost** (``--cost``): seconds of one ``cn.diagnose`` of a ResNet-18 (torchvision's layout, 64 channels
   in the first stage, built here from ``nn`` modules) on ``--cost-batches`` batches of 32 images of
   ``--cost-size`` pixels, next to the seconds of one plain ``eval()`` forward over the same batches.

Prints Markdown with the command, CPU model, torch version and thread count.

    PYTHONPATH=src python benchmarks/diagnose_reference.py [--steps 600] [--images 2048] [--cost-size 64]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
from torch import nn

import channelnorm as cn
from channelnorm.experiments.synthetic import make_images
from channelnorm.experiments.train import Member, TrainPlan, train_members

BATCH_SIZES = (2, 4, 8, 16, 32)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 module tree (conv1, bn1, layer1..layer4 of two BasicBlocks, fc)."""

    def __init__(self, width: int = 64, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2),
                                                         BasicBlock(cout, cout, 1)))
            cin = cout
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def reference(steps: int, images: int, log) -> None:
    x, y = make_images(images, 16, seed=0, noise=0.05, colour_variation=0.5, contrast_variation=0.3)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    plan = TrainPlan(norm="channel", norm_batch=32, sgd_batch=32, steps=steps, members=(Member(0, 0.4),), width=8,
                     log_points=1, curve_points=1, channels_last=False)
    model, logs, seconds = train_members(plan, x, y)
    cn.recompute_stats(model, list(x.split(64)), progress=False)
    log(f"Experiment network, channel norm, width 8, trained {steps} steps at batch 32 on {images} synthetic "
        f"images ({seconds:.1f} s, final training loss {logs[0].final_train_loss:.3f}); diagnosed on the same "
        f"images (at most 64 batches per size).\n")
    reports = [cn.diagnose(model, list(x.split(b)), max_batches=64) for b in BATCH_SIZES]
    log("| layer | " + " | ".join(f"noise at {b}" for b in BATCH_SIZES) + " |")
    log("|---|" + "---|" * len(BATCH_SIZES))
    for i, row in enumerate(reports[0].layers):
        log(f"| {row.name} | " + " | ".join(f"{r.layers[i].metrics['noise']:.3f}" for r in reports) + " |")
    log("| **worst layer** | " + " | ".join(f"{max(row.metrics['noise'] for row in r.layers):.3f}" for r in reports)
        + " |")
    log("| **output_change** | " + " | ".join(f"{r.metrics['output_change']:.3f}" for r in reports) + " |")
    log("| **prediction_change** | " + " | ".join(f"{r.metrics['prediction_change']:.3f}" for r in reports) + " |")


def cost(size: int, batches: int, repeat: int, log) -> None:
    torch.manual_seed(0)
    model = ResNet18()
    data = [torch.randn(32, 3, size, size) for _ in range(batches)]
    forward, diagnosis = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        model.eval()
        with torch.no_grad():
            for x in data:
                model(x)
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        cn.diagnose(model, data)
        diagnosis.append(time.perf_counter() - start)
    log(f"\nResNet-18 (64 channels in the first stage), {batches} batches of 32x3x{size}x{size}, best of {repeat}: "
        f"cn.diagnose {min(diagnosis):.2f} s; one eval() forward over the same batches {min(forward):.2f} s "
        f"(ratio {min(diagnosis) / min(forward):.1f}); load average {os.getloadavg()[0]:.1f} at the end.")


def main(argv=None, log=print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--cost-size", type=int, default=64)
    parser.add_argument("--cost-batches", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--no-cost", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log(f"Command: `PYTHONPATH=src python benchmarks/diagnose_reference.py {' '.join(argv or sys.argv[1:])}`; "
        f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); torch {torch.__version__}; "
        f"{torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.1f} at the start.\n")
    if not args.no_reference:
        reference(args.steps, args.images, log)
    if not args.no_cost:
        cost(args.cost_size, args.cost_batches, args.repeat, log)


if __name__ == "__main__":
    main()
