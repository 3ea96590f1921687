"""`pgpig-data demo`: every step runs on what the installed packages ship, and the promised files appear."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from pipeline.demo import photo_tree
from pipeline.errors import PipelineError


def test_photo_tree_cuts_every_person_of_the_shipped_photos_four_ways(tmp_path):
    counts = photo_tree(tmp_path, device="cpu", log=lambda _: None)
    files = sorted((tmp_path / "bounding_box_train").glob("*.jpg"))
    assert counts["images"] == len(files) == 4 * counts["persons"]
    assert counts["persons"] >= 4  # bus.jpg alone shows four people
    for f in files:
        assert cv2.imread(str(f)).shape == (128, 64, 3)
    # the mirrored cut (camera 2) is the plain cut (camera 1) flipped, up to JPEG noise
    plain = cv2.imread(str(tmp_path / "bounding_box_train" / "0001_c1s1_000001_00.jpg")).astype(int)
    mirrored = cv2.imread(str(tmp_path / "bounding_box_train" / "0001_c2s1_000001_00.jpg")).astype(int)
    assert abs(plain[:, ::-1] - mirrored).mean() < 3 < abs(plain - mirrored).mean()


def test_demo_runs_end_to_end_and_refuses_a_used_folder(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo", str(out), "--steps", "4", "--identities", "10",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    # each step printed with the command a user would type, and timed
    for command in ("$ pgpig-data extract photos", "$ pgpig-data synth mannequins", "$ pgpig-data pair --split test",
                    "$ pgpig train --shards shards --recipe demo", "$ pgpig generate --run run",
                    "$ pgpig eval --run run --shards shards --split test", "$ pgpig-data report"):
        assert command in text
    assert "| copy-source (baseline) |" in text  # the eval table, printed
    assert "demo done in" in text

    overlays = sorted((out / "overlays").glob("*.png"))
    record = json.loads((out / "photos-extract.json").read_text())
    assert len(overlays) == record["statuses"]["ok"] > 0
    assert json.loads((out / "shards" / "train" / "manifest.json").read_text())["counts"]["pairs"] > 0
    assert (out / "run" / "generator.safetensors").is_file()
    grid = cv2.imread(str(out / "generated-grid.png"))  # source | pose | generated | target, under their labels
    assert grid.shape[0] > 128 and grid.shape[1:] == (4 * 88, 3)  # the 128x88 crop of the 128x128 mannequins
    # the eval scores every test pair: every test identity (ids 5 and 10), 6 images each, all ordered pairs
    scored = json.loads((out / "run" / "eval" / "test" / "eval.json").read_text())
    assert scored["pairs"] == scored["pairs_in_split"] == 2 * 6 * 5
    assert json.loads((out / "shards" / "test" / "manifest.json").read_text())["counts"]["identities"] == 2
    report = json.loads((out / "report.json").read_text())  # the report of the mannequins' keypoints and shards
    assert report["keypoints"]["statuses"]["rows"] > 0 and len(report["shards"]) == 2
    assert "<h2>" in (out / "report.html").read_text()

    again = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo", str(out)], capture_output=True, text=True)
    assert again.returncode == 1 and "not empty; pass --overwrite" in again.stderr


@pytest.mark.slow
def test_the_default_demo_model_beats_copy_source_on_every_test_identity(tmp_path):
    """The README's demo as it ships (about 3 minutes on 2 CPU cores): its model must beat the copy-the-source
    baseline on SSIM and L1 over all test pairs of all test identities (at least 200 pairs)."""
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    scored = json.loads((out / "run" / "eval" / "test" / "eval.json").read_text())
    manifest = json.loads((out / "shards" / "test" / "manifest.json").read_text())
    assert scored["pairs"] == scored["pairs_in_split"] >= 200
    assert manifest["counts"]["identities"] == 8  # every fifth of the 40 mannequins
    model, copy = scored["rows"]["model"], scored["rows"]["copy-source"]
    assert model["ssim"] > copy["ssim"] and model["l1"] < copy["l1"]
    assert "| copy-source (baseline) | 240 |" in done.stdout  # the table the README quotes


def test_demo_refuses_a_non_empty_folder_before_doing_anything(tmp_path):
    from pipeline.demo import DemoConfig, run_demo

    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(PipelineError, match="not empty"):
        run_demo(DemoConfig(out=tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_recipes_ship_with_the_package():
    from pgpig.config import load_config, recipe_path, shipped_recipes

    names = shipped_recipes()
    assert {"demo", "market1501/patn", "deepfashion/patn"} <= set(names)
    assert recipe_path("market1501/patn") == names["market1501/patn"]
    assert load_config(recipe_path("demo")).lambda_perceptual == 0  # the demo runs offline
    # what ships (installed, or this checkout's pgpig/workflows) is the repository's workflows/, file for file
    repo = Path(__file__).resolve().parents[2] / "workflows"
    in_repo = {p.relative_to(repo).with_suffix("").as_posix(): p for p in repo.rglob("*.yaml")}
    assert in_repo.keys() == names.keys()
    assert all(in_repo[k].read_bytes() == names[k].read_bytes() for k in names)
