"""Trainer speed: optimizer steps/s and peak GPU memory of generators at their recipes' batch sizes, per speed mode.

    python benchmarks/train_bench.py [--recipe workflows/market1501/patn.yaml ...] [--modes none,bf16,bf16+cl]
                                     [--steps 30] [--warmup 5] [--device auto] [--shards DIR]

A mode is an AMP setting (``none``, ``bf16``, ``fp16``) with optional ``+cl`` (channels-last models and batches),
``+compile`` (``torch.compile`` of the generator, the discriminators and the content and style loss maths;
``+compileg`` the generator alone; ``+compilel`` those and the loss networks, VGG-19: the ``compile_losses``
setting; ``+layout`` inductor's channels-last layout for every compiled graph: the ``compile_channels_last``
setting), ``+tf32`` (the ``tf32`` setting: float32 matmuls on TF32 tensor cores) and ``+fused`` (the ``fused_adam``
setting: fused Adam kernels); ``--channels-last`` and ``--compile`` add those to every mode. A mode sets these
fields whatever the recipe says (DPTN DeepFashion's recipe compiles VGG-19 in channels-last graphs: its mode is
``bf16+cl+compilel+layout+tf32``). ``none`` is PyTorch's default float32, whose cuDNN convolutions use TF32 (a 10-bit
mantissa) on a GPU that has it; ``fp32`` is float32 with TF32 off for
convolutions and matmuls, and ``fp64`` the model and batch in float64: references to judge the other modes' rounding
by (``--modes fp64,fp32,none,bf16``: ``none``'s cosine to it is the rounding the default already has). ``--recipe``
may be repeated: one process measures them all.

Each measured step is ``pgpig.train.train_step`` (generator forward, the recipe's losses, generator and
discriminator updates, the history pool), the same function ``pgpig train`` calls, on one fixed batch already on the
device, so the figure is the model's and the optimizer's alone. The batch is smooth random images in ``[-1, 1]``
(noise at 1/16 of the size, upsampled) and random keypoints rendered to pose maps each step. The VGG-19 of the
perceptual loss is randomly initialised (ImageNet weights cannot be downloaded on the benchmark machine; the cost
is the same). The baseline is the first mode of the list in the same run: every line carries its speed ratio to it.

Correctness of a mode: every mode starts from the same weights, batch and random draws, and its first step runs with
dropout off (bf16's and inductor's dropout kernels draw other masks from the same seed) and PIDM's condition dropout
off (see ``bench_steps``), so that step must compute the baseline's up to rounding: each line carries the cosine of
its generator gradient to the baseline's (``grad_cosine_vs_baseline``; ``grad_worst_tensors`` names the three
parameter tensors whose gradients differ most, to see where a low cosine comes from) and the largest relative
difference of a first-step loss term, and whether every loss stayed finite. After a recipe's modes, a ``train_pick``
line names the fastest mode that stayed finite with a cosine of at least ``--min-cosine`` (0.99). The L1 of the
generated image to the target at the first and the last measured step (``l1_first``, ``l1_last``) shows the
generator fitting the fixed batch (an adversarial recipe's L1 need not fall in so few steps). ``--steps`` is the
least number of measured steps; more run until ``--min-seconds`` have passed. ``warmup_seconds`` is the time of the
warm-up steps (a compile is paid there; with dropout in the networks twice, since switching dropout back on after
the first step makes dynamo compile again: give ``+compile`` modes of PATN and XingGAN 2-3 minutes on an H200).

``--shards DIR`` adds a line for the data loader alone (``pgpig.data.make_loader`` with the recipe's batch size
and workers over ``DIR/train``, pinned memory): pairs/s, and its ratio to the fastest training mode's pairs/s. A
ratio above 1 means the loader keeps up with training.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgpig.cli import parse_set  # noqa: E402
from pgpig.config import load_config  # noqa: E402
from pgpig.data import make_loader, start_epoch  # noqa: E402
from pgpig.models.objective import StepBatch, generated_image  # noqa: E402
from pgpig.train import AMP_DTYPES, HOST_DRAWN_ENCODINGS, build, compile_configured, pose_maps, train_step  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def smooth_images(b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """``(b, 3, h, w)`` in ``[-1, 1]``: uniform noise at 1/16 of the size, upsampled (a batch a generator can fit)."""
    coarse = torch.rand(b, 3, max(1, h // 16), max(1, w // 16), device=device) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def recipe_size(recipe: str | Path, cfg) -> tuple[int, int]:
    """The images a recipe trains on: its data set's stored size (DeepFashion 256x256, Market-1501 128x64) less the
    recipe's crop."""
    stored = (256, 256) if "deepfashion" in str(recipe) else (128, 64)
    return stored[0], stored[1] - 2 * cfg.crop_margin


