"""``pgpig.train`` and ``pgpig train``: the whole loop on a tiny mannequin shard set, exact resume, recipe checks."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from pgpig.checkpoint import step_folders
from pgpig.cli import main
from pgpig.config import TrainConfig, load_config, resolve_speed
from pgpig.errors import TrainError
from pgpig.train import HistoryPool, lr_factor, total_steps, train

# tiny and fast: a random VGG (ImageNet weights cannot be downloaded in tests), 1 PAT block at width 8
TINY = ["--set", "ngf=8", "--set", "n_blocks=1", "--set", "d_blocks=1", "--set", "vgg_weights=null",
        "--set", "allow_random_vgg=true", "--workers", "0", "--quiet"]


def latest(run: Path) -> Path:
    """The newest checkpoint folder of a run."""
    return step_folders(run)[-1]


def test_one_step_through_the_cli_writes_checkpoint_sample_and_tensorboard(market_shards, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--shards", str(market_shards), "--run", str(run), "--steps", "1",
                                       "--batch-size", "2", "--set", "sample_every=1", "--set", "log_every=1",
                                       *TINY])
    assert result.exit_code == 0, result.output
    assert "step 1" in result.output
    weights = load_file(str(run / "generator.safetensors"))
    assert weights and all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    checkpoint = run / "checkpoints" / "step-00000001"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["discriminators.safetensors",  # use_gan: on by default
                                                            "generator.safetensors", "train_state.pt"]
    assert (checkpoint / "generator.safetensors").samefile(run / "generator.safetensors")
    state = torch.load(checkpoint / "train_state.pt", weights_only=True)
    assert state["step"] == 1 and state["epoch"] == 0 and state["in_epoch"] == 1
    assert (run / "samples" / "step-000001.png").is_file()
    from PIL import Image

    with Image.open(run / "samples" / "step-000001.png") as png:
        # 5 columns (source | poses | generated | target), one row per pair, under a header strip naming them
        assert png.size[0] == 5 * 64 and 2 * 128 + 10 <= png.size[1] <= 2 * 128 + 60
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["ngf"] == 8 and saved["steps"] == 1 and saved["run_dir"] == str(run)


def test_a_run_shorter_than_sample_every_writes_grids_at_step_0_and_the_last_step(small_market_shards, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--shards", str(small_market_shards), "--run", str(run), "--steps", "3",
                                       "--batch-size", "2", "--set", "sample_every=1000", *TINY])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000000.png", "step-000003.png"]
    from PIL import Image

    with Image.open(run / "samples" / "step-000000.png") as first, \
            Image.open(run / "samples" / "step-000003.png") as last:
        assert first.size == last.size and first.size[0] == 5 * 32
        a, b = np.asarray(first), np.asarray(last)
    # the same header above different pictures: the batch of step 1 under the untrained generator, that of step 3
    header = a.shape[0] - 2 * 64  # 2 pairs of 64x32
    assert header > 0 and np.array_equal(a[:header], b[:header]) and (a[:header] < 128).any()
    assert not np.array_equal(a[header:], b[header:])


def test_checkpoints_are_step_folders_and_the_oldest_are_pruned(market_shards, tmp_path):
    cfg = load_config(None, {"shards": market_shards, "run_dir": tmp_path / "r", "steps": 3, "batch_size": 2, "ngf": 8,
                             "n_blocks": 1, "use_gan": False, "vgg_weights": None, "allow_random_vgg": True,
                             "num_workers": 0, "progress": False, "checkpoint_every": 1, "keep_checkpoints": 2})
    train(cfg)
    run = tmp_path / "r"
    assert sorted(
        p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    assert (run / "generator.safetensors").samefile(run / "checkpoints" / "step-00000003" / "generator.safetensors")
    assert not list(run.rglob("*.tmp"))


def test_resume_continues_exactly(market_shards, tmp_path):
    # 6 steps of batch 4 over 24 pairs cross an epoch boundary; the resume happens mid-epoch (step 2)
    # with a history pool (its contents are checkpointed) and a decaying LR (a function of the step): lr falls
    # from step 2 on (schedule epochs of 2 steps: 1 constant, 3 decaying)
    common = ["--shards", str(market_shards), "--batch-size", "4", "--set", "flip=true", "--set", "sample_every=100",
              "--set", "pool_size=3", "--set", "lr_policy=linear", "--set", "schedule_epoch_pairs=8",
              "--set", "lr_constant_epochs=1", "--set", "lr_decay_epochs=3", *TINY]
    runner = CliRunner()
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert runner.invoke(main, ["train", "--run", str(straight), "--steps", "7", *common]).exit_code == 0
    first = runner.invoke(main, ["train", "--run", str(split), "--steps", "2", *common])
    assert first.exit_code == 0, first.output
    resumed = runner.invoke(main, ["train", "--resume", str(split), "--steps", "7", *common[2:]])
    assert resumed.exit_code == 0, resumed.output
    a, b = load_file(str(straight / "generator.safetensors")), load_file(str(split / "generator.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    da = load_file(str(latest(straight) / "discriminators.safetensors"))
    db = load_file(str(latest(split) / "discriminators.safetensors"))
    assert all(torch.equal(da[k], db[k]) for k in da)
    sa = torch.load(latest(straight) / "train_state.pt", weights_only=True)
    sb = torch.load(latest(split) / "train_state.pt", weights_only=True)
    assert (sa["step"], sa["epoch"], sa["in_epoch"]) == (sb["step"], sb["epoch"], sb["in_epoch"]) == (7, 1, 1)
    for name in ("appearance", "shape"):  # the pools are full (3 of the 4 x 7 generated pairs) and the same
        assert sa["pools"][name]["0"].shape[0] == 3
        assert all(torch.equal(sa["pools"][name][k], sb["pools"][name][k]) for k in sa["pools"][name])
    # step 6 is in schedule epoch 4 of 4, which the official rule runs at lr 0
    assert sa["opt_g"]["param_groups"][0]["lr"] == 0.0
    # --quiet is this invocation's: a resume without it shows the progress bar again
    assert yaml.safe_load((split / "config.yaml").read_text())["progress"] is False
    again = runner.invoke(main, ["train", "--resume", str(split), "--steps", "8",
                                 *[a for a in common[2:] if a != "--quiet"]])
    assert again.exit_code == 0, again.output
    assert yaml.safe_load((split / "config.yaml").read_text())["progress"] is True


def test_linear_schedule_is_the_official_lambda_rule():
    """``lr_factor`` against PyTorch's ``LambdaLR`` stepped once per epoch with PATN's rule (``get_scheduler`` of
    tengteng95/Pose-Transfer, ``epoch_count`` 1): constant for ``niter`` epochs, then down to 0 over ``niter_decay``."""
    cfg = load_config(None, {"lr_policy": "linear", "schedule_epoch_pairs": 4000, "batch_size": 7,
                             "lr_constant_epochs": 500, "lr_decay_epochs": 200, "steps": None})
    steps_per_epoch = 572  # ceil(4000 / 7): PATN keeps the ragged last batch of its 4,000-pair epoch
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 1.0 - max(0, e + 1 + 1 - 500) / float(200 + 1))
    for epoch in range(700):  # the official loop: train the epoch at the current lr, then scheduler.step()
        expected = optimizer.param_groups[0]["lr"]
        for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):
            assert lr_factor(cfg, step, train_pairs=10**6) == pytest.approx(expected, abs=1e-12), (epoch, step)
        optimizer.step()
        scheduler.step()
    assert lr_factor(cfg, 0, 10**6) == 1.0 and lr_factor(cfg, 700 * 572 - 1, 10**6) == 0.0
    assert total_steps(cfg, train_pairs=10**6) == 700 * 572
    # without schedule_epoch_pairs an epoch is one pass over the train pairs
    cfg = load_config(None, {"lr_policy": "linear", "batch_size": 10, "lr_constant_epochs": 1, "lr_decay_epochs": 1,
                             "steps": None})
    assert total_steps(cfg, train_pairs=95) == 2 * 10
    # with niter 1 the decay already starts in epoch 1 (1 - 1/2), and the last epoch runs at 0, as the rule says
    assert [lr_factor(cfg, s, 95) for s in (0, 9, 10, 19)] == [0.5, 0.5, 0.0, 0.0]
    with pytest.raises(TrainError, match="steps is null"):
        load_config(None, {"steps": None})


def test_history_pool_fills_then_swaps_and_round_trips():
    torch.manual_seed(0)
    assert HistoryPool(0).query(torch.ones(2, 1))[0].equal(torch.ones(2, 1))  # size 0: the batch itself
    pool = HistoryPool(4)
    first = pool.query(torch.arange(3.0)[:, None], -torch.arange(3.0)[:, None])
    assert first[0].flatten().tolist() == [0, 1, 2] and first[1].flatten().tolist() == [0, -1, -2]
    seen = {0.0, 1.0, 2.0}
    returned = []
    for start in range(3, 60, 3):
        batch = torch.arange(start, start + 3.0)[:, None]
        image, condition = pool.query(batch, -batch)
        assert torch.equal(condition, -image)  # rows stay paired with their condition
        returned += image.flatten().tolist()
        seen.update(batch.flatten().tolist())
        assert len(pool.items) == 4 and set(returned) <= seen
    old = [v for v in returned if v < 3]
    assert old, "a full pool hands back earlier items"
    assert 0.2 < sum(v not in range(int(s), int(s) + 3) for v, s in zip(returned, sorted(
        [s for s in range(3, 60, 3) for _ in range(3)]), strict=True)) / len(returned) < 0.8  # about half swapped
    copy = HistoryPool(4)
    copy.load_state_dict(pool.state_dict(), torch.device("cpu"))
    assert all(torch.equal(a, b) for x, y in zip(pool.items, copy.items, strict=True) for a, b in zip(x, y,
                                                                                                      strict=True))


@pytest.mark.parametrize(("dataset", "steps", "norm", "gan", "pool", "l1"),
                         [("deepfashion", 400_400, "instance", "lsgan", 0, 1.0),
                          ("market1501", 87_500, "batch", "vanilla", 50, 10.0)])
def test_paper_recipes(dataset, steps, norm, gan, pool, l1):
    cfg = load_config(Path(__file__).resolve().parents[2] / "workflows" / dataset / "patn.yaml", {})
    assert (cfg.model, cfg.ngf, cfg.n_blocks, cfg.lr, cfg.betas) == ("patn", 64, 9, 2e-4, (0.5, 0.999))
    assert (cfg.norm, cfg.gan_kind, cfg.pool_size, cfg.lambda_l1, cfg.lambda_perceptual, cfg.lambda_gan) == (
        norm, gan, pool, l1, l1, 5.0)
    assert total_steps(cfg, train_pairs=10**5) == steps


def test_a_new_run_refuses_a_folder_that_holds_one(market_shards, tmp_path):
    cfg = load_config(None, {"shards": market_shards, "run_dir": tmp_path / "r", "steps": 1, "batch_size": 2, "ngf": 8,
                             "n_blocks": 1, "use_gan": False, "vgg_weights": None, "allow_random_vgg": True,
                             "num_workers": 0, "progress": False})
    assert train(cfg)["step"] == 1
    assert not (latest(tmp_path / "r") / "discriminators.safetensors").exists()  # use_gan false: no discriminators
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


def test_fused_adam_makes_the_default_update_and_resumes_exactly(market_shards, tmp_path):
    """``fused_adam`` (fused Adam kernels) takes the step the default Adam takes, up to rounding, on the generator
    and the discriminators, and a fused run resumed from its checkpoint ends bit for bit like one run straight.

    Compared after one step: from the second on, parameters whose true gradient is zero (a convolution's bias
    before an instance norm) get rounding noise as gradient, which Adam's normalisation turns into steps of about
    ``lr`` whatever the noise, so two runs that differ by rounding part by that much."""
    small = {"shards": market_shards, "batch_size": 2, "ngf": 8, "n_blocks": 1, "d_blocks": 1, "vgg_weights": None,
             "allow_random_vgg": True, "num_workers": 0, "progress": False, "device": "cpu", "dropout": 0.0,
             "checkpoint_every": 2, "sample_every": 100}

    def weights(run: Path) -> dict[str, torch.Tensor]:
        return {**load_file(str(run / "generator.safetensors")),
                **{f"d.{k}": v for k, v in load_file(str(latest(run) / "discriminators.safetensors")).items()}}

    runs = {}
    for fused in (False, True):
        cfg = load_config(None, {**small, "run_dir": tmp_path / f"one-{fused}", "steps": 1, "fused_adam": fused})
        train(cfg)
        runs[fused] = weights(cfg.run_dir)
    state = torch.load(latest(tmp_path / "one-True") / "train_state.pt", weights_only=True)
    assert state["opt_g"]["param_groups"][0]["fused"] is True and state["opt_d"]["param_groups"][0]["fused"] is True
    assert max(float((runs[True][k] - runs[False][k]).abs().max()) for k in runs[True]) < 1e-3 * cfg.lr

    straight = train(load_config(None, {**small, "run_dir": tmp_path / "straight", "steps": 4, "fused_adam": True}))
    train(load_config(None, {**small, "run_dir": tmp_path / "split", "steps": 2, "fused_adam": True}))
    resumed = train(load_config(tmp_path / "split" / "config.yaml", {"run_dir": tmp_path / "split", "resume": True,
                                                                      "steps": 4}))
    assert resumed["losses"] == straight["losses"]
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_auto_speed_settings_train_float32_on_the_cpu_and_the_run_keeps_auto(market_shards, tmp_path):
    """``amp``/``channels_last``/``compile``/``cuda_graph: auto`` (the GPU recipes' defaults) are float32,
    contiguous, eager and ungraphed on the CPU: the same losses as spelling those out; ``config.yaml`` keeps
    ``auto`` so that a resume on other hardware decides again; the summary line names what ran."""
    small = {"shards": market_shards, "steps": 2, "batch_size": 2, "ngf": 8, "n_blocks": 1, "d_blocks": 1,
             "vgg_weights": None, "allow_random_vgg": True, "num_workers": 0, "progress": False, "device": "cpu"}
    auto = load_config(None, {**small, "run_dir": tmp_path / "auto", "amp": "auto", "channels_last": "auto",
                              "compile": "auto", "cuda_graph": "auto"})
    assert TrainConfig().amp == "auto"  # the field's default too
    resolved = resolve_speed(auto, torch.device("cpu"))
    assert (resolved.amp, resolved.channels_last, resolved.compile, resolved.cuda_graph) == ("none", False, False,
                                                                                            False)
    plain = load_config(None, {**small, "run_dir": tmp_path / "plain", "amp": "none"})
    result = train(auto)
    assert result["losses"] == train(plain)["losses"]
    assert result["speed"] == {"device": "cpu", "amp": "none", "channels_last": False, "compile": False,
                               "compile_losses": False, "compile_channels_last": False, "tf32": False,
                               "cuda_graph": None}
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert (saved["amp"], saved["channels_last"], saved["compile"], saved["cuda_graph"]) == ("auto",) * 4
    with pytest.raises(TrainError, match="'channels_last': 'yes' is not true, false or auto"):
        load_config(None, {"channels_last": "yes"})
    with pytest.raises(TrainError, match="'compile': 1 is not true, false, auto or generator"):
        load_config(None, {"compile": 1})
    output = CliRunner().invoke(main, ["train", "--shards", str(market_shards), "--run", str(tmp_path / "cli"),
                                       "--steps", "1", "--batch-size", "2", "--device", "cpu", *TINY]).output
    assert output.strip().endswith("(cpu: float32)"), output


def test_a_compiled_run_says_so_before_its_first_step(market_shards, tmp_path, monkeypatch):
    """Compiling takes minutes on a GPU before the progress bar moves: a compiled run says so once, with how to
    train eagerly instead; an eager run does not. The compile itself is left out here (the slow tests run it)."""
    import pgpig.train

    compiled = []
    monkeypatch.setattr(pgpig.train, "compile_parts",
                        lambda parts, setting, losses, channels_last: compiled.append((setting, losses,
                                                                                       channels_last)))
    common = ["train", "--shards", str(market_shards), "--steps", "1", "--batch-size", "2", "--device", "cpu",
              "--skip-memory-check", *[option for option in TINY if option != "--quiet"]]
    result = CliRunner().invoke(main, [*common, "--run", str(tmp_path / "compiled"), "--set", "compile=true"])
    said = [line for line in result.output.splitlines() if line.startswith("torch.compile:")]
    assert result.exit_code == 0 and compiled == [(True, False, False)], result.output
    assert len(said) == 1 and "compile patn for cpu" in said[0] and "--set compile=false" in said[0], said
    eager = CliRunner().invoke(main, [*common, "--run", str(tmp_path / "eager")])
    assert eager.exit_code == 0 and "torch.compile" not in eager.output and compiled == [(True, False, False)]
    losses = CliRunner().invoke(main, [*common, "--run", str(tmp_path / "losses"), "--set", "compile=true",
                                       "--set", "compile_losses=true", "--set", "compile_channels_last=true"])
    assert losses.exit_code == 0 and compiled[-1] == (True, True, True), losses.output
    assert losses.output.strip().endswith("(cpu: float32, compile, compile_losses, compile_channels_last)"), \
        losses.output


def test_bf16_on_the_cpu_is_trained_with_a_warning(market_shards, tmp_path):
    """On the CPU, oneDNN's bf16 convolutions computed garbage (and NaN) for some small feature maps (torch 2.14.1 on
    the 2-core development machine: 256 channels and more, stride 2, input width 2, as in GFLA's flow estimator at
    Market size): a bf16 run on the CPU says so once, and trains."""
    result = CliRunner().invoke(main, ["train", "--shards", str(market_shards), "--steps", "1", "--batch-size", "2",
                                       "--device", "cpu", "--skip-memory-check", "--amp", "bf16", "--run",
                                       str(tmp_path / "run"), *[option for option in TINY if option != "--quiet"]])
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if line.startswith("amp: bf16 on the CPU")]
    assert len(said) == 1 and "--amp none" in said[0], result.output


def test_compile_generator_wraps_the_generator_alone(market_shards, tmp_path):
    """``compile: generator`` compiles the generator and leaves the discriminators and the content/style loss maths
    eager (``compile: true`` wraps all three); the loss network (VGG-19) only with ``losses`` (``compile_losses``);
    every one of them asks inductor for channels-last graphs with ``channels_last`` (``compile_channels_last``) and
    leaves the layout to inductor without; nothing is compiled until a step runs."""
    from pgpig.train import build, compile_parts

    cfg = load_config(None, {"shards": market_shards, "run_dir": tmp_path / "r", "compile": "generator", "ngf": 8,
                             "n_blocks": 1, "d_blocks": 1, "vgg_weights": None, "allow_random_vgg": True,
                             "device": "cpu"})
    assert cfg.compile == "generator" and resolve_speed(cfg, torch.device("cpu")).compile == "generator"
    for setting, discriminators in (("generator", False), (True, True)):
        parts = build(cfg, torch.device("cpu"), (128, 64))
        compile_parts(parts, setting)
        assert isinstance(parts.generator, torch._dynamo.eval_frame.OptimizedModule)
        assert all(isinstance(d, torch._dynamo.eval_frame.OptimizedModule) == discriminators
                   for d in parts.discriminators.values()) and parts.discriminators
        assert ("content_style" in vars(parts.objective)) == discriminators  # a compiled copy on the instance
        assert not isinstance(parts.objective.perceptual, torch._dynamo.eval_frame.OptimizedModule)
        assert parts.generator.get_compiler_config()["force_layout_optimization"] is False
    dptn = build(dataclasses.replace(cfg, model="dptn"), torch.device("cpu"), (128, 64))
    compile_parts(dptn, True, losses=True, channels_last=True)
    assert isinstance(dptn.objective.vgg, torch._dynamo.eval_frame.OptimizedModule)
    compiled = [dptn.generator, *dptn.discriminators.values(), dptn.objective.vgg,
                *(vars(dptn.objective)[name] for name in dptn.objective.compiled_maths)]
    assert len(compiled) == 4 and all(part.get_compiler_config()["force_layout_optimization"] for part in compiled)
    gfla = build(dataclasses.replace(cfg, model="gfla", stage=2, compile=True), torch.device("cpu"), (128, 64))
    compile_parts(gfla, True)
    assert {"content_style", "correctness"} <= set(vars(gfla.objective))


def test_inductor_keeps_a_to_rgb_network_channels_last_only_when_forced(monkeypatch):
    """Why ``compile_channels_last`` exists: inductor's layout heuristic gives up channels-last for a training graph
    holding a convolution that halves its channels with a kernel wider than 1 (a to-RGB output, 64 -> 3, 7x7), even
    when the model and batch are channels-last; ``force_layout_optimization``, the option ``compile_parts`` passes,
    overrides it for the forward and the backward graph. oneDNN is off, which otherwise forces channels-last on the
    CPU, and inductor's caches are off, so that each graph is lowered here."""
    from torch._inductor.graph import GraphLowering

    decided = []
    heuristic = GraphLowering.decide_layout_opt

    def recording(gm, *, is_inference):
        decided.append(heuristic(gm, is_inference=is_inference))
        return decided[-1]

    monkeypatch.setattr(GraphLowering, "decide_layout_opt", staticmethod(recording))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 3, 7, padding=3)).to(memory_format=torch.channels_last)
    image = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    answers = {}
    with torch.backends.mkldnn.flags(enabled=False), torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        for forced in (False, True):
            torch._dynamo.reset()
            decided.clear()
            options = {"force_layout_optimization": True} if forced else None
            torch.compile(net, options=options)(image).square().mean().backward()
            answers[forced] = list(decided)
    torch._dynamo.reset()
    assert answers == {False: [False, False], True: [True, True]}


