"""``pgpig generate``: one image of the source person in a target pose, from a trained run folder.

``generate(run_dir, source, target)`` loads the run's generator (``config.yaml`` + ``generator.safetensors``),
turns the source image and both poses into exactly the tensors training saw (the shard writer's resize and
keypoint scaling, then the recipe crop), runs the generator once (eval mode, no gradients) and writes the result as
a PNG. Keypoints of an image come from the pipeline's extractor with its defaults; a pose may also be given as a
keypoints JSON file. The preprocessing step by step and the JSON format: ``docs/generate.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from pgpig.config import DEFAULT_DEVICE, SAMPLING_FIELDS, TrainConfig, load_config
from pgpig.data import crop_width, to_tensor
from pgpig.errors import TrainError
from pgpig.models.objective import generated_image
from pgpig.samples import label_columns, pose_image, sample_grid, save_png
from pgpig.train import build_generator, pose_maps
from pipeline.decode import Decoded, decode_image
from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from schemas.keypoints import MISSING, NUM_KEYPOINTS

__all__ = ["GeneratorRun", "PoseDetector", "generate", "load_generator", "read_pose_json"]


@dataclass
class GeneratorRun:
    """A trained generator ready to run, with what its inputs must look like."""

    generator: torch.nn.Module
    config: TrainConfig
    size: tuple[int, int]
    """``(H, W)`` the generator was trained at: its input and output size (after ``crop_margin``)."""
    step: int
    device: torch.device

    @property
    def stored_size(self) -> tuple[int, int]:
        """``(H, W)`` of the shard images before the crop: what an input image is stretched to."""
        return self.size[0], self.size[1] + 2 * self.config.crop_margin

    def pose_maps(self, keypoints: torch.Tensor) -> torch.Tensor:
        """``(B, 18, 2)`` keypoints in the trained (cropped) frame → the pose maps this generator was trained on."""
        return pose_maps(self.config, keypoints, self.size, self.device)

    @torch.no_grad()
    def __call__(self, source: torch.Tensor, source_kp: torch.Tensor, target_kp: torch.Tensor) -> torch.Tensor:
        """Generated images ``(B, 3, H, W)`` in [-1, 1] for a batch prepared as training prepares it."""
        return generated_image(self.generator(source.to(self.device), self.pose_maps(source_kp),
                                              self.pose_maps(target_kp)))


def load_generator(run_dir: str | Path, device: str = DEFAULT_DEVICE,
                   sampling: dict[str, Any] | None = None) -> GeneratorRun:
    """The generator of a run folder in eval mode on ``device``; ``TrainError`` for a folder that is not a run.
    ``sampling``: a diffusion run's sampler settings (``SAMPLING_FIELDS``) over those in its config."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainError(f"{run_dir}: run folder not found")
    config_path, weights_path = run_dir / "config.yaml", run_dir / "generator.safetensors"
    if not config_path.is_file():
        raise TrainError(f"{run_dir}: no config.yaml, not a run folder written by `pgpig train`")
    if not weights_path.is_file():
        raise TrainError(f"{run_dir}: no generator.safetensors; the run has not written a checkpoint yet")
    unknown = sorted(set(sampling or {}) - set(SAMPLING_FIELDS))
    if unknown:
        raise TrainError(f"--sampling {unknown[0]}: not a sampler setting; choose from {', '.join(SAMPLING_FIELDS)}")
    cfg = load_config(config_path, sampling)
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            meta = f.metadata() or {}
        missing = [k for k in ("step", "height", "width") if k not in meta]
        if missing:
            raise TrainError(f"{weights_path}: metadata lacks {', '.join(missing)}; not a checkpoint of "
                             "`pgpig train`")
        step, size = int(meta["step"]), (int(meta["height"]), int(meta["width"]))
        weights = load_file(str(weights_path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise TrainError(f"{weights_path}: cannot read ({exc}); the file is damaged") from None
    if min(size) < 1:
        raise TrainError(f"{weights_path}: metadata says the images are {size[0]}x{size[1]}")
    dev = resolve_device(device)
    generator = build_generator(cfg, size)
    try:
        generator.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise TrainError(f"{weights_path} does not fit the {cfg.model} generator of {config_path} ({first})") \
            from None
    generator.to(dev).eval()
    return GeneratorRun(generator, cfg, size, step, dev)


# ---------------------------------------------------------------------------------------------------- poses


def read_pose_json(path: str | Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    """A keypoints JSON file (format in ``docs/generate.md``) → ``(xy (18, 2) float32, image_size or None)``.

    Invisible joints are ``(-1, -1)``. ``TrainError`` naming the file for anything malformed.
    """
    path = Path(path)

    def bad(reason: str) -> TrainError:
        return TrainError(f"{path}: {reason}; expected {{\"keypoints\": [[x, y], ...{NUM_KEYPOINTS} entries, null "
                          "for invisible], \"image_size\": [H, W]}} or a bare list of the entries")

    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise TrainError(f"{path}: cannot read the keypoints file ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not JSON ({str(exc).splitlines()[0]})") from None
    image_size = None
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"keypoints", "image_size"})
        if unknown:
            raise bad(f"unknown keys {', '.join(unknown)}")
        if "keypoints" not in data:
            raise bad("no \"keypoints\" key")
        if data.get("image_size") is not None:
            image_size = data["image_size"]
            if (not isinstance(image_size, list) or len(image_size) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)):
                raise bad(f"image_size must be [height, width], two positive integers, got {image_size!r}")
            image_size = (image_size[0], image_size[1])
        data = data["keypoints"]
    if not isinstance(data, list):
        raise bad(f"keypoints must be a list, got {type(data).__name__}")
    if len(data) != NUM_KEYPOINTS:
        raise bad(f"{len(data)} keypoints, not {NUM_KEYPOINTS}")
    xy = np.full((NUM_KEYPOINTS, 2), MISSING, np.float32)
    for j, point in enumerate(data):
        if point is None:
            continue
        if (not isinstance(point, list) or len(point) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in point)):
            raise bad(f"keypoint {j} is {json.dumps(point)}, not [x, y] with two finite numbers or null")
        xy[j] = point
    if not (xy != MISSING).any(axis=1).any():
        raise bad("no visible keypoint")
    return xy, image_size


