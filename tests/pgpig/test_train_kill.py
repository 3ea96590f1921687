"""``pgpig train`` resumes after ``kill -9`` (killed at a checkpoint) and after Ctrl-C or SIGTERM (stopped with a
checkpoint of its own): a real process, resumed with ``--resume``.

``test_train.py`` checks exact resume in one process (a run that stopped cleanly at step 2). Here the first
run is a separate ``python -m pgpig.cli train`` process, SIGKILLed while it trains (no ``finally``, no
clean-up, nothing flushed at exit), and the resumed run must still end bit for bit where an uninterrupted
run of the same config ends. The kill is timed by polling ``checkpoints/`` for a complete step folder, so
whatever step it lands on, the comparison stays exact; the time limits are generous.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file
from training_processes import checkpoint_step, train_until_killed

from pgpig.checkpoint import step_folders
from pgpig.cli import main

REPO = Path(__file__).resolve().parents[2]
TOTAL = 16  # steps of every run: the killed process is still training when it is killed (at step 2 or 4)
TINY = ["--set", "ngf=8", "--set", "n_blocks=1", "--set", "d_blocks=1", "--set", "vgg_weights=null",
        "--set", "allow_random_vgg=true", "--workers", "0", "--quiet"]
# 24 train pairs, batch 4: 6 steps an epoch, so a kill at step 2 falls mid-epoch and the resumed run crosses two
# epoch boundaries; 64x32 images (sigma 3, PATN's 6 at half the size) keep a step cheap on 2 CPU cores
COMMON = ["--batch-size", "4", "--set", "flip=true", "--set", "sigma=3", "--set", "checkpoint_every=2",
          "--set", "sample_every=1000", "--set", "log_every=5", *TINY]
CHECKPOINT_FILES = ("generator.safetensors", "discriminators.safetensors", "train_state.pt")
# schemas.files.atomic_path writes NAME through a temporary ".NAME.<random>.tmp" beside it
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")


@pytest.fixture(scope="module")
def straight(small_market_shards, tmp_path_factory) -> Path:
    """The uninterrupted run of ``TOTAL`` steps."""
    run = tmp_path_factory.mktemp("straight") / "run"
    result = CliRunner().invoke(main, ["train", "--shards", str(small_market_shards), "--run", str(run),
                                       "--steps", str(TOTAL), *COMMON])
    assert result.exit_code == 0, result.output
    return run


def latest(run: Path) -> Path:
    return step_folders(run)[-1]


def file_step(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["step"])


def assert_same_weights(straight: Path, run: Path) -> None:
    """The generator and the last checkpoint's discriminators of two runs are equal, tensor for tensor."""
    a, b = load_file(str(straight / "generator.safetensors")), load_file(str(run / "generator.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    da = load_file(str(latest(straight) / "discriminators.safetensors"))
    db = load_file(str(latest(run) / "discriminators.safetensors"))
    assert da.keys() == db.keys() and all(torch.equal(da[k], db[k]) for k in da)


def test_kill_9_then_resume_ends_bit_for_bit_like_an_uninterrupted_run(small_market_shards, straight, tmp_path):
    kill_after = 2  # the first checkpoint; a later one may have landed by the time the kill does
    run = tmp_path / "run"
    step, returncode, output = train_until_killed(["--shards", str(small_market_shards), "--run", str(run), "--steps",
                                                   str(TOTAL), *COMMON], run, tmp_path, kill_after, timeout=120)
    # killed while training: not finished before the kill, nor failed on its own
    assert returncode == -signal.SIGKILL, f"train exited {returncode} before the kill:\n{output}"
    killed_at = checkpoint_step(run)
    assert kill_after <= step <= killed_at < TOTAL, (step, killed_at)

    # what the kill left: complete checkpoint folders, each of one step, and temporaries only under temporary names
    for folder in step_folders(run):
        assert sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT_FILES)
        assert {file_step(folder / name) for name in CHECKPOINT_FILES[:2]} == {int(folder.name[5:])}
    leftovers = [p.name for p in run.iterdir() if TEMP_NAME.match(p.name)]
    assert {TEMP_NAME.match(n)["name"] for n in leftovers} <= {"generator.safetensors", "config.yaml"}, leftovers

    resumed = CliRunner().invoke(main, ["train", "--resume", str(run), "--steps", str(TOTAL)])
    assert resumed.exit_code == 0, resumed.output
    assert f"step {TOTAL}," in resumed.output

    assert_same_weights(straight, run)
    sa = torch.load(latest(straight) / "train_state.pt", weights_only=True)
    sb = torch.load(latest(run) / "train_state.pt", weights_only=True)
    assert sb["step"] == TOTAL and (sa["epoch"], sa["in_epoch"]) == (sb["epoch"], sb["in_epoch"])
    assert file_step(run / "generator.safetensors") == TOTAL
    # no interrupted checkpoint folder survives the resume; other temporaries of the killed process are never read
    assert not list((run / "checkpoints").glob(".step-*"))
    after = {p.name for p in run.iterdir() if TEMP_NAME.match(p.name)}
    assert after <= set(leftovers), after - set(leftovers)


def test_an_interrupted_checkpoint_folder_is_ignored_and_removed(small_market_shards, straight, tmp_path):
    # a kill in the middle of writing the step-16 checkpoint: its temporary folder holds a complete generator of
    # step 16 and a torn train_state.pt; resume must take the complete step-2 folder and end like `straight`
    run = tmp_path / "run"
    first = CliRunner().invoke(main, ["train", "--shards", str(small_market_shards), "--run", str(run), "--steps", "2",
                                      *COMMON])
    assert first.exit_code == 0, first.output
    torn = run / "checkpoints" / f".step-{TOTAL:08d}.tmp"
    torn.mkdir()
    (torn / "generator.safetensors").write_bytes((latest(straight) / "generator.safetensors").read_bytes())
    (torn / "train_state.pt").write_bytes((latest(straight) / "train_state.pt").read_bytes()[:100])
    resumed = CliRunner().invoke(main, ["train", "--resume", str(run), "--steps", str(TOTAL)])
    assert resumed.exit_code == 0, resumed.output
    assert not torn.exists()
    a, b = load_file(str(straight / "generator.safetensors")), load_file(str(run / "generator.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_before_the_first_checkpoint_saves_the_step_and_resume_ends_like_an_uninterrupted_run(
        small_market_shards, straight, tmp_path, signum):
    # no periodic checkpoint before step 1000: all the run has is the one written at the signal. The signal goes to
    # the whole process group, the DataLoader worker included, as Ctrl-C from a terminal and SIGTERM from torchrun
    # or a job scheduler do. Ctrl-C is repeated every few ms until the process exits, so later ones land while the
    # step finishes and while the checkpoint is written; SIGTERM comes once
    run = tmp_path / "run"
    threads = str(torch.get_num_threads())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    proc = subprocess.Popen([sys.executable, "-m", "pgpig.cli", "train", "--shards", str(small_market_shards),
                             "--run", str(run), "--steps", str(TOTAL), *COMMON, "--set", "checkpoint_every=1000",
                             "--workers", "1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # the step-0 sample grid is written just before the first step trains
        while not (run / "samples" / "step-000000.png").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0].decode()
            time.sleep(0.01)
        os.killpg(proc.pid, signum)
        while signum == signal.SIGINT and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                break
        output = proc.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signum, output

    # one checkpoint, complete, at the step the signal stopped it
    (folder,) = step_folders(run)
    stopped_at = int(folder.name[5:])
    assert 1 <= stopped_at < TOTAL, output
    assert sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT_FILES)
    assert {file_step(folder / name) for name in CHECKPOINT_FILES[:2]} == {stopped_at}
    assert torch.load(folder / "train_state.pt", weights_only=True)["step"] == stopped_at
    assert not list((run / "checkpoints").glob(".step-*"))
    # the one line: where, and the command that resumes
    name = signal.Signals(signum).name
    assert f"stopped by {name} at step {stopped_at}: checkpoint {folder}; resume with: pgpig train --resume {run}\n" \
        in output, output
    if signum == signal.SIGINT:  # the later Ctrl-Cs were ignored, and said so
        assert "SIGINT ignored: already stopping" in output, output

    resumed = CliRunner().invoke(main, ["train", "--resume", str(run), "--workers", "0"])
    assert resumed.exit_code == 0, resumed.output
    assert f"step {TOTAL}," in resumed.output
    assert_same_weights(straight, run)
