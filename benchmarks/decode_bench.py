"""Decode speed: images/s of `pipeline.decode.decode_image` on small real-looking JPEG files, one JSON line.

    python benchmarks/decode_bench.py [--images 500] [--rounds 5]

The files are crops of Ultralytics' bus.jpg (people, street) resized to 256×176, DeepFashion's training size,
written to a temporary folder (so they are in the page cache). The baseline in the same run is a bare
`cv2.imdecode` of the same bytes already in memory; a second one adds the file read. The ratio to the bare
decode says what reading, hashing, the header walk and the record cost on top. To damp the noise of a shared
machine the files are timed in slices of 50, the three methods interleaved on each slice, and each method's
time is the sum over slices of its best of `--rounds`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import PIL
import ultralytics

from pipeline.decode import decode_image

SIZE = (256, 176)  # height, width


def make_files(folder: Path, n: int) -> list[Path]:
    source = cv2.imread(str(Path(ultralytics.__file__).parent / "assets" / "bus.jpg"), cv2.IMREAD_COLOR)
    rng = np.random.default_rng(0)
    height, width = source.shape[:2]
    paths = []
    for i in range(n):
        crop_h = int(rng.integers(height // 3, height))
        crop_w = min(width, crop_h * SIZE[1] // SIZE[0])
        y, x = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
        image = cv2.resize(source[y : y + crop_h, x : x + crop_w], SIZE[::-1], interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(data.tobytes())
        paths.append(path)
    return paths


def seconds(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - start


def bare_imdecode(data: bytes) -> None:
    cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def read_and_imdecode(path: Path) -> None:
    with open(path, "rb") as f:
        bare_imdecode(f.read())


def checked_decode(path: Path) -> None:
    if not decode_image(path).ok:
        raise RuntimeError(f"{path} did not decode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_files(Path(tmp), args.images)
        blobs = [p.read_bytes() for p in paths]
        methods = {"imdecode": (bare_imdecode, blobs), "read_imdecode": (read_and_imdecode, paths),
                   "decode_image": (checked_decode, paths)}
        total = dict.fromkeys(methods, 0.0)
        for start in range(0, args.images, 50):
            best = dict.fromkeys(methods, float("inf"))
            for _ in range(args.rounds):
                for name, (fn, items) in methods.items():
                    best[name] = min(best[name], seconds(fn, items[start : start + 50]))
            for name in methods:
                total[name] += best[name]
        best = {name: args.images / t for name, t in total.items()}
    print(json.dumps({
        "bench": "decode", "size": list(SIZE), "images": args.images, "mean_kb": round(np.mean([len(b) for b in blobs])
                                                                                     / 1024, 1),
        "images_per_s": round(best["decode_image"], 1),
        "baseline_imdecode_images_per_s": round(best["imdecode"], 1),
        "ratio_to_baseline": round(best["decode_image"] / best["imdecode"], 4),
        "read_imdecode_images_per_s": round(best["read_imdecode"], 1),
        "ratio_to_read_imdecode": round(best["decode_image"] / best["read_imdecode"], 4),
        "opencv": cv2.__version__, "pillow": PIL.__version__, "cv2_threads": cv2.getNumThreads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
