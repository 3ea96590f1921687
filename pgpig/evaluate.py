"""``pgpig eval``: every test pair generated, scored with the papers' metrics, written as ``eval.json`` and a table.

``evaluate(cfg)`` has two modes. With a run folder (``--run``) it generates every pair of ``shards/<split>`` with
the run's generator into ``RUN/eval/<split>/images/`` (batched, on the GPU when there is one; images already
written are kept, so a killed evaluation resumes), then scores those files. With ``--generated DIR`` it scores
images produced elsewhere, e.g. by an official implementation, matched to the pairs by name (PATN's
``test.py`` and ``util/visualizer.py`` names, GFLA's ``model/pose_model.py`` ``save_results`` names).
``compare(paths)`` puts the results of several runs in one table. The metrics are ``pgpig.metrics``; the
protocol (file names, framing, baseline, SSIM settings, FID reference, PCKh) is described in ``docs/eval.md``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pgpig.config import SAMPLING_RECORD_NAMES, EvalConfig
from pgpig.errors import TrainError
from pgpig.generate import PoseDetector, load_generator
from pgpig.metrics import (
    FID_NETWORKS,
    PCKH_PROTOCOLS,
    SSIM_SETTINGS,
    FeatureExtractor,
    FeatureStats,
    PCKhCounts,
    WeightsUnavailable,
    fid_extractor,
    frechet_distance,
    l1_distance,
    lpips_network,
    patn_keypoints,
    pckh_counts,
    pose_mask,
    ssim,
)
from pipeline.errors import PipelineError
from schemas.files import atomic_write, safe_join
from schemas.keypoints import MISSING

__all__ = ["ALL_METRICS", "PCKhResult", "PCKhScorer", "PERCEPTUAL_FRAMES", "TARGET_SOURCES", "check_frame",
           "check_panels", "compare", "evaluate", "pair_file_name", "patn_crop", "read_names", "stored_frame"]

ALL_METRICS: tuple[str, ...] = ("ssim", "mask_ssim", "l1", "lpips", "mask_lpips", "fid", "pckh")
"""Metric names for ``--metrics``; ``ssim`` brings all three SSIM settings, ``pckh`` the detection rate."""

TARGET_SOURCES: dict[str, str] = {
    "shards": "the stored targets of the shard set",
    "panel": "the target slice of each PATN/XingGAN panel as read from the file, as their getMetrics scripts take it",
}
"""``--target-from`` values and what each pair's target then is."""

PERCEPTUAL_FRAMES: dict[str, str] = {
    "padded": "the stored frame (a narrower image padded back with white columns)",
    "crop": "PATN's 176-wide crop of DeepFashion img/, unpadded (DPTN's metrics.py LPIPS and FID)",
}
"""``--perceptual-frame`` values: the frame LPIPS, mask-LPIPS and FID see."""

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_WHITE = 255


# ---------------------------------------------------------------------------------------------------- names


def read_names(shards) -> list[str]:
    """The flat name of every stored image of a ``ShardSet``, by global index: ``patn_name``, else the raw path
    with ``/`` turned into ``_``."""
    import pyarrow.parquet as pq

    names: list[str | None] = [None] * len(shards)
    for entry in (e for e in shards.manifest.files if e.kind == "images"):
        path = safe_join(shards.folder, entry.path, "manifest file")
        if shards.manifest.format == "parquet":
            table = pq.read_table(path, columns=["index", "image", "patn_name"]).to_pydict()
            rows = zip(table["index"], table["image"], table["patn_name"], strict=True)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                rows = list(zip(f["index"][:].tolist(), f["image"].asstr()[:], f["patn_name"].asstr()[:],
                                strict=True))
        for index, image, patn in rows:
            names[int(index)] = patn or image.replace("/", "_")
    missing = [i for i, n in enumerate(names) if n is None]
    if missing:
        raise TrainError(f"{shards.folder}: image index {missing[0]} has no row in the image files; re-run "
                         "`pgpig-data pair`")
    return names  # type: ignore[return-value]


def pair_file_name(source: str, target: str) -> str:
    """Our file name of a generated pair: PATN's ``<source>___<target>_vis`` with ``.png``."""
    return f"{source}___{target}_vis.png"


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _parse_generated_name(filename: str) -> tuple[str, str, str] | None:
    """``(kind, source key, target key)`` of a PATN (``___``) or GFLA (``_2_``) file name; ``None`` otherwise."""
    base = filename
    for suffix in _IMAGE_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    else:
        return None
    base = re.sub(r"_vis$", "", base)
    if "___" in base:
        source, target = base.split("___", 1)
        return "patn", source, target
    if "_2_" in base:
        source, target = base.split("_2_", 1)
        return "gfla", source, target
    return None


def index_generated(folder: Path, pairs: list[tuple[str, str]]) -> tuple[list[Path | None], list[str]]:
    """Match the image files of ``folder`` to ``pairs`` (flat names); ``(path or None per pair, unmatched files)``."""
    if not folder.is_dir():
        raise TrainError(f"{folder}: generated-images folder not found")
    by_key: dict[tuple[str, str], Path] = {}
    unmatched: list[str] = []
    for path in sorted(folder.iterdir()):
        parsed = _parse_generated_name(path.name) if path.is_file() else None
        if parsed is None:
            if path.is_file() and not path.name.startswith("."):
                unmatched.append(path.name)
            continue
        kind, source, target = parsed
        key = (source, target) if kind == "patn" else (_stem(source), _stem(target))
        by_key.setdefault((kind, *key), path)
    found: list[Path | None] = []
    used: set[Path] = set()
    for source, target in pairs:
        path = by_key.get(("patn", source, target)) or by_key.get(("gfla", _stem(source), _stem(target)))
        found.append(path)
        if path is not None:
            used.add(path)
    unmatched += sorted(p.name for p in by_key.values() if p not in used)
    return found, unmatched


# ---------------------------------------------------------------------------------------------------- framing


def _frame(image: np.ndarray, stored_w: int) -> tuple[np.ndarray | None, int | str]:
    """A generated RGB image → ``(image padded to the stored width, margin)`` or ``(None, reason)``."""
    h, w = image.shape[:2]

    def margin_of(width: int) -> int | None:
        gap = stored_w - width
        return gap // 2 if width >= 1 and gap >= 0 and gap % 2 == 0 else None

    part = _panel_part_width(w, stored_w)
    if part is not None:  # PATN's five-image panel: the last one
        image, w = image[:, 4 * part:], part
    m = margin_of(w)
    if m is None:
        return None, f"{w} px wide; expected the stored width {stored_w}, that width less an even margin, or a " \
                     "PATN five-image panel"
    return _pad(image, m), m


