"""``pgpig generate``: a tiny trained run, poses from JSON and from the real extractor, training-identical inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from pgpig.cli import main
from pgpig.config import load_config
from pgpig.data import PairDataset, render_pose_maps
from pgpig.errors import TrainError
from pgpig.generate import generate, load_generator, read_pose_json
from pgpig.samples import sample_grid
from pgpig.train import train

MARGIN = 8  # a crop like DeepFashion's 40 px, on Market's 128x64: the generator sees 128x48


@pytest.fixture(scope="module")
def run(market_shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("gen-run") / "run"
    train(load_config(None, {"shards": market_shards, "run_dir": run_dir, "steps": 1, "batch_size": 2, "ngf": 8,
                             "n_blocks": 1, "d_blocks": 1, "use_gan": False, "crop_margin": MARGIN,
                             "vgg_weights": None, "allow_random_vgg": True, "num_workers": 0, "progress": False,
                             "device": "cpu", "sample_every": 100}))
    return run_dir


def pose_json(path: Path, xy: np.ndarray, image_size: list[int] | None = None) -> Path:
    points = [None if (p == -1).all() else [float(v) for v in p] for p in np.asarray(xy)]
    path.write_text(json.dumps({"keypoints": points, **({"image_size": image_size} if image_size else {})}))
    return path


@pytest.fixture(scope="module")
def inputs(market_shards, tmp_path_factory) -> dict:
    """Stored image 0 as a PNG with its keypoints, and the keypoints of two other stored images (other poses)."""
    from pipeline.shards import ShardSet

    folder = tmp_path_factory.mktemp("gen-inputs")
    stored = ShardSet(market_shards / "train")
    first = stored[0]
    Image.fromarray(first.image).save(folder / "source.png")
    others = [i for i in range(1, len(stored)) if stored[i].identity == first.identity][:2]
    return {"source": folder / "source.png", "source_pose": pose_json(folder / "source.json", first.keypoints),
            "poses": [pose_json(folder / f"pose{n}.json", stored[i].keypoints) for n, i in enumerate(others, 1)],
            "stored": stored, "indices": [0, *others]}


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def labelled_columns(grid: np.ndarray, columns: int) -> np.ndarray:
    """The images of a generate grid of ``columns`` 128x(64 - 2 MARGIN) images under its label header; checks that
    the header is white with dark label text over every column."""
    width = 64 - 2 * MARGIN
    assert grid.shape[1:] == (columns * width, 3) and grid.shape[0] > 128
    header = grid[:-128]
    assert (header > 200).mean() > 0.5
    for c in range(columns):
        assert (header[:, c * width:(c + 1) * width] < 100).any(), f"column {c} has no label"
    return grid[-128:]


def test_json_target_through_the_cli_writes_a_png_of_the_run_size(run, inputs, tmp_path):
    out = tmp_path / "out.png"
    result = CliRunner().invoke(main, ["generate", "--run", str(run), "--source", str(inputs["source"]),
                                       "--source-pose", str(inputs["source_pose"]), "--target-pose",
                                       str(inputs["poses"][0]), "--out", str(out), "--grid", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    assert png(out).shape == (128, 64 - 2 * MARGIN, 3)
    body = labelled_columns(png(out.with_name("out-grid.png")), 3)  # source | pose | generated
    assert (body[:, 2 * (64 - 2 * MARGIN):] == png(out)).all()
    # the default output lands in the run folder, named after the inputs
    result = CliRunner().invoke(main, ["generate", "--run", str(run), "--source", str(inputs["source"]),
                                       "--source-pose", str(inputs["source_pose"]), "--target-pose",
                                       str(inputs["poses"][0]), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(png(run / "generated" / "source_to_pose1.png"), png(out))  # eval mode: deterministic


def test_inputs_are_exactly_the_training_tensors(run, market_shards, inputs, tmp_path):
    # the same pair through PairDataset (the trainer's path, with the crop) and through generate: same pixels
    loaded = load_generator(run, "cpu")
    item = PairDataset(market_shards / "train", crop_margin=MARGIN)
    source, target = inputs["indices"][0], inputs["indices"][1]
    k = next(k for k, (s, t) in enumerate(item.pairs) if (s, t) == (source, target))
    pair = item[k]
    with torch.no_grad():
        maps = [render_pose_maps(pair[key][None], loaded.size, loaded.config.sigma) for key in ("source_kp",
                                                                                               "target_kp")]
        expected = sample_grid([loaded.generator(pair["source"][None], *maps)]).permute(1, 2, 0).numpy()
    result = generate(run, inputs["source"], inputs["poses"][0], source_pose=inputs["source_pose"],
                      out=tmp_path / "g.png", device="cpu")
    assert result["size"] == (128, 64 - 2 * MARGIN) and result["step"] == 1
    assert np.array_equal(png(tmp_path / "g.png"), expected)


def test_the_output_follows_the_target_pose(run, inputs, tmp_path):
    a = generate(run, inputs["source"], inputs["poses"][0], source_pose=inputs["source_pose"], out=tmp_path / "a.png",
                 device="cpu")
    b = generate(run, inputs["source"], inputs["poses"][1], source_pose=inputs["source_pose"], out=tmp_path / "b.png",
                 device="cpu")
    assert np.abs(png(a["out"]).astype(int) - png(b["out"]).astype(int)).max() > 0


def test_image_size_scales_json_keypoints_like_an_image(run, inputs, tmp_path):
    # the same pose given in a frame twice as large is the same pose
    xy, _ = read_pose_json(inputs["poses"][0])
    doubled = np.where(xy == -1, -1, (xy + 0.5) * 2 - 0.5)
    big = pose_json(tmp_path / "big.json", doubled, [256, 128])
    a = generate(run, inputs["source"], inputs["poses"][0], source_pose=inputs["source_pose"], out=tmp_path / "a.png",
                 device="cpu")
    b = generate(run, inputs["source"], big, source_pose=inputs["source_pose"], out=tmp_path / "b.png", device="cpu")
    assert np.abs(png(a["out"]).astype(int) - png(b["out"]).astype(int)).max() <= 1


def test_photos_as_source_and_target_use_the_real_extractor(run, tmp_path):
    from conftest import ultralytics_assets

    assets = ultralytics_assets()
    out = tmp_path / "photo.png"
    result = CliRunner().invoke(main, ["generate", "--run", str(run), "--source", str(assets / "bus.jpg"),
                                       "--target-pose", str(assets / "zidane.jpg"), "--out", str(out), "--grid",
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert png(out).shape == (128, 64 - 2 * MARGIN, 3)
    labelled_columns(png(tmp_path / "photo-grid.png"), 4)  # | target image too


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("short.json", json.dumps({"keypoints": [[1, 2]] * 17}), "17 keypoints, not 18"),
    ("words.json", json.dumps([[1, 2]] * 17 + [["a", 2]]), "keypoint 17"),
    ("bool.json", json.dumps([[1, 2]] * 17 + [[True, 2]]), "keypoint 17"),
    ("notjson.json", "x: 1, y: 2", "not JSON"),
    ("size.json", json.dumps({"keypoints": [[1, 2]] * 18, "image_size": [128]}), "image_size"),
    ("extra.json", json.dumps({"keypoints": [[1, 2]] * 18, "scores": []}), "unknown keys scores"),
    ("empty.json", json.dumps([None] * 18), "no visible keypoint"),
])
def test_bad_keypoints_json_is_a_one_line_error_naming_the_file(run, inputs, tmp_path, name, content, reason):
    bad = tmp_path / name
    bad.write_text(content)
    result = CliRunner().invoke(main, ["generate", "--run", str(run), "--source", str(inputs["source"]),
                                       "--source-pose", str(inputs["source_pose"]), "--target-pose", str(bad),
                                       "--device", "cpu"])
    line = one_line_error(result)
    assert str(bad) in line and reason in line


def test_a_folder_without_a_checkpoint_is_a_clear_error(run, inputs, tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    args = ["--source", str(inputs["source"]), "--source-pose", str(inputs["source_pose"]), "--target-pose",
            str(inputs["poses"][0]), "--device", "cpu"]
    runner = CliRunner()
    assert "run folder not found" in one_line_error(runner.invoke(main, ["generate", "--run", str(tmp_path / "no"),
                                                                         *args]))
    assert "no config.yaml" in one_line_error(runner.invoke(main, ["generate", "--run", str(folder), *args]))
    (folder / "config.yaml").write_text((run / "config.yaml").read_text())
    assert "no generator.safetensors" in one_line_error(runner.invoke(main, ["generate", "--run", str(folder),
                                                                             *args]))
    save_file({"w": torch.zeros(1)}, str(folder / "generator.safetensors"))
    assert "metadata lacks" in one_line_error(runner.invoke(main, ["generate", "--run", str(folder), *args]))
    with pytest.raises(TrainError, match="does not fit"):
        save_file({"w": torch.zeros(1)}, str(folder / "generator.safetensors"),
                  metadata={"step": "1", "height": "128", "width": "48"})
        load_generator(folder, "cpu")


def test_an_image_without_a_person_is_a_clear_error_naming_it(run, inputs, tmp_path):
    from corpus import solid_jpeg

    empty = tmp_path / "wall.jpg"
    empty.write_bytes(solid_jpeg(64, 128, (40, 120, 200)))
    result = CliRunner().invoke(main, ["generate", "--run", str(run), "--source", str(inputs["source"]),
                                       "--source-pose", str(inputs["source_pose"]), "--target-pose", str(empty),
                                       "--device", "cpu"])
    line = one_line_error(result)
    assert str(empty) in line and "no person detected" in line
    unreadable = tmp_path / "broken.jpg"
    unreadable.write_bytes(b"not an image")
    line = one_line_error(CliRunner().invoke(main, ["generate", "--run", str(run), "--source", str(unreadable),
                                                    "--target-pose", str(inputs["poses"][0]), "--device", "cpu"]))
    assert str(unreadable) in line


def test_pose_detector_runs_the_model_once_per_distinct_image():
    """``pgpig eval``'s copy-source row shows each test source in many pairs: a repeated image is looked up, and
    gives the row a fresh detector computes."""
    import cv2
    from conftest import ultralytics_assets

    from pgpig.generate import PoseDetector

    assets = ultralytics_assets()
    bus = cv2.resize(cv2.imread(str(assets / "bus.jpg")), (176, 256))
    zidane = cv2.resize(cv2.imread(str(assets / "zidane.jpg")), (176, 256))
    detector = PoseDetector(torch.device("cpu"), batch_size=4)
    xy, found = detector.batch([bus, zidane, bus.copy()])
    assert detector.model_images == 2 and found.all()
    assert (xy[0] == xy[2]).all() and (xy[0] != xy[1]).any()
    again, _ = detector.batch([zidane])
    assert detector.model_images == 2 and (again[0] == xy[1]).all()
    fresh, _ = PoseDetector(torch.device("cpu"), batch_size=4).batch([zidane, bus])
    np.testing.assert_allclose(fresh, xy[[1, 0]], atol=1e-3)  # batch neighbours change only float rounding
