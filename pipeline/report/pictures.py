"""Image tiles of a report: the raw image with its 18-keypoint skeleton (``pipeline.overlay``), drawn with OpenCV.

A tile is a fixed ``TILE`` × ``TILE`` canvas with the image fitted and centred, and below it a bar of 18 cells,
one per joint in the OpenPose-18 order: the joint's colour when it is visible, a dark cell with a cross when
it is missing. An image that cannot be shown (no raw root, file gone, unreadable) becomes a placeholder tile;
the caption beside it says why. Nothing here raises for a bad file.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.overlay import JOINT_COLOURS, draw_skeleton
from schemas.keypoints import MISSING, NUM_KEYPOINTS, visible_mask

TILE = 176
"""Side of the square the image is fitted into, in pixels."""
BAR = 14
"""Height of the joint bar under the image."""
MAX_ZOOM = 6.0
"""Small images are enlarged at most this much (a 1x1 image stays a dot, not a full tile)."""
DISPLAY_PIXELS = 4_000_000
"""Huge raw images are decoded reduced to about this many pixels: the tile is small anyway."""
BACKGROUND = (40, 40, 40)


@dataclass
class Tile:
    """One picture of the report and what its caption says."""

    png: bytes
    image: str
    """Path of the image (relative to the raw root, or the shard set's)."""
    lines: list[str]
    """Caption lines (status, reason, persons, missing joints)."""
    problem: bool = False
    """True when the image could not be shown (a placeholder)."""


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR array
        raise RuntimeError("OpenCV could not encode a report tile")
    return buf.tobytes()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def joint_bar(visible: np.ndarray, width: int) -> np.ndarray:
    """``(BAR, width, 3)`` strip of 18 cells: joint colour when visible, dark with a cross when missing."""
    bar = np.full((BAR, width, 3), BACKGROUND, np.uint8)
    cell = width // NUM_KEYPOINTS
    x0 = (width - cell * NUM_KEYPOINTS) // 2
    for j in range(NUM_KEYPOINTS):
        a, b = x0 + j * cell + 1, x0 + (j + 1) * cell - 1
        if visible[j]:
            bar[2:BAR - 2, a:b] = JOINT_COLOURS[j]
        else:
            cv2.line(bar, (a, 2), (b - 1, BAR - 3), (150, 150, 150), 1)
            cv2.line(bar, (a, BAR - 3), (b - 1, 2), (150, 150, 150), 1)
    return bar


def skeleton_tile(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """The tile of ``image`` (H, W, 3 uint8 BGR) with the skeleton ``xy`` (18, 2, in ``image``'s pixels) drawn.

    Returns ``(TILE + BAR, TILE, 3)`` uint8 BGR.
    """
    h, w = image.shape[:2]
    zoom = min(TILE / max(h, w), MAX_ZOOM)
    nh, nw = max(1, round(h * zoom)), max(1, round(w * zoom))
    interpolation = cv2.INTER_NEAREST if zoom >= 1 else cv2.INTER_AREA
    small = cv2.resize(image, (nw, nh), interpolation=interpolation)
    xy = np.asarray(xy, np.float32)
    vis = visible_mask(xy)
    # pixel centres move with the scale, as in cv2.resize
    scaled = np.where(vis[:, None], (xy + 0.5) * np.array([nw / w, nh / h], np.float32) - 0.5, MISSING)
    drawn = draw_skeleton(small, scaled, thickness=max(1, round(min(nh, nw) / 48)))
    canvas = np.full((TILE, TILE, 3), BACKGROUND, np.uint8)
    top, left = (TILE - nh) // 2, (TILE - nw) // 2
    canvas[top:top + nh, left:left + nw] = drawn
    return np.concatenate([canvas, joint_bar(vis, TILE)], axis=0)


def placeholder_tile(label: str, visible: np.ndarray | None = None) -> np.ndarray:
    """A grey tile with a cross and a short ``label``, for an image that cannot be shown."""
    canvas = np.full((TILE, TILE, 3), (90, 90, 90), np.uint8)
    cv2.line(canvas, (8, 8), (TILE - 9, TILE - 9), (130, 130, 130), 2)
    cv2.line(canvas, (8, TILE - 9), (TILE - 9, 8), (130, 130, 130), 2)
    size, _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    x = max(2, (TILE - size[0]) // 2)
    cv2.rectangle(canvas, (x - 3, TILE // 2 - 14), (x + size[0] + 3, TILE // 2 + 6), (50, 50, 50), -1)
    cv2.putText(canvas, label, (x, TILE // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    vis = np.zeros(NUM_KEYPOINTS, bool) if visible is None else visible
    return np.concatenate([canvas, joint_bar(vis, TILE)], axis=0)


def raw_tile(raw_root: Path | None, image: str, xy: np.ndarray, width: int | None, height: int | None,
             caption: list[str]) -> Tile:
    """The tile of one keypoints-table row: its raw file decoded as extraction decoded it (upright, EXIF applied,
    huge files reduced), the keypoints (in the full-resolution upright frame) drawn on it.

    A file that cannot be shown gives a placeholder whose caption names the reason; a file whose size no longer
    matches the table is drawn, with a warning (its keypoints may belong to another image).
    """
    from pipeline.decode import decode_image
    from schemas.errors import SchemaError
    from schemas.files import safe_join

    vis = visible_mask(xy)
    if raw_root is None:
        return Tile(png_bytes(placeholder_tile("no raw root", vis)), image,
                    [*caption, "raw root unknown: pass --raw"], problem=True)
    try:
        path = safe_join(raw_root, image, "image")
    except SchemaError as exc:
        return Tile(png_bytes(placeholder_tile("bad path", vis)), image, [*caption, str(exc)], problem=True)
    decoded = decode_image(path, max_pixels=DISPLAY_PIXELS)
    if not decoded.ok:
        label = "missing" if "not found" in (decoded.reason or "") else "unreadable"
        lines = caption if decoded.reason in caption else [*caption, str(decoded.reason)]
        return Tile(png_bytes(placeholder_tile(label, vis)), image, lines, problem=True)
    lines = list(caption)
    if width and height and (decoded.width, decoded.height) != (width, height):
        lines.append(f"warning: file is {decoded.width}x{decoded.height}, table says {width}x{height} "
                     "(changed since extraction?)")
    scale = decoded.scale
    shown = np.where(vis[:, None], (np.asarray(xy, np.float32) + 0.5) * scale - 0.5, MISSING)
    return Tile(png_bytes(skeleton_tile(decoded.image, shown)), image, lines)


def shard_tile(rgb: np.ndarray, xy: np.ndarray, image: str, caption: list[str]) -> Tile:
    """The tile of one stored shard image (``(H, W, 3)`` RGB, keypoints in the stored frame)."""
    return Tile(png_bytes(skeleton_tile(np.ascontiguousarray(rgb[..., ::-1]), xy)), image, caption)


def missing_names(xy: np.ndarray, names: tuple[str, ...]) -> str:
    """Short caption of the missing joints of ``xy`` (18, 2)."""
    gone = [names[j] for j in np.flatnonzero(~visible_mask(xy))]
    if not gone:
        return "all 18 joints visible"
    if len(gone) > 4:
        return f"{len(gone)} joints missing: {', '.join(gone[:4])}, …"
    return "missing: " + ", ".join(gone)


def joint_colour_hex(j: int) -> str:
    b, g, r = JOINT_COLOURS[j]
    return f"#{r:02x}{g:02x}{b:02x}"

