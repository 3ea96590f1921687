"""Shard sets: the writer that stores one split's images and pairs, and the one reader the trainer uses.

A shard set is a folder (``shards/<split>/``) of image shards (``images-00000.parquet`` with the encoded bytes, or
``images-00000.h5`` with decoded uint8 arrays), ``pairs.parquet`` (global image indices) and ``manifest.json``,
written last, listing every file with rows, bytes and sha256; without it the folder is not a shard set. Images
are stretched to the set's size with their keypoints (OpenCV's pixel-centre convention), a raw file's bytes are
kept when they already are what the reader must see, every file is written atomically, and the reader opens
files lazily per process, one row group or chunk per sample. ``docs/shards.md`` gives each rule and why.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.decode import JPEG_MAGIC, PNG_MAGIC, decode_bytes
from pipeline.errors import PipelineError
from pipeline.versions import package_version
from schemas.errors import SchemaError
from schemas.files import atomic_path, atomic_write, fsync_dir, safe_join
from schemas.keypoints import MISSING, NUM_KEYPOINTS, visible_mask
from schemas.manifest import FORMATS, MANIFEST_NAME, SPLITS, FileEntry, Manifest, file_entry
from schemas.tables import (
    META_TABLE,
    META_VERSION,
    SCHEMA_VERSION,
    SHARD_IMAGES_SCHEMA,
    check_file_metadata,
    read_table,
    table_from_pydict,
    write_table,
)

__all__ = [
    "ShardImage",
    "ShardSample",
    "ShardSet",
    "read_pairs_table",
    "scale_keypoints",
    "verify_shard_set",
    "write_shard_set",
]

PAIRS_NAME = "pairs.parquet"
ROWS_PER_GROUP = 32
"""Parquet row-group size: a random read fetches this many rows (≈32 × 5–20 KB of JPEG)."""
JPEG_QUALITY = 95
H5_COMPRESSIONS = (None, "gzip", "lzf")
# imdecode flags of both the keep-bytes comparison and the reader: what we compared is what is read
_READ_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_H5_STRINGS = ("image", "patn_name", "identity", "content_hash")


@dataclass
class ShardImage:
    """One image to store, as the keypoints table describes it."""

    image: str
    """Path relative to ``raw_root`` (POSIX), the keypoints table key."""
    patn_name: str | None
    identity: str
    content_hash: str
    """sha256 of the raw file bytes (from the keypoints table)."""
    width: int
    """Upright full-resolution size of the raw image: the frame of ``keypoints``."""
    height: int
    keypoints: np.ndarray
    """``(18, 2)`` float32 in the raw frame, ``(-1, -1)`` invisible."""
    scores: np.ndarray
    """``(18,)`` float32."""


class ShardSample(NamedTuple):
    """One stored image as the trainer gets it."""

    image: np.ndarray
    """``(H, W, 3)`` uint8 RGB."""
    keypoints: np.ndarray
    """``(18, 2)`` float32 in the stored image, ``(-1, -1)`` invisible."""
    scores: np.ndarray
    """``(18,)`` float32."""
    identity: str
    index: int


@dataclass
class _Stored:
    """One image after reading, checking and resizing: what goes into a shard row."""

    rgb: np.ndarray | None  # (H, W, 3) uint8 RGB; kept for HDF5 only
    data: bytes | None  # encoded bytes; Parquet only
    encoding: str | None
    keypoints: np.ndarray
    scores: np.ndarray


# ---------------------------------------------------------------------------------------------------- transforms


def scale_keypoints(xy: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Keypoints of an image of ``src`` = ``(height, width)`` in the same image stretched to ``dst``.

    Pixel-centre convention of ``cv2.resize``: ``x' = (x + 0.5) * W'/W - 0.5``. ``(-1, -1)`` stays. ``(..., 18, 2)``.
    """
    xy = np.asarray(xy, dtype=np.float32)
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    scale = np.array([sx, sy], np.float32)
    out = (xy + 0.5) * scale - 0.5
    out[~visible_mask(xy)] = MISSING
    return out.astype(np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Stretch ``image`` to ``size`` = ``(H, W)``; area averaging when shrinking, bilinear when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image
    shrinking = size[0] <= h and size[1] <= w
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size[1], size[0]), interpolation=interpolation)


