"""Reader for IDX files, the binary format of MNIST and Fashion-MNIST, with numpy only (no pickle).

An IDX file is a 4-byte magic number (two zero bytes, an element-type code, the number of
dimensions), one big-endian uint32 per dimension, then the elements in C order. Image and label
files of the MNIST family hold unsigned bytes (type code 0x08), images as (N, H, W) and labels as
(N,). A file may be gzip-compressed; that is recognised by its first two bytes, not by its name.

Everything in the header is checked before anything of the size it claims is allocated:

* plain files: header + claimed elements must be exactly the file's length (a short file is
  truncated, a longer one has trailing bytes: both refused);
* gzip files: the claim must fit in what deflate can produce from the compressed bytes there
  (at most ``MAX_DEFLATE_RATIO`` : 1); then at most the claimed size is decompressed and one byte
  more is asked for; any byte beyond the claim refuses the file. So a gzip bomb is decompressed
  no further than the header's size + 1 byte;
* the result grows as bytes arrive (``_CHUNK`` at a time), so memory follows what the file
  really holds, however much the header claims;
* every file: at most ``MAX_IDX_BYTES`` of elements.

Every problem is an `IdxFormatError` (a ValueError) whose message names the file.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
UNSIGNED_BYTE = 0x08
# the element types the format defines; only unsigned bytes are image or label data here
TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
              0x0E: "float64"}
# The most element bytes one file may hold: Fashion-MNIST's training images are 47 MB; the
# float32 copy the experiment makes is 4x this at most.
MAX_IDX_BYTES = 1 << 28
# deflate's largest expansion is 1032:1 (a 258-byte match per bit pair); a claim beyond this
# multiple of the compressed size cannot be in the stream, so it is refused before any allocation
MAX_DEFLATE_RATIO = 1032
MIN_IMAGE_SIDE = 8          # the network halves the resolution twice; smaller images are refused
NUM_CLASSES = 10
_CHUNK = 1 << 20            # bytes decompressed per read: the only buffer beyond the result


class IdxFormatError(ValueError):
    """An IDX file that is not what the reader expects; the message names the file and the problem."""


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """The uint8 array stored in the IDX file ``path`` (gzip or plain).

    Args:
        path: the file.
        ndim: the number of dimensions it must have (3 for images, 1 for labels).

    Returns:
        a writable uint8 array of the header's shape.

    Raises:
        IdxFormatError: wrong magic number, an element type other than unsigned byte, another
            dimension count, sizes that do not match the file's length, a broken gzip stream.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        stored = os.fstat(raw.fileno()).st_size
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        try:
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _read(path, stream, ndim, stored, compressed=True)
            return _read(path, raw, ndim, stored, compressed=False)
        except IdxFormatError:
            raise
        except (OSError, EOFError, zlib.error) as error:   # gzip.BadGzipFile is an OSError
            raise IdxFormatError(f"{path}: not a readable gzip stream ({error})") from None


def _read(path: Path, stream: BinaryIO, ndim: int, stored: int, compressed: bool) -> np.ndarray:
    magic = _read_exact(stream, 4)
    if len(magic) < 4:
        raise IdxFormatError(f"{path}: {len(magic)} bytes, too short for an IDX header (4-byte magic number)")
    if magic[0] != 0 or magic[1] != 0:
        raise IdxFormatError(f"{path}: not an IDX file (magic number {magic.hex()} does not start with 0000)")
    if magic[2] != UNSIGNED_BYTE:
        kind = TYPE_NAMES.get(magic[2], "not an IDX element type")
        raise IdxFormatError(f"{path}: element type 0x{magic[2]:02x} ({kind}) is not supported; image and "
                             f"label files hold unsigned bytes (0x{UNSIGNED_BYTE:02x})")
    if magic[3] != ndim:
        raise IdxFormatError(f"{path}: {magic[3]} dimensions, expected {ndim}")
    header = _read_exact(stream, 4 * ndim)
    if len(header) < 4 * ndim:
        raise IdxFormatError(f"{path}: truncated header ({4 + len(header)} of {4 + 4 * ndim} bytes)")
    shape = tuple(int(n) for n in np.frombuffer(header, dtype=">u4"))
    claimed = 1
    for n in shape:
        claimed *= n                      # a Python int: no overflow, however large the claim
    offset = 4 + 4 * ndim
    if claimed > MAX_IDX_BYTES:
        raise IdxFormatError(f"{path}: the header claims shape {shape}, {claimed} bytes; at most "
                             f"{MAX_IDX_BYTES} are read from one file")
    if not compressed and offset + claimed != stored:
        what = "is truncated" if offset + claimed > stored else "has trailing bytes"
        raise IdxFormatError(f"{path} {what}: the header claims shape {shape}, {offset + claimed} bytes in "
                             f"all, the file has {stored}")
    if compressed and claimed > MAX_DEFLATE_RATIO * stored:
        raise IdxFormatError(f"{path}: the header claims shape {shape}, {claimed} bytes, more than a gzip "
                             f"file of {stored} bytes can hold")
    # grows as bytes arrive: memory follows what the stream holds, never merely what the header claims
    data = bytearray()
    while len(data) < claimed:
        chunk = stream.read(min(_CHUNK, claimed - len(data)))
        if not chunk:
            raise IdxFormatError(f"{path} is truncated: the header claims shape {shape}, {claimed} bytes of "
                                 f"data, the {'stream' if compressed else 'file'} holds {len(data)}")
        data += chunk
    if stream.read(1):
        raise IdxFormatError(f"{path} has trailing bytes: more data than the header's shape {shape}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    parts, missing = [], size
    while missing:
        part = stream.read(missing)
        if not part:
            break
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


def read_images(path: str | Path) -> np.ndarray:
    """Images (N, H, W) uint8 from an IDX file: N >= 1, H and W >= ``MIN_IMAGE_SIDE``.

    Args:
        path: an image file (``*-images-idx3-ubyte``, gzip or plain).
    """
    images = read_idx(path, 3)
    n, h, w = images.shape
    if n == 0:
        raise IdxFormatError(f"{path}: holds no images")
    if h < MIN_IMAGE_SIDE or w < MIN_IMAGE_SIDE:
        raise IdxFormatError(f"{path}: images of {h}x{w} pixels; at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} "
                             "are needed (the network halves the resolution twice)")
    return images


def read_labels(path: str | Path) -> np.ndarray:
    """Labels (N,) uint8 in 0..9 from an IDX file.

    Args:
        path: a label file (``*-labels-idx1-ubyte``, gzip or plain).
    """
    labels = read_idx(path, 1)
    if labels.size and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise IdxFormatError(f"{path}: label {int(labels[bad])} at index {bad}; labels must be in "
                             f"0..{NUM_CLASSES - 1}")
    return labels
