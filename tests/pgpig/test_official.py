"""``pgpig.models.official`` and ``pgpig import-official``: the official checkpoints of PATN, XingGAN, GFLA and DPTN
load into pgpig's generators and reproduce the official code's own outputs
(``tests/data/reference/official/*_public.pt``, computed by the official repositories in float32), every official
state-dict key converts with its shape, and a checkpoint saved as the official repositories save theirs becomes a
run folder that ``pgpig generate`` runs."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from click.testing import CliRunner

from pgpig.cli import main
from pgpig.errors import TrainError
from pgpig.generate import load_generator
from pgpig.models import official

PUBLIC = [name for name in ("patn", "dptn", "gfla") if name in official.MODELS]


def _public(shared_reference, name: str) -> dict:
    public = torch.load(shared_reference / "official" / f"{name}_public.pt", weights_only=True)
    if isinstance(public["state_dict"], str):  # GFLA's weights sit in a file of their own
        public["state_dict"] = torch.load(shared_reference / "official" / public["state_dict"], weights_only=True)
    public["state_dict"] = {k: v.float() if v.is_floating_point() else v for k, v in public["state_dict"].items()}
    return public


def _official_shapes(shared_reference) -> dict[str, dict[str, list[int]]]:
    return json.loads((shared_reference / "official" / "state_dict_shapes.json").read_text())


@pytest.mark.parametrize("name", PUBLIC)
def test_official_weights_reproduce_the_official_outputs(shared_reference, name):
    public = _public(shared_reference, name)
    model = official.load(name, public["state_dict"], public["constructor"])
    with torch.no_grad():
        outputs = official.forward(name, model, [x.float() for x in public["inputs"]])
    assert len(outputs) == len(public["outputs"])
    worst = 0.0
    for ours, theirs in zip(outputs, public["outputs"], strict=True):
        assert ours.shape == theirs.shape
        worst = max(worst, (ours - theirs.float()).abs().max().item())
    print(f"\n{name}: max |ours - official| over {len(outputs)} outputs = {worst:.2e}")
    assert worst <= 1e-4


@pytest.mark.parametrize("name", PUBLIC)
def test_the_constructor_is_read_back_from_the_shapes(shared_reference, name):
    public = _public(shared_reference, name)
    inferred = official.infer_constructor(name, public["state_dict"])
    spec = official.MODELS[name]
    # the same model (an argument the shapes cannot show, such as a width cap that caps nothing, may differ)
    assert official.meta_shapes(spec, inferred) == official.meta_shapes(spec, public["constructor"])
    model = official.load(name, public["state_dict"])  # no constructor: read from the shapes
    with torch.no_grad():
        first = official.forward(name, model, [x.float() for x in public["inputs"]])[0]
    torch.testing.assert_close(first, public["outputs"][0].float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("key", ["patn/deepfashion", "patn/market1501", "xinggan/deepfashion", "xinggan/market1501",
                                 "gfla/deepfashion", "gfla/market1501", "dptn/deepfashion"])
def test_every_official_key_converts_with_its_shape(shared_reference, key):
    name, dataset = key.split("/")
    if name not in official.MODELS:
        pytest.skip(f"{name} is not importable yet")
    shapes = {k: tuple(v) for k, v in _official_shapes(shared_reference)[key].items()}
    # shapes alone (meta tensors): the paper setting is recognised and its constructor read back
    meta = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
    assert dataset in official.paper_settings(name, meta)
    constructor = official.infer_constructor(name, meta)
    assert official.meta_shapes(official.MODELS[name], constructor) == shapes


def test_a_plain_official_save_round_trips_through_import_official(shared_reference, tmp_path):
    """``torch.save(net.state_dict())`` of PATN at the Market-1501 paper setting (batch norm, running statistics),
    trained a little so the statistics are not the initial ones, becomes a run folder; ``pgpig generate``'s loader
    gives the official forward's output."""
    from pgpig.models.patn import PAPER_SETTINGS, PATN

    torch.manual_seed(0)
    net = PATN(**PAPER_SETTINGS["market1501"]).train()
    with torch.no_grad():
        net(torch.rand(2, 3, 128, 64) * 2 - 1, torch.rand(2, 18, 128, 64), torch.rand(2, 18, 128, 64))
    checkpoint = tmp_path / "latest_net_netG.pth"
    torch.save(net.state_dict(), checkpoint)

    result = CliRunner().invoke(main, ["import-official", "--model", "patn", "--checkpoint", str(checkpoint),
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "patn (market1501, 128x64, 41,365,763 parameters)" in result.output
    run = load_generator(tmp_path / "run", "cpu")
    assert run.config.model == "patn" and run.config.norm == "batch" and run.size == (128, 64) and run.step == 0
    image, poses = torch.rand(1, 3, 128, 64) * 2 - 1, torch.rand(1, 36, 128, 64)
    with torch.no_grad():
        expected = official.forward("patn", net.eval(), [image, poses])[0]
        ours = run.generator(image, poses[:, :18], poses[:, 18:])
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)

    again = CliRunner().invoke(main, ["import-official", "--model", "patn", "--checkpoint", str(checkpoint),
                                      "--out", str(tmp_path / "run")])
    assert again.exit_code == 1 and "already holds a run" in again.output


def test_generate_runs_from_an_imported_reduced_width_checkpoint(shared_reference, tmp_path):
    """The reference file's PATN (ngf 16, not a paper width) needs ``--dataset``; then ``pgpig generate`` draws."""
    from conftest import ultralytics_assets

    assets = ultralytics_assets()
    checkpoint = tmp_path / "patn.pth"
    torch.save(_public(shared_reference, "patn")["state_dict"], checkpoint)
    runner = CliRunner()
    args = ["import-official", "--model", "patn", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "run")]
    refused = runner.invoke(main, args)
    assert refused.exit_code == 1 and "--dataset" in refused.output and "'ngf': 16" in refused.output
    assert runner.invoke(main, [*args, "--dataset", "deepfashion"]).exit_code == 0
    out = tmp_path / "drawn.png"
    result = runner.invoke(main, ["generate", "--run", str(tmp_path / "run"), "--source",
                                  str(assets / "zidane.jpg"), "--target-pose",
                                  str(assets / "bus.jpg"), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(out).size == (176, 256)


@pytest.mark.parametrize("name", [n for n in ("dptn", "gfla") if n in official.MODELS])
def test_a_reduced_width_flow_or_transformer_checkpoint_imports_and_generates(shared_reference, tmp_path, name):
    """Widths the run config cannot say by itself go to ``generator_options``; the run folder's generator is the
    official one: the same first output as the official forward."""
    public = _public(shared_reference, name)
    checkpoint = tmp_path / f"{name}.pth"
    torch.save(public["state_dict"], checkpoint)
    result = CliRunner().invoke(main, ["import-official", "--model", name, "--checkpoint", str(checkpoint),
                                       "--dataset", "market1501", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    run = load_generator(tmp_path / "run", "cpu")
    assert run.config.model == name and run.size == (128, 64)
    # the paper recipe of the whole model (GFLA's end-to-end stage), so `--recipe RUN/config.yaml` fine-tunes it
    assert run.config.stage == (2 if name == "gfla" else 1) and run.config.lambda_l1 > 0 and run.config.use_gan
    inputs = [x.float() for x in public["inputs"]]
    with torch.no_grad():
        ours = run.generator(*inputs)
    ours = ours[0] if isinstance(ours, (tuple, list)) else ours
    torch.testing.assert_close(ours, public["outputs"][0].float(), atol=1e-4, rtol=0)


def test_dptn_shapes_do_not_tell_the_data_set(shared_reference, tmp_path):
    """DPTN's paper generator is the same on both data sets: import-official asks for --dataset."""
    shapes = _official_shapes(shared_reference)["dptn/deepfashion"]
    meta = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    assert official.paper_settings("dptn", meta) == ["deepfashion", "market1501"]


def test_keys_that_do_not_fit_are_named(shared_reference):
    state = dict(_public(shared_reference, "patn")["state_dict"])
    state["model.extra.weight"] = torch.zeros(1)
    del state["model.stream1_up.7.bias"]
    state["model.stream1_up.7.weight"] = torch.zeros(3, 16, 3, 3)
    with pytest.raises(TrainError) as error:
        official.load("patn", state)
    message = str(error.value)
    assert "missing (1): model.stream1_up.7.bias" in message
    assert "unexpected (1): model.extra.weight" in message
    assert "wrong shape (1): model.stream1_up.7.weight (3, 16, 3, 3) != (3, 16, 7, 7)" in message


def test_a_data_parallel_prefix_is_dropped(shared_reference):
    public = _public(shared_reference, "patn")
    wrapped = {f"module.{k}": v for k, v in public["state_dict"].items()}
    model = official.load("patn", wrapped)
    with torch.no_grad():
        out = official.forward("patn", model, [x.float() for x in public["inputs"]])[0]
    torch.testing.assert_close(out, public["outputs"][0].float(), atol=1e-4, rtol=0)


class _NotWeights:
    """An arbitrary pickled object: ``weights_only`` loading must refuse it without running its code."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_checkpoint_that_needs_unpickling_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"model.x": _NotWeights()}, f)
    result = CliRunner().invoke(main, ["import-official", "--model", "patn", "--checkpoint", str(path),
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "cannot read official checkpoint weights" in result.output and str(path) in result.output
    assert "this must never run" not in result.output + capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_unknown_and_tensorflow_models_are_one_line_errors(tmp_path):
    with pytest.raises(TrainError, match="TensorFlow"):
        official.load("pg2", {})
    with pytest.raises(TrainError, match="choose one of"):
        official.infer_constructor("nope", {})


def test_paper_counts_agree_with_the_official_lists(shared_reference):
    """The paper models' parameter counts, buffers excluded, from the official key lists."""
    shapes = _official_shapes(shared_reference)
    for key in ("patn/deepfashion", "xinggan/market1501"):
        name, dataset = key.split("/")
        model = official.MODELS[name].build(official.MODELS[name].paper[dataset])
        expected = sum(math.prod(s) for k, s in shapes[key].items()
                       if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        assert sum(p.numel() for p in model.parameters()) == expected
