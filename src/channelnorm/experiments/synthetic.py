"""A procedurally generated 10-class colour image set: the default data of ``channelnorm compare``.

Each class is a shape or a texture patch (disk, square, ring, frame, plus, X, triangle, horizontal
stripes, vertical stripes, checkerboard) drawn at a random position and size, in a foreground colour on a background colour with a smooth
colour gradient, plus pixel noise. Colours carry no class information, so the network has to learn
shape and texture.

Two settings decide how much the images vary in ways that one normalization scope removes and
another does not (``make_images``): ``colour_variation`` (0: every image light-grey shape on a
dark-grey background; 1: independent uniform random colours, including dark-on-light) and
``contrast_variation`` (each image's contrast around its own mean is scaled by a factor drawn
from [1 - c, 1]). Per-sample norms (instance, layer, group) divide such per-image variation out;
channel norm sees it as variation across the batch. Everything comes from
one ``torch.Generator``: the same seed gives the same images, bit for bit, on any machine.
"""
from __future__ import annotations

import math

import torch

CLASSES = ("disk", "square", "ring", "frame", "plus", "x", "triangle", "h_stripes", "v_stripes", "checker")


def _shape_masks(label: torch.Tensor, u: torch.Tensor, v: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
    """Foreground coverage in [0, 1] for each sample's class; u, v are coordinates centred on the
    shape and divided by its radius (|u|, |v| <= 1 is the shape's bounding box)."""
    r = torch.sqrt(u * u + v * v)
    box = torch.maximum(u.abs(), v.abs())
    inside = box <= 1.0
    stripes_h = torch.cos(math.pi * v / period) > 0
    stripes_v = torch.cos(math.pi * u / period) > 0
    checker = (torch.cos(math.pi * u / period) * torch.cos(math.pi * v / period)) > 0
    thick = 0.32
    masks = torch.stack([
        r <= 1.0,                                                   # disk
        box <= 0.85,                                                # square
        (r <= 1.0) & (r >= 1.0 - 2 * thick),                        # ring
        (box <= 1.0) & (box >= 1.0 - 2 * thick),                    # frame
        ((u.abs() <= thick) | (v.abs() <= thick)) & inside,         # plus
        (((u - v).abs() <= thick * 1.41) | ((u + v).abs() <= thick * 1.41)) & inside,  # x
        (v <= 0.8) & (v >= 2 * u.abs() - 1.0),                      # triangle, apex up
        stripes_h & inside,                                         # horizontal stripes
        stripes_v & inside,                                         # vertical stripes
        checker & inside,                                           # checkerboard
    ], dim=1)                                                       # (N, 10, H, W)
    return masks.gather(1, label.view(-1, 1, 1, 1).expand(-1, 1, *u.shape[-2:])).squeeze(1).float()


def make_images(n: int, size: int, seed: int, noise: float = 0.1, colour_variation: float = 1.0,
                contrast_variation: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of shape (3, size, size), float32, and their int64 labels (balanced: n // 10 per
    class, the remainder spread over the first classes, in shuffled order).

    Args:
        colour_variation: in [0, 1]; foreground = (1-v)*0.75 + v*U, background = (1-v)*0.25 + v*U'
            per colour channel (U, U' uniform in [0, 1]); the background gradient scales with it too.
        contrast_variation: in [0, 1); each image is scaled around its mean by a factor uniform in
            [1 - c, 1] (0: no change).
    """
    for name, value, high in (("colour_variation", colour_variation, 1.0), ("contrast_variation", contrast_variation, 1.0)):
        if not (0.0 <= value <= high) or (name == "contrast_variation" and value >= 1.0):
            raise ValueError(f"{name} must be in [0, 1{']' if name == 'colour_variation' else ')'}, got {value!r}")
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % len(CLASSES)
    label = label[torch.randperm(n, generator=g)]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    radius = uniform(0.28, 0.45, n, 1, 1) * size
    cx = uniform(0.0, 1.0, n, 1, 1) * (size - 2 * radius) + radius
    cy = uniform(0.0, 1.0, n, 1, 1) * (size - 2 * radius) + radius
    angle = uniform(-0.35, 0.35, n, 1, 1)                 # small rotation: shapes stay recognisable
    period = uniform(0.35, 0.55, n, 1, 1)                 # texture period, relative to the radius
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = grid.view(1, -1, 1), grid.view(1, 1, -1)
    du, dv = (x - cx) / radius, (y - cy) / radius
    u = du * torch.cos(angle) + dv * torch.sin(angle)
    v = -du * torch.sin(angle) + dv * torch.cos(angle)
    mask = _shape_masks(label, u, v, period).unsqueeze(1)   # (N, 1, H, W)

    v = colour_variation
    foreground = (1 - v) * 0.75 + v * torch.rand(n, 3, 1, 1, generator=g)
    background = (1 - v) * 0.25 + v * torch.rand(n, 3, 1, 1, generator=g)
    # keep some contrast: push the background away from the foreground where they are too close
    too_close = (foreground - background).abs().mean(dim=1, keepdim=True) < 0.25
    background = torch.where(too_close, 1.0 - foreground, background)
    slope = v * uniform(-0.4, 0.4, n, 3, 2)                   # background colour gradient across the image
    gradient = (slope[..., 0, None, None] * (x / size - 0.5) + slope[..., 1, None, None] * (y / size - 0.5))
    image = background + gradient + mask * (foreground - background)
    contrast = uniform(1.0 - contrast_variation, 1.0, n, 1, 1, 1)
    image = image.mean(dim=(1, 2, 3), keepdim=True) + contrast * (image - image.mean(dim=(1, 2, 3), keepdim=True))
    image = image + noise * torch.randn(n, 3, size, size, generator=g)
    return image.clamp_(0.0, 1.0).float(), label
