"""Training data: pairs from a shard set as tensors, and the pose representations rendered from keypoints.

``PairDataset`` decodes a shard set's pairs into ``[-1, 1]`` images with their ``(18, 2)`` keypoints (flips and the
recipe crop reproducible from ``(seed, epoch)``), ``make_loader`` deals them out; the pose maps are rendered on the
trainer's device from a batch's keypoints: PATN's Gaussians (``render_pose_maps``; Zhu et al., CVPR 2019,
arXiv:1904.03349, ``pose_utils.cords_to_map``), PG2's binary disks (``render_pose_disks``) and PG2's body mask
(``render_pg2_masks``; Ma et al., NeurIPS 2017, arXiv:1705.09368, from the official
charliememory/Pose-Guided-Person-Image-Generation ``datasets/convert_DF.py`` and ``convert_market.py``); PIDM's
stick figure and limb distances (``render_pose_sticks``; Bhunia et al., CVPR 2023, arXiv:2211.12500, from the
official ankanbhunia/PIDM ``data/fashion_data.py``) are drawn on the host with OpenCV, as the official.
Details and the reasons behind them: ``docs/data.md``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from pgpig.errors import TrainError
from pipeline.errors import PipelineError
from pipeline.shards import ShardSet
from schemas.keypoints import MISSING, NUM_KEYPOINTS, flip_keypoints
from schemas.manifest import MANIFEST_NAME
from schemas.patn import to_patn_frame

__all__ = [
    "PairDataset",
    "PairSampler",
    "crop_width",
    "PG2_MASK_LIMBS",
    "PIDM_COLOURS",
    "PIDM_LIMBS",
    "POSE_STICK_CHANNELS",
    "close_square",
    "make_loader",
    "render_pg2_masks",
    "render_pose_disks",
    "render_pose_maps",
    "render_pose_sticks",
    "start_epoch",
    "usable_cores",
]

# ---------------------------------------------------------------------------------------------------- pose maps


def _check_keypoints(keypoints: torch.Tensor) -> None:
    if keypoints.ndim != 3 or tuple(keypoints.shape[1:]) != (NUM_KEYPOINTS, 2):
        raise ValueError(f"expected keypoints (B, {NUM_KEYPOINTS}, 2), got {tuple(keypoints.shape)}")


def _visible(keypoints: torch.Tensor) -> torch.Tensor:
    """``(..., 18)`` bool: the contract's visibility, a joint is invisible exactly when it is ``(-1, -1)``."""
    return ~(keypoints == MISSING).all(dim=-1)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # compute in float32 at least, so float16/bfloat16 outputs are rounded once, not accumulated in low precision
    return torch.float64 if dtype == torch.float64 else torch.float32


def render_pose_maps(keypoints: torch.Tensor, size: tuple[int, int], sigma: float,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian pose maps of a batch of keypoints, on the keypoints' device.

    Args:
        keypoints: ``(B, 18, 2)`` pixel ``(x, y)``, integer coordinates at pixel centres; ``(-1, -1)`` invisible.
        size: ``(H, W)`` of the maps.
        sigma: Gaussian standard deviation in pixels (PATN uses 6 at 256x176 and 128x64).
        dtype: output dtype.

    Returns:
        ``(B, 18, H, W)``: channel ``j`` is ``exp(-((x - kx)^2 + (y - ky)^2) / (2 sigma^2))`` over pixel
        centres ``(x, y)``, exactly 1 at an integer keypoint; all zero for an invisible joint.
    """
    _check_keypoints(keypoints)
    h, w = int(size[0]), int(size[1])
    work = _work_dtype(dtype)
    kp = keypoints.to(work)
    xs = torch.arange(w, device=kp.device, dtype=work)
    ys = torch.arange(h, device=kp.device, dtype=work)
    # the 2-D Gaussian is separable: two (B, 18, W|H) factors and one outer product instead of an exp per pixel
    gx = torch.exp(-((xs - kp[..., 0:1]) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((ys - kp[..., 1:2]) ** 2) / (2 * sigma**2))
    gy = gy * _visible(kp)[..., None].to(work)
    return (gy[..., :, None] * gx[..., None, :]).to(dtype)


# PG2's ``limbSeq`` of ``_getPoseMask`` (1-based there) in 0-based OpenPose-18 indices
PG2_MASK_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (1, 16), (1, 17), (8, 11), (11, 5), (8, 2), (16, 17),
)


@functools.lru_cache(maxsize=16)
def _disk_offsets(radius: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, 2)`` integer ``(dy, dx)`` of the ``(2 radius + 1)^2`` square, and ``(K,)`` bool: inside the official
    'Solid' disk, ``dy^2 + dx^2 <= radius^2`` (a mask, not a selection: selecting makes the host wait for the GPU),
    made once per radius and device."""
    r = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dy.flatten(), dx.flatten()], dim=-1), (dy**2 + dx**2 <= radius**2).flatten()


