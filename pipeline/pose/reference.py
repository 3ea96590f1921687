"""The reference pose backend: Ultralytics ``YOLO.predict`` with YOLO-pose weights.

Jocher, Qiu and Chaurasia, "Ultralytics YOLO11" (2024), https://docs.ultralytics.com. The model runs
offline (``YOLO_OFFLINE=1``); weights are the embedded ``yolo11n-pose.pt`` unless a path is given. This
backend defines the keypoints every faster path must agree with. Its files are decoded by ``pipeline.decode``
on threads, ahead of the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.pose import (
    Detections,
    PersonBatch,
    checked_rule,
    choose_person,
    decoded_files,
    default_model_path,
    full_width,
    person_batch,
    quiet_ultralytics,
    set_torch_threads,
    shape_groups,
)
from pipeline.pose.fast import letterbox_geometry
from pipeline.pose.threads import ThreadTuner, tuned_threads


def precision_options(half: bool) -> dict:
    """``predict`` keywords for fp16 or fp32: ``quantize`` since ultralytics 8.4, ``half`` before it."""
    quiet_ultralytics()
    from ultralytics.cfg import DEFAULT_CFG_DICT

    if "quantize" in DEFAULT_CFG_DICT:
        return {"quantize": 16 if half else None}
    return {"half": half}


class UltralyticsBackend:
    """``YOLO.predict`` in batches of one image shape; torch's threads are set before every call (ultralytics sets
    them to the cores less one at its first prediction on the CPU) and ``torch_threads`` restored after, since a
    worker shares them. On the CPU a ``ThreadTuner`` picks each call's threads, ``torch_threads`` or half of them.
    A file's person is chosen by the ``person`` rule (``choose_person``)."""

    name = "ultralytics"
    origin = "yolo"

    def __init__(self, model: str | os.PathLike | None = None, imgsz: int = 256, conf: float = 0.25,
                 device: str = "auto", batch_size: int = 32, half: bool | None = None, kpt_threshold: float = 0.5,
                 read_threads: int = 4, torch_threads: int | None = None, person: str = "largest"):
        quiet_ultralytics()
        from ultralytics import YOLO

        self.model_path = Path(model) if model else default_model_path()
        if not self.model_path.is_file():
            raise PipelineError(f"{self.model_path}: pose model weights not found (--model)")
        # ultralytics' own loader unpickles the file as it is; the weights-only loader (ultralytics' classes
        # allowed, nothing else) reads it first, so a file that would run other code is refused before
        try:
            from ultralytics.nn.tasks import torch_safe_load

            torch_safe_load(str(self.model_path), safe_only=True)
        except Exception as exc:  # noqa: BLE001 - ultralytics raises many types for a bad or unsafe file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineError(f"{self.model_path}: cannot load as YOLO-pose weights with weights-only loading "
                                f"({reason})") from None
        try:
            self.model = YOLO(str(self.model_path), task="pose")
        except Exception as exc:  # ultralytics raises many types for a bad file
            raise PipelineError(f"{self.model_path}: cannot load as YOLO-pose weights ({exc})") from exc
        if getattr(self.model, "task", "pose") != "pose":
            raise PipelineError(f"{self.model_path}: a YOLO {self.model.task} model, not a pose model")
        self.imgsz = imgsz
        self.conf = conf
        self.device = str(resolve_device(device))
        self.half = self.device.startswith("cuda") if half is None else half
        self.batch_size = batch_size
        self.kpt_threshold, self.read_threads, self.torch_threads = kpt_threshold, read_threads, torch_threads
        self.person = checked_rule(person)
        # on the CPU the network's threads follow the load (ThreadTuner): all of the worker's cores while that is
        # fastest, half of them while other processes take cores
        self.tuner = ThreadTuner(torch_threads) if self.device == "cpu" and torch_threads else None

    def warm_up(self, size: tuple[int, int] = (256, 176)) -> None:
        """One prediction on a blank ``size`` (height, width) image: the predictor is set up and the device's first
        calls are made before the first partition (``FastBackend.warm_up``)."""
        self.predict([np.full((*size, 3), 114, np.uint8)])

    def look_ahead(self, paths: list[str]) -> None:
        """Nothing to prepare per file."""

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        # ultralytics letterboxes a batch of equal shapes with minimal padding, like a single image, but pads a
        # mixed batch to a square, which moves keypoints by pixels; batching per shape keeps every image's
        # result independent of its batch neighbours (and of the partitioning).
        out: list[Detections | None] = [None] * len(images)
        for indices in shape_groups(enumerate(images)):
            box = letterbox_geometry(*images[indices[0]].shape[:2], self.imgsz)
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                with tuned_threads(self.tuner, len(chunk) * box.out_h * box.out_w, self.torch_threads):
                    results = self.model.predict([images[i] for i in chunk], imgsz=self.imgsz, conf=self.conf,
                                                 device=self.device, verbose=False, batch=len(chunk),
                                                 **precision_options(self.half))
                for i, r in zip(chunk, results, strict=True):
                    out[i] = detections_of(r)
        set_torch_threads(self.torch_threads)
        return out

    def extract_files(self, paths: list[str], max_pixels: int = 40_000_000,
                      names: list[str | None] | None = None) -> Iterator[PersonBatch]:
        """The files decoded ahead on ``read_threads`` threads; one ``predict`` per ``batch_size`` readable images,
        each yielding a batch of the files read since the previous one (``KeypointSource``)."""
        files, images = [], []  # the decodes of this batch, and (position, image, scale) of the readable ones
        for decoded in decoded_files(paths, max_pixels, self.read_threads, window=2 * self.batch_size):
            if decoded.ok:
                images.append((len(files), decoded.image, decoded.scale))
            files.append(decoded)
            if len(images) >= self.batch_size:
                yield self._persons(files, images)
                files, images = [], []
        if files:
            yield self._persons(files, images)

    def _persons(self, files: list, images: list[tuple[int, np.ndarray, float]]) -> PersonBatch:
        n = len(files)
        persons = np.zeros(n, np.int64)
        boxes = np.full((n, 5), np.nan, np.float32)
        keypoints, scores = np.zeros((n, 17, 2), np.float32), np.zeros((n, 17), np.float32)
        detections = self.predict([image for _, image, _ in images]) if images else []
        for (i, image, scale), det in zip(images, detections, strict=True):
            det = det.scaled(scale)
            persons[i] = len(det)
            chosen = choose_person(det.boxes, self.person, full_width(image.shape[1], scale))
            if chosen >= 0:
                boxes[i], keypoints[i], scores[i] = det.boxes[chosen], det.keypoints[chosen], det.scores[chosen]
        return person_batch([d.status for d in files], [d.reason for d in files], [d.width for d in files],
                            [d.height for d in files], [d.content_hash for d in files], persons, boxes, keypoints,
                            scores, self.kpt_threshold)

    def close(self) -> None:
        """Nothing to stop: the decoding threads end with each ``extract_files``."""


def detections_of(result) -> Detections:
    """An ultralytics ``Results`` of a pose model as ``Detections``."""
    if result.boxes is None or len(result.boxes) == 0 or result.keypoints is None:
        return Detections.empty()
    boxes = np.concatenate([result.boxes.xyxy.cpu().numpy(), result.boxes.conf.cpu().numpy()[:, None]], axis=1)
    kp = result.keypoints.data.cpu().numpy()
    return Detections(boxes.astype(np.float32), kp[..., :2].astype(np.float32), kp[..., 2].astype(np.float32))
