"""The network every norm is compared on: a small residual CNN with a norm after every conv."""
from __future__ import annotations

from typing import Callable

from torch import nn

# builds the norm layer for a given channel count (see ``norm_factory`` in train.py)
NormFactory = Callable[[int], nn.Module]


# Norms that carry their own nonlinearity (FRN's TLU, EvoNorm's sigmoid gate / instance-std max):
# their papers use them in place of norm + ReLU, so the network drops the ReLU right after them.
SELF_ACTIVATED_NORMS = frozenset({"frn", "evonorm_s0", "evonorm_b0"})


def _activation(norm_is_activated: bool) -> nn.Module:
    return nn.Identity() if norm_is_activated else nn.ReLU()


class ResidualBlock(nn.Module):
    """conv-norm-relu-conv-norm plus the shortcut (1x1 conv + norm when the shape changes), then relu."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, make_norm: NormFactory,
                 norm_is_activated: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = make_norm(out_channels)
        self.act1 = _activation(norm_is_activated)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = make_norm(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          make_norm(out_channels))
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResidualCNN(nn.Module):
    """Stem conv, then one residual block per stage (widths w, 2w, 4w; stages 2 and 3 halve the
    resolution), global average pooling and a linear classifier. Works for any input size >= 8.
    ``norm_is_activated``: the norm includes its nonlinearity, so no ReLU follows it (the ReLU after
    each residual addition stays)."""

    def __init__(self, make_norm: NormFactory, width: int = 16, num_classes: int = 10, in_channels: int = 3,
                 norm_is_activated: bool = False) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), make_norm(width),
                                  _activation(norm_is_activated))
        blocks, previous = [], width
        for stage, channels in enumerate(widths):
            blocks.append(ResidualBlock(previous, channels, 1 if stage == 0 else 2, make_norm, norm_is_activated))
            previous = channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))