def fixed_inputs(cfg, device: torch.device, size: tuple[int, int]):
    """The benches' fixed batch at ``size`` from the global RNG: source and target ``smooth_images`` in the
    recipe's memory format, random keypoints ``(2, B, 18, 2)`` inside the image, and that memory format."""
    b, (h, w) = cfg.batch_size, size
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    source = smooth_images(b, h, w, device).contiguous(memory_format=memory_format)
    target = smooth_images(b, h, w, device).contiguous(memory_format=memory_format)
    keypoints = torch.rand(2, b, 18, 2, device=device) * torch.tensor([w - 1, h - 1], device=device)
    return source, target, keypoints, memory_format


@torch.no_grad()
def unzero(generator: torch.nn.Module, seed: int = 0) -> None:
    """Small random values (std 0.02, from ``seed``) in the weight tensors initialised to all zeros (PIDM's
    zero-initialised output convolutions), so that a fresh generator's output and every layer's gradient depend on
    the arithmetic; other generators have none. A step costs the same."""
    draws = torch.Generator().manual_seed(seed)
    for p in generator.parameters():
        if p.dim() > 1 and not p.any():
            p.copy_(torch.randn(p.shape, generator=draws) * 0.02)


def bench_steps(cfg, device: torch.device, size: tuple[int, int], steps: int, warmup: int,
                min_seconds: float = 0.0, float64: bool = False) -> tuple[dict, dict]:
    """Steps/s, peak memory and the fixed batch's L1 of ``train_step`` under ``cfg``, and the first step's losses
    and generator gradient (to compare with the baseline's: same weights, same batch, same dropout draws).
    ``float64``: the same weights and batch, drawn in float32, then the networks and the batch made float64 and
    the steps run with float64 as the default dtype."""
    torch.manual_seed(0)
    parts = build(cfg, device, size)
    # A zero-initialised output layer (PIDM) makes the first step's output zero and its gradient reach that layer
    # alone, whatever the arithmetic: the comparison with the baseline would say nothing.
    unzero(parts.generator)
    if parts.ema is not None:
        parts.ema.reset(parts.generator)
    b = cfg.batch_size
    source, target, keypoints, memory_format = fixed_inputs(cfg, device, size)
    if float64:
        modules = [parts.generator, *parts.discriminators.values(),
                   *(v for v in vars(parts.objective).values() if isinstance(v, torch.nn.Module))]
        for module in modules:
            module.double()  # in place: the optimizers keep their parameters
        source, target, keypoints = source.double(), target.double(), keypoints.double()
    draw_poses = step_pose_maps(cfg, keypoints, size, device, memory_format)
    compile_configured(parts, cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    first: dict = {}
    plain = getattr(parts.generator, "_orig_mod", parts.generator)  # inside torch.compile's wrapper

    # The first step, the one compared with the baseline's, runs with dropout off: bf16's and inductor's dropout
    # kernels draw other masks from the same seed than float32's eager one, which alone moved PATN's and XingGAN's
    # first gradients to a cosine of 0.01-0.93 (their image encoders' most) while every loss agreed to 0.1%.
    dropouts = [m for net in (plain, *parts.discriminators.values()) for m in net.modules()
                if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training]
    # PIDM's condition dropout is off for that step too: a dropped source is the zero image, whose constant feature
    # maps reach group norms with zero variance, and with unzero's weights the gradient of the next norm's bias is
    # then a rounding-dependent 5 (float32) to 5e6 (float64), all of the gradient's norm (measured at ngf 32; a
    # trained network's zero-initialised layers keep that path closed: same gradient norms with and without the
    # dropout over its first 200 steps).
    conditioned = parts.objective.cfg

    def step() -> torch.Tensor:
        nonlocal finite
        for m in dropouts:
            m.train(bool(first))
        parts.objective.cfg = conditioned if first else dataclasses.replace(conditioned, source_drop=0.0,
                                                                             pose_drop=0.0)
        source_pose, target_pose = draw_poses()
        generated, losses = train_step(parts, cfg, StepBatch(source, target, source_pose, target_pose,
                                                             keypoints[0], keypoints[1]))
        losses.pop("grad_norm", None)  # not a loss (and infinite on the steps an fp16 scaler skips)
        for value in losses.values():
            finite = finite & torch.isfinite(value.detach()).all()
        if not first:
            first["losses"] = {k: float(v.detach()) for k, v in losses.items()}
            first["grads"] = {name: p.grad.detach().flatten().float() for name, p in plain.named_parameters()
                              if p.grad is not None}
        return (generated_image(generated).detach().float() - target).abs().mean()

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if float64 else default)  # tensors the losses make follow the models
    try:
        start = time.perf_counter()
        for _ in range(max(1, warmup)):
            step()
        _sync(device)
        warmup_seconds = time.perf_counter() - start
        start = time.perf_counter()
        l1 = []
        while len(l1) < steps or time.perf_counter() - start < min_seconds:
            l1.append(step())
        _sync(device)
        seconds = time.perf_counter() - start
    finally:
        torch.set_default_dtype(default)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"steps_per_s": round(len(l1) / seconds, 3), "pairs_per_s": round(len(l1) * b / seconds, 1),
            "measured_steps": len(l1), "peak_gpu_mem_gib": None if peak is None else round(peak, 2),
            "warmup_seconds": round(warmup_seconds, 2), "finite": bool(finite),
            "l1_first": round(float(l1[0]), 5), "l1_last": round(float(l1[-1]), 5)}, first


