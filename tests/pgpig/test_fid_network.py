"""``--fid-network torchvision``: GFLA's FID features (torchvision's Inception-v3, fed as GFLA's
``script/inception.py`` feeds it) from a weights file, checked against torchvision's own forward pass, and
``pgpig eval`` with them on the mannequin set."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import inception_v3

from pgpig.config import EvalConfig
from pgpig.errors import TrainError
from pgpig.evaluate import compare, evaluate, pair_file_name, read_names
from pgpig.metrics import WeightsUnavailable, fid_extractor, torchvision_inception_extractor

WEIGHTS = "inception_v3_google-0cc3c7bd.pth"


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """Seeded random torchvision Inception-v3 weights (PyTorch's default init) under the ImageNet file's name."""
    folder = tmp_path_factory.mktemp("tv-inception")
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), folder / WEIGHTS)
    return folder


def photos() -> torch.Tensor:
    """ultralytics' bus.jpg and zidane.jpg at 128x64 (Market-1501's frame), ``(2, 3, 128, 64)`` uint8 RGB."""
    from conftest import ultralytics_assets

    images = [cv2.resize(cv2.imread(str(ultralytics_assets() / n)), (64, 128), interpolation=cv2.INTER_AREA)[..., ::-1]
              for n in ("bus.jpg", "zidane.jpg")]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def test_features_are_torchvisions_pool3_of_the_image_in_0_1_resized_to_299(weights_dir):
    # torchvision's Inception3.forward with transform_input applies x * std / 0.5 + (mean - 0.5) / 0.5, the
    # normalisation GFLA's inception.py applies to its [0, 1] input; with fc removed it returns the pooled 2048-D
    images = photos()
    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    net.load_state_dict(torch.load(weights_dir / WEIGHTS, weights_only=True))
    net.fc = torch.nn.Identity()
    net.eval()
    with torch.no_grad():
        x = torch.nn.functional.interpolate(images.float() / 255, size=(299, 299), mode="bilinear",
                                            align_corners=False)
        expected = net(x)
    features = torchvision_inception_extractor(weights_dir)(images)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(features[0], features[1])


def test_missing_or_wrong_weights_and_unknown_networks_are_one_line_errors(monkeypatch, tmp_path):
    def refuse(*_args, **_kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailable, match=f"{WEIGHTS}.*--weights-dir") as info:
        fid_extractor("torchvision", tmp_path)
    assert "\n" not in str(info.value)
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, tmp_path / WEIGHTS)
    with pytest.raises(TrainError, match="do not fit torchvision's inception_v3"):
        fid_extractor("torchvision", tmp_path)
    with pytest.raises(ValueError, match="unknown FID network 'pt'"):
        fid_extractor("pt", tmp_path)
    with pytest.raises(TrainError, match="--fid-network pt: use one of tf, torchvision"):
        evaluate(EvalConfig(generated=tmp_path, fid_network="pt"))


def test_eval_fid_of_the_test_images_against_themselves_is_zero_and_records_the_network(weights_dir, market_shards,
                                                                                        tmp_path):
    from pipeline.shards import ShardSet

    stored = ShardSet(market_shards / "test")
    names = read_names(stored)
    folder = tmp_path / "all-targets"
    folder.mkdir()
    chosen = {}
    for s, t in stored.pairs:
        chosen.setdefault(int(t), int(s))
    for t, s in chosen.items():
        Image.fromarray(stored[t].image).save(folder / pair_file_name(names[s], names[t]))
    result = evaluate(EvalConfig(shards=market_shards, generated=folder, out=tmp_path / "eval", metrics=("fid",),
                                 fid_reference="test", fid_network="torchvision", weights_dir=weights_dir,
                                 baseline=False, device="cpu", progress=False))
    assert result["rows"]["model"]["scored"] == len(stored)
    assert result["rows"]["model"]["fid"] == pytest.approx(0.0, abs=1e-6)
    settings = result["settings"]
    assert settings["fid_network"] == "torchvision" and settings["fid_features"].startswith("torchvision inception_v3")
    # FIDs of two networks do not sit in one column; an eval.json without the key counts as tf
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    del written["settings"]["fid_network"]
    older = tmp_path / "older.json"
    older.write_text(json.dumps(written))
    with pytest.raises(TrainError, match=r"different --fid-network \(tf, torchvision\)"):
        compare([tmp_path / "eval" / "eval.json", older])
