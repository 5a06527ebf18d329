"""Reader for CIFAR-10 in its python pickle format (``cifar-10-batches-py``): no torchvision needed.

Each file (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) is a pickled dict with ``b"data"``,
a uint8 array of shape (N, 3072) holding the red, green and blue 32x32 planes of each image, and
``b"labels"``, a list of N ints in 0..9.

The files are pickles, and a plain ``pickle.load`` runs whatever code a crafted file names. They are
read with `CifarUnpickler`, which rebuilds only what CIFAR-10 files contain (dicts, lists,
bytes, str, ints and plain numpy arrays of a non-object dtype); any other global in the file is a
`UnsafeDataError` naming the file, raised before anything of it runs.

Arrays are rebuilt from what the file holds, never from uninitialized memory: ``_reconstruct``
yields a `_PendingArray` that becomes an array only when its state (the BUILD step) brings
exactly the bytes its shape and dtype need; one left without its state refuses the file.
``b"data"`` must be such an array (uint8, (N, 3072)), never a nested list that numpy would expand.

Memory: at most ``MAX_IMAGES`` images in all files together (CIFAR-10 has 60000 of 3072 bytes).
While a file is read, its data is held at most three times (protocol-2 text, its bytes, the array
copied from them), beside the uint8 images of the files read before; then each split is divided
straight into a preallocated float32 array. The peak is max(5 bytes per pixel of the folder (uint8
kept + float32 result), 1 per pixel of the folder + 3 per pixel of its largest file): ~0.92 GB at
``MAX_IMAGES`` (an astype, a division and a concatenation used to make float copies beside it).
"""
from __future__ import annotations

import functools
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
# The most images a folder may hold, all files together: CIFAR-10's 50000 training + 10000 test.
MAX_IMAGES = 60_000
IMAGE_BYTES = 3 * 32 * 32


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


def _pending_array(created: list, subtype, shape, dtype) -> "_PendingArray":
    # numpy's _reconstruct(subtype, shape, dtype) is ndarray.__new__; only the plain class passes,
    # and the (placeholder) shape it asks for is ignored: the BUILD state decides the array
    if subtype is not _NdarrayClass:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not allowed")
    _safe_dtype(dtype)
    pending = _PendingArray()
    created.append(pending)
    return pending


class _PendingArray:
    """What ``_reconstruct`` returns: an array still without its data. Numpy's pickles follow
    ``_reconstruct`` with a BUILD step whose state holds the shape, dtype, order and raw bytes;
    ``__setstate__`` turns that into ``array``, a copy of exactly those bytes. Until then there is
    no array at all, so nothing can hand out memory the file did not fill."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state) -> None:
        if self.array is not None:
            raise pickle.UnpicklingError("an array was given its data twice")
        # numpy writes (version, shape, dtype, is_fortran, raw) and reads the older form without version
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError(f"an array state must be a 4- or 5-tuple, got {type(state).__name__}")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise pickle.UnpicklingError(f"array dtype {dtype!r} is not allowed")
        shape = _checked_shape(shape, dtype)
        self.array = _array_from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _array_from_bytes(raw, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    """A copy of ``raw`` as an array, which must hold exactly the bytes ``shape`` and ``dtype`` need."""
    if not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError(f"array data must be bytes, got {type(raw).__name__}")
    needed = dtype.itemsize * int(np.prod(shape, dtype=object))
    if len(raw) != needed:
        raise pickle.UnpicklingError(f"an array of shape {shape} and dtype {dtype} needs {needed} bytes of "
                                     f"data, the file gives {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order).copy()


def _safe_frombuffer(buffer, dtype, shape, order):  # the protocol-5 form of an ndarray
    dtype = _safe_dtype(dtype)
    if order not in ("C", "F"):
        raise pickle.UnpicklingError(f"array order {order!r} is not allowed")
    return _array_from_bytes(buffer, dtype, _checked_shape(shape, dtype), order)


def _latin1_encode(text, encoding="latin1"):
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(latin1 text)
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 text")
    return text.encode("latin1")


_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_ALLOWED_GLOBALS = {
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): _NdarrayClass,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR-10 python batch refers to.

    Everything else (``os.system``, ``builtins.eval``, any class) is refused in ``find_class``, so
    no code named by the file is imported or called. Reading is otherwise that of ``pickle``, and
    ``load`` refuses a file in which an array never received its data.

    Args:
        file: the open binary file; encoding: as ``pickle.Unpickler`` (``"bytes"`` for CIFAR-10).
    """

    def __init__(self, file, **kwargs) -> None:
        super().__init__(file, **kwargs)
        self._pending: list[_PendingArray] = []
        # bound to the list, not to self: the memo holds this function, and a cycle back to the
        # unpickler would keep the memo (the file's data, as bytes) alive after the load
        self._reconstruct = functools.partial(_pending_array, self._pending)

    def load(self):
        result = super().load()
        if any(p.array is None for p in self._pending):
            raise pickle.UnpicklingError("an array was rebuilt without its data (no state follows "
                                         "_reconstruct)")
        return result

    def find_class(self, module: str, name: str):
        if (module, name) in _RECONSTRUCT:
            return self._reconstruct
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
    """Images (N, 3, 32, 32) float32 in [0, 1] and int64 labels from one pickle file.

    Args:
        path: a CIFAR-10 python batch (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).
    """
    data, labels = read_raw_batch(path)
    return _to_float([data]), torch.from_numpy(labels)


