"""The whole training step replayed from one CUDA graph, against the eager step: what the host's launching costs.

    python benchmarks/step_graph_bench.py [--recipe workflows/deepfashion/patn.yaml ...] [--batch-size N]
                                          [--amp bf16] [--steps 30] [--warmup 3] [--label CARD]

At a recipe's paper batch the eager step of some generators leaves the GPU idle for half its time while Python
launches kernels (``step_profile.py``: PATN DeepFashion in bf16 at batch 7, GFLA's second stage at batch 8). A CUDA
graph of ``pgpig.train.train_step`` (generator and discriminator forwards, losses, both backwards, both Adam
steps) launches the whole step at once. Per recipe, from the same weights and batch (``train_bench.py``'s smooth
images and random keypoints, random VGG):

- ``eager_ms``: the step as ``pgpig train`` runs it (the recipe's arithmetic, compile off);
- ``graph_ms``: the same step captured once (after warm-up steps on a side stream, Adam made ``capturable``,
  autocast's weight cache off, as CUDA graphs need) and replayed;
- ``loss_rel_diff_max``: with dropout off in both, the largest relative difference between the losses of the
  graph's first replays and of an eager twin stepping from the same state with the same capturable optimizers
  (the graph must compute the eager step); ``loss_rel_diff_by_loss`` per loss, beside
  ``eager_twins_rel_diff_by_loss``, the same difference between two eager twins: the GPU's own run-to-run noise
  (atomic adds in some backward kernels), large in relative terms for a loss near zero;
- peak GPU memory of each, and the capture's seconds. A step that cannot be captured (a host sync inside it,
  a CPU-side random draw) gives its error instead.

CUDA only. Not part of ``pgpig train``: a measurement of what graphing the step would give.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_bench import fixed_inputs, recipe_size, step_pose_maps, unzero  # noqa: E402

import pgpig.train as trainer  # noqa: E402
from pgpig.cli import parse_set  # noqa: E402
from pgpig.config import load_config, resolve_speed  # noqa: E402
from pgpig.models.objective import StepBatch  # noqa: E402
from pgpig.train import AMP_DTYPES, build, train_step  # noqa: E402


def capturable(opt: torch.optim.Optimizer | None) -> torch.optim.Optimizer | None:
    """The same Adam over the same parameters and settings, its step count kept on the device (``capturable``);
    fused Adam is graph-safe as it is."""
    if opt is None or any(g.get("fused") for g in opt.param_groups):
        return opt
    return type(opt)([{**g, "capturable": True} for g in opt.param_groups])


@contextlib.contextmanager
def uncached_autocast():
    """``train_step``'s autocast without its weight-cast cache, which a captured graph must not keep across
    replays."""
    plain = trainer._autocast

    def autocast(cfg, device):
        amp = trainer.resolve_amp(cfg.amp, device)
        return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp != "none",
                              cache_enabled=False)

    trainer._autocast = autocast
    try:
        yield
    finally:
        trainer._autocast = plain


def make_parts(cfg, device: torch.device, size: tuple[int, int], graph_ready: bool, dropout: bool):
    """``build``'s parts from seed 0 (the same weights every call), optimizers ``capturable`` if ``graph_ready``,
    dropout layers in eval mode unless ``dropout``."""
    torch.manual_seed(0)
    parts = build(cfg, device, size)
    unzero(parts.generator)
    if graph_ready:
        parts = dataclasses.replace(parts, opt_g=capturable(parts.opt_g), opt_d=capturable(parts.opt_d))
    if not dropout:
        for net in (parts.generator, *parts.discriminators.values()):
            for m in net.modules():
                if isinstance(m, torch.nn.modules.dropout._DropoutNd):
                    m.eval()
    return parts


def fixed_batch(cfg, device: torch.device, size: tuple[int, int]) -> StepBatch:
    """``train_bench.py``'s fixed batch (``fixed_inputs``) with its pose maps, drawn from seed 1."""
    torch.manual_seed(1)
    source, target, keypoints, memory_format = fixed_inputs(cfg, device, size)
    source_pose, target_pose = step_pose_maps(cfg, keypoints, size, device, memory_format)()
    return StepBatch(source, target, source_pose, target_pose, keypoints[0], keypoints[1])


