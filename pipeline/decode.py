"""Read one raw image file for pose extraction: its bytes → an upright 8-bit BGR array, or the reason why not.

``decode_image(path)`` and ``decode_bytes(data)`` never raise for a bad file: a missing, unreadable, empty,
truncated, foreign or oversized file comes back as a ``Decoded`` with ``status="unreadable"`` and a one-line
``reason``, so one file never stops an extraction run. The bytes are read once (``read_image_bytes``), hashed
(``content_hash``) and decoded from memory, the format sniffed from the bytes: JPEG and opaque PNG by OpenCV, the
rest by Pillow; EXIF orientation applied exactly once, transparency composited onto white, 16-bit samples scaled,
images above ``max_pixels`` decoded reduced or refused from their header. ``docs/decode.md`` gives each rule and why.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import sys
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from pipeline.errors import PipelineError
from schemas.files import sha256_bytes

__all__ = ["JPEG_MAGIC", "PNG_MAGIC", "Decoded", "JpegHeader", "decode_bytes", "decode_image", "exif_orientation",
           "jpeg_complete", "jpeg_header", "read_image_bytes"]

OK = "ok"
UNREADABLE = "unreadable"

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
# Pillow formats identified by a magic number; headerless ones (TGA, ...) would "decode" random bytes.
PIL_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "JPEG2000", "PPM", "ICO", "QOI", "PSD")
JPEG_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                8: cv2.IMREAD_REDUCED_COLOR_8}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".jp2")


@dataclass(frozen=True, eq=False)
class Decoded:
    """One decoded file, or why it could not be.

    ``image`` is ``(H', W', 3)`` uint8 BGR, upright; ``width``/``height`` are the upright full-resolution size,
    the frame keypoints are expressed in; keypoints found on ``image`` are divided by ``scale``.
    """

    image: np.ndarray | None
    width: int | None
    height: int | None
    scale: float
    content_hash: str | None
    status: str
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.status == OK


class _Unreadable(Exception):
    """Internal: carries the one-line reason up to ``decode_bytes``, which turns it into a record."""


def decode_image(path: str | os.PathLike, max_pixels: int = 40_000_000, max_side: int = 4096) -> Decoded:
    """Read and decode one file (the rules: ``docs/decode.md``). Never raises for a bad file."""
    data = read_image_bytes(path)
    if isinstance(data, Decoded):
        return data
    return decode_bytes(data, os.path.basename(os.fsdecode(path)), max_pixels=max_pixels, max_side=max_side)


def read_image_bytes(path: str | os.PathLike) -> bytes | Decoded:
    """The bytes of a regular file, or the unreadable ``Decoded`` that says why not. Never raises."""
    try:
        # os.open + fstat + read: one path lookup and no buffered-file object (reading a 20 KB file costs about
        # a tenth of its decode, so the syscalls saved show in images/s).
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it has no effect on regular files.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return _unreadable("cannot read: file not found", None)
    except (IsADirectoryError, PermissionError) as e:
        if isinstance(e, IsADirectoryError) or os.path.isdir(path):  # Windows refuses directories this way
            return _unreadable("cannot read: is a directory", None)
        return _unreadable("cannot read: permission denied", None)
    except OSError as e:
        return _unreadable(_read_error(e), None)
    except ValueError as e:  # a NUL byte in the path
        return _unreadable(_one_line(f"cannot read: invalid path ({e})"), None)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return _unreadable("cannot read: is a directory", None)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            return _unreadable("cannot read: not a regular file", None)
        return _read_all(fd, st.st_size)
    except OSError as e:
        return _unreadable(_read_error(e), None)
    finally:
        os.close(fd)


def _read_all(fd: int, size: int) -> bytes:
    """Read to the end: one read for the whole file, one more to see the end (a single chunk is not copied)."""
    chunks = []
    while chunk := os.read(fd, max(size + 1, 1 << 16)):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_error(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "cannot read: permission denied"
    return f"cannot read: {(e.strerror or str(e)).lower()}"


def decode_bytes(data: bytes, name: str = "", max_pixels: int = 40_000_000, max_side: int = 4096) -> Decoded:
    """Decode an image file's bytes; ``name`` (the file name) only labels a "not an image" reason.

    The format comes from the bytes. Never raises for bad bytes; raises ``PipelineError`` for bad limits.
    """
    if max_pixels < 1 or max_side < 1:
        raise PipelineError(f"decode limits must be positive, got max_pixels={max_pixels}, max_side={max_side}")
    data = bytes(data)
    digest = sha256_bytes(data)
    if not data:
        return _unreadable("zero-byte file", digest)
    try:
        if data.startswith(JPEG_MAGIC):
            image, width, height = _decode_jpeg(data, max_pixels, max_side)
        elif data.startswith(PNG_MAGIC):
            image, width, height = _decode_png(data, max_pixels)
        else:
            image, width, height = _decode_pil(data, name, max_pixels)
        image, scale = _fit(image, width, height, max_side)
    except _Unreadable as e:
        return _unreadable(str(e), digest)
    except MemoryError:
        return _unreadable("out of memory while decoding", digest)
    except Exception as e:  # noqa: BLE001 - the contract is a record, never an exception, for any bad file
        return _unreadable(_one_line(f"cannot decode: {type(e).__name__}: {e}"), digest)
    return Decoded(image, width, height, scale, digest, OK, None)


# --- JPEG: header walk, completeness, cv2 decode (reduced when large), Pillow as a fallback ---------------


@dataclass(frozen=True)
class JpegHeader:
    width: int  # as stored, before EXIF orientation
    height: int
    frame: int  # offset of the frame (SOF) marker: the completeness walk starts there
    exif: tuple[int, int] | None  # (start, end) of the TIFF data of an EXIF APP1 before the frame header

    def orientation(self, data: bytes) -> int:
        """The EXIF orientation (1..8) of the JPEG ``data`` this header was read from; 1 without an EXIF block."""
        return 1 if self.exif is None else exif_orientation(data[self.exif[0]:self.exif[1]])


def jpeg_header(data: bytes) -> JpegHeader:
    """Walk the marker segments up to the frame header (SOF): its size, and where the EXIF block is.

    Stops at the frame header rather than the first scan: the Huffman tables in between are of no use here.
    """
    n, pos = len(data), 2
    exif = None
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 4 > n:
            raise _Unreadable("truncated or corrupt JPEG (ends inside the header)")
        marker = data[pos + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # fill byte or standalone marker
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:
            raise _Unreadable("truncated or corrupt JPEG (end-of-image before any scan)")
        seglen = int.from_bytes(data[pos + 2:pos + 4], "big")
        if seglen < 2:
            raise _Unreadable("truncated or corrupt JPEG (bad segment length)")
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > n:
                raise _Unreadable("truncated or corrupt JPEG (ends inside the frame header)")
            height, width = struct.unpack_from(">HH", data, pos + 5)
            if width == 0 or height == 0:
                raise _Unreadable(f"corrupt or unsupported JPEG (frame header says {width}×{height})")
            return JpegHeader(width, height, pos, exif)
        if marker == 0xDA:
            raise _Unreadable("truncated or corrupt JPEG (no frame header)")
        if marker == 0xE1 and exif is None and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            exif = (pos + 10, min(pos + 2 + seglen, n))
        pos += 2 + seglen


def jpeg_complete(data: bytes, start: int) -> bool:
    """True when an end-of-image marker follows the scans; ``start`` is a marker segment before the first scan.

    Inside entropy-coded data every 0xFF is followed by 0x00 (stuffing) or a restart marker, so the first
    other marker after the scans is found by hopping from 0xFF to 0xFF (C speed), segments skipped by length.
    """
    if data.endswith(JPEG_EOI):  # nearly every file: no walk
        return True
    n, pos = len(data), start
    while True:  # at a marker segment with a length (SOS, DHT, DQT, DRI, APPn, COM ...)
        if pos + 4 > n:
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                return False
            marker = data[pos + 1]
            if marker == 0xFF:
                pos += 1
            elif marker == 0x00 or 0xD0 <= marker <= 0xD7:
                pos += 2
            else:
                break
        if marker == 0xD9:
            return True


def exif_orientation(tiff: bytes) -> int:
    """EXIF orientation (1..8) from the TIFF block of an APP1 segment; 1 when absent or malformed."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            tag, kind = struct.unpack_from(order + "HH", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112 and kind == 3:
                (value,) = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * i + 8)
                return value if 1 <= value <= 8 else 1
    except struct.error:
        pass
    return 1