def _format_of(data: bytes) -> str | None:
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def _encode(bgr: np.ndarray, encoding: str, where: str) -> bytes:
    if encoding == "jpeg":
        # 4:4:4: chroma subsampling smears colour edges badly on images 32-64 px wide (mean error 5.8 → 2.0 on
        # mannequins shrunk to 64×32) for a third more bytes
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
                                             cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    else:
        ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise PipelineError(f"{where}: OpenCV could not encode the stored image as {encoding}")
    return buf.tobytes()


def _raw_file(raw_root: Path, relpath: str) -> Path:
    """The raw file of a keypoints-table path, refusing one outside the data set (``..``, absolute, a link out).

    Inside means inside the raw root, or inside its top-level layout folder when that folder is itself a link
    (``raw/query -> /store/market/query``): the listing (``pipeline.datasets.listing.walk``) lists the same."""
    try:
        return safe_join(raw_root, relpath, "image")
    except SchemaError as exc:
        first, _, rest = relpath.partition("/")
        if rest and (Path(raw_root) / first).is_symlink():
            try:
                return safe_join(Path(raw_root) / first, rest, "image")
            except SchemaError:
                pass
        raise PipelineError(str(exc)) from None


def _prepare(item: ShardImage, raw_root: Path, size: tuple[int, int], fmt: str) -> _Stored:
    """Read, check, decode and resize one raw image (runs in a worker thread; cv2 releases the GIL)."""
    path = _raw_file(raw_root, item.image)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read ({exc.strerror or exc}); was the raw tree moved?") from None
    decoded = decode_bytes(data, path.name)  # hashes the bytes too (content_hash), as extraction did
    if decoded.content_hash != item.content_hash:
        raise PipelineError(
            f"{path}: file changed since extraction (sha256 differs from the keypoints table); re-run extract"
        )
    if not decoded.ok:
        raise PipelineError(f"{path}: {decoded.reason}; it should not have passed the filter, re-run extract")
    if (decoded.width, decoded.height) != (item.width, item.height):
        raise PipelineError(
            f"{path}: decodes to {decoded.width}x{decoded.height}, the keypoints table says "
            f"{item.width}x{item.height}; re-run extract"
        )
    kp = np.asarray(item.keypoints, np.float32).reshape(NUM_KEYPOINTS, 2)
    scores = np.asarray(item.scores, np.float32).reshape(NUM_KEYPOINTS)
    keypoints = scale_keypoints(kp, (item.height, item.width), size)
    bgr = resize_image(decoded.image, size)
    if fmt == "hdf5":
        return _Stored(np.ascontiguousarray(bgr[..., ::-1]), None, None, keypoints, scores)
    source = _format_of(data)
    if source is not None and bgr is decoded.image and decoded.scale == 1.0:
        plain = cv2.imdecode(np.frombuffer(data, np.uint8), _READ_FLAGS)
        if plain is not None and plain.shape == bgr.shape and np.array_equal(plain, bgr):
            return _Stored(None, data, source, keypoints, scores)
    encoding = "jpeg" if source == "jpeg" else "png"
    return _Stored(None, _encode(bgr, encoding, str(path)), encoding, keypoints, scores)


def _ordered_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """``pool.map`` in order, with at most ``ahead`` items in flight (bounded memory, unlike ``map``)."""
    pending = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.pop(0).result()
    for fut in pending:
        yield fut.result()


# ---------------------------------------------------------------------------------------------------- writer