def agreement(first: dict, base: dict) -> dict:
    """How closely a mode's first step computed the baseline's: the cosine of the two generator gradients, the
    largest relative difference of a loss term, and the three parameter tensors whose gradients differ most (with
    their cosine and their share of the baseline's gradient norm), to see where a low cosine comes from."""
    names = [n for n in base["grads"] if n in first["grads"] and first["grads"][n].shape == base["grads"][n].shape]
    cosine, worst = None, []
    if names and len(names) == len(base["grads"]):
        grad = torch.cat([first["grads"][n] for n in names]).double()
        ref = torch.cat([base["grads"][n] for n in names]).double()
        cosine = round(float(torch.nn.functional.cosine_similarity(grad, ref, dim=0)), 5)
        total = float(ref.norm()) or 1.0
        diffs = sorted(((float((first["grads"][n].double() - base["grads"][n].double()).norm()), n) for n in names),
                       reverse=True)[:3]
        for diff, n in diffs:
            a, b = first["grads"][n].double(), base["grads"][n].double()
            worst.append({"tensor": n, "diff_share": round(diff / total, 4),
                          "norm_share": round(float(b.norm()) / total, 4),
                          "cosine": round(float(torch.nn.functional.cosine_similarity(a, b, dim=0)), 4)})
    rel = max((abs(v - base["losses"][k]) / max(abs(base["losses"][k]), 1e-3) for k, v in first["losses"].items()
               if k in base["losses"]), default=None)
    return {"grad_cosine_vs_baseline": cosine, "first_loss_max_rel_diff": None if rel is None else round(rel, 5),
            "grad_worst_tensors": worst}