def _jpeg_reduction(width: int, height: int, max_pixels: int, max_side: int) -> int:
    """DCT scale denominator: the smallest that fits ``max_pixels``, the largest that keeps ``max_side``."""
    if width * height <= max_pixels and max(width, height) <= max_side:  # nearly every file
        return 1
    fits = [k for k in (1, 2, 4, 8) if math.ceil(width / k) * math.ceil(height / k) <= max_pixels]
    if not fits:
        raise _too_large(width, height, max_pixels, "even at 1/8 JPEG scaling")
    longest = max(width, height)
    keeps = max(k for k in (1, 2, 4, 8) if math.ceil(longest / k) >= min(longest, max_side))
    return max(fits[0], keeps)


def _decode_jpeg(data: bytes, max_pixels: int, max_side: int) -> tuple[np.ndarray, int, int]:
    header = jpeg_header(data)
    k = _jpeg_reduction(header.width, header.height, max_pixels, max_side)
    if not jpeg_complete(data, header.frame):
        raise _Unreadable("truncated or corrupt JPEG (no end-of-image marker)")
    image = _cv2_decode(data, JPEG_REDUCED[k])
    if image is None:
        image = _pil_jpeg(data, header, k)
    if k == 1:
        return image, image.shape[1], image.shape[0]  # upright as decoded
    # Reduced: the full upright size is the header's, transposed when the decoder applied a 90° orientation.
    straight = (math.ceil(header.height / k), math.ceil(header.width / k))
    got = image.shape[:2]
    if got == straight and got != straight[::-1]:
        swapped = False
    elif got == straight[::-1] and got != straight:
        swapped = True
    else:  # square after reduction: the shape can't tell, the EXIF tag can
        swapped = header.orientation(data) >= 5
    return image, (header.height if swapped else header.width), (header.width if swapped else header.height)


