"""Our re-implementation of the pictures PATN's ``test.py`` writes (read from its ``util/util.py`` and its data
loader, written again here), shared by ``tests/pgpig/test_panel_targets.py`` and ``benchmarks/official_eval.py``."""

from __future__ import annotations

import numpy as np
import torch

from schemas.keypoints import MISSING


def official_tensor(image: np.ndarray) -> torch.Tensor:
    """An RGB uint8 image as the official loader hands it to the model: torchvision ``ToTensor`` (``/ 255``) then
    ``Normalize((0.5,) * 3, (0.5,) * 3)``, float32, (3, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
    return (x - 0.5) / 0.5


def tensor2im(x: torch.Tensor) -> np.ndarray:
    """``util/util.py`` ``tensor2im`` of one (3, H, W) image: ``(x + 1) / 2 * 255`` in float32, then ``astype(uint8)``
    (truncation)."""
    return ((np.transpose(x.float().numpy(), (1, 2, 0)) + 1) / 2.0 * 255.0).astype(np.uint8)


def pose_picture(keypoints: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A stand-in for ``draw_pose_from_map``: coloured 3x3 dots on black (the metric scripts never read it)."""
    h, w = size
    picture = np.zeros((h, w, 3), np.uint8)
    for j, (x, y) in enumerate(keypoints):
        if x == MISSING or y == MISSING:
            continue
        xi, yi = int(round(x)), int(round(y))
        picture[max(yi - 1, 0):yi + 2, max(xi - 1, 0):xi + 2] = (255, 15 * j, 255 - 15 * j)
    return picture
