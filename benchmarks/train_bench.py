"""Trainer speed: optimizer steps/s and peak GPU memory of a generator at a recipe's batch size, per AMP mode.

    python benchmarks/train_bench.py [--recipe workflows/market1501/patn.yaml] [--amp none,bf16,fp16]
                                     [--steps 30] [--warmup 5] [--device auto] [--channels-last] [--compile]
                                     [--shards DIR]

Each measured step is ``pgpig.train.train_step`` (generator forward, L1 + perceptual + adversarial losses,
generator and discriminator updates, the history pool), the same function ``pgpig train`` calls, on one fixed
batch already on the device (random images in ``[-1, 1]``, random keypoints rendered to pose maps each step), so the
figure is the model's and the optimizer's alone. The VGG-19 of the perceptual loss is randomly initialised
(ImageNet weights cannot be downloaded on the benchmark machine; the cost is the same). The baseline is the first
AMP mode of the list (``none``: float32) in the same run: every line carries its speed ratio to it.

``--shards DIR`` adds a line for the data loader alone (``pgpig.data.make_loader`` with the recipe's batch size
and workers over ``DIR/train``, pinned memory): pairs/s, and its ratio to the fastest training mode's pairs/s. A
ratio above 1 means the loader keeps up with training.
"""

from __future__ import annotations

import argparse
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
from pgpig.data import make_loader, start_epoch  # noqa: E402
from pgpig.train import StepBatch, build, compile_parts, load_config, pose_maps, resolve_device, train_step  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_steps(cfg, device: torch.device, size: tuple[int, int], steps: int, warmup: int) -> dict:
    """Steps/s and peak memory of ``train_step`` under ``cfg`` on a fixed random batch."""
    torch.manual_seed(0)
    parts = build(cfg, device, size)
    if cfg.compile:
        compile_parts(parts)
    b, (h, w) = cfg.batch_size, size
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    source = (torch.rand(b, 3, h, w, device=device) * 2 - 1).contiguous(memory_format=memory_format)
    target = (torch.rand(b, 3, h, w, device=device) * 2 - 1).contiguous(memory_format=memory_format)
    keypoints = torch.rand(2, b, 18, 2, device=device) * torch.tensor([w - 1, h - 1], device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        source_pose = pose_maps(cfg, keypoints[0], size).contiguous(memory_format=memory_format)
        target_pose = pose_maps(cfg, keypoints[1], size).contiguous(memory_format=memory_format)
        train_step(parts, cfg, StepBatch(source, target, source_pose, target_pose, keypoints[0], keypoints[1]))

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"steps_per_s": round(steps / seconds, 3), "pairs_per_s": round(steps * b / seconds, 1),
            "peak_gpu_mem_gib": None if peak is None else round(peak, 2)}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "workflows" / "market1501" / "patn.yaml")
    parser.add_argument("--size", default=None, help="HxW of the training images [default: the recipe's data set's "
                        "stored size (a deepfashion/ recipe 256x256, else 128x64) less 2 x crop_margin columns]")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set use_gan=false (repeatable)")
    parser.add_argument("--batch-size", type=int, default=None, help="[default: the recipe's]")
    parser.add_argument("--amp", default="none,bf16", help="comma-separated AMP modes; the first is the baseline")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--shards", type=Path, default=None, help="also time the data loader over DIR/train")
    parser.add_argument("--loader-batches", type=int, default=50)
    args = parser.parse_args()

    overrides = {"vgg_weights": None, "allow_random_vgg": True, "channels_last": args.channels_last,
                 "compile": args.compile, "progress": False}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    overrides.update(parse_set(tuple(args.settings)))
    cfg = load_config(args.recipe, overrides)
    device = resolve_device(args.device)
    if args.size:
        size = tuple(int(v) for v in args.size.lower().split("x"))
    else:
        # the stored size of the recipe's data set (DeepFashion 256x256, Market-1501 128x64), less the crop
        stored = (256, 256) if "deepfashion" in str(args.recipe) else (128, 64)
        size = (stored[0], stored[1] - 2 * cfg.crop_margin)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    common = {"bench": "train", "model": cfg.model, "recipe": str(args.recipe.relative_to(ROOT)
                                                                   if args.recipe.is_relative_to(ROOT)
                                                                   else args.recipe),
              "image_size": list(size), "batch_size": cfg.batch_size, "channels_last": cfg.channels_last,
              "compile": cfg.compile, "settings": args.settings, "device": machine, "torch": torch.__version__,
              "python": platform.python_version()}
    base = None
    best_pairs = 0.0
    for amp in args.amp.split(","):
        result = bench_steps(dataclasses.replace(cfg, amp=amp), device, size, args.steps, args.warmup)
        base = base or result["steps_per_s"]
        best_pairs = max(best_pairs, result["pairs_per_s"])
        print(json.dumps({**common, "amp": amp, **result, "baseline_amp": args.amp.split(",")[0],
                          "speedup_vs_baseline": round(result["steps_per_s"] / base, 3)}), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.shards is not None:
        result = bench_loader(cfg, args.shards, args.loader_batches)
        print(json.dumps({**common, "bench": "train_loader", **result, "train_pairs_per_s": best_pairs,
                          "loader_vs_train": round(result["loader_pairs_per_s"] / best_pairs, 2)}), flush=True)


if __name__ == "__main__":
    main()