def _pil_jpeg(data: bytes, header: JpegHeader, k: int) -> np.ndarray:
    """Pillow's decode when OpenCV refuses a JPEG whose structure looked whole (rare: odd subsampling, 12-bit)."""
    try:
        # The plugin class directly: Image.open's bomb check would refuse what we decode reduced anyway.
        im = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
        if k > 1:
            im.draft("RGB", (math.ceil(header.width / k), math.ceil(header.height / k)))
        im = ImageOps.exif_transpose(im)
        return _pil_to_bgr(im)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a property of the file
        raise _Unreadable(_one_line(f"corrupt or unsupported JPEG ({e})")) from None


# --- PNG: header for size and transparency; cv2 when opaque, Pillow when it must be composited -------------


def _decode_png(data: bytes, max_pixels: int) -> tuple[np.ndarray, int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise _Unreadable("truncated or corrupt PNG (no IHDR header)")
    width, height = struct.unpack_from(">II", data, 16)
    colour_type = data[25]
    if width == 0 or height == 0:
        raise _Unreadable(f"corrupt PNG (header says {width}×{height})")
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels, "and only JPEG can be decoded reduced")
    if colour_type in (4, 6) or _png_has_trns(data):
        return _decode_pil(data, "", max_pixels)
    image = _cv2_decode(data, cv2.IMREAD_COLOR)
    if image is None:  # let Pillow name what is wrong (truncated IDAT, bad CRC, ...)
        return _decode_pil(data, "", max_pixels)
    return image, image.shape[1], image.shape[0]


def _png_has_trns(data: bytes) -> bool:
    """A ``tRNS`` chunk before the image data (palette, grey or RGB transparency)."""
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"tRNS":
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        pos += 12 + length
    return False


# --- everything else, and the special cases: Pillow -----------------------------------------------------


def _pillow_open():
    """Pillow's own ``Image.open``, also once ``ultralytics`` is imported.

    ``ultralytics.utils.patches`` replaces ``PIL.Image.open`` with a wrapper that, the first time Pillow cannot
    identify a file, installs (``check_requirements``) and registers a HEIF plugin and retries. Here an
    unidentified file must stay unidentified, so that it gets its "not an image (...)" reason, and nothing may be
    installed in the middle of a run; the wrapper keeps the original as ``_image_open`` in its module."""
    current = Image.open
    module = sys.modules.get(getattr(current, "__module__", None) or "")
    if module is not None and module.__name__.startswith("ultralytics"):
        original = getattr(module, "_image_open", None)
        if callable(original):
            return original
    return current


