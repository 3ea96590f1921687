"""What a new network input shape costs the fast backend on a GPU, step by step: a crawl of many image sizes meets
up to 16 letterbox shapes at imgsz 256 (40 at 640), and each is paid once per process.

    python benchmarks/shape_cost.py [--imgsz 256] [--batch-size 256] [--shapes 6] [--profile]
                                    [--label TEXT]

For each input shape of the stride grid (long side ``imgsz``, the short side from ``imgsz`` down by the stride),
on one ``FastBackend``, each call synchronised: the network's first eager call at that shape (cuDNN's set-up of
every convolution) and its second; then ``PersonGraphs.run``'s first run of the shape (its eager warm-up calls,
the capture, the first replay); and the baseline in the same run, a replay of the captured graph. The first shape
also pays the process's first calls. One JSON line: seconds (wall, and the host's CPU time where it says
``_host``) per step and shape, and their medians over the shapes after the first.

With ``--warm-threads K`` the measured shapes' first eager calls are made first on K threads at once by the
backend's ``ShapeWarmer`` (each thread on its own stream and copy of the network), timed as a whole
(``parallel_warm_seconds``); the steps above then show what is left for this thread. Run it in fresh processes at K
= 0 (the baseline: every shape's first call on this thread), 4, 8: whether the set-up runs in parallel, and whether
one thread's set-up serves another's calls.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def grid_shapes(imgsz: int, stride: int) -> list[tuple[int, int]]:
    """The letterbox shapes ``(height, width)`` whose long side is ``imgsz``: portrait first, then landscape."""
    sides = list(range(imgsz, 0, -stride))
    return [(imgsz, s) for s in sides] + [(s, imgsz) for s in sides[1:]]


def warm_in_parallel(backend, shapes: list[tuple[int, int]], threads: int) -> float:
    """Seconds for the first network call at every shape in ``shapes``, made by the backend's ``ShapeWarmer`` on
    ``threads`` threads at once (each on its own stream and copy of the network); every shape must have run."""
    import torch

    from pipeline.pose.shapes import ShapeWarmer

    warmer = ShapeWarmer(backend.net, backend.device, backend.dtype, backend.batch_size, backend.imgsz, threads)
    torch.cuda.synchronize(backend.device)
    start = time.perf_counter()
    warmer.queue(shapes)
    warmer.wait()
    seconds = time.perf_counter() - start
    warmer.close()
    if sorted(warmer.warmed) != sorted(shapes):
        raise SystemExit(f"the warmer ran {len(warmer.warmed)} of {len(shapes)} shapes (the device's free memory)")
    return round(seconds, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shapes", type=int, default=6, help="how many grid shapes to measure")
    parser.add_argument("--profile", action="store_true",
                        help="profile the second shape's first network call instead of timing it (table to stderr)")
    parser.add_argument("--warm-threads", type=int, default=0,
                        help="first make every measured shape's first eager call on this many threads at once")
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    import torch

    from pipeline.pose.fast import STRIDE, FastBackend

    backend = FastBackend(device="cuda:0", imgsz=args.imgsz, batch_size=args.batch_size)
    graphs, device = backend.graphs, backend.device

    def timed(fn) -> tuple[float, float]:
        torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        host = time.process_time() - cpu
        torch.cuda.synchronize(device)
        return round(time.perf_counter() - wall, 4), round(host, 4), out

    shapes = grid_shapes(args.imgsz, STRIDE)[:args.shapes]
    parallel = None
    if args.warm_threads > 0:
        parallel = warm_in_parallel(backend, shapes, args.warm_threads)
    rows = []
    with torch.inference_mode():  # as the backend runs its calls
        for height, width in shapes:
            x = torch.zeros(args.batch_size, 3, height, width, dtype=backend.dtype, device=device)
            frames = torch.tensor([[1, 1, 0, 0, width, height, 1]] * args.batch_size, dtype=torch.float32,
                                  device=device)
            row = {"shape": [height, width]}
            if args.profile and len(rows) == 1:  # the second shape's first call, to stderr
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    backend.network(x)
                    torch.cuda.synchronize(device)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)
            else:
                row["first_eager"], row["first_eager_host"], _ = timed(lambda: backend.network(x))  # noqa: B023
            row["second_eager"], _, _ = timed(lambda: backend.network(x))  # noqa: B023
            # PersonGraphs' own first run of a shape: its warm-up calls, the capture, the first replay
            row["graph_first_run"], row["graph_first_run_host"], _ = timed(lambda: graphs.run(x, frames))  # noqa: B023
            row["replay"], _, _ = timed(lambda: graphs.run(x, frames))  # noqa: B023
            rows.append(row)
    later = rows[1:] or rows
    print(json.dumps({
        "bench": "shape_cost", "imgsz": args.imgsz, "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name(device), "warm_threads": args.warm_threads,
        "parallel_warm_seconds": parallel, "shapes": rows,
        "median_after_first": {k: statistics.median(r[k] for r in later if k in r)
                               for k in ("first_eager", "first_eager_host", "second_eager", "graph_first_run",
                                         "graph_first_run_host", "replay")},
        "label": args.label, "torch": torch.__version__, "python": platform.python_version(),
    }), flush=True)


if __name__ == "__main__":
    main()
