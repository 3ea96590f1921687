"""Raw data set layouts: find every file of a raw root and say what it is (identity, split, skip reason).

``list_images(root)`` detects the layout (``detect_layout``) and returns one ``RawImage`` per file found
in the layout's folders, sorted by ``image``: nothing is silently dropped, files that cannot be images
of the data set come back with a ``skip_reason``. Only our own ``.*.tmp`` temporaries are left out.

- ``market1501``: ``bounding_box_train/``, ``bounding_box_test/``, ``query/`` (``market.py``);
- ``deepfashion``: In-shop's ``img/`` or ``img_highres/`` tree (``deepfashion.py``);
- ``folder``: ``<root>/<identity>/<image>`` (``folder.py``).

``default_person(root)`` is the layout's default person rule of extraction (``PERSON`` of each layout module).
``background.start_listing`` runs ``list_images`` in a child process, beside other work of the caller.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.datasets.deepfashion import DEFAULT_TEST_FRACTION as DEEPFASHION_TEST_FRACTION
from pipeline.datasets.deepfashion import IMAGE_FOLDERS, list_deepfashion
from pipeline.datasets.deepfashion import PERSON as DEEPFASHION_PERSON
from pipeline.datasets.folder import DEFAULT_TEST_FRACTION as FOLDER_TEST_FRACTION
from pipeline.datasets.folder import PERSON as FOLDER_PERSON
from pipeline.datasets.folder import list_folder
from pipeline.datasets.listing import DATASETS, IMAGE_EXTENSIONS, RawImage, check_test_fraction
from pipeline.datasets.market import FOLDERS as MARKET_FOLDERS
from pipeline.datasets.market import PERSON as MARKET_PERSON
from pipeline.datasets.market import list_market, present_folders
from pipeline.errors import PipelineError

__all__ = ["DATASETS", "IMAGE_EXTENSIONS", "PERSON_DEFAULTS", "RawImage", "default_person", "detect_layout",
           "list_images"]

PERSON_DEFAULTS = {"market1501": MARKET_PERSON, "deepfashion": DEEPFASHION_PERSON, "folder": FOLDER_PERSON}
"""Extraction's default person rule per layout (``default_person``)."""

_EXPECTED = {
    "market1501": "Market-1501's bounding_box_train/, bounding_box_test/ or query/",
    "deepfashion": "DeepFashion In-shop's img/ or img_highres/",
    "folder": "one subfolder per identity",
}


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.exists():
        raise PipelineError(f"{root}: the raw data folder does not exist")
    if not root.is_dir():
        raise PipelineError(f"{root}: is a file; give the raw data folder")
    return root


def detect_layout(root: str | os.PathLike) -> str:
    """Which of ``DATASETS`` the folder ``root`` holds, judged by its top-level folders.

    Market-1501 when any of its three folders exists, DeepFashion when ``img/`` or ``img_highres/`` does,
    else ``folder`` when the root has a (non-hidden) subfolder. Raises ``PipelineError`` otherwise.
    """
    root = _check_root(root)
    if present_folders(root):
        return "market1501"
    if any((root / name).is_dir() for name in IMAGE_FOLDERS):
        return "deepfashion"
    try:
        with os.scandir(root) as it:
            if any(not e.name.startswith(".") and e.is_dir() for e in it):
                return "folder"
    except OSError as exc:
        raise PipelineError(f"{root}: cannot read the folder ({exc.strerror or exc})") from None
    raise PipelineError(
        f"{root}: no data set layout found; expected {_EXPECTED['market1501']}, {_EXPECTED['deepfashion']}, "
        f"or {_EXPECTED['folder']} (<root>/<identity>/<image>)"
    )


def default_person(root: str | os.PathLike, dataset: str | None = None) -> str:
    """The person rule extraction uses by default for the layout ``dataset`` (None: detected in ``root``): ``centre``
    for the cropped data sets (Market-1501, DeepFashion), ``largest`` for a folder of photos."""
    dataset = detect_layout(root) if dataset is None else dataset
    if dataset not in PERSON_DEFAULTS:
        raise PipelineError(f"{root}: unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    return PERSON_DEFAULTS[dataset]


def list_images(
    root: str | os.PathLike,
    dataset: str | None = None,
    *,
    split_lists: tuple[Path, Path] | None = None,
    seed: int = 0,
    test_fraction: float | None = None,
    highres: bool = False,
) -> list[RawImage]:
    """Every file of the raw data set under ``root``, one ``RawImage`` each, sorted by ``image``.

    ``dataset`` forces a layout (one of ``DATASETS``); None detects it. ``split_lists`` (train, test files
    of PATN flat names) decide the DeepFashion split. ``seed`` and ``test_fraction`` (default 0.5 for
    DeepFashion, 0.1 for folder) drive the seeded identity split where the layout gives no split; Market's
    split is its folders'. ``highres`` lists DeepFashion's ``img_highres/``. Raises ``PipelineError`` for
    a missing root, an unknown data set, options that do not apply, or a layout without any file.
    """
    root = _check_root(root)
    if dataset is None:
        dataset = detect_layout(root)
    elif dataset not in DATASETS:
        raise PipelineError(f"{root}: unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    if split_lists is not None and dataset != "deepfashion":
        raise PipelineError(f"{root}: split lists (PATN flat names) apply to DeepFashion only, not {dataset}")
    if test_fraction is not None:
        try:
            test_fraction = check_test_fraction(test_fraction)
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"{root}: {exc}") from None

    try:
        if dataset == "market1501":
            if not present_folders(root):
                raise PipelineError(f"{root}: no {', '.join(f'{f}/' for f in MARKET_FOLDERS)} folder; "
                                    f"expected {_EXPECTED['market1501']}")
            rows = list_market(root)
        elif dataset == "deepfashion":
            rows = list_deepfashion(
                root,
                split_lists=split_lists,
                seed=seed,
                test_fraction=DEEPFASHION_TEST_FRACTION if test_fraction is None else test_fraction,
                highres=highres,
            )
        else:
            rows = list_folder(root, seed=seed,
                               test_fraction=FOLDER_TEST_FRACTION if test_fraction is None else test_fraction)
    except OSError as exc:  # a layout folder itself that cannot be read
        raise PipelineError(f"{root}: cannot list {exc.filename or 'the folder'} ({exc.strerror or exc})") from None
    if not rows:
        raise PipelineError(f"{root}: no files found in the {dataset} layout; expected {_EXPECTED[dataset]}")
    rows.sort(key=lambda row: row.image)
    return rows
