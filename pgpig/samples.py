"""Sample pictures of training and ``pgpig generate``: image columns side by side as one uint8 grid, and PNG files.

A grid row is one pair; its columns are images in ``[-1, 1]`` (source, poses drawn grey, generated, target).
"""

from __future__ import annotations

from pathlib import Path

import torch

from schemas.files import atomic_path

__all__ = ["SAMPLE_ROWS", "pair_grid", "pose_image", "sample_grid", "save_png"]

SAMPLE_ROWS = 4
"""Pairs shown in a training or validation sample grid."""


def pose_image(pose_maps: torch.Tensor) -> torch.Tensor:
    """``(B, 18, H, W)`` in ``[0, 1]`` → ``(B, 3, H, W)`` grey in ``[-1, 1]``: the max over the joint channels."""
    return (pose_maps.amax(dim=1, keepdim=True) * 2 - 1).expand(-1, 3, -1, -1)


def sample_grid(columns: list[torch.Tensor]) -> torch.Tensor:
    """``(B, 3, H, W)`` tensors in ``[-1, 1]`` side by side, one row per pair → ``(3, B H, K W)`` uint8."""
    rows = torch.cat([c.detach().float().cpu().clamp(-1, 1) for c in columns], dim=3)  # (B, 3, H, K W)
    grid = torch.cat(list(rows), dim=1)  # (3, B H, K W)
    return ((grid + 1) * 127.5).round().to(torch.uint8)


def pair_grid(source: torch.Tensor, source_pose: torch.Tensor, target_pose: torch.Tensor, generated: torch.Tensor,
              target: torch.Tensor, extra: list[torch.Tensor] | tuple = ()) -> torch.Tensor:
    """The sample grid of the first ``SAMPLE_ROWS`` pairs: source | source pose | target pose | generated | ``extra``
    columns (the family's own, e.g. GFLA's warped source) | target."""
    n = min(SAMPLE_ROWS, source.shape[0])
    return sample_grid([source[:n], pose_image(source_pose[:n]), pose_image(target_pose[:n]), generated[:n],
                        *(column[:n] for column in extra), target[:n]])


def save_png(path: Path, grid: torch.Tensor) -> None:
    """``(3, H, W)`` uint8 → an RGB PNG, written atomically (parent folders made)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