def _panel_part_width(w: int, stored_w: int) -> int | None:
    """The width of one image of a PATN/XingGAN five-image panel ``w`` px wide (source | source pose | target |
    target pose | generated), ``None`` when ``w`` is the width of a single image (the test of ``_frame``)."""

    def single(width: int) -> bool:
        return 1 <= width <= stored_w and (stored_w - width) % 2 == 0

    return w // 5 if not single(w) and w % 5 == 0 and single(w // 5) else None


def _pad(image: np.ndarray, m: int) -> np.ndarray:
    if m == 0:
        return image
    return np.pad(image, ((0, 0), (m, m), (0, 0)), constant_values=_WHITE)


def _reframe(image: np.ndarray, m: int) -> np.ndarray:
    """A stored image cut to the framing of margin ``m`` and padded back with white."""
    if m == 0:
        return image
    return _pad(image[:, m:image.shape[1] - m], m)


def _reframe_keypoints(kp: np.ndarray, m: int, stored_w: int) -> np.ndarray:
    """Stored-frame keypoints with those outside the framing of margin ``m`` made invisible."""
    kp = np.array(kp, np.float32)
    outside = (kp[:, 0] < m) | (kp[:, 0] > stored_w - 1 - m)
    kp[outside & ~(kp == MISSING).all(axis=1)] = MISSING
    return kp


class _ScoreItems(Dataset):
    """Pair ``k`` → uint8 RGB generated, target and source images in the stored frame, or the reason it cannot.

    With ``target_from="panel"`` the target and the source are the panel's own slices (JPEG-decoded like the
    generated one), so the copy-source baseline is scored the same way; the target keypoints stay the stored ones.
    """

    def __init__(self, shards, pairs: np.ndarray, files: list[Path | None], names: list[str],
                 target_from: str = "shards"):
        self.shards, self.pairs, self.files, self.names = shards, pairs, files, names
        self.target_from = target_from

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict[str, Any]:
        from pipeline.decode import decode_image

        source_i, target_i = (int(i) for i in self.pairs[k])
        item: dict[str, Any] = {"k": k, "error": None}
        path = self.files[k]
        if path is None:
            item["error"] = f"no generated image for {self.names[source_i]} -> {self.names[target_i]}"
            return item
        decoded = decode_image(path)
        if not decoded.ok:
            item["error"] = f"{path}: {decoded.reason}"
            return item
        h, w = self.shards.size
        rgb = np.ascontiguousarray(decoded.image[..., ::-1])
        if rgb.shape[0] != h:
            item["error"] = f"{path}: {rgb.shape[0]}x{rgb.shape[1]}, expected {h} px high"
            return item
        part = _panel_part_width(rgb.shape[1], w)
        if self.target_from == "panel" and part is None:
            item["error"] = f"{path}: {rgb.shape[1]} px wide, not a five-image panel: no target in it to score against"
            return item
        generated, m = _frame(rgb, w)
        if generated is None:
            item["error"] = f"{path}: {m}"
            return item
        target, source = self.shards[target_i], self.shards[source_i]
        if self.target_from == "panel":
            target_image = _pad(np.ascontiguousarray(rgb[:, 2 * part:3 * part]), m)
            source_image = _pad(np.ascontiguousarray(rgb[:, :part]), m)
        else:
            target_image, source_image = _reframe(target.image, m), _reframe(source.image, m)
        item.update(generated=generated, margin=m, target=target_image, source=source_image,
                    target_kp=_reframe_keypoints(target.keypoints, m, w))
        return item


def check_panels(generated: Path, sample: list[tuple[int, np.ndarray]], stored_w: int) -> None:
    """Raise ``TrainError`` (one line) when none of the ``sample`` images (``_first_images``) is a five-image
    panel: ``--target-from panel`` has no target to read there."""
    widths = [image.shape[1] for _, image in sample]
    if widths and all(_panel_part_width(w, stored_w) is None for w in widths):
        raise TrainError(f"{generated}: the folder has no PATN/XingGAN five-image panels (images {widths[0]} px "
                         f"wide, stored width {stored_w}), so --target-from panel has no target to read; use "
                         "--target-from shards")


def _first_images(files: list[Path | None]) -> list[tuple[int, np.ndarray]]:
    """``(pair index, RGB image)`` of the first ``_FRAME_SAMPLE`` matched generated files that decode: what the
    folder checks look at."""
    from pipeline.decode import decode_image

    sample: list[tuple[int, np.ndarray]] = []
    for k, path in enumerate(files):
        if path is None:
            continue
        decoded = decode_image(path)
        if decoded.ok:
            sample.append((k, np.ascontiguousarray(decoded.image[..., ::-1])))
            if len(sample) == _FRAME_SAMPLE:
                break
    return sample


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _to_batch(arrays: Iterable[np.ndarray], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack(list(arrays))).permute(0, 3, 1, 2).contiguous().to(device)


# ---------------------------------------------------------------------------------------------------- frames

_FRAME_SAMPLE = 16
"""Generated images read to decide a folder's frame."""
_MISFRAME_RATIO = 1.5
"""A folder is in the other DeepFashion frame when its images differ from the targets this many times more than
from the targets moved into that frame."""


@dataclass(frozen=True)
class StoredFrame:
    """How a shard set framed its images: the stored ``(height, width)`` and where they came from."""

    size: tuple[int, int]
    dataset: str | None
    source: str
    """``img`` (DeepFashion ``img/``: the person in the middle columns, white sides), ``img_highres`` (DeepFashion
    ``img_highres/`` stretched to the size, the person filling the width) or ``other`` (Market-1501, folders)."""

    def describe(self) -> str:
        h, w = self.size
        if self.source == "img":
            return f"{h}x{w} from DeepFashion img/ (PATN/XingGAN/PG2 frame)"
        if self.source == "img_highres":
            return f"{h}x{w} from DeepFashion img_highres/ stretched (GFLA/DPTN frame)"
        return f"{h}x{w} {'Market-1501' if self.dataset == 'market1501' else 'images'}"


