"""Files inside a run directory, handled safely: paths that stay inside it, atomic writes, one
sweep at a time.

* ``write_atomic``: a reader sees the old file or the whole new one, never a part; the data is on
  disk (fsync) before it replaces the old file; a failed write (disk full) leaves no partial file.
* Paths never leave the run directory through a symbolic link: every folder below the root is
  opened without following links (a linked folder is refused), and a link in the place of the file
  being written is replaced by the file, its target untouched (a rename does not follow links).
* ``locked``: an exclusive ``flock`` on ``<root>/.lock``; the kernel drops it when the holder exits
  or is killed, so a lock file left by a killed sweep never blocks the next one.
* ``read_json``: the one reader of the run files (config, records, results, environment, tuning):
  strict JSON of the expected top-level type, or a RunDirectoryError naming the file (never a
  UnicodeDecodeError, RecursionError or a traceback further on).

POSIX only (``fcntl``, ``dir_fd``), like the experiment's worker processes.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from .config import ConfigError

LOCK_NAME = ".lock"

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_HINTS = {errno.ENOSPC: " (disk full)", errno.EDQUOT: " (disk quota exceeded)",
          errno.EROFS: " (read-only file system)", errno.EACCES: " (permission denied)"}


class RunDirectoryError(ConfigError):
    """The run directory cannot be used as it is; the message names the file and what to do."""


class NotPlainFileError(RunDirectoryError):
    """A link, folder, FIFO or device stands where a file of the run directory belongs."""


class NotJsonError(RunDirectoryError):
    """A file's text is not JSON at all (cut short, say): a reader may treat it as never written."""


