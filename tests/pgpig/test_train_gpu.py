"""The trainer's GPU paths on a real CUDA device: bf16 autocast with channels-last and ``torch.compile``, fp16 with
gradient scaling, resume, and ``pgpig generate`` on the GPU. Run on the GPU machine: ``pytest -m gpu``.

CUDA convolutions are not bit-deterministic, so these check that each path runs, stays finite, checkpoints and
resumes to the right step; exact resume is the CPU tests' job (``test_train.py``, ``test_train_kill.py``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from generators import GFLA_STAGE_WEIGHTS
from safetensors.torch import load_file

from pgpig.checkpoint import step_folders
from pgpig.config import load_config
from pgpig.train import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SMALL = {"ngf": 16, "n_blocks": 2, "d_blocks": 1, "vgg_weights": None, "allow_random_vgg": True, "num_workers": 2,
         "progress": False, "device": "cuda", "batch_size": 4, "sample_every": 2, "checkpoint_every": 2,
         "pool_size": 4}


def _finite(path: Path) -> bool:
    return all(torch.isfinite(v).all() for v in load_file(str(path)).values() if v.is_floating_point())


@pytest.mark.parametrize("options", [{"amp": "bf16", "channels_last": True, "compile": True, "compile_losses": True,
                                      "compile_channels_last": True},
                                     {"amp": "fp16", "fused_adam": True}, {"amp": "none"}],
                         ids=["bf16-cl-compile-vgg", "fp16-fused-adam", "fp32"])
def test_gpu_paths_train_checkpoint_and_resume(market_shards, tmp_path, options):
    run = tmp_path / "run"
    result = train(load_config(None, {**SMALL, **options, "shards": market_shards, "run_dir": run, "steps": 4}))
    assert result["step"] == 4 and all(torch.isfinite(torch.tensor(v)) for v in result["losses"].values())
    assert result["speed"]["compile_losses"] == options.get("compile_losses", False)
    assert result["speed"]["compile_channels_last"] == options.get("compile_channels_last", False)
    assert _finite(run / "generator.safetensors") and (run / "samples" / "step-000004.png").is_file()
    state = torch.load(step_folders(run)[-1] / "train_state.pt", weights_only=True)
    if options["amp"] == "fp16":
        assert state["scaler"]["scale"] > 0  # the scaler is live and saved
    resumed = train(load_config(run / "config.yaml", {"run_dir": run, "resume": True, "steps": 6}))
    assert resumed["step"] == 6 and _finite(run / "generator.safetensors")


def test_generate_on_the_gpu(market_shards, tmp_path):
    from pgpig.generate import generate

    run = tmp_path / "run"
    train(load_config(None, {**SMALL, "shards": market_shards, "run_dir": run, "steps": 2, "amp": "bf16"}))
    from conftest import ultralytics_assets

    assets = ultralytics_assets()
    result = generate(run, assets / "bus.jpg", assets / "zidane.jpg", out=tmp_path / "g.png", device="cuda")
    assert result["out"].is_file() and result["size"] == (128, 64)


def test_the_step_helpers_that_used_to_wait_for_the_gpu_no_longer_do():
    """PG2's pose mask and GFLA's warp and affine regulariser made the host wait for the GPU at every step
    (``benchmarks/sync_points.py`` found them: a boolean-mask index, small tensors copied from Python lists, the
    longest limb read back). After a first call, which copies their constant tensors to the device once, CUDA's
    sync debug mode set to "error" raises at any synchronising call; the results are those of the first call."""
    from pgpig.data import render_pg2_masks
    from pgpig.models.gfla import affine_regularization, warp_image

    generator = torch.Generator(device="cuda").manual_seed(0)
    keypoints = torch.rand(4, 18, 2, device="cuda", generator=generator) * 200 - 50  # some joints outside the image
    keypoints[0, 3] = -1  # an invisible joint
    image = torch.rand(4, 3, 128, 64, device="cuda", generator=generator)
    flow = torch.randn(4, 2, 32, 16, device="cuda", generator=generator) * 3

    def helpers() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return render_pg2_masks(keypoints, (128, 64), 4), warp_image(image, flow), affine_regularization(flow, 3)

    first = helpers()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        again = helpers()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(again[0], first[0]) and first[0].sum() > 0
    torch.testing.assert_close(again[1], first[1], rtol=0, atol=0)
    torch.testing.assert_close(again[2], first[2], rtol=1e-6, atol=0)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("sync", [True, False])
def test_gpus_2_with_batch_norm_and_the_gan(market_shards, tmp_path, sync):
    # batch norm in G and both Ds, each D called twice before its backward: the case where DDP's buffer broadcast
    # broke cuDNN's saved statistics (it does not show on the CPU)
    import subprocess
    import sys

    run = tmp_path / "run"
    settings = [f"{k}={v}" for k, v in {**SMALL, "norm": "batch", "sync_batchnorm": sync, "amp": "bf16",
                                         "run_dir": run, "device": "auto"}.items() if k != "vgg_weights"]
    command = [sys.executable, "-m", "pgpig.cli", "train", "--gpus", "2", "--shards", str(market_shards),
               "--steps", "4", "--set", "vgg_weights=null"]
    for item in settings:
        command += ["--set", item.replace("True", "true").replace("False", "false")]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _finite(run / "generator.safetensors")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert not list(tmp.glob("torchelastic_*")) and not list(tmp.glob("pgpig-torchrun-*"))  # torchrun's folder


def test_auto_speed_settings_on_the_gpu(market_shards, tmp_path):
    """The recipes' ``auto`` settings decide for CUDA: bf16 autocast (where the GPU has it), channels-last."""
    cfg = load_config(None, {**SMALL, "amp": "auto", "channels_last": "auto", "shards": market_shards,
                             "run_dir": tmp_path / "run", "steps": 2})
    speed = train(cfg)["speed"]
    assert speed["amp"] == ("bf16" if torch.cuda.is_bf16_supported() else "none")
    assert speed["channels_last"] is True and speed["compile"] is False
    assert _finite(tmp_path / "run" / "generator.safetensors")


