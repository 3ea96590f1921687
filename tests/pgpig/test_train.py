"""``pgpig.train`` and ``pgpig train``: the whole loop on a tiny mannequin shard set, exact resume, recipe checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from pgpig.cli import main
from pgpig.errors import TrainError
from pgpig.train import TrainConfig, load_config, train

# tiny and fast: a random VGG (ImageNet weights cannot be downloaded in tests), 1 PAT block at width 8
TINY = ["--set", "ngf=8", "--set", "n_blocks=1", "--set", "d_blocks=1", "--set", "vgg_weights=null",
        "--set", "allow_random_vgg=true", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A Market-layout mannequin shard set (128x64, 4 identities x 4 poses) with train/ and test/."""
    from corpus import mannequin_shards

    return mannequin_shards(tmp_path_factory.mktemp("train"), "market", identities=4, poses=4, splits=("train", "test"))


def test_one_step_through_the_cli_writes_checkpoint_sample_and_tensorboard(shards, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--shards", str(shards), "--run", str(run), "--steps", "1",
                                       "--batch-size", "2", "--set", "sample_every=1", "--set", "log_every=1",
                                       *TINY])
    assert result.exit_code == 0, result.output
    assert "step 1" in result.output
    weights = load_file(str(run / "generator.safetensors"))
    assert weights and all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert (run / "discriminators.safetensors").is_file()  # use_gan is on by default (the PATN recipe)
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["step"] == 1 and state["epoch"] == 0 and state["in_epoch"] == 1
    assert (run / "samples" / "step-000001.png").is_file()
    from PIL import Image

    with Image.open(run / "samples" / "step-000001.png") as png:
        assert png.size == (5 * 64, 2 * 128)  # 5 columns (source | poses | generated | target), one row per pair
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["ngf"] == 8 and saved["steps"] == 1 and saved["run_dir"] == str(run)


def test_resume_continues_exactly(shards, tmp_path):
    # 6 steps of batch 4 over 24 pairs cross an epoch boundary; the resume happens mid-epoch (step 2)
    common = ["--shards", str(shards), "--batch-size", "4", "--set", "flip=true", "--set", "sample_every=100",
              *TINY]
    runner = CliRunner()
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert runner.invoke(main, ["train", "--run", str(straight), "--steps", "7", *common]).exit_code == 0
    first = runner.invoke(main, ["train", "--run", str(split), "--steps", "2", *common])
    assert first.exit_code == 0, first.output
    resumed = runner.invoke(main, ["train", "--resume", str(split), "--steps", "7", *common[2:]])
    assert resumed.exit_code == 0, resumed.output
    a, b = load_file(str(straight / "generator.safetensors")), load_file(str(split / "generator.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    da = load_file(str(straight / "discriminators.safetensors"))
    db = load_file(str(split / "discriminators.safetensors"))
    assert all(torch.equal(da[k], db[k]) for k in da)
    sa = torch.load(straight / "train_state.pt", weights_only=True)
    sb = torch.load(split / "train_state.pt", weights_only=True)
    assert (sa["step"], sa["epoch"], sa["in_epoch"]) == (sb["step"], sb["epoch"], sb["in_epoch"]) == (7, 1, 1)


def test_a_new_run_refuses_a_folder_that_holds_one(shards, tmp_path):
    cfg = load_config(None, {"shards": shards, "run_dir": tmp_path / "r", "steps": 1, "batch_size": 2, "ngf": 8,
                             "n_blocks": 1, "use_gan": False, "vgg_weights": None, "allow_random_vgg": True,
                             "num_workers": 0, "progress": False})
    assert train(cfg)["step"] == 1
    assert not (tmp_path / "r" / "discriminators.safetensors").exists()  # use_gan false: no discriminators
    with pytest.raises(TrainError, match="--resume"):
        train(cfg)


def test_unknown_recipe_key_is_an_error_naming_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("ngf: 16\nlearning_rate: 0.1\n")
    with pytest.raises(TrainError, match="learning_rate"):
        load_config(recipe, {})
    with pytest.raises(TrainError, match="batch_size"):
        load_config(None, {"batch_size": "eight"})
    with pytest.raises(TrainError, match="amp"):
        load_config(None, {"amp": "fp8"})
    result = CliRunner().invoke(main, ["train", "--recipe", str(recipe)])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "learning_rate" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_random_vgg_needs_allow_random_vgg():
    with pytest.raises(TrainError, match="allow_random_vgg"):
        load_config(None, {"vgg_weights": None})
    assert load_config(None, {"vgg_weights": None, "allow_random_vgg": True}).vgg_weights is None


def test_demo_recipe_sets_only_existing_fields():
    recipe = Path(__file__).resolve().parents[2] / "workflows" / "demo.yaml"
    cfg = load_config(recipe, {})
    assert isinstance(cfg, TrainConfig) and cfg.model == "patn" and cfg.ngf < 64


def test_missing_shards_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["train", "--shards", str(tmp_path / "nowhere"), *TINY])
    assert result.exit_code == 1
    assert result.output.startswith("error:") and len(result.output.strip().splitlines()) == 1
