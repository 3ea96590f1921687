"""Decoding raw image files: every odd file is decoded right or comes back unreadable with a reason, never raised."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from corpus import cv2_bytes, pil_bytes, png_claiming, solid_jpeg, with_orientation
from PIL import Image, ImageOps, features

import pipeline.decode as decode
from pipeline.decode import decode_bytes, decode_image
from pipeline.errors import PipelineError

REPO = Path(__file__).resolve().parents[2]


def photo(height: int = 96, width: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth, noisy BGR image: JPEG-friendly and with no two rows or columns alike."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=2)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def marked(height: int = 40, width: int = 60) -> np.ndarray:
    """Grey BGR image with a red block top-left and a blue one bottom-right: its orientation is visible."""
    image = np.full((height, width, 3), 128, np.uint8)
    image[: height // 4, : width // 3] = (0, 0, 255)
    image[-height // 4 :, -width // 3 :] = (255, 0, 0)
    return image


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def pil_upright_bgr(data: bytes) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))[..., ::-1]


# --- the ordinary files ------------------------------------------------------------------------------------


def test_jpeg_and_png_decode_with_the_file_hash(tmp_path):
    image = photo()
    png = write(tmp_path / "a.png", cv2_bytes(image, ".png"))
    jpg = write(tmp_path / "a.jpg", cv2_bytes(image, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90))
    for path in (png, jpg):
        d = decode_image(path)
        assert (d.status, d.reason, d.ok) == ("ok", None, True)
        assert (d.width, d.height, d.scale) == (64, 96, 1.0)
        assert d.image.shape == (96, 64, 3) and d.image.dtype == np.uint8 and d.image.flags.c_contiguous
        assert d.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.array_equal(decode_image(png).image, image)
    reference = cv2.imdecode(np.frombuffer(jpg.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decode_image(jpg).image, reference)
    assert np.abs(decode_image(jpg).image.astype(int) - image).mean() < 12  # noisy on purpose


def test_decode_bytes_is_decode_image_without_the_file(tmp_path):
    data = cv2_bytes(photo(), ".jpg")
    a, b = decode_image(write(tmp_path / "x.jpg", data)), decode_bytes(data, "x.jpg")
    assert np.array_equal(a.image, b.image) and (a.width, a.height, a.content_hash) == (b.width, b.height,
                                                                                        b.content_hash)
    assert decode_bytes(bytearray(data)).ok and decode_bytes(memoryview(data)).ok


def test_one_pixel_images_are_valid(tmp_path):
    pixel = np.array([[[10, 120, 240]]], np.uint8)
    for ext in (".png", ".jpg"):
        d = decode_image(write(tmp_path / f"one{ext}", cv2_bytes(pixel, ext)))
        assert d.ok and (d.width, d.height) == (1, 1) and d.image.shape == (1, 1, 3)
    assert np.array_equal(decode_image(tmp_path / "one.png").image, pixel)


def test_name_with_spaces_and_non_ascii(tmp_path):
    path = write(tmp_path / "Zoë photo 01 — été.jpg", cv2_bytes(photo(), ".jpg"))
    d = decode_image(path)
    assert d.ok and d.image.shape == (96, 64, 3)
    assert decode_image(str(path)).content_hash == d.content_hash


def test_format_comes_from_the_bytes_not_the_name(tmp_path):
    d = decode_image(write(tmp_path / "really_a_png.jpg", cv2_bytes(photo(), ".png")))
    assert d.ok and np.array_equal(d.image, photo())


# --- files that are not images, or not whole -------------------------------------------------------------


def test_unreadable_files_come_back_with_distinct_reasons(tmp_path):
    good = cv2_bytes(photo(200, 300), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90)
    html = b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>nope</body></html>\n"
    random_bytes = np.random.default_rng(7).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    assert not random_bytes.startswith((b"\xff\xd8", b"\x89PNG", b"GIF", b"RIFF", b"BM", b"II", b"MM"))
    (tmp_path / "folder.jpg").mkdir()
    cases = {
        "empty.jpg": (write(tmp_path / "empty.jpg", b""), "zero-byte file"),
        "truncated.jpg": (write(tmp_path / "truncated.jpg", good[: len(good) // 2]), "truncated or corrupt JPEG"),
        "random.jpg": (write(tmp_path / "random.jpg", random_bytes), "not an image (unrecognised format"),
        "page.jpg": (write(tmp_path / "page.jpg", html), "not an image (looks like HTML"),
        "folder.jpg": (tmp_path / "folder.jpg", "cannot read: is a directory"),
        "missing.jpg": (tmp_path / "missing.jpg", "cannot read: file not found"),
    }
    reasons = set()
    for name, (path, expected) in cases.items():
        d = decode_image(path)
        assert (d.status, d.image, d.width, d.height) == ("unreadable", None, None, None), name
        assert d.reason.startswith(expected), (name, d.reason)
        assert "\n" not in d.reason
        readable = path.is_file()
        assert (d.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()) if readable else (
            d.content_hash is None), name
        reasons.add(d.reason)
    assert len(reasons) == len(cases)
    assert decode_image(tmp_path / "page.jpg").reason == "not an image (looks like HTML, named .jpg)"
    assert decode_image(str(tmp_path / "nul\x00.jpg")).reason.startswith("cannot read: invalid path")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not an image (a PDF document)"),
        (b"name,label\nalice,1\n", "not an image (looks like text)"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "not an image (looks like XML or SVG"),
        (b"PK\x03\x04\x14\x00\x00\x00", "not an image (an archive)"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00", "not an image (ISO media"),
    ],
)
def test_other_non_images_say_what_they_look_like(data, expected):
    d = decode_bytes(data, "x.txt")
    assert d.status == "unreadable" and d.reason.startswith(expected), d.reason
    assert "named" not in d.reason  # .txt does not pretend to be an image


def test_reasons_survive_ultralytics_patching_pillow():
    # importing ultralytics replaces PIL.Image.open with a wrapper that, on an unidentified file, tries to install
    # and register a HEIF plugin (here: "No module named 'pi_heif'"); extraction imports it before decoding
    import PIL.Image
    import ultralytics.utils.patches  # noqa: F401

    assert PIL.Image.open.__module__.startswith("ultralytics")
    d = decode_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "x.jpg")
    assert d.status == "unreadable" and d.reason.startswith("not an image (a PDF document, named .jpg"), d.reason
    d = decode_bytes(bytes(range(256)) * 4, "random.jpg")
    assert d.reason.startswith("not an image (unrecognised format"), d.reason


def test_truncated_jpegs_anywhere_and_trailing_bytes(tmp_path):
    good = with_orientation(photo(120, 80), 1)  # with an EXIF segment before the scan
    for cut in (3, 20, len(good) // 3, len(good) - 100, len(good) - 2, len(good) - 1):
        d = decode_bytes(good[:cut])
        assert d.status == "unreadable" and d.reason.startswith("truncated or corrupt JPEG"), (cut, d.reason)
    # Camera trailers and padding after the end-of-image marker are fine; a cut scan followed by junk is not.
    assert decode_bytes(good + b"\x00" * 64 + b"trailer").ok
    assert not decode_bytes(good[: len(good) // 2] + b"\x00" * 64).ok


def test_progressive_jpeg_cut_between_scans_is_truncated():
    im = Image.fromarray(photo(160, 120)[..., ::-1].copy())
    data = pil_bytes(im, "JPEG", quality=90, progressive=True)
    assert decode_bytes(data).ok
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    assert decode_bytes(data[: second_scan + 40]).reason.startswith("truncated or corrupt JPEG")


def test_truncated_png_is_unreadable():
    data = cv2_bytes(photo(), ".png")
    d = decode_bytes(data[: len(data) // 2])
    assert d.status == "unreadable" and d.reason.startswith("truncated or corrupt PNG"), d.reason


def test_permission_denied(tmp_path):
    path = write(tmp_path / "secret.jpg", cv2_bytes(photo(), ".jpg"))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): a mode-000 file is still readable")
        d = decode_image(path)
    finally:
        path.chmod(0o644)
    assert (d.status, d.reason, d.content_hash) == ("unreadable", "cannot read: permission denied", None)


def test_read_errors_map_to_reasons_even_as_root(tmp_path, monkeypatch):
    path = write(tmp_path / "a.jpg", cv2_bytes(photo(), ".jpg"))
    real_open = os.open
    cases = [
        (PermissionError(13, "Permission denied"), "cannot read: permission denied"),
        (OSError(5, "Input/output error"), "cannot read: input/output error"),
    ]
    for error, reason in cases:

        def refuse_ours(target, *args, error=error, **kwargs):  # only our file: pytest may open others
            if os.fspath(target) == os.fspath(path):
                raise error
            return real_open(target, *args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(os, "open", refuse_ours)
            d = decode_image(path)
        assert (d.status, d.reason, d.content_hash) == ("unreadable", reason, None)

        def fail_read(fd, size, error=error):  # the error comes while reading, after a successful open
            raise error

        with monkeypatch.context() as m:
            m.setattr(decode, "_read_all", fail_read)
            d = decode_image(path)
        assert (d.status, d.reason, d.content_hash) == ("unreadable", reason, None)
    assert decode_image(path).ok


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_named_pipe_is_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")  # reading it would block forever
    assert decode_image(tmp_path / "pipe.jpg").reason == "cannot read: not a regular file"


# --- colour models, depths, transparency, animation ---------------------------------------------------------


def test_alpha_is_composited_onto_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: kept
    rgba[0, 1] = (0, 0, 0, 0)  # transparent black: white
    rgba[0, 2] = (0, 0, 200, 128)  # half: blended with white
    bgra = rgba[..., [2, 1, 0, 3]]
    d = decode_bytes(cv2_bytes(bgra, ".png"))
    assert d.ok and d.image.shape == (2, 3, 3)
    assert d.image[0, 0].tolist() == [30, 20, 10]
    assert d.image[0, 1].tolist() == [255, 255, 255]
    assert d.image[0, 2].tolist() == [227, 127, 127]  # (200*128 + 255*127)/255 ≈ 227, 255*127/255 = 127
    # Grey + alpha, and a palette with a transparent entry, follow the same rule.
    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8), "LA")
    assert decode_bytes(pil_bytes(la, "PNG")).image[0].tolist() == [[50, 50, 50], [255, 255, 255]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    d = decode_bytes(pil_bytes(palette, "PNG", transparency=1))
    assert d.image[0].tolist() == [[0, 0, 255], [255, 255, 255]]


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    expected = [0, 1, 128, 255]
    colour = decode_bytes(cv2_bytes(np.dstack([values, values // 2, values]), ".png"))
    assert colour.image[0, :, 0].tolist() == expected and colour.image[0, :, 1].tolist() == [0, 0, 64, 127]
    grey = decode_bytes(cv2_bytes(values, ".png"))
    assert grey.image.shape == (1, 4, 3) and grey.image[0, :, 1].tolist() == expected
    rgba16 = decode_bytes(cv2_bytes(np.dstack([values, values, values, np.full_like(values, 65535)]), ".png"))
    assert rgba16.image[0, :, 2].tolist() == expected
    # Pillow's path (TIFF opens as I;16, whose own conversion to 8-bit clips 257 to 255).
    tiff = decode_bytes(pil_bytes(Image.fromarray(values), "TIFF"))
    assert tiff.ok and tiff.image[0, :, 0].tolist() == expected


def test_greyscale_becomes_three_equal_channels():
    grey = photo()[..., 1]
    for ext in (".png", ".jpg"):
        d = decode_bytes(cv2_bytes(grey, ext))
        assert d.ok and d.image.shape == (96, 64, 3)
        assert np.array_equal(d.image[..., 0], d.image[..., 1]) and np.array_equal(d.image[..., 1], d.image[..., 2])
        if ext == ".png":
            assert np.array_equal(d.image[..., 0], grey)


@pytest.mark.parametrize(
    ("cmyk", "bgr"),
    [((255, 0, 0, 0), (255, 255, 0)), ((0, 255, 0, 0), (255, 0, 255)), ((0, 0, 255, 0), (0, 255, 255)),
     ((0, 0, 0, 255), (0, 0, 0)), ((0, 0, 0, 0), (255, 255, 255))],
)
def test_cmyk_jpeg_colours(cmyk, bgr):
    d = decode_bytes(pil_bytes(Image.new("CMYK", (16, 16), cmyk), "JPEG", quality=95))
    assert d.ok and d.image.shape == (16, 16, 3)
    assert np.abs(d.image[8, 8].astype(int) - bgr).max() <= 3, d.image[8, 8]


def test_palette_png_exact_colours():
    image = Image.new("P", (3, 2))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 12, 34, 56] + [0] * 756)
    image.putdata([0, 1, 2, 3, 3, 0])
    data = pil_bytes(image, "PNG")
    assert data[25] == 3  # colour type 3: really a palette PNG
    d = decode_bytes(data)
    assert d.image.tolist() == [[[0, 0, 255], [0, 255, 0], [255, 0, 0]], [[56, 34, 12], [56, 34, 12], [0, 0, 255]]]


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    d = decode_bytes(data, "anim.gif")
    assert d.ok and (d.width, d.height) == (8, 6)
    assert (d.image == (0, 0, 255)).all()


@pytest.mark.skipif(not features.check("webp"), reason="this Pillow has no WebP support")
def test_webp_lossless_and_with_alpha():
    image = photo()
    d = decode_bytes(pil_bytes(Image.fromarray(image[..., ::-1].copy()), "WEBP", lossless=True))
    assert d.ok and np.array_equal(d.image, image)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = (0, 255, 0, 255)
    d = decode_bytes(pil_bytes(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True))
    assert d.image[0, 0].tolist() == [0, 255, 0] and d.image[3, 3].tolist() == [255, 255, 255]


def test_bmp_and_tiff_decode():
    image = photo()
    for ext in (".bmp", ".tiff"):
        d = decode_bytes(cv2_bytes(image, ext))
        assert d.ok and np.array_equal(d.image, image), ext


# --- EXIF orientation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied_once(orientation, tmp_path):
    data = with_orientation(marked(), orientation)
    d = decode_image(write(tmp_path / "o.jpg", data))
    upright = pil_upright_bgr(data)
    assert d.ok and d.image.shape == upright.shape
    assert (d.width, d.height) == ((40, 60) if orientation in (6, 8) else (60, 40))
    assert np.abs(d.image.astype(int) - upright).mean() < 1.0
    red = np.argwhere((d.image[..., 2] > 200) & (d.image[..., 0] < 60)).mean(axis=0)  # (row, col) of the red block
    h, w = d.image.shape[:2]
    corner = {1: (0, 0), 3: (1, 1), 6: (0, 1), 8: (1, 0)}[orientation]  # 6: rotate 90° clockwise to view
    assert (red[0] > h / 2, red[1] > w / 2) == tuple(bool(c) for c in corner)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_on_a_reduced_decode(orientation):
    data = with_orientation(marked(800, 1200), orientation)
    d = decode_bytes(data, max_side=300)  # 1200 → DCT 1/4 → 300: no resize after
    swapped = orientation in (6, 8)
    assert d.ok and (d.width, d.height) == ((800, 1200) if swapped else (1200, 800))
    assert d.image.shape == ((300, 200, 3) if swapped else (200, 300, 3)) and d.scale == 0.25
    upright = cv2.resize(pil_upright_bgr(data), d.image.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(d.image.astype(int) - upright).mean() < 3.0


# --- size limits ---------------------------------------------------------------------------------------------


def test_large_jpeg_is_dct_reduced_then_resized():
    image = photo(900, 1600)
    data = cv2_bytes(image, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90)
    d = decode_bytes(data, max_side=500)  # 1/2 gives 800 ≥ 500 (1/4 would give 400), then resized to 500
    assert (d.width, d.height, d.image.shape, d.scale) == (1600, 900, (281, 500, 3), 500 / 1600)
    reference = cv2.resize(image, (500, 281), interpolation=cv2.INTER_AREA)
    assert np.abs(d.image.astype(int) - reference).mean() < 4
    # max_pixels alone: 1.44 MP > 0.2 MP → 1/4 (0.09 MP) fits, the image stays at 400×225.
    d = decode_bytes(data, max_pixels=200_000)
    assert (d.width, d.height, d.image.shape, d.scale) == (1600, 900, (225, 400, 3), 0.25)


def test_large_png_is_resized_and_too_large_png_refused():
    image = photo(200, 300)
    data = cv2_bytes(image, ".png")
    d = decode_bytes(data, max_side=150)
    assert (d.width, d.height, d.image.shape, d.scale) == (300, 200, (100, 150, 3), 0.5)
    assert np.abs(d.image.astype(int) - cv2.resize(image, (150, 100), interpolation=cv2.INTER_AREA)).max() <= 1
    d = decode_bytes(data, max_pixels=50_000)
    assert d.status == "unreadable" and d.reason.startswith("image too large (300×200 = 0.1 MP"), d.reason


def test_decompression_bomb_headers_are_refused_before_decoding():
    png = png_claiming(100_000, 100_000)
    assert decode_bytes(png_claiming(2, 2)).ok  # the patching itself keeps a valid PNG
    d = decode_bytes(png)
    assert d.status == "unreadable" and d.reason.startswith("image too large (100000×100000 = 10000.0 MP"), d.reason
    assert d.content_hash == hashlib.sha256(png).hexdigest()
    # Pillow-only formats hit Pillow's own bomb check first (a GIF's header claiming 60000×60000).
    gif = bytearray(pil_bytes(Image.new("RGB", (4, 4), (1, 2, 3)), "GIF"))
    gif[6:10] = struct.pack("<HH", 60000, 60000)
    assert decode_bytes(bytes(gif)).reason.startswith("image too large")
    # A JPEG still above max_pixels at 1/8 (20000² / 64 = 6.25 MP > 1 MP).
    d = decode_bytes(solid_jpeg(20000, 20000, (0, 0, 0)), max_pixels=1_000_000)
    assert d.reason.startswith("image too large (20000×20000 = 400.0 MP"), d.reason


CHILD = """
import json, sys
from pipeline.decode import decode_image

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

