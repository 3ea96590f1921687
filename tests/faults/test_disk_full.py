"""Promise 4, disk full: a write that fails stops the stage with one clear line naming the file, and leaves what
was written before intact and resumable (the same command, run again once there is room, finishes the job).

The failure is injected where every stage's writes meet the disk: the fsync of ``schemas.files.atomic_path``
before a file is renamed into place (``conftest.disk_full``). That the writers' own reports of a full disk
(pyarrow's ``OSError``, safetensors' ``SafetensorError``, ``torch.save``'s ``RuntimeError``) become the same
one-line error is checked on a real, full tmpfs where one can be mounted (root, Linux), and skipped elsewhere.
``tests/pipeline/test_extract.py::test_a_failing_write_stops_with_a_clear_error_and_the_rerun_completes`` covers a
failing part write inside ``run_extract``; here each stage goes through its command line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pgpig.checkpoint import step_folders
from pgpig.cli import main as train_main
from pipeline.cli import main as data_main
from pipeline.errors import PipelineError
from pipeline.keypoints import read_keypoints
from pipeline.shards import ShardSet, verify_shard_set


def one_error_line(output: str, path_pattern: str) -> str:
    """The output's single ``error:`` line, which must name the refused file and the full disk, and no traceback."""
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert re.search(rf"{path_pattern}: cannot write \(No space left on device\).*run the same command again",
                     errors[0]), errors[0]
    return errors[0]


def test_extract_stops_on_a_full_disk_and_the_rerun_completes(market_tree, tmp_path, monkeypatch, disk_full):
    root, summary = market_tree
    monkeypatch.chdir(tmp_path)
    args = ["extract", str(root), "--annotations", str(root / "market-annotation-train.csv"), "--workers", "0",
            "--partition-size", "8", "--quiet"]
    refused = disk_full(lambda name: "/.part-00002.parquet." in name)
    result = CliRunner().invoke(data_main, args)
    assert result.exit_code == 1 and refused
    one_error_line(result.output, r"keypoints/part-00002\.parquet")
    kept = sorted(p.name for p in (tmp_path / "keypoints").iterdir())
    assert kept == ["part-00000.parquet", "part-00001.parquet"]  # whole parts, no temporary left
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(data_main, args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "extract.json").read_text())
    assert record["complete"] and record["already_done"] == 16 and record["rows"] == summary["images"]
    images = read_keypoints(tmp_path / "keypoints")["image"].to_pylist()
    assert len(images) == len(set(images)) == summary["images"]


def test_extract_run_record_that_cannot_be_written_is_one_line_too(market_tree, tmp_path, monkeypatch, disk_full):
    root, summary = market_tree
    monkeypatch.chdir(tmp_path)
    args = ["extract", str(root), "--annotations", str(root / "market-annotation-train.csv"), "--workers", "0",
            "--quiet"]
    seen = []

    def second_run_record(name: str) -> bool:  # the record written at the end, after every part
        if "/.extract.json." in name:
            seen.append(name)
            return len(seen) == 2
        return False

    disk_full(second_run_record)
    result = CliRunner().invoke(data_main, args)
    assert result.exit_code == 1
    one_error_line(result.output, r"extract\.json")
    assert json.loads((tmp_path / "extract.json").read_text())["complete"] is False  # the old record, whole
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(data_main, args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "extract.json").read_text())
    assert record["complete"] and record["processed"] == 0 and record["rows"] == summary["images"]