class PoseDetector:
    """The extractor's keypoints for images (``ExtractConfig`` defaults: its default backend's ``predict``, then
    ``to_openpose``); the YOLO model loads on first use only. ``pgpig generate`` asks for one image, ``pgpig eval``
    for batches."""

    def __init__(self, device: torch.device, model: str | Path | None = None, batch_size: int = 1):
        from pipeline.extract import ExtractConfig

        defaults = ExtractConfig(raw=Path("."))
        self.backend = defaults.backend
        self.options = {"model": model, "imgsz": defaults.imgsz, "conf": defaults.conf,
                        "device": "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}",
                        "batch_size": batch_size}
        self.threshold = defaults.kpt_threshold
        self._seen: dict[tuple, tuple[np.ndarray, bool]] = {}  # (shape, blake2b of the bytes) -> batch()'s row
        self.model_images = 0

    def _detect(self, images: list[np.ndarray]) -> list:
        from pipeline.pose import cached_backend

        try:
            return cached_backend(self.backend, **self.options).predict(images)
        except PipelineError as exc:
            raise TrainError(f"pose model: {exc}") from None

    def batch(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(keypoints (N, 18, 2), detected (N,) bool)`` of the dominant person of each BGR image.

        An image seen before (same shape and bytes) is not detected again: ``pgpig eval``'s copy-source baseline
        shows each test source in every pair it starts. ``model_images`` counts the images the model ran on."""
        from pipeline.pose import to_openpose

        keys = [(im.shape, hashlib.blake2b(np.ascontiguousarray(im).data, digest_size=16).digest()) for im in images]
        todo = {k: i for i, k in enumerate(keys) if k not in self._seen}
        if todo:
            for key, det in zip(todo, self._detect([images[i] for i in todo.values()]), strict=True):
                chosen, _, xy, _ = to_openpose(det, self.threshold)
                self._seen[key] = (xy, chosen >= 0)
            self.model_images += len(todo)
        out = np.stack([self._seen[k][0] for k in keys]) if keys else \
            np.full((0, NUM_KEYPOINTS, 2), MISSING, np.float32)
        return out, np.array([self._seen[k][1] for k in keys], bool)

    def __call__(self, image: np.ndarray, scale: float, path: Path) -> np.ndarray:
        """OpenPose-18 ``(18, 2)`` of the dominant person of a decoded image, in full-resolution pixels."""
        from pipeline.pose import to_openpose

        chosen, _, xy, _ = to_openpose(self._detect([image])[0].scaled(scale), self.threshold)
        if chosen < 0:
            raise TrainError(f"{path}: no person detected; use an image with one person in view, or give the "
                             "keypoints as a JSON file")
        if not (xy != MISSING).any():
            raise TrainError(f"{path}: a person was found but no keypoint reaches the threshold "
                             f"{self.threshold}; give the keypoints as a JSON file")
        return xy


def _read_image(path: Path) -> Decoded:
    decoded = decode_image(path)
    if not decoded.ok:
        raise TrainError(f"{path}: {decoded.reason}")
    return decoded


def _prepare(bgr: np.ndarray | None, xy: np.ndarray, frame: tuple[int, int],
             run: GeneratorRun) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A BGR image and its keypoints in ``frame`` = ``(H, W)`` → the training tensors ``(1, 3, H, W)``, ``(1, 18, 2)``.

    ``bgr`` is ``None`` for a pose without an image: only the keypoints are prepared (the image comes back ``None``).
    """
    from pipeline.shards import resize_image, scale_keypoints

    stored = run.stored_size
    kp = torch.from_numpy(scale_keypoints(xy, frame, stored))[None]
    image = torch.zeros(1, 3, *stored)  # stands in for a pose without an image, so the crop is the same call
    if bgr is not None:
        image = to_tensor(resize_image(bgr, stored)[..., ::-1])[None]
    image, kp = crop_width(image, kp, run.config.crop_margin)
    return (image if bgr is not None else None), kp


# ---------------------------------------------------------------------------------------------------- generate


def default_out(run_dir: str | Path, source: str | Path, target: str | Path) -> Path:
    """``<run>/generated/<source stem>_to_<target stem>.png``."""
    return Path(run_dir) / "generated" / f"{Path(source).stem}_to_{Path(target).stem}.png"


def generate(run_dir: str | Path, source: str | Path, target_pose: str | Path, *, source_pose: str | Path | None = None,
             out: str | Path | None = None, grid: bool = False, device: str = DEFAULT_DEVICE,
             pose_model: str | Path | None = None, sampling: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate the source person in the target pose with a run's generator and write it as a PNG.

    Args:
        run_dir: a run folder of ``pgpig train`` (``config.yaml``, ``generator.safetensors``).
        source: the source image (any format ``pipeline.decode`` reads).
        target_pose: a keypoints ``.json`` file (``docs/generate.md``) or an image whose person's pose is taken.
        source_pose: keypoints JSON of the source (in the source image's pixels unless ``image_size``); default:
            detected by the extractor.
        out: output PNG; default ``<run>/generated/<source stem>_to_<target stem>.png``.
        grid: also write ``<out stem>-grid.png``: source | target pose | generated (| target image), under a
            header naming the columns.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (the generator and the pose model).
        pose_model: YOLO-pose weights for detection; default the embedded YOLO11n-pose.
        sampling: a diffusion run's sampler settings over its config's (``pgpig.config.SAMPLING_FIELDS``).

    Returns:
        ``{"out": Path, "grid": Path | None, "size": (H, W), "step": int}``.
    """
    source, target_pose = Path(source), Path(target_pose)
    run = load_generator(run_dir, device, sampling)
    detect = PoseDetector(run.device, pose_model)

    decoded = _read_image(source)
    frame = (decoded.height, decoded.width)
    if source_pose is not None:
        source_xy, given = read_pose_json(source_pose)
        frame = given or frame
    else:
        source_xy = detect(decoded.image, decoded.scale, source)
    source_image, source_kp = _prepare(decoded.image, source_xy, frame, run)

    target_image = None
    if target_pose.suffix.lower() == ".json":
        target_xy, frame = read_pose_json(target_pose)
        _, target_kp = _prepare(None, target_xy, frame or run.stored_size, run)
    else:
        target = _read_image(target_pose)
        target_xy = detect(target.image, target.scale, target_pose)
        target_image, target_kp = _prepare(target.image, target_xy, (target.height, target.width), run)

    generated = run(source_image, source_kp, target_kp)
    target_maps = run.pose_maps(target_kp)

    out = Path(out) if out is not None else default_out(run_dir, source, target_pose)
    save_png(out, sample_grid([generated]))
    grid_path = None
    if grid:
        columns = [source_image, pose_image(target_maps), generated]
        labels = ["source", "target pose", "generated"]
        if target_image is not None:
            columns.append(target_image)
            labels.append("target")
        grid_path = out.with_name(f"{out.stem}-grid.png")
        save_png(grid_path, label_columns(sample_grid(columns), labels))
    return {"out": out, "grid": grid_path, "size": run.size, "step": run.step}