def _check_inputs(split: str, fmt: str, size: tuple[int, int], images: list[ShardImage], pairs: np.ndarray,
                  pair_identities: list[str], images_per_shard: int, compression: str | None) -> np.ndarray:
    if split not in SPLITS:
        raise PipelineError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    if fmt not in FORMATS:
        raise PipelineError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if len(size) != 2 or any(int(v) != v or v <= 0 for v in size):
        raise PipelineError(f"size {size!r}: expected (height, width), two positive integers")
    if images_per_shard < 1:
        raise PipelineError(f"images_per_shard must be at least 1, got {images_per_shard}")
    if compression not in H5_COMPRESSIONS:
        raise PipelineError(f"compression {compression!r}: choose one of gzip, lzf or none")
    if compression is not None and fmt != "hdf5":
        raise PipelineError("compression applies to HDF5 sets only (Parquet stores encoded JPEG/PNG bytes)")
    seen: dict[str, int] = {}
    for i, item in enumerate(images):
        if item.image in seen:
            raise PipelineError(f"{item.image}: listed twice (indices {seen[item.image]} and {i}); "
                                "each image is stored once per split")
        seen[item.image] = i
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pair_identities) != len(pairs):
        raise PipelineError(f"{len(pairs)} pairs but {len(pair_identities)} pair identities")
    n = len(images)
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n):
        raise PipelineError(f"pair indices must lie in [0, {n}); got {pairs.min()}..{pairs.max()}")
    if len(pairs):
        ids = np.array([it.identity for it in images], dtype=object)
        given = np.array(pair_identities, dtype=object)
        wrong = np.flatnonzero((ids[pairs[:, 0]] != given) | (ids[pairs[:, 1]] != given))
        if len(wrong):
            k = int(wrong[0])
            s, t = pairs[k]
            raise PipelineError(f"pair {k} ({images[s].image} → {images[t].image}) is not of identity "
                                f"{pair_identities[k]!r}; pairs must join two images of the same identity "
                                f"({len(wrong)} such pairs)")
    return pairs


def _clear_folder(folder: Path, overwrite: bool) -> None:
    """Refuse or remove a previous set; the manifest goes first so no half-replaced set is ever valid."""
    manifest = folder / MANIFEST_NAME
    if manifest.exists():
        if not overwrite:
            raise PipelineError(f"{folder} already holds a shard set ({MANIFEST_NAME}); pass --overwrite to replace it")
        manifest.unlink()
        fsync_dir(folder)
    # Our own file names only (also the leftovers of a crashed run, which no manifest lists).
    for path in folder.iterdir():
        name = path.name
        ours = (name.startswith("images-") and name.endswith((".parquet", ".h5"))) or name == PAIRS_NAME
        temp = name.startswith((".images-", f".{PAIRS_NAME}.", f".{MANIFEST_NAME}.")) and name.endswith(".tmp")
        if (ours or temp) and path.is_file():
            path.unlink()


def _parquet_columns(batch: list[ShardImage], stored: list[_Stored], start: int, size: tuple[int, int]) -> dict:
    n = len(batch)
    return {
        "index": np.arange(start, start + n, dtype=np.int64),
        "image": [it.image for it in batch],
        "patn_name": [it.patn_name for it in batch],
        "identity": [it.identity for it in batch],
        "content_hash": [it.content_hash for it in batch],
        "width": np.full(n, size[1], np.int32),
        "height": np.full(n, size[0], np.int32),
        "data": [s.data for s in stored],
        "encoding": [s.encoding for s in stored],
        "keypoints": np.stack([s.keypoints for s in stored]),
        "scores": np.stack([s.scores for s in stored]),
    }


def _write_parquet_shard(path: Path, batches: Iterator[tuple[int, list[ShardImage], list[_Stored]]],
                         size: tuple[int, int]) -> None:
    names = SHARD_IMAGES_SCHEMA.names
    compression = {name: ("none" if name == "data" else "zstd") for name in names}
    stats = [name for name in names if name != "data"]
    with atomic_write(path) as f:
        writer = None
        for start, batch, stored in batches:
            table = table_from_pydict("shard_images", _parquet_columns(batch, stored, start, size))
            if writer is None:  # the schema, stamped with table kind and version, comes with the first batch
                writer = pq.ParquetWriter(f, table.schema, compression=compression, write_statistics=stats,
                                          use_dictionary=["identity", "encoding"])
            writer.write_table(table, row_group_size=ROWS_PER_GROUP)
        if writer is not None:
            writer.close()


def _write_h5_shard(path: Path, n: int, batches: Iterator[tuple[int, list[ShardImage], list[_Stored]]],
                    size: tuple[int, int], compression: str | None, first: int) -> None:
    import h5py

    h, w = size
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[META_TABLE.decode()] = "shard_images"
        f.attrs[META_VERSION.decode()] = str(SCHEMA_VERSION)
        images = f.create_dataset("images", (n, h, w, 3), np.uint8, chunks=(1, h, w, 3) if n else None,
                                  compression=compression)
        strings = {k: f.create_dataset(k, (n,), h5py.string_dtype("utf-8")) for k in _H5_STRINGS}
        keypoints = f.create_dataset("keypoints", (n, NUM_KEYPOINTS, 2), np.float32)
        scores = f.create_dataset("scores", (n, NUM_KEYPOINTS), np.float32)
        f.create_dataset("index", data=np.arange(first, first + n, dtype=np.int64))
        for start, batch, stored in batches:
            a, b = start - first, start - first + len(batch)
            # one write per image: each is exactly one chunk, so nothing is read back or re-chunked
            for j, s in enumerate(stored):
                images[a + j] = s.rgb
            keypoints[a:b] = np.stack([s.keypoints for s in stored])
            scores[a:b] = np.stack([s.scores for s in stored])
            for k in _H5_STRINGS:
                # HDF5 variable-length strings cannot be null: a missing PATN name is stored as ""
                strings[k][a:b] = [getattr(it, k) or "" for it in batch]


