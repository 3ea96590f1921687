"""File-level rules of the contract: atomic writes, checksums, and paths that stay inside their root."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from schemas.errors import SchemaError

_HASH_BLOCK = 1 << 20


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; outputs get the permissions any new file would get
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never half of one: readers only
    ever see complete files under the final name. Temporary names start with ``.`` and end ``.tmp``.
    """
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``atomic_write`` for libraries that open the file themselves (h5py): yields a temporary path beside
    ``path``; on success the file is fsynced and renamed over ``path``, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it is durable (a no-op where a directory cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes already in memory (the ``content_hash`` of an image file)."""
    return hashlib.sha256(data).hexdigest()


def check_relative(relpath: str, what: str = "path") -> PurePosixPath:
    """Validate a relative POSIX path from a manifest or list: no absolute path, no ``..``, no empty part.

    Raises ``SchemaError`` naming the path; returns it parsed.
    """
    if not isinstance(relpath, str) or not relpath:
        raise SchemaError(f"{what} {relpath!r} is empty or not a string")
    if "\\" in relpath or "\x00" in relpath:
        raise SchemaError(f"{what} {relpath!r} must be a POSIX relative path (no backslash or NUL)")
    p = PurePosixPath(relpath)
    if p.is_absolute() or relpath.startswith("/") or (len(relpath) > 1 and relpath[1] == ":"):
        raise SchemaError(f"{what} {relpath!r} is absolute; only paths relative to the data root are allowed")
    if any(part in ("..", "") for part in relpath.split("/")) or relpath.split("/")[0] == ".":
        raise SchemaError(f"{what} {relpath!r} leaves or is not inside the data root ('..', '.' or '//')")
    return p


def safe_join(root: str | os.PathLike, relpath: str, what: str = "path") -> Path:
    """Join a relative path from a manifest onto ``root``, refusing anything that would escape it.

    Symbolic links inside ``root`` that point outside it are refused too.
    """
    check_relative(relpath, what)
    root = Path(root)
    joined = root / relpath
    real_root = os.path.realpath(root)
    real = os.path.realpath(joined)
    if os.path.commonpath([real_root, real]) != real_root:
        raise SchemaError(f"{what} {relpath!r} resolves outside {root} (through a symbolic link)")
    return joined
