"""The data a sweep trains on (``config.data``): the synthetic default set, CIFAR-10 or Fashion-MNIST,
standardized per channel with the training images' statistics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import cifar, fashion_mnist, synthetic
from .config import ExperimentConfig

# keeps the synthetic test images disjoint from the training images (a different generator stream)
_TEST_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Dataset:
    """Images and labels of one sweep.

    Args:
        name: what the images are (e.g. ``Fashion-MNIST``).
        classes: the class names, label i is ``classes[i]``.
        train_x, test_x: (N, C, H, W) float32, standardized with the training set's per-channel
            mean and standard deviation.
        train_y, test_y: (N,) int64 labels.
        source: the folder the images were read from (None: generated).
    """
    name: str
    classes: tuple[str, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: Optional[str] = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image: what the network's input layer is built for."""
        _, c, h, w = self.train_x.shape
        return c, h, w

    @property
    def in_channels(self) -> int:
        return self.image_shape[0]

    def describe(self) -> str:
        c, h, w = self.image_shape
        where = f" (read from {self.source})" if self.source is not None else ""
        return (f"{self.name}: {len(self.train_y)} training and {len(self.test_y)} test images, "
                f"{c}x{h}x{w}, {len(self.classes)} classes{where}")


def _standardize(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True)
    return (train_x - mean) / std, (test_x - mean) / std


def load_dataset(config: ExperimentConfig) -> Dataset:
    """The data set ``config.data`` names, with ``train_size``/``test_size`` images (None: all).

    Args:
        config: the experiment's settings (``data``, ``data_dir``, sizes; the synthetic settings).

    Raises:
        FileNotFoundError, ValueError: the files are missing or malformed (the message names them).
    """
    source = None
    if config.data == "synthetic":
        settings = dict(noise=config.noise, colour_variation=config.colour_variation,
                        contrast_variation=config.contrast_variation)
        train_x, train_y = synthetic.make_images(config.train_size or 8000, config.image_size, config.data_seed,
                                                 **settings)
        test_x, test_y = synthetic.make_images(config.test_size or 10000, config.image_size,
                                               config.data_seed + _TEST_SEED_OFFSET, **settings)
        name = (f"synthetic shapes (data seed {config.data_seed}, noise {config.noise}, colour variation "
                f"{config.colour_variation}, contrast variation {config.contrast_variation})")
        classes = synthetic.CLASSES
    elif config.data == "cifar10":
        train_x, train_y, test_x, test_y = cifar.load_cifar10(config.data_dir)
        # a fixed subset (the first images) when asked: the files are already in random order
        train_x, train_y = train_x[:config.train_size], train_y[:config.train_size]
        test_x, test_y = test_x[:config.test_size], test_y[:config.test_size]
        name, classes, source = "CIFAR-10", cifar.CLASSES, config.data_dir
    elif config.data == "fashion-mnist":
        source = config.data_dir if config.data_dir is not None else fashion_mnist.DEFAULT_DIR
        # the first images, as CIFAR-10: the files are in random class order
        train_x, train_y, test_x, test_y, _ = fashion_mnist.load_idx_images(source, config.train_size,
                                                                            config.test_size)
        name, classes = "Fashion-MNIST", fashion_mnist.CLASSES
    else:
        raise ValueError(f"unknown data set {config.data!r}")
    train_x, test_x = _standardize(train_x, test_x)
    return Dataset(name, tuple(classes), train_x.contiguous(), train_y, test_x.contiguous(), test_y, source)


def validation_split(data: Dataset, val_size: int) -> Dataset:
    """The training set split in two: the first images train, the last ``val_size`` are the held-out
    set (in the ``test_*`` fields). The test set is dropped, so whatever runs on the result (the
    learning-rate tuning) cannot see it."""
    n = len(data.train_y)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in [1, {n - 1}] for {n} training images, got {val_size}")
    cut = n - val_size
    return Dataset(f"{data.name}, validation split: {cut} training / {val_size} held-out training images",
                   data.classes, data.train_x[:cut], data.train_y[:cut], data.train_x[cut:], data.train_y[cut:],
                   data.source)