REFERENCES = ("fp32", "fp64")
"""Float32 without TF32 and float64: the modes that only set the arithmetic (no autocast)."""


def parse_mode(mode: str, channels_last: bool, compile: bool) -> tuple[dict, str]:
    """``bf16+cl+compile`` → the config fields it sets, and the float32 arithmetic around it: ``default``
    (PyTorch's TF32 switches as they are), ``fp32`` (TF32 off) or ``fp64`` (float64 tensors). A bad mode exits
    with its name."""
    amp, *flags = mode.split("+")
    if amp not in AMP_DTYPES and amp not in ("none", *REFERENCES) or set(flags) - {"cl", "compile", "compileg", "tf32",
                                                                                   "fused", "compilel", "layout"}:
        raise SystemExit(f"mode {mode!r}: an AMP setting (fp64, fp32, none, bf16, fp16) with optional +cl, "
                         "+compile, +compileg, +compilel, +layout, +tf32 and +fused")
    fields = {"amp": "none" if amp in REFERENCES else amp, "channels_last": channels_last or "cl" in flags,
              "compile": compile or "compile" in flags or "compilel" in flags
              or ("generator" if "compileg" in flags else False),
              "compile_losses": "compilel" in flags, "compile_channels_last": "layout" in flags,
              "tf32": "tf32" in flags, "fused_adam": "fused" in flags}
    return fields, amp if amp in REFERENCES else "default"


def step_pose_maps(cfg, keypoints: torch.Tensor, size: tuple[int, int], device: torch.device,
                   memory_format: torch.memory_format):
    """A function drawing a step's (source, target) pose maps from ``keypoints`` ``(2, B, 18, 2)`` as ``pgpig
    train``'s ``prepare_batch`` does each step (host-drawn encodings from keypoints on the host, the loader's), in
    the keypoints' dtype and ``memory_format``."""
    drawn_from = keypoints.cpu() if cfg.pose_encoding in HOST_DRAWN_ENCODINGS else keypoints

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        source_pose, target_pose = (pose_maps(cfg, kp, size, device).to(keypoints.dtype)
                                    .contiguous(memory_format=memory_format) for kp in drawn_from)
        return source_pose, target_pose

    return draw