def test_pair_stops_on_a_full_disk_keeps_the_other_split_and_the_rerun_completes(small_market_shards, tmp_path,
                                                                                  monkeypatch, disk_full):
    work = small_market_shards.parent
    out = tmp_path / "shards"
    args = ["pair", "--keypoints", str(work / "keypoints"), "--run-file", str(work / "extract.json"), "--out",
            str(out), "--size", "64x32", "--images-per-shard", "3", "--quiet"]
    assert CliRunner().invoke(data_main, [*args, "--split", "train"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
    refused = disk_full(lambda name: "/.images-00001.parquet." in name)
    result = CliRunner().invoke(data_main, [*args, "--split", "test"])
    assert result.exit_code == 1 and refused
    one_error_line(result.output, r"shards/test/images-00001\.parquet")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (out / "train").iterdir()} == before  # the earlier set: untouched
    assert verify_shard_set(out / "train") == []
    assert sorted(p.name for p in (out / "test").iterdir()) == ["images-00000.parquet"]  # whole, no temporary
    with pytest.raises(PipelineError, match="no manifest"):
        ShardSet(out / "test")  # and not a shard set
    result = CliRunner().invoke(data_main, [*args, "--split", "test"])  # no --overwrite needed
    assert result.exit_code == 0, result.output
    assert verify_shard_set(out / "test") == [] and len(ShardSet(out / "test")) > 0


def test_train_checkpoint_on_a_full_disk_keeps_the_last_one_and_resumes(small_market_shards, tiny_train, tmp_path,
                                                                        monkeypatch, disk_full):
    run = tmp_path / "run"
    args = ["train", "--shards", str(small_market_shards), "--run", str(run), "--steps", "4", "--set",
            "checkpoint_every=2", *tiny_train]
    refused = disk_full(lambda name: "/.step-00000004.tmp/" in name and "train_state.pt" in name)
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 1 and refused
    one_error_line(result.output, r"checkpoints/\.step-00000004\.tmp/train_state\.pt")
    assert [p.name for p in step_folders(run)] == ["step-00000002"]  # the last good checkpoint, whole
    state = torch.load(step_folders(run)[0] / "train_state.pt", weights_only=True)
    assert state["step"] == 2
    monkeypatch.undo()
    resumed = CliRunner().invoke(train_main, ["train", "--resume", str(run), "--steps", "4"])
    assert resumed.exit_code == 0, resumed.output
    assert "step 4," in resumed.output and [p.name for p in step_folders(run)] == ["step-00000002", "step-00000004"]
    assert not list((run / "checkpoints").glob(".step-*"))


def test_which_write_errors_become_the_one_line_error(tmp_path, monkeypatch):
    """Storage errnos and foreign writers' errors on a full file system become ``SchemaError``; the rest pass."""
    import errno

    import schemas.files as files
    from schemas.errors import SchemaError

    def fail_with(exc: BaseException) -> BaseException:
        try:
            with files.atomic_path(tmp_path / "out.bin") as tmp:
                tmp.write_bytes(b"partial")
                raise exc
        except BaseException as caught:  # noqa: BLE001 - the test looks at what came out
            assert not list(tmp_path.iterdir())  # the temporary is gone, nothing renamed into place
            return caught

    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
        caught = fail_with(OSError(code, "library text\nover two lines"))
        assert isinstance(caught, SchemaError) and "\n" not in str(caught) and os.strerror(code) in str(caught)
    assert type(fail_with(PermissionError(errno.EACCES, "Permission denied"))) is PermissionError
    assert type(fail_with(RuntimeError("unexpected pos 576 vs 534"))) is RuntimeError  # room left: a real bug
    monkeypatch.setattr(files, "_out_of_space", lambda folder: True)
    assert isinstance(fail_with(RuntimeError("unexpected pos 576 vs 534")), SchemaError)  # torch.save, disk full
    assert type(fail_with(PipelineError("raw file changed"))) is PipelineError  # ours: it says what it means
    assert type(fail_with(KeyboardInterrupt())) is KeyboardInterrupt


@pytest.fixture
def small_tmpfs(tmp_path):
    """``small_tmpfs(name, size)``: a tmpfs of ``size`` (mount's units: 128k, 1m) at ``tmp_path / name``, unmounted
    after the test; the test is skipped where one cannot be mounted (not root, not Linux)."""
    mounts: list[Path] = []

    def mount(name: str, size: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pytest.skip("no mount command")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode(errors='replace').strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "--lazy", str(where)], capture_output=True, timeout=30)


def test_a_really_full_file_system_gives_the_same_one_line_errors(small_market_shards, tiny_train, small_tmpfs):
    """pyarrow (shards), safetensors and torch.save (checkpoints) on real tmpfs mounts that fill up.

    Parquet only: HDF5 on a full disk is not covered (its file cannot be closed after a failed flush, and the
    process then crashes at exit: see docs/guarantees.md)."""
    work = small_market_shards.parent
    shards = small_tmpfs("shards", "128k")
    result = CliRunner().invoke(data_main, ["pair", "--split", "train", "--keypoints", str(work / "keypoints"),
                                            "--run-file", str(work / "extract.json"), "--out", str(shards),
                                            "--size", "512x256", "--images-per-shard", "2", "--quiet"])
    assert result.exit_code == 1
    one_error_line(result.output, re.escape(str(shards)) + r"/train/[^:]+")
    assert not (shards / "train" / "manifest.json").exists()
    assert not [p for p in (shards / "train").iterdir() if p.name.endswith(".tmp")]
    # a run whose first checkpoint cannot fit (config.yaml, the TensorBoard file and the step-0 and step-1 sample
    # grids do: about 340 KB of 512, before about 800 KB of checkpoint)
    runs = small_tmpfs("runs", "512k")
    result = CliRunner().invoke(train_main, ["train", "--shards", str(small_market_shards), "--run", str(runs / "run"),
                                             "--steps", "1", *tiny_train])
    assert result.exit_code == 1
    one_error_line(result.output, re.escape(str(runs / "run")) + r"/checkpoints/\.step-00000001\.tmp/\S+")
    assert step_folders(runs / "run") == []
    # a run whose TensorBoard file or sample grids fill the disk first: one line too
    runs = small_tmpfs("small-runs", "96k")
    result = CliRunner().invoke(train_main, ["train", "--shards", str(small_market_shards), "--run", str(runs / "run"),
                                             "--steps", "1", *tiny_train])
    assert result.exit_code == 1
    one_error_line(result.output, re.escape(str(runs / "run")) + r"/(tensorboard|samples/\S+)")


def test_a_full_disk_under_tensorboard_reaches_no_thread_hook(small_market_shards, tiny_train, small_tmpfs,
                                                              tmp_path, monkeypatch):
    """TensorBoard writes its event file on a thread of its own, which hands its failure to ``threading.excepthook``
    (a traceback on stderr beside the one line) as well as to the writer's next call. The run's writer keeps such
    failures from the process's hook, here a recorder in place of pytest's, until that thread has ended; a full
    tmpfs holds the run's ``tensorboard/`` alone."""
    seen = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    (tmp_path / "run").mkdir()
    small_tmpfs("run/tensorboard", "8k")
    result = CliRunner().invoke(train_main, ["train", "--shards", str(small_market_shards), "--run",
                                             str(tmp_path / "run"), "--steps", "1", *tiny_train])
    from pgpig.train import _Events

    for thread in threading.enumerate():  # any writer thread still ending reports before the check
        if _Events._tensorboard(thread):
            thread.join(timeout=10)
    assert result.exit_code == 1
    one_error_line(result.output, re.escape(str(tmp_path / "run")) + r"/tensorboard")
    assert seen == [] and threading.excepthook == seen.append  # nothing reached it, and it is the hook again
