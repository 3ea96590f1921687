"""Files for the tests to feed the pipeline: real photos turned into every kind of odd file a raw tree holds.

Shared by the decode, extract and fault tests (``tests/`` is put on ``sys.path`` by ``conftest.py``).
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def cv2_bytes(image: np.ndarray, ext: str, *params: int) -> bytes:
    ok, encoded = cv2.imencode(ext, image, list(params))
    assert ok
    return encoded.tobytes()


def pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def with_orientation(bgr: np.ndarray, orientation: int) -> bytes:
    im = Image.fromarray(bgr[..., ::-1].copy())
    exif = im.getexif()
    exif[0x0112] = orientation
    return pil_bytes(im, "JPEG", quality=95, exif=exif.tobytes())


def solid_jpeg(width: int, height: int, bgr: tuple[int, int, int]) -> bytes:
    """A valid baseline JPEG of any size in ~1 ms per 10 MB, without the encoder ever seeing the full image.

    With a restart marker after every MCU each MCU is byte-aligned and starts from a fresh DC predictor, so all
    MCUs of a solid colour are the same bytes: encode a 32×32 tile, patch the frame size, repeat one MCU.
    """
    tile = np.full((32, 32, 3), bgr, np.uint8)
    data = cv2_bytes(tile, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_RST_INTERVAL, 1)
    sof, sos = data.index(b"\xff\xc0"), data.index(b"\xff\xda")
    scan = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    mcu = data[scan:].split(b"\xff\xd0")[0]
    header = bytearray(data[:scan])
    header[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    count = math.ceil(width / 16) * math.ceil(height / 16)  # 4:2:0, OpenCV's default: 16×16 MCUs
    eight = b"".join(mcu + bytes([0xFF, 0xD0 + i]) for i in range(8))
    body = eight * (count // 8) + b"".join(mcu + bytes([0xFF, 0xD0 + i]) for i in range(count % 8))
    return bytes(header) + body[:-2] + b"\xff\xd9"  # the last MCU ends the scan, not a restart


def png_claiming(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR (with a valid CRC) claims another size: a decompression bomb's header."""
    data = bytearray(cv2_bytes(np.zeros((2, 2, 3), np.uint8), ".png"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def bad_file_tree(root: Path, photo: np.ndarray) -> dict[str, str]:
    """A folder-layout tree (``<identity>/<file>``) of odd files made from ``photo`` (BGR, one or more people).

    Returns ``{relative path: expected status}``; ``ok`` files hold the photo's people, upright.
    """
    h, w = photo.shape[:2]
    rgb = Image.fromarray(photo[..., ::-1].copy())
    alpha = np.dstack([photo, np.full((h, w), 255, np.uint8)])
    alpha[:, : w // 8, 3] = 0  # a transparent strip
    jpeg = cv2_bytes(photo, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 92)
    files = {
        "person/photo.jpg": (jpeg, "ok"),
        "person/Zoë photo 01.jpg": (jpeg, "ok"),
        # stored rotated, EXIF orientation 6 says "turn 90° clockwise": the upright image is the photo
        "person/exif-rotated.jpg": (with_orientation(np.ascontiguousarray(np.rot90(photo, 1)), 6), "ok"),
        "person/alpha.png": (cv2_bytes(alpha, ".png"), "ok"),
        "person/sixteen-bit.png": (cv2_bytes(photo.astype(np.uint16) * 257, ".png"), "ok"),
        "person/grey.jpg": (cv2_bytes(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), ".jpg"), "ok"),
        "person/cmyk.jpg": (pil_bytes(rgb.convert("CMYK"), "JPEG", quality=92), "ok"),
        "odd/empty.jpg": (b"", "unreadable"),
        "odd/truncated.jpg": (jpeg[: len(jpeg) // 2], "unreadable"),
        "odd/random.jpg": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "unreadable"),
        "odd/page.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "unreadable"),
        "odd/huge.jpg": (solid_jpeg(20000, 20000, (90, 120, 150)), "no_person"),
        "odd/one-pixel.png": (cv2_bytes(np.zeros((1, 1, 3), np.uint8), ".png"), "no_person"),
        "odd/notes.txt": (b"not an image", "skipped"),
    }
    for rel, (data, _) in files.items():
        write(root / rel, data)
    (root / "odd" / "folder.jpg").mkdir()  # a directory named like an image: not a file, not listed
    return {rel: status for rel, (_, status) in files.items()}


def animated_gif(photo: np.ndarray, frames: int = 3) -> bytes:
    """An animated GIF whose first frame is ``photo`` (BGR) and whose later frames are dark: decode takes the first."""
    first = Image.fromarray(photo[..., ::-1].copy())
    rest = [Image.fromarray((photo[..., ::-1] // 4).copy()) for _ in range(frames - 1)]
    return pil_bytes(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0)


def more_bad_files(root: Path, photo: np.ndarray) -> dict[str, str]:
    """What ``bad_file_tree`` lacks, added to the same folder-layout tree: ``{relative path: expected status}``.

    An animated GIF, names with spaces, a newline and non-ASCII letters, a symbolic-link loop and a file whose
    permissions forbid reading it (mode 000: "unreadable" for a normal user; root reads it anyway, so a test run
    as root has to simulate the refusal). The folder ``odd/folder.jpg`` of ``bad_file_tree`` is the directory
    named like an image; it is not a file and gets no row.
    """
    jpeg = cv2_bytes(photo, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 92)
    files = {
        "person/animated.gif": (animated_gif(photo), "ok"),
        "person/a name with  spaces .jpg": (jpeg, "ok"),
        "person/new\nline.jpg": (jpeg, "ok"),
        "person/日本語 – ñandú.jpg": (jpeg, "ok"),
        "odd/locked.jpg": (jpeg, "unreadable"),
    }
    for rel, (data, _) in files.items():
        write(root / rel, data)
    (root / "odd" / "locked.jpg").chmod(0)
    loop = root / "odd" / "loop.jpg"
    loop.symlink_to("loop.jpg")  # a link to itself: ELOOP when followed
    return {**{rel: status for rel, (_, status) in files.items()}, "odd/loop.jpg": "skipped"}
