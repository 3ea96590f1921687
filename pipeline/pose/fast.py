"""The ``fast`` pose backend: YOLO-pose with reading, decoding, letterbox, NMS and the person choice batched.

The same network and weights as the reference (``pipeline.pose.reference``, ``YOLO.predict``; Jocher, Qiu and
Chaurasia, "Ultralytics YOLO11", 2024), giving the same persons and keypoints within 1 px. Its facts (letterbox,
network output, NMS, scaling back) come from the source of ultralytics 8.4; ``docs/fast-backend.md`` gives them,
the file path step by step and the decisions behind it.

- ``predict(images)``: decoded BGR images → one ``Detections`` each.
- ``extract_files(paths)`` (the ``KeypointSource`` entry) and ``choose_files(paths)``: files read by reader
  processes (``pipeline.pose.reading``), JPEGs decoded on the GPU where the result equals ``pipeline.decode``'s,
  the network and the person choice replayed as CUDA graphs (``PersonGraphs``, ``select_persons``), a producer
  thread preparing the next batch meanwhile.
- ``predict_files(paths)``: the same files with every person, post-processed exactly (``postprocess``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.decode import JPEG_MAGIC, Decoded, decode_bytes
from pipeline.errors import PipelineError
from pipeline.pose import (
    Detections,
    PersonBatch,
    checked_rule,
    choose_person,
    default_model_path,
    full_width,
    person_batch,
    quiet_ultralytics,
    set_torch_threads,
    shape_groups,
)
from pipeline.pose.reading import BatchReader, ReadBatch
from pipeline.pose.shapes import ShapeWarmer
from pipeline.pose.threads import ThreadTuner, tuned_threads

PAD_VALUE = 114
STRIDE = 32
MAX_SIDE = 4096  # decode_image's default: above it the CPU decode shrinks the image
KEYPOINTS = 17
CAPTURE_TRIES = 3  # captures of one input shape before it runs without a graph
NMS_ITERATIONS = 8  # steps of the fixed-point NMS in select_persons; an image not settled by then is redone exactly
DECODE_PIXELS = 256_000_000  # JPEG pixels per torch decode call: ~0.8 GB decoded, ~2.3 GB with its letterbox copies
# network input pixels per call on the CPU: 32 inputs of 256x192, 5 of 640x480; larger calls run slower (their
# activations leave the caches): 1.6-2.2x slower at 256 inputs of 256x192 (benchmarks/cpu_network_bench.py)
CPU_CALL_PIXELS = 1_600_000
WARM_THREADS = 4  # ShapeWarmer's threads on a GPU: 15 new shapes' set-up in 1.4 s on an H100, no faster on 8

Groups = list[tuple[list[int], torch.Tensor, tuple[int, int]]]
"""Images by decoded size: (indices into the batch, ``(N, 3, H, W)`` uint8 RGB on the device, the decoded
``(height, width)``); ``(H, W)`` is that size, or the size its letterbox resizes it to (resized by the reader)."""
Launched = list[tuple[list[int], torch.Tensor, torch.Tensor]]
"""Queued network calls: (indices, raw output ``(B, 56, A)``, frames ``(B, 7)``)."""


# ---------------------------------------------------------------- letterbox geometry (pure)


@dataclass(frozen=True)
class Letterbox:
    """Where an ``height × width`` image lands in the network input: resized to ``new_h × new_w`` at
    ``(top, left)`` in an ``out_h × out_w`` input padded with 114."""

    height: int
    width: int
    new_h: int
    new_w: int
    top: int
    left: int
    out_h: int
    out_w: int


def letterbox_geometry(height: int, width: int, imgsz: int, stride: int = STRIDE) -> Letterbox:
    """The minimal-padding letterbox of ``YOLO.predict`` (``docs/fast-backend.md`` gives the rounding)."""
    r = min(imgsz / height, imgsz / width)
    new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)
    dw, dh = (imgsz - new_w) % stride / 2, (imgsz - new_h) % stride / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return Letterbox(height, width, new_h, new_w, top, left, new_h + top + bottom, new_w + left + right)


def letterbox_size(height: int, width: int, imgsz: int) -> tuple[int, int]:
    """The size ``(new_h, new_w)`` an ``height × width`` image is resized to in its letterbox."""
    box = letterbox_geometry(height, width, imgsz)
    return box.new_h, box.new_w


def placed(images: torch.Tensor, box: Letterbox) -> Letterbox:
    """``box`` for ``letterbox_batch`` of ``images`` ``(N, 3, H, W)``: as it is for images at the decoded size, and
    copied into place (no resize) for images already at the letterbox's resized size."""
    if tuple(images.shape[2:]) == (box.height, box.width):
        return box
    if tuple(images.shape[2:]) != (box.new_h, box.new_w):
        raise ValueError(f"images of {tuple(images.shape[2:])} are neither at {box.height}x{box.width} "
                         f"nor at its letterbox size {box.new_h}x{box.new_w}")
    return dataclasses.replace(box, height=box.new_h, width=box.new_w)


def inverse_letterbox(padded: tuple[int, int], original: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(gain_x, gain_y, pad_x, pad_y)`` mapping input pixels back to the image: ``x = (x - pad_x) / gain_x``.

    Recomputed from the shapes alone, as ``scale_boxes`` does (not from ``Letterbox``: the two can differ in the
    last digit, and the reference's numbers are the target)."""
    h1, w1 = padded
    h0, w0 = original
    gain = min(h1 / h0, w1 / w0)
    new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    return new_w / w0, new_h / h0, round((w1 - new_w) / 2 - 0.1), round((h1 - new_h) / 2 - 0.1)


def _linear_taps(src: int, dst: int, edge_weights: bool) -> np.ndarray:
    """OpenCV's ``INTER_LINEAR`` taps along one axis, ``(4, dst)`` int32: source indices ``i0``, ``i1`` and 11-bit
    weights ``w0``, ``w1``.

    Half-pixel centres, the position computed in float32 from a float64 scale, weights ``round(w * 2048)``. Past
    a border OpenCV treats the axes differently: along x the weight moves onto the edge pixel (``edge_weights``),
    along y the weights stay and only the row indices are clamped (which rounds differently in fixed point)."""
    scale = 1.0 / (dst / src)
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0.astype(np.float32)
    if edge_weights:
        frac[(i0 < 0) | (i0 >= src - 1)] = 0
    i1 = np.clip(i0 + 1, 0, src - 1)
    i0 = np.clip(i0, 0, src - 1)
    w1 = np.round(frac * 2048)
    w0 = np.round((np.float32(1) - frac) * 2048)
    return np.stack([i0, i1, w0, w1]).astype(np.int32)


@functools.lru_cache(maxsize=4096)
def _letterbox_taps(box: Letterbox) -> tuple[np.ndarray, np.ndarray]:
    """The taps of ``box`` over its whole input: rows ``(5, out_h)`` and columns ``(5, out_w)`` int32, each
    ``i0, i1, w0, w1, inside`` (padding: index 0, weights 0, ``inside`` 0)."""
    rows = np.zeros((5, box.out_h), np.int32)
    cols = np.zeros((5, box.out_w), np.int32)
    rows[:4, box.top:box.top + box.new_h] = _linear_taps(box.height, box.new_h, edge_weights=False)
    cols[:4, box.left:box.left + box.new_w] = _linear_taps(box.width, box.new_w, edge_weights=True)
    rows[4, box.top:box.top + box.new_h] = 1
    cols[4, box.left:box.left + box.new_w] = 1
    return rows, cols


def letterbox_batch(blocks: list[torch.Tensor], boxes: list[Letterbox]) -> torch.Tensor:
    """Blocks of images ``(n_i, 3, H_i, W_i)`` uint8 on one device, each with its letterbox (all of one input shape)
    → ``(sum n_i, 3, out_h, out_w)`` uint8 in block order: each image resized as ``cv2.resize(INTER_LINEAR)`` does,
    byte for byte, and padded with 114.

    OpenCV resizes 8-bit images in fixed point: a horizontal pass with 11-bit weights into int32, then a vertical
    pass whose vectorised form (the one x86 builds run) computes ``((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16)``
    and rounds by ``(v + 2) >> 2`` (``imgproc/src/resize.cpp``, ``VResizeLinearVec_32s8u``). The images to resize
    are gathered from one flat buffer with per-image taps (``_letterbox_taps``), so the kernels of a call do not
    grow with the number of image sizes; a block at its input size is copied into place."""
    out_h, out_w = boxes[0].out_h, boxes[0].out_w
    device = blocks[0].device
    starts = np.cumsum([0] + [len(b) for b in blocks])
    out = torch.full((int(starts[-1]), 3, out_h, out_w), PAD_VALUE, dtype=torch.uint8, device=device)
    resized = []
    for k, (block, b) in enumerate(zip(blocks, boxes, strict=True)):
        if (b.new_h, b.new_w) == (b.height, b.width):
            out[starts[k]:starts[k + 1], :, b.top:b.top + b.height, b.left:b.left + b.width] = block
        else:
            resized.append(k)
    if resized:
        index = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in resized])
        value = _resize_into(out_h, out_w, [blocks[k] for k in resized], [boxes[k] for k in resized])
        if len(index) == len(out):
            out = value
        else:
            out[torch.from_numpy(index).to(device)] = value
    return out