@contextlib.contextmanager
def arithmetic(kind: str):
    """``default`` leaves PyTorch's TF32 switches as they are; ``fp32`` and ``fp64`` turn TF32 off for
    convolutions and matmuls (``bench_steps`` makes the float64 itself)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if kind != "default":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def bench_loader(cfg, shards: Path, batches: int) -> dict:
    """Pairs/s of the training DataLoader over ``shards/train`` (the first epoch's batches, workers warmed up)."""
    from pgpig.data import PairDataset

    dataset = PairDataset(shards / "train", flip=cfg.flip, crop_margin=cfg.crop_margin, seed=cfg.seed)
    loader = make_loader(dataset, cfg.batch_size, shuffle=True, seed=cfg.seed, num_workers=cfg.num_workers)
    start_epoch(loader, 0)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        n += batch["source"].shape[0]
    seconds = time.perf_counter() - start
    return {"loader_pairs_per_s": round(n / seconds, 1), "loader_pairs": n, "num_workers": cfg.num_workers,
            "image_size": list(dataset.size)}


def bench_recipe(recipe: Path, args, device: torch.device) -> None:
    """Every mode of one recipe, a JSON line each, then the ``train_pick`` line (and with ``--shards`` the
    loader's)."""
    overrides = {"vgg_weights": None, "allow_random_vgg": True, "progress": False}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    overrides.update(parse_set(tuple(args.settings)))
    cfg = load_config(recipe, overrides)
    if args.size:
        size = tuple(int(v) for v in args.size.lower().split("x"))
    else:
        size = recipe_size(recipe, cfg)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    name = str(recipe.relative_to(ROOT) if recipe.is_relative_to(ROOT) else recipe)
    common = {"bench": "train", "model": cfg.model, "recipe": name, "image_size": list(size),
              "batch_size": cfg.batch_size, "settings": args.settings, "steps": args.steps, "device": machine,
              "torch": torch.__version__, "python": platform.python_version()}
    modes = args.modes.split(",")
    base, base_first = None, None
    results = {}
    for mode in modes:
        fields, kind = parse_mode(mode, args.channels_last, args.compile)
        try:
            with arithmetic(kind):
                result, first = bench_steps(dataclasses.replace(cfg, **fields), device, size, args.steps,
                                            args.warmup, args.min_seconds, float64=kind == "fp64")
        except Exception as exc:  # a mode that cannot run here (e.g. compile without a compiler) is a result too
            message = str(exc).splitlines()[0] if str(exc) else ""
            result, first = {"error": f"{type(exc).__name__}: {message}"[:300]}, None
        if base is None and first is not None:
            base, base_first = result, first
        if first is not None:
            result["speedup_vs_baseline"] = round(result["steps_per_s"] / base["steps_per_s"], 3)
            result.update(agreement(first, base_first))
        results[mode] = result
        print(json.dumps({**common, "mode": mode, **fields, "arithmetic": kind, **result,
                          "baseline_mode": modes[0]}), flush=True)
        del first  # the gradients of this mode, before the next one builds its models
        if fields["compile"]:
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    good = {m: r for m, r in results.items() if "error" not in r and r["finite"]
            and (r["grad_cosine_vs_baseline"] or 0) >= args.min_cosine}
    fastest = max(good, key=lambda m: good[m]["steps_per_s"], default=None)
    print(json.dumps({**common, "bench": "train_pick", "fastest_correct_mode": fastest,
                      "speedup_vs_baseline": good[fastest]["speedup_vs_baseline"] if fastest else None,
                      "min_grad_cosine": args.min_cosine, "rejected": sorted(set(results) - set(good)),
                      "baseline_mode": modes[0]}), flush=True)
    if args.shards is not None:
        best_pairs = max((r["pairs_per_s"] for r in good.values()), default=0.0)
        result = bench_loader(cfg, args.shards, args.loader_batches)
        print(json.dumps({**common, "bench": "train_loader", **result, "train_pairs_per_s": best_pairs,
                          "loader_vs_train": round(result["loader_pairs_per_s"] / best_pairs, 2)
                          if best_pairs else None}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, action="append", default=None,
                        help="a recipe file (repeatable) [default: workflows/market1501/patn.yaml]")
    parser.add_argument("--size", default=None, help="HxW of the training images [default: the recipe's data set's "
                        "stored size (a deepfashion/ recipe 256x256, else 128x64) less 2 x crop_margin columns]")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set use_gan=false (repeatable)")
    parser.add_argument("--batch-size", type=int, default=None, help="[default: the recipe's]")
    parser.add_argument("--modes", "--amp", dest="modes", default="none,bf16",
                        help="comma-separated modes (fp64, fp32, none, bf16 or fp16, then optional +cl and "
                             "+compile); the first is the baseline")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="measure at least this long (more steps)")
    parser.add_argument("--min-cosine", type=float, default=0.99,
                        help="train_pick: the first step's generator gradient must have at least this cosine to the "
                             "baseline's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--channels-last", action="store_true", help="add +cl to every mode")
    parser.add_argument("--compile", action="store_true", help="add +compile to every mode")
    parser.add_argument("--shards", type=Path, default=None, help="also time the data loader over DIR/train")
    parser.add_argument("--loader-batches", type=int, default=50)
    args = parser.parse_args()
    device = resolve_device(args.device)
    for recipe in args.recipe or [ROOT / "workflows" / "market1501" / "patn.yaml"]:
        bench_recipe(recipe, args, device)


if __name__ == "__main__":
    main()
