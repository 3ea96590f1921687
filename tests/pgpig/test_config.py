"""``pgpig.config``: the messages of bad ``--set`` keys and values, through ``pgpig train``."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pgpig.cli import main, parse_set
from pgpig.config import load_config
from pgpig.errors import TrainError


def train(*args: str) -> str:
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1, result.output  # one line, no traceback
    return result.output.strip()


def test_unknown_set_key_blames_set_and_names_the_nearest_key(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("ngf: 16\n")
    line = train("--recipe", str(recipe), "--set", "lamda_l1=1")
    assert line == "error: --set: unknown config key(s) lamda_l1 (did you mean lambda_l1?)"
    # a key with nothing close gets the list of known keys
    line = train("--set", "zzz=1")
    assert line.startswith("error: --set: unknown config key(s) zzz; known: shards, ") and "lambda_l1" in line


def test_unknown_recipe_key_still_blames_the_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lamda_l1: 1\n")
    line = train("--recipe", str(recipe), "--set", "ngf=8")
    assert line == f"error: {recipe}: unknown config key(s) lamda_l1 (did you mean lambda_l1?)"


@pytest.mark.parametrize("setting, message", [
    ("lambda_l1=abc", "--set lambda_l1: 'abc' is not a number (float)"),
    ("n_blocks=2.5", "--set n_blocks: 2.5 is not a whole number (int)"),
    ("flip=3", "--set flip: 3 is not true or false (bool)"),
    ("betas=[0.5]", "--set betas: [0.5] is not a list of 2 values (float, float)"),
    ("amp=fp8", "--set amp: 'fp8' is not one of none, bf16, fp16, auto"),
])
def test_bad_set_value_names_the_key_and_the_expected_type(setting, message):
    assert train("--set", setting) == f"error: {message}"


def test_bad_recipe_value_names_the_recipe_and_the_key(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lambda_l1: abc\n")
    with pytest.raises(TrainError) as info:
        load_config(recipe, {})
    assert str(info.value) == f"{recipe}: lambda_l1: 'abc' is not a number (float)"
    # the same key from --set blames --set, the recipe's value being replaced
    with pytest.raises(TrainError, match=r"^--set lambda_l1: 'x' is not a number \(float\)$"):
        load_config(recipe, {"lambda_l1": "x"}, set_keys={"lambda_l1"})
    assert load_config(recipe, {"lambda_l1": 2}, set_keys={"lambda_l1"}).lambda_l1 == 2.0


def test_exponent_numbers_without_a_dot_are_floats(tmp_path):
    # YAML 1.1 (PyYAML) reads 2e-4 as a string; a float field takes it as the number a user means
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 2e-4\nbetas: [0.5, 9E-1]\n")
    config = load_config(recipe, {})
    assert (config.lr, config.betas) == (2e-4, (0.5, 0.9))
    assert load_config(recipe, parse_set(("lr=1e-3",)), set_keys={"lr"}).lr == 1e-3
    with pytest.raises(TrainError, match=r"^--set lr: '1e' is not a number \(float\)$"):
        load_config(recipe, parse_set(("lr=1e",)), set_keys={"lr"})


def test_cuda_graph_refuses_what_a_replayed_step_cannot_do():
    """A graph replays the step's kernels only: fp16's loss scaler and the history pool decide on the host."""
    base = {"vgg_weights": None, "allow_random_vgg": True, "cuda_graph": True}
    with pytest.raises(TrainError, match=r"cuda_graph: true cannot replay a step with amp: fp16"):
        load_config(None, {**base, "amp": "fp16", "pool_size": 0})
    with pytest.raises(TrainError, match=r"cuda_graph: true cannot replay a step with pool_size: 4"):
        load_config(None, {**base, "amp": "bf16", "pool_size": 4})
    with pytest.raises(TrainError, match=r"cuda_graph: true cannot replay a step with model: pidm"):
        load_config(None, {**base, "amp": "none", "pool_size": 0, "model": "pidm"})
    assert load_config(None, {**base, "amp": "bf16", "pool_size": 0}).cuda_graph is True


def test_cuda_graph_auto_is_on_for_cuda_only_and_where_a_graph_can_replay():
    import torch

    from pgpig.config import resolve_speed

    cfg = load_config(None, {"vgg_weights": None, "allow_random_vgg": True, "cuda_graph": "auto", "amp": "none",
                             "pool_size": 0})
    assert resolve_speed(cfg, torch.device("cpu")).cuda_graph is False
    assert resolve_speed(cfg, torch.device("cuda")).cuda_graph is True
    for change in ({"pool_size": 4}, {"amp": "fp16"}, {"model": "pidm"}):
        other = load_config(None, {"vgg_weights": None, "allow_random_vgg": True, "cuda_graph": "auto", "amp": "none",
                                   "pool_size": 0, **change})
        assert resolve_speed(other, torch.device("cuda")).cuda_graph is False, change
