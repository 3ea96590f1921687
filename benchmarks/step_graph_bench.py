"""The whole training step replayed from one CUDA graph, against the eager step: what the host's launching costs.

    python benchmarks/step_graph_bench.py [--recipe workflows/deepfashion/patn.yaml ...] [--batch-size N]
                                          [--amp bf16] [--steps 30] [--warmup 3] [--label CARD]

At a recipe's paper batch the eager step of some generators leaves the GPU idle for half its time while Python
launches kernels (``step_profile.py``: PATN DeepFashion in bf16 at batch 7, GFLA's second stage at batch 8). A CUDA
graph of ``pgpig.train.train_step`` (generator and discriminator forwards, losses, both backwards, both Adam
steps) launches the whole step at once. Per recipe, from the same weights and batch (``train_bench.py``'s smooth
images and random keypoints, random VGG):

- ``eager_ms``: the step as ``pgpig train`` runs it (the recipe's arithmetic; compile off unless ``--set
  compile=true``, which compiles every side's parts as ``pgpig train`` does);
- ``graph_ms``: the step as ``pgpig train`` runs it with ``cuda_graph: true`` (``pgpig.step_graph.GraphedStep``:
  captured once after warm-up steps, then each call copies the batch into the capture's inputs and replays it);
- ``loss_rel_diff_max``: with dropout off in both, the largest relative difference between the losses of the
  graph's first replays and of an eager twin stepping from the same state with the same capturable optimizers
  (the graph must compute the eager step); ``loss_rel_diff_by_loss`` per loss, beside
  ``eager_twins_rel_diff_by_loss``, the same difference between two eager twins: the GPU's own run-to-run noise
  (atomic adds in some backward kernels), large in relative terms for a loss near zero;
- peak GPU memory of each, and the capture's seconds. A step that cannot be captured (a host sync inside it,
  a CPU-side random draw) gives its error instead.

CUDA only.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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

from pgpig.cli import parse_set  # noqa: E402
from pgpig.config import load_config, resolve_speed, speed_settings  # noqa: E402
from pgpig.models.objective import StepBatch  # noqa: E402
from pgpig.step_graph import GraphedStep  # noqa: E402
from pgpig.train import build, compile_configured, train_step  # noqa: E402


def make_parts(cfg, device: torch.device, size: tuple[int, int], dropout: bool):
    """``build``'s parts from seed 0 (the same weights every call), dropout layers in eval mode unless ``dropout``;
    with ``cfg.cuda_graph`` on, its optimizers are ``capturable``, as ``pgpig train`` builds them."""
    torch.manual_seed(0)
    parts = build(cfg, device, size)
    unzero(parts.generator)
    if not dropout:
        for net in (parts.generator, *parts.discriminators.values()):
            for m in net.modules():
                if isinstance(m, torch.nn.modules.dropout._DropoutNd):
                    m.eval()
    compile_configured(parts, cfg)  # after the dropout switch: the compiled graphs trace the modules as they are then
    return parts


def fixed_batch(cfg, device: torch.device, size: tuple[int, int]) -> StepBatch:
    """``train_bench.py``'s fixed batch (``fixed_inputs``) with its pose maps, drawn from seed 1."""
    torch.manual_seed(1)
    source, target, keypoints, memory_format = fixed_inputs(cfg, device, size)
    source_pose, target_pose = step_pose_maps(cfg, keypoints, size, device, memory_format)()
    return StepBatch(source, target, source_pose, target_pose, keypoints[0], keypoints[1])


def graphed_step(cfg, device: torch.device, size: tuple[int, int], batch: StepBatch, warmup: int,
                 dropout: bool) -> GraphedStep:
    """``pgpig train``'s graphed step on fresh parts, run until it has captured (``warmup`` eager steps, then the
    capture and its first replay)."""
    step = GraphedStep(make_parts(cfg, device, size, dropout), cfg, warmup=warmup)
    for _ in range(warmup + 1):
        step(batch)
    if step.graph is None:  # a failed capture, or batches the graph does not take: no graph to time
        raise RuntimeError(step.failure or f"no capture after {warmup + 1} steps")
    return step


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
                 "cuda_graph": False, **parse_set(tuple(args.set))}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.amp:
        overrides["amp"] = args.amp
    cfg = resolve_speed(load_config(Path(recipe), overrides), device)
    size = recipe_size(recipe, cfg)
    record = {"bench": "step_graph", "recipe": recipe, "batch": cfg.batch_size, "size": list(size),
              **speed_settings(cfg), "gpu": torch.cuda.get_device_name(device),
              "label": args.label, "torch": torch.__version__, "python": platform.python_version()}
    batch = fixed_batch(cfg, device, size)

    # the step as pgpig train runs it without the graph
    eager = functools.partial(train_step, make_parts(cfg, device, size, dropout=True), cfg, batch)
    for _ in range(args.warmup):
        eager()
    torch.cuda.reset_peak_memory_stats(device)
    record["eager_ms"] = round(timed(eager, args.steps), 2)
    record["eager_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del eager
    torch.cuda.empty_cache()

    graph_cfg = dataclasses.replace(cfg, cuda_graph=True)
    try:
        # the graph computes the eager step: dropout off, twins from the same state
        graphed = graphed_step(graph_cfg, device, size, batch, args.warmup, dropout=False)
        twins = [make_parts(graph_cfg, device, size, dropout=False) for _ in range(2)]
        for twin in twins:
            for _ in range(args.warmup + 1):
                train_step(twin, graph_cfg, batch, autocast_cache=False)
        graph_diff: dict[str, float] = {}
        twin_diff: dict[str, float] = {}
        for _ in range(args.compare_steps):
            got = values(graphed(batch)[1])
            want, again = (values(train_step(twin, graph_cfg, batch, autocast_cache=False)[1]) for twin in twins)
            for name in want:
                scale = max(abs(want[name]), 1e-12)
                graph_diff[name] = max(graph_diff.get(name, 0.0), abs(got[name] - want[name]) / scale)
                twin_diff[name] = max(twin_diff.get(name, 0.0), abs(again[name] - want[name]) / scale)
        record["loss_rel_diff_max"] = float(f"{max(graph_diff.values(), default=0.0):.3g}")
        record["loss_rel_diff_by_loss"] = {k: float(f"{v:.3g}") for k, v in graph_diff.items()}
        record["eager_twins_rel_diff_by_loss"] = {k: float(f"{v:.3g}") for k, v in twin_diff.items()}
        record["compared_steps"] = args.compare_steps
        del graphed, twins
        torch.cuda.empty_cache()

        # the timing, dropout on as in training; each call copies the batch in, as in pgpig train
        torch.cuda.reset_peak_memory_stats(device)
        graphed = graphed_step(graph_cfg, device, size, batch, args.warmup, dropout=True)
        record["capture_seconds"] = graphed.capture_seconds
        record["graph_ms"] = round(timed(lambda: graphed(batch), args.steps), 2)
        record["graph_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        record["graph_losses_finite"] = all(torch.isfinite(v).all().item() for v in graphed.outputs[1].values())
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
