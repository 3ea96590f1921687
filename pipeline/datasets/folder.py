"""Any other data set: ``<root>/<identity>/<image>``, one folder per person.

The identity is the first folder below the root; images may sit deeper inside it (``0007/day2/a.jpg``
is identity ``0007``). Files directly in the root are listed as skipped; hidden folders of the root
(``.git/``, ``.ipynb_checkpoints/``) are not identity folders and are not walked. The split is the seeded
split by identity (``listing.identity_in_test``), a tenth of the identities to test by default.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.datasets.listing import (
    IMAGE_EXTENSIONS,
    RawImage,
    entry_problem,
    extension,
    identity_in_test,
    is_own_temporary,
    printable_path,
    walk,
)

DEFAULT_TEST_FRACTION = 0.1
PERSON = "largest"
"""Extraction's default person rule (``pipeline.pose.choose_person``): any photo, the person need not be centred."""


def _row(rel: str, identity: str, split: str | None, reason: str | None) -> RawImage:
    return RawImage(image=rel, dataset="folder", split=split, identity=identity, camera=None, view=None,
                    patn_name=None, skip_reason=reason)


def list_folder(root: Path, *, seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION) -> list[RawImage]:
    """Every file in the identity folders of ``root`` (and every file beside them, skipped), unsorted."""
    rows = []
    splits: dict[str, str] = {}
    with os.scandir(root) as it:
        top = list(it)
    for entry in top:
        name = entry.name
        if is_own_temporary(name):
            continue
        if not entry.is_dir(follow_symlinks=False):
            rel, _ = printable_path(name)
            rows.append(_row(rel, "", None, entry_problem(entry) or "not inside an identity folder"))
            continue
        if name.startswith("."):
            continue
        # a folder name that is not UTF-8 is escaped here; walk() already marks every file below it skipped
        identity, _ = printable_path(name)
        for rel, reason in walk(entry.path, name):
            if reason is None and extension(rel.rpartition("/")[2]) not in IMAGE_EXTENSIONS:
                reason = "not an image file"
            if reason is not None:
                rows.append(_row(rel, identity, None, reason))
                continue
            split = splits.get(identity)
            if split is None:
                split = splits[identity] = "test" if identity_in_test(identity, seed, test_fraction) else "train"
            rows.append(_row(rel, identity, split, None))
    return rows
