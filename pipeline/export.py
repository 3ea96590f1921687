"""Exports to PATN's CSV formats: a keypoints table as an annotation CSV (``pgpig-data export-annotations``) and a
shard set's pairs as a pair CSV (``pgpig-data export-pairs``), both named by PATN flat names; optionally the raw
images they name, copied under those names into the ``<root>/<split>/`` folders the official loaders read."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.keypoints import read_keypoints
from schemas.patn import write_pairs


def export_annotations(keypoints_dir: str | os.PathLike, out_csv: str | os.PathLike, split: str | None = None,
                       patn_crop: bool = False, images_to: str | os.PathLike | None = None,
                       raw: str | os.PathLike | None = None, run_file: str | os.PathLike = "extract.json",
                       link: bool = False) -> int:
    """Write the ``ok`` rows of a keypoints table as a PATN annotation CSV; returns the rows written.

    Names are the PATN flat names (the file name when none). With ``patn_crop`` DeepFashion keypoints
    move into PATN's 256×176 crop frame, hiding those outside it. With ``images_to`` every written row's raw image
    also goes to ``images_to/<its split>/<name>`` (``write_images``), read from ``raw`` (default: the raw root
    recorded in ``run_file``).
    """
    from schemas.patn import deepfashion_margin, to_patn_frame, write_annotations
    from schemas.tables import keypoints_to_numpy

    table = read_keypoints(keypoints_dir)
    status = np.asarray(table["status"].to_pylist())
    keep = status == "ok"
    if split is not None:
        keep &= np.asarray(table["split"].to_pylist(), dtype=object) == split
    idx = np.flatnonzero(keep)
    xy = keypoints_to_numpy(table["keypoints"])[idx]
    patn_names, images = table["patn_name"].to_pylist(), table["image"].to_pylist()
    names = [patn_names[i] or Path(images[i]).name for i in idx]
    if patn_crop:
        widths = table["width"].to_numpy(zero_copy_only=False)[idx]
        datasets = table["dataset"].to_pylist()
        for k, i in enumerate(idx):
            if datasets[i] == "deepfashion":
                margin = deepfashion_margin(int(widths[k]))
                xy[k] = to_patn_frame(xy[k], margin, width=int(widths[k]) - 2 * margin)
    if images_to is not None:
        root = Path(raw) if raw is not None else _raw_from_run_file(Path(run_file))
        splits, hashes = table["split"].to_pylist(), table["content_hash"].to_pylist()
        for name in sorted({splits[i] for i in idx}):
            rows = [(names[k], images[i], hashes[i]) for k, i in enumerate(idx) if splits[i] == name]
            write_images(rows, root, Path(images_to) / name, link=link)
    write_annotations(out_csv, names, xy)
    return len(names)


def shard_images(folder: str | os.PathLike) -> tuple[list[str], list[str], list[str]]:
    """``(PATN name, raw path, content hash)`` lists of every stored image of a shard set, by global index; the
    name is the file name where the image has no PATN name."""
    from schemas.files import safe_join
    from schemas.manifest import Manifest
    from schemas.tables import read_table

    folder = Path(folder)
    manifest = Manifest.read(folder)
    patn: list[str | None] = []
    images: list[str] = []
    hashes: list[str] = []
    for entry in (e for e in manifest.files if e.kind == "images"):
        path = safe_join(folder, entry.path, "manifest file")
        if manifest.format == "parquet":
            table = read_table(path, "shard_images", columns=["patn_name", "image", "content_hash"])
            patn += table["patn_name"].to_pylist()
            images += table["image"].to_pylist()
            hashes += table["content_hash"].to_pylist()
        else:
            import h5py

            with h5py.File(path, "r") as f:
                # the HDF5 writer stores a missing PATN name as ""
                patn += [n or None for n in f["patn_name"].asstr()[:].tolist()]
                images += f["image"].asstr()[:].tolist()
                hashes += f["content_hash"].asstr()[:].tolist()
    names = [n if n else Path(i).name for n, i in zip(patn, images, strict=True)]
    return names, images, hashes


def shard_names(folder: str | os.PathLike) -> list[str]:
    """PATN name of every stored image of a shard set, by global index; the file name where it has none."""
    return shard_images(folder)[0]


def export_pairs(folder: str | os.PathLike, out_csv: str | os.PathLike, images_to: str | os.PathLike | None = None,
                 raw: str | os.PathLike | None = None, link: bool = False) -> int:
    """Write a shard set's pairs as a PATN pair CSV (PATN names, the file name where there is none).

    With ``images_to`` every image a pair names (source or target) also goes to ``images_to/<split>/<name>``
    (``write_images``), read from ``raw`` (default: the raw root the manifest records), so the official loaders,
    which open ``<dataroot>/<split>/<name>``, find every image of the list.
    """
    from pipeline.shards import read_pairs_table
    from schemas.manifest import Manifest

    pairs, _ = read_pairs_table(folder)
    names, images, hashes = shard_images(folder)
    if images_to is not None:
        manifest = Manifest.read(folder)
        root = raw if raw is not None else manifest.extract.get("raw")
        if root is None:
            raise PipelineError(f"{Path(folder) / 'manifest.json'}: records no raw data folder; pass --raw RAW")
        needed = sorted({int(i) for i in np.asarray(pairs).ravel()})
        write_images([(names[i], images[i], hashes[i]) for i in needed], Path(root),
                     Path(images_to) / manifest.split, link=link)
    write_pairs(out_csv, ((names[s], names[t]) for s, t in pairs.tolist()))
    return len(pairs)


def _raw_from_run_file(run_file: Path) -> Path:
    """The raw root an extract run record names."""
    try:
        raw = json.loads(run_file.read_text()).get("raw")
    except (OSError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{run_file}: cannot read the extract run record ({exc}); pass --raw RAW or "
                            "--run-file") from None
    if not raw:
        raise PipelineError(f"{run_file}: records no raw data folder; pass --raw RAW")
    return Path(raw)


def write_images(rows: Iterable[tuple[str, str, str]], raw: Path, out: Path, link: bool = False) -> int:
    """Put each ``(flat name, raw path, content hash)`` row's file ``raw/<raw path>`` at ``out/<flat name>``.

    Each file is written to a temporary name and renamed, so ``out`` only ever holds complete files; a file already
    there with the right content is kept (a second run does nothing). ``link`` hard-links instead of copying where
    the file system allows. Names must be flat (no folder part) and raw paths must stay inside ``raw``; a missing or
    changed raw file or two images under one name raise ``PipelineError``. Returns the files written.
    """
    from schemas.errors import SchemaError
    from schemas.files import atomic_path, safe_join, sha256_file

    wanted: dict[str, tuple[str, str]] = {}
    for name, relpath, content_hash in rows:
        if "/" in name or name in (".", ".."):
            raise PipelineError(f"image name {name!r} (of {relpath}) is not a flat file name; PATN's loaders need "
                                "flat names: re-run `pgpig-data extract` with the current pgpig")
        if wanted.setdefault(name, (relpath, content_hash)) != (relpath, content_hash):
            raise PipelineError(f"{wanted[name][0]} and {relpath} are both named {name} in the official layout; "
                                "export one of them only (e.g. --split)")
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, (relpath, content_hash) in sorted(wanted.items()):
        try:
            source, target = safe_join(raw, relpath, "raw image"), safe_join(out, name, "image name")
        except SchemaError as exc:
            raise PipelineError(f"{exc}; re-run `pgpig-data extract` on the raw folder") from None
        if target.is_file() and sha256_file(target) == content_hash:
            continue
        if not source.is_file():
            raise PipelineError(f"{source}: raw image not found; pass the raw data folder the images were extracted "
                                "from with --raw")
        if sha256_file(source) != content_hash:
            raise PipelineError(f"{source}: changed since extraction (sha256 differs from the keypoints); re-run "
                                "`pgpig-data extract`")
        with atomic_path(target) as tmp:
            if link:
                os.unlink(tmp)
                try:
                    os.link(source, tmp)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise
                    shutil.copyfile(source, tmp)
            else:
                shutil.copyfile(source, tmp)
        written += 1
    return written
