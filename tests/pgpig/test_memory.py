"""``pgpig.memory`` and the run folder of a run that never checkpointed: the memory check refuses a batch that cannot
fit (naming one that does, which then passes), leaves the run's numbers alone, and a failed or killed run leaves no
folder that looks like a run."""

from __future__ import annotations

import errno
import os
import re
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from pgpig.checkpoint import step_folders
from pgpig.cli import main
from pgpig.config import load_config
from pgpig.errors import TrainError
from pgpig.memory import LIMIT_ENV, available_memory, parse_size
from pgpig.train import train
from schemas.errors import SchemaError

# the demo recipe's model (PATN, ngf 16, 3 blocks, no discriminators, no VGG) on the 128x64 mannequins: a step takes
# about 20 MiB per pair on the CPU (measured by the check itself: 18-21 MiB over several runs)
DEMO = ["--set", "ngf=16", "--set", "n_blocks=3", "--set", "norm=batch", "--set", "use_gan=false",
        "--set", "lambda_perceptual=0", "--workers", "0", "--quiet", "--device", "cpu"]
TINY = {"ngf": 8, "n_blocks": 1, "d_blocks": 1, "vgg_weights": None, "allow_random_vgg": True, "num_workers": 0,
        "progress": False, "device": "cpu"}


def one_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def test_a_batch_that_cannot_fit_is_refused_with_one_that_fits(market_shards, tmp_path, monkeypatch):
    # 300 MiB for the run: 90% of it holds the fixed part (under 50 MiB), the validation's 8 pairs in eval (about
    # 70 MiB) and about 8 training pairs, not the 24 asked for
    monkeypatch.setenv(LIMIT_ENV, "300M")
    run = tmp_path / "run"
    args = ["train", "--shards", str(market_shards), "--run", str(run), "--steps", "1", *DEMO]
    refused = CliRunner().invoke(main, [*args, "--batch-size", "24"])
    assert refused.exit_code == 1
    line = one_line(refused.output)
    assert "not enough memory for batch_size 24 (cpu)" in line and f"0.3 GiB is available ({LIMIT_ENV}" in line, line
    assert "--skip-memory-check" in line
    need = float(re.search(r"a step needs about ([\d.]+) GiB", line)[1])
    assert 0.3 < need < 1.0, line  # 24 pairs of about 20 MiB
    fits = int(re.search(r"batch_size (\d+) fits: pass --batch-size (\d+)", line)[2])
    assert 4 <= fits < 24, line
    assert not run.exists()  # refused before the run folder was made

    passed = CliRunner().invoke(main, [*args, "--batch-size", str(fits)])
    assert passed.exit_code == 0, passed.output
    assert "step 1," in passed.output and step_folders(run)


def test_a_larger_model_on_the_cpu_is_pointed_to_the_demo_recipe(small_market_shards, tmp_path, monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, "1M")  # less than any model's parameters: not even one pair fits
    result = CliRunner().invoke(main, ["train", "--shards", str(small_market_shards), "--run", str(tmp_path / "r"),
                                       "--batch-size", "2", *DEMO, "--set", "ngf=24", "--set", "n_blocks=1"])
    line = one_line(result.output)
    assert "not even one pair fits, or a smaller model: --recipe demo (PATN at ngf 16, 3 blocks)" in line, line