@functools.lru_cache(maxsize=4096)
def _device_taps(box: Letterbox, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_letterbox_taps(box)`` and the source size ``(height, width)`` on ``device``, kept: a data set has few
    sizes, and a small host-to-device copy per batch costs more host time than the gathers it feeds. The copy is
    a blocking one, so the tensors are ready for any stream."""
    rows, cols = _letterbox_taps(box)
    size = torch.tensor([box.height, box.width], dtype=torch.int64)
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device), size.to(device)


@functools.lru_cache(maxsize=4096)
def _device_frame(shape: tuple[int, int], box: Letterbox, device: torch.device) -> torch.Tensor:
    """The frame ``(7,)`` of an image of ``box`` in input ``shape`` (scale 1) on ``device``, kept as the taps are."""
    row = [*inverse_letterbox(shape, (box.height, box.width)), box.width, box.height, 1.0]
    return torch.tensor(row, dtype=torch.float32).to(device)


def _resize_into(out_h: int, out_w: int, blocks: list[torch.Tensor], boxes: list[Letterbox]) -> torch.Tensor:
    """``letterbox_batch`` for blocks that are resized: the gathers and the fixed-point arithmetic."""
    device = blocks[0].device
    taps = [t for block, box in zip(blocks, boxes, strict=True) for t in [_device_taps(box, device)] * len(block)]
    rows, cols, sizes = (torch.stack([t[k] for t in taps]) for k in range(3))  # (N, 5, out_h), (N, 5, out_w), (N, 2)
    flat = blocks[0].reshape(-1) if len(blocks) == 1 else torch.cat([block.reshape(-1) for block in blocks])
    plane = sizes[:, 0] * sizes[:, 1]
    start = torch.cumsum(plane * 3, 0) - plane * 3
    channel = start[:, None] + torch.arange(3, device=device) * plane[:, None]  # (N, 3) first pixel of each plane
    width = sizes[:, 1, None, None]
    top = channel[:, :, None] + rows[:, None, 0].long() * width  # (N, 3, out_h) where the source rows start
    bottom = channel[:, :, None] + rows[:, None, 1].long() * width
    x0, x1 = cols[:, None, None, 0].long(), cols[:, None, None, 1].long()  # (N, 1, 1, out_w)
    a0, a1 = cols[:, None, None, 2], cols[:, None, None, 3]
    b0, b1 = rows[:, None, 2, :, None], rows[:, None, 3, :, None]  # (N, 1, out_h, 1)

    def row_pass(row_start: torch.Tensor) -> torch.Tensor:  # the horizontal pass on the source rows given
        at = row_start[..., None]
        return flat[at + x0].to(torch.int32) * a0 + flat[at + x1].to(torch.int32) * a1

    value = ((row_pass(top) >> 4) * b0 >> 16) + ((row_pass(bottom) >> 4) * b1 >> 16)
    value = ((value + 2) >> 2).clamp_(0, 255).to(torch.uint8)
    inside = (rows[:, None, 4, :, None] & cols[:, None, None, 4]).bool()
    return value.masked_fill_(~inside, PAD_VALUE)


def resize_linear(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 → ``(N, C, height, width)`` uint8, the same bytes as ``cv2.resize(INTER_LINEAR)``
    (``letterbox_batch`` without padding)."""
    _, _, h, w = images.shape
    return letterbox_batch([images], [Letterbox(h, w, height, width, 0, 0, height, width)])


def letterbox(images: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 RGB → ``(N, 3, out_h, out_w)`` float32 in ``[0, 1]``, on their device."""
    return to_network_input(letterbox_batch([images], [box]), torch.float32)


def to_network_input(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Letterboxed uint8 → the network's input in ``dtype``: ``x / 255`` computed in float32."""
    return images.float().div_(255).to(dtype)


# ---------------------------------------------------------------- post-processing (batched, on the device)


def postprocess(pred: torch.Tensor, conf: float, iou: float, max_det: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pose-head output ``(B, 56, A)`` → kept detections ``(K, 56)`` (x1, y1, x2, y2, score, 17 × (x, y, v))
    in input pixels, and their image index ``(K,)``, grouped by image and by falling score inside an image."""
    p = pred.float().transpose(1, 2)  # (B, A, 56)
    image, anchor = (p[..., 4] > conf).nonzero(as_tuple=True)
    x = p[image, anchor]
    boxes = torch.cat([x[:, :2] - x[:, 2:4] / 2, x[:, :2] + x[:, 2:4] / 2], dim=1)
    keep = nms_per_image(boxes, x[:, 4], image, iou)  # by falling score
    keep = keep[torch.sort(image[keep], stable=True).indices]
    kept_image = image[keep]
    counts = torch.bincount(kept_image, minlength=pred.shape[0])
    rank = torch.arange(len(keep), device=keep.device) - (counts.cumsum(0) - counts)[kept_image]
    keep, kept_image = keep[rank < max_det], kept_image[rank < max_det]
    return torch.cat([boxes[keep], x[keep, 4:]], dim=1), kept_image


def nms_per_image(boxes: torch.Tensor, scores: torch.Tensor, image: torch.Tensor, iou: float) -> torch.Tensor:
    """``torchvision.ops.nms`` for all images in one call: each image's boxes moved apart along x and y by more
    than the span of all boxes, so boxes of two images never overlap. Indices kept, by falling score.

    (``torchvision.ops.batched_nms`` does the same but falls back to one call per image above 20,000 box
    coordinates on a GPU, and offsets by ``max + 1`` only, which lets boxes with negative corners overlap.)"""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    b = boxes.double()
    low, span = b.min(), b.max() - b.min() + 1
    return torchvision_nms()(b - low + (image.double() * span)[:, None], scores.double(), iou)


@functools.cache
def torchvision_nms():
    """``torchvision.ops.nms``'s kernel (``torch.ops.torchvision.nms``), loaded from torchvision's compiled library
    without importing the ``torchvision`` package: that import pulls in ``torch._dynamo`` (1.1 s on a 2-core
    machine, 5 s where bytecode is not cached), which extraction's start-up would otherwise pay."""
    if not hasattr(torch.ops.torchvision, "nms"):
        import importlib.machinery
        import importlib.util

        spec = importlib.util.find_spec("torchvision")
        if spec is None or not spec.submodule_search_locations:
            raise PipelineError("the fast backend needs torchvision's nms: pip install torchvision")
        folder = Path(spec.submodule_search_locations[0])
        libraries = [folder / f"_C{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        library = next((path for path in libraries if path.is_file()), None)
        if library is None:  # a layout this does not know: the package's own loader
            import torchvision.ops  # noqa: F401
        else:
            torch.ops.load_library(str(library))
    return torch.ops.torchvision.nms


def to_image_pixels(det: torch.Tensor, index: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Detections in input pixels → image pixels, clipped to the image.

    ``frames`` ``(B, 6)`` per image: gain_x, gain_y, pad_x, pad_y, width, height (``inverse_letterbox`` and the
    image's size); ``index`` ``(K,)`` the image of each row of ``det`` ``(K, 56)``."""
    f = frames[index]
    gain, pad, size = f[:, None, 0:2], f[:, None, 2:4], f[:, None, 4:6]  # (K, 1, 2) each, x then y
    out = det.clone()
    corners = out[:, :4].unflatten(1, (2, 2))  # views into out
    corners.copy_(torch.minimum(((corners - pad) / gain).clamp(min=0), size))
    xy = out[:, 5:].unflatten(1, (KEYPOINTS, 3))[..., :2]
    xy.copy_(torch.minimum(((xy - pad) / gain).clamp(min=0), size))
    return out


def split_detections(det: np.ndarray, index: np.ndarray, n: int) -> list[Detections]:
    """Host rows ``(K, 56)`` with image indices ``(K,)`` (grouped by image) → one ``Detections`` per image."""
    counts = np.bincount(index, minlength=n)
    out = []
    for rows in np.split(det, np.cumsum(counts)[:-1]):
        if len(rows) == 0:
            out.append(Detections.empty())
            continue
        kp = rows[:, 5:].reshape(-1, KEYPOINTS, 3)
        out.append(Detections(np.ascontiguousarray(rows[:, :5]), np.ascontiguousarray(kp[..., :2]),
                              np.ascontiguousarray(kp[..., 2])))
    return out


def select_persons(pred: torch.Tensor, frames: torch.Tensor, conf: float, iou: float, k: int,
                   iterations: int, person: str = "largest") -> torch.Tensor:
    """The person count and the chosen person of every image, in fixed shapes (no host sync: CUDA-graph safe).

    ``pred`` ``(B, 56, A)`` raw pose-head output, ``frames`` ``(B, 7)``: gain_x, gain_y, pad_x, pad_y, width,
    height, scale (``to_image_pixels``'s six, then the decode's ``scale``). Returns ``(B, 2 + 56)`` float32 per image:
    ``usable`` (1 or 0), the number of persons, then the chosen person's row (x1, y1, x2, y2, score, 17 × (x, y, v))
    in full-resolution pixels (divided by ``scale``, as ``Detections.scaled``), the person ``choose_person`` picks
    by the ``person`` rule, with the same float32 operations (``largest``: clipped box area × score; ``centre``:
    box height × score × closeness of the box centre to the image's vertical centre line, the width being
    ``width / scale``), the first of equals in score order.

    The same persons as ``postprocess``: the ``k`` best anchors by score (``topk``, by falling score as NMS visits
    them), the boxes and IoU as ``torchvision.ops.nms`` computes them (``inter / (area_i + area_j - inter)``,
    suppressed when ``> iou``), and greedy NMS solved as a fixed point: ``keep = valid & ~any(keep_i & i
    suppresses j, i before j)``, iterated ``iterations`` times from ``keep = valid``. Greedy NMS is the only fixed
    point of that map (by induction along the score order), so an image whose ``keep`` no longer changes has
    exactly the greedy result. ``usable`` is 0 for an image with more than ``k`` candidates above ``conf`` or whose
    iteration had not settled; the caller post-processes those exactly (``postprocess``)."""
    p = pred.float()
    b, c, a = p.shape
    k = min(k, a)
    score = p[:, 4]
    candidates = (score > conf).sum(1)
    top, order = score.topk(k, dim=1)  # (B, k), by falling score
    valid = top > conf
    x = p.gather(2, order[:, None, :].expand(b, c, k)).transpose(1, 2)  # (B, k, 56)
    boxes = torch.cat([x[..., :2] - x[..., 2:4] / 2, x[..., :2] + x[..., 2:4] / 2], dim=-1)  # (B, k, 4)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    lo = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    hi = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    wh = (hi - lo).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    overlap = inter / (area[:, :, None] + area[:, None, :] - inter) > iou  # (B, i, j)
    suppresses = overlap & torch.ones(k, k, dtype=torch.bool, device=p.device).triu(1) & valid[:, :, None]
    keep = valid
    for _ in range(iterations):
        keep = valid & ~(keep[:, :, None] & suppresses).any(1)
    settled = ((valid & ~(keep[:, :, None] & suppresses).any(1)) == keep).all(1)
    usable = settled & (candidates <= k)

    f = frames[:, None, :]  # (B, 1, 7)
    gain, pad, size, scale = f[..., 0:2], f[..., 2:4], f[..., 4:6], f[..., 6:7]
    corners = torch.minimum(((boxes.unflatten(-1, (2, 2)) - pad[..., None, :]) / gain[..., None, :]).clamp(min=0),
                            size[..., None, :]) / scale[..., None, :]
    kpts = x[..., 5:].unflatten(-1, (KEYPOINTS, 3))
    xy = torch.minimum(((kpts[..., :2] - pad[..., None, :]) / gain[..., None, :]).clamp(min=0),
                       size[..., None, :]) / scale[..., None, :]
    corners = corners.flatten(-2)  # (B, k, 4) x1, y1, x2, y2 in image pixels
    area = (corners[..., 2] - corners[..., 0]).clamp(min=0) * (corners[..., 3] - corners[..., 1]).clamp(min=0)
    if checked_rule(person) == "largest":
        merit = area * x[..., 4]
    else:
        width = size[..., 0] / scale[..., 0]  # (B, 1) in full-resolution pixels, as full_width
        off_centre = (corners[..., 0] + corners[..., 2] - width).abs() / width
        height = (corners[..., 3] - corners[..., 1]).clamp(min=0)
        closeness = (1 - off_centre).clamp(min=0)
        merit = height * x[..., 4] * closeness * closeness
    merit = torch.where(keep, merit, torch.full_like(area, -torch.inf))
    chosen = merit.argmax(1)  # the first of equal maxima, as np.argmax
    rows = torch.cat([corners, x[..., 4:5], torch.cat([xy, kpts[..., 2:]], dim=-1).flatten(-2)], dim=-1)
    row = rows.gather(1, chosen[:, None, None].expand(b, 1, rows.shape[-1]))[:, 0]
    return torch.cat([usable[:, None].float(), keep.sum(1, keepdim=True).float(), row], dim=1)


# ---------------------------------------------------------------- files: which JPEGs the torch decoder takes


def torch_decodable(data: bytes, max_pixels: int, max_side: int = MAX_SIDE) -> tuple[int, int] | None:
    """``(height, width)`` when TorchCodec's JPEG decoder gives what ``pipeline.decode`` would, else None.

    The conditions are listed in ``docs/fast-backend.md``; anything unusual is left to the CPU decoder."""
    from pipeline.decode import jpeg_complete, jpeg_header

    if not data.startswith(JPEG_MAGIC):
        return None
    try:
        header = jpeg_header(data)
    except Exception:  # noqa: BLE001 - a bad header is the CPU decoder's to name
        return None
    frame = header.frame
    marker, precision, components = data[frame + 1], data[frame + 4], data[frame + 9:frame + 10]
    if marker not in (0xC0, 0xC1) or precision != 8 or components != b"\x03":
        return None
    if header.width * header.height > max_pixels or max(header.width, header.height) > max_side:
        return None
    if b"Adobe" in data[:frame]:
        return None
    if header.orientation(data) != 1:
        return None
    if not jpeg_complete(data, frame):
        return None
    return header.height, header.width


# ---------------------------------------------------------------- the network and the person choice as CUDA graphs


def _end_capture_pool(device: torch.device, pool: tuple) -> None:
    """End the caching allocator's recording to ``pool`` after a failed capture: ``capture_end`` raises on an
    invalidated capture before it ends the recording, and while one is open the allocator reclaims no block freed
    while another stream still used it (and the next capture to that pool fails). The pinned-memory allocator's own
    record of the capture has no call to end it, and stays."""
    end = getattr(torch._C, "_cuda_endAllocateToPool", None)
    if end is None:
        return
    try:
        end(device.index if device.index is not None else torch.cuda.current_device(), pool)
    except RuntimeError:  # the capture failed before it began recording, or ended it
        pass


class PersonGraphs:
    """``run(x, frames)``: the network and ``select_persons`` on a letterboxed batch, replayed from CUDA graphs.

    One graph per input shape (height, width) at ``batch_size`` images, captured at the first batch of that shape
    after two eager warm-up calls; the head's anchors of that input shape (module attributes the graph reads) are
    kept alive with it. The shapes are bounded by the stride grid (at most ``2 * imgsz / 32`` at one ``imgsz``),
    so every graph is kept, all in one memory pool (a graph's results are cloned before the next replay, and
    replays never overlap: the pool holds one graph's working memory, not one per shape). A capture runs with the
    shape warmer's calls held off; one that fails all the same (another thread's device-wide call invalidates it)
    is tried again in a pool of its own, up to ``CAPTURE_TRIES`` times, after which that shape runs eagerly with a
    warning (``failures``). A smaller batch (a queue's tail) replays its shape's graph padded with empty images: a
    new batch size would cost what a new input shape costs, cuDNN's set-up for each convolution at that shape
    (``use_cudnn_heuristics``). Returns fresh tensors (cloned on the stream), so a later replay cannot overwrite
    results still to be read. Eager (``enabled=False``, or on the CPU): the same calls without graphs."""

    def __init__(self, backend: FastBackend, enabled: bool):
        self.backend, self.enabled = backend, enabled
        self._graphs: dict[tuple, tuple | None] = {}  # None: the shape's captures failed
        self._pool = None  # one memory pool for all graphs: they replay one at a time on one stream
        self._stream: torch.cuda.Stream | None = None  # the captures' stream
        self._lock = threading.Lock()  # a shape is captured once, also when ``prepare`` runs on another thread
        self.failures: list[str] = []  # the shapes whose captures failed (they run eagerly), with the last error

    def _forward(self, x: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.backend
        pred = b.network(x)
        return select_persons(pred, frames, b.conf, b.iou, b.select_k, NMS_ITERATIONS, b.person), pred

    def _capture(self, key: tuple) -> tuple | None:
        size, height, width = key
        b = self.backend
        if b.warmer is not None:  # the shape's first call may be running ahead on the warmer's threads
            b.warmer.claim((height, width))
        x = torch.zeros(size, 3, height, width, dtype=b.dtype, device=b.device)
        frames = torch.tensor([[1, 1, 0, 0, width, height, 1]] * size, dtype=torch.float32, device=b.device)
        current = torch.cuda.current_stream(b.device)
        side = torch.cuda.Stream(b.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(x, frames)
        current.wait_stream(side)
        head = b.net.model[-1] if hasattr(b.net, "model") else None
        anchors = (getattr(head, "anchors", None), getattr(head, "strides", None))
        error = None
        for _ in range(CAPTURE_TRIES):
            graph = torch.cuda.CUDAGraph()
            pool = self._pool if self._pool is not None else torch.cuda.graph_pool_handle()
            try:
                packed, pred = self._record(graph, pool, x, frames)
            except RuntimeError as exc:  # invalidated by another thread's device-wide call
                error = exc
                _end_capture_pool(b.device, pool)
                self._pool = None  # the next try records to a pool of its own
                continue
            self._pool = pool
            return graph, x, frames, packed, pred, anchors
        failure = f"{height}x{width}: {type(error).__name__}: {error}".splitlines()[0]
        self.failures.append(failure)
        warnings.warn(f"CUDA graph capture failed {CAPTURE_TRIES} times at input shape {failure}; that shape runs "
                      "without a graph (slower, the same keypoints)", RuntimeWarning, stacklevel=2)
        return None

    def _record(self, graph: torch.cuda.CUDAGraph, pool: tuple, x: torch.Tensor,
                frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Capture ``_forward`` into ``graph`` on a stream of its own, with the shape warmer's calls held off; the
        thread's stream is restored also when the capture fails. Unlike ``torch.cuda.graph``, no device-wide
        synchronisation and no emptying of the caches first: the prefetch threads' device and pinned memory stay
        cached (the graph's memory comes from its pool either way)."""
        device = self.backend.device
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        warmer = self.backend.warmer
        with torch.cuda.stream(torch.cuda.current_stream(device)), \
                warmer.paused() if warmer is not None else contextlib.nullcontext():
            torch.cuda.set_stream(self._stream)
            # thread-local: the prefetch thread may call nvJPEG (which synchronises its stream) during a capture
            graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            try:
                return self._forward(x, frames)
            finally:
                graph.capture_end()

    def run(self, x: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(packed (n, 58), raw output (n, 56, A))`` for ``x`` ``(n, 3, H, W)`` and ``frames`` ``(n, 7)``."""
        n, size = x.shape[0], self.backend.batch_size
        if not self.enabled or n > size:
            return self._forward(x, frames)
        entry = self._entry((size, x.shape[2], x.shape[3]))
        if entry is None:  # its captures failed: this shape runs eagerly
            return self._forward(x, frames)
        graph, static_x, static_frames, packed, pred, _ = entry
        static_x[:n].copy_(x)
        static_frames[:n].copy_(frames)
        if n < size:  # padding rows: empty images of a valid frame (their results are not read)
            static_x[n:].zero_()
            static_frames[n:].copy_(static_frames.new_tensor([1, 1, 0, 0, x.shape[3], x.shape[2], 1]))
        graph.replay()
        return packed[:n].clone(), pred[:n].clone()

    def _entry(self, key: tuple) -> tuple | None:
        with self._lock:
            if key in self._graphs:
                return self._graphs[key]
            with torch.cuda.device(self.backend.device):  # the capture's own streams on this backend's GPU
                self._graphs[key] = entry = self._capture(key)  # None: this shape runs eagerly from now on
            return entry

    def prepare(self, height: int, width: int) -> None:
        """Capture the graph of input shape ``(height, width)`` at ``batch_size`` now (no images needed), unless it
        is; a ``run`` of that shape on another thread meanwhile waits for it."""
        if self.enabled:
            self._entry((self.backend.batch_size, height, width))

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        """The captured graphs' ``(batch, height, width)``."""
        return [key for key, entry in self._graphs.items() if entry is not None]


def _warm_up_files(folder: Path, size: tuple[int, int]) -> list[Path]:
    """``warm_up``'s images in ``folder``: a grey JPEG of ``size`` (height, width), one of twice that size and a
    PNG of twice that size; at any ``imgsz`` all three have one input shape (the letterbox of twice a size is that
    of the size)."""
    height, width = size
    files = []
    for name, (h, w) in (("warm-up.jpg", size), ("warm-up-large.jpg", (2 * height, 2 * width)),
                         ("warm-up-large.png", (2 * height, 2 * width))):
        ok, data = cv2.imencode(Path(name).suffix, np.full((h, w, 3), 114, np.uint8))
        if not ok:
            raise PipelineError(f"could not encode the warm-up image {name}")
        (folder / name).write_bytes(data.tobytes())
        files.append(folder / name)
    return files


# ---------------------------------------------------------------- the backend


Inputs = list[tuple[np.ndarray, torch.Tensor, torch.Tensor]]
"""Network inputs by input shape: (positions in the batch, ``(n, 3, h, w)`` in the model's dtype, frames ``(n, 7)``:
``to_image_pixels``' six and the decode scale of each image)."""


@dataclass
class _Batch:
    """A batch ready for the network: its files as read, and its images letterboxed by input shape on the device."""

    read: ReadBatch
    inputs: Inputs
    event: object = None  # CUDA event recorded after the producer's last kernel of this batch


@dataclass
class ChosenPersons:
    """``choose_files``' result for one batch of files: the read records, and per file the number of persons and
    the chosen person (``choose_person``'s, by the backend's ``person`` rule) in COCO-17, full-resolution pixels;
    ``persons`` is 0 where the file is not ok."""

    read: ReadBatch
    persons: np.ndarray  # (n,) int
    boxes: np.ndarray  # (n, 5) float32 x1, y1, x2, y2, score; NaN without a person
    keypoints: np.ndarray  # (n, 17, 2) float32 COCO-17
    scores: np.ndarray  # (n, 17) float32


class _Open:
    """A batch of files whose images are in the network queues: the rows filled so far, and how many are to come."""

    def __init__(self, read: ReadBatch):
        n = len(read)
        self.read, self.waiting = read, 0
        self.persons = np.zeros(n, np.int64)
        self.rows = np.full((n, 5 + 3 * KEYPOINTS), np.nan, np.float32)

    def result(self) -> ChosenPersons:
        kp = self.rows[:, 5:].reshape(len(self.read), KEYPOINTS, 3)
        return ChosenPersons(self.read, self.persons, self.rows[:, :5].copy(), kp[..., :2].copy(), kp[..., 2].copy())


@dataclass
class _Slice:
    """Consecutive queued images of one batch: their positions in it, network input and frames."""

    batch: _Open
    positions: np.ndarray
    x: torch.Tensor
    frames: torch.Tensor
    sequence: int  # the batch's number in the stream

    def split(self, k: int) -> tuple[_Slice, _Slice]:
        return (_Slice(self.batch, self.positions[:k], self.x[:k], self.frames[:k], self.sequence),
                _Slice(self.batch, self.positions[k:], self.x[k:], self.frames[k:], self.sequence))


class _ShapeQueues:
    """Images waiting for the network, one queue per input shape across the batches of a stream: a queue runs when
    it holds a full batch, or (its tail, partial) once its oldest image is ``flush_after`` batches old, or at the
    end. So a crawl of many sizes still runs full batches, and no file waits without bound."""

    def __init__(self, batch_size: int, flush_after: int):
        self.batch_size, self.flush_after = batch_size, flush_after
        self._queues: dict[tuple[int, int], list[_Slice]] = {}

    def put(self, item: _Slice) -> None:
        self._queues.setdefault(tuple(item.x.shape[2:]), []).append(item)

    def ready(self, sequence: int) -> Iterator[list[_Slice]]:
        """The calls to launch now: full batches, and the tails that waited ``flush_after`` batches."""
        for queue_ in self._queues.values():
            while sum(len(s.positions) for s in queue_) >= self.batch_size:
                yield self._take(queue_, self.batch_size)
            if queue_ and queue_[0].sequence <= sequence - self.flush_after:
                yield self._take(queue_, self.batch_size)

    def rest(self) -> Iterator[list[_Slice]]:
        """Everything left, at the end of the stream."""
        for queue_ in self._queues.values():
            while queue_:
                yield self._take(queue_, self.batch_size)

    @staticmethod
    def _take(queue_: list[_Slice], n: int) -> list[_Slice]:
        taken, count = [], 0
        while queue_ and count < n:
            item = queue_.pop(0)
            if count + len(item.positions) > n:
                item, left = item.split(n - count)
                queue_.insert(0, left)
            taken.append(item)
            count += len(item.positions)
        return taken


@dataclass
class _Call:
    """A launched network call: the slices it covers (in row order), its frames, raw output and host copy of the
    packed rows."""

    slices: list[_Slice]
    frames: torch.Tensor
    pred: torch.Tensor
    host: torch.Tensor
    event: object = None


class FastBackend:
    """YOLO-pose with decode, letterbox and post-processing batched on ``device`` (``docs/fast-backend.md``); a
    file's person is chosen by the ``person`` rule (``choose_person``). ``cpu_decode_share`` of the JPEGs the GPU
    decoder could take are decoded by the readers instead (``pipeline.pose.reading.cpu_routed``), to share the
    decoding between the device and free CPU cores. On the CPU with ``torch_threads`` given, a ``ThreadTuner``
    picks each network call's threads, ``torch_threads`` or half of them. ``prepare_threads`` threads decode and
    letterbox the read batches ahead of the network, each on its own CUDA stream [default: 2 on a GPU, 1 on the
    CPU]. ``warm_threads`` threads make the first network call at each input shape a sample of a file list's
    headers shows, ahead of its batches (``ShapeWarmer``) [default: 4 on a GPU, none on the CPU]."""

    name = "fast"
    origin = "yolo"

    def __init__(self, model: str | os.PathLike | None = None, imgsz: int = 256, conf: float = 0.25,
                 iou: float = 0.7, max_det: int = 300, device: str = "auto", batch_size: int = 256,
                 half: bool | None = None, kpt_threshold: float = 0.5, read_threads: int = 8, read_processes: int = 0,
                 torch_decode: bool | None = None, cuda_graphs: bool | None = None, select_k: int = 64,
                 flush_after: int = 32, person: str = "largest", cpu_decode_share: float = 0.0,
                 decode_pixels: int = DECODE_PIXELS, torch_threads: int | None = None,
                 prepare_threads: int | None = None, warm_threads: int | None = None):
        from pipeline.devices import resolve_device

        self.model_path = Path(model) if model else default_model_path()
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        if cuda:
            use_cudnn_heuristics()
        self.imgsz, self.conf, self.iou, self.max_det = imgsz, conf, iou, max_det
        self.batch_size, self.kpt_threshold = batch_size, kpt_threshold
        self.half = cuda if half is None else half
        self.read_threads, self.read_processes = max(1, read_threads), max(0, read_processes)
        self.torch_decode = cuda if torch_decode is None else torch_decode
        if not 0.0 <= cpu_decode_share <= 1.0:
            raise PipelineError(f"cpu_decode_share must be between 0 and 1, got {cpu_decode_share}")
        self.cpu_decode_share = cpu_decode_share
        self.decode_pixels = max(1, decode_pixels)
        # on the CPU, given the worker's thread count, the network's threads follow the load (ThreadTuner)
        self.tuner = ThreadTuner(torch_threads) if not cuda and torch_threads else None
        self.torch_threads = torch_threads
        self.select_k = min(select_k, max_det)
        self.flush_after = max(1, flush_after)
        self.person = checked_rule(person)
        net = load_pose_model(self.model_path)
        self.net = net.to(self.device).half() if self.half else net.to(self.device)
        if not cuda:  # channels-last convolutions run 1.2-1.6x faster on the CPU; on the GPU cuDNN picks its layout
            self.net = self.net.to(memory_format=torch.channels_last)
        self.dtype = torch.float16 if self.half else torch.float32
        self.graphs = PersonGraphs(self, enabled=cuda if cuda_graphs is None else cuda_graphs and cuda)
        warm_threads = (WARM_THREADS if cuda else 0) if warm_threads is None else warm_threads
        self.warmer = ShapeWarmer(self.net, self.device, self.dtype, batch_size, imgsz, warm_threads) \
            if warm_threads > 0 else None
        self._reader: BatchReader | None = None
        self.prepare_threads = max(1, prepare_threads if prepare_threads is not None else 2 if cuda else 1)
        self._streams = [torch.cuda.Stream(self.device) for _ in range(self.prepare_threads)] if cuda else []

    @property
    def reader(self) -> BatchReader:
        """The file reader (its worker processes start on first use and live as long as the backend)."""
        if self._reader is None:
            self._reader = BatchReader(torch_decodable if self.torch_decode else None, self.read_processes,
                                       self.read_threads, pin_memory=self.device.type == "cuda",
                                       fit=functools.partial(letterbox_size, imgsz=self.imgsz),
                                       cpu_share=self.cpu_decode_share)
        return self._reader

    def warm_up(self, size: tuple[int, int] = (256, 176)) -> None:
        """Run the file path once, on one full batch per producer thread of generated ``size`` (height, width)
        images, and wait for it.

        A process's first batch pays for starting the reader processes and for the device's first calls (nvJPEG's
        and cuDNN's set-up, the kernels loaded, the CUDA graph of that input shape captured): seconds, against
        milliseconds for every later batch (``benchmarks/extract_startup.py``). ``pgpig-data extract`` calls this
        on each worker while it lists the files, so that the first partition does not wait for it. The batches mix
        a JPEG of ``size`` (copied into its input shape), a JPEG of twice that size (resized into the same shape)
        and a PNG of twice that size (decoded and resized by the readers), so that each producer thread meets every
        step of ``_prepare`` once. The graph of their input shape is captured on a thread of its own meanwhile (its
        cuDNN set-up is host time, as are the reader processes' start and the decoder's first call). Images of
        another size still capture their own graph at their first full batch."""
        box = letterbox_geometry(*size, self.imgsz)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgpig-graph-capture") as pool:
            capture = pool.submit(self.graphs.prepare, box.out_h, box.out_w)
            with tempfile.TemporaryDirectory(prefix="pgpig-warm-") as tmp:
                files = _warm_up_files(Path(tmp), size)
                paths = [files[i % len(files)] for i in range(self.batch_size * self.prepare_threads)]
                for _ in self.choose_files(paths):
                    pass
            capture.result()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def look_ahead(self, paths: list[str | os.PathLike]) -> None:
        """Start the shape warmer on ``paths``: the first calls at their input shapes run on its threads from now,
        beside whatever runs here (``pgpig-data extract`` gives the first task's files during the warm-up)."""
        if self.warmer is not None:
            self.warmer.start(paths)

    # -- images already decoded

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        """One ``Detections`` per BGR uint8 image ``(H, W, 3)``, in order, in that image's pixels."""
        groups = [(indices, bgr_to_tensor(np.stack([images[i] for i in indices]), self.device),
                   images[indices[0]].shape[:2]) for indices in shape_groups(enumerate(images))]
        return self._collect(self._launch(self._network_inputs(groups, [1.0] * len(images))), len(images))

    def _network_inputs(self, groups: Groups, scales: list[float]) -> Inputs:
        """Images by decoded size (``Groups``) → the network inputs by input shape, letterboxed (``letterbox_batch``)
        with their frames; ``scales`` the decode scale of each index."""
        by_input: dict[tuple[int, int], list[tuple[list[int], torch.Tensor, Letterbox]]] = {}
        for indices, images, (height, width) in groups:
            box = letterbox_geometry(height, width, self.imgsz)
            by_input.setdefault((box.out_h, box.out_w), []).append((indices, images, box))
        out = []
        for shape, items in by_input.items():
            positions = np.array([i for item in items for i in item[0]], dtype=np.int64)
            frames = torch.stack([row for idx, _, box in items
                                  for row in [_device_frame(shape, box, self.device)] * len(idx)])
            reduced = [j for j, i in enumerate(positions) if scales[i] != 1.0]
            if reduced:  # files decoded reduced (above max_pixels): rare
                frames[reduced, 6] = torch.tensor([scales[positions[j]] for j in reduced], device=self.device)
            x = letterbox_batch([images for _, images, _ in items], [placed(images, box) for _, images, box in items])
            out.append((positions, to_network_input(x, self.dtype), frames))
        return out

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """The network's raw output ``(B, 56, A)`` on letterboxed inputs ``x`` ``(B, 3, H, W)``; on the CPU in calls
        of at most ``CPU_CALL_PIXELS`` input pixels, channels-last."""
        parts: Iterable[torch.Tensor] = [x]
        if self.device.type != "cuda":
            calls = max(1, -(-x.shape[0] * x.shape[2] * x.shape[3] // CPU_CALL_PIXELS))  # as few as the budget allows
            step = -(-x.shape[0] // calls)  # and as even as can be
            parts = (x[start:start + step].contiguous(memory_format=torch.channels_last)
                     for start in range(0, x.shape[0], step))
        outputs = (self.net(part) for part in parts)
        preds = [out[0] if isinstance(out, (list, tuple)) else out for out in outputs]
        return preds[0] if len(preds) == 1 else torch.cat(preds)

    @torch.inference_mode()
    def _launch(self, inputs: Inputs) -> Launched:
        """Queue the network on each input shape, ``batch_size`` images at a time; returns ``(positions, raw output
        (B, 56, A), frames (B, 7))`` per call without waiting for the device."""
        launched = []
        for positions, x, frames in inputs:
            for start in range(0, len(positions), self.batch_size):
                stop = start + self.batch_size
                pred = self.network(x[start:stop])
                launched.append((list(positions[start:stop]), pred, frames[start:stop]))
        return launched

    @torch.inference_mode()
    def _collect(self, launched: Launched, n: int) -> list[Detections]:
        """Post-process launched network calls (this waits for them): one ``Detections`` per index below ``n``."""
        out: list[Detections] = [Detections.empty()] * n
        for indices, pred, frames in launched:
            det, index = postprocess(pred, self.conf, self.iou, self.max_det)
            det = to_image_pixels(det, index, frames[:, :6])
            results = split_detections(det.cpu().numpy(), index.cpu().numpy(), len(indices))
            for i, r in zip(indices, results, strict=True):
                out[i] = r
        return out

    # -- files: the hot loop of extraction

    def predict_files(self, paths: list[str | os.PathLike], max_pixels: int = 40_000_000
                      ) -> Iterator[tuple[Decoded, Detections | None]]:
        """``(Decoded, Detections)`` per path, in order, with every person; ``Detections`` is None when the file is
        not ``ok``. ``Decoded.image`` is always None; detections are in the decoded image's pixels (``Decoded.scale``).

        For extraction, ``choose_files`` gives the chosen person of every file much faster."""
        previous: list[tuple[Decoded, Detections | None]] = []
        for item in self._prepared(paths, max_pixels):
            launched = self._launch(self._receive(item))
            yield from previous
            results = self._collect(launched, len(item.read))
            r = item.read
            previous = [(Decoded(None, r.width[i], r.height[i], r.scale[i], r.digest[i], r.status[i], r.reason[i]),
                         det if r.status[i] == "ok" else None) for i, det in enumerate(results)]
        yield from previous

    def extract_files(self, paths: list[str | os.PathLike], max_pixels: int = 40_000_000,
                      names: list[str | None] | None = None) -> Iterator[PersonBatch]:
        """One ``PersonBatch`` per ``batch_size`` paths, in order (``KeypointSource``): ``choose_files``' persons as
        the keypoints table's rows."""
        for chosen in self.choose_files(paths, max_pixels):
            r = chosen.read
            yield person_batch(r.status, r.reason, r.width, r.height, r.digest, chosen.persons, chosen.boxes,
                               chosen.keypoints, chosen.scores, self.kpt_threshold)

    def choose_files(self, paths: list[str | os.PathLike], max_pixels: int = 40_000_000) -> Iterator[ChosenPersons]:
        """One ``ChosenPersons`` per ``batch_size`` paths, in order: each file's record and its chosen person.

        Each batch's images join a queue per network input shape (``_ShapeQueues``), so the network runs full
        batches whatever the files' sizes; the network, NMS and the person choice run as one CUDA graph per input
        shape (``PersonGraphs``) and only the count and the chosen person come back to the host. Images the
        fixed-shape choice cannot settle (``select_persons``) are post-processed exactly instead; the result is the
        same either way, and the same whatever an image's batch neighbours. A batch comes out once all its images
        are back, so up to ``flush_after`` batches may be held."""
        if self.warmer is not None:
            self.warmer.start(paths)
        queues = _ShapeQueues(self.batch_size, self.flush_after)
        opened: list[_Open] = []
        in_flight: list[_Call] = []
        for sequence, item in enumerate(self._prepared(paths, max_pixels)):
            batch = _Open(item.read)
            opened.append(batch)
            for positions, x, frames in self._receive(item):
                batch.waiting += len(positions)
                queues.put(_Slice(batch, positions, x, frames, sequence))
            launched = [self._launch_call(slices) for slices in queues.ready(sequence)]
            for call in in_flight:  # launched at the previous batch: done, or nearly, by now
                self._finish_call(call)
            in_flight = launched
            while opened and opened[0].waiting == 0:
                yield opened.pop(0).result()
        for call in in_flight + [self._launch_call(slices) for slices in queues.rest()]:
            self._finish_call(call)
        for batch in opened:
            yield batch.result()
        set_torch_threads(self.torch_threads)

    @torch.inference_mode()
    def _launch_call(self, slices: list[_Slice]) -> _Call:
        x = slices[0].x if len(slices) == 1 else torch.cat([s.x for s in slices])
        frames = slices[0].frames if len(slices) == 1 else torch.cat([s.frames for s in slices])
        with tuned_threads(self.tuner, x.shape[0] * x.shape[2] * x.shape[3]):  # a tuner on the CPU only: run by now
            packed, pred = self.graphs.run(x, frames)
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=self.device.type == "cuda")
        host.copy_(packed, non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
        return _Call(slices, frames, pred, host, event)

    @torch.inference_mode()
    def _finish_call(self, call: _Call) -> None:
        """Wait for a call and write its persons into the batches its images belong to."""
        if call.event is not None:
            call.event.synchronize()
        packed = call.host.numpy()
        usable = packed[:, 0] > 0
        redo = np.flatnonzero(~usable)
        exact: dict[int, Detections] = {}
        if len(redo):  # exactly, as predict_files does
            det, index = postprocess(call.pred[redo], self.conf, self.iou, self.max_det)
            det = to_image_pixels(det, index, call.frames[redo, :6])
            split = split_detections(det.cpu().numpy(), index.cpu().numpy(), len(redo))
            frames = call.frames[redo].cpu().numpy()
            exact = {int(j): (d.scaled(float(f[6])), full_width(f[4], f[6]))
                     for j, d, f in zip(redo, split, frames, strict=True)}
        start = 0
        for s in call.slices:
            rows = packed[start:start + len(s.positions)]
            found = (rows[:, 0] > 0) & (rows[:, 1] > 0)
            s.batch.persons[s.positions] = rows[:, 1].astype(np.int64)
            s.batch.rows[s.positions[found]] = rows[found, 2:]
            for j, position in enumerate(s.positions):
                if start + j not in exact:
                    continue
                d, width = exact[start + j]
                s.batch.persons[position] = len(d)
                chosen = choose_person(d.boxes, self.person, width)
                if chosen >= 0:
                    s.batch.rows[position] = np.concatenate([d.boxes[chosen], np.concatenate(
                        [d.keypoints[chosen], d.scores[chosen][:, None]], axis=1).ravel()])
            s.batch.waiting -= len(s.positions)
            start += len(s.positions)

    def _prepared(self, paths: list[str | os.PathLike], max_pixels: int) -> Iterator[_Batch]:
        """The batches of ``paths`` read (``self.reader``) and prepared (``_prepare``), in order. ``prepare_threads``
        producer threads take the read batches in turn, each preparing on its own CUDA stream, so that one batch's
        letterboxing overlaps another's decoding; they run at most ``prepare_threads + 2`` batches ahead of the
        consumer."""
        batches = [paths[i:i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        if not batches:
            return
        reads = iter(self.reader.read(batches, max_pixels))
        taking = threading.Lock()  # reads and numbers are taken together, so number k is the k-th batch read
        numbers = itertools.count()
        room = threading.Semaphore(self.prepare_threads + 2)
        arrived = threading.Condition()
        done: dict[int, _Batch | BaseException] = {}
        stop = threading.Event()
        running = [self.prepare_threads]

        def publish(number: int, item: _Batch | BaseException) -> None:
            with arrived:
                done[number] = item
                arrived.notify_all()

        def produce(stream: torch.cuda.Stream | None) -> None:
            try:
                while True:
                    room.acquire()
                    if stop.is_set():
                        return
                    with taking:
                        number = next(numbers)
                        try:
                            read = next(reads)
                        except StopIteration:
                            return
                        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                            publish(number, exc)
                            return
                    try:
                        publish(number, self._prepare(read, stream))
                    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                        publish(number, exc)
                        return
            finally:
                with arrived:
                    running[0] -= 1
                    arrived.notify_all()

        producers = [threading.Thread(target=produce, args=(stream,), name=f"fast-prefetch-{k}", daemon=True)
                     for k, stream in enumerate(self._streams or [None] * self.prepare_threads)]
        for producer in producers:
            producer.start()
        try:
            for number in range(len(batches)):
                with arrived:
                    while number not in done and running[0]:
                        arrived.wait()
                    item = done.pop(number, None)
                if item is None:
                    raise PipelineError(f"the file reader stopped after {number} of {len(batches)} batches")
                if isinstance(item, BaseException):
                    raise item
                room.release()
                yield item
        finally:
            stop.set()
            room.release(len(producers))  # wakes the producers waiting for room; they see the stop
            for producer in producers:
                producer.join()

    def _prepare(self, read: ReadBatch, stream: torch.cuda.Stream | None) -> _Batch:
        """Decode one batch's GPU-route JPEGs and move its CPU-decoded images to the device (a producer thread, on
        its ``stream`` when on CUDA). The JPEGs are decoded and letterboxed ``decode_pixels`` at a time
        (``pixel_chunks``), so that a batch of large photos holds a bounded share of the device's memory. A chunk
        the torch decoder refuses, or an image it returns in another shape, goes through ``pipeline.decode``
        instead, whose record then replaces the read one."""
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            blobs = read.jpeg_blobs()
            pixels = [read.height[i] * read.width[i] for i in read.jpeg_index]
            chunks = pixel_chunks(pixels, self.decode_pixels) or [range(0)]  # no JPEG: one empty chunk
            inputs: Inputs = []
            for k, chunk in enumerate(chunks):
                groups = self._decoded_groups(read, [read.jpeg_index[j] for j in chunk], [blobs[j] for j in chunk],
                                              stream)
                if k == len(chunks) - 1:  # the readers' images join the last chunk
                    groups += [(idx, bgr_to_tensor(images, self.device), size) for idx, images, size in read.cpu_groups]
                inputs += self._network_inputs(groups, read.scale) if groups else []
                del groups  # the chunk's decoded images are freed before the next chunk is decoded
            inputs = merged_inputs(inputs) if len(chunks) > 1 else inputs
            event = None
            if stream is not None:
                event = torch.cuda.Event()
                event.record(stream)
        return _Batch(read, inputs, event)

    def _decoded_groups(self, read: ReadBatch, positions: list[int], blobs: list[torch.Tensor],
                        stream: torch.cuda.Stream | None) -> Groups:
        """The JPEGs at ``positions`` decoded by the torch decoder in one call, by decoded size; those it refuses
        decoded by ``pipeline.decode``, whose record replaces the read one."""
        if not blobs:
            return []
        torch_images: dict[int, torch.Tensor] = {}
        cpu_images: dict[int, np.ndarray] = {}
        try:
            images = self._torch_decode(blobs, stream)
        except RuntimeError:  # nvJPEG fails the whole call for one file: the CPU decoder names it
            images = [None] * len(blobs)
        for i, blob, image in zip(positions, blobs, images, strict=True):
            if image is not None and tuple(image.shape) == (3, read.height[i], read.width[i]):
                torch_images[i] = image
                continue
            d = decode_bytes(bytes(blob.numpy()), os.path.basename(read.paths[i]), max_pixels=read.max_pixels)
            read.status[i], read.reason[i], read.scale[i] = d.status, d.reason, d.scale
            read.width[i], read.height[i] = d.width, d.height
            if d.ok:
                cpu_images[i] = d.image
        groups: Groups = [(idx, torch.stack([torch_images[i] for i in idx]), torch_images[idx[0]].shape[1:])
                          for idx in shape_groups(torch_images.items())]
        return groups + [(idx, bgr_to_tensor(np.stack([cpu_images[i] for i in idx]), self.device),
                          cpu_images[idx[0]].shape[:2]) for idx in shape_groups(cpu_images.items())]

    def _torch_decode(self, blobs: list[torch.Tensor], stream: torch.cuda.Stream | None = None) -> list[torch.Tensor]:
        """Batched ``decode_jpeg`` of TorchCodec on the device (nvJPEG on CUDA: its hardware backend where the card
        has JPEG engines, its CUDA one otherwise): ``(3, H, W)`` uint8 RGB tensors."""
        from torchcodec.decoders import decode_jpeg

        if stream is not None:  # the current stream here: nvJPEG may write before queued work has run
            stream.synchronize()
        images = decode_jpeg(blobs, mode="RGB", device=self.device)
        return list(images) if isinstance(images, (list, tuple)) else [images]

    def _receive(self, batch: _Batch) -> Inputs:
        """A prepared batch's network inputs, usable on the caller's stream once the producer's work is done."""
        if batch.event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(batch.event)
            for _, x, frames in batch.inputs:  # made on the producer's stream, used and freed on this one
                x.record_stream(current)
                frames.record_stream(current)
        return batch.inputs

    def close(self) -> None:
        """Stop the reader's worker processes and the shape warmer's threads."""
        if self.warmer is not None:
            self.warmer.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def pixel_chunks(pixels: list[int], budget: int) -> list[range]:
    """Consecutive runs of images, given each one's ``pixels``, whose sums stay within ``budget`` (an image larger
    than the budget alone in its run)."""
    chunks, start, total = [], 0, 0
    for j, n in enumerate(pixels):
        if j > start and total + n > budget:
            chunks.append(range(start, j))
            start, total = j, 0
        total += n
    if start < len(pixels):
        chunks.append(range(start, len(pixels)))
    return chunks


def merged_inputs(inputs: Inputs) -> Inputs:
    """Network inputs of one batch made in parts → one entry per input shape, in first-seen order."""
    by_shape: dict[tuple[int, ...], list] = {}
    for item in inputs:
        by_shape.setdefault(tuple(item[1].shape[2:]), []).append(item)
    return [items[0] if len(items) == 1 else (np.concatenate([p for p, _, _ in items]),
                                              torch.cat([x for _, x, _ in items]), torch.cat([f for _, _, f in items]))
            for items in by_shape.values()]


def bgr_to_tensor(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """BGR uint8 ``(N, H, W, 3)`` (an array, or a tensor, pinned for an asynchronous copy) → ``(N, 3, H, W)`` uint8
    RGB on ``device``."""
    batch = torch.as_tensor(images)
    batch = batch.to(device, non_blocking=batch.is_pinned())
    return batch.permute(0, 3, 1, 2).flip(1).contiguous()


def use_cudnn_heuristics() -> None:
    """Choose convolution kernels with cuDNN's own heuristics (its v7 interface) in this process, unless the
    environment already says which interface to use; it takes effect only before the process's first convolution.

    torch's default (the cuDNN v8 graph interface) builds execution plans for every convolution at each new input
    shape: about 1.1 s per input shape of YOLO11n-pose at batch 256 on an H200, 3.5 s for the first, against
    0.4 s and 1.1 s with the v7 heuristics, for the same speed afterwards (7-9 ms a batch;
    ``docs/fast-backend.md``). A crawl of many sizes meets several input shapes, each paid once."""
    os.environ.setdefault("TORCH_CUDNN_V8_API_DISABLED", "1")


def prime_device(device: str | torch.device) -> None:
    """Create a CUDA ``device``'s context, load cuDNN (one small convolution, after ``use_cudnn_heuristics``) and
    set up nvJPEG (TorchCodec's ``decode_jpeg`` of one small JPEG), so that a backend made meanwhile on another
    thread finds all three ready; nothing on the CPU. They are host work of a process's first CUDA calls, done
    without the interpreter's lock; nvJPEG's set-up (~0.7 s on an H100) is the process's, not the thread's
    (``benchmarks/cuda_start.py``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    use_cudnn_heuristics()
    with torch.inference_mode(), torch.cuda.device(device):
        x = torch.zeros(1, 3, 8, 8, dtype=torch.float16, device=device)
        torch.nn.functional.conv2d(x, torch.zeros(4, 3, 3, 3, dtype=torch.float16, device=device))
        _, data = cv2.imencode(".jpg", np.full((16, 16, 3), 114, np.uint8))
        try:
            from torchcodec.decoders import decode_jpeg

            decode_jpeg([torch.from_numpy(data.reshape(-1))], mode="RGB", device=device)
        except Exception:  # noqa: BLE001 - the backend's own first decode reports what fails, or reads on the CPU
            pass
        torch.cuda.synchronize(device)


def load_pose_model(path: str | os.PathLike) -> torch.nn.Module:
    """The YOLO-pose ``nn.Module`` of an ultralytics ``.pt``: fp32, fused, eval (``torch.load(weights_only=True)``)."""
    quiet_ultralytics()
    from ultralytics.nn.tasks import torch_safe_load

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: pose model weights not found (--model)")
    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=True)
    except Exception as exc:  # ultralytics raises many types for a bad file
        raise PipelineError(f"{path}: cannot load as YOLO-pose weights ({exc})") from exc
    net = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(net, torch.nn.Module):
        raise PipelineError(f"{path}: no model in this checkpoint; pass YOLO-pose weights (--model)")
    if getattr(net, "task", "pose") != "pose" or tuple(getattr(net, "kpt_shape", ())) != (KEYPOINTS, 3):
        raise PipelineError(f"{path}: not a COCO-17 YOLO-pose model (task {getattr(net, 'task', '?')})")
    if int(max(net.stride)) != STRIDE:
        raise PipelineError(f"{path}: model stride {int(max(net.stride))}, this backend assumes {STRIDE}")
    net = net.float()
    net = net.fuse(verbose=False) if hasattr(net, "fuse") else net
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()
