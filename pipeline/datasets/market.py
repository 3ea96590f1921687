"""Market-1501: ``bounding_box_train/``, ``bounding_box_test/`` and ``query/`` of ``PPPP_cCsS_FFFFFF_NN.jpg``.

Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015. A name reads person ``PPPP``
(four digits, or ``-1``), camera ``C``, sequence ``S``, frame ``FFFFFF`` and box ``NN``. Person ``-1``
marks junk boxes and ``0000`` distractors: both are listed as skipped with that reason. The split is the
folder's: train from ``bounding_box_train/``, test from ``bounding_box_test/`` and ``query/``.

The folders are flat. A file in a subfolder of one of them (not part of the download) is listed as
skipped "not directly inside <folder>/", so it is visible in the table instead of silently read or lost.
Everything else of the download (``gt_bbox/``, ``gt_query/``, ``readme.txt``) is not part of the listing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.datasets.listing import IMAGE_EXTENSIONS, RawImage, extension, walk

FOLDERS = {"bounding_box_train": "train", "bounding_box_test": "test", "query": "test"}
"""Layout folder → split."""

PERSON = "centre"
"""Extraction's default person rule (``pipeline.pose.choose_person``): each image is a detector's crop of one
person, centred and covering the image height; a neighbour may show at a side."""

_NAME = re.compile(r"(-1|\d{4})_c(\d)s\d_\d{6}_\d{2}(\.[^.]+)", re.ASCII)
_BAD_NAME = "name does not follow Market-1501's PPPP_cCsS_FFFFFF_NN.jpg (e.g. 0002_c1s1_000451_03.jpg)"
_SKIPPED_IDS = {"-1": "Market-1501 junk id -1", "0000": "Market-1501 distractor id 0000"}


def present_folders(root: Path) -> list[str]:
    """The Market-1501 layout folders that exist under ``root``."""
    return [name for name in FOLDERS if (root / name).is_dir()]


def parse(rel: str, split: str, reason: str | None) -> RawImage:
    """The row of one file ``rel`` (relative to the raw root) found in a layout folder of ``split``.

    ``reason`` is the walk's (hidden, not a regular file, ...); it wins over what the name says, but the
    id and camera are still read from the name when they can be.
    """
    folder, _, inner = rel.partition("/")
    name = inner.rpartition("/")[2]
    m = _NAME.fullmatch(name)
    person, camera, ext = m.groups() if m else ("", None, extension(name))
    if reason is None:
        if "/" in inner:
            reason = f"not directly inside {folder}/ (Market-1501 folders are flat)"
        elif ext.lower() not in IMAGE_EXTENSIONS:
            reason = "not an image file"
        elif m is None:
            reason = _BAD_NAME
        else:
            reason = _SKIPPED_IDS.get(person)
    return RawImage(
        image=rel,
        dataset="market1501",
        split=split,
        identity=person,
        camera=None if camera is None else int(camera),
        view=None,
        patn_name=name if m else None,
        skip_reason=reason,
    )


def list_market(root: Path) -> list[RawImage]:
    """Every file in the Market-1501 layout folders of ``root``, unsorted."""
    rows = []
    for folder in present_folders(root):
        split = FOLDERS[folder]
        rows.extend(parse(rel, split, reason) for rel, reason in walk(os.path.join(root, folder), folder))
    return rows