def write_images_shard(folder: Path, shard: int, first: int, chunk: list[ShardImage], raw_root: Path,
                       size: tuple[int, int], format: str, compression: str | None, threads: int,
                       advance: Callable[[int], object] | None = None) -> FileEntry:
    """Write ``images-<shard>`` holding ``chunk`` (global indices from ``first``); returns its manifest entry.

    A pure task: reads its raw files with ``threads`` threads, writes one file atomically, returns a small
    record (so it runs the same in this process or on a Dask worker).
    """
    suffix = "parquet" if format == "parquet" else "h5"
    with ThreadPoolExecutor(threads, thread_name_prefix="shards") as pool:
        stored = _ordered_map(pool, lambda it: _prepare(it, raw_root, size, format), chunk, 4 * threads)

        def batches() -> Iterator:
            for a in range(0, len(chunk), ROWS_PER_GROUP):
                batch = chunk[a : a + ROWS_PER_GROUP]
                done = [next(stored) for _ in batch]
                if advance is not None:
                    advance(len(batch))
                yield first + a, batch, done

        name = f"images-{shard:05d}.{suffix}"
        if format == "parquet":
            _write_parquet_shard(folder / name, batches(), size)
        else:
            _write_h5_shard(folder / name, len(chunk), batches(), size, compression, first)
    return file_entry(folder, name, "images", len(chunk))