def stored_frame(shards) -> StoredFrame:
    """The ``StoredFrame`` of a ``ShardSet``: its manifest's size and, for DeepFashion, the raw folder of its images."""
    import pyarrow.parquet as pq

    size, dataset = tuple(int(v) for v in shards.manifest.size), shards.manifest.dataset
    if dataset != "deepfashion":
        return StoredFrame(size, dataset, "other")
    entry = next(e for e in shards.manifest.files if e.kind == "images")
    path = safe_join(shards.folder, entry.path, "manifest file")
    if shards.manifest.format == "parquet":
        first = pq.read_table(path, columns=["image"]).column("image")[0].as_py()
    else:
        import h5py

        with h5py.File(path, "r") as f:
            first = f["image"].asstr()[0]
    return StoredFrame(size, dataset, "img_highres" if first.split("/", 1)[0] == "img_highres" else "img")


def _last_image(image: np.ndarray, stored_w: int) -> np.ndarray:
    """A generated image, or the generated (last) image of a five-image panel."""
    part = _panel_part_width(image.shape[1], stored_w)
    return image if part is None else np.ascontiguousarray(image[:, 4 * part:])


def _fits(size: tuple[int, int], frame: StoredFrame) -> bool:
    """Whether generated images of ``size`` can be scored in ``frame`` (see ``_frame``)."""
    (h, w), (stored_h, stored_w) = size, frame.size
    if h != stored_h:
        return False
    if frame.source == "img_highres":  # the person fills the width: no narrower crop of it exists
        return w == stored_w
    return 0 < w <= stored_w and (stored_w - w) % 2 == 0


def _other_frame(image: np.ndarray, frame: StoredFrame) -> np.ndarray:
    """A stored image moved into the other DeepFashion frame at the same size: from ``img`` the middle columns
    stretched to the full width (GFLA/DPTN), from ``img_highres`` the width squeezed into the middle columns."""
    from pipeline.shards import resize_image
    from schemas.patn import deepfashion_margin

    h, w = image.shape[:2]
    m = deepfashion_margin(w)
    if frame.source == "img":
        return resize_image(np.ascontiguousarray(image[:, m:w - m]), (h, w))
    return _pad(resize_image(image, (h, w - 2 * m)), m)


def _coarse(image: np.ndarray) -> np.ndarray:
    """Grey 32x32 thumbnail: where the person is, not the texture."""
    from pipeline.shards import resize_image

    return resize_image(image, (32, 32)).astype(np.float32).mean(axis=2)


def _shard_recipe(frame: StoredFrame, size: tuple[int, int], split: str, source: str) -> str:
    """The commands that build a shard set of ``size`` whose images come from ``source`` (a ``StoredFrame`` source);
    a new extraction only when ``source`` is another DeepFashion folder than the shard set's."""
    h, w = size
    if source == frame.source or source == "other":
        return f"`pgpig-data pair --split {split} --size {h}x{w} --out NEW_SHARDS`"
    tag = "highres" if source == "img_highres" else "img"
    flag = " --highres" if source == "img_highres" else ""
    return (f"`pgpig-data extract RAW{flag} --out keypoints-{tag} --run-file extract-{tag}.json` then "
            f"`pgpig-data pair --split {split} --keypoints keypoints-{tag} --run-file extract-{tag}.json "
            f"--out shards-{tag} --size {h}x{w}`")


def check_frame(generated: Path, sample: list[tuple[int, np.ndarray]], shards, pairs: np.ndarray,
                split: str) -> None:
    """Raise ``TrainError`` (one line: the folder's frame, the shard set's, the shard set to build) when the
    generated images are in another frame than the stored targets.

    ``sample``: ``_first_images``, a panel counting as its last image. Their most common size must fit the stored
    frame (``_fits``);
    on a DeepFashion shard set, full-width images must also look more like the targets than like the targets moved
    into the other DeepFashion frame (``_other_frame``): the two frames have the same size, only the content tells.
    """
    frame = stored_frame(shards)
    stored_h, stored_w = frame.size
    sample = [(k, _last_image(image, stored_w)) for k, image in sample]
    if not sample:
        return
    sizes = [image.shape[:2] for _, image in sample]
    size = max(set(sizes), key=sizes.count)
    deepfashion = frame.source != "other"
    where = f"{shards.folder} stores {frame.describe()}"
    if not _fits(size, frame):
        h, w = size
        source, build, note = frame.source, size, ""
        if deepfashion and h != w:
            source, build, note = "img", (h, h), " (a crop of DeepFashion img/: PATN/XingGAN's frame)"
        elif frame.dataset == "market1501":
            note = " (Market-1501 is 128x64 in PATN, XingGAN, GFLA and DPTN: are these another data set's images?)"
        raise TrainError(f"{generated}: generated images are {h}x{w}{note}, but {where}; build matching shards "
                         f"with {_shard_recipe(frame, build, split, source)} and pass --shards to them")
    if not deepfashion or size[1] != stored_w:
        return
    stored_err = other_err = 0.0
    n = 0
    for k, image in sample:
        if image.shape[:2] != (stored_h, stored_w):
            continue
        n += 1
        target = shards[int(pairs[k][1])].image
        thumb = _coarse(image)
        stored_err += float(np.abs(thumb - _coarse(target)).mean())
        other_err += float(np.abs(thumb - _coarse(_other_frame(target, frame))).mean())
    if stored_err > _MISFRAME_RATIO * other_err:
        other = StoredFrame(frame.size, frame.dataset, "img" if frame.source == "img_highres" else "img_highres")
        raise TrainError(f"{generated}: generated images are {other.describe()} (mean grey difference "
                         f"{stored_err / n:.1f} to the targets, {other_err / n:.1f} to the targets in that frame), "
                         f"but {where}; build matching shards with "
                         f"{_shard_recipe(frame, frame.size, split, other.source)} and pass --shards to them")


# ---------------------------------------------------------------------------------------------------- PCKh


def patn_crop(frame: StoredFrame) -> int:
    """Columns PATN's frame cuts from each side of a stored image: PATN detected keypoints on the 176-wide middle
    of DeepFashion ``img/`` images (``tool/crop_fashion.py``, then ``tool/compute_coordinates.py``); 0 otherwise."""
    from schemas.patn import deepfashion_margin

    return deepfashion_margin(frame.size[1]) if frame.source == "img" else 0


