"""Reader for CIFAR-10 in its python pickle format (``cifar-10-batches-py``): no torchvision needed.

Each file (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) is a pickled dict with ``b"data"``,
a uint8 array of shape (N, 3072) holding the red, green and blue 32x32 planes of each image, and
``b"labels"``, a list of N ints in 0..9.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) float32 in [0, 1] and int64 labels from one pickle file."""
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected uint8 data of shape (N, 3072) and N labels, got "
                         f"{data.dtype} {data.shape} and {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return images, torch.from_numpy(labels)


def load_cifar10(directory: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels) from a ``cifar-10-batches-py`` folder."""
    directory = Path(directory)
    missing = [name for name in TRAIN_FILES + (TEST_FILE,) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 directory {str(directory)!r} lacks {', '.join(missing)} "
                                "(expected the python version: data_batch_1..5 and test_batch)")
    parts = [read_batch(directory / name) for name in TRAIN_FILES]
    test_x, test_y = read_batch(directory / TEST_FILE)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), test_x, test_y