def _write_shards_on_dask(jobs: list, folder: Path, raw_root: Path, size: tuple[int, int], format: str,
                          compression: str | None, threads: int, dask_workers: int, scheduler: str | None,
                          bar) -> list[FileEntry]:
    from distributed import Client, as_completed

    from pipeline.local_cluster import local_cluster

    cluster = None if scheduler else local_cluster(dask_workers)
    client = Client(scheduler or cluster)
    try:
        per_worker = max(1, threads // max(1, len(client.scheduler_info()["workers"])))
        futures = [client.submit(write_images_shard, folder, shard, first, chunk, raw_root, size, format,
                                 compression, per_worker, pure=False) for shard, first, chunk in jobs]
        entries: dict[int, FileEntry] = {}
        for future in as_completed(futures):
            entry = future.result()  # a task's PipelineError comes back as itself, naming the file
            entries[futures.index(future)] = entry
            if bar is not None:
                bar.update(entry.rows)
        return [entries[k] for k in range(len(jobs))]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def write_shard_set(folder: str | os.PathLike, *, split: str, dataset: str | None, raw_root: str | os.PathLike,
                    images: list[ShardImage], pairs: np.ndarray, pair_identities: list[str], format: str = "parquet",
                    size: tuple[int, int] = (128, 64), images_per_shard: int = 10_000, seed: int = 0,
                    filter: dict | None = None, pairing: dict | None = None, extract: dict | None = None,
                    compression: str | None = None, progress: bool = False, overwrite: bool = False,
                    workers: int | None = None, dask_workers: int = 0, scheduler: str | None = None) -> Manifest:
    """Write one split's shard set into ``folder``; returns its manifest (written last).

    ``pairs`` is ``(P, 2)`` int64 indices into ``images`` (source, target); ``pair_identities`` their
    identity. ``size`` is the stored ``(height, width)``. ``compression`` (``gzip``/``lzf``) is for HDF5.
    Raises ``PipelineError`` naming the file on any problem (a raw file changed since extraction, a set
    already present without ``overwrite``, …).

    ``workers`` threads read and resize images in this process. With ``dask_workers`` > 0 (a local cluster)
    or a ``scheduler`` address, each image file is one Dask task instead, for splits of many shards: the
    tasks write their own files and return only their manifest entries.
    """
    size = (int(size[0]), int(size[1]))
    if compression in ("none", ""):
        compression = None
    pairs = _check_inputs(split, format, size, images, pairs, pair_identities, images_per_shard, compression)
    folder = Path(folder)
    raw_root = Path(raw_root)
    folder.mkdir(parents=True, exist_ok=True)
    _clear_folder(folder, overwrite)

    workers = workers or min(8, os.cpu_count() or 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(images), unit="img", desc=f"shards {split}", dynamic_ncols=True)
    jobs = [(shard, first, images[first:first + images_per_shard])
            for shard, first in enumerate(range(0, len(images), images_per_shard))]
    try:
        if (scheduler or dask_workers > 0) and len(jobs) > 1:
            entries = _write_shards_on_dask(jobs, folder, raw_root, size, format, compression, workers,
                                            dask_workers, scheduler, bar)
        else:
            entries = [write_images_shard(folder, shard, first, chunk, raw_root, size, format, compression, workers,
                                          bar.update if bar is not None else None)
                       for shard, first, chunk in jobs]
    finally:
        if bar is not None:
            bar.close()

    table = table_from_pydict("pairs", {"source": pairs[:, 0].copy(), "target": pairs[:, 1].copy(),
                                        "identity": list(pair_identities)})
    write_table(table, folder / PAIRS_NAME, "pairs")
    entries.append(file_entry(folder, PAIRS_NAME, "pairs", len(pairs)))

    manifest = Manifest(
        format=format,
        split=split,
        size=size,
        counts={"images": len(images), "pairs": len(pairs), "identities": len({it.identity for it in images})},
        files=entries,
        seed=int(seed),
        filter=dict(filter or {}),
        pairing=dict(pairing or {}),
        extract=dict(extract or {}),
        dataset=dataset,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        pgpig_version=package_version(),
    )
    try:
        manifest.write(folder)
    except SchemaError as exc:
        raise PipelineError(str(exc)) from None
    return manifest


# ---------------------------------------------------------------------------------------------------- reader


def _read_manifest(folder: Path) -> Manifest:
    try:
        return Manifest.read(folder)
    except SchemaError as exc:
        raise PipelineError(str(exc)) from None


def _decode_stored(data: bytes, where: str) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _READ_FLAGS)
    if bgr is None:
        raise PipelineError(f"{where}: stored image bytes do not decode; the file is damaged; re-run `pgpig-data pair`")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class _ParquetShard:
    """One open Parquet image file: row-group offsets from its footer, the last group read kept."""

    def __init__(self, path: Path):
        self.path = path
        # single-threaded, no pre-buffering: for one small local row group both only add overhead (≈0.4 → 0.2 ms)
        self.file = pq.ParquetFile(path, pre_buffer=False)
        check_file_metadata(self.file.schema_arrow.metadata, path, "shard_images")
        meta = self.file.metadata
        self.starts = np.cumsum([0] + [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]).tolist()
        self.group = -1
        self.columns: tuple = ()

    def row(self, local: int) -> tuple[bytes, np.ndarray, np.ndarray, str]:
        group = bisect.bisect_right(self.starts, local) - 1
        if group != self.group:
            table = self.file.read_row_group(group, columns=["data", "keypoints", "scores", "identity"],
                                             use_threads=False).combine_chunks()
            # straight from the Arrow buffers (no nulls by schema): ~30 µs a group, where per-row slicing and
            # the generic converters cost ~100× that and dominated random reads
            data, keypoints, scores, identity = (table.column(k).chunk(0) for k in range(4))
            self.columns = (
                data,
                keypoints.flatten().flatten().to_numpy().reshape(-1, NUM_KEYPOINTS, 2),
                scores.flatten().to_numpy().reshape(-1, NUM_KEYPOINTS),
                identity.to_pylist(),
            )
            self.group = group
        r = local - self.starts[group]
        data, keypoints, scores, identity = self.columns
        return data[r].as_py(), keypoints[r].copy(), scores[r].copy(), identity[r]

    def close(self) -> None:
        self.file.close()


