"""File-level rules of the contract: atomic writes, checksums, and paths that stay inside their root."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from schemas.errors import SchemaError

_HASH_BLOCK = 1 << 20
# write failures that are a property of the storage, not of the program: reported as one line naming the file
_STORAGE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


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
    ``path``; on success the file is fsynced and renamed over ``path``, on failure removed.

    A full disk, an exceeded quota, a read-only file system or an I/O error while writing (``ENOSPC``, ``EDQUOT``,
    ``EROFS``, ``EIO``, ``EFBIG``) becomes a ``SchemaError`` naming ``path``: the stages report it in one line, and
    the files written before are untouched, so the same command can be run again once there is room. So does any
    other library's error raised while the file system has under 1 MiB free (safetensors and ``torch.save`` do not
    raise ``OSError`` for a full disk); errors of pgpig's own packages and other ``OSError``s pass unchanged."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        _raise_storage_error(exc, path)
        raise
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
    except BaseException as exc:
        # writers that are not Python files (safetensors, torch.save) report a full disk as their own error type
        # (SafetensorError, RuntimeError "unexpected pos"): judged by the free space before the temporary goes
        # (our own errors, raised by the code writing the file, say what they mean and are left alone)
        ours = type(exc).__module__.partition(".")[0] in ("schemas", "pipeline", "pgpig")
        full = isinstance(exc, Exception) and not ours and _out_of_space(path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            _raise_storage_error(exc, path)
        if full:
            _raise_storage_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
        raise
    fsync_dir(path.parent)


def _out_of_space(folder: Path) -> bool:
    """Whether the file system of ``folder`` has (almost) no space left for us: under 1 MiB."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def _raise_storage_error(exc: OSError, path: Path) -> None:
    """Raise ``SchemaError`` for an ``OSError`` of the storage (``_STORAGE_ERRORS``); return for any other."""
    if exc.errno in _STORAGE_ERRORS:
        what = os.strerror(exc.errno)  # not the library's text: HDF5's runs over several lines
        raise SchemaError(f"{path}: cannot write ({what}); nothing was replaced and files written before are kept: "
                          "make room (or fix the file system) and run the same command again") from exc


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