def _decode_pil(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, int, int]:
    try:
        im = _pillow_open()(io.BytesIO(data), formats=PIL_FORMATS)
    except UnidentifiedImageError:
        raise _Unreadable(_not_an_image(data, name)) from None
    except Image.DecompressionBombError as e:
        raise _Unreadable(_one_line(f"image too large (Pillow: {e})")) from None
    except Exception as e:  # noqa: BLE001 - a header Pillow recognises but cannot parse
        raise _Unreadable(_one_line(f"truncated or corrupt image header ({e})")) from None
    fmt = im.format or "image"
    width, height = im.size
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels, "and only JPEG can be decoded reduced")
    try:
        im = ImageOps.exif_transpose(im)  # loads the first frame; a no-op copy without orientation
        image = _pil_to_bgr(im)
    except Exception as e:  # noqa: BLE001 - truncated data, bad CRC, unsupported variant
        raise _Unreadable(_one_line(f"truncated or corrupt {fmt} ({e})")) from None
    return image, image.shape[1], image.shape[0]


def _pil_to_bgr(im: Image.Image) -> np.ndarray:
    """Any Pillow mode → ``(H, W, 3)`` uint8 BGR; 16-bit scaled, transparency composited onto white."""
    alpha = None
    if im.mode.startswith("I") or im.mode == "F":
        values = np.asarray(im)
        transparency = im.info.get("transparency")
        if isinstance(transparency, int):
            alpha = np.where(values == transparency, 0, 255).astype(np.uint8)
        if im.mode == "F":
            values = values * 255.0 if values.size and float(values.max()) <= 1.0 else values
        elif im.mode.startswith("I;16") or (values.size and int(values.max()) > 255):
            values = values.astype(np.int64) >> 8
        grey = np.clip(values, 0, 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
    elif "A" in im.getbands() or "a" in im.mode or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"))
        rgb, alpha = rgba[..., :3], rgba[..., 3]
    else:
        rgb = np.asarray(im.convert("RGB"))  # L, P, 1, CMYK, YCbCr, LAB, HSV
    if alpha is not None and alpha.min() < 255:
        a = alpha[..., None].astype(np.uint16)
        rgb = ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])


# --- shared pieces -----------------------------------------------------------------------------------


def _cv2_decode(data: bytes, flags: int) -> np.ndarray | None:
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:  # e.g. above OpenCV's own pixel limit
        return None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        return None
    return image


def _fit(image: np.ndarray, width: int, height: int, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink so the longer side is at most ``max_side``; the scale maps the full upright size to the image."""
    longest = max(width, height)
    if max(image.shape[:2]) > max_side:
        scale = max_side / longest
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale
    if image.shape[:2] == (height, width):
        return image, 1.0
    return image, max(image.shape[:2]) / longest  # DCT-reduced and already small enough


def _too_large(width: int, height: int, max_pixels: int, why: str) -> _Unreadable:
    return _Unreadable(
        f"image too large ({width}×{height} = {width * height / 1e6:.1f} MP, above max_pixels "
        f"{max_pixels / 1e6:.1f} MP {why})"
    )


def _not_an_image(data: bytes, name: str) -> str:
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or any(t in head for t in (b"<html", b"<head", b"<body")):
        what = "looks like HTML"
    elif head.startswith(b"<?xml") or b"<svg" in head:
        what = "looks like XML or SVG, not a raster image"
    elif head.startswith(b"%pdf"):
        what = "a PDF document"
    elif head.startswith((b"pk\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf")):
        what = "an archive"
    elif data[4:8] == b"ftyp":
        what = "ISO media, probably a video"
    elif _is_text(data[:1024]):
        what = "looks like text"
    else:
        what = "unrecognised format"
    suffix = os.path.splitext(name)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        what += f", named {suffix}"
    return f"not an image ({what})"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False  # a multi-byte character cut at 1024 bytes is rare enough to call binary
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _unreadable(reason: str, digest: str | None) -> Decoded:
    return Decoded(None, None, None, 1.0, digest, UNREADABLE, reason)
