"""What every raw-layout parser shares: the ``RawImage`` row, a fast directory walk and the seeded split.

The walk is a plain ``os.scandir`` loop: a ``DirEntry`` already knows whether it is a folder or a file
from the directory read itself (``d_type``), so a million files cost a million names, not a million
``stat`` calls, as ``Path.rglob`` or ``os.walk`` + ``is_file`` would. Folder symbolic links below the
walked folder are never followed (no loops, no file listed twice); links to files are files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

DATASETS = ("market1501", "deepfashion", "folder")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
"""Extensions read as images, compared lower-cased."""


@dataclass(frozen=True, slots=True)
class RawImage:
    """One file found in a raw layout: the key and labels of its row in the keypoints table."""

    image: str
    """Path relative to the raw root, POSIX separators (the table key)."""
    dataset: str
    """One of ``DATASETS``."""
    split: str | None
    """``train``, ``test``, or None when the layout gives none."""
    identity: str
    """Person or item id; never empty unless the file is skipped and no id could be read."""
    camera: int | None
    """Market-1501 camera number."""
    view: str | None
    """DeepFashion view word: front, side, back, full, additional, flat."""
    patn_name: str | None
    """PATN flat name: Market = file name; DeepFashion = ``deepfashion_flat_name``; folder = None."""
    skip_reason: str | None
    """Set: the file gets status ``skipped`` with this one-line reason. None: process it."""

    def as_dict(self) -> dict:
        """The fields as a dict, values shared (``dataclasses.asdict`` deep-copies each one: seconds for 200,000
        rows)."""
        return {name: getattr(self, name) for name in self.__slots__}


def extension(name: str) -> str:
    """Lower-cased extension with its dot (``"x.JPG"`` → ``".jpg"``), ``""`` without one."""
    stem, dot, ext = name.rpartition(".")
    return f".{ext.lower()}" if dot and stem else ""


def is_own_temporary(name: str) -> bool:
    # schemas.files.atomic_write and the synth writer name their temporaries ".<name>.<random>.tmp":
    # a half-written file of a run in progress, not part of the data set
    return name.startswith(".") and name.endswith(".tmp")


def printable_path(rel: str) -> tuple[str, bool]:
    """``(rel, False)`` when ``rel`` is valid UTF-8 text, else an escaped stand-in and True.

    Names that are not UTF-8 on disk reach Python as lone surrogates (``surrogateescape``); such a string
    cannot be written to Parquet, so the row keeps a readable escape (``caf\\xe9.jpg``) and is skipped.
    """
    if rel.isascii():
        return rel, False
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), True
    return rel, False


def entry_problem(entry: os.DirEntry) -> str | None:
    """For a directory entry that is not a real folder: None when it is a file (or a link to one), else why not.

    A symbolic link to a folder is reported, not followed; a link loop or a dangling link is reported
    instead of raising.
    """
    try:
        if entry.is_file():  # follows a link to a file, which is a file of the data set
            return None
        if entry.is_symlink():
            return "symbolic link to a folder, not followed" if entry.is_dir() else "broken symbolic link"
    except OSError as exc:  # ELOOP and friends: is_file() raises for everything but a missing target
        return f"symbolic link that cannot be followed ({exc.strerror or exc})"
    return "not a regular file (device, FIFO or socket)"


def walk(top: str, prefix: str) -> Iterator[tuple[str, str | None]]:
    """Every file below the folder ``top``, as ``(path relative to the raw root, reason or None)``.

    ``prefix`` is ``top`` relative to the raw root (``"query"``, ``"img"``, ``"0007"``). The reason is
    None for a file the layout parser should look at, else why it cannot be an image whatever its name:
    hidden, inside a hidden folder, not a regular file, a path that is not UTF-8, or a subfolder that
    cannot be read (one row for the folder). Our own ``.*.tmp`` temporaries are left out. Folders are not
    yielded; links to folders are yielded with a reason and not followed. ``top`` itself may be a link.
    A link to a file is followed only when its target lies inside the raw root or inside ``top`` (both resolved):
    a link out of the data set (``photo.jpg -> /home/me/.ssh/id_rsa``) gets a reason, as the shard writer,
    which opens files through ``schemas.files.safe_join``, would refuse it.
    """
    root = top[: -len(prefix)].rstrip("/\\") if prefix and top.endswith(prefix) else os.path.dirname(top)
    inside: tuple[str, ...] = ()  # the resolved roots a file link may point into; resolved at the first link
    stack = [(top, prefix, None)]  # (folder on disk, its path relative to the root, inherited reason)
    while stack:
        folder, rel, inherited = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            if folder == top:
                raise
            # a subfolder we may not read: one row, so the files inside are not lost without a trace
            shown, _ = printable_path(rel)
            yield shown, f"folder cannot be read ({exc.strerror or exc}); its files are not listed"
            continue
        # the per-file loop of a million-file walk: the common case (a visible regular file with an ASCII
        # name) costs two DirEntry checks answered from d_type, no stat and no extra function call
        for entry in entries:
            name = entry.name
            hidden = name.startswith(".")
            if hidden and is_own_temporary(name):
                continue
            path = f"{rel}/{name}"
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:  # only when d_type is unknown and lstat fails; entry_problem() reports it
                is_folder = False
            if is_folder:
                reason = inherited or (f"inside the hidden folder {name}/" if hidden else None)
                stack.append((entry.path, path, reason))
                continue
            reason = entry_problem(entry) or inherited or ("hidden file" if hidden else None)
            if reason is None and entry.is_symlink():
                if not inside:
                    inside = tuple({os.path.realpath(root or "."), os.path.realpath(top)})
                if not _points_inside(entry.path, inside):
                    reason = "symbolic link to a file outside the raw data folder, not followed"
            if not path.isascii():
                path, mangled = printable_path(path)
                if mangled and reason is None:
                    reason = "file name is not valid UTF-8 (shown escaped); rename it to read it"
            yield path, reason


def _points_inside(link: str, roots: tuple[str, ...]) -> bool:
    target = os.path.realpath(link)
    return any(os.path.commonpath([root, target]) == root for root in roots)


def check_test_fraction(test_fraction: float) -> float:
    """``test_fraction`` as a float in ``[0, 1]``; raises ``ValueError`` otherwise (callers word the error)."""
    value = float(test_fraction)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"test fraction {test_fraction!r} must be between 0 and 1")
    return value


def identity_in_test(identity: str, seed: int, test_fraction: float) -> bool:
    """Whether ``identity`` falls in the test split of the seeded split.

    A sha256 of ``(seed, identity)`` read as a number in ``[0, 1)``, compared with ``test_fraction``:
    the same on every machine and Python (``hash()`` is salted per process), decided per identity so one
    identity never lands in both splits, and independent of which other identities exist, so adding
    images or identities never moves the existing ones.
    """
    digest = hashlib.sha256(f"{seed}\0{identity}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction
