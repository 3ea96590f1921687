"""`pgpig-data extract` end to end, in fresh processes, timed from the shell: trees and worker counts compared on the
same files in one run (the goal: ≥10,000 images/s end to end).

    python benchmarks/extract_cli.py [--images 200000] [--size 256x176 | --sizes mixed] [--runs new:1,new:0]
                                     [--tree NAME=PATH ...] [--extract-args "..."] [--variant NAME="..." ...]
                                     [--repeat 1] [--spin 0] [--label TEXT]

The files are made once, as ``extract_bench.py`` makes them (JPEGs at ``--size``, or its crawl of many sizes with
``--sizes mixed``; in the page cache for every run alike). A run ``TREE:WORKERS`` runs ``python -m pipeline.cli
extract --dataset folder --workers WORKERS`` with the package of ``TREE`` first on ``PYTHONPATH`` (``new`` is this
checkout; ``--tree old=PATH`` names another, e.g. a ``git archive`` of an older commit) and the default backend
(``fast`` on a GPU machine), or the options of ``--extract-args``; ``TREE:WORKERS:VARIANT`` adds the options of
``--variant VARIANT="..."``. The runs go in the order given, all of them ``--repeat`` times over, with ``--spin``
processes keeping cores busy throughout if given. Prints one ``extract_cli`` JSON line per run: the wall time from
the process's start to its exit, what its run record says of the listing, the tasks and the workers' warm-ups, and
the rates from the start and after each worker's first task; then an ``extract_cli_compare`` line with each run's
median wall rate over the first run's (the baseline, measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def run_once(tree: Path, raw: Path, work: Path, workers: int, images: int, options: list[str]) -> dict:
    """One ``pgpig-data extract`` of ``raw`` by the package in ``tree``: the wall time and its run record."""
    from extract_bench import rate_after_first_tasks, shell_extract

    shutil.rmtree(work / "kp", ignore_errors=True)
    wall, record = shell_extract(raw, work, ["--workers", str(workers), *options], tree)
    if record["processed"] != images:
        raise SystemExit(f"{tree}: processed {record['processed']} of {images} files")
    tasks = record["tasks"]
    return {"wall_seconds": round(wall, 2), "images_per_s": round(images / wall, 1),
            "run_seconds": record["seconds"], "listing_seconds": record.get("listing_seconds"),
            "listing_alone_seconds": record.get("listing_alone_seconds"),
            "start_wait_seconds": record.get("start_wait_seconds"),
            "after_tasks_seconds": record.get("after_tasks_seconds"),
            "task_seconds": record["task_seconds"], "first_tasks_seconds": [t[1] for t in tasks[:3]],
            "first_batch_seconds": record.get("first_batch_seconds"),
            "tasks": len(tasks), "task_write_seconds": record.get("task_write_seconds"),
            "task_backend_seconds": record.get("task_backend_seconds"),
            "warm_up_seconds": [w["seconds"] for w in record.get("warm_ups", [])] or None,
            "images_per_s_after_first_tasks": rate_after_first_tasks(record),
            # the wall time outside the run's own clock: the interpreter's start and the imports before the run
            # (most of it), and the exit after it
            "outside_run_seconds": round(wall - record["seconds"], 2), "statuses": record["statuses"]}


def run_all(args: argparse.Namespace, runs: list[tuple[str, int, str]], trees: dict[str, Path],
            variants: dict[str, list[str]], raw: Path, work: Path, common: dict) -> dict[str, list[float]]:
    """Every run ``--repeat`` times over, each printed as it ends: images/s per run name."""
    rates: dict[str, list[float]] = {}
    for repeat in range(args.repeat):
        for name, workers, variant in runs:
            options = shlex.split(args.extract_args) + variants[variant]
            result = run_once(trees[name], raw, work, workers, args.images, options)
            run = ":".join([name, str(workers)] + ([variant] if variant else []))
            rates.setdefault(run, []).append(result["images_per_s"])
            print(json.dumps({"bench": "extract_cli", **common, "tree": name, "workers": workers,
                              "variant": variant or None, "options": options, "repeat": repeat, **result}),
                  flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--size", default="256x176", help="HxW of the files (uniform)")
    parser.add_argument("--sizes", choices=["uniform", "mixed"], default="uniform",
                        help="mixed: extract_bench's crawl of many sizes, qualities, progressive and person-free files")
    parser.add_argument("--extract-args", default="", help='more CLI options for every run, e.g. "--backend fast"')
    parser.add_argument("--runs", default="new:1,new:0",
                        help="TREE:WORKERS[:VARIANT], comma-separated; the first is the baseline")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH", help="another package tree")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="OPTIONS"',
                        help='CLI options of the runs that name it, after --extract-args, e.g. '
                        'share="--cpu-decode-share 0.3"')
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--spin", type=int, default=0,
                        help="processes that keep a core busy during every run: a machine shared with other work")
    parser.add_argument("--label", default="", help="free text naming the machine")
    args = parser.parse_args()
    trees = {"new": ROOT, **{name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.tree)}}
    variants = {"": [], **{name: shlex.split(v) for name, v in (t.split("=", 1) for t in args.variant)}}
    runs = [(name, int(workers), rest[0] if rest else "")
            for name, workers, *rest in (r.split(":") for r in args.runs.split(","))]
    unknown = sorted({name for name, _, _ in runs} - set(trees))
    if unknown:
        raise SystemExit(f"no --tree for {', '.join(unknown)}")
    unknown = sorted({variant for _, _, variant in runs} - set(variants))
    if unknown:
        raise SystemExit(f"no --variant for {', '.join(unknown)}")
    import torch
    from extract_bench import make_files

    h, w = (int(v) for v in args.size.split("x"))
    mixed = args.sizes == "mixed"
    common = {"images": args.images, "size": None if mixed else [h, w], "sizes": args.sizes, "spin": args.spin,
              "extract_args": args.extract_args, "gpu": torch.cuda.get_device_name(0)
              if torch.cuda.is_available() else None, "gpus_visible": torch.cuda.device_count(),
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "label": args.label,
              "python": sys.version.split()[0], "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        made = time.perf_counter()
        _, crawl, _ = make_files(raw, args.sizes, args.images, (h, w))
        if crawl is not None:
            common["crawl"] = crawl
        print(f"{args.images} files made in {time.perf_counter() - made:.0f} s", file=sys.stderr)
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.spin)]
        try:
            rates = run_all(args, runs, trees, variants, raw, Path(tmp), common)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    baseline = ":".join([str(v) for v in runs[0][:2]] + ([runs[0][2]] if runs[0][2] else []))
    base = statistics.median(rates[baseline])
    print(json.dumps({"bench": "extract_cli_compare", **common, "baseline": baseline,
                      "images_per_s_median": {k: statistics.median(v) for k, v in rates.items()},
                      "ratio_to_baseline": {k: round(statistics.median(v) / base, 3) for k, v in rates.items()},
                      "runs": {k: v for k, v in rates.items()}}), flush=True)


if __name__ == "__main__":
    main()
