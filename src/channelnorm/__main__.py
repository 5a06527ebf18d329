"""``python -m channelnorm``: a short demo of the family on this machine. With arguments it is the
``channelnorm`` command line (``python -m channelnorm compare --help``, ``--version``), the same as the
console script installed with the package."""
from __future__ import annotations

import platform
import sys

import torch
from torch import nn

import channelnorm as cn


def main() -> None:
    torch.manual_seed(0)
    print(f"channelnorm {cn.__version__} | torch {torch.__version__} | {platform.machine()}")
    x = torch.randn(32, 16, 12, 12, dtype=torch.float64) * 3 + 1
    ours, theirs = cn.ChannelNorm(16, dtype=torch.float64), nn.BatchNorm2d(16, dtype=torch.float64)
    diff = (ours(x) - theirs(x)).abs().max().item()
    print(f"ChannelNorm vs nn.BatchNorm2d, float64 training output: max |diff| = {diff:.2e}")
    print("How much does sample 0's output move when the rest of its batch changes?")
    print(f"{'norm':<10}{'batch 32':>12}{'batch 2':>12}")
    for kind, kwargs in [("channel", {}), ("group", {"num_groups": 4}), ("layer", {}), ("instance", {})]:
        norm = cn.create_norm(kind, 16, dtype=torch.float64, **kwargs)
        row = []
        for batch in (32, 2):
            a = x[:batch]
            b = torch.cat([a[:1], a[1:] * 2 + 1])  # same sample 0, different companions
            row.append((norm(a)[0] - norm(b)[0]).abs().max().item())
        print(f"{kind:<10}{row[0]:>12.2e}{row[1]:>12.2e}")


if __name__ == "__main__":
    if sys.argv[1:]:
        from channelnorm.experiments.cli import main as cli_main
        sys.exit(cli_main(sys.argv[1:]))
    main()