def _perceptual_crop(cfg: EvalConfig, frame: StoredFrame, folder: Path) -> int:
    """Columns cut from each side of both images before LPIPS, mask-LPIPS and FID: 0 (``--perceptual-frame
    padded``), or PATN's crop of a DeepFashion ``img/`` shard set, which DPTN's ``metrics/metrics.py`` scores
    unpadded (``crop``)."""
    if cfg.perceptual_frame == "padded":
        return 0
    crop = patn_crop(frame)
    if crop == 0:
        raise TrainError(f"--perceptual-frame crop: {folder} is {frame.describe()}, which has no PATN crop (only "
                         "DeepFashion img/ shard sets have one); use --perceptual-frame padded")
    return crop


@dataclass
class PCKhResult:
    """PCKh of a batch under one protocol."""

    counts: PCKhCounts
    correct: np.ndarray
    """``(N, 18)`` bool: joints found within the threshold."""
    found: np.ndarray
    """``(N,)`` bool: a person was detected in the image."""
    valid: np.ndarray
    """``(N,)`` int: visible target joints."""


class PCKhScorer:
    """PCKh of batches of images against target keypoints under every protocol of ``PCKH_PROTOCOLS``.

    ``strict`` detects on the images as given (the stored frame) and compares float keypoints. ``patn`` detects on
    the images less ``crop`` columns on each side when ``crop`` > 0 (reusing the ``strict`` detections otherwise),
    moves the targets into that frame, and compares both rounded as PATN's CSVs store them (``patn_keypoints``).
    """

    def __init__(self, detector: PoseDetector, alpha: float = 0.5, crop: int = 0):
        self.detector, self.alpha, self.crop = detector, alpha, crop

    def score(self, images: list[np.ndarray], target_kp: np.ndarray) -> dict[str, PCKhResult]:
        """``images``: RGB uint8 ``(H, W, 3)`` of one width; ``target_kp``: ``(N, 18, 2)`` in their frame."""
        from schemas.patn import to_patn_frame

        bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images]
        predicted, found = self.detector.batch(bgr)
        out = {"strict": self._result(predicted, found, target_kp)}
        target = np.asarray(target_kp, np.float32)
        if self.crop:
            w = images[0].shape[1]
            predicted, found = self.detector.batch([np.ascontiguousarray(b[:, self.crop:w - self.crop])
                                                    for b in bgr])
            target = to_patn_frame(target, self.crop, width=w - 2 * self.crop)
        out["patn"] = self._result(patn_keypoints(predicted), found, patn_keypoints(target))
        return out

    def _result(self, predicted: np.ndarray, found: np.ndarray, target: np.ndarray) -> PCKhResult:
        counts, correct = pckh_counts(predicted, target, self.alpha)
        valid = (~(np.asarray(target) == MISSING).any(axis=-1)).sum(axis=1)
        return PCKhResult(counts, correct, np.asarray(found, bool), valid)


# ---------------------------------------------------------------------------------------------------- scoring


