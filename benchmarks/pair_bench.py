"""Filter and pair speed: rows/s and pairs/s of ``select_images`` + ``make_pairs`` on a synthetic table, one JSON line.

    python benchmarks/pair_bench.py [--identities 100000] [--per-identity 10] [--baseline-rows 50000] [--repeat 3]

The table is a keypoints table built from arrays (no files): ``identities × per-identity`` rows (1M by
default, 9M ordered pairs), every fifth identity in the test split, a few rows failing each filter. The
baseline in the same run is the obvious Python of PATN's ``create_pairs_dataset.py``: a loop over rows
applying the same filters, then ``itertools.permutations`` per identity, on the first ``--baseline-rows``
rows, extrapolated per row to the full table (its cost is linear in rows at a fixed identity size).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time

import numpy as np

from pipeline.pair import FilterConfig, PairConfig, identity_codes, make_pairs, select_images
from schemas.keypoints import KEYPOINT_NAMES
from schemas.tables import table_from_pydict


def synthetic_table(identities: int, per_identity: int, seed: int = 0):
    """A keypoints table of ``identities × per_identity`` rows, rows of one identity adjacent."""
    rng = np.random.default_rng(seed)
    n = identities * per_identity
    ident = np.repeat(np.arange(identities), per_identity)
    xy = np.stack([rng.uniform(0, 64, (n, 18)), rng.uniform(0, 128, (n, 18))], axis=-1).astype(np.float32)
    xy[rng.random((n, 18)) < 0.02] = -1  # a few hidden joints: some rows fail the required joints
    status = np.where(rng.random(n) < 0.01, "no_person", "ok")
    persons = np.where(rng.random(n) < 0.01, 2, 1).astype(np.int16)
    names = [f"bounding_box_train/{i:07d}_c1s1_{j:07d}_01.jpg" for i, j in zip(ident, range(n), strict=True)]
    vis = ~(xy == -1).all(axis=-1)
    table = table_from_pydict("keypoints", {
        "image": names,
        "patn_name": None,
        "dataset": ["market1501"] * n,
        "split": np.where(ident % 5 == 4, "test", "train").tolist(),
        "identity": [f"{i:07d}" for i in ident],
        "width": np.full(n, 64, np.int32),
        "height": np.full(n, 128, np.int32),
        "content_hash": names,  # unique: no duplicates to collapse
        "status": status.tolist(),
        "reason": [None if s == "ok" else "no person detected" for s in status],
        "n_persons": persons,
        "box": np.zeros((n, 5), np.float32),
        "keypoints": xy,
        "scores": vis.astype(np.float32),
        "n_visible": vis.sum(axis=1).astype(np.int8),
        "source": ["yolo"] * n,
    })
    return table


def ours(table, split: str) -> int:
    rows, _ = select_images(table, split, FilterConfig())
    codes, _ = identity_codes(table, rows)
    return len(make_pairs(codes, PairConfig()))


def naive(table, split: str) -> int:
    """Row by row, as the PATN scripts do it with pandas ``apply``, then permutations per identity."""
    cols = table.select(["identity", "split", "status", "n_persons", "keypoints", "image"]).to_pylist()
    joints = [KEYPOINT_NAMES.index(j) for j in ("r_shoulder", "l_shoulder", "r_hip", "l_hip")]
    groups: dict[str, list[str]] = {}
    for r in cols:
        if r["status"] != "ok" or r["split"] != split or r["n_persons"] > 1:
            continue
        if any(r["keypoints"][j] == [-1, -1] for j in joints):
            continue
        groups.setdefault(r["identity"], []).append(r["image"])
    return sum(1 for names in groups.values() for _ in itertools.permutations(names, 2))


def best_seconds(fn, repeat: int) -> tuple[float, int]:
    times, result = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--per-identity", type=int, default=10)
    parser.add_argument("--baseline-rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    table = synthetic_table(args.identities, args.per_identity)
    rows = table.num_rows
    # both splits, as a data set is paired: every row is filtered twice, every pair made once
    seconds, pairs = best_seconds(lambda: ours(table, "train") + ours(table, "test"), args.repeat)
    subset = table.slice(0, args.baseline_rows)
    base_seconds, base_pairs = best_seconds(lambda: naive(subset, "train") + naive(subset, "test"), args.repeat)
    check = ours(subset, "train") + ours(subset, "test")
    assert check == base_pairs, (check, base_pairs)  # same filters, same pairs
    base_full = base_seconds * rows / subset.num_rows
    print(json.dumps({
        "bench": "pair", "rows": rows, "pairs": pairs, "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds), "pairs_per_s": round(pairs / seconds),
        "baseline": "python loop + itertools.permutations per identity", "baseline_rows": subset.num_rows,
        "baseline_seconds_extrapolated": round(base_full, 3), "baseline_pairs_per_s": round(base_pairs / base_seconds),
        "ratio": round(base_full / seconds, 2),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "python": platform.python_version(),
        "numpy": np.__version__,
    }))


if __name__ == "__main__":
    main()
