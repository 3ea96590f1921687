"""DeepFashion In-shop Clothes Retrieval: ``img/{MEN,WOMEN}/<Category>/id_XXXXXXXX/NN_V_view.jpg``.

Liu et al., "DeepFashion: Powering Robust Clothes Recognition and Retrieval with Rich Annotations",
CVPR 2016. The identity is the item id folder ``id_XXXXXXXX``; a file name reads clothing number ``NN``,
view number ``V`` and view word (front, side, back, full, additional, flat). ``img_highres/`` holds the
same tree at a larger size and is listed instead of ``img/`` on request, or when it is the only one.

The split comes from, in this order of preference:

1. ``split_lists``: PATN's published flat-name lists (train, test), matched through ``patn_name``;
2. ``list_eval_partition.txt`` (at the root, or in ``Eval/`` as In-shop ships it): train ← train,
   test ← query and gallery;
3. a seeded split by identity (``listing.identity_in_test``), which never splits one item.

With 1 or 2, an image on disk that the lists do not name gets split None (it is still processed).
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from pipeline.datasets.listing import IMAGE_EXTENSIONS, RawImage, extension, identity_in_test, walk
from pipeline.errors import PipelineError
from schemas.errors import SchemaError
from schemas.patn import deepfashion_flat_name

IMAGE_FOLDERS = ("img", "img_highres")
PARTITION_NAMES = ("list_eval_partition.txt", "Eval/list_eval_partition.txt")
VIEWS = frozenset({"front", "side", "back", "full", "additional", "flat"})
PARTITION_SPLITS = {"train": "train", "query": "test", "gallery": "test"}
DEFAULT_TEST_FRACTION = 0.5
"""In-shop splits its items about half and half (3,997 train, 3,985 query/gallery)."""
PERSON = "centre"
"""Extraction's default person rule (``pipeline.pose.choose_person``): each image is a shop photo cropped to one
model, centred and covering most of the image height."""

_ITEM = re.compile(r"id_\d{8}", re.ASCII)
_FILE = re.compile(r"(\d+)_(\d+)_([a-z]+)\.(?:jpe?g|png)", re.ASCII | re.IGNORECASE)
_EXPECTED = "{folder}/{{MEN,WOMEN}}/<Category>/id_XXXXXXXX/NN_V_view.jpg"


def image_folder(root: Path, highres: bool) -> str:
    """``img`` or ``img_highres``: the one to list under ``root``; raises ``PipelineError`` when missing."""
    if highres:
        if not (root / "img_highres").is_dir():
            raise PipelineError(f"{root}: no img_highres/ folder; the high-resolution In-shop images are asked for")
        return "img_highres"
    if (root / "img").is_dir():
        return "img"
    if (root / "img_highres").is_dir():
        return "img_highres"
    raise PipelineError(f"{root}: no img/ or img_highres/ folder, expected DeepFashion In-shop's "
                        f"img/{{MEN,WOMEN}}/<Category>/id_XXXXXXXX/NN_V_view.jpg")


def find_partition(root: Path) -> Path | None:
    """In-shop's ``list_eval_partition.txt`` under ``root``, or None."""
    for name in PARTITION_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def read_partition(path: Path) -> dict[str, str]:
    """``{path below img/: "train" | "test"}`` from In-shop's ``list_eval_partition.txt``.

    The file is a count, the header ``image_name item_id evaluation_status``, then one
    ``img/... id_XXXXXXXX status`` line per image. Keys drop the ``img/`` folder so the same file serves
    ``img_highres/``. A malformed line, an unknown status or a count that disagrees with the lines raises
    ``PipelineError`` naming the file and line: a partial partition would silently shrink a split.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read the partition file ({exc})") from None
    if len(lines) < 2 or not lines[0].strip().isdigit() or lines[1].split() != [
        "image_name", "item_id", "evaluation_status"
    ]:
        raise PipelineError(f"{path}: expected a count line, then 'image_name item_id evaluation_status'")
    splits: dict[str, str] = {}
    for lineno, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        # split from the right: the status and item id never hold spaces, a path might
        fields = line.rsplit(None, 2)
        if len(fields) != 3 or "/" not in fields[0]:
            raise PipelineError(f"{path}:{lineno}: expected 'img/... id_XXXXXXXX status', got {line[:80]!r}")
        relpath, _, status = fields
        if status not in PARTITION_SPLITS:
            raise PipelineError(f"{path}:{lineno}: unknown evaluation_status {status!r} "
                                f"(expected {', '.join(PARTITION_SPLITS)})")
        splits[relpath.strip().partition("/")[2]] = PARTITION_SPLITS[status]
    if len(splits) != int(lines[0]):
        raise PipelineError(f"{path}: the first line says {int(lines[0])} images but {len(splits)} are listed; "
                            f"the file is truncated or edited")
    return splits


def read_split_lists(train_list: Path, test_list: Path) -> dict[str, str]:
    """``{PATN flat name: "train" | "test"}`` from two files of flat names, one per line."""
    splits: dict[str, str] = {}
    for split, path in (("train", Path(train_list)), ("test", Path(test_list))):
        try:
            names = path.read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError) as exc:
            raise PipelineError(f"{path}: cannot read the {split} list ({exc})") from None
        for name in names:
            if splits.get(name, split) != split:
                raise PipelineError(f"{name} is in both {train_list} and {test_list}; a name can have one split")
            splits[name] = split
    return splits


def parse(rel: str, reason: str | None) -> tuple[RawImage, str]:
    """The row of one file ``rel`` below ``img/`` (split left None) and its path below the image folder.

    Rows the pattern cannot read are skipped, naming the pattern; the item id is kept when the path has one.
    """
    folder, _, inner = rel.partition("/")
    parts = inner.split("/")
    identity = parts[2] if len(parts) >= 3 and _ITEM.fullmatch(parts[2]) else ""
    m = _FILE.fullmatch(parts[-1])
    view = m.group(3).lower() if m else None
    patn_name = None
    if reason is None:
        if extension(parts[-1]) not in IMAGE_EXTENSIONS:
            reason = "not an image file"
        elif len(parts) != 4 or parts[0] not in ("MEN", "WOMEN") or not identity or m is None:
            reason = f"not an In-shop image path {_EXPECTED.format(folder=folder)}"
        elif view not in VIEWS:
            reason = f"unknown In-shop view {m.group(3)!r} (expected one of {', '.join(sorted(VIEWS))})"
        else:
            try:
                patn_name = deepfashion_flat_name(rel)
            except SchemaError as exc:  # the two patterns agree; this keeps one odd name from stopping a run
                reason = str(exc)
    row = RawImage(
        image=rel,
        dataset="deepfashion",
        split=None,
        identity=identity,
        camera=None,
        view=view if reason is None else None,
        patn_name=patn_name,
        skip_reason=reason,
    )
    return row, inner


def list_deepfashion(
    root: Path,
    *,
    split_lists: tuple[Path, Path] | None = None,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    highres: bool = False,
) -> list[RawImage]:
    """Every file below ``root``'s ``img/`` (or ``img_highres/``) with its split, unsorted."""
    folder = image_folder(root, highres)
    by_name: dict[str, str] | None = None
    by_path: dict[str, str] | None = None
    if split_lists is not None:
        by_name = read_split_lists(*split_lists)
    elif (partition := find_partition(root)) is not None:
        by_path = read_partition(partition)
    seeded: dict[str, str] = {}
    rows = []
    for rel, reason in walk(os.path.join(root, folder), folder):
        row, inner = parse(rel, reason)
        if row.skip_reason is not None:
            split = None
        elif by_name is not None:
            split = by_name.get(row.patn_name)
        elif by_path is not None:
            split = by_path.get(inner)
        else:
            split = seeded.get(row.identity)
            if split is None:
                split = seeded[row.identity] = (
                    "test" if identity_in_test(row.identity, seed, test_fraction) else "train"
                )
        rows.append(row if split is None else replace(row, split=split))
    return rows
