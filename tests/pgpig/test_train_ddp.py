"""Data-parallel training: ``torchrun`` with two CPU processes (gloo) against one process with the same global batch.

With instance norm, no dropout and a global batch split 2 + 2, the two processes' averaged gradients are the single
process's gradients up to float rounding, so the logged losses of step 1 agree and after one Adam step almost every
weight does too. Adam turns a rounding-sized gradient into a full ``lr`` step where the gradient is near 0, so a few
weights differ; a run whose processes did not average their gradients differs in about a quarter of the generator's
weights (measured: 25% with 2 + 2 pairs unsynchronised, 0.06% synchronised).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from pgpig.checkpoint import step_folders
from pgpig.cli import main

SETTINGS = ["--device", "cpu", "--workers", "0", "--quiet", "--batch-size", "4", "--steps", "1",
            "--set", "ngf=8", "--set", "n_blocks=1", "--set", "d_blocks=1", "--set", "vgg_weights=null",
            "--set", "allow_random_vgg=true", "--set", "dropout=0", "--set", "log_every=1"]


def _losses(output: str) -> dict[str, float]:
    """``name value`` pairs of the ``RUN: step N, epoch E; l1 0.3891, ...`` summary line."""
    line = next(line for line in output.splitlines() if ": step " in line)
    return {k: float(v) for k, v in re.findall(r"(\w+) (-?\d+\.\d+)", line.split(";", 1)[1])}


def test_two_processes_train_like_one_with_the_same_global_batch(market_shards, tmp_path):
    single = CliRunner().invoke(main, ["train", "--shards", str(market_shards), "--run", str(tmp_path / "single"),
                                       *SETTINGS])
    assert single.exit_code == 0, single.output
    # `--run` would be taken for torchrun's own --run-path by its argument parser: the folder goes in --set
    ddp = _ddp_train(["--shards", str(market_shards), "--set", f"run_dir={tmp_path / 'ddp'}", *SETTINGS], tmp_path)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    assert _losses(ddp.stdout) == pytest.approx(_losses(single.output), abs=2e-4)
    for name in ("generator", "discriminators"):
        a = load_file(str(tmp_path / "single" / "checkpoints" / "step-00000001" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "ddp" / "checkpoints" / "step-00000001" / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        diff = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
        assert diff.max() <= 2 * 2e-4 + 1e-6  # at most one Adam step (lr 2e-4) apart
        assert (diff > 1e-5).float().mean() < 0.01, name
    def files(run: Path) -> list[str]:  # rank 0 alone writes: the same files as one process, no more
        return sorted(str(p.relative_to(run)) for p in run.rglob("*") if "tensorboard" not in p.parts)

    assert files(tmp_path / "ddp") == files(tmp_path / "single")


def _without(settings: list[str], option: str) -> list[str]:
    """``settings`` without ``option`` and its value."""
    return [a for i, a in enumerate(settings) if option not in (a, settings[i - 1] if i else None)]


def _ddp_train(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``pgpig train`` under torchrun with two processes, torchrun's own folder under ``tmp_path`` (by default
    torchrun leaves one in the temporary directory)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           f"--log-dir={tmp_path / 'torchrun'}", "-m", "pgpig.cli", "train", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_a_two_process_checkpoint_resumes_in_one_process_on_the_same_data(market_shards, tmp_path):
    """Rank 0 writes the one checkpoint and the data order is the global batch's whatever the process count, so two
    processes to step 2, then one process from their checkpoint to step 4, train on the pairs a one-process run
    trains on. With ``lr`` 0 the weights stay put and each step's losses depend on its batch alone: the resumed
    run's last losses equal the one-process run's (a wrong data order changes them by far more than rounding)."""
    base = _without(SETTINGS, "--steps") + ["--set", "lr=0"]
    straight = CliRunner().invoke(main, ["train", "--shards", str(market_shards), "--run", str(tmp_path / "one"), *base,
                                         "--steps", "4"])
    assert straight.exit_code == 0, straight.output
    first = _ddp_train(["--shards", str(market_shards), "--set", f"run_dir={tmp_path / 'mixed'}", *base,
                        "--steps", "2"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert [p.name for p in step_folders(tmp_path / "mixed")] == ["step-00000002"]
    resumed = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "mixed"), "--steps", "4", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert step_folders(tmp_path / "mixed")[-1].name == "step-00000004"
    assert _losses(resumed.output) == pytest.approx(_losses(straight.output), abs=1e-4)
    # and the order matters: the step-2 losses of the one-process run are another batch's
    two = CliRunner().invoke(main, ["train", "--shards", str(market_shards), "--run", str(tmp_path / "two"), *base,
                                    "--steps", "2"])
    assert _losses(two.output) != pytest.approx(_losses(straight.output), abs=1e-4)


def test_global_batch_must_split_over_the_processes(market_shards, tmp_path):
    ddp = _ddp_train(["--shards", str(market_shards), "--set", f"run_dir={tmp_path / 'odd'}", *SETTINGS,
                      "--batch-size", "3"], tmp_path)
    assert ddp.returncode != 0 and "batch_size 3 (the global batch) does not split over 2 processes" in ddp.stderr


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has the GPUs: --gpus would launch")
def test_gpus_beyond_the_machine_is_a_one_line_error(market_shards, tmp_path):
    result = CliRunner().invoke(main, ["train", "--shards", str(market_shards), "--run", str(tmp_path / "r"),
                                       "--gpus", "2", "--steps", "1"])
    assert result.exit_code == 1
    assert f"--gpus 2: this machine has {torch.cuda.device_count()} CUDA device(s)" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine test_train_gpu.py launches on real GPUs")
def test_the_gpus_launcher_trains_and_leaves_no_torchrun_folder(market_shards, tmp_path, monkeypatch):
    """``--gpus 2`` relaunches the command under torchrun (here its two processes train on the CPU, the device count
    made 2), and removes torchrun's own folder, which torchrun leaves in the temporary directory otherwise."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = CliRunner().invoke(main, ["train", "--gpus", "2", "--shards", str(market_shards), "--set",
                                       f"run_dir={tmp_path / 'run'}", *_without(SETTINGS, "--device")])
    assert result.exit_code == 0, result.output
    assert step_folders(tmp_path / "run")[-1].name == "step-00000001"
    assert not list(tmp.glob("torchelastic_*")) and not list(tmp.glob("pgpig-torchrun-*"))
