"""Extraction scaling: `pgpig-data extract` with 1, 2, ... Dask workers on the same files (the goal: ≥1.8× on two
GPUs).

    python benchmarks/extract_scaling.py [--workers 1,2] [--images 200000] [--backend fast] [--batch-size 256]
                                         [--partition-size 16384] [--label TEXT]

The files are made once, as ``extract_bench.py`` makes them (crops, flips and rescales of ultralytics' photos,
JPEGs at ``--size``), and every worker count extracts all of them into its own output folder in this process's
``run_extract`` (``--device auto``: on a GPU machine each worker is pinned to its own GPU, so ``--workers 2``
uses two). Prints one JSON line per worker count (images/s from the call's start, in tasks, and after each
worker's first task, the one that pays the start-up) and a ``extract_scaling`` line: each count's rates over the
first count's (the baseline, measured in the same run), and whether the tables are equal row for row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts; the first is the baseline")
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--size", default="256x176")
    parser.add_argument("--backend", choices=["fast", "ultralytics"], default="fast")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--partition-size", type=int, default=16384)
    parser.add_argument("--label", default="", help="free text naming the machine")
    args = parser.parse_args()
    counts = [int(v) for v in args.workers.split(",")]
    h, w = (int(v) for v in args.size.split("x"))
    import torch
    from extract_bench import make_images, rate_after_first_tasks

    from pipeline.extract import ExtractConfig, run_extract
    from pipeline.keypoints import read_keypoints

    common = {"images": args.images, "size": [h, w], "backend": args.backend, "batch_size": args.batch_size,
              "partition_size": args.partition_size, "gpus_visible": torch.cuda.device_count(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "label": args.label,
              "python": sys.version.split()[0], "torch": torch.__version__}
    results, tables = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "raw"
        made = time.perf_counter()
        make_images(root, args.images, (h, w))
        print(f"{args.images} files made in {time.perf_counter() - made:.0f} s", file=sys.stderr)
        for n in counts:
            out = Path(tmp) / f"kp-{n}"
            cfg = ExtractConfig(raw=root, out=out, run_file=Path(tmp) / f"extract-{n}.json", dataset="folder",
                                device="auto", workers=n, batch_size=args.batch_size, pose_backend=args.backend,
                                partition_size=args.partition_size)
            start = time.perf_counter()
            record = run_extract(cfg, log=lambda *a, **k: None)
            seconds = time.perf_counter() - start
            result = {"workers": n, "seconds": round(seconds, 2),
                      "images_per_s": round(args.images / seconds, 1),
                      "images_per_s_in_tasks": round(args.images * n / record["task_seconds"], 1),
                      "images_per_s_after_first_tasks": rate_after_first_tasks(record), "tasks": len(record["tasks"]),
                      "statuses": record["statuses"]}
            results[n] = result
            print(json.dumps({"bench": "extract_workers", **common, **result}), flush=True)
            table = read_keypoints(out, ["image", "status", "n_persons"]).sort_by("image")
            tables[n] = table
    base = results[counts[0]]

    def ratio(key: str, n: int) -> float | None:
        a, b = results[n][key], base[key]
        return round(a / b, 3) if a and b else None

    print(json.dumps({"bench": "extract_scaling", **common, "baseline_workers": counts[0],
                      "speedup": {str(n): ratio("images_per_s", n) for n in counts},
                      "speedup_in_tasks": {str(n): ratio("images_per_s_in_tasks", n) for n in counts},
                      "speedup_after_first_tasks": {str(n): ratio("images_per_s_after_first_tasks", n)
                                                    for n in counts},
                      "tables_equal": all(tables[n].equals(tables[counts[0]]) for n in counts)}), flush=True)


if __name__ == "__main__":
    main()