class _H5Shard:
    """One open HDF5 image file; every read is one chunk (one image) or a few bytes of metadata."""

    def __init__(self, path: Path):
        import h5py

        self.path = path
        self.file = h5py.File(path, "r")
        attrs = {k.encode(): str(v).encode() for k, v in self.file.attrs.items()}
        check_file_metadata(attrs, path, "shard_images")
        self.images = self.file["images"]
        self.keypoints = self.file["keypoints"]
        self.scores = self.file["scores"]
        self.identity = self.file["identity"].asstr()

    def row(self, local: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        return self.images[local], self.keypoints[local], self.scores[local], self.identity[local]

    def close(self) -> None:
        self.file.close()


@dataclass
class _Handles:
    pid: int
    files: dict[int, _ParquetShard | _H5Shard] = field(default_factory=dict)


class ShardSet:
    """Random access to one split's stored images (``len``, ``[i]``) and its pairs; the trainer's one reader.

    Opening reads and validates the manifest and checks every listed file exists with its listed size
    (``verify=True`` also re-hashes them). Image files are opened on first use in each process, so the
    object can be pickled into DataLoader workers; nothing larger than one Parquet row group or one HDF5
    chunk is read per sample.
    """

    def __init__(self, folder: str | os.PathLike, verify: bool = False):
        self.folder = Path(folder)
        self.manifest: Manifest = _read_manifest(self.folder)
        problems = self.manifest.file_problems(self.folder, check_hash=verify)
        if problems:
            raise PipelineError(f"{problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1
                                                  else "") + "; re-run `pgpig-data pair`")
        self._files = [e for e in self.manifest.files if e.kind == "images"]
        self._starts = np.cumsum([0] + [e.rows for e in self._files]).tolist()
        self.size: tuple[int, int] = tuple(self.manifest.size)
        self.pairs, self.pair_identities = read_pairs_table(self.folder, self.manifest)
        self._handles = _Handles(os.getpid())

    def __len__(self) -> int:
        return self.manifest.counts["images"]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = _Handles(-1)  # open files do not travel; each process opens its own
        return state

    def _shard(self, k: int) -> _ParquetShard | _H5Shard:
        handles = self._handles
        if handles.pid != os.getpid():
            # a forked child inherits the parent's handles: sharing their file offsets would corrupt reads
            handles = self._handles = _Handles(os.getpid())
        shard = handles.files.get(k)
        if shard is None:
            path = safe_join(self.folder, self._files[k].path, "manifest file")
            try:
                shard = _ParquetShard(path) if self.manifest.format == "parquet" else _H5Shard(path)
            except (OSError, SchemaError, pa.ArrowInvalid) as exc:
                raise PipelineError(f"{path}: cannot open ({exc}); re-run `pgpig-data pair`") from None
            handles.files[k] = shard
        return shard

    def __getitem__(self, i: int) -> ShardSample:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        k = bisect.bisect_right(self._starts, i) - 1
        shard = self._shard(k)
        pixels, keypoints, scores, identity = shard.row(i - self._starts[k])
        if isinstance(pixels, (bytes, bytearray)):
            pixels = _decode_stored(pixels, f"{shard.path} row {i - self._starts[k]}")
        return ShardSample(pixels, np.asarray(keypoints, np.float32), np.asarray(scores, np.float32), identity, i)

    def close(self) -> None:
        """Close the files this process opened (they are reopened on the next read)."""
        for shard in self._handles.files.values():
            shard.close()
        self._handles = _Handles(os.getpid())

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ShardSet({str(self.folder)!r}, {m.format}, split={m.split}, size={m.size[0]}x{m.size[1]}, "
                f"images={len(self)}, pairs={m.counts['pairs']})")


def read_pairs_table(folder: str | os.PathLike, manifest: Manifest | None = None) -> tuple[np.ndarray, list[str]]:
    """The pairs of a shard set: ``(P, 2)`` int64 ``(source, target)`` and each pair's identity."""
    folder = Path(folder)
    manifest = manifest or _read_manifest(folder)
    entry = next(e for e in manifest.files if e.kind == "pairs")  # Manifest.validate guarantees one
    path = safe_join(folder, entry.path, "manifest file")
    try:
        table = read_table(path, "pairs")
    except SchemaError as exc:
        raise PipelineError(str(exc)) from None
    pairs = np.stack([table["source"].to_numpy(), table["target"].to_numpy()], axis=1).astype(np.int64)
    return pairs.reshape(-1, 2), table["identity"].to_pylist()


# ---------------------------------------------------------------------------------------------------- verify


