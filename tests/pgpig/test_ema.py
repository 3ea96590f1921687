"""The generator's weight average (``ema_decay``): its update rule, its checkpoint file, resume, and that generate
and eval read it."""

from __future__ import annotations

import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from pgpig.checkpoint import EMA_NAME, step_folders
from pgpig.cli import main
from pgpig.ema import WeightAverage
from pgpig.generate import load_generator

TINY = ["--set", "ngf=8", "--set", "n_blocks=1", "--set", "d_blocks=1", "--set", "vgg_weights=null",
        "--set", "allow_random_vgg=true", "--workers", "0", "--quiet", "--skip-memory-check"]


def test_the_average_copies_during_the_start_then_moves_by_one_minus_decay():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(net, decay=0.75, start=1)
    assert not any(p.requires_grad for p in average.model.parameters()) and not average.model.training
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net(torch.randn(4, 3))  # moves the batch-norm statistics
    average.update(net)  # update 0 < start: a copy
    assert torch.equal(average.model[0].weight, net[0].weight)
    assert torch.equal(average.model[1].running_mean, net[1].running_mean)
    before = average.model[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(2.0)
    average.update(net)
    torch.testing.assert_close(average.model[0].weight, 0.75 * before + 0.25 * net[0].weight)
    assert average.updates == 2


def test_a_run_with_an_average_checkpoints_it_resumes_it_and_generate_reads_it(small_market_shards, tmp_path):
    """Straight 4 steps and 2 + resume 2 give the same average (its update count is checkpointed, so the copy phase
    is not repeated); ``RUN/generator.safetensors`` is the average, not the trained weights."""
    common = ["--shards", str(small_market_shards), "--batch-size", "4", "--set", "ema_decay=0.5",
              "--set", "ema_start=1", "--set", "sample_every=100", *TINY]
    runner = CliRunner()
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert runner.invoke(main, ["train", "--run", str(straight), "--steps", "4", *common]).exit_code == 0
    assert runner.invoke(main, ["train", "--run", str(split), "--steps", "2", *common]).exit_code == 0
    resumed = runner.invoke(main, ["train", "--resume", str(split), "--steps", "4", *common[2:]])
    assert resumed.exit_code == 0, resumed.output
    folder = step_folders(straight)[-1]
    average = load_file(str(folder / f"{EMA_NAME}.safetensors"))
    trained = load_file(str(folder / "generator.safetensors"))
    assert average.keys() == trained.keys()
    assert any(not torch.equal(average[k], trained[k]) for k in average if k.endswith("weight"))
    assert (straight / "generator.safetensors").samefile(folder / f"{EMA_NAME}.safetensors")
    other = load_file(str(split / "generator.safetensors"))
    assert all(torch.equal(average[k], other[k]) for k in average)
    loaded = load_generator(straight, device="cpu").generator.state_dict()
    assert all(torch.equal(loaded[k], average[k]) for k in average)
