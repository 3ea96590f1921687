"""Mannequin generation speed: images/s written by `pgpig-data synth` for each layout, one JSON line each.

    python benchmarks/synth_bench.py [--identities 50] [--poses 8]

The baseline in the same run is a bare JPEG encode of an image of the same size (what writing a data
set costs without drawing anything), so the ratio says how much the drawing adds on this machine.
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

from pipeline.synthetic import SynthConfig, write_mannequins


def encode_only(n: int, size: tuple[int, int], out: Path) -> float:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 2)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i in range(n):
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        (out / f"{i}.jpg").write_bytes(data.tobytes())
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=50)
    parser.add_argument("--poses", type=int, default=8)
    args = parser.parse_args()
    for layout in ("market", "deepfashion"):
        cfg = SynthConfig(identities=args.identities, poses_per_identity=args.poses, layout=layout)
        with tempfile.TemporaryDirectory() as tmp:
            summary = write_mannequins(Path(tmp) / "raw", cfg)
            baseline = encode_only(summary["images"], cfg.resolved_size(), Path(tmp) / "encode")
        rate = summary["images"] / summary["seconds"]
        print(json.dumps({
            "bench": "synth", "layout": layout, "size": list(cfg.resolved_size()), "images": summary["images"],
            "images_per_s": round(rate, 1), "baseline_encode_only_images_per_s": round(baseline, 1),
            "ratio_to_baseline": round(rate / baseline, 4),
            "machine": f"{platform.machine()} {os.cpu_count()} cpu", "python": platform.python_version(),
        }))


if __name__ == "__main__":
    main()
