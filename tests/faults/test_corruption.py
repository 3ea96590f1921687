"""Promise 5, corruption: a damaged shard file is named by ``pgpig-data verify``; ``pgpig train`` refuses a damaged
shard set before step 0 unless told ``--skip-verify``; a truncated or foreign checkpoint fails with a clear error;
no checkpoint is ever unpickled as objects.

Already proven elsewhere: ``tests/pipeline/test_shards.py::test_verify_names_damaged_files`` (a flipped byte in a
Parquet image file and a truncated HDF5 file, named by ``verify_shard_set`` and refused by ``ShardSet``) and
``tests/schemas/test_manifest.py::test_file_problems_name_a_flipped_byte_and_a_truncated_file``.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pgpig.checkpoint import load_checkpoint, step_folders
from pgpig.cli import main as train_main
from pgpig.config import load_config
from pgpig.errors import TrainError
from pgpig.train import build
from pipeline.cli import main as data_main

REPO = Path(__file__).resolve().parents[2]


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_command_names_a_flipped_byte_and_a_truncated_file(small_market_shards, tmp_path):
    shards = copy_tree(small_market_shards, tmp_path / "shards")
    assert CliRunner().invoke(data_main, ["verify", str(shards / "train")]).exit_code == 0
    image_file = next((shards / "train").glob("images-*.parquet"))
    flip_byte(image_file)
    pairs = shards / "train" / "pairs.parquet"
    pairs.write_bytes(pairs.read_bytes()[:-10])
    result = CliRunner().invoke(data_main, ["verify", str(shards / "train")])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(str(image_file) in line and "sha256" in line for line in lines), result.output
    assert any(str(pairs) in line and "bytes, manifest says" in line for line in lines), result.output
    assert lines[-1] == f"{shards / 'train'}: 2 problem(s)"


def test_train_refuses_a_damaged_shard_set_before_step_0(small_market_shards, tiny_train, tmp_path):
    shards = copy_tree(small_market_shards, tmp_path / "shards")
    damaged = next((shards / "train").glob("images-*.parquet"))
    flip_byte(damaged)  # same size: only the checksum can tell
    run = tmp_path / "run"
    result = CliRunner().invoke(train_main, ["train", "--shards", str(shards), "--run", str(run), "--steps", "1",
                                             *tiny_train])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(damaged) in errors[0] and "sha256" in errors[0] and "--skip-verify" in errors[0]
    assert not step_folders(run)  # nothing trained


def test_the_test_split_is_verified_too(small_market_shards, tiny_train, tmp_path):
    shards = copy_tree(small_market_shards, tmp_path / "shards")
    damaged = shards / "test" / "pairs.parquet"
    damaged.write_bytes(damaged.read_bytes() + b"\0")
    result = CliRunner().invoke(train_main, ["train", "--shards", str(shards), "--run", str(tmp_path / "run"),
                                             "--steps", "1", *tiny_train])
    assert result.exit_code == 1 and str(damaged) in result.output, result.output


def test_skip_verify_trains_on_a_set_whose_checksums_disagree(small_market_shards, tiny_train, tmp_path):
    """The files are sound but the manifest's sha256 of one is wrong: refused by default, trained with the flag."""
    shards = copy_tree(small_market_shards, tmp_path / "shards")
    manifest = shards / "train" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"][0]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    args = ["train", "--shards", str(shards), "--steps", "1", *tiny_train]
    refused = CliRunner().invoke(train_main, [*args, "--run", str(tmp_path / "a")])
    assert refused.exit_code == 1 and "sha256 differs" in refused.output
    trained = CliRunner().invoke(train_main, [*args, "--run", str(tmp_path / "b"), "--skip-verify"])
    assert trained.exit_code == 0, trained.output
    assert [p.name for p in step_folders(tmp_path / "b")] == ["step-00000001"]
    # the choice belongs to that invocation: a resume checks again unless told again
    resumed = CliRunner().invoke(train_main, ["train", "--resume", str(tmp_path / "b"), "--steps", "2"])
    assert resumed.exit_code == 1 and "sha256 differs" in resumed.output