def _relative_parts(root: Path, path: Path) -> list[str]:
    """``path``'s components below ``root`` (lexically: links are dealt with while walking)."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    parts = [] if relative == "." else relative.split(os.sep)
    if not parts or parts[0] == os.pardir:
        raise RunDirectoryError(f"{path} is not a file inside the run directory {root}")
    return parts


def _open_root(root: Path, create: bool) -> int:
    """The run directory itself (which may be a link the user chose) as a directory descriptor."""
    if create:
        os.makedirs(root, exist_ok=True)
    return os.open(root, _DIRECTORY_FLAGS)


def _open_child_directory(parent_fd: int, name: str, shown: Path, create: bool) -> int:
    """``name`` inside ``parent_fd`` as a directory descriptor, never through a link."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, dir_fd=parent_fd)
    try:
        return os.open(name, _DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(parent_fd, name):
            target = os.readlink(name, dir_fd=parent_fd)
            raise RunDirectoryError(f"{shown} is a symbolic link (to {target}); the run directory's folders are "
                                    "never followed out of it. Remove the link (or use another --out)") from None
        if error.errno == errno.ENOTDIR:
            raise RunDirectoryError(f"{shown} is a file where the run directory has a folder; remove it (or use "
                                    "another --out)") from None
        raise


def _is_link(parent_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def _directory_of(root: Path, path: Path, create: bool) -> Iterator[tuple[int, str]]:
    """(descriptor of the folder holding ``path``, the file's name), walked down from ``root``."""
    parts = _relative_parts(root, path)
    fd = _open_root(root, create)
    try:
        shown = Path(root)
        for name in parts[:-1]:
            shown = shown / name
            child = _open_child_directory(fd, name, shown, create)
            os.close(fd)
            fd = child
        yield fd, parts[-1]
    finally:
        os.close(fd)


def _temporary_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(6)}.tmp"


def is_temporary_name(name: str) -> bool:
    """True for the name of a temporary file of ``write_atomic`` (one left by a killed write)."""
    parts = name.split(".")
    return (len(parts) >= 4 and parts[0] == "" and parts[-1] == "tmp" and len(parts[-2]) == 12
            and all(c in "0123456789abcdef" for c in parts[-2]))


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write is not an error; the next call says why)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_atomic(path: Union[str, Path], data: Union[bytes, str], root: Optional[Union[str, Path]] = None) -> None:
    """Write ``data`` to ``path`` (inside ``root``, default: its own folder) through a temporary file
    in the same folder, fsync, then rename over ``path``. Any failure (a full disk included) is a
    RunDirectoryError naming the file; the temporary file is removed and ``path`` keeps its old
    content (or stays absent): there is never a partial or empty result."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    payload = data.encode() if isinstance(data, str) else bytes(data)
    temporary: Optional[str] = None
    try:
        with _directory_of(root, path, create=True) as (folder, name):
            try:
                candidate = _temporary_name(name)
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o666, dir_fd=folder)
                temporary = candidate
                try:
                    _write_all(fd, payload)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
                temporary = None
                with contextlib.suppress(OSError):   # some file systems cannot fsync a folder
                    os.fsync(folder)                 # (the rename is then durable a little later)
            finally:
                if temporary is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(temporary, dir_fd=folder)
    except RunDirectoryError:
        raise
    except OSError as error:
        hint = _HINTS.get(error.errno, "")
        raise RunDirectoryError(f"cannot write {path}: {error.strerror or error}{hint}; nothing was replaced "
                                "(a finished run keeps its record). Fix that and run the same command again "
                                "to resume") from error


def write_json(path: Union[str, Path], data: Any, root: Optional[Union[str, Path]] = None) -> None:
    """``data`` as indented JSON (strict: NaN or infinity is a ValueError, never written), atomically."""
    write_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n", root)


def read_text(path: Union[str, Path], root: Union[str, Path]) -> str:
    """The text of ``path`` inside ``root``, never read through a link (a FileNotFoundError when
    absent, a NotPlainFileError when it is a link, folder or FIFO, a RunDirectoryError when one of its
    folders is a link or a file)."""
    path = Path(path)
    with _directory_of(Path(root), path, create=False) as (folder, name):
        try:
            # O_NONBLOCK: a FIFO in a file's place must not block the reader forever
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise NotPlainFileError(f"{path} is a symbolic link (to {os.readlink(name, dir_fd=folder)}); "
                                        "files of the run directory are never read through links. Remove "
                                        "it") from None
            if error.errno == errno.EISDIR:
                raise NotPlainFileError(f"{path} is a folder, not a file. Remove it") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotPlainFileError(f"{path} is not a regular file (a folder, FIFO or device). Remove it")
        with open(fd, encoding="utf-8") as handle:
            return handle.read()


_JSON_TYPES = {dict: "an object", list: "a list"}


def parse_json(text: str, path: Union[str, Path], expected: type = dict) -> Any:
    """``text`` (the content of ``path``) as strict JSON whose top level is ``expected`` (dict or
    list; ``object`` for any). A NotJsonError when it is not JSON text (cut short, say); a RunDirectoryError naming
    ``path`` when it holds NaN or infinity (no run writes them), is nested too deeply for the parser
    (a RecursionError otherwise) or its top level is of another type."""
    def refuse(constant: str) -> float:
        raise ValueError(f"{constant} is not a JSON number")
    try:
        value = json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as error:
        raise NotJsonError(f"{path} is not JSON ({error})") from None
    except RecursionError:
        raise RunDirectoryError(f"{path} is nested too deeply to be a file this program wrote") from None
    except ValueError as error:
        raise RunDirectoryError(f"{path} is not strict JSON: {error}") from None
    if not isinstance(value, expected):
        raise RunDirectoryError(f"{path} holds a JSON {type(value).__name__} where {_JSON_TYPES[expected]} "
                                "belongs")
    return value


def read_json(path: Union[str, Path], root: Union[str, Path], expected: type = dict) -> Any:
    """The content of the run file ``path`` (inside ``root``, read as ``read_text`` does) as strict
    JSON of the top-level type ``expected``: the one reader of every JSON file of a run directory.

    Raises FileNotFoundError when the file is absent; NotPlainFileError for a link, folder or FIFO
    in its place; NotJsonError when its text is not JSON; RunDirectoryError, naming the file, when
    it is not UTF-8 or fails ``parse_json`` otherwise."""
    try:
        text = read_text(path, root)
    except UnicodeDecodeError as error:
        raise RunDirectoryError(f"{path} is not UTF-8 text ({error})") from None
    return parse_json(text, path, expected)


def safe_directory(root: Union[str, Path], path: Union[str, Path]) -> Path:
    """Create ``path`` (a folder inside ``root``) and its parents, refusing links on the way; the
    path, for code that then opens files in it by name."""
    with _directory_of(Path(root), Path(path) / "_", create=True):
        pass
    return Path(path)


def remove_file(root: Union[str, Path], path: Union[str, Path]) -> None:
    """Remove the file (or link: never its target) ``path`` inside ``root`` when present."""
    with _directory_of(Path(root), Path(path), create=False) as (folder, name):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder)


@contextlib.contextmanager
def locked(root: Union[str, Path]) -> Iterator[None]:
    """Hold the run directory ``root`` for this process: a second holder (another sweep, in this
    process or another) gets a RunDirectoryError at once. The lock file stays behind on purpose:
    removing it would let two sweeps lock two different files of the same name."""
    root = Path(root)
    try:
        folder = _open_root(root, create=True)
        try:
            fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=folder)
        finally:
            os.close(folder)
    except OSError as error:
        raise RunDirectoryError(f"--out {str(root)!r} cannot be used as the run directory: {error}") from error
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirectoryError(
                f"{root} is in use by another channelnorm compare (pid {holder}); two sweeps writing one run "
                "directory would mix their runs. Wait for it to finish, or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)     # for the message above, not for the locking
        yield
    finally:
        os.close(fd)          # releases the flock
