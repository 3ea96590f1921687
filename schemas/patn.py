"""The PATN file formats, kept as import/export formats so the papers' published lists work as they are.

Zhu et al., "Progressive Pose Attention Transfer for Person Image Generation", CVPR 2019
(arXiv 1904.03349) published, for DeepFashion In-shop and Market-1501:

- an annotation CSV: header ``name:keypoints_y:keypoints_x``, then one line per image
  ``<flat name>: [y0, ..., y17]: [x0, ..., x17]`` with integer pixels and -1 for a missing joint,
  in the OpenPose-18 order of ``schemas.keypoints``;
- a pair CSV: header ``from,to``, then ``<source flat name>,<target flat name>`` per line.

DeepFashion images are named by a flat name built from their ``img/`` path:
``img/WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg`` → ``fashionWOMENBlouses_Shirtsid0000000102_1front.jpg``
and its annotations are in the 256×176 crop of the 256×256 image (``DEEPFASHION_CROP_X`` px cut from each
side), while Market-1501 names and annotations are the raw files' own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.errors import SchemaError
from schemas.files import atomic_write
from schemas.keypoints import MISSING, NUM_KEYPOINTS

ANNOTATION_HEADER = "name:keypoints_y:keypoints_x"
PAIRS_HEADER = "from,to"
DEEPFASHION_CROP_X = 40
"""Pixels cut from the left and right of a 256-wide DeepFashion image to make PATN's 176-wide frame."""



def deepfashion_margin(width: int) -> int:
    """Columns cut from each side of a DeepFashion raw image to make PATN's frame (40 at width 256)."""
    return int(round(DEEPFASHION_CROP_X * width / 256))


_DF_PATH = re.compile(r"^(?:.*/)?(MEN|WOMEN)/([^/]+)/id_(\d{8})/(\d+)_(\d+)_([^/_]+)\.(jpe?g|png)$", re.IGNORECASE)
_DF_FLAT = re.compile(r"^fashion(MEN|WOMEN)(.+)id(\d{8})(\d+)_(\d+)([^_/]+)\.(jpe?g|png)$", re.IGNORECASE)


def deepfashion_flat_name(relpath: str) -> str:
    """PATN's flat name of a DeepFashion In-shop image path (``img/`` or ``img_highres/`` relative path)."""
    m = _DF_PATH.match(relpath.replace(os.sep, "/"))
    if not m:
        raise SchemaError(
            f"{relpath!r} is not a DeepFashion In-shop path like img/WOMEN/Dresses/id_00000002/02_1_front.jpg"
        )
    gender, category, item, clothing, view_no, view, ext = m.groups()
    return f"fashion{gender}{category}id{item}{clothing}_{view_no}{view}.{ext}"


def parse_deepfashion_flat_name(name: str) -> dict[str, str]:
    """Split a PATN DeepFashion flat name into ``gender, category, item, clothing, view_no, view, ext``.

    The inverse of ``deepfashion_flat_name`` up to the root folder: ``deepfashion_relpath`` rebuilds it.
    """
    m = _DF_FLAT.match(name)
    if not m:
        raise SchemaError(
            f"{name!r} is not a PATN DeepFashion flat name like fashionWOMENDressesid0000000202_1front.jpg"
        )
    keys = ("gender", "category", "item", "clothing", "view_no", "view", "ext")
    return dict(zip(keys, m.groups(), strict=True))


def deepfashion_relpath(name: str, root: str = "img") -> str:
    """The In-shop path of a PATN flat name, under ``root`` (``img`` or ``img_highres``)."""
    p = parse_deepfashion_flat_name(name)
    return (
        f"{root}/{p['gender']}/{p['category']}/id_{p['item']}/"
        f"{p['clothing']}_{p['view_no']}_{p['view']}.{p['ext']}"
    )


@dataclass
class Annotations:
    """Keypoints of a PATN annotation CSV.

    ``keypoints`` is ``(N, 18, 2)`` float32 ``(x, y)`` in the CSV's own frame, ``(-1, -1)`` where the
    CSV has -1 in either coordinate.
    """

    names: list[str]
    keypoints: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


def _parse_int_list(text: str, where: str, what: str) -> list[int]:
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise SchemaError(f"{where}: {what} must be a bracketed list like [12, -1, ...], got {text[:40]!r}")
    try:
        values = [int(v) for v in text[1:-1].split(",")]
    except ValueError:
        raise SchemaError(f"{where}: {what} holds a value that is not an integer: {text[:60]!r}") from None
    if len(values) != NUM_KEYPOINTS:
        raise SchemaError(f"{where}: {what} has {len(values)} values, expected {NUM_KEYPOINTS}")
    return values


