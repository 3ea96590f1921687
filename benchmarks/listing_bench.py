"""Raw listing speed: files/s of ``list_images`` on a flat Market-1501 folder of empty files, one JSON line; with
``--beside-warm-up``, the listing of ``pgpig-data extract``'s start beside the model's warm-up.

    python benchmarks/listing_bench.py [--files 200000] [--repeat 3]
    python benchmarks/listing_bench.py --beside-warm-up [--files 150000] [--layout deepfashion] [--backend fast]
                                       [--device cpu] [--repeat 3] [--label TEXT]

The first form's baseline in the same run is a bare ``os.listdir`` of the same folder (reading the names and
nothing else), so the ratio says what parsing names and building rows costs on top of the directory read. Both
are timed warm (best of ``--repeat``), since a cold read measures the disk, not the code.

The second form makes ``--files`` one-byte files in a DeepFashion In-shop (or ``<identity>/<image>`` folder) tree
and runs ``run_extract`` in fresh processes up to its first task (the tasks are not run: ``listing_seconds`` of its
record, from the call to the planned tasks, which includes reading the settings and importing torch). Variants:
``child``, as shipped (``start_listing``: the files are listed in a child process); ``in_process``, the listing
done by this process after the workers start (what the child replaces); each with the workers' warm-up
(``warm_worker``) and with a warm-up that does nothing. The baseline, in the same run: ``list_images`` alone in a
fresh process. Prints one ``listing_startup`` JSON line of medians over ``--repeat`` rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.datasets import list_images  # noqa: E402

VARIANTS = ("child", "in_process")


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


def make_tree(root: Path, n: int, layout: str) -> Path:
    """``n`` one-byte ``.jpg`` files: DeepFashion In-shop's ``img/<gender>/<category>/id_XXXXXXXX/NN_V_view.jpg``,
    5 per item, or ``<identity>/<image>.jpg``, 20 per identity. The listing reads names only."""
    categories = ("Blouses_Shirts", "Dresses", "Pants", "Tees_Tanks", "Jackets_Coats")
    views = ("front", "side", "back", "full", "additional")
    for i in range(n):
        if layout == "deepfashion":
            item, k = divmod(i, 5)
            folder = root / "img" / ("MEN" if item % 3 == 0 else "WOMEN") / categories[item % 5] / f"id_{item:08d}"
            name = f"01_{k + 1}_{views[k]}.jpg"
        else:
            identity, k = divmod(i, 20)
            folder, name = root / f"{identity:05d}", f"{k:03d}.jpg"
        if k == 0:
            folder.mkdir(parents=True)
        (folder / name).write_bytes(b"x")
    return root


def best_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def listing_alone(raw: str) -> dict:
    """In a fresh process: ``list_images`` and nothing beside it."""
    start = time.perf_counter()
    rows = list_images(raw)
    return {"listing_seconds": round(time.perf_counter() - start, 3), "listed": len(rows)}


def extract_start(raw: str, variant: str, warm_up: bool, backend: str, device: str) -> dict:
    """In a fresh process: ``run_extract`` up to its first task, the listing as ``variant`` does it."""
    import pipeline.datasets.background as background
    import pipeline.extract as extract

    if variant == "in_process":
        class InProcess:  # the listing in the driver, once the workers have started
            def __init__(self, root, dataset=None, **options):
                self.args = {"root": root, "dataset": dataset, **options}

            def rows(self):
                return [row.as_dict() for row in list_images(**self.args)]

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                pass

        background.start_listing = InProcess
    if not warm_up:
        extract.warm_worker = lambda settings: {"seconds": 0.0, "error": None}

    def no_tasks(self, tasks, out, progress, log):
        self._ready()  # the warm-up has ended, as before a first task
        return []

    extract._Workers.run = no_tasks
    extract._finish_record = lambda cfg, record, listed: None  # no parts to count
    with tempfile.TemporaryDirectory() as tmp:
        cfg = extract.ExtractConfig(raw=Path(raw), out=Path(tmp) / "kp", run_file=Path(tmp) / "extract.json",
                                    pose_backend=backend, device=device, workers=0)
        record = extract.run_extract(cfg, log=lambda *_: None)
    return {"listing_seconds": record["listing_seconds"], "seconds": record["seconds"], "listed": record["listed"],
            "warm_up_seconds": record["warm_ups"][0]["seconds"] if record["warm_ups"] else None}


def fresh(*args: str) -> dict:
    """This script in a fresh interpreter (the imports are part of what is measured); its JSON line."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": path})
    return json.loads(out.stdout.strip().splitlines()[-1])