def test_the_check_leaves_the_run_unchanged(small_market_shards, tmp_path):
    """Weights, batch-norm statistics, the discriminators and their history pool, dropout: all as without the check
    (its dry run draws from the same random generators, on networks of its own)."""
    common = {**TINY, "shards": small_market_shards, "steps": 2, "batch_size": 4, "norm": "batch", "pool_size": 2,
              "flip": True}
    checked = train(load_config(None, {**common, "run_dir": tmp_path / "checked"}))
    plain = train(load_config(None, {**common, "run_dir": tmp_path / "plain", "skip_memory_check": True}))
    assert checked["memory"] is not None and plain["memory"] is None
    assert checked["memory"].per_pair > 0 and checked["memory"].available > 0
    assert checked["losses"] == plain["losses"]
    for name in ("generator.safetensors", "checkpoints/step-00000002/discriminators.safetensors"):
        a, b = load_file(str(tmp_path / "checked" / name)), load_file(str(tmp_path / "plain" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert any("running_mean" in k for k in a)


def test_memory_limit_values():
    assert parse_size("8G") == parse_size("8GiB") == parse_size("8gb") == 8 * 2**30
    assert parse_size("512M") == 2**29 and parse_size("1.5K") == 1536 and parse_size("1048576") == 2**20
    with pytest.raises(TrainError, match=f"{LIMIT_ENV}='lots' is not a size"):
        parse_size("lots")


def test_the_limit_caps_what_is_available(monkeypatch):
    free, source = available_memory(torch.device("cpu"))
    assert free > 0 and source in ("MemAvailable", "the cgroup's memory limit")
    monkeypatch.setenv(LIMIT_ENV, "1M")
    assert available_memory(torch.device("cpu")) == (2**20, LIMIT_ENV)
    monkeypatch.setenv(LIMIT_ENV, "1P")
    with pytest.raises(TrainError, match=LIMIT_ENV):
        available_memory(torch.device("cpu"))


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(small_market_shards, tmp_path, monkeypatch):
    """A disk that fills at the first checkpoint (the fsync before a checkpoint file is renamed into place fails):
    the folder the run made goes; a folder that was there before stays."""
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if "/checkpoints/" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    common = {**TINY, "shards": small_market_shards, "steps": 1, "batch_size": 2, "use_gan": False,
              "skip_memory_check": True}
    made = tmp_path / "runs" / "new"
    with pytest.raises(SchemaError, match="No space left on device"):
        train(load_config(None, {**common, "run_dir": made}))
    assert not made.exists() and made.parent.is_dir()
    given = tmp_path / "given"
    given.mkdir()
    with pytest.raises(SchemaError, match="No space left on device"):
        train(load_config(None, {**common, "run_dir": given}))
    assert (given / "config.yaml").is_file()  # not this run's folder to remove


def test_a_folder_left_by_a_killed_run_is_named_so(small_market_shards, tmp_path):
    """What ``kill -9`` or the OOM killer leaves before the first checkpoint: ``config.yaml``, ``samples/`` and
    ``tensorboard/``, no checkpoint. Made here by a real run whose checkpoint is then taken away."""
    run = tmp_path / "run"
    args = ["train", "--shards", str(small_market_shards), "--run", str(run), "--steps", "1", "--batch-size", "2",
            "--set", "ngf=8", "--set", "n_blocks=1", "--set", "use_gan=false", "--set", "lambda_perceptual=0",
            "--workers", "0", "--quiet", "--skip-memory-check"]
    assert CliRunner().invoke(main, args).exit_code == 0
    for name in ("generator.safetensors", "checkpoints"):
        path = run / name
        path.unlink() if path.is_file() else shutil.rmtree(path)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "samples", "tensorboard"]
    expected = f"{run}: a run that stopped before its first checkpoint"
    for again in (args, ["train", "--resume", str(run)]):
        line = one_line(CliRunner().invoke(main, again).output)
        assert expected in line and "remove the folder or pass another --run" in line, line


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_estimate_matches_the_run_peak(market_shards, tmp_path):
    """On a GPU the estimate (the dry run's ``max_memory_allocated`` at 1 and 3 pairs, extrapolated) is the peak of
    a run at 16 pairs within 15%; the check runs first, so the run's peak is its own."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    cfg = load_config(None, {**TINY, "device": "cuda", "ngf": 32, "n_blocks": 3, "shards": market_shards,
                             "run_dir": tmp_path / "run", "steps": 3, "batch_size": 16, "amp": "none"})
    estimate = train(cfg)["memory"]
    real = torch.cuda.max_memory_allocated() - estimate.held
    assert abs(estimate.need(16) - real) < 0.15 * real, (estimate, real)