before = status("VmRSS:")
results = [decode_image(path) for path in sys.argv[1:]]
peak = status("VmHWM:")
print(json.dumps({"before": before, "peak": peak, "results": [
    [r.status, r.reason, r.width, r.height, r.scale, None if r.image is None else list(r.image.shape),
     None if r.image is None else r.image.reshape(-1, 3).min(0).tolist(),
     None if r.image is None else r.image.reshape(-1, 3).max(0).tolist()] for r in results]}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc")
def test_huge_jpeg_and_bomb_decode_in_bounded_memory(tmp_path):
    colour = (30, 200, 90)
    jpeg = write(tmp_path / "huge.jpg", solid_jpeg(20000, 20000, colour))
    bomb = write(tmp_path / "bomb.png", png_claiming(100_000, 100_000))
    full_decode = 20000 * 20000 * 3  # 1.2 GB
    out = subprocess.run([sys.executable, "-c", CHILD, str(jpeg), str(bomb)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    report = json.loads(out.stdout)
    (status, reason, width, height, scale, shape, low, high), bomb_result = report["results"]
    assert (status, reason, width, height, shape) == ("ok", None, 20000, 20000, [4096, 4096, 3])
    assert scale == pytest.approx(4096 / 20000)
    assert np.abs(np.array(low) - colour).max() <= 2 and np.abs(np.array(high) - colour).max() <= 2
    assert bomb_result[0] == "unreadable" and bomb_result[1].startswith("image too large")
    grown = report["peak"] - report["before"]
    # 1/4 DCT decode (5000² × 3 = 75 MB) plus the 4096² result (50 MB) plus the 17 MB file; the full decode
    # would be 1.2 GB and the bomb 30 GB.
    assert grown < full_decode / 4, f"peak grew by {grown / 1e6:.0f} MB"


def test_bad_limits_are_a_pipeline_error():
    with pytest.raises(PipelineError, match="max_side"):
        decode_bytes(b"x", max_side=0)


# --- fallbacks -----------------------------------------------------------------------------------------------


def test_pillow_takes_over_when_opencv_refuses(monkeypatch):
    data = with_orientation(marked(800, 1200), 6)
    expected_full, expected_reduced = decode_bytes(data), decode_bytes(data, max_side=300)
    monkeypatch.setattr(decode.cv2, "imdecode", lambda *args: None)
    full, reduced = decode_bytes(data), decode_bytes(data, max_side=300)
    assert full.ok and (full.width, full.height, full.image.shape) == (800, 1200, (1200, 800, 3))
    assert np.abs(full.image.astype(int) - expected_full.image).mean() < 1.0
    assert (reduced.width, reduced.height, reduced.image.shape, reduced.scale) == (800, 1200, (300, 200, 3), 0.25)
    assert np.abs(reduced.image.astype(int) - expected_reduced.image).mean() < 3.0
    png = decode_bytes(cv2_bytes(photo(), ".png"))  # PNG falls back the same way
    assert png.ok and np.array_equal(png.image, photo())
    assert decode_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40).status == "unreadable"
