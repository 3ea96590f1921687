"""The fast backend's file readers alone: files per second and the bytes that cross to the driving process, with
and without the readers resizing what they decode to its letterbox size, side by side in one run.

    python benchmarks/reader_bench.py [--images 1500] [--sizes mixed|uniform] [--processes 2] [--threads 2]
                                      [--routes gpu,cpu] [--rounds 2] [--imgsz 256] [--label TEXT]

The files are ``extract_bench.py``'s (its crawl of many sizes with ``--sizes mixed``). A route is which files the
readers decode: ``gpu`` as on a CUDA machine (the JPEGs ``torch_decodable`` accepts cross as bytes for nvJPEG, the
rest is decoded by the readers), ``cpu`` every file decoded by the readers (the fast backend on a CPU). Each
route is read ``--rounds`` times, alternating ``fit`` (resized in the reader, as ``FastBackend`` reads) and
``whole`` (at the decoded size), with the batches page-locked as ``FastBackend`` does on a CUDA machine. One JSON
line per route: the median files/s of each, the MB of JPEG bytes and of decoded pixels that crossed, the driving
process's CPU seconds, and the ratio fit/whole.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def read_all(reader, batches: list[list[Path]]) -> dict:
    """Read every batch once: wall and CPU seconds of this process, and the bytes that arrived."""
    jpeg = pixels = files = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in reader.read(batches, 40_000_000):
        files += len(batch)
        jpeg += batch.jpeg_bytes.numel()
        pixels += sum(images.numel() for _, images, _ in batch.cpu_groups)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"files_per_s": files / wall, "main_cpu_seconds": cpu, "jpeg_mb": jpeg / 1e6, "decoded_mb": pixels / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--sizes", choices=["uniform", "mixed"], default="mixed")
    parser.add_argument("--size", default="256x176", help="HxW of the uniform files")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2, help="reader processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per reader process")
    parser.add_argument("--routes", default="gpu,cpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--label", default="", help="free text naming the machine")
    args = parser.parse_args()
    import torch
    from extract_bench import make_files

    from pipeline.pose.fast import letterbox_size, torch_decodable
    from pipeline.pose.reading import BatchReader

    pin = torch.cuda.is_available()
    fit = functools.partial(letterbox_size, imgsz=args.imgsz)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        size = tuple(int(v) for v in args.size.split("x"))
        paths, crawl, _ = make_files(raw, args.sizes, args.images, size)
        batches = [paths[i:i + args.batch_size] for i in range(0, len(paths), args.batch_size)]
        for route in args.routes.split(","):
            decodable = {"gpu": torch_decodable, "cpu": None}[route]
            readers = {name: BatchReader(decodable, args.processes, args.threads, pin_memory=pin, fit=f)
                       for name, f in (("fit", fit), ("whole", None))}
            runs: dict[str, list[dict]] = {name: [] for name in readers}
            try:
                for reader in readers.values():  # the processes start, the files are in the page cache
                    read_all(reader, batches[:2 * max(1, args.processes)])
                for _ in range(args.rounds):
                    for name, reader in readers.items():
                        runs[name].append(read_all(reader, batches))
            finally:
                for reader in readers.values():
                    reader.close()
            result = {name: {key: round(statistics.median(r[key] for r in rs), 3) for key in rs[0]}
                      for name, rs in runs.items()}
            print(json.dumps({
                "bench": "reader", "route": route, "images": args.images, "sizes": args.sizes, "crawl": crawl,
                "imgsz": args.imgsz, "batch_size": args.batch_size, "processes": args.processes,
                "threads": args.threads, "pinned": pin, "rounds": args.rounds, **result,
                "files_per_s_ratio_fit_to_whole": round(result["fit"]["files_per_s"] / result["whole"]["files_per_s"],
                                                        3),
                "gpu": torch.cuda.get_device_name(0) if pin else None,
                "machine": f"{platform.machine()} {os.cpu_count()} cpu", "label": args.label,
                "python": sys.version.split()[0], "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