def test_skip_verify_is_a_config_field_after_seed():
    from dataclasses import fields

    from pgpig.config import TrainConfig

    names = [f.name for f in fields(TrainConfig)]
    assert names[names.index("seed") + 1] == "skip_verify"
    assert TrainConfig().skip_verify is False and load_config(None, {"skip_verify": True}).skip_verify is True


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained_run(small_market_shards, tiny_train, tmp_path_factory) -> Path:
    """A tiny run of 1 step with its checkpoint."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = CliRunner().invoke(train_main, ["train", "--shards", str(small_market_shards), "--run", str(run),
                                             "--steps", "1", *tiny_train])
    assert result.exit_code == 0, result.output
    return run


def damaged_copy(trained_run: Path, tmp_path: Path, name: str, data: bytes) -> Path:
    run = copy_tree(trained_run, tmp_path / "run")
    (step_folders(run)[-1] / name).write_bytes(data)
    return run


def resume(run: Path):
    return CliRunner().invoke(train_main, ["train", "--resume", str(run), "--steps", "2"])




@pytest.mark.parametrize("name, damage", [
    ("train_state.pt", lambda data: data[: len(data) // 2]),  # truncated
    ("train_state.pt", lambda data: b"not a checkpoint at all\n" * 10),  # text: torch.load refuses to unpickle it
    ("train_state.pt", lambda data: data[:30] + bytes(len(data) - 30)),  # zeroed after the zip header
    ("generator.safetensors", lambda data: data[: len(data) // 3]),
    ("generator.safetensors", lambda data: b"{}" + data[2:]),  # a broken header
])
def test_a_damaged_or_foreign_checkpoint_is_a_one_line_error(trained_run, tmp_path, name, damage):
    original = (step_folders(trained_run)[-1] / name).read_bytes()
    run = damaged_copy(trained_run, tmp_path, name, damage(original))
    result = resume(run)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(step_folders(run)[-1]) in errors[0] and "cannot read the checkpoint" in errors[0]
    assert "remove it to resume from the one before" in errors[0]


class _Payload:
    """Unpickling this runs ``os.system``: what a malicious ``train_state.pt`` would hide."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_a_malicious_pickle_in_train_state_is_refused_without_running(trained_run, tmp_path, container):
    marker = tmp_path / "pwned"
    state = {"step": 1, "epoch": 0, "in_epoch": 1, "opt_g": {}, "payload": _Payload(marker)}
    run = copy_tree(trained_run, tmp_path / "run")
    target = step_folders(run)[-1] / "train_state.pt"
    if container == "torch.save":
        torch.save(state, target)
    else:
        target.write_bytes(pickle.dumps(state))
    cfg = load_config(run / "config.yaml", {"run_dir": run})
    parts = build(cfg, torch.device("cpu"), (64, 32))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - which type is the next test's concern
        load_checkpoint(run, parts.generator, parts.discriminators, torch.device("cpu"))
    assert "Weights only load failed" in str(caught.value) or isinstance(caught.value, TrainError)
    assert not marker.exists()  # refused before anything ran
    result = resume(run)
    assert result.exit_code != 0 and not marker.exists()


def test_a_malicious_pickle_is_a_one_line_train_error(trained_run, tmp_path):
    marker = tmp_path / "pwned"
    run = copy_tree(trained_run, tmp_path / "run")
    torch.save({"step": 1, "payload": _Payload(marker)}, step_folders(run)[-1] / "train_state.pt")
    result = resume(run)
    # before it, only the memory check's two progress lines (its announcement and its estimate)
    *before, error = result.output.strip().splitlines()
    assert result.exit_code == 1 and error.startswith("error: ") and "cannot read the checkpoint" in error
    assert not marker.exists() and "weights_only=False" not in result.output
    assert [line.split(":")[0] for line in before] == ["memory check", "memory"]


def test_every_torch_load_in_the_packages_passes_weights_only_true():
    """Read the source: each ``torch.load(...)`` call of pgpig, pipeline and schemas says ``weights_only=True``."""
    calls = []
    for package in ("pgpig", "pipeline", "schemas"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                    calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                        node.func.attr in ("load", "loads") and isinstance(node.func.value, ast.Name) and \
                        node.func.value.id in ("pickle", "cloudpickle", "dill"):
                    calls.append((f"{path.relative_to(REPO)}:{node.lineno} (plain unpickling)", False))
    assert calls, "no torch.load found: the scan is broken"
    assert [where for where, safe in calls if not safe] == []
    assert any(where.startswith("pgpig/checkpoint.py") for where, _ in calls)  # the checkpoint loader is among them


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("backend", ["ultralytics", "fast"])
def test_pose_weights_that_would_run_code_are_refused_by_both_backends(tmp_path, backend):
    """``--model FILE``: ultralytics' own loader unpickles a ``.pt`` as it is; both backends read it with
    weights-only loading first (ultralytics' classes allowed, nothing else), so the payload never runs."""
    from pipeline.errors import PipelineError
    from pipeline.pose import create_backend

    marker = tmp_path / "pwned"
    weights = tmp_path / "yolo-pose.pt"
    weights.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    with pytest.raises(PipelineError, match="yolo-pose.pt"):
        create_backend(backend, model=str(weights), device="cpu")
    assert not marker.exists()