def _stamp_disks(points: torch.Tensor, valid: torch.Tensor, size: tuple[int, int], radius: int) -> torch.Tensor:
    """Union of disks per row: ``points (N, P, 2)`` float64 ``(x, y)`` truncated to integers, ``valid (N, P)`` ->
    ``(N, H * W)`` float32 of 0 and 1. A scatter of maxima: no data-dependent shapes, no host sync."""
    h, w = size
    offsets, in_disk = _disk_offsets(radius, points.device)  # (K, 2), (K,)
    centre = torch.trunc(points).long()  # Python's int(), as the official code
    ys = centre[..., 1, None] + offsets[:, 0]  # (N, P, K)
    xs = centre[..., 0, None] + offsets[:, 1]
    inside = valid[..., None] & in_disk & (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    index = torch.where(inside, ys * w + xs, 0).flatten(1)
    out = torch.zeros(points.shape[0], h * w, device=points.device)
    return out.scatter_reduce_(1, index, inside.flatten(1).float(), reduce="amax")


def render_pose_disks(keypoints: torch.Tensor, size: tuple[int, int], radius: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """PG2's sparse 'Solid' pose maps: one binary disk per visible joint, on the keypoints' device.

    Args:
        keypoints: ``(B, 18, 2)`` pixel ``(x, y)``; ``(-1, -1)`` invisible.
        size: ``(H, W)`` of the maps.
        radius: disk radius in pixels (PG2: 4 at 128x64 and 256x256).
        dtype: output dtype.

    Returns:
        ``(B, 18, H, W)`` of 0 and 1: channel ``j`` is 1 at the pixels ``(trunc(y) + i, trunc(x) + k)`` with
        ``i^2 + k^2 <= radius^2`` inside the image; all zero for an invisible joint.
    """
    _check_keypoints(keypoints)
    h, w = int(size[0]), int(size[1])
    b = keypoints.shape[0]
    kp = keypoints.to(torch.float64).reshape(b * NUM_KEYPOINTS, 1, 2)
    maps = _stamp_disks(kp, _visible(kp), (h, w), int(radius))
    return maps.reshape(b, NUM_KEYPOINTS, h, w).to(dtype)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# PIDM's ``limbSeq`` of ``get_label_tensor`` (1-based there) in 0-based OpenPose-18 indices: the first 17 of its 19
# entries, the ones its loop draws (the last two, right shoulder to right ear and left shoulder to left ear, never are)
PIDM_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)

# the OpenPose palette of PIDM's ``colors``, joint j's circle and limb j's stick; the official canvas takes these
# triples as BGR, so in its RGB output they come out with red and blue swapped
PIDM_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

POSE_STICK_CHANNELS = 3 + len(PIDM_LIMBS)
"""Channels of ``render_pose_sticks``: the RGB stick figure and one distance map per limb."""


def _stick_polygon(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The official limb polygon from joint ``a`` to ``b`` (float64 ``(x, y)``): a filled ellipse of half-axes
    ``(int(length / 2), 4)`` around the midpoint, the arithmetic and truncations as PIDM writes them."""
    import cv2

    # the official names the x coordinates Y and the y coordinates X; the angle is that of b -> a in the image
    mid_x, mid_y = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
    length = ((a[1] - b[1]) ** 2 + (a[0] - b[0]) ** 2) ** 0.5
    angle = math.degrees(math.atan2(a[1] - b[1], a[0] - b[0]))
    return cv2.ellipse2Poly((int(mid_x), int(mid_y)), (int(length / 2), 4), int(angle), 0, 360, 1)


def _pidm_pose_image(kp: np.ndarray, out: np.ndarray) -> None:
    """PIDM's pose input of one skeleton, ``kp (18, 2)`` float64, written into ``out (20, H, W)`` uint8."""
    import cv2

    h, w = out.shape[1:]
    missing = kp == MISSING  # (18, 2): the official skips a joint when either coordinate is -1
    canvas = np.zeros((h, w, 3), np.uint8)
    for j in range(NUM_KEYPOINTS):
        if not missing[j].any():
            cv2.circle(canvas, (int(kp[j, 0]), int(kp[j, 1])), 4, PIDM_COLOURS[j], thickness=-1)
    for k, (a, b) in enumerate(PIDM_LIMBS):
        if missing[a].any() or missing[b].any():
            out[3 + k] = 255  # the distance to an empty limb is OpenCV's FLT_MAX, clipped
            continue
        polygon = _stick_polygon(kp[a], kp[b])
        stick = canvas.copy()
        cv2.fillConvexPoly(stick, polygon, PIDM_COLOURS[k])
        canvas = cv2.addWeighted(canvas, 0.4, stick, 0.6, 0)
        # the official's limb mask is 255 on the polygon (blending it with itself, 0.4 + 0.6, leaves it so), and
        # its distance transform runs on 255 minus that mask: this background
        background = np.full((h, w), 255, np.uint8)
        cv2.fillConvexPoly(background, polygon, 0)
        distance = cv2.distanceTransform(background, cv2.DIST_L1, 3)  # float32 integers, 0 on the limb
        # the official clip(distance / 3, 0, 255) truncated to uint8 is floor(d / 3) capped at 255; for an integer
        # d that is |d / 3 - 1 / 3| rounded to nearest (never a tie) and saturated: one OpenCV pass, not three.
        # Distances are capped at 766 (which gives 255) first: a limb wholly off the image leaves FLT_MAX
        # everywhere, which OpenCV 5.0's convertScaleAbs turns into 0 instead of saturating
        cv2.min(distance, 766.0, dst=distance)
        cv2.convertScaleAbs(distance, out[3 + k], 1 / 3, -1 / 3)
    out[:3] = canvas.transpose(2, 0, 1)[::-1]  # the BGR canvas as RGB


def render_pose_sticks(keypoints: torch.Tensor, size: tuple[int, int],
                       device: torch.device | str | None = None) -> torch.Tensor:
    """PIDM's 20-channel pose input (Bhunia et al., CVPR 2023, arXiv:2211.12500; the official ankanbhunia/PIDM
    ``data/fashion_data.py`` ``get_label_tensor``), drawn with OpenCV on the host, one skeleton at a time, as the
    official loader does, and returned on ``device`` (default: the keypoints'). Keypoints on a GPU are copied to
    the host first, which waits for the GPU's queued work: a training loop passes the loader's CPU keypoints and
    the GPU as ``device``, so the maps are drawn while the GPU runs the previous step.

    Channels 0-2: an RGB stick figure on black: a filled circle of radius 4 at ``(int(x), int(y))`` per joint,
    then for each limb of ``PIDM_LIMBS`` in turn a filled ellipse polygon (``cv2.ellipse2Poly`` around the
    truncated midpoint, half-axes ``(int(length / 2), 4)``, the truncated angle) blended over the figure so far at
    0.6 (``PIDM_COLOURS``, red and blue swapped as the official). Channels 3-19: per limb, the L1 distance
    (``cv2.distanceTransform``, 3x3 mask) from the limb's polygon divided by 3, truncated to uint8 (255 at most,
    and 255 everywhere for a limb not drawn). A joint with either coordinate -1 is skipped, and so is every limb
    touching it. Coordinates are the image's: PIDM's own keypoints come from PATN's 176-wide frame scaled to
    the image (its ``trans_keypoins``); here they are taken as given.

    Args:
        keypoints: ``(B, 18, 2)`` pixel ``(x, y)``; ``(-1, -1)`` invisible.
        size: ``(H, W)`` of the maps.
        device: where the maps go [default: the keypoints' device].

    Returns:
        ``(B, 20, H, W)`` float32 in ``[0, 1]``: the uint8 values over 255, as the official ``to_tensor``.
    """
    _check_keypoints(keypoints)
    h, w = int(size[0]), int(size[1])
    kp = keypoints.detach().to("cpu", torch.float64).numpy()
    out = np.empty((kp.shape[0], POSE_STICK_CHANNELS, h, w), np.uint8)
    threads = min(kp.shape[0], usable_cores())  # OpenCV releases the GIL, so threads draw several skeletons at once
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(_pidm_pose_image, kp, out))
    elif kp.shape[0]:
        _pidm_pose_image(kp[0], out[0])
    # uint8 crosses to the device, a quarter of the bytes. From pinned memory the copy to a GPU is queued behind
    # its work instead of waiting for it.
    device = keypoints.device if device is None else torch.device(device)
    maps = torch.from_numpy(out)
    if device.type != "cuda":
        return maps.to(device).float().div_(255)  # to_tensor's float32 division
    maps = maps.pin_memory().to(device, non_blocking=True)
    return _unit_table(device).index_select(0, maps.flatten().int()).view(maps.shape)


@functools.lru_cache(maxsize=16)
def _unit_table(device: torch.device) -> torch.Tensor:
    """``k / 255`` for ``k`` in 0..255 as float32 on ``device``, each the correctly rounded quotient that the
    host's float32 division gives. CUDA divides by a host scalar as a product with its reciprocal, which misses
    the quotient by one bit for 126 of the 256 values; here each is the float64 quotient rounded to float32, which is
    the float32 quotient for these values (the binary digits of ``k / 255`` repeat every 8 and never sit on a
    rounding tie). Made on the device, so that no copy from the host waits for the GPU."""
    return (torch.arange(256, dtype=torch.float64, device=device) / 255.0).float()


@functools.lru_cache(maxsize=16)
def _pg2_limb_joints(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first and second joints of ``PG2_MASK_LIMBS`` as index tensors on ``device``, copied there once (a copy
    from a Python list waits for the GPU)."""
    return (torch.tensor([a for a, _ in PG2_MASK_LIMBS], device=device),
            torch.tensor([b for _, b in PG2_MASK_LIMBS], device=device))


def _limb_sample_window(a: torch.Tensor, b: torch.Tensor, n: torch.Tensor, size: tuple[int, int],
                        radius: int) -> tuple[torch.Tensor, int]:
    """Which samples ``i`` of the limbs ``a -> b`` (``(B, L, 2)`` float64, ``n (B, L)`` samples each) can stamp a
    pixel of the image: ``(first (B, L) float64, count)``, the samples ``first .. first + count - 1``.

    A sample's disk reaches the image only when the sample lies in the image grown by ``radius + 1`` on every side,
    a box the segment crosses in one piece (slab clipping gives ``t`` of entry and exit). That piece is at most the
    box's diagonal long and samples are at least ``radius`` apart, so ``count`` (the diagonal over ``radius``, plus
    slack for rounding at both ends) is fixed by the image: sizing by the longest limb, ``int(n.max())``, would
    make the host wait for the GPU. Samples in the window but outside the box stamp nothing."""
    h, w = size
    d = b - a
    enter = torch.zeros_like(n, dtype=torch.float64)
    leave = torch.ones_like(enter)
    for axis, (lo, hi) in enumerate(((-radius - 1, w + radius), (-radius - 1, h + radius))):
        p, dp = a[..., axis], d[..., axis]
        flat = dp == 0
        step = torch.where(flat, 1.0, dp)
        t1, t2 = (lo - p) / step, (hi - p) / step
        inside = (p >= lo) & (p <= hi)  # what decides a segment parallel to this axis
        enter = torch.where(flat, torch.where(inside, enter, math.inf), torch.maximum(enter, torch.minimum(t1, t2)))
        leave = torch.where(flat, torch.where(inside, leave, -math.inf), torch.minimum(leave, torch.maximum(t1, t2)))
    # a limb that misses the box starts at 0 (its samples stamp nothing); one sample of slack before the entry
    first = (torch.floor(torch.where(enter <= leave, enter, 0.0) * n) - 1).clamp_min(0)
    count = math.ceil(math.hypot(h + 2 * radius + 2, w + 2 * radius + 2) / radius) + 4
    return first, count


def render_pg2_masks(keypoints: torch.Tensor, size: tuple[int, int], radius: int) -> torch.Tensor:
    """PG2's pose mask ``M`` of its masked L1 (official ``_getPoseMask``, ``docs/data.md``), on the keypoints' device.

    Along each limb of ``PG2_MASK_LIMBS`` whose two joints are visible, disks of ``radius`` (as
    ``render_pose_disks``) at both joints and at ``a + (b - a) * i / n`` for ``i = 1 .. n - 1``,
    ``n = int(|b - a| / radius)`` (none when ``n <= 1``); then a 5x5 square dilation followed by a 5x5 square
    erosion (pixels outside the image ignored, which is what the official reflect padding amounts to for a 5x5
    square). Without a host sync: each limb's samples are a window of a fixed length (``_limb_sample_window``)
    that holds every sample whose disk can reach the image, however far outside it the joints lie.

    Args:
        keypoints: ``(B, 18, 2)`` pixel ``(x, y)``; ``(-1, -1)`` invisible.
        size: ``(H, W)``.
        radius: disk radius in pixels (PG2: 4).

    Returns:
        ``(B, 1, H, W)`` float32 of 0 and 1.
    """
    _check_keypoints(keypoints)
    h, w = int(size[0]), int(size[1])
    radius = int(radius)
    kp = keypoints.to(torch.float64)
    vis = _visible(kp)
    limb_a, limb_b = _pg2_limb_joints(kp.device)
    a, b = kp[:, limb_a], kp[:, limb_b]  # (B, L, 2)
    usable = vis[:, limb_a] & vis[:, limb_b]  # (B, L)
    n = torch.floor(torch.sqrt(((a - b) ** 2).sum(-1)) / radius).long()  # (B, L)
    n = torch.where(usable, n, 0)
    first, samples = _limb_sample_window(a, b, n, (h, w), radius)
    i = first[..., None] + torch.arange(samples, device=kp.device, dtype=torch.float64)  # (B, L, S)
    # the official r0 + (r1 - r0) * i / n, in this order of operations (float64, as Python's floats)
    between = a[:, :, None] + (b - a)[:, :, None] * i[..., None] / n.clamp_min(1)[..., None, None].double()
    between_ok = usable[..., None] & (i >= 1) & (i < n[..., None]) & (n[..., None] > 1)  # (B, L, S)
    points = torch.cat([a[:, :, None], b[:, :, None], between], dim=2).flatten(1, 2)  # (B, L * (S + 2), 2)
    valid = torch.cat([usable[..., None], usable[..., None], between_ok], dim=2).flatten(1, 2)
    dense = _stamp_disks(points, valid, (h, w), radius).reshape(-1, 1, h, w)
    return close_square(dense, 5).to(torch.float32)


def close_square(mask: torch.Tensor, side: int) -> torch.Tensor:
    """Morphological closing of ``(B, C, H, W)`` 0/1 masks with a ``side`` x ``side`` square (odd ``side``): dilation,
    then erosion, pixels outside the image ignored (max-pooling pads with -inf), which equals scikit-image's
    reflected border for a max or min over a symmetric window. The PG2 and PATN body masks both end with it."""
    pad = side // 2
    dilated = F.max_pool2d(mask, side, stride=1, padding=pad)
    return -F.max_pool2d(-dilated, side, stride=1, padding=pad)


# ---------------------------------------------------------------------------------------------------- crop


def crop_width(images: torch.Tensor, keypoints: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``margin`` columns from each side: the DeepFashion 256x256 → 256x176 recipe crop (margin 40).

    Args:
        images: ``(B, C, H, W)``.
        keypoints: ``(B, 18, 2)`` in the images; ``(-1, -1)`` invisible.
        margin: columns cut on the left and on the right.

    Returns:
        ``(images (B, C, H, W - 2 margin), keypoints (B, 18, 2))``: visible keypoints move by ``-margin`` in x;
        those outside ``[0, W - 2 margin - 1]`` become ``(-1, -1)``. A view of ``images``, new keypoints.
    """
    _check_keypoints(keypoints)
    w = images.shape[-1]
    margin = int(margin)
    if margin < 0 or 2 * margin >= w:
        raise ValueError(f"crop margin {margin} does not fit images {w} px wide")
    out_w = w - 2 * margin
    kp = keypoints.clone()
    kp[..., 0] -= margin
    hidden = ~_visible(keypoints) | (kp[..., 0] < 0) | (kp[..., 0] > out_w - 1)
    kp[hidden] = MISSING
    return images[..., margin:w - margin], kp


# ---------------------------------------------------------------------------------------------------- data set


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 → ``(3, H, W)`` float32 in ``[-1, 1]``, contiguous (a single image fed to a model runs in
    the layout a loader's batch has)."""
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return chw.to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


class PairDataset(Dataset):
    """The pairs of one shard set: item ``k`` is pair ``k`` (``ShardSet.pairs[k]``) as tensors.

    Each item is a dict: ``source``, ``target`` ``(3, H, W)`` float32 in ``[-1, 1]``; ``source_kp``,
    ``target_kp`` ``(18, 2)`` float32 in those images (``(-1, -1)`` invisible); ``source_index``,
    ``target_index`` (global image indices, int64); ``flipped`` (bool). ``H, W`` are the stored size, with
    ``2 * crop_margin`` fewer columns.

    Args:
        shards: a shard-set folder or an open ``ShardSet``.
        flip: mirror each pair with probability 0.5, decided by ``(seed, epoch, k)``.
        crop_margin: columns cut from each side (40 for the DeepFashion recipe), 0 for none.
        seed: seed of the flips.
        verify: check every file the manifest lists against its size and sha256 first (``ShardSet(verify=True)``;
            no image is decoded) and refuse a damaged set; only when ``shards`` is a folder.
    """

    def __init__(self, shards: str | os.PathLike | ShardSet, flip: bool = False, crop_margin: int = 0,
                 seed: int = 0, verify: bool = False):
        if not isinstance(shards, ShardSet):
            folder = Path(shards)
            if not (folder / MANIFEST_NAME).is_file():
                split = folder.name if folder.name in ("train", "test") else "train"
                raise TrainError(f"{folder}: no shard set (no {MANIFEST_NAME}: never written, or its pair run did "
                                 f"not finish); build it with `pgpig-data extract RAW` then `pgpig-data pair --split "
                                 f"{split}`, or point --shards at the folder holding {split}/")
            try:
                shards = ShardSet(shards, verify=verify)
            except PipelineError as exc:
                # the set exists but a file differs from its manifest: it can still be used as it is
                hint = " (or pass --skip-verify to train on it as it is)" if verify else ""
                raise TrainError(f"{exc}{hint}") from None
        self.shards = shards
        self.pairs = shards.pairs
        if len(self.pairs) == 0:
            raise TrainError(f"{shards.folder}: the shard set holds no pairs; re-run `pgpig-data pair` with "
                             "looser filters or more images")
        width = shards.size[1]
        if crop_margin < 0 or 2 * crop_margin >= width:
            raise TrainError(f"crop_margin {crop_margin} does not fit the {width} px wide images of "
                             f"{shards.folder}; use 0..{(width - 1) // 2}")
        self.flip = bool(flip)
        self.crop_margin = int(crop_margin)
        self.seed = int(seed)
        self.size: tuple[int, int] = (shards.size[0], width - 2 * self.crop_margin)
        # shared memory: persistent DataLoader workers hold copies of this object and must see set_epoch
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose flips the next items get (call before iterating a loader over it)."""
        self._epoch.fill_(int(epoch))

    def flipped(self, k: int, epoch: int | None = None) -> bool:
        """Whether pair ``k`` is mirrored in ``epoch`` (default: the current one)."""
        if not self.flip:
            return False
        epoch = self.epoch if epoch is None else int(epoch)
        return bool(np.random.default_rng([self.seed, epoch, int(k)]).random() < 0.5)

    def _image(self, index: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
        sample = self.shards[index]
        image, keypoints = sample.image, sample.keypoints
        if self.crop_margin:
            m = self.crop_margin
            image = image[:, m:image.shape[1] - m]
            keypoints = to_patn_frame(keypoints, m, image.shape[1])
        if flip:
            image = image[:, ::-1]
            keypoints = flip_keypoints(keypoints, image.shape[1])
        return image, keypoints

    def __getitem__(self, k: int) -> dict[str, Any]:
        k = int(k)
        source, target = (int(i) for i in self.pairs[k])
        flip = self.flipped(k)
        source_image, source_kp = self._image(source, flip)
        target_image, target_kp = self._image(target, flip)
        return {
            "source": to_tensor(source_image),
            "target": to_tensor(target_image),
            "source_kp": torch.from_numpy(np.ascontiguousarray(source_kp, np.float32)),
            "target_kp": torch.from_numpy(np.ascontiguousarray(target_kp, np.float32)),
            "source_index": source,
            "target_index": target,
            "flipped": flip,
        }


# ---------------------------------------------------------------------------------------------------- loading


class PairSampler(Sampler[int]):
    """Item order of one epoch, from ``(seed, epoch)`` alone; with ``world_size`` > 1, this rank's share.

    Shuffled orders are ``torch.randperm`` under a ``torch.Generator`` seeded from ``(seed, epoch)``, so an
    epoch's order does not depend on the epochs before it (resuming at epoch ``e`` gives epoch ``e``'s order).
    Across ranks the permutation is padded by wrapping to a multiple of ``world_size`` and dealt round-robin,
    as ``DistributedSampler`` does.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
            generator = torch.Generator().manual_seed(int(state >> np.uint64(1)))
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        total = len(self) * self.world_size
        if total > self.n:
            order = torch.cat([order, order[: total - self.n]])
        return iter(order[self.rank::self.world_size].tolist())


def _worker_init(_worker: int) -> None:
    # each worker decodes one image at a time; OpenCV's own thread pool would only oversubscribe the cores
    import cv2

    cv2.setNumThreads(1)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader whose batches depend only on ``(seed, epoch)``, whatever ``num_workers``.

    Call ``start_epoch(loader, epoch)`` before iterating each epoch. A shuffled (training) loader drops the ragged
    last batch, an evaluation one keeps it; memory is pinned when CUDA is available; workers persist across epochs.
    """
    sampler = PairSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": 2, "worker_init_fn": _worker_init}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), drop_last=shuffle, **extra)


def start_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of a ``make_loader`` loader's sampler and of its data set (order and flips)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
