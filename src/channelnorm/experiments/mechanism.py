"""What each normalization scope removes from the features: a measured illustration.

The network's first conv (as initialized for seed 0) is applied to test images; then each norm
(train mode, its own statistics over the whole set of images as one batch) normalizes the result.
We change one thing at a time and measure the relative RMS change of the normalized features:

* per-image contrast: every image scaled around its own mean by a random factor in [0.5, 1];
* per-image colour: every image shifted by a random offset per image channel in [-0.2, 0.2] (on
  grey images, one channel, this is a per-image brightness shift);
* per-filter scale: one filter of the conv multiplied by 3 (change of that channel, and of the
  other channels).

0 means the norm removes that change (invariance); the zero-padded borders of the conv keep
even exact invariances from being exactly 0. Also measured: the share of the conv features'
variance that lies between images' per-channel means (what per-sample, per-channel statistics
remove and per-channel batch statistics keep).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .models import wide_norm

SCOPES = ("channel", "group", "layer", "instance")


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-12))


@torch.no_grad()
def measure(images: torch.Tensor, width: int, max_groups: int = 8, seed: int = 0,
            norms: tuple[str, ...] = SCOPES) -> dict[str, Any]:
    """The changes above, measured on ``images``.

    Args:
        images: (N, C, H, W) standardized test images, any channel count C (the conv reads C).
        width: output channels of the conv; max_groups: of the group norm (as the network's).
        seed: of the conv's initialization and of the random changes.
        norms: the norms measured.

    Returns:
        {"per_norm": {norm: {change: value}}, "between_image_mean_share": float, "images": N}.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n, channels = images.shape[:2]
    conv = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = images.new_empty(n, 1, 1, 1).uniform_(0.5, 1.0, generator=g)
    shifted_contrast = mean + contrast * (images - mean)
    colour = images.new_empty(n, channels, 1, 1).uniform_(-0.2, 0.2, generator=g)
    shifted_colour = images + colour
    features = conv(images)
    scaled_conv = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
    scaled_conv.weight.copy_(conv.weight)
    scaled_conv.weight[0] *= 3.0
    per_norm = {}
    for kind in norms:
        norm = wide_norm(kind, width, 1, max_groups).train()
        base = norm(features)
        scaled = norm(scaled_conv(images))
        per_norm[kind] = {
            "contrast": _relative_change(norm(conv(shifted_contrast)), base),
            "colour": _relative_change(norm(conv(shifted_colour)), base),
            "filter_scale_same_channel": _relative_change(scaled[:, :1], base[:, :1]),
            "filter_scale_other_channels": _relative_change(scaled[:, 1:], base[:, 1:]),
        }
    channel_means = features.mean(dim=(2, 3))                                   # (N, C)
    between = channel_means.var(dim=0, unbiased=False).sum()
    total = features.transpose(0, 1).reshape(width, -1).var(dim=1, unbiased=False).sum()
    return {"per_norm": per_norm, "between_image_mean_share": float(between / total), "images": n}
