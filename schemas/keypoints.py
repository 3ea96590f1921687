"""The OpenPose-18 keypoint order shared by PG2, PATN, XingGAN, GFLA and DPTN, and its link to COCO-17.

Every table, shard and model input in pgpig uses this order. Coordinates are float32 pixels ``(x, y)``;
an invisible keypoint is ``(-1, -1)`` and keeps its score.

The index order is the one of the OpenPose COCO model that produced the published DeepFashion and
Market-1501 annotations (Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part Affinity
Fields", CVPR 2017): PATN's code labels 14-17 ``Leye, Reye, Lear, Rear``, but its own limb list joins
16 to the right shoulder (2), so 14/16 are the right eye/ear, as listed here.
"""

from __future__ import annotations

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "neck",
    "r_shoulder",
    "r_elbow",
    "r_wrist",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
    "r_hip",
    "r_knee",
    "r_ankle",
    "l_hip",
    "l_knee",
    "l_ankle",
    "r_eye",
    "l_eye",
    "r_ear",
    "l_ear",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
MISSING = -1.0

# Pairs of joints joined by a limb: used for drawing and for PG2-style pose masks.
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5),            # neck to shoulders
    (2, 3), (3, 4),            # right arm
    (5, 6), (6, 7),            # left arm
    (1, 8), (8, 9), (9, 10),   # right leg (through the torso side)
    (1, 11), (11, 12), (12, 13),  # left leg
    (1, 0),                    # neck to nose
    (0, 14), (14, 16),         # right eye, right ear
    (0, 15), (15, 17),         # left eye, left ear
    (2, 16), (5, 17),          # shoulders to ears, as in the OpenPose/PATN limb list
)

# Horizontal flip swaps every left joint with its right twin.
FLIP_PERMUTATION: tuple[int, ...] = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)

# COCO-17 index feeding each OpenPose-18 index; the neck (None) is the midpoint of the shoulders.
COCO17_NAMES: tuple[str, ...] = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
    "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)
COCO17_TO_OPENPOSE18: tuple[int | None, ...] = (
    0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3,
)
_COCO_L_SHOULDER, _COCO_R_SHOULDER = 5, 6
_SOURCE = np.array([0 if s is None else s for s in COCO17_TO_OPENPOSE18])
_NECK = 1


def coco17_to_openpose18(
    xy: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Convert COCO-17 keypoints to the OpenPose-18 order, for one person or a batch.

    Args:
        xy: ``(17, 2)`` or ``(N, 17, 2)`` pixel coordinates ``(x, y)``.
        scores: ``(17,)`` or ``(N, 17)`` confidences.
        threshold: a keypoint is visible when its score is at least this.

    Returns:
        ``(xy18, scores18)`` of shapes ``(..., 18, 2)`` float32 and ``(..., 18)`` float32. Invisible
        keypoints are ``(-1, -1)`` with their score kept. The neck is the shoulder midpoint with the
        smaller shoulder score, so it is visible exactly when both shoulders are.
    """
    xy = np.asarray(xy, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if xy.shape[-2:] != (17, 2) or scores.shape != xy.shape[:-1]:
        raise ValueError(f"expected xy (..., 17, 2) and scores (..., 17), got {xy.shape} and {scores.shape}")
    out_xy = xy[..., _SOURCE, :].copy()
    out_scores = scores[..., _SOURCE].copy()
    shoulders = xy[..., [_COCO_L_SHOULDER, _COCO_R_SHOULDER], :]
    out_xy[..., _NECK, :] = shoulders.mean(axis=-2)
    out_scores[..., _NECK] = np.minimum(scores[..., _COCO_L_SHOULDER], scores[..., _COCO_R_SHOULDER])
    out_xy[out_scores < threshold] = MISSING
    return out_xy, out_scores


def visible_mask(xy: np.ndarray) -> np.ndarray:
    """``(..., 18)`` bool: True where a keypoint has coordinates (is not ``(-1, -1)``)."""
    xy = np.asarray(xy)
    return ~np.all(xy == MISSING, axis=-1)


def flip_keypoints(xy: np.ndarray, width: int) -> np.ndarray:
    """Mirror keypoints for a horizontally flipped image of ``width`` pixels, swapping left and right.

    ``x`` maps to ``width - 1 - x`` (pixel centres of a flipped array); invisible keypoints stay
    ``(-1, -1)``. Works on ``(18, 2)`` or ``(..., 18, 2)``.
    """
    xy = np.asarray(xy, dtype=np.float32)
    vis = visible_mask(xy)
    out = xy[..., FLIP_PERMUTATION, :].copy()
    out[..., 0] = np.where(vis[..., FLIP_PERMUTATION], width - 1 - out[..., 0], MISSING)
    return out
