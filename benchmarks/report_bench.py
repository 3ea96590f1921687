"""Report speed: seconds of ``pgpig-data report`` on a synthetic 100k-row keypoints table, one JSON line.

    python benchmarks/report_bench.py [--rows 100000] [--samples 48] [--repeat 3]

The table is built from arrays (no drawing per row): a small mannequin set (64 real images) is written once and
every row points at one of its files, with random keypoints, scores, boxes, person counts and a mix of statuses
and reasons, so the report draws real images for its sample and worst cases and counts a realistic table. The
baseline in the same run is reading the report's columns of the same table (``read_keypoints``): the floor any
report over the table pays. The line carries the report's own stage timings (numbers, pictures, plots, write).
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.keypoints import read_keypoints  # noqa: E402
from pipeline.report import ReportConfig, run_report  # noqa: E402
from pipeline.synthetic import SynthConfig, write_mannequins  # noqa: E402
from schemas.tables import table_from_pydict, write_table  # noqa: E402

COLUMNS = ["image", "dataset", "split", "status", "reason", "width", "height", "n_persons", "box", "keypoints",
           "scores"]
REASONS = {"no_person": ["no person detected"], "unreadable": ["cannot decode: truncated JPEG", "empty file"],
           "skipped": ["Market-1501 distractor id 0000", "Market-1501 junk id -1", "not an image file"]}


def synthetic_run(work: Path, rows: int, seed: int = 0) -> Path:
    """``work/raw`` (64 mannequin images) and ``work/keypoints`` (``rows`` rows pointing at them); returns the run
    file."""
    raw = work / "raw"
    write_mannequins(raw, SynthConfig(identities=8, poses_per_identity=8, seed=seed))
    files = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(files), rows)
    status = rng.choice(["ok", "no_person", "unreadable", "skipped"], size=rows, p=[0.9, 0.05, 0.02, 0.03])
    reason = [None if s == "ok" else REASONS[s][k % len(REASONS[s])] for s, k in zip(status, pick, strict=True)]
    ok = status == "ok"
    xy = np.stack([rng.uniform(2, 62, (rows, 18)), rng.uniform(2, 126, (rows, 18))], axis=-1).astype(np.float32)
    scores = rng.beta(5, 1.5, (rows, 18)).astype(np.float32)
    hidden = (scores < 0.5) | ~ok[:, None]
    xy[hidden] = -1
    scores[~ok] = 0
    lo, hi = xy.min(axis=1, initial=np.inf, where=~hidden[..., None]), xy.max(axis=1, initial=-np.inf,
                                                                             where=~hidden[..., None])
    box = np.concatenate([lo, hi, np.full((rows, 1), 0.9)], axis=1).astype(np.float32)
    box[~ok | ~np.isfinite(box).all(axis=1)] = np.nan
    persons = np.where(ok, rng.choice([1, 1, 1, 1, 2, 3], size=rows), 0).astype(np.int16)
    vis = ~hidden
    names = [files[k] for k in pick]
    table = table_from_pydict("keypoints", {
        "image": names, "patn_name": None, "dataset": ["market1501"] * rows,
        "split": np.where(pick % 5 == 4, "test", "train").tolist(), "identity": [n.split("/")[1][:4] for n in names],
        "width": np.full(rows, 64, np.int32), "height": np.full(rows, 128, np.int32), "content_hash": names,
        "status": status.tolist(), "reason": reason, "n_persons": persons, "box": box, "keypoints": xy,
        "scores": scores, "n_visible": vis.sum(axis=1).astype(np.int8), "source": ["yolo"] * rows,
    })
    write_table(table, work / "keypoints" / "part-00000.parquet", "keypoints")
    run_file = work / "extract.json"
    run_file.write_text(json.dumps({"raw": str(raw), "out": str((work / "keypoints").resolve()), "complete": True}))
    return run_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        run_file = synthetic_run(work, args.rows)
        build = time.perf_counter() - start
        # the first run also imports matplotlib; both are reported
        first = None
        best, stages = float("inf"), {}
        for _ in range(args.repeat):
            cfg = ReportConfig(keypoints=work / "keypoints", shards=None, out=work / "report.html",
                               samples=args.samples, run_file=run_file)
            start = time.perf_counter()
            record = run_report(cfg, log=lambda _: None)
            seconds = time.perf_counter() - start
            first = seconds if first is None else first
            if seconds < best:
                best, stages = seconds, {key: round(v, 3) for key, v in cfg.timings.items()}
        read = min(_timed(lambda: read_keypoints(work / "keypoints", COLUMNS)) for _ in range(args.repeat))
        size = (work / "report.html").stat().st_size
        shown = sum(t["shown"] for t in record["samples"]["tiles"])
    print(json.dumps({
        "bench": "report", "rows": args.rows, "samples": args.samples, "tiles_shown": shown,
        "seconds": round(best, 3), "first_seconds": round(first, 3), "rows_per_s": round(args.rows / best),
        "stages": stages, "html_mb": round(size / 1e6, 2), "build_table_seconds": round(build, 3),
        "baseline": "read_keypoints of the report's columns", "baseline_seconds": round(read, 3),
        "ratio": round(best / read, 2),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "python": platform.python_version(),
        "numpy": np.__version__,
    }))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
