"""``pgpig eval --generated DIR --target-from panel``: folders of five-image JPEG panels written the way PATN's and
XingGAN's ``test.py`` writes them score exactly what their ``tool/getMetrics_*.py`` computes on the same files;
``--target-from shards`` scores the same folder against the stored targets and gives other numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from official_panels import official_tensor, pose_picture, tensor2im
from PIL import Image
from skimage.io import imread
from skimage.metrics import structural_similarity

from pgpig.cli import main
from pgpig.config import EvalConfig
from pgpig.errors import TrainError
from pgpig.evaluate import evaluate, pair_file_name, read_names
from pipeline.shards import ShardSet

PAIRS = 8


# ------------------------------------------------------------------------------------------------- test.py's panels


def write_panels(shards: Path, folder: Path, margin: int = 0, pairs: int = PAIRS, seed: int = 0) -> Path:
    """One panel per pair as ``test.py`` saves it: source | source pose | target | target pose | generated, each
    ``tensor2im`` of the model's input or output, side by side in a uint8 array, ``Image.fromarray(vis).save(
    "<source>___<target>_vis.jpg")`` with Pillow's JPEG defaults. The official loader reads the images in their
    own frame, so with ``margin`` the stored images are cut to their middle columns (PATN's 176-wide DeepFashion
    crop). The "generator output" is the target plus seeded noise, clamped to [-1, 1]."""
    stored = ShardSet(shards / "test")
    names = read_names(stored)
    folder.mkdir()
    generator = torch.Generator().manual_seed(seed)
    for s, t in stored.pairs[:pairs]:
        source, target = stored[int(s)], stored[int(t)]
        w = source.image.shape[1]
        crop = slice(margin, w - margin)
        p1, p2 = official_tensor(source.image[:, crop]), official_tensor(target.image[:, crop])
        fake = (p2 + 0.25 * torch.randn(p2.shape, generator=generator)).clamp(-1, 1)
        size = p1.shape[1:]
        shift = np.array([margin, 0], np.float32)
        vis = np.concatenate([tensor2im(p1), pose_picture(source.keypoints - shift, size), tensor2im(p2),
                              pose_picture(target.keypoints - shift, size), tensor2im(fake)], axis=1)
        name = pair_file_name(names[int(s)], names[int(t)])[: -len(".png")] + ".jpg"
        Image.fromarray(vis).save(folder / name)
    return folder


# ---------------------------------------------------------------------------------------------- the official metric


def add_bounding(image: np.ndarray, bound: int) -> np.ndarray:
    """``getMetrics_fashion.py`` ``addBounding``: ``bound`` white columns on each side."""
    h, w, c = image.shape
    out = np.full((h, w + 2 * bound, c), 255, np.uint8)
    out[:, bound:bound + w] = image
    return out


def official_scores(folder: Path, bound: int = 0) -> dict[tuple[str, str], dict[str, float]]:
    """``getMetrics_market.py`` (``bound=0``) / ``getMetrics_fashion.py`` on a panel folder: ``skimage.io.imread``,
    the third fifth as the target and the fifth as the generated image, ``compare_ssim`` with PATN's settings, the
    L1 of images mapped to [-1, 1]; by ``(source, target)`` names from ``<source>___<target>_vis.jpg``."""
    scores = {}
    for path in sorted(folder.iterdir()):
        panel = imread(path)
        w = panel.shape[1] // 5
        reference, generated = panel[:, 2 * w:3 * w], panel[:, 4 * w:5 * w]
        if bound:
            reference, generated = add_bounding(reference, bound), add_bounding(generated, bound)
        ssim = structural_similarity(reference, generated, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, channel_axis=2,
                                     data_range=generated.max() - generated.min())
        l1 = np.abs(2 * (reference / 255.0 - 0.5) - 2 * (generated / 255.0 - 0.5)).mean()
        source, target = path.name[: -len("_vis.jpg")].split("___")
        scores[(source, target)] = {"ssim": float(ssim), "l1": float(l1)}
    return scores


def official_ssim_against(folder: Path, shards: Path) -> dict[tuple[str, str], float]:
    """PATN's SSIM of each panel's generated slice against the stored target (Market: no margin)."""
    stored = ShardSet(shards / "test")
    names = read_names(stored)
    by_name = {names[int(t)]: int(t) for _, t in stored.pairs}
    out = {}
    for path in sorted(folder.iterdir()):
        panel = imread(path)
        generated = panel[:, 4 * (panel.shape[1] // 5):]
        source, target = path.name[: -len("_vis.jpg")].split("___")
        out[(source, target)] = float(structural_similarity(
            stored[by_name[target]].image, generated, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            channel_axis=2, data_range=generated.max() - generated.min()))
    return out


def records(out: Path, row: str = "model") -> dict[tuple[str, str], dict[str, str]]:
    with open(out / "pairs.csv") as f:
        return {(r["source"], r["target"]): r for r in csv.DictReader(f) if r["row"] == row}


def score(shards: Path, folder: Path, out: Path, target_from: str, baseline: bool = False, pairs: int = PAIRS) -> dict:
    return evaluate(EvalConfig(shards=shards, generated=folder, out=out, target_from=target_from, max_pairs=pairs,
                               metrics=("ssim", "l1"), baseline=baseline, device="cpu", progress=False, batch_size=4))


# ------------------------------------------------------------------------------------------------------------ tests


def test_tensor2im_of_the_loaded_image_lowers_63_of_256_values_by_one():
    values = np.arange(256, dtype=np.uint8)
    image = np.stack([values] * 3, axis=1)[None]  # (1, 256, 3)
    round_trip = tensor2im(official_tensor(image))[0, :, 0].astype(int)
    lowered = values.astype(int) - round_trip
    assert set(lowered.tolist()) == {0, 1} and int(lowered.sum()) == 63


@pytest.fixture(scope="module")
def market_panels(market_shards, tmp_path_factory) -> Path:
    return write_panels(market_shards, tmp_path_factory.mktemp("market-panels") / "images")


def test_panel_targets_reproduce_the_official_market_script_per_pair(market_shards, market_panels, tmp_path):
    result = score(market_shards, market_panels, tmp_path / "panel", "panel", baseline=True)
    official = official_scores(market_panels)
    ours = records(tmp_path / "panel")
    assert result["rows"]["model"]["scored"] == PAIRS and result["bad"]["count"] == 0
    assert set(ours) == set(official)
    for key, expected in official.items():
        assert float(ours[key]["ssim_patn"]) == pytest.approx(expected["ssim"], abs=1e-6), key
        assert float(ours[key]["l1"]) == pytest.approx(expected["l1"], abs=1e-6), key
    mean_ssim = np.mean([v["ssim"] for v in official.values()])
    assert result["rows"]["model"]["ssim"] == pytest.approx(mean_ssim, abs=1e-6)
    # the baseline is the panel's source slice against the panel's target slice
    baseline = records(tmp_path / "panel", "copy-source")
    for path in sorted(market_panels.iterdir()):
        panel = imread(path)
        w = panel.shape[1] // 5
        source_slice, target_slice = panel[:, :w], panel[:, 2 * w:3 * w]
        expected = structural_similarity(target_slice, source_slice, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, channel_axis=2,
                                         data_range=source_slice.max() - source_slice.min())
        key = tuple(path.name[: -len("_vis.jpg")].split("___"))
        assert float(baseline[key]["ssim_patn"]) == pytest.approx(expected, abs=1e-6), key
    written = json.loads((tmp_path / "panel" / "eval.json").read_text())
    assert written["settings"]["target_from"] == "panel"
    summary = (tmp_path / "panel" / "eval.md").read_text()
    assert "- Targets (`--target-from panel`): the target slice of each PATN/XingGAN panel" in summary


def test_stored_targets_give_other_numbers_on_the_same_folder(market_shards, market_panels, tmp_path):
    panel = score(market_shards, market_panels, tmp_path / "panel", "panel")
    shards = score(market_shards, market_panels, tmp_path / "shards", "shards")
    assert abs(panel["rows"]["model"]["ssim"] - shards["rows"]["model"]["ssim"]) > 1e-3
    assert abs(panel["rows"]["model"]["l1"] - shards["rows"]["model"]["l1"]) > 1e-4
    against_stored = official_ssim_against(market_panels, market_shards)
    ours = records(tmp_path / "shards")
    for key, expected in against_stored.items():
        assert float(ours[key]["ssim_patn"]) == pytest.approx(expected, abs=1e-6), key
    assert json.loads((tmp_path / "shards" / "eval.json").read_text())["settings"]["target_from"] == "shards"
    assert "- Targets (`--target-from shards`): the stored targets" in (tmp_path / "shards" / "eval.md").read_text()


def test_deepfashion_crop_panels_are_padded_like_get_metrics_fashion(tmp_path_factory, tmp_path):
    from pipeline.synthetic import mannequin_shards
    from schemas.patn import deepfashion_margin

    shards = mannequin_shards(tmp_path_factory.mktemp("df-panels"), "deepfashion", identities=8, poses=4,
                              splits=("test",), size=(64, 64))
    margin = deepfashion_margin(64)  # 10 px: PATN's 40 of 256, so addBounding's 40 becomes 10 here
    folder = write_panels(shards, tmp_path / "images", margin=margin, pairs=6)
    result = score(shards, folder, tmp_path / "out", "panel", pairs=6)
    assert result["settings"]["frame"]["margins"] == [margin] and result["bad"]["count"] == 0
    official = official_scores(folder, bound=margin)
    ours = records(tmp_path / "out")
    assert set(ours) == set(official)
    for key, expected in official.items():
        assert float(ours[key]["ssim_patn"]) == pytest.approx(expected["ssim"], abs=1e-6), key
        assert float(ours[key]["l1"]) == pytest.approx(expected["l1"], abs=1e-6), key


def test_a_single_image_among_panels_is_recorded_not_scored(market_shards, market_panels, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    files = sorted(market_panels.iterdir())
    for path in files[1:]:
        (folder / path.name).write_bytes(path.read_bytes())
    panel = imread(files[0])
    Image.fromarray(panel[:, 4 * (panel.shape[1] // 5):]).save(folder / files[0].name)
    result = score(market_shards, folder, tmp_path / "out", "panel")
    assert result["rows"]["model"]["scored"] == PAIRS - 1 and result["bad"]["count"] == 1
    assert "not a five-image panel" in result["bad"]["items"][0]["reason"]


def test_single_images_with_panel_targets_are_a_one_line_error(market_shards, market_panels, tmp_path):
    folder = tmp_path / "singles"
    folder.mkdir()
    for path in sorted(market_panels.iterdir()):
        panel = imread(path)
        Image.fromarray(panel[:, 4 * (panel.shape[1] // 5):]).save(folder / path.name)
    args = ["eval", "--generated", str(folder), "--shards", str(market_shards), "--metrics", "ssim", "--device",
            "cpu", "--quiet", "--out", str(tmp_path / "out"), "--max-pairs", str(PAIRS)]
    failed = CliRunner().invoke(main, [*args, "--target-from", "panel"])
    assert failed.exit_code == 1, failed.output
    lines = failed.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "has no PATN/XingGAN five-image panels" in errors[0]
    assert "Traceback" not in failed.output
    # the same folder scores against the stored targets, the default
    passed = CliRunner().invoke(main, args)
    assert passed.exit_code == 0, passed.output
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["settings"]["target_from"] == "shards"


def test_panel_targets_need_a_generated_folder(market_shards, tmp_path):
    with pytest.raises(TrainError, match="--target-from panel reads targets from the PATN/XingGAN panels"):
        evaluate(EvalConfig(shards=market_shards, run_dir=tmp_path / "run", target_from="panel", device="cpu"))
    with pytest.raises(TrainError, match="--target-from stored: use one of shards, panel"):
        evaluate(EvalConfig(shards=market_shards, generated=tmp_path, target_from="stored", device="cpu"))
