"""Draw 18-keypoint skeletons on images, to check annotations and extractions by eye."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from schemas.keypoints import LIMBS, NUM_KEYPOINTS, visible_mask


def _palette(n: int) -> list[tuple[int, int, int]]:
    # evenly spaced saturated hues, BGR for OpenCV
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / n, 1.0, 1.0)
        out.append((int(b * 255), int(g * 255), int(r * 255)))
    return out


LIMB_COLOURS = _palette(len(LIMBS))
JOINT_COLOURS = _palette(NUM_KEYPOINTS)


def draw_skeleton(image: np.ndarray, xy: np.ndarray, thickness: int | None = None) -> np.ndarray:
    """Return a copy of ``image`` (H, W, 3 uint8 BGR) with the limbs and joints of ``xy`` (18, 2) drawn.

    Invisible keypoints ``(-1, -1)`` and limbs touching them are left out. Line width follows the
    image size unless ``thickness`` is given.
    """
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    t = thickness or max(1, round(min(h, w) / 64))
    vis = visible_mask(xy)
    pts = np.rint(np.asarray(xy, dtype=np.float64)).astype(int)
    for (a, b), colour in zip(LIMBS, LIMB_COLOURS, strict=True):
        if vis[a] and vis[b]:
            cv2.line(out, tuple(pts[a]), tuple(pts[b]), colour, t, cv2.LINE_AA)
    for i in np.flatnonzero(vis):
        cv2.circle(out, tuple(pts[i]), t + 1, JOINT_COLOURS[i], -1, cv2.LINE_AA)
    return out
