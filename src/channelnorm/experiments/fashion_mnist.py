"""Fashion-MNIST (or any folder of MNIST-format IDX files) as the experiment's images.

The folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte``, each plain or gzip-compressed (``name`` is read when present, else
``name.gz``; `idx` tells the two apart by content). Debian's package ``dataset-fashion-mnist``
installs them in ``DEFAULT_DIR``.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch

from .idx import IdxFormatError, read_images, read_labels

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
INSTALL_HINT = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu: the files go to "
                f"{DEFAULT_DIR}), or pass --data-dir with a folder holding the four IDX files "
                f"({', '.join(FILES.values())}; plain or .gz)")


class IdxImages(NamedTuple):
    """One data set read from IDX files: images (N, 1, H, W) float32 in [0, 1], labels int64."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    files: tuple[str, ...]    # the four files read, in ``FILES`` order


def find_files(directory: str | Path) -> dict[str, Path]:
    """{role: path} of the four files in ``directory``; a FileNotFoundError naming what is missing
    and how to install the data set otherwise.

    Args:
        directory: the folder (see the module docstring for what it must hold).
    """
    directory = Path(directory)
    found, missing = {}, []
    for role, name in FILES.items():
        path = next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)
        if path is None:
            missing.append(name)
        else:
            found[role] = path
    if missing:
        where = "does not exist" if not directory.is_dir() else f"lacks {', '.join(missing)} (plain or .gz)"
        raise FileNotFoundError(f"Fashion-MNIST folder {str(directory)!r} {where}; {INSTALL_HINT}")
    return found


def load_idx_images(directory: str | Path, train_size: Optional[int] = None,
                    test_size: Optional[int] = None) -> IdxImages:
    """The training and test images and labels of an IDX folder, every file checked in full.

    Args:
        directory: the folder (see the module docstring).
        train_size, test_size: keep the first this many images of each set (None: all). Only
            these are converted to float, so memory is 4 bytes per kept pixel plus the uint8 files.

    Raises:
        FileNotFoundError: a file is missing (the message says how to install the data set).
        IdxFormatError: a file is malformed, or the files do not belong together (image and label
            counts differ, training and test images differ in size).
    """
    paths = find_files(directory)
    train_images, test_images = read_images(paths["train_images"]), read_images(paths["test_images"])
    train_labels, test_labels = read_labels(paths["train_labels"]), read_labels(paths["test_labels"])
    for images, labels, what in ((train_images, train_labels, "train"), (test_images, test_labels, "test")):
        if len(images) != len(labels):
            raise IdxFormatError(f"{paths[what + '_images']} holds {len(images)} images but "
                                 f"{paths[what + '_labels']} {len(labels)} labels")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise IdxFormatError(f"{paths['train_images']} holds {train_images.shape[1]}x{train_images.shape[2]} "
                             f"images but {paths['test_images']} {test_images.shape[1]}x{test_images.shape[2]}")
    return IdxImages(_to_float(train_images[:train_size]), torch.from_numpy(train_labels[:train_size].astype(np.int64)),
                     _to_float(test_images[:test_size]), torch.from_numpy(test_labels[:test_size].astype(np.int64)),
                     tuple(str(paths[role]) for role in FILES))


def _to_float(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 in [0, 1], written straight into the result (no
    float temporary)."""
    out = np.empty(images.shape, dtype=np.float32)
    np.divide(images, np.float32(255), out=out, dtype=np.float32)
    return torch.from_numpy(out).unsqueeze(1)
