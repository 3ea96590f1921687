"""Promise 2, kill -9 anywhere: ``pgpig-data extract`` and ``pgpig-data pair`` killed at random points, then run
again, end with the outputs of an uninterrupted run, and no partial file is ever taken as valid.

Each seed picks where the kill lands: after a random number of finished output files plus a random fraction of
the next one's time, so it falls before any output, mid-write, or between files. The default run tries a few
seeds; ``-m slow`` adds a soak of many more. Training's kill -9 resume (bit for bit, same step count) is
``tests/pgpig/test_train_kill.py``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.extract import ExtractConfig, run_extract
from pipeline.keypoints import read_keypoints
from pipeline.pair import PairRunConfig, run_pair
from pipeline.shards import ShardSet, verify_shard_set
from schemas.manifest import Manifest
from schemas.tables import read_table

CLI = [sys.executable, "-m", "pipeline.cli"]
SEEDS = [0, 1, 2, *(pytest.param(s, marks=pytest.mark.slow) for s in range(3, 25))]


def quiet(*_args, **_kwargs) -> None:
    pass


def kill_when(proc: subprocess.Popen, count, target: int, extra_s: float, limit_s: float = 120) -> int:
    """SIGKILL ``proc`` once ``count()`` reaches ``target`` and ``extra_s`` more seconds passed (or it ended).

    Returns the count at the kill; the process may have finished first, which is a valid outcome too."""
    deadline = time.monotonic() + limit_s
    while proc.poll() is None and count() < target and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(extra_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return count()


def sorted_rows(folder: Path) -> list[dict]:
    """The keypoints table as rows sorted by image, NaN (an empty box) as None so that rows compare equal."""
    rows = read_keypoints(folder).to_pylist()
    for row in rows:
        row["box"] = [None if v != v else v for v in row["box"]]
    return sorted(rows, key=lambda r: r["image"])


@pytest.fixture(scope="module")
def extract_reference(market_tree, tmp_path_factory) -> tuple[Path, list[dict]]:
    root, summary = market_tree
    work = tmp_path_factory.mktemp("reference")
    csvs = (root / "market-annotation-train.csv", root / "market-annotation-test.csv")
    run_extract(ExtractConfig(raw=root, out=work / "keypoints", run_file=work / "extract.json", workers=0,
                              annotations=csvs, partition_size=2), log=quiet)
    rows = sorted_rows(work / "keypoints")
    assert len(rows) == summary["images"]
    return work, rows


@pytest.mark.parametrize("seed", SEEDS)
def test_extract_killed_anywhere_then_rerun_equals_an_uninterrupted_run(seed, market_tree, extract_reference,
                                                                       tmp_path):
    root, summary = market_tree
    _, reference = extract_reference
    out = tmp_path / "keypoints"
    cmd = [*CLI, "extract", str(root), "--out", str(out), "--run-file", str(tmp_path / "extract.json"),
           "--annotations", str(root / "market-annotation-train.csv"), "--annotations",
           str(root / "market-annotation-test.csv"), "--workers", "0", "--partition-size", "2", "--quiet"]
    rng = np.random.default_rng(seed)
    parts = -(-summary["images"] // 2)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = kill_when(proc, lambda: len(list(out.glob("part-*.parquet"))), int(rng.integers(0, parts)),
                          float(rng.uniform(0, 0.03)))
    # what the killed run left is whole or absent: every part under its final name reads as a keypoints table
    for part in out.glob("part-*.parquet"):
        read_table(part, "keypoints")
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted_rows(out) == reference  # same rows, each once, same values
    assert not list(out.glob(".*.tmp"))
    record = json.loads((tmp_path / "extract.json").read_text())
    assert record["complete"] and record["rows"] == summary["images"]
    assert record["already_done"] == min(2 * killed_at, summary["images"])  # nothing finished was done twice


@pytest.fixture(scope="module")
def pair_reference(extract_reference) -> tuple[Path, Manifest]:
    work, _ = extract_reference
    manifest = run_pair(PairRunConfig(split="train", keypoints_dir=work / "keypoints", run_file=work / "extract.json",
                                      out=work / "shards", images_per_shard=1), log=quiet)
    return work, manifest


@pytest.mark.parametrize("seed", SEEDS)
def test_pair_killed_anywhere_then_rerun_writes_the_same_shard_bytes(seed, pair_reference, tmp_path):
    work, reference = pair_reference
    folder = tmp_path / "shards" / "train"
    cmd = [*CLI, "pair", "--split", "train", "--keypoints", str(work / "keypoints"), "--run-file",
           str(work / "extract.json"), "--out", str(tmp_path / "shards"), "--images-per-shard", "1", "--quiet"]
    rng = np.random.default_rng(100 + seed)
    files = len(reference.files)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: len(list(folder.glob("images-*.parquet"))) if folder.is_dir() else 0,
              int(rng.integers(0, files)), float(rng.uniform(0, 0.03)))
    if not (folder / "manifest.json").exists():
        # killed before the manifest: whatever files are there, no reader accepts them as a shard set
        with pytest.raises(PipelineError, match="no manifest"):
            ShardSet(folder)
        assert "no manifest" in verify_shard_set(folder)[0]
        rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
    manifest = Manifest.read(folder)
    assert [(e.path, e.kind, e.rows, e.bytes, e.sha256) for e in manifest.files] == [
        (e.path, e.kind, e.rows, e.bytes, e.sha256) for e in reference.files]
    assert verify_shard_set(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == sorted(["manifest.json", *(e.path for e in reference.files)])
