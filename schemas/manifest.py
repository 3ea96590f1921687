"""The shard-set manifest: ``shards/<split>/manifest.json``, written last, what makes a shard set valid.

It lists every file of the set (relative path, rows, bytes, sha256), the format, split and stored size,
the counts, the filter and pairing configuration, the seed and the extract run the set came from. A
manifest of an unknown version, with unknown keys, or naming a path that leaves its folder is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import SchemaError
from schemas.files import atomic_write, check_relative, safe_join, sha256_file
from schemas.tables import SCHEMA_VERSION, SUPPORTED_VERSIONS

MANIFEST_NAME = "manifest.json"
FORMATS = ("parquet", "hdf5")
SPLITS = ("train", "test")


@dataclass
class FileEntry:
    """One file of a shard set."""

    path: str
    """Relative POSIX path inside the shard folder."""
    kind: str
    """What it holds: ``images`` or ``pairs``."""
    rows: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """Everything needed to trust and read one split of a shard set."""

    format: str
    """``parquet`` (encoded image bytes) or ``hdf5`` (decoded uint8 arrays)."""
    split: str
    size: tuple[int, int]
    """Stored image size as ``(height, width)``."""
    counts: dict[str, int]
    """At least ``images``, ``pairs`` and ``identities``."""
    files: list[FileEntry]
    seed: int
    filter: dict[str, Any] = field(default_factory=dict)
    pairing: dict[str, Any] = field(default_factory=dict)
    extract: dict[str, Any] = field(default_factory=dict)
    """The extract run the set came from (its ``extract.json`` path, sha256 and model)."""
    dataset: str | None = None
    created: str | None = None
    pgpig_version: str | None = None
    schema_version: int = SCHEMA_VERSION

    def validate(self, where: str = "manifest") -> None:
        """Raise ``SchemaError`` (naming ``where``) on any value the contract does not allow."""
        if self.schema_version not in SUPPORTED_VERSIONS:
            raise SchemaError(
                f"{where}: schema version {self.schema_version} is not supported (knows "
                f"{sorted(SUPPORTED_VERSIONS)}); upgrade pgpig or re-run `pgpig-data pair`"
            )
        if self.format not in FORMATS:
            raise SchemaError(f"{where}: format {self.format!r} is not one of {FORMATS}")
        if self.split not in SPLITS:
            raise SchemaError(f"{where}: split {self.split!r} is not one of {SPLITS}")
        if len(self.size) != 2 or any(not isinstance(v, int) or v <= 0 for v in self.size):
            raise SchemaError(f"{where}: size {self.size!r} must be two positive integers (height, width)")
        for key in ("images", "pairs", "identities"):
            if not isinstance(self.counts.get(key), int) or self.counts[key] < 0:
                raise SchemaError(f"{where}: counts.{key} missing or not a non-negative integer")
        seen: set[str] = set()
        for entry in self.files:
            check_relative(entry.path, f"{where}: file")
            if entry.path in seen:
                raise SchemaError(f"{where}: file {entry.path!r} is listed twice")
            seen.add(entry.path)
            if entry.kind not in ("images", "pairs"):
                raise SchemaError(f"{where}: file {entry.path!r} has unknown kind {entry.kind!r}")
            if entry.rows < 0 or entry.bytes < 0 or len(entry.sha256) != 64:
                raise SchemaError(f"{where}: file {entry.path!r} has bad rows/bytes/sha256")
        if not any(e.kind == "pairs" for e in self.files):
            raise SchemaError(f"{where}: lists no pairs file")
        image_rows = sum(e.rows for e in self.files if e.kind == "images")
        if image_rows != self.counts["images"]:
            raise SchemaError(f"{where}: image files hold {image_rows} rows, counts.images is {self.counts['images']}")

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["size"] = list(self.size)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected a JSON object")
        version = data.get("schema_version")
        if version not in SUPPORTED_VERSIONS:
            # checked first: a newer manifest may legitimately have fields we do not know
            raise SchemaError(
                f"{where}: schema version {version!r} is not supported (knows {sorted(SUPPORTED_VERSIONS)}); "
                "upgrade pgpig or re-run `pgpig-data pair`"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SchemaError(f"{where}: unknown keys {unknown}")
        try:
            files = [FileEntry(**entry) for entry in data.pop("files", [])]
            manifest = cls(files=files, **data)
        except TypeError as exc:
            raise SchemaError(f"{where}: {exc}") from None
        manifest.size = tuple(manifest.size)
        manifest.validate(where)
        return manifest

    def write(self, folder: str | os.PathLike) -> Path:
        """Validate and write ``folder/manifest.json`` atomically; returns its path."""
        path = Path(folder) / MANIFEST_NAME
        self.validate(str(path))
        with atomic_write(path, "w") as f:
            f.write(self.to_json())
        return path

    @classmethod
    def read(cls, folder_or_file: str | os.PathLike) -> Manifest:
        """Read and validate a manifest from a shard folder or the file itself."""
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise SchemaError(f"{path}: no manifest; the shard set is incomplete or was never written")
        return cls.from_json(path.read_text(encoding="utf-8"), str(path))

    def file_problems(self, folder: str | os.PathLike, check_hash: bool = True) -> list[str]:
        """Compare the listed files with what is on disk; one line per problem, empty when all match."""
        problems = []
        for entry in self.files:
            try:
                path = safe_join(folder, entry.path, "manifest file")
            except SchemaError as exc:
                problems.append(str(exc))
                continue
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            size = path.stat().st_size
            if size != entry.bytes:
                problems.append(f"{path}: {size} bytes, manifest says {entry.bytes}")
            elif check_hash and sha256_file(path) != entry.sha256:
                problems.append(f"{path}: sha256 differs from the manifest (file changed or corrupted)")
        return problems


def file_entry(folder: str | os.PathLike, relpath: str, kind: str, rows: int) -> FileEntry:
    """Describe a finished file of a shard set for the manifest (size and sha256 read from disk)."""
    path = safe_join(folder, relpath, "shard file")
    return FileEntry(path=relpath, kind=kind, rows=rows, bytes=path.stat().st_size, sha256=sha256_file(path))
