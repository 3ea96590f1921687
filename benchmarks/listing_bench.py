"""Raw listing speed: files/s of ``list_images`` on a flat Market-1501 folder of empty files, one JSON line.

    python benchmarks/listing_bench.py [--files 200000] [--repeat 3]

The baseline in the same run is a bare ``os.listdir`` of the same folder (reading the names and nothing
else), so the ratio says what parsing names and building rows costs on top of the directory read.
Both are timed warm (best of ``--repeat``), since a cold read measures the disk, not the code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from pipeline.datasets import list_images


def make_market_folder(root: Path, n: int) -> Path:
    """``n`` empty files named like Market-1501 images in ``root/bounding_box_train``."""
    folder = root / "bounding_box_train"
    folder.mkdir(parents=True)
    for i in range(n):
        # ids 0001-1501, 6 cameras, 6 sequences, unique frame numbers: names as varied as the real ones
        name = f"{1 + i % 1501:04d}_c{1 + i % 6}s{1 + (i // 6) % 6}_{i % 1_000_000:06d}_{i // 1_000_000 + 1:02d}.jpg"
        with open(folder / name, "wb"):
            pass
    return folder


def best_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "market"
        folder = make_market_folder(root, args.files)
        rows = list_images(root)
        assert len(rows) == args.files and all(r.skip_reason is None for r in rows)
        seconds = best_seconds(lambda: list_images(root), args.repeat)
        baseline = best_seconds(lambda: os.listdir(folder), args.repeat)
    rate, baseline_rate = args.files / seconds, args.files / baseline
    print(json.dumps({
        "bench": "listing", "files": args.files, "seconds": round(seconds, 3), "files_per_s": round(rate),
        "baseline_os_listdir_files_per_s": round(baseline_rate), "ratio": round(rate / baseline_rate, 4),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