@dataclass
class _Row:
    """Running totals of one table row (the model, or the copy-source baseline)."""

    sums: dict[str, float] = field(default_factory=dict)
    n: int = 0
    pckh: dict[str, PCKhCounts] = field(default_factory=lambda: {p: PCKhCounts.zero() for p in PCKH_PROTOCOLS})
    detected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PCKH_PROTOCOLS, 0))
    features: FeatureStats = field(default_factory=FeatureStats)

    def add(self, name: str, values: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(values.double().sum())


def _networks(cfg: EvalConfig, wanted: tuple[str, ...], explicit: bool, device: torch.device,
              log: Callable[[str], None]) -> tuple[Any, FeatureExtractor | None, dict[str, str]]:
    """The LPIPS module and the FID extractor the wanted metrics need; ``skipped`` reasons for those unavailable."""
    skipped: dict[str, str] = {}
    lpips_module = extractor = None

    def unavailable(metrics: list[str], exc: WeightsUnavailable) -> None:
        if explicit:
            raise exc
        for name in metrics:
            skipped[name] = str(exc)
        log(f"skipping {', '.join(metrics)}: {exc}")

    needs_lpips = [m for m in ("lpips", "mask_lpips") if m in wanted]
    if needs_lpips:
        try:
            lpips_module = cfg.lpips if cfg.lpips is not None else lpips_network(cfg.lpips_net, cfg.weights_dir)
            lpips_module = lpips_module.to(device)
        except WeightsUnavailable as exc:
            unavailable(needs_lpips, exc)
    if "fid" in wanted:
        try:
            extractor = cfg.feature_extractor if cfg.feature_extractor is not None else \
                fid_extractor(cfg.fid_network, cfg.weights_dir)
            if isinstance(extractor, torch.nn.Module):
                extractor = extractor.to(device)
        except WeightsUnavailable as exc:
            unavailable(["fid"], exc)
    return lpips_module, extractor, skipped


def _score_batch(rows: dict[str, _Row], items: list[dict[str, Any]], cfg: EvalConfig, wanted: set[str],
                 device: torch.device, lpips_module, extractor, pckh: PCKhScorer | None,
                 records: list[dict[str, Any]], names: list[str], pairs: np.ndarray, perceptual_crop: int) -> None:
    target = _to_batch((it["target"] for it in items), device)
    size = tuple(target.shape[-2:])
    target_kp = torch.from_numpy(np.stack([it["target_kp"] for it in items]))
    mask = pose_mask(target_kp.to(device), size) if wanted & {"mask_ssim", "mask_lpips"} else None
    # LPIPS, mask-LPIPS and FID see these columns: all, or the unpadded crop (--perceptual-frame crop)
    cut = slice(perceptual_crop, size[1] - perceptual_crop)
    target_signed = target[..., cut].float() / 127.5 - 1
    for row_name, key in (("model", "generated"), ("copy-source", "source")):
        if row_name not in rows:
            continue
        row, images = rows[row_name], _to_batch((it[key] for it in items), device)
        values: dict[str, torch.Tensor] = {}
        if "ssim" in wanted:
            for setting in SSIM_SETTINGS:
                values[f"ssim_{setting}"] = ssim(images, target, setting)
            values["ssim"] = values[f"ssim_{cfg.ssim}"]
        if "mask_ssim" in wanted:
            values["mask_ssim"] = ssim(images * mask, target * mask, "patn")
        if "l1" in wanted:
            values["l1"] = l1_distance(images, target)
        signed = images[..., cut].float() / 127.5 - 1
        if lpips_module is not None:
            if "lpips" in wanted:
                values["lpips"] = lpips_module(signed, target_signed)
            if "mask_lpips" in wanted:
                values["mask_lpips"] = lpips_module(signed * mask[..., cut], target_signed * mask[..., cut])
        if extractor is not None:
            row.features.update(extractor(images[..., cut]))
        chosen = None
        if pckh is not None:
            for protocol, result in pckh.score([it[key] for it in items], target_kp.numpy()).items():
                row.pckh[protocol] = row.pckh[protocol] + result.counts
                row.detected[protocol] += int(result.found.sum())
                if protocol == cfg.pckh_protocol:
                    chosen = result
        for name, v in values.items():
            row.add(name, v)
        row.n += len(items)
        for i, it in enumerate(items):
            source_i, target_i = (int(x) for x in pairs[it["k"]])
            record: dict[str, Any] = {"row": row_name, "source": names[source_i], "target": names[target_i]}
            record.update({name: float(v[i]) for name, v in values.items() if name != "ssim"})
            if chosen is not None:
                record.update(detected=bool(chosen.found[i]), pckh_correct=int(chosen.correct[i].sum()),
                              pckh_valid=int(chosen.valid[i]))
            records.append(record)


def _fid_reference(cfg: EvalConfig, out: Path, margin: int, perceptual_crop: int, extractor: FeatureExtractor,
                   device: torch.device, log: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Mean and covariance of the reference images' features (cached in ``out/fid-reference.npz``), each image
    framed like the generated ones (``margin``), then cut by ``perceptual_crop`` columns on each side."""
    from pipeline.shards import ShardSet

    split = cfg.fid_reference
    folder = Path(cfg.shards) / split
    note = None
    if split == "train" and not (folder / "manifest.json").is_file():
        note = f"{folder} not found: FID against the {cfg.split} split's images instead"
        log(note)
        split, folder = cfg.split, Path(cfg.shards) / cfg.split
    try:
        reference = ShardSet(folder)
    except PipelineError as exc:
        raise TrainError(str(exc)) from None
    key_text = json.dumps([[e.path, e.sha256] for e in reference.manifest.files]
                          + [margin, perceptual_crop, extractor.name])
    key = hashlib.sha256(key_text.encode()).hexdigest()
    info = {"split": split, "folder": str(folder), "images": len(reference), "note": note}
    cache = out / "fid-reference.npz"
    if cache.is_file():
        with np.load(cache) as f:
            if str(f["key"]) == key:
                return f["mu"], f["sigma"], info
    stats = FeatureStats()
    indices = range(len(reference))
    bar = _bar(cfg, len(reference), "fid reference")
    cut = slice(perceptual_crop, reference.size[1] - perceptual_crop)
    for start in range(0, len(reference), cfg.batch_size):
        chunk = [reference[i].image for i in indices[start:start + cfg.batch_size]]
        stats.update(extractor(_to_batch((_reframe(im, margin)[:, cut] for im in chunk), device)))
        bar.update(len(chunk))
    bar.close()
    mu, sigma = stats.mean_cov()
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), mu=mu, sigma=sigma)
    with atomic_write(cache) as f:
        f.write(buffer.getvalue())
    return mu, sigma, info


def _bar(cfg: EvalConfig, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------------- generation


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _generate(cfg: EvalConfig, out: Path, files: list[Path], pair_indices: list[int],
              log: Callable[[str], None]) -> dict[str, Any]:
    """Write every missing generated image of the run; returns what the run was (model, step, size)."""
    import cv2

    from pgpig.data import PairDataset, make_loader
    run = load_generator(cfg.run_dir, cfg.device, cfg.sampling)
    weights = Path(cfg.run_dir) / "generator.safetensors"
    stamp = {"generator_sha256": _sha256(weights), "step": run.step, "size": list(run.size),
             "crop_margin": run.config.crop_margin}
    sampling = getattr(run.generator, "sampling", None)  # a diffusion model's sampler: part of what was generated
    if sampling is not None:
        stamp["sampling"] = sampling.as_dict()
    stamp_path = out / "generation.json"
    previous = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
    fresh = previous != stamp
    if fresh and previous is not None:
        log(f"{cfg.run_dir}: the generator changed since {out / 'images'} was written (step {previous.get('step')} "
            f"→ {run.step}); generating every image again")
    pending = [k for k in pair_indices if fresh or not files[k].is_file()]
    log(f"generate: {len(pair_indices) - len(pending)} of {len(pair_indices)} images already written, "
        f"{len(pending)} to do (step {run.step}, {run.device})")
    info = {"model": run.config.model, **stamp}
    if not pending:
        return info
    if fresh:
        with atomic_write(stamp_path) as f:  # before the images: a kill mid-way keeps the stamp of what they are
            f.write(json.dumps(stamp, indent=2).encode())
    dataset = PairDataset(Path(cfg.shards) / cfg.split, crop_margin=run.config.crop_margin)
    loader = make_loader(torch.utils.data.Subset(dataset, pending), batch_size=cfg.batch_size, shuffle=False,
                         num_workers=cfg.num_workers)
    bar = _bar(cfg, len(pending), "generate")
    for batch_no, batch in enumerate(loader):
        images = run(batch["source"], batch["source_kp"], batch["target_kp"])
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
        for i, rgb in enumerate(pixels.numpy()):
            k = pending[batch_no * cfg.batch_size + i]
            ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
            if not ok:
                raise TrainError(f"{files[k]}: PNG encoding failed")
            with atomic_write(files[k]) as f:
                f.write(encoded.tobytes())
        bar.update(len(pixels))
    bar.close()
    return info


# ---------------------------------------------------------------------------------------------------- evaluate


def _check(cfg: EvalConfig) -> None:
    if (cfg.run_dir is None) == (cfg.generated is None):
        raise TrainError("give exactly one of --run RUN_DIR (generate, then score) and --generated DIR (score "
                         "images made elsewhere)")
    if cfg.ssim not in SSIM_SETTINGS:
        raise TrainError(f"--ssim {cfg.ssim}: use one of {', '.join(SSIM_SETTINGS)}")
    if cfg.target_from not in TARGET_SOURCES:
        raise TrainError(f"--target-from {cfg.target_from}: use one of {', '.join(TARGET_SOURCES)}")
    if cfg.target_from == "panel" and cfg.generated is None:
        raise TrainError("--target-from panel reads targets from the PATN/XingGAN panels of --generated DIR; --run "
                         "writes single images, score them with --target-from shards")
    if cfg.fid_reference not in ("train", "test"):
        raise TrainError(f"--fid-reference {cfg.fid_reference}: use train or test")
    if cfg.fid_network not in FID_NETWORKS:
        raise TrainError(f"--fid-network {cfg.fid_network}: use one of {', '.join(FID_NETWORKS)}")
    if cfg.perceptual_frame not in PERCEPTUAL_FRAMES:
        raise TrainError(f"--perceptual-frame {cfg.perceptual_frame}: use one of {', '.join(PERCEPTUAL_FRAMES)}")
    if cfg.pckh_protocol not in PCKH_PROTOCOLS:
        raise TrainError(f"--pckh-protocol {cfg.pckh_protocol}: use one of {', '.join(PCKH_PROTOCOLS)}")
    unknown = [m for m in (cfg.metrics or ()) if m not in ALL_METRICS]
    if unknown:
        raise TrainError(f"--metrics: unknown {', '.join(unknown)}; known: {', '.join(ALL_METRICS)}")


def evaluate(cfg: EvalConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generate (``run_dir``) or find (``generated``) every pair's image, score them, write the results.

    Writes ``<out>/eval.json`` (everything), ``<out>/eval.md`` (the table) and ``<out>/pairs.csv`` (one line per
    pair and row). Returns the ``eval.json`` content. ``TrainError`` for a bad shard set, run folder or option;
    bad generated images are recorded, not raised.
    """
    from pipeline.devices import resolve_device
    from pipeline.shards import ShardSet
    from pipeline.versions import package_version

    log = log or (lambda _line: None)
    _check(cfg)
    started = time.time()
    folder = Path(cfg.shards) / cfg.split
    try:
        shards = ShardSet(folder)
    except PipelineError as exc:
        raise TrainError(str(exc)) from None
    names = read_names(shards)
    all_pairs = np.asarray(shards.pairs)
    if len(all_pairs) == 0:
        raise TrainError(f"{folder}: the shard set holds no pairs")
    pairs = all_pairs[: cfg.max_pairs] if cfg.max_pairs else all_pairs
    perceptual_crop = _perceptual_crop(cfg, stored_frame(shards), folder)
    flat = [(names[int(s)], names[int(t)]) for s, t in pairs]
    device = resolve_device(cfg.device)

    result: dict[str, Any] = {"pgpig_version": package_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "shards": str(folder), "split": cfg.split, "pairs_in_split": int(len(all_pairs)),
                              "pairs": int(len(pairs))}
    out, files, unmatched, label = _images(cfg, flat, result, log)
    if cfg.generated is not None:
        sample = _first_images(files)
        check_frame(Path(cfg.generated), sample, shards, pairs, cfg.split)
        if cfg.target_from == "panel":
            check_panels(Path(cfg.generated), sample, shards.size[1])

    explicit = cfg.metrics is not None
    wanted_order = tuple(cfg.metrics) if explicit else ALL_METRICS
    lpips_module, extractor, skipped = _networks(cfg, wanted_order, explicit, device, log)
    wanted = {m for m in wanted_order if m not in skipped}
    crop = patn_crop(stored_frame(shards)) if "pckh" in wanted else 0
    pckh = PCKhScorer(PoseDetector(device, cfg.pose_model, cfg.batch_size), cfg.alpha, crop) \
        if "pckh" in wanted else None
    rows = {"model": _Row()}
    if cfg.baseline:
        rows["copy-source"] = _Row()
    t0 = time.time()
    scored = _score_pairs(cfg, _ScoreItems(shards, pairs, files, names, cfg.target_from), flat, rows, wanted, device,
                          (lpips_module, extractor, pckh), names, pairs, perceptual_crop)
    if scored.bad:
        log(f"{len(scored.bad)} of {len(pairs)} pairs not scored: {scored.bad[0]['reason']}"
            + (" (and more, see eval.json)" if len(scored.bad) > 1 else ""))
    fid_info = _fid(cfg, out, rows, (scored.margins, perceptual_crop), wanted, skipped, extractor, device, log)

    result["label"] = label
    result["rows"] = {name: _summary(row, wanted, cfg.pckh_protocol) for name, row in rows.items()}
    result["skipped"] = skipped
    result["bad"] = {"count": len(scored.bad), "items": scored.bad}
    result["unmatched"] = {"count": len(unmatched), "names": unmatched[:100]}
    result["settings"] = _settings(cfg, extractor, fid_info, shards.size, (scored.margins, perceptual_crop), crop)
    result["score_seconds"] = round(time.time() - t0, 2)
    result["seconds"] = round(time.time() - started, 2)
    _write_outputs(out, result, scored.records)
    result["out"] = str(out)
    return result


def _images(cfg: EvalConfig, flat: list[tuple[str, str]], result: dict[str, Any],
            log: Callable[[str], None]) -> tuple[Path, list[Path | None], list[str], str]:
    """The output folder, each pair's image file (generated now for a run), the files matching no pair, and the
    table's label; records the image source in ``result``."""
    if cfg.run_dir is not None:
        out = Path(cfg.out) if cfg.out is not None else Path(cfg.run_dir) / "eval" / cfg.split
        images_dir = out / "images"
        files: list[Path | None] = [images_dir / pair_file_name(s, t) for s, t in flat]
        t0 = time.time()
        result["run"] = str(cfg.run_dir)
        result["generator"] = _generate(cfg, out, files, list(range(len(flat))), log)
        result["generate_seconds"] = round(time.time() - t0, 2)
        return out, files, [], f"{result['generator']['model']} (step {result['generator']['step']})"
    generated = Path(cfg.generated)
    out = Path(cfg.out) if cfg.out is not None else generated.with_name(generated.name + "-eval")
    files, unmatched = index_generated(generated, flat)
    result["generated"] = str(generated)
    log(f"{generated}: {sum(p is not None for p in files)} of {len(flat)} pairs have an image"
        + (f"; {len(unmatched)} files match no pair" if unmatched else ""))
    return out, files, unmatched, generated.name


@dataclass
class _Scored:
    """What scoring every pair leaves besides the rows' totals."""

    bad: list[dict[str, str]] = field(default_factory=list)
    """The pairs not scored: ``{"source", "target", "reason"}``."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """One ``pairs.csv`` line per pair and row."""
    margins: set[int] = field(default_factory=set)
    """The framings (white margins) of the generated images scored."""


def _score_pairs(cfg: EvalConfig, items: _ScoreItems, flat: list[tuple[str, str]], rows: dict[str, _Row],
                 wanted: set[str], device: torch.device, networks: tuple, names: list[str],
                 pairs: np.ndarray, perceptual_crop: int) -> _Scored:
    """Score every pair with an image into ``rows``; ``networks`` is ``(lpips_module, extractor, pckh)``;
    LPIPS, mask-LPIPS and FID see the images less ``perceptual_crop`` columns on each side."""
    scored = _Scored()
    loader = DataLoader(items, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=_collate)
    bar = _bar(cfg, len(items), "score")
    with torch.no_grad():
        for batch in loader:
            good = []
            for it in batch:
                if it["error"] is not None:
                    s, t = flat[it["k"]]
                    scored.bad.append({"source": s, "target": t, "reason": it["error"]})
                else:
                    good.append(it)
            # one framing per batch (in practice one per run); a stray other size is scored in its own group
            for m in sorted({it["margin"] for it in good}):
                group = [it for it in good if it["margin"] == m]
                scored.margins.add(m)
                _score_batch(rows, group, cfg, wanted, device, *networks, scored.records, names, pairs,
                             perceptual_crop)
            bar.update(len(batch))
            bar.set_postfix(bad=len(scored.bad), refresh=False)
    bar.close()
    return scored


def _fid(cfg: EvalConfig, out: Path, rows: dict[str, _Row], framing: tuple[set[int], int], wanted: set[str],
         skipped: dict[str, str], extractor: FeatureExtractor | None, device: torch.device,
         log: Callable[[str], None]) -> dict[str, Any] | None:
    """Each row's FID against the reference images (``None`` when not wanted); skipped, with the reason, when fewer
    than 2 images were scored or they came in several framings. ``framing``: the generated images' margins and the
    perceptual crop."""
    margins, perceptual_crop = framing
    if "fid" not in wanted:
        return None
    if len(margins) != 1 or rows["model"].features.n < 2:
        skipped["fid"] = ("fewer than 2 scored images" if rows["model"].features.n < 2
                          else f"generated images of several framings (margins {sorted(margins)})")
        log(f"skipping fid: {skipped['fid']}")
        wanted.discard("fid")
        return None
    mu_r, sigma_r, fid_info = _fid_reference(cfg, out, next(iter(margins)), perceptual_crop, extractor, device, log)
    for row in rows.values():
        mu, sigma = row.features.mean_cov()
        row.sums["fid"] = frechet_distance(mu, sigma, mu_r, sigma_r)
    return fid_info


def _settings(cfg: EvalConfig, extractor: FeatureExtractor | None, fid_info: dict[str, Any] | None,
              stored_size: tuple[int, int], framing: tuple[set[int], int], pckh_crop: int) -> dict[str, Any]:
    """How the metrics were computed (``eval.json``'s ``settings``); ``framing``: the generated images' margins and
    the perceptual crop."""
    margins, perceptual_crop = framing
    return {
        "ssim": cfg.ssim, "ssim_settings": {k: asdict(v) for k, v in SSIM_SETTINGS.items()},
        "mask": "PATN produce_ma_mask of the target keypoints", "lpips_net": cfg.lpips_net,
        "fid_network": cfg.fid_network, "fid_features": getattr(extractor, "name", None),
        "perceptual_frame": cfg.perceptual_frame, "perceptual_crop": perceptual_crop,
        "perceptual": PERCEPTUAL_FRAMES[cfg.perceptual_frame],
        "fid_reference": fid_info,
        "pckh_alpha": cfg.alpha, "pckh_head": "bounding box of the visible nose, neck, eyes, ears (>= 2)",
        "pckh_protocol": cfg.pckh_protocol, "pckh_patn_crop": pckh_crop,
        "pose_model": str(cfg.pose_model) if cfg.pose_model else "embedded yolo11n-pose",
        "frame": {"stored_size": list(stored_size), "margins": sorted(margins), "padding": "white"},
        "max_pairs": cfg.max_pairs,
        "target_from": cfg.target_from, "target": TARGET_SOURCES[cfg.target_from],
    }


def _pckh_value(counts: PCKhCounts) -> float | None:
    return None if math.isnan(counts.overall) else counts.overall


def _summary(row: _Row, wanted: set[str], protocol: str) -> dict[str, Any]:
    out: dict[str, Any] = {"scored": row.n}
    if row.n == 0:
        return out
    for name, total in row.sums.items():
        out[name] = total if name == "fid" else total / row.n
    if "pckh" in wanted:
        chosen = row.pckh[protocol]
        out["pckh"] = _pckh_value(chosen)
        out["pckh_protocol"] = protocol
        out["pckh_per_joint"] = chosen.per_joint()
        out["pckh_counts"] = {"correct": int(chosen.correct.sum()), "valid": int(chosen.valid.sum()),
                              "pairs": chosen.pairs, "pairs_without_head": chosen.no_head}
        out["detection_rate"] = row.detected[protocol] / row.n
        for name in PCKH_PROTOCOLS:
            out[f"pckh_{name}"] = _pckh_value(row.pckh[name])
            out[f"detection_rate_{name}"] = row.detected[name] / row.n
    return out


# ---------------------------------------------------------------------------------------------------- output

_COLUMNS = (("ssim", "SSIM ↑", 4), ("mask_ssim", "mask-SSIM ↑", 4), ("lpips", "LPIPS ↓", 4),
            ("mask_lpips", "mask-LPIPS ↓", 4), ("fid", "FID ↓", 2), ("pckh", "PCKh ↑", 3),
            ("detection_rate", "detected ↑", 3), ("l1", "L1 ↓", 4))


def _cell(value: Any, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(entries: list[tuple[str, dict[str, Any], int]], ssim_name: str) -> str:
    """Markdown table of ``(label, row summary, pairs)`` entries."""
    head = ["", "pairs"] + [(f"SSIM ({ssim_name}) ↑" if key == "ssim" else title) for key, title, _ in _COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row, pairs in entries:
        cells = [label, f"{row.get('scored', 0)}" + (f"/{pairs}" if row.get("scored", 0) != pairs else "")]
        cells += [_cell(row.get(key), digits) for key, _, digits in _COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """``eval.md``: the table, then how it was computed."""
    entries = [(result["label"], result["rows"]["model"], result["pairs"])]
    if "copy-source" in result["rows"]:
        entries.append(("copy-source (baseline)", result["rows"]["copy-source"], result["pairs"]))
    s = result["settings"]
    lines = [f"# pgpig eval: {result['label']} on {result['shards']}", "",
             table(entries, s["ssim"]), ""]
    pairs_note = f"{result['pairs']} pairs" + (f" (the first {result['pairs']} of {result['pairs_in_split']})"
                                               if result["pairs"] != result["pairs_in_split"] else "")
    ref = s.get("fid_reference") or {}
    notes = [
        f"- {pairs_note}; frame {s['frame']['stored_size'][0]}x{s['frame']['stored_size'][1]} (stored size), "
        f"margins {s['frame']['margins']} padded white.",
        f"- SSIM: the {s['ssim']} setting (`eval.json` has all of patn, gfla, pg2); mask-SSIM: PATN's setting with "
        "PATN's Market-1501 body mask of the target keypoints.",
        f"- LPIPS: {s['lpips_net']} v0.1. FID: {s['fid_features'] or '–'}"
        + (f", against the {ref.get('images')} images of {ref.get('folder')}" if ref else "")
        + f". Both on {s.get('perceptual', PERCEPTUAL_FRAMES['padded'])}.",
        f"- Targets (`--target-from {s['target_from']}`): {s['target']}.",
        _pckh_note(result),
    ]
    sampling = (result.get("generator") or {}).get("sampling")
    if sampling:
        settings = ", ".join(f"{SAMPLING_RECORD_NAMES.get(k, k)} {str(v).lower() if isinstance(v, bool) else v}"
                             for k, v in sampling.items())
        notes.append(f"- Sampled with {settings} (`--sampling KEY=VALUE` changes them).")
    for name, reason in result["skipped"].items():
        notes.append(f"- {name} skipped: {reason}")
    if result["bad"]["count"]:
        notes.append(f"- {result['bad']['count']} pairs not scored (see `eval.json` → bad), e.g. "
                     f"{result['bad']['items'][0]['reason']}")
    if result["unmatched"]["count"]:
        notes.append(f"- {result['unmatched']['count']} files in the folder match no pair")
    return "\n".join(lines + notes) + "\n"


def _pckh_note(result: dict[str, Any]) -> str:
    """The summary line saying which PCKh protocol the table shows, with the other protocols' values."""
    s, model = result["settings"], result["rows"]["model"]
    protocol = s.get("pckh_protocol", "strict")
    others = [name for name in PCKH_PROTOCOLS if name != protocol and f"pckh_{name}" in model]
    line = f"- PCKh@{s['pckh_alpha']}, `{protocol}` protocol"
    if others:
        line += " (model row under " + ", ".join(
            f"`{name}`: {_cell(model[f'pckh_{name}'], 3)}, detected {_cell(model[f'detection_rate_{name}'], 3)}"
            for name in others) + "; docs/eval.md \"PCKh protocols\")"
    return line + f": head = {s['pckh_head']}; keypoints of generated images from {s['pose_model']}."


def _write_outputs(out: Path, result: dict[str, Any], records: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for record in records:
        columns += [c for c in record if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    with atomic_write(out / "pairs.csv") as f:
        f.write(buffer.getvalue().encode())
    with atomic_write(out / "eval.json") as f:
        f.write((json.dumps(result, indent=2, allow_nan=False, default=_json_default) + "\n").encode())
    with atomic_write(out / "eval.md") as f:
        f.write(markdown(result).encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ---------------------------------------------------------------------------------------------------- compare


def _load_result(path: Path, split: str) -> tuple[dict[str, Any], Path]:
    candidates = [path] if path.is_file() else [path / "eval.json", path / "eval" / split / "eval.json"]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text()), candidate
            except (OSError, json.JSONDecodeError) as exc:
                raise TrainError(f"{candidate}: cannot read ({exc})") from None
    raise TrainError(f"{path}: no eval.json (looked at {', '.join(str(c) for c in candidates)}); run "
                     f"`pgpig eval --run {path}` first")


_PROTOCOL_SETTINGS = (("--ssim", "ssim", "patn"), ("--target-from", "target_from", "shards"),
                      ("--pckh-protocol", "pckh_protocol", "strict"), ("--fid-network", "fid_network", "tf"),
                      ("--perceptual-frame", "perceptual_frame", "padded"))
"""Settings that change what a column means: (flag, ``eval.json`` settings key, value of an older file without it)."""


def compare(paths: list[Path], split: str = "test", out: Path | None = None) -> str:
    """One Markdown table of several evaluations (run folders, eval folders or ``eval.json`` files), each model's
    row labelled by its run folder; one copy-source row per distinct shard set and pair count."""
    if not paths:
        raise TrainError("--compare needs at least one run folder or eval.json")
    entries, baselines = [], {}
    protocols: dict[str, set] = {flag: set() for flag, _, _ in _PROTOCOL_SETTINGS}
    for path in paths:
        result, where = _load_result(Path(path), split)
        for flag, key, default in _PROTOCOL_SETTINGS:
            protocols[flag].add(result["settings"].get(key, default))
        label = Path(result.get("run") or result.get("generated") or where.parent).name
        if result.get("generator"):
            label += f" ({result['generator']['model']}, step {result['generator']['step']})"
        entries.append((label, result["rows"]["model"], result["pairs"]))
        if "copy-source" in result["rows"]:
            baselines.setdefault((result["shards"], result["pairs"]),
                                 (f"copy-source ({result['shards']})", result["rows"]["copy-source"], result["pairs"]))
    for flag, values in protocols.items():
        if len(values) > 1:  # the numbers of two protocols do not sit in one column
            raise TrainError(f"the evaluations were scored with different {flag} ({', '.join(sorted(values))}); "
                             f"re-run them with one {flag}")
    text = table(entries + list(baselines.values()), protocols["--ssim"].pop()) + "\n"
    if out is not None:
        with atomic_write(out) as f:
            f.write(text.encode())
    return text