@pytest.mark.slow
def test_a_generator_compiled_channels_last_trains_at_a_second_image_size():
    """Inductor's forced channels-last layout cannot order the strides of a graph whose sizes are symbolic: when a
    second image size made dynamo compile DPTN's generator for any size, the compile failed ("cannot determine truth
    value of Relational"). ``compile_parts`` with ``channels_last`` compiles each graph for its own sizes, so the
    generator trains at two image sizes (forward and backward, 32x24 then 48x32)."""
    from pgpig.config import shipped_recipes
    from pgpig.train import build, compile_parts

    cfg = load_config(shipped_recipes()["deepfashion/dptn"], {"ngf": 8, "n_blocks": 1, "vgg_weights": None,
                                                               "allow_random_vgg": True, "device": "cpu"})
    torch.manual_seed(0)
    parts = build(cfg, torch.device("cpu"), (32, 24))
    compile_parts(parts, "generator", channels_last=True)
    try:
        for size in ((32, 24), (48, 32)):
            image, pose = (torch.randn(2, c, *size).contiguous(memory_format=torch.channels_last) for c in (3, 18))
            outputs = parts.generator(image, pose, pose)
            assert all(o.shape[-2:] == size for o in outputs)
            sum(o.mean() for o in outputs).backward()
            grads = [p.grad for p in parts.generator.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            parts.generator.zero_grad(set_to_none=True)
    finally:
        torch._dynamo.reset()


def test_every_shipped_recipe_trains_float32_on_the_cpu():
    """Recipes turn bf16, channels-last and ``torch.compile`` on for CUDA only (``auto``), never for the CPU, where
    float32 is the fast path and the tests' numbers come from."""
    from pgpig.config import shipped_recipes

    gpu_speed, compiled, vgg_compiled, layout_forced = {}, {}, set(), set()
    for name, path in shipped_recipes().items():
        cfg = load_config(path, {"vgg_weights": None, "allow_random_vgg": True})
        assert cfg.amp in ("auto", "none") and cfg.channels_last in ("auto", False), name
        assert cfg.compile in ("auto", False), name
        cpu = resolve_speed(cfg, torch.device("cpu"))
        assert (cpu.amp, cpu.channels_last, cpu.compile) == ("none", False, False), name
        gpu_speed[name] = (cfg.amp, cfg.channels_last)
        compiled[name] = cfg.compile == "auto"
        if cfg.compile_losses:
            vgg_compiled.add(name)
        if cfg.compile_channels_last:
            layout_forced.add(name)
    # the measured GPU defaults (pgpig/workflows/README.md)
    assert gpu_speed["market1501/pg2"] == ("auto", "auto") and gpu_speed["deepfashion/dptn"] == ("auto", "auto")
    assert gpu_speed["market1501/patn"] == ("auto", "auto") and gpu_speed["deepfashion/patn"] == ("auto", False)
    assert gpu_speed["deepfashion/gfla"] == ("none", False) and gpu_speed["deepfashion/gfla-stage2"] == ("auto", "auto")
    assert gpu_speed["deepfashion/xinggan"] == ("auto", False) and vgg_compiled == {"deepfashion/dptn"}
    assert layout_forced == {"deepfashion/dptn"}
    assert {name for name, on in compiled.items() if on} == {"deepfashion/dptn", "deepfashion/patn",
                                                              "market1501/xinggan", "deepfashion/pidm",
                                                              "deepfashion/gfla-stage2"}


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


def test_cuda_graph_on_the_cpu_is_a_one_line_error_that_leaves_no_run(market_shards, tmp_path):
    """``cuda_graph: true`` replays a CUDA graph; asked for on the CPU, the run stops before it builds anything."""
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--shards", str(market_shards), "--run", str(run), "--steps", "1",
                                       "--device", "cpu", "--set", "cuda_graph=true", "--set", "pool_size=0", *TINY])
    assert result.exit_code == 1
    assert result.output.startswith("error: cuda_graph: true needs a CUDA device, and this run trains on cpu")
    assert len(result.output.strip().splitlines()) == 1 and not run.exists()