def read_raw_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images as stored, (N, 3072) uint8 with N <= ``MAX_IMAGES``, and (N,) int64 labels.

    Args:
        path: a CIFAR-10 python batch.
    """
    batch = _load_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (a dict with b'data' and b'labels')")
    data = _as_array(batch[b"data"])
    # a numpy array as the file stored it, never np.asarray of pickled lists (which a few shared
    # references in a small file expand to gigabytes)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' must be a uint8 numpy array of shape (N, {IMAGE_BYTES}), got {what}")
    if len(data) > MAX_IMAGES:
        raise ValueError(f"{path}: {len(data)} images; a CIFAR-10 folder holds at most {MAX_IMAGES}")
    labels = _labels(path, _as_array(batch[b"labels"]), len(data))
    return data, labels


def _as_array(value):
    """The array a `_PendingArray` became (the load checked that every one did); other values as they are."""
    return value.array if isinstance(value, _PendingArray) else value


def _to_float(parts: list[np.ndarray]) -> torch.Tensor:
    """(N, 3, 32, 32) float32 in [0, 1] from uint8 (n_i, 3072) parts, each divided straight into a
    preallocated result (no float temporaries)."""
    out = np.empty((sum(len(p) for p in parts), IMAGE_BYTES), dtype=np.float32)
    start = 0
    for part in parts:
        np.divide(part, np.float32(255), out=out[start:start + len(part)], dtype=np.float32)
        start += len(part)
    return torch.from_numpy(out).view(-1, 3, 32, 32)


def _labels(path: Path, labels, count: int) -> np.ndarray:
    """The labels as int64, refusing anything but a flat sequence of ``count`` ints (floats are not
    truncated); the length is checked before any element is looked at."""
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        values = labels
    elif isinstance(labels, (list, tuple)):
        values = labels
    else:
        raise ValueError(f"{path}: labels must be a list of ints, got {type(labels).__name__}")
    if len(values) != count:
        raise ValueError(f"{path}: {count} images but {len(values)} labels")
    if isinstance(values, np.ndarray):
        values = values.tolist()
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
    parts, total = [], 0
    for name in TRAIN_FILES + (TEST_FILE,):
        data, labels = read_raw_batch(directory / name)
        total += len(data)
        if total > MAX_IMAGES:
            raise ValueError(f"{directory / name}: the folder holds more than {MAX_IMAGES} images "
                             f"({total} up to this file); CIFAR-10 has 60000")
        parts.append((data, labels))
    train, test = parts[:-1], parts[-1]
    train_x = _to_float([data for data, _ in train])
    train_y = torch.from_numpy(np.concatenate([labels for _, labels in train]))
    return train_x, train_y, _to_float([test[0]]), torch.from_numpy(test[1])
