"""Keypoints from PATN annotation CSVs instead of a model: the papers' published annotations and the
mannequin set's exact ones enter the pipeline this way (``pgpig-data extract --annotations CSV``).

Names are matched through each image's PATN flat name. DeepFashion CSVs are in PATN's 256×176 crop
frame, so visible x move back by the crop margin (40 px at width 256, ``deepfashion_margin``); Market-1501
and folder CSVs are in the raw frame. ``AnnotationSource`` is the ``KeypointSource`` that
``pgpig-data extract`` runs: each file is still decoded (``pipeline.decode``) for its size, hash and status.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.pose import PersonBatch, decoded_files
from schemas.keypoints import MISSING, visible_mask
from schemas.patn import deepfashion_margin, from_patn_frame, read_annotations


class AnnotationIndex:
    """All keypoints of one or more PATN annotation CSVs, by flat name."""

    def __init__(self, paths: list[str | os.PathLike] | tuple, dataset: str | None):
        self.paths = [Path(p) for p in paths]
        self.dataset = dataset
        self.rows = _annotated(tuple(str(p) for p in self.paths))

    def lookup(self, name: str | None, width: int) -> np.ndarray | None:
        """``(18, 2)`` keypoints in the raw frame of an image ``width`` px wide, or None if not annotated."""
        if name is None or name not in self.rows:
            return None
        xy = self.rows[name]
        if self.dataset == "deepfashion":
            xy = from_patn_frame(xy, deepfashion_margin(width))
        return xy.astype(np.float32)


def annotation_row(xy: np.ndarray, width: int, height: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Box, keypoints and scores for an annotated image.

    Keypoints outside the image become invisible; scores are 1 for visible joints and 0 otherwise; the
    box is the extent of the visible joints with score 1 (None when none is visible).
    """
    xy = xy.copy()
    outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] > width - 1) | (xy[:, 1] > height - 1)
    xy[outside] = MISSING
    vis = visible_mask(xy)
    scores = vis.astype(np.float32)
    if not vis.any():
        return None, xy, scores
    lo, hi = xy[vis].min(axis=0), xy[vis].max(axis=0)
    return np.array([lo[0], lo[1], hi[0], hi[1], 1.0], np.float32), xy, scores


@functools.cache
def _annotated(paths: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``(18, 2)`` keypoints by flat name of all CSVs of ``paths``, read once per process (shared, not to be
    changed)."""
    rows: dict[str, np.ndarray] = {}
    for path in paths:
        ann = read_annotations(path)
        for name, xy in zip(ann.names, ann.keypoints, strict=True):
            if name in rows:
                raise PipelineError(f"{path}: {name!r} is annotated in more than one CSV")
            rows[name] = xy
    return rows


class AnnotationSource:
    """Keypoints of the files looked up by PATN flat name in annotation CSVs (``KeypointSource``)."""

    name = "annotations"
    origin = "annotations"

    def __init__(self, paths: tuple[str, ...], dataset: str | None, batch_size: int = 32, read_threads: int = 4):
        self.paths, self.dataset = tuple(str(p) for p in paths), dataset
        self.batch_size, self.read_threads = batch_size, read_threads

    def warm_up(self) -> None:
        """Read the CSVs (once per process, whatever the data set)."""
        AnnotationIndex(self.paths, self.dataset)

    def look_ahead(self, paths: list[str]) -> None:
        """Nothing to prepare per file."""

    def extract_files(self, paths: list[str], max_pixels: int = 40_000_000,
                      names: list[str | None] | None = None) -> Iterator[PersonBatch]:
        """One batch per ``batch_size`` files: ``skipped`` where ``names`` has no annotation, ``no_person`` where
        it has no visible keypoint."""
        index = AnnotationIndex(self.paths, self.dataset)
        names = names if names is not None else [None] * len(paths)
        decoded = decoded_files(paths, max_pixels, self.read_threads, window=2 * self.batch_size)
        for start in range(0, len(paths), self.batch_size):
            batch = PersonBatch.unfilled(min(self.batch_size, len(paths) - start))
            for i, name in enumerate(names[start:start + len(batch)]):
                d = next(decoded)
                batch.width[i], batch.height[i], batch.digest[i] = d.width, d.height, d.content_hash
                if not d.ok:
                    batch.status[i], batch.reason[i] = "unreadable", d.reason
                    continue
                xy = index.lookup(name, d.width)
                if xy is None:
                    batch.status[i], batch.reason[i] = "skipped", "not in the annotation CSV(s)"
                    continue
                box, batch.keypoints[i], batch.scores[i] = annotation_row(xy, d.width, d.height)
                batch.persons[i] = int(box is not None)
                if box is None:
                    batch.status[i], batch.reason[i] = "no_person", "annotation has no visible keypoint"
                else:
                    batch.boxes[i] = box
            yield batch

    def close(self) -> None:
        """Nothing to stop: the decoding threads end with each ``extract_files``."""
