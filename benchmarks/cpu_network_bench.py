"""The pose network alone on the CPU: images/s by call size and memory layout, at the input shapes extraction sees.

    python benchmarks/cpu_network_bench.py [--shapes 256x192,640x480,128x256] [--calls 8,16,32,64,256]
                                           [--threads 2] [--seconds 1.5] [--rounds 3] [--label TEXT]

Runs the embedded YOLO-pose network (``FastBackend``'s, float32, ``torch.inference_mode``) on random inputs of each
shape, in calls of each size, in PyTorch's default (contiguous) layout and channels-last; the ways run in turn,
``--rounds`` times over, each for ``--seconds``, and each figure is the median round. The baseline in the same run
is a contiguous call of 32 inputs, what ``YOLO.predict`` runs with batches of 32. One JSON line per shape: the
images/s of every way, its ratio to the baseline, the best way, and ``FastBackend.network`` (channels-last calls of
at most ``CPU_CALL_PIXELS`` input pixels) on a batch of 256.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("YOLO_OFFLINE", "1")


def rate(run, images: int, seconds: float) -> float:
    """Images/s of ``run()`` (which handles ``images`` inputs) repeated for at least ``seconds``, after one call."""
    run()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        done += images
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="256x192,640x480,128x256", help="network input shapes HxW")
    parser.add_argument("--calls", default="4,8,16,32,64,256", help="inputs per network call")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    import copy

    import torch

    from pipeline.pose.fast import CPU_CALL_PIXELS, FastBackend

    torch.set_num_threads(args.threads)
    backend = FastBackend(device="cpu")
    nets = {"contiguous": copy.deepcopy(backend.net).to(memory_format=torch.contiguous_format).eval(),
            "channels_last": backend.net.eval()}
    calls = [int(c) for c in args.calls.split(",")]
    for shape in args.shapes.split(","):
        h, w = (int(v) for v in shape.lower().split("x"))
        ways = [(layout, n) for layout in nets for n in calls]
        if ("contiguous", 32) not in ways:
            ways.insert(0, ("contiguous", 32))
        rates: dict[str, list[float]] = {}
        batch = torch.rand(256, 3, h, w)
        with torch.inference_mode():
            for _ in range(args.rounds):
                for layout, n in ways:
                    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                    x = torch.rand(n, 3, h, w).contiguous(memory_format=fmt)
                    rates.setdefault(f"{layout}:{n}", []).append(rate(lambda x=x, net=nets[layout]: net(x), n,
                                                                      args.seconds))
                rates.setdefault("network:256", []).append(rate(lambda b=batch: backend.network(b), 256,
                                                                               args.seconds))
        median = {key: round(statistics.median(values), 1) for key, values in rates.items()}
        base = median["contiguous:32"]
        print(json.dumps({
            "bench": "cpu_network", "input_shape": [h, w], "threads": args.threads, "rounds": args.rounds,
            "images_per_s": median, "ratio_to_contiguous_32": {k: round(v / base, 3) for k, v in median.items()},
            "best": max((k for k in median if k != "network:256"), key=median.get),
            "cpu_call_pixels": CPU_CALL_PIXELS, "machine": f"{platform.machine()} {os.cpu_count()} cpu",
            "torch": torch.__version__, "python": platform.python_version(), "label": args.label}), flush=True)


if __name__ == "__main__":
    main()
