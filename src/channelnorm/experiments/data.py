"""The data a sweep trains on: the synthetic default set or CIFAR-10, standardized per colour channel."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import cifar, synthetic
from .config import ExperimentConfig

# keeps the synthetic test images disjoint from the training images (a different generator stream)
_TEST_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: tuple[str, ...]
    train_x: torch.Tensor   # (N, 3, H, W) float32, standardized with the training set's channel stats
    train_y: torch.Tensor   # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor

    def describe(self) -> str:
        _, c, h, w = self.train_x.shape
        return (f"{self.name}: {len(self.train_y)} training and {len(self.test_y)} test images, "
                f"{c}x{h}x{w}, {len(self.classes)} classes")


def _standardize(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True)
    return (train_x - mean) / std, (test_x - mean) / std


def load_dataset(config: ExperimentConfig) -> Dataset:
    if config.data_dir is None:
        train_x, train_y = synthetic.make_images(config.train_size or 8000, config.image_size, config.data_seed,
                                                 config.noise)
        test_x, test_y = synthetic.make_images(config.test_size or 2048, config.image_size,
                                               config.data_seed + _TEST_SEED_OFFSET, config.noise)
        name, classes = f"synthetic shapes (data seed {config.data_seed}, noise {config.noise})", synthetic.CLASSES
    else:
        train_x, train_y, test_x, test_y = cifar.load_cifar10(config.data_dir)
        # a fixed subset (the first images) when asked: the files are already in random order
        train_x, train_y = train_x[:config.train_size], train_y[:config.train_size]
        test_x, test_y = test_x[:config.test_size], test_y[:config.test_size]
        name, classes = f"CIFAR-10 from {config.data_dir}", cifar.CLASSES
    train_x, test_x = _standardize(train_x, test_x)
    return Dataset(name, tuple(classes), train_x.contiguous(), train_y, test_x.contiguous(), test_y)