def _graph_parts(market_shards, tmp_path, **options):
    """PATN parts of ``SMALL`` (no dropout, no pool) from seed 0 with capturable optimizers, and their config."""
    from pgpig.config import resolve_speed
    from pgpig.train import build

    cfg = resolve_speed(load_config(None, {**SMALL, "pool_size": 0, "dropout": 0.0, "cuda_graph": True,
                                           "shards": market_shards, "run_dir": tmp_path / "run", **options}),
                        torch.device("cuda"))
    torch.manual_seed(0)
    return build(cfg, torch.device("cuda"), (128, 64)), cfg


def _step_batches(count: int, batch: int):
    from pgpig.models.objective import StepBatch
    from pgpig.train import pose_maps

    draws = torch.Generator(device="cuda").manual_seed(1)
    cfg = load_config(None, {"vgg_weights": None, "allow_random_vgg": True})
    batches = []
    for _ in range(count):
        images = torch.rand(2, batch, 3, 128, 64, device="cuda", generator=draws) * 2 - 1
        keypoints = torch.rand(2, batch, 18, 2, device="cuda", generator=draws) * torch.tensor([63.0, 127.0],
                                                                                                device="cuda")
        source_pose, target_pose = (pose_maps(cfg, kp, (128, 64)) for kp in keypoints)
        batches.append(StepBatch(images[0], images[1], source_pose, target_pose, keypoints[0], keypoints[1]))
    return batches