def test_a_run_resumes_with_its_own_optimizer_implementation_not_the_checkpoints(market_shards, tmp_path):
    """A checkpoint's optimizer groups record how Adam ran (``capturable`` in a CUDA-graph run, ``fused``); the
    resumed run keeps its own choice: a graph run's checkpoint resumes on the CPU (a capturable Adam there fails its
    first step), and a fused one resumes unfused."""
    run = tmp_path / "run"
    cfg = load_config(None, {"shards": market_shards, "run_dir": run, "steps": 1, "batch_size": 2, "ngf": 8,
                             "n_blocks": 1, "d_blocks": 1, "vgg_weights": None, "allow_random_vgg": True,
                             "num_workers": 0, "progress": False, "device": "cpu", "pool_size": 0})
    train(cfg)
    path = latest(run) / "train_state.pt"
    state = torch.load(path, weights_only=True)
    for key in ("opt_g", "opt_d"):  # what a cuda_graph run on a GPU writes
        for group in state[key]["param_groups"]:
            group["capturable"] = True
    torch.save(state, path)
    resumed = train(load_config(run / "config.yaml", {"run_dir": run, "resume": True, "steps": 2}))
    assert resumed["step"] == 2 and all(math.isfinite(v) for v in resumed["losses"].values())
    state = torch.load(latest(run) / "train_state.pt", weights_only=True)
    assert not any(g["capturable"] for key in ("opt_g", "opt_d") for g in state[key]["param_groups"])


def test_discriminator_learning_rate_ratio_and_betas():
    """GFLA and DPTN train their discriminator at ``lr * ratio_g2d`` (0.1) with Adam betas (0, 0.999)."""
    from pgpig.train import build

    cfg = load_config(None, {"ngf": 8, "n_blocks": 1, "d_blocks": 1, "lr": 1e-4, "d_lr_ratio": 0.1,
                             "d_betas": [0.0, 0.999], "vgg_weights": None, "allow_random_vgg": True,
                             "lambda_perceptual": 0.0})
    parts = build(cfg, torch.device("cpu"), (32, 16))
    assert parts.opt_g.param_groups[0]["lr"] == 1e-4 and parts.opt_g.param_groups[0]["betas"] == (0.5, 0.999)
    assert parts.opt_d.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert parts.opt_d.param_groups[0]["betas"] == (0.0, 0.999)
    with pytest.raises(TrainError, match="d_lr_ratio"):
        load_config(None, {"d_lr_ratio": 0.0})