def capture(parts, cfg, batch: StepBatch, warmup: int) -> tuple[torch.cuda.CUDAGraph, dict, float]:
    """``warmup`` eager steps on a side stream, then one step captured; returns the graph, its losses (static
    tensors, refreshed by each replay) and the seconds the capture took."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            train_step(parts, cfg, batch)
    torch.cuda.current_stream().wait_stream(side)
    for opt in (parts.opt_g, parts.opt_d):
        if opt is not None:
            opt.zero_grad(set_to_none=True)
    start = time.perf_counter()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _, losses = train_step(parts, cfg, batch)
    torch.cuda.synchronize()
    return graph, losses, time.perf_counter() - start


def timed(run, steps: int) -> float:
    """Milliseconds per call of ``run`` over ``steps`` calls (synchronised at both ends)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / steps


def values(losses: dict) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in losses.items() if k != "grad_norm"}


def bench_recipe(recipe: str, args: argparse.Namespace, device: torch.device) -> dict:
    overrides = {"vgg_weights": None, "allow_random_vgg": True, "progress": False, "compile": False,
                 **parse_set(tuple(args.set))}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.amp:
        overrides["amp"] = args.amp
    cfg = resolve_speed(load_config(Path(recipe), overrides), device)
    size = recipe_size(recipe, cfg)
    record = {"bench": "step_graph", "recipe": recipe, "batch": cfg.batch_size, "size": list(size), "amp": cfg.amp,
              "channels_last": cfg.channels_last, "gpu": torch.cuda.get_device_name(device), "label": args.label,
              "torch": torch.__version__, "python": platform.python_version()}
    batch = fixed_batch(cfg, device, size)

    # the step as pgpig train runs it
    parts = make_parts(cfg, device, size, graph_ready=False, dropout=True)
    for _ in range(args.warmup):
        train_step(parts, cfg, batch)
    torch.cuda.reset_peak_memory_stats(device)
    record["eager_ms"] = round(timed(lambda: train_step(parts, cfg, batch), args.steps), 2)
    record["eager_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del parts
    torch.cuda.empty_cache()

    with uncached_autocast():
        try:
            # the graph computes the eager step: dropout off, twins from the same state
            graphed = make_parts(cfg, device, size, graph_ready=True, dropout=False)
            graph, losses, _ = capture(graphed, cfg, batch, args.warmup)
            twins = [make_parts(cfg, device, size, graph_ready=True, dropout=False) for _ in range(2)]
            for twin in twins:
                for _ in range(args.warmup):
                    train_step(twin, cfg, batch)
            graph_diff: dict[str, float] = {}
            twin_diff: dict[str, float] = {}
            for _ in range(args.compare_steps):
                graph.replay()
                want, again = (values(train_step(twin, cfg, batch)[1]) for twin in twins)
                got = values(losses)
                for name in want:
                    scale = max(abs(want[name]), 1e-12)
                    graph_diff[name] = max(graph_diff.get(name, 0.0), abs(got[name] - want[name]) / scale)
                    twin_diff[name] = max(twin_diff.get(name, 0.0), abs(again[name] - want[name]) / scale)
            record["loss_rel_diff_max"] = float(f"{max(graph_diff.values(), default=0.0):.3g}")
            record["loss_rel_diff_by_loss"] = {k: float(f"{v:.3g}") for k, v in graph_diff.items()}
            record["eager_twins_rel_diff_by_loss"] = {k: float(f"{v:.3g}") for k, v in twin_diff.items()}
            record["compared_steps"] = args.compare_steps
            del graphed, twins, graph, losses
            torch.cuda.empty_cache()

            # the timing, dropout on as in training
            parts = make_parts(cfg, device, size, graph_ready=True, dropout=True)
            torch.cuda.reset_peak_memory_stats(device)
            graph, losses, seconds = capture(parts, cfg, batch, args.warmup)
            record["capture_seconds"] = round(seconds, 2)
            graph.replay()
            record["graph_ms"] = round(timed(graph.replay, args.steps), 2)
            record["graph_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            record["graph_losses_finite"] = all(torch.isfinite(v).all().item() for v in losses.values())
            record["speedup"] = round(record["eager_ms"] / record["graph_ms"], 3)
        except Exception as exc:  # noqa: BLE001 - a step that cannot be captured is a result too
            record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", help="repeatable [default: deepfashion/patn]")
    parser.add_argument("--batch-size", type=int, help="[default: the recipe's]")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16", "auto"], help="[default: the recipe's]")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=3, help="eager steps before timing and before the capture")
    parser.add_argument("--compare-steps", type=int, default=3, help="replays compared with the eager twin")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("step_graph_bench.py needs a CUDA device (CUDA graphs)")
    device = torch.device("cuda")
    for recipe in args.recipe or [str(ROOT / "workflows" / "deepfashion" / "patn.yaml")]:
        print(json.dumps(bench_recipe(recipe, args, device)), flush=True)


if __name__ == "__main__":
    main()