def beside_warm_up(args) -> None:
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        raw = str(make_tree(Path(tmp) / "raw", args.files, args.layout))
        list_images(raw)  # the page cache holds the tree for every run alike
        for _ in range(args.repeat):  # rounds, so that a slower spell of the machine hits every variant
            runs.setdefault("alone", []).append(fresh("--run", "alone", raw))
            for variant in VARIANTS:
                for warm in ("warm_up", "no_warm_up"):
                    line = fresh("--run", variant, raw, "--warm", warm, "--backend", args.backend, "--device",
                                 args.device)
                    runs.setdefault(f"{variant}/{warm}", []).append(line)

    def median(key: str, field: str = "listing_seconds") -> float:
        return round(statistics.median(r[field] for r in runs[key]), 3)

    alone = median("alone")
    result = {"bench": "listing_startup", "files": args.files, "layout": args.layout, "backend": args.backend,
              "device": args.device, "repeat": args.repeat, "alone_listing_seconds": alone}
    for variant in VARIANTS:
        result[variant] = {
            "listing_seconds": median(f"{variant}/warm_up"),
            "listing_seconds_no_warm_up": median(f"{variant}/no_warm_up"),
            "warm_up_seconds": median(f"{variant}/warm_up", "warm_up_seconds"),
            "over_no_warm_up": round(median(f"{variant}/warm_up") / median(f"{variant}/no_warm_up"), 2),
        }
    result["child_over_in_process"] = round(result["child"]["listing_seconds"] /
                                            result["in_process"]["listing_seconds"], 2)
    result["runs"] = {key: [r["listing_seconds"] for r in value] for key, value in runs.items()}
    result.update(machine=f"{platform.machine()} {os.cpu_count()} cpu", python=platform.python_version(),
                  label=args.label)
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=None, help="[default: 200000, 150000 with --beside-warm-up]")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--beside-warm-up", action="store_true")
    parser.add_argument("--layout", choices=("deepfashion", "folder"), default="deepfashion")
    parser.add_argument("--backend", default="fast")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--label", default="")
    parser.add_argument("--run", nargs=2, metavar=("VARIANT", "RAW"), help=argparse.SUPPRESS)
    parser.add_argument("--warm", choices=("warm_up", "no_warm_up"), default="warm_up", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        variant, raw = args.run
        line = listing_alone(raw) if variant == "alone" else extract_start(raw, variant, args.warm == "warm_up",
                                                                           args.backend, args.device)
        print(json.dumps(line), flush=True)
        return
    if args.beside_warm_up:
        args.files = args.files or 150_000
        beside_warm_up(args)
        return
    files = args.files or 200_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "market"
        folder = make_market_folder(root, files)
        rows = list_images(root)
        assert len(rows) == files and all(r.skip_reason is None for r in rows)
        seconds = best_seconds(lambda: list_images(root), args.repeat)
        baseline = best_seconds(lambda: os.listdir(folder), args.repeat)
    rate, baseline_rate = files / seconds, files / baseline
    print(json.dumps({
        "bench": "listing", "files": files, "seconds": round(seconds, 3), "files_per_s": round(rate),
        "baseline_os_listdir_files_per_s": round(baseline_rate), "ratio": round(rate / baseline_rate, 4),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
