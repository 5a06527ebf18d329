"""The network every norm is compared on: a small residual CNN with a norm after every conv.

``ResidualCNN(..., models=K)`` is K independent copies of the network in one module (vectorized
seeds): every conv is grouped with ``groups=K`` (model k owns output channels
``[k*C, (k+1)*C)`` and reads only model k's inputs), every norm is the library's norm over K*C
channels with its scope kept per model (see ``wide_norm``), and the classifier is one linear map
per model. Every parameter and buffer is laid out model by model along dim 0, so ``stack`` builds
the wide network from K narrow ones by concatenation, and ``unstack`` takes model k back out.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..functional import layer_norm_2d
from ..modules import LayerNorm2d
from ..registry import canonical_kind, create_norm, norm_traits

# builds the norm layer for a given per-model channel count
NormFactory = Callable[[int], nn.Module]

# per-model group count of the group-scoped norms (the largest divisor of C not above it)
GROUP_KINDS_ARG = {"group": "num_groups", "evonorm_s0": "num_groups"}


# images at least this many pixels on a side (Fashion-MNIST 28, CIFAR-10 32) are halved by the stem,
# so the three stages run at 14/7/4 or 16/8/4 pixels, the scale of the 12- and 16-pixel synthetic
# images, and a cell costs about a quarter of what full resolution would
HALVED_FROM = 24


def stem_stride(image_size: int) -> int:
    """The stem convolution's stride for square images of ``image_size`` pixels: 2 from
    ``HALVED_FROM`` pixels on, else 1."""
    return 2 if image_size >= HALVED_FROM else 1


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def wide_norm(kind: str, channels: int, models: int, max_groups: int, **kwargs: Any) -> nn.Module:
    """The norm ``kind`` for ``models`` models of ``channels`` channels each, built from the library's
    own norms so that it computes exactly ``models`` separate norms:

    * channel, instance and per-channel variants (ghost, batch_renorm, frn, evonorm_b0): their
      statistics never mix channels, so one layer over ``models * channels`` channels is exact;
    * group scope: ``models * G`` groups of the same size, so no group straddles two models;
    * layer scope: a layer norm is a group norm with one group per sample, so ``models`` groups;
    * position scope (layer2d): statistics over each model's own channels at each position
      (`WideLayerNorm2d`).
    """
    kind = canonical_kind(kind)
    scope = norm_traits(kind).scope
    total = models * channels
    if kind == "none":
        return nn.Identity()
    if scope == "position" and models > 1:
        return WideLayerNorm2d(channels, models, **kwargs)
    if scope == "layer":
        return create_norm("group", total, num_groups=models, **kwargs)
    if scope == "group":
        groups = largest_divisor_at_most(channels, max_groups)
        return create_norm(kind, total, **{GROUP_KINDS_ARG[kind]: models * groups}, **kwargs)
    return create_norm(kind, total, **kwargs)


class WideLayerNorm2d(LayerNorm2d):
    """``models`` LayerNorm2d side by side over ``models * channels`` channels: each position is
    normalized over each model's own ``channels`` (one LayerNorm2d over all of them would mix the
    models). ``weight``/``bias`` are model k's ``[k*C, (k+1)*C)``, as ``stack`` lays them out."""

    def __init__(self, channels: int, models: int, **kwargs: Any) -> None:
        super().__init__(models * channels, **kwargs)
        self.models = models

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self._check_input(x)
        k = self.models
        per_model = x.unflatten(axis, (k, x.shape[axis] // k))
        y = layer_norm_2d(per_model, channel_axis=axis + 1, eps=self.eps, backend=self.backend).flatten(axis, axis + 1)
        if self.weight is not None:
            shape = [1] * y.ndim
            shape[axis] = -1
            y = y * self.weight.view(shape)
            if self.bias is not None:
                y = y + self.bias.view(shape)
        return y


class GroupedLinear(nn.Module):
    """``models`` independent linear maps: input (N, models*F) -> output (N, models, out_features).
    ``weight`` is (models*out_features, F), model k's rows first-to-last, so it stacks like the convs."""

    def __init__(self, in_features: int, out_features: int, models: int = 1) -> None:
        super().__init__()
        self.models, self.in_features, self.out_features = models, in_features, out_features
        layers = [nn.Linear(in_features, out_features) for _ in range(models)]   # torch's default init
        self.weight = nn.Parameter(torch.cat([layer.weight.detach() for layer in layers]))
        self.bias = nn.Parameter(torch.cat([layer.bias.detach() for layer in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, f, o = self.models, self.in_features, self.out_features
        out = torch.einsum("nkf,kof->nko", x.reshape(-1, k, f), self.weight.view(k, o, f))
        return out + self.bias.view(k, o)


class ResidualBlock(nn.Module):
    """conv-norm-relu-conv-norm plus the shortcut (1x1 conv + norm when the shape changes), then relu."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, make_norm: NormFactory,
                 norm_is_activated: bool = False, models: int = 1) -> None:
        super().__init__()
        k = models
        self.conv1 = nn.Conv2d(k * in_channels, k * out_channels, 3, stride, 1, bias=False, groups=k)
        self.norm1 = make_norm(out_channels)
        self.act1 = nn.Identity() if norm_is_activated else nn.ReLU()
        self.conv2 = nn.Conv2d(k * out_channels, k * out_channels, 3, 1, 1, bias=False, groups=k)
        self.norm2 = make_norm(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(k * in_channels, k * out_channels, 1, stride, bias=False,
                                                    groups=k), make_norm(out_channels))
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResidualCNN(nn.Module):
    """Stem conv, then one residual block per stage (widths w, 2w, 4w; stages 2 and 3 halve the
    resolution), global average pooling and a linear classifier. Works for any input size >= 8.

    Args:
        make_norm: builds the norm for a per-model channel count (already wide when ``models > 1``).
        width: channels of the first stage.
        num_classes, in_channels: of one model.
        norm_is_activated: the norm includes its nonlinearity, so no ReLU follows it (the ReLU
            after each residual addition stays).
        models: K models side by side (see the module docstring).
        stem_stride: stride of the stem convolution (``stem_stride(image_size)``: 2 halves large images).

    Shape:
        input (N, K*in_channels, H, W): model k reads channels ``[k*in_channels, (k+1)*in_channels)``;
        output (N, K, num_classes), or (N, num_classes) when ``models == 1``.
    """

    def __init__(self, make_norm: NormFactory, width: int = 16, num_classes: int = 10, in_channels: int = 3,
                 norm_is_activated: bool = False, models: int = 1, stem_stride: int = 1) -> None:
        super().__init__()
        k = self.models = models
        widths = (width, 2 * width, 4 * width)
        self.stem = nn.Sequential(nn.Conv2d(k * in_channels, k * width, 3, stem_stride, 1, bias=False, groups=k),
                                  make_norm(width), nn.Identity() if norm_is_activated else nn.ReLU())
        blocks, previous = [], width
        for stage, channels in enumerate(widths):
            blocks.append(ResidualBlock(previous, channels, 1 if stage == 0 else 2, make_norm, norm_is_activated, k))
            previous = channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = GroupedLinear(previous, num_classes, k)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x):
        out = self.head(self.pool(self.features(x)))
        return out[:, 0] if self.models == 1 else out


def build_model(kind: str, width: int, models: int = 1, max_groups: int = 8, seeds: Sequence[int] = (),
                in_channels: int = 3, stem_stride: int = 1, **norm_kwargs: Any) -> ResidualCNN:
    """The network with norm ``kind`` for ``models`` models. With ``seeds`` (one per model), model k
    is initialized exactly as a single model built after ``torch.manual_seed(seeds[k])``, so the
    wide network starts where K separate runs start.

    Args:
        kind: a ``create_norm`` kind; width, models, max_groups: as ``ResidualCNN`` / ``wide_norm``.
        seeds: one initialization seed per model, or empty (the current RNG state).
        in_channels: channels of one model's input images (1 grey, 3 colour); the stem reads them.
        stem_stride: the stem convolution's stride (see ``stem_stride``).
        norm_kwargs: passed on to every norm.
    """
    def factory(k: int) -> ResidualCNN:
        return ResidualCNN(lambda c: wide_norm(kind, c, k, max_groups, **norm_kwargs), width,
                           in_channels=in_channels, norm_is_activated=norm_traits(kind).includes_activation,
                           models=k, stem_stride=stem_stride)

    if not seeds:
        return factory(models)
    if len(seeds) != models:
        raise ValueError(f"build_model: {models} models but {len(seeds)} seeds {list(seeds)}")
    narrow = []
    for seed in seeds:
        torch.manual_seed(seed)
        narrow.append(factory(1))
    return stack(narrow, factory(models))


@torch.no_grad()
def stack(narrow: Sequence[nn.Module], wide: nn.Module) -> nn.Module:
    """Copy K narrow models into ``wide`` (built with ``models=K``): each parameter and buffer is the
    concatenation along dim 0; scalar buffers (``num_batches_tracked``) come from the first model."""
    states = [m.state_dict() for m in narrow]
    merged = {name: (states[0][name] if states[0][name].ndim == 0 else torch.cat([s[name] for s in states]))
              for name in states[0]}
    wide.load_state_dict(merged)
    return wide


@torch.no_grad()
def unstack(wide: nn.Module, narrow: nn.Module, index: int, models: int) -> nn.Module:
    """Copy model ``index`` of the K-model ``wide`` network into the single model ``narrow``."""
    state = {}
    for name, value in wide.state_dict().items():
        state[name] = value if value.ndim == 0 else value.chunk(models)[index]
    narrow.load_state_dict(state)
    return narrow
