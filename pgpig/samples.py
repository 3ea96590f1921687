"""Sample pictures of training and ``pgpig generate``: image columns side by side as one uint8 grid, and PNG files.

A grid row is one pair; its columns are images in ``[-1, 1]`` (source, poses drawn grey or as PIDM's stick figure,
generated, target).
The grids of training and of ``pgpig generate --grid`` carry a header strip naming each column.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pgpig.data import POSE_STICK_CHANNELS
from schemas.files import atomic_path

__all__ = ["PAIR_LABELS", "SAMPLE_ROWS", "label_columns", "pair_grid", "pose_image", "sample_grid", "save_png"]

SAMPLE_ROWS = 4
"""Pairs shown in a training or validation sample grid."""

PAIR_LABELS = ("source", "source pose", "target pose", "generated", "target")
"""The column names of ``pair_grid``, its ``extra`` columns (named ``extra``) going before ``target``."""

# shorter words where a column is too narrow for the full one at the smallest font size (32 px wide columns)
_SHORT = {"source": "src", "target": "tgt", "generated": "gen.", "extra": "ext."}
_FONT_SIZES = range(14, 7, -1)  # pixels; 8 is the smallest that stays legible


def pose_image(pose_maps: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` pose maps in ``[0, 1]`` → ``(B, 3, H, W)`` in ``[-1, 1]``: PIDM's 20 channels
    (``render_pose_sticks``) show their RGB stick figure, channels 0-2; 18 joint channels show their max, grey."""
    if pose_maps.shape[1] == POSE_STICK_CHANNELS:
        return pose_maps[:, :3] * 2 - 1
    return (pose_maps.amax(dim=1, keepdim=True) * 2 - 1).expand(-1, 3, -1, -1)


def sample_grid(columns: list[torch.Tensor]) -> torch.Tensor:
    """``(B, 3, H, W)`` tensors in ``[-1, 1]`` side by side, one row per pair → ``(3, B H, K W)`` uint8."""
    rows = torch.cat([c.detach().float().cpu().clamp(-1, 1) for c in columns], dim=3)  # (B, 3, H, K W)
    grid = torch.cat(list(rows), dim=1)  # (3, B H, K W)
    return ((grid + 1) * 127.5).round().to(torch.uint8)


def label_columns(grid: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
    """``(3, H, K W)`` uint8 grid of ``K`` equal columns → ``(3, h + H, K W)``: a white header strip above it with
    each column's label in black, word-wrapped and centred. The font is the largest of 14 to 8 px at which every
    word fits its column; at 8 px a word that still does not fit is shortened (``source`` → ``src``)."""
    from PIL import Image, ImageDraw, ImageFont

    width = grid.shape[2] // len(labels)
    for size in _FONT_SIZES:
        font = ImageFont.load_default(size=size)
        words = [label.split() for label in labels]
        if all(font.getlength(word) <= width - 2 for column in words for word in column):
            break
    else:
        words = [[word if font.getlength(word) <= width - 2 else _SHORT.get(word, word) for word in label.split()]
                 for label in labels]
    lines = [_wrap(column, font, width - 2) for column in words]
    line_height = size + 2
    header = Image.new("RGB", (grid.shape[2], line_height * max(map(len, lines)) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    for k, column in enumerate(lines):
        for j, line in enumerate(column):
            draw.text((k * width + width / 2, 2 + j * line_height), line, fill=(0, 0, 0), font=font, anchor="ma")
    strip = torch.from_numpy(np.asarray(header).copy()).permute(2, 0, 1)
    return torch.cat([strip, grid], dim=1)


def _wrap(words: list[str], font, width: int) -> list[str]:
    """``words`` joined into lines no wider than ``width`` pixels (a word wider than that alone on its line)."""
    lines: list[str] = []
    for word in words:
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def pair_grid(source: torch.Tensor, source_pose: torch.Tensor, target_pose: torch.Tensor, generated: torch.Tensor,
              target: torch.Tensor, extra: list[torch.Tensor] | tuple = ()) -> torch.Tensor:
    """The sample grid of the first ``SAMPLE_ROWS`` pairs: source | source pose | target pose | generated | ``extra``
    columns (the family's own, e.g. GFLA's warped source) | target, under a header naming them (``PAIR_LABELS``)."""
    n = min(SAMPLE_ROWS, source.shape[0])
    grid = sample_grid([source[:n], pose_image(source_pose[:n]), pose_image(target_pose[:n]), generated[:n],
                        *(column[:n] for column in extra), target[:n]])
    return label_columns(grid, [*PAIR_LABELS[:-1], *["extra"] * len(extra), PAIR_LABELS[-1]])


def save_png(path: Path, grid: torch.Tensor) -> None:
    """``(3, H, W)`` uint8 → an RGB PNG, written atomically (parent folders made)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
