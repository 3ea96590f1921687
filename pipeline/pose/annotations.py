"""Keypoints from PATN annotation CSVs instead of a model: the papers' published annotations and the
mannequin set's exact ones enter the pipeline this way (``pgpig-data extract --annotations CSV``).

Names are matched through each image's PATN flat name. DeepFashion CSVs are in PATN's 256×176 crop
frame, so visible x move back by the crop margin (40 px at width 256, ``deepfashion_margin``); Market-1501
and folder CSVs are in the raw frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from schemas.keypoints import MISSING, visible_mask
from schemas.patn import deepfashion_margin, from_patn_frame, read_annotations


class AnnotationIndex:
    """All keypoints of one or more PATN annotation CSVs, by flat name."""

    def __init__(self, paths: list[str | os.PathLike] | tuple, dataset: str):
        self.paths = [Path(p) for p in paths]
        self.dataset = dataset
        self.rows: dict[str, np.ndarray] = {}
        for path in self.paths:
            ann = read_annotations(path)
            for name, xy in zip(ann.names, ann.keypoints, strict=True):
                if name in self.rows:
                    raise PipelineError(f"{path}: {name!r} is annotated in more than one CSV")
                self.rows[name] = xy

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
