"""Slow, obvious references of ``pgpig.data``'s pose renderers, which ``tests/pgpig/test_data.py`` compares them
with: plain loops over the batch, the joints and the pixels, in float64."""

from __future__ import annotations

import math

import numpy as np

from pgpig.data import PG2_MASK_LIMBS
from schemas.keypoints import MISSING, NUM_KEYPOINTS


def pose_disks_reference(keypoints: np.ndarray, size: tuple[int, int], radius: int) -> np.ndarray:
    """Slow, obvious ``render_pose_disks``: the official ``_getSparseKeypoint`` loops. ``(B, 18, H, W)`` float64."""
    out = np.zeros((len(keypoints), NUM_KEYPOINTS, *size))
    for i, person in enumerate(np.asarray(keypoints, np.float64)):
        for j, (x, y) in enumerate(person):
            if x == MISSING and y == MISSING:
                continue
            disk_reference(out[i, j], y, x, radius)
    return out


def disk_reference(plane: np.ndarray, r: float, c: float, radius: int) -> None:
    """Set the pixels at integer offsets ``(i, j)``, ``i^2 + j^2 <= radius^2``, from ``(int(r), int(c))`` to 1."""
    r, c = int(r), int(c)
    for i in range(-radius, radius + 1):
        for j in range(-radius, radius + 1):
            if math.sqrt(i * i + j * j) <= radius and 0 <= r + i < plane.shape[0] and 0 <= c + j < plane.shape[1]:
                plane[r + i, c + j] = 1.0


def pg2_masks_reference(keypoints: np.ndarray, size: tuple[int, int], radius: int) -> np.ndarray:
    """Slow, obvious ``render_pg2_masks``: the official ``_getPoseMask`` loops, then a closing by explicit 5x5
    minima and maxima over the pixels inside the image. ``(B, 1, H, W)`` float64."""
    h, w = size
    out = np.zeros((len(keypoints), 1, h, w))
    for k, person in enumerate(np.asarray(keypoints, np.float64)):
        dense = np.zeros((h, w))
        for ja, jb in PG2_MASK_LIMBS:
            (c0, r0), (c1, r1) = person[ja], person[jb]
            if (c0 == MISSING and r0 == MISSING) or (c1 == MISSING and r1 == MISSING):
                continue
            disk_reference(dense, r0, c0, radius)
            disk_reference(dense, r1, c1, radius)
            n = int(math.sqrt((r0 - r1) ** 2 + (c0 - c1) ** 2) / radius)
            for i in range(1, n if n > 1 else 1):
                disk_reference(dense, r0 + (r1 - r0) * i / n, c0 + (c1 - c0) * i / n, radius)
        for window in (np.max, np.min):  # dilation, then erosion
            dense = np.array([[window(dense[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3]) for x in range(w)]
                              for y in range(h)])
        out[k, 0] = dense
    return out


def pose_maps_reference(keypoints: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """Slow, obvious ``render_pose_maps``: a loop over batch, joints and pixels. ``(B, 18, H, W)`` float64."""
    h, w = size
    out = np.zeros((len(keypoints), NUM_KEYPOINTS, h, w))
    for i, person in enumerate(np.asarray(keypoints, np.float64)):
        for j, (kx, ky) in enumerate(person):
            if kx == MISSING and ky == MISSING:
                continue
            for y in range(h):
                for x in range(w):
                    out[i, j, y, x] = math.exp(-((x - kx) ** 2 + (y - ky) ** 2) / (2 * sigma**2))
    return out
