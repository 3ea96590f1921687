"""``pgpig eval --perceptual-frame crop``: LPIPS, mask-LPIPS and FID of a DeepFashion ``img/`` shard set on the
unpadded PATN crop (DPTN's ``metrics/metrics.py``), equal to the same networks run by hand on the cropped images;
the FID reference cache keyed on it, the one-line error where there is no crop, and ``--compare``'s refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pgpig.config import EvalConfig
from pgpig.errors import TrainError
from pgpig.evaluate import compare, evaluate, pair_file_name, read_names
from pgpig.metrics import LPIPS, FeatureStats, frechet_distance, pose_mask
from pipeline.shards import ShardSet

SIZE = (64, 64)
CROP = 10  # deepfashion_margin(64): PATN's 40 columns of 256
PAIRS = 12


class SeededFeatures(torch.nn.Module):
    """FID's interface on a seeded random conv layer: 8 channels, each averaged over 4x4 blocks (128-D). Position
    dependent, so white columns added at the sides change the features."""

    name = "seeded conv test features"

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(images.float() / 255))
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1).double()


def seeded_lpips() -> LPIPS:
    """LPIPS on one seeded conv + ReLU stage (the LPIPS maths is checked in test_metrics.py)."""
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1)

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return [torch.relu(self.conv(x))]

    return LPIPS(Backbone(), [torch.linspace(0.2, 1.2, 6)])


@pytest.fixture(scope="module")
def img_shards(learning_shards) -> Path:
    """DeepFashion-layout mannequins from ``img/`` stored at 64x64 (the session's learning set)."""
    return learning_shards


@pytest.fixture(scope="module")
def folder(img_shards, tmp_path_factory) -> Path:
    """DPTN-like outputs: each pair's target cut to the 44-wide crop, plus seeded noise, lossless."""
    stored = ShardSet(img_shards / "test")
    names = read_names(stored)
    out = tmp_path_factory.mktemp("dptn-like") / "images"
    out.mkdir()
    rng = np.random.default_rng(0)
    for s, t in stored.pairs[:PAIRS]:
        crop = stored[int(t)].image[:, CROP:-CROP].astype(np.int16)
        noisy = np.clip(crop + rng.normal(0, 20, crop.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(out / pair_file_name(names[int(s)], names[int(t)]))
    return out


def config(**kwargs) -> EvalConfig:
    defaults = {"device": "cpu", "progress": False, "batch_size": 5, "baseline": False, "fid_reference": "test",
                "max_pairs": PAIRS,
                "metrics": ("ssim", "lpips", "mask_lpips", "fid"), "feature_extractor": SeededFeatures(),
                "lpips": seeded_lpips()}
    return EvalConfig(**{**defaults, **kwargs})


def by_hand(shards: Path, folder: Path, crop: int) -> dict[str, float]:
    """LPIPS, mask-LPIPS and FID of ``folder`` with the test's networks on images cut by ``crop`` columns each side
    (the generated images padded back to the stored width with white first), the reference: every test image."""
    stored = ShardSet(shards / "test")
    names = read_names(stored)
    lpips, features = seeded_lpips(), SeededFeatures()
    w = SIZE[1]
    cut = slice(crop, w - crop)
    generated, targets, keypoints = [], [], []
    for s, t in stored.pairs[:PAIRS]:
        image = np.asarray(Image.open(folder / pair_file_name(names[int(s)], names[int(t)])))
        generated.append(np.pad(image, ((0, 0), (CROP, CROP), (0, 0)), constant_values=255))
        target = stored[int(t)].image.copy()
        target[:, :CROP], target[:, w - CROP:] = 255, 255  # the target in the outputs' framing
        targets.append(target)
        keypoints.append(stored[int(t)].keypoints)
    g = torch.from_numpy(np.stack(generated)).permute(0, 3, 1, 2)[..., cut]
    t = torch.from_numpy(np.stack(targets)).permute(0, 3, 1, 2)[..., cut]
    kp = torch.from_numpy(np.stack(keypoints)).float()
    kp[(kp[..., 0] < CROP) | (kp[..., 0] > w - 1 - CROP)] = -1  # joints outside the framing are not drawn
    mask = pose_mask(kp, SIZE)[..., cut]
    with torch.no_grad():
        values = {"lpips": float(lpips(g / 127.5 - 1, t / 127.5 - 1).mean()),
                  "mask_lpips": float(lpips((g / 127.5 - 1) * mask, (t / 127.5 - 1) * mask).mean())}
        reference = np.stack([stored[i].image for i in range(len(stored))])
        reference[:, :, :CROP], reference[:, :, w - CROP:] = 255, 255
        stats = []
        for batch in (g, torch.from_numpy(reference).permute(0, 3, 1, 2)[..., cut]):
            s = FeatureStats()
            s.update(features(batch.contiguous()))
            stats.append(s.mean_cov())
    values["fid"] = frechet_distance(*stats[0], *stats[1])
    return values


def test_crop_scores_equal_the_networks_on_the_cropped_images_and_padded_ones_differ(img_shards, folder, tmp_path):
    out = tmp_path / "eval"
    padded = evaluate(config(shards=img_shards, generated=folder, out=out))
    kept = tmp_path / "padded.json"
    shutil.copy(out / "eval.json", kept)
    cropped = evaluate(config(shards=img_shards, generated=folder, out=out, perceptual_frame="crop"))
    expected = {"padded": by_hand(img_shards, folder, 0), "crop": by_hand(img_shards, folder, CROP)}
    for frame, result in (("padded", padded), ("crop", cropped)):
        row = result["rows"]["model"]
        assert row["scored"] == PAIRS
        for metric in ("lpips", "mask_lpips"):
            assert row[metric] == pytest.approx(expected[frame][metric], rel=1e-5), (frame, metric)
        # the second run found the first run's fid-reference.npz in the same folder: a cache not keyed on the
        # frame would have given the crop run the padded reference
        assert row["fid"] == pytest.approx(expected[frame]["fid"], rel=1e-5), frame
    for metric in ("lpips", "mask_lpips", "fid"):  # the frames give different numbers, so the check can fail
        assert abs(expected["crop"][metric] - expected["padded"][metric]) > 0.05 * expected["padded"][metric]
    assert cropped["rows"]["model"]["ssim"] == padded["rows"]["model"]["ssim"]  # SSIM stays on the padded frame
    settings = json.loads((out / "eval.json").read_text())["settings"]
    assert (settings["perceptual_frame"], settings["perceptual_crop"]) == ("crop", CROP)
    assert json.loads(kept.read_text())["settings"]["perceptual_crop"] == 0
    assert "PATN's 176-wide crop" in (out / "eval.md").read_text()
    with pytest.raises(TrainError, match="different --perceptual-frame"):
        compare([kept, out / "eval.json"])
    old = json.loads(kept.read_text())
    del old["settings"]["perceptual_frame"]  # an eval.json older than the flag counts as padded
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert compare([tmp_path / "old.json", kept]).count("| images |") == 2


def test_crop_where_the_shard_set_has_none_is_a_one_line_error(market_shards, tmp_path):
    stored = ShardSet(market_shards / "test")
    names = read_names(stored)
    s, t = (int(i) for i in stored.pairs[0])
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(stored[t].image).save(folder / pair_file_name(names[s], names[t]))
    with pytest.raises(TrainError) as err:
        evaluate(config(shards=market_shards, generated=folder, perceptual_frame="crop"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("--perceptual-frame crop: ")
    assert "Market-1501" in message and "--perceptual-frame padded" in message
    with pytest.raises(TrainError, match="--perceptual-frame wide: use one of padded, crop"):
        evaluate(config(shards=market_shards, generated=folder, perceptual_frame="wide"))
