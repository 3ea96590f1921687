"""The scale-out recipe of ``pipeline/cluster/`` on loopback: ``dask scheduler``, two ``dask worker`` processes, and
``pgpig-data extract --scheduler`` / ``pgpig-data pair --scheduler`` against them, as a user runs it on real hosts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.keypoints import read_keypoints


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask() -> list[str]:
    """The ``dask`` command line of this Python's environment."""
    exe = Path(sys.executable).with_name("dask")
    return [str(exe)] if exe.exists() else [shutil.which("dask") or "dask"]


@pytest.fixture
def loopback_cluster(tmp_path):
    """A scheduler and two single-threaded worker processes on 127.0.0.1, stopped after the test."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": "{}"}
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs = [subprocess.Popen([*_dask(), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, stdout=open(logs / "scheduler.log", "w"),
                              stderr=subprocess.STDOUT)]
    try:
        for i in range(2):
            procs.append(subprocess.Popen([*_dask(), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                           "--name", f"loopback-{i}", "--local-directory", str(tmp_path / f"w{i}"),
                                           "--no-dashboard"], env=env,
                                          stdout=open(logs / f"worker{i}.log", "w"), stderr=subprocess.STDOUT))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        # the workers first, then the scheduler: a worker whose scheduler is already gone waits about 8 s for it
        for group in (procs[1:], procs[:1]):
            for p in group:
                p.terminate()
            for p in group:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_extract_and_pair_on_a_scheduler_with_two_workers(loopback_cluster, market_tree, tmp_path):
    raw, _ = market_tree
    out, run_file = tmp_path / "kp", tmp_path / "extract.json"
    cli = [sys.executable, "-m", "pipeline.cli"]
    start = time.perf_counter()
    done = subprocess.run([*cli, "extract", str(raw), "--out", str(out), "--run-file", str(run_file),
                           "--scheduler", loopback_cluster, "--partition-size", "16", "--device", "cpu", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(run_file.read_text())
    assert record["scheduler"] == loopback_cluster
    table = read_keypoints(out, ["image", "status", "source"])
    files = sorted(p for p in raw.rglob("*.jpg"))
    assert table.num_rows == len(files)  # every file has its row, none lost or doubled across the two workers
    assert len(set(table["image"].to_pylist())) == len(files)
    assert set(table["source"].to_pylist()) == {"yolo"}
    assert table["status"].to_pylist().count("ok") > 0.5 * len(files)

    done = subprocess.run([*cli, "pair", "--split", "train", "--keypoints", str(out), "--run-file", str(run_file),
                           "--out", str(tmp_path / "shards"), "--images-per-shard", "16", "--scheduler",
                           loopback_cluster], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((tmp_path / "shards" / "train" / "manifest.json").read_text())
    assert manifest["counts"]["pairs"] > 0 and len([f for f in manifest["files"] if f["kind"] == "images"]) > 1
    print(f"\nloopback cluster: extract + pair of {len(files)} files in {time.perf_counter() - start:.1f} s")


def test_start_gpu_workers_starts_one_pinned_worker_per_gpu(tmp_path):
    """The shipped launch script, with ``nvidia-smi`` and ``dask`` stood in for: one single-threaded worker per GPU
    listed, each under its own ``CUDA_VISIBLE_DEVICES``, with the nanny's pre-spawn environment cleared."""
    import importlib.resources

    folder = importlib.resources.files("pipeline") / "cluster"
    assert (folder / "slurm_dask.py").is_file() and (folder / "README.md").is_file()
    bin_dir, log = tmp_path / "bin", tmp_path / "dask.log"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    record = f'echo "$CUDA_VISIBLE_DEVICES $DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON $*" >> {log}'
    (bin_dir / "dask").write_text(f"#!/bin/sh\n{record}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(folder / "start_gpu_workers.sh"), "tcp://head:8786", str(tmp_path / "w")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = sorted(log.read_text().splitlines())
    assert len(lines) == 2
    for gpu, line in enumerate(lines):
        assert line.startswith(f"{gpu} {{}} worker tcp://head:8786 --nworkers 1 --nthreads 1 --name "), line
        assert line.endswith(f"-gpu{gpu} --local-directory {tmp_path / 'w'}"), line