def test_cuda_graph_replays_the_eager_step(market_shards, tmp_path, monkeypatch):
    """``GraphedStep`` against ``train_step`` from the same weights on the same batches: three eager warm-up steps,
    the capture, replays on new batches, a short batch in between (trained eagerly), and learning rates changed
    between replays (the captured Adam reads them from device scalars: at learning rate 0 a replay leaves the
    weights as they are). Float32 with cuDNN's deterministic kernels. The captured step's kernels round unlike the
    eager ones, and training carries any such difference on, so a second eager twin starts from weights one rounding
    away (relative 2**-23) to measure how far a difference of that size carries: at each step the graph's largest
    relative loss difference from the first twin may be ten times the perturbed twin's plus 1e-5. On an H100, in
    four runs, the graph's came to at most 1.9 times the perturbed twin's (both up to 2e-4 by step 7)."""
    from pgpig.step_graph import GraphedStep
    from pgpig.train import _set_lr, train_step

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    (graphed_parts, cfg), (eager_parts, _), (twin_parts, _) = (_graph_parts(market_shards, tmp_path, amp="none")
                                                               for _ in range(3))
    start = [p.detach().clone() for p in eager_parts.generator.parameters()]
    with torch.no_grad():
        draws = torch.Generator(device="cuda").manual_seed(2)
        for p in [*twin_parts.generator.parameters(),
                  *(q for d in twin_parts.discriminators.values() for q in d.parameters())]:
            p.mul_(1 + torch.randint(-1, 2, p.shape, device="cuda", generator=draws) * 2.0 ** -23)
    graphed = GraphedStep(graphed_parts, cfg)
    full, short = _step_batches(7, 4), _step_batches(1, 2)[0]
    steps = [graphed, *(functools.partial(train_step, parts, cfg, autocast_cache=False)
                        for parts in (eager_parts, twin_parts))]
    table, over = [], []  # per step: the largest relative loss difference of the graph and of the twin
    for i, batch in enumerate([*full[:5], short, *full[5:]]):
        results = []
        for step in steps:
            torch.manual_seed(100 + i)
            results.append({k: float(v) for k, v in step(batch=batch)[1].items()})
        got, want, again = results
        rel = {name: (abs(got[name] - want[name]) / (abs(want[name]) + 1e-6),
                      abs(again[name] - want[name]) / (abs(want[name]) + 1e-6)) for name in want}
        table.append((i, graph := max(r[0] for r in rel.values()), noise := max(r[1] for r in rel.values())))
        over += [i] if graph > 10 * noise + 1e-5 else []
    print("step, graph-eager, eager-perturbed-eager:", table)  # shown by pytest -rP
    assert not over, (over, table)
    assert graphed.state() == {"captured": True, "eager_steps": 4, "replays": 4,
                               "capture_seconds": graphed.capture_seconds, "pool_gib": graphed.state()["pool_gib"],
                               "failure": None}
    assert graphed.pool_bytes > 0  # the step's activations live in the capture's own pool

    def change(parts) -> torch.Tensor:
        return torch.cat([(p.detach() - s).flatten() for p, s in zip(parts.generator.parameters(), start, strict=True)])

    # Adam gives a parameter with a near-zero gradient a full-size step whose sign follows the rounding, so two
    # eager twins' weight changes already point slightly apart: the graph's may point as far apart, not farther
    moved, wanted, twin = change(graphed_parts), change(eager_parts), change(twin_parts)
    cosine = torch.nn.functional.cosine_similarity(moved, wanted, dim=0).item()
    assert cosine > 0.95 and cosine >= torch.nn.functional.cosine_similarity(twin, wanted, dim=0).item() - 0.02
    assert moved.abs().max() > 0

    before = [p.detach().clone() for p in graphed_parts.generator.parameters()]
    _set_lr(graphed_parts, cfg, 0.0)
    graphed(full[0])
    assert all(torch.equal(p, b) for p, b in zip(graphed_parts.generator.parameters(), before, strict=True))
    assert graphed_parts.opt_g.param_groups[0]["lr"] == 0.0  # the groups keep Python floats
    _set_lr(graphed_parts, cfg, cfg.lr)
    graphed(full[1])
    assert not all(torch.equal(p, b) for p, b in zip(graphed_parts.generator.parameters(), before, strict=True))


@pytest.mark.parametrize("options", [{"amp": "bf16", "channels_last": True}, {"amp": "none", "ema_decay": 0.5}],
                         ids=["bf16-cl", "fp32-ema"])
def test_pgpig_train_with_cuda_graph_checkpoints_and_resumes(market_shards, tmp_path, options):
    run = tmp_path / "run"
    cfg = load_config(None, {**SMALL, "pool_size": 0, "cuda_graph": True, **options, "shards": market_shards,
                             "run_dir": run, "steps": 6})
    result = train(cfg)
    graph = result["speed"]["cuda_graph"]
    assert graph["captured"] and graph["failure"] is None and (graph["eager_steps"], graph["replays"]) == (3, 3)
    assert result["step"] == 6 and all(torch.isfinite(torch.tensor(v)) for v in result["losses"].values())
    assert _finite(run / "generator.safetensors") and (run / "samples" / "step-000006.png").is_file()
    if options.get("ema_decay"):  # the average follows the generator after every step, outside the graph
        folder = step_folders(run)[-1]
        assert torch.load(folder / "train_state.pt", weights_only=True)["ema_updates"] == 6
        average, weights = (load_file(str(folder / f"{name}.safetensors")) for name in ("generator-ema", "generator"))
        assert any(not torch.equal(average[k], weights[k]) for k in weights if weights[k].is_floating_point())
    resumed = train(load_config(run / "config.yaml", {"run_dir": run, "resume": True, "steps": 8}))
    assert resumed["step"] == 8 and resumed["speed"]["cuda_graph"]["eager_steps"] == 2
    assert _finite(run / "generator.safetensors")


