"""Exports to PATN's CSV formats: a keypoints table as an annotation CSV (``pgpig-data export-annotations``) and a
shard set's pairs as a pair CSV (``pgpig-data export-pairs``), both named by PATN flat names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.keypoints import read_keypoints


def export_annotations(keypoints_dir: str | os.PathLike, out_csv: str | os.PathLike, split: str | None = None,
                       patn_crop: bool = False) -> int:
    """Write the ``ok`` rows of a keypoints table as a PATN annotation CSV; returns the rows written.

    Names are the PATN flat names (the file name when none). With ``patn_crop`` DeepFashion keypoints
    move into PATN's 256×176 crop frame, hiding those outside it.
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
    write_annotations(out_csv, names, xy)
    return len(names)


def shard_names(folder: str | os.PathLike) -> list[str]:
    """PATN name of every stored image of a shard set, by global index; the file name where it has none."""
    from schemas.files import safe_join
    from schemas.manifest import Manifest
    from schemas.tables import read_table

    folder = Path(folder)
    manifest = Manifest.read(folder)
    patn: list[str | None] = []
    images: list[str] = []
    for entry in (e for e in manifest.files if e.kind == "images"):
        path = safe_join(folder, entry.path, "manifest file")
        if manifest.format == "parquet":
            table = read_table(path, "shard_images", columns=["patn_name", "image"])
            patn += table["patn_name"].to_pylist()
            images += table["image"].to_pylist()
        else:
            import h5py

            with h5py.File(path, "r") as f:
                # the HDF5 writer stores a missing PATN name as ""
                patn += [n or None for n in f["patn_name"].asstr()[:].tolist()]
                images += f["image"].asstr()[:].tolist()
    return [n if n else Path(i).name for n, i in zip(patn, images, strict=True)]


def export_pairs(folder: str | os.PathLike, out_csv: str | os.PathLike) -> int:
    """Write a shard set's pairs as a PATN pair CSV (PATN names, the file name where there is none)."""
    from pipeline.shards import read_pairs_table
    from schemas.patn import write_pairs

    pairs, _ = read_pairs_table(folder)
    names = shard_names(folder)
    write_pairs(out_csv, ((names[s], names[t]) for s, t in pairs.tolist()))
    return len(pairs)