def _check_name(name: str, where: str) -> str:
    """A PATN name is a flat file name, a key matched against the images found, never a path to open: one with
    a separator, a NUL or a ``..`` (``../x.jpg``, ``/etc/passwd``, ``C:\\x``) is refused, naming file and line."""
    if "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
        raise SchemaError(f"{where}: {name!r} is a path, not a PATN image name (a flat file name such as "
                          "0001_c1s1_001051_00.jpg or fashionWOMENDressesid0000041606_7additional.jpg)")
    return name


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SchemaError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_annotations(path: str | os.PathLike) -> Annotations:
    """Read a PATN annotation CSV; a malformed line raises ``SchemaError`` naming file and line."""
    path = Path(path)
    names: list[str] = []
    rows: list[list[int]] = []
    seen: dict[str, int] = {}
    lines = _read_lines(path, "annotation CSV")
    if not lines or lines[0].strip().replace(" ", "") != ANNOTATION_HEADER:
        raise SchemaError(f"{path}:1: expected the header {ANNOTATION_HEADER!r}")
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        parts = line.split(":")
        if len(parts) != 3:
            raise SchemaError(f"{where}: expected 'name: [y...]: [x...]' (3 fields separated by ':'), got {len(parts)}")
        name = parts[0].strip()
        if not name:
            raise SchemaError(f"{where}: empty image name")
        _check_name(name, where)
        if name in seen:
            raise SchemaError(f"{where}: {name!r} already annotated on line {seen[name]}")
        seen[name] = lineno
        ys = _parse_int_list(parts[1], where, "keypoints_y")
        xs = _parse_int_list(parts[2], where, "keypoints_x")
        names.append(name)
        rows.append(xs + ys)
    arr = np.asarray(rows, dtype=np.float32).reshape(-1, 2, NUM_KEYPOINTS).transpose(0, 2, 1).copy()
    missing = (arr == MISSING).any(axis=-1)
    arr[missing] = MISSING
    return Annotations(names=names, keypoints=arr)


def _int_list(values: np.ndarray) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def integer_keypoints(xy: np.ndarray) -> np.ndarray:
    """``(..., 18, 2)`` keypoints → the integers a PATN CSV holds for them, int64: each coordinate rounded to the
    nearest pixel, and a joint missing or rounding to a negative coordinate ``(-1, -1)`` (PATN's ``calPCKH_*.py``
    reads ``-1`` in either coordinate as missing, so no visible joint may carry one). Rounds in ``xy``'s dtype."""
    rounded = np.rint(xy)
    missing = (xy == MISSING).all(axis=-1) | (rounded < 0).any(axis=-1)
    return np.where(missing[..., None], MISSING, rounded).astype(np.int64)


def format_annotation_line(name: str, xy: np.ndarray) -> str:
    """One CSV line for ``(18, 2)`` keypoints; coordinates rounded to integer pixels, missing → -1
    (``integer_keypoints`` of the float32 keypoints)."""
    if ":" in name or "\n" in name:
        raise SchemaError(f"image name {name!r} cannot be written to a PATN CSV (contains ':' or a newline)")
    ints = integer_keypoints(np.asarray(xy, dtype=np.float32))
    return f"{name}: {_int_list(ints[:, 1])}: {_int_list(ints[:, 0])}"


def write_annotations(path: str | os.PathLike, names: Iterable[str], keypoints: np.ndarray) -> None:
    """Write a PATN annotation CSV atomically (``keypoints``: ``(N, 18, 2)`` in the CSV's frame)."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    names = list(names)
    if keypoints.shape != (len(names), NUM_KEYPOINTS, 2):
        raise SchemaError(f"{path}: expected keypoints ({len(names)}, {NUM_KEYPOINTS}, 2), got {keypoints.shape}")
    with atomic_write(path, "w") as f:
        f.write(ANNOTATION_HEADER + "\n")
        for name, xy in zip(names, keypoints, strict=True):
            f.write(format_annotation_line(name, xy) + "\n")


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read a PATN pair CSV (``from,to``; a leading pandas index column is tolerated)."""
    path = Path(path)
    lines = _read_lines(path, "pair CSV")
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    if header[-2:] != ["from", "to"] or len(header) > 3:
        raise SchemaError(f"{path}:1: expected the header {PAIRS_HEADER!r}")
    width = len(header)
    pairs = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [v.strip() for v in line.split(",")]
        if len(fields) != width or not fields[-1] or not fields[-2]:
            raise SchemaError(f"{path}:{lineno}: expected {width} comma-separated fields, got {line[:80]!r}")
        pairs.append((_check_name(fields[-2], f"{path}:{lineno}"), _check_name(fields[-1], f"{path}:{lineno}")))
    return pairs


def write_pairs(path: str | os.PathLike, pairs: Iterable[tuple[str, str]]) -> None:
    """Write a PATN pair CSV atomically."""
    with atomic_write(path, "w") as f:
        f.write(PAIRS_HEADER + "\n")
        for source, target in pairs:
            if "," in source or "," in target or "\n" in source + target:
                raise SchemaError(f"{path}: pair ({source!r}, {target!r}) contains ',' or a newline")
            f.write(f"{source},{target}\n")


def to_patn_frame(xy: np.ndarray, dx: float, width: int | None = None) -> np.ndarray:
    """Raw frame → PATN crop frame: shift visible keypoints by ``-dx`` in x.

    With ``width`` (of the crop), keypoints that fall outside ``[0, width)`` become invisible, as they
    would have been for a detector run on the cropped image.
    """
    out = _shift_x(xy, -dx)
    if width is not None:
        outside = (out[..., 0] < 0) | (out[..., 0] > width - 1)
        out[outside] = MISSING
    return out


def from_patn_frame(xy: np.ndarray, dx: float) -> np.ndarray:
    """PATN crop frame → raw frame: shift visible keypoints by ``+dx`` in x."""
    return _shift_x(xy, dx)


def _shift_x(xy: np.ndarray, dx: float) -> np.ndarray:
    out = np.array(xy, dtype=np.float32, copy=True)
    vis = ~(out == MISSING).all(axis=-1)
    out[..., 0] = np.where(vis, out[..., 0] + dx, MISSING)
    return out