def test_gfla_stage_two_trains_compiled_from_a_cuda_graph_and_resumes(market_shards, tmp_path):
    """GFLA stage 2 in the setting measured fastest against the official step (bf16, compile, TF32, channels-last,
    CUDA graph: 2.37x at batch 8 on an H100): the compiled modules and loss maths are captured with the rest of the
    step, the run checkpoints and samples, and resumes."""
    gfla = {**SMALL, "model": "gfla", "ngf": 8, "n_blocks": 1, "pool_size": 0, "shards": market_shards}
    stage1 = tmp_path / "stage1"
    train(load_config(None, {**gfla, **GFLA_STAGE_WEIGHTS[1], "stage": 1, "run_dir": stage1, "steps": 2}))
    run = tmp_path / "run"
    result = train(load_config(None, {**gfla, **GFLA_STAGE_WEIGHTS[2], "stage": 2, "run_dir": run, "steps": 6,
                                      "init_weights": stage1 / "generator.safetensors", "amp": "bf16",
                                      "compile": True, "tf32": True, "channels_last": True, "cuda_graph": True}))
    graph = result["speed"]["cuda_graph"]
    assert graph["captured"] and graph["failure"] is None and (graph["eager_steps"], graph["replays"]) == (3, 3)
    assert result["step"] == 6 and all(torch.isfinite(torch.tensor(v)) for v in result["losses"].values())
    assert _finite(run / "generator.safetensors") and (run / "samples" / "step-000006.png").is_file()
    resumed = train(load_config(run / "config.yaml", {"run_dir": run, "resume": True, "steps": 8}))
    assert resumed["step"] == 8 and resumed["speed"]["cuda_graph"]["eager_steps"] == 2
    assert _finite(run / "generator.safetensors")


def test_dptn_trains_compiled_channels_last_from_a_cuda_graph_and_resumes(market_shards, tmp_path):
    """DPTN in its DeepFashion recipe's GPU setting (bf16, channels-last, compiled with its loss maths and VGG-19 in
    channels-last graphs, TF32) replayed from a CUDA graph: the discriminator's spectral-norm power iterations run
    inside the captured step and go on updating their vectors at every replay; the run checkpoints, samples and
    resumes."""
    run = tmp_path / "run"
    result = train(load_config(None, {
        **SMALL, "model": "dptn", "pool_size": 0, "shards": market_shards, "run_dir": run, "steps": 6,
        "amp": "bf16", "channels_last": True, "compile": True, "compile_losses": True, "compile_channels_last": True,
        "tf32": True, "cuda_graph": True}))
    graph = result["speed"]["cuda_graph"]
    assert graph["captured"] and graph["failure"] is None and (graph["eager_steps"], graph["replays"]) == (3, 3)
    assert result["step"] == 6 and all(torch.isfinite(torch.tensor(v)) for v in result["losses"].values())
    assert result["speed"]["compile_channels_last"] and _finite(run / "generator.safetensors")
    four, six = (load_file(str(folder / "discriminators.safetensors")) for folder in step_folders(run))
    # steps 5 and 6 were replays; a one-element vector (the last convolution's, one output channel) is always 1
    vectors = [k for k in six if k.endswith("weight_u") and six[k].numel() > 1]
    assert vectors and all(not torch.equal(four[k], six[k]) for k in vectors)
    resumed = train(load_config(run / "config.yaml", {"run_dir": run, "resume": True, "steps": 8}))
    assert resumed["step"] == 8 and resumed["speed"]["cuda_graph"]["eager_steps"] == 2
    assert _finite(run / "generator.safetensors")