def verify_shard_set(folder: str | os.PathLike) -> list[str]:
    """Check a shard set end to end; one line per problem, naming the file, ``[]`` when all is well.

    Listed files present with their size and sha256, row counts as listed, every image decoding to the
    manifest's size, global indices in order, pair indices in range.
    """
    folder = Path(folder)
    try:
        manifest = Manifest.read(folder)
    except SchemaError as exc:
        return [str(exc)]
    problems = manifest.file_problems(folder, check_hash=True)
    n = manifest.counts["images"]
    start = 0
    for entry in manifest.files:
        try:
            path = safe_join(folder, entry.path, "manifest file")
        except SchemaError:
            continue  # already reported by file_problems
        if any(p.startswith(f"{path}:") for p in problems):  # missing or changed: reported, not read
            start += entry.rows if entry.kind == "images" else 0
            continue
        try:
            if entry.kind == "pairs":
                problems += _verify_pairs(path, entry, n)
            elif manifest.format == "parquet":
                problems += _verify_parquet(path, entry, start, manifest.size)
            else:
                problems += _verify_h5(path, entry, start, manifest.size)
        except Exception as exc:  # a damaged file can fail in any library; report it, check the others
            first = (str(exc).splitlines() or [""])[0]
            problems.append(f"{path}: unreadable ({type(exc).__name__}: {first})")
        if entry.kind == "images":
            start += entry.rows
    return problems


def _verify_pairs(path: Path, entry: FileEntry, n: int) -> list[str]:
    table = read_table(path, "pairs")
    out = []
    if table.num_rows != entry.rows:
        out.append(f"{path}: {table.num_rows} rows, manifest says {entry.rows}")
    if table.num_rows:
        st = np.stack([table["source"].to_numpy(), table["target"].to_numpy()])
        if st.min() < 0 or st.max() >= n:
            out.append(f"{path}: pair indices {st.min()}..{st.max()} outside the {n} images [0, {n})")
    return out


def _verify_parquet(path: Path, entry: FileEntry, start: int, size: tuple[int, int]) -> list[str]:
    pf = pq.ParquetFile(path)
    check_file_metadata(pf.schema_arrow.metadata, path, "shard_images")
    out = []
    if pf.metadata.num_rows != entry.rows:
        return [f"{path}: {pf.metadata.num_rows} rows, manifest says {entry.rows}"]
    row = 0
    for group in range(pf.metadata.num_row_groups):
        table = pf.read_row_group(group, columns=["index", "data", "width", "height"])
        index = table["index"].to_numpy()
        if not np.array_equal(index, np.arange(start + row, start + row + len(index))):
            out.append(f"{path}: row group {group} holds indices {index[:1]}…, expected from {start + row}")
        for r, data in enumerate(table["data"].to_pylist()):
            image = None if data is None else cv2.imdecode(np.frombuffer(data, np.uint8), _READ_FLAGS)
            if image is None:
                out.append(f"{path}: row {row + r} (image {start + row + r}) does not decode")
            elif image.shape[:2] != tuple(size):
                out.append(f"{path}: row {row + r} decodes to {image.shape[0]}x{image.shape[1]}, "
                           f"manifest size is {size[0]}x{size[1]}")
        row += len(index)
    return out


def _verify_h5(path: Path, entry: FileEntry, start: int, size: tuple[int, int]) -> list[str]:
    import h5py

    out = []
    with h5py.File(path, "r") as f:
        check_file_metadata({k.encode(): str(v).encode() for k, v in f.attrs.items()}, path, "shard_images")
        images = f["images"]
        if images.shape != (entry.rows, size[0], size[1], 3) or images.dtype != np.uint8:
            return [f"{path}: images {images.shape} {images.dtype}, manifest says ({entry.rows}, {size[0]}, "
                    f"{size[1]}, 3) uint8"]
        for name in ("index", "keypoints", "scores", *_H5_STRINGS):
            if f[name].shape[0] != entry.rows:
                out.append(f"{path}: {name} has {f[name].shape[0]} rows, manifest says {entry.rows}")
        if not np.array_equal(f["index"][:], np.arange(start, start + entry.rows)):
            out.append(f"{path}: index column is not {start}..{start + entry.rows - 1}")
        for r in range(entry.rows):
            images[r]  # reads (and checks the filters of) every chunk
    return out
