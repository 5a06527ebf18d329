"""Reader for CIFAR-10 in its python pickle format (``cifar-10-batches-py``): no torchvision needed.

Each file (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) is a pickled dict with ``b"data"``,
a uint8 array of shape (N, 3072) holding the red, green and blue 32x32 planes of each image, and
``b"labels"``, a list of N ints in 0..9.

The files are pickles, and a plain ``pickle.load`` runs whatever code a crafted file names. They are
read with `CifarUnpickler`, which rebuilds only what CIFAR-10 files contain (dicts, lists,
bytes, str, ints and plain numpy arrays of a non-object dtype); any other global in the file is a
`UnsafeDataError` naming the file, raised before anything of it runs.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch


class UnsafeDataError(ValueError):
    """A data file asked the unpickler for something a CIFAR-10 batch never contains."""


def _safe_dtype(spec, *args):
    dtype = np.dtype(spec.decode("latin1") if isinstance(spec, bytes) else spec, *args)
    if dtype.hasobject:  # an object array would let the pickle stream fill it with anything
        raise pickle.UnpicklingError(f"arrays of dtype {dtype} are not allowed")
    return dtype


# The largest array a batch file may ask for (the real ones hold 10000 x 3072 bytes): a 60-byte
# pickle must not be able to make the reader allocate petabytes.
MAX_ARRAY_BYTES = 1 << 30


class _NdarrayClass:
    """What the name ``numpy.ndarray`` resolves to: an argument to ``_reconstruct``, never callable,
    so a file cannot allocate an array of its chosen shape by calling the class."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("calling numpy.ndarray is not allowed")


def _checked_shape(shape, dtype: np.dtype) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of non-negative ints")
    size = dtype.itemsize
    for n in shape:
        size *= n
    if size > MAX_ARRAY_BYTES:
        raise pickle.UnpicklingError(f"an array of shape {shape} and dtype {dtype} is larger than "
                                     f"{MAX_ARRAY_BYTES} bytes")
    return shape


def _safe_reconstruct(subtype, shape, dtype):
    # numpy's _reconstruct(subtype, shape, dtype) is ndarray.__new__; only the plain class passes
    if subtype is not _NdarrayClass:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not allowed")
    dtype = _safe_dtype(dtype)
    return np.ndarray.__new__(np.ndarray, _checked_shape(shape, dtype), dtype)


def _safe_frombuffer(buffer, dtype, shape, order):  # the protocol-5 form of an ndarray
    dtype = _safe_dtype(dtype)
    return np.frombuffer(buffer, dtype=dtype).reshape(_checked_shape(shape, dtype), order=order).copy()


def _latin1_encode(text, encoding="latin1"):
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(latin1 text)
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 text")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): _NdarrayClass,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR-10 python batch refers to.

    Everything else (``os.system``, ``builtins.eval``, any class) is refused in ``find_class``, so
    no code named by the file is imported or called. Reading is otherwise that of ``pickle``.
    """

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch") from None


def _load_pickle(path: Path):
    with open(path, "rb") as handle:
        try:
            return CifarUnpickler(handle, encoding="bytes").load()
        except pickle.UnpicklingError as error:
            raise UnsafeDataError(f"{path} was refused: {error}; a CIFAR-10 python batch holds only "
                                  "dicts, lists, bytes, ints and uint8 numpy arrays") from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
                OverflowError, RecursionError) as error:
            raise ValueError(f"{path} is not a readable CIFAR-10 python batch: {error}") from None


TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) float32 in [0, 1] and int64 labels from one pickle file."""
    batch = _load_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"])
    labels = _labels(path, batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected uint8 data of shape (N, 3072) and N labels, got "
                         f"{data.dtype} {data.shape} and {len(labels)} labels")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return images, torch.from_numpy(labels)


def _labels(path: Path, labels) -> np.ndarray:
    """The labels as int64, refusing anything but a flat sequence of ints (floats are not truncated)."""
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        values = labels.tolist()
    elif isinstance(labels, (list, tuple)):
        values = labels
    else:
        raise ValueError(f"{path}: labels must be a list of ints, got {type(labels).__name__}")
    bad = next((v for v in values if type(v) is not int or not 0 <= v <= 9), None)
    if bad is not None:
        raise ValueError(f"{path}: labels must be ints in 0..9, got {bad!r}")
    return np.asarray(values, dtype=np.int64).reshape(len(values))


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
