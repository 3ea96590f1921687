"""Where a fresh process's first seconds of fast extraction go: the start-up that every run pays once per worker.

    python benchmarks/extract_startup.py [--images 4096] [--batch-size 256] [--processes 8] [--device cuda:0]
                                         [--no-graphs] [--label TEXT]

Run in a fresh interpreter (the imports are part of what it measures). Times, in order: ``import torch``; CUDA's
initialisation (the first allocation on the device); importing ``pipeline.pose.fast``; ``FastBackend(...)``
(importing ultralytics and torchvision's ops, the weights loaded, fused and moved to the device); then each batch
of ``extract_files`` over ``--images`` JPEGs (made as ``extract_bench.py`` makes them), the first of which also
starts the reader processes and captures the CUDA graph of its input shape, and ``close()`` (the reader processes
stopped). The baseline is the steady batch: the median of the batches after the second, in the same run;
``first_batch_over_steady`` says how many steady batches the start-up costs. Prints one JSON line.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", default="256x176")
    parser.add_argument("--processes", type=int, default=8, help="reader processes")
    parser.add_argument("--threads", type=int, default=4, help="reading threads per reader process")
    parser.add_argument("--device", default=None, help="[default: cuda:0 when present, else cpu]")
    parser.add_argument("--no-graphs", action="store_true", help="eager network (no CUDA graph capture)")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    mark = time.perf_counter()
    seconds = {"stdlib_imports": round(mark - STARTED, 4)}

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        seconds[name] = round(now - mark, 4)
        mark = now

    import torch

    lap("import_torch")
    device = torch.device(args.device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if cuda:
        torch.zeros(1, device=device)
        torch.cuda.synchronize(device)
    lap("cuda_init")
    from extract_bench import make_images  # it does not import ultralytics: the backend's load below does

    from pipeline.pose.fast import FastBackend

    lap("import_backend")
    h, w = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "raw", args.images, (h, w))
        mark = time.perf_counter()  # making the files is not start-up
        backend = FastBackend(device=str(device), batch_size=args.batch_size, read_threads=args.threads,
                              read_processes=args.processes, cuda_graphs=False if args.no_graphs else None)
        if cuda:
            torch.cuda.synchronize(device)
        lap("backend_init")
        batches = []
        for _ in backend.extract_files(paths):
            if cuda:
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            batches.append(round(now - mark, 4))
            mark = now
        backend.close()
        lap("close")
    steady = sorted(batches[2:])[len(batches[2:]) // 2] if len(batches) > 2 else None
    startup = sum(seconds.values()) - seconds["close"] + (batches[0] if batches else 0)
    print(json.dumps({
        "bench": "extract_startup", "images": args.images, "batch_size": args.batch_size, "size": [h, w],
        "read_processes": args.processes, "read_threads": args.threads, "cuda_graphs": cuda and not args.no_graphs,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "seconds": seconds,
        "batch_seconds": batches, "steady_batch_seconds": steady,
        "first_batch_over_steady": round(batches[0] / steady, 1) if steady else None,
        "startup_seconds": round(startup, 3),
        "steady_images_per_s": round(args.batch_size / steady, 1) if steady else None,
        "label": args.label, "torch": torch.__version__, "python": platform.python_version(),
    }), flush=True)


if __name__ == "__main__":
    main()
