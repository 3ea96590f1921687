"""Where one training step's time goes: ``torch.profiler`` over ``pgpig.train.train_step`` at a recipe's setting.

    python benchmarks/step_profile.py --recipe deepfashion/patn [--recipe deepfashion/dptn ...] [--set amp=bf16]
        [--steps 5] [--warmup 3] [--device auto] [--batch 32] [--trace DIR] [--label TEXT]

The step is the one ``benchmarks/train_bench.py`` times (``bench_steps``' batch: smooth random images, random
keypoints rendered to pose maps each step; random VGG-19), here under the profiler after ``--warmup`` untimed steps.
Prints one JSON line per recipe: wall milliseconds per step, the device's busy milliseconds per step (the sum of
the CUDA kernels' time on a GPU, of the operators' own time on a CPU), the part of the wall the device is idle
(``idle_fraction``: host overhead, launches, syncs), the busy time by category of kernel or operator name
(optimizer, convolution, normalisation, matmul and attention, copies, inductor's fused kernels, the rest
elementwise and reductions), the 15 kernels (``top_work_ms``) and ``aten`` operators (``top_aten_ms``) with the
most time, and how many ``aten`` calls (nested ones included) and CUDA kernels a step makes (``aten_calls_per_step``,
``top_aten_calls``, ``kernels_per_step``: the host's work per step). ``--trace DIR`` also writes a Chrome trace per
recipe; ``--detail`` records input shapes and Python stacks and adds the operators with the most time by shape, by
calling line of this repository, and by the operators and ranges they run inside (``top_aten_by_parents``: a
backward's ``convolution_backward`` or a compiled graph's call, where no line of ours is on the stack).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_bench import fixed_inputs, recipe_size, step_pose_maps  # noqa: E402

from pgpig.cli import parse_set  # noqa: E402
from pgpig.config import load_config, recipe_path, resolve_speed, speed_settings  # noqa: E402
from pgpig.models.objective import StepBatch  # noqa: E402
from pgpig.train import build, compile_configured, train_step  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402

# (category, substrings of an aten operator's name), first match wins
# (category, substrings of an operator's or a kernel's name), first match wins; triton kernels are inductor's fusions
CATEGORIES = (
    ("optimizer", ("foreach", "adam", "multi_tensor")),
    ("convolution", ("conv", "cudnn", "implicit", "fprop", "dgrad", "wgrad", "winograd")),
    ("normalisation", ("norm", "welford")),
    ("matmul_attention", ("gemm", "mm", "matmul", "linear", "attention", "flash", "fmha", "cutlass")),
    ("copy_cast", ("copy", "clone", "contiguous", "cat", "stack", "transpose", "permute")),
    ("triton_fused", ("triton",)),
)


def category(name: str) -> str:
    lowered = name.lower()
    return next((label for label, keys in CATEGORIES if any(k in lowered for k in keys)), "elementwise_reduction")


def profile_recipe(name: str, overrides: dict, args, device: torch.device) -> dict:
    cfg = load_config(recipe_path(name), {**overrides, "device": str(device)})
    if args.batch:
        cfg.batch_size = args.batch
    cfg = resolve_speed(cfg, device)
    h, w = recipe_size(name, cfg)
    torch.manual_seed(0)
    parts = build(cfg, device, (h, w))
    source, target, keypoints, memory_format = fixed_inputs(cfg, device, (h, w))
    draw_poses = step_pose_maps(cfg, keypoints, (h, w), device, memory_format)
    compile_configured(parts, cfg)

    def step() -> None:
        source_pose, target_pose = draw_poses()
        train_step(parts, cfg, StepBatch(source, target, source_pose, target_pose, keypoints[0], keypoints[1]))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=args.detail, with_stack=args.detail) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        wall = (time.perf_counter() - start) / args.steps * 1e3
    on_device = device.type == "cuda"
    events = prof.key_averages()
    # the busy time: the kernels on a GPU (each counted once, whichever operator launched it; compiled graphs'
    # fused kernels included), the operators' own time on a CPU
    if on_device:
        # ("## ... ##" rows are ranges, such as inductor's graph calls under --detail, not kernels)
        work = [(e.key, e.self_device_time_total) for e in events
                if e.device_type == torch.autograd.DeviceType.CUDA and not e.key.startswith("## ")]
    else:
        work = [(e.key, e.self_cpu_time_total) for e in events if e.key.startswith("aten::")]
    work = [(k, us / 1e3 / args.steps) for k, us in work if us > 0]
    busy = sum(ms for _, ms in work)
    by_category: dict[str, float] = defaultdict(float)
    for key, ms in work:
        by_category[category(key)] += ms
    aten = [(e.key, (e.self_device_time_total if on_device else e.self_cpu_time_total) / 1e3 / args.steps)
            for e in events if e.key.startswith("aten::")]

    def top(pairs: list[tuple[str, float]]) -> list[list]:
        return [[k[:100], round(ms, 2)] for k, ms in sorted(pairs, key=lambda kv: -kv[1])[:15] if ms > 0]

    # how many operators and kernels a step launches: the host's share of a step grows with them
    calls = [(e.key, e.count / args.steps) for e in events if e.key.startswith("aten::")]
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / args.steps

    detail = where_time_goes(prof, args.steps, on_device) if args.detail else {}
    if args.trace:
        Path(args.trace).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(args.trace) / f"{name.replace('/', '-')}.json"))
    return {"bench": "step_profile", "recipe": name, "settings": overrides, "batch": cfg.batch_size, "size": [h, w],
            **speed_settings(cfg),
            "wall_ms_per_step": round(wall, 2), "busy_ms_per_step": round(busy, 2),
            "idle_fraction": round(max(0.0, 1 - busy / wall), 3),
            "busy_ms_by_category": {k: round(v, 2) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
            "top_work_ms": top(work), "top_aten_ms": top(aten),
            "aten_calls_per_step": round(sum(n for _, n in calls)), "top_aten_calls": top(calls),
            "kernels_per_step": round(kernels) if on_device else None, **detail,
            "device": torch.cuda.get_device_name(device) if on_device else f"{platform.machine()} cpu",
            "torch": torch.__version__, "label": args.label}


def where_time_goes(prof, steps: int, on_device: bool) -> dict:
    """The ``aten`` operators with the most device time (CPU time off a GPU) per input shapes
    (``top_aten_by_shape``), per calling lines of this repository (``top_aten_by_caller``: the three innermost
    frames under ``pgpig/``, ``benchmarks/`` or ``pipeline/``; none for backward operators, which the autograd engine
    runs, nor for those inside compiled graphs, whose frames are inductor's), and per input shapes and enclosing
    operators and ranges (``top_aten_by_parents``: the four innermost, such as ``aten::contiguous <
    aten::convolution_backward < ## Call CompiledFxGraph ... ##``)."""
    def own(e) -> float:
        return (e.self_device_time_total if on_device else e.self_cpu_time_total) / 1e3 / steps

    def ranked(events, describe) -> list[list]:
        rows = sorted(((own(e), e) for e in events if e.key.startswith("aten::") and own(e) > 0), key=lambda r: -r[0])
        return [[e.key, describe(e), round(ms, 2)] for ms, e in rows[:20]]

    def callers(e) -> tuple[str, ...]:
        # the Python frames (profiler events named "path(line): function") above the operator; a backward
        # operator, run by the autograd engine, has none
        ours, parent = [], e.cpu_parent
        while parent is not None and len(ours) < 3:
            if any(part in parent.name for part in ("pgpig/", "benchmarks/", "pipeline/")):
                ours.append(parent.name.rsplit("/", 1)[-1][:90])
            parent = parent.cpu_parent
        return tuple(ours)

    by_caller: dict[tuple, float] = defaultdict(float)
    by_parents: dict[tuple, float] = defaultdict(float)
    for e in prof.events():
        if e.name.startswith("aten::") and own(e) > 0:
            by_parents[(e.name, str(e.input_shapes)[:100], parent_names(e))] += own(e)
        if e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::")):
            by_caller[(e.name, callers(e))] += sum(own(k) for k in _with_children(e))
    top_callers = sorted(by_caller.items(), key=lambda kv: -kv[1])[:20]
    return {"top_aten_by_shape": ranked(prof.key_averages(group_by_input_shape=True),
                                        lambda e: str(e.input_shapes)[:160]),
            "top_aten_by_caller": [[name, list(frames), round(ms, 2)] for (name, frames), ms in top_callers],
            "top_aten_by_parents": [[name, shapes, list(parents), round(ms, 2)] for (name, shapes, parents), ms
                                    in sorted(by_parents.items(), key=lambda kv: -kv[1])[:20]]}


def parent_names(event, depth: int = 4) -> tuple[str, ...]:
    """The names of the ``depth`` innermost operators, ranges and frames enclosing ``event``, innermost first."""
    names, parent = [], event.cpu_parent
    while parent is not None and len(names) < depth:
        names.append(parent.name[:60])
        parent = parent.cpu_parent
    return tuple(names)


def _with_children(event) -> list:
    """``event`` and every operator nested in it, whose own times add up to the outer operator's time."""
    out, stack = [], [event]
    while stack:
        e = stack.pop()
        out.append(e)
        stack.extend(e.cpu_children)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", required=True, help="a shipped recipe name (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="[default: the recipe's]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--trace", default=None, help="folder for Chrome traces")
    parser.add_argument("--label", default="")
    parser.add_argument("--detail", action="store_true",
                        help="record input shapes and stacks: add top_aten_by_shape, top_aten_by_caller and "
                             "top_aten_by_parents")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    overrides = {"vgg_weights": None, "allow_random_vgg": True, **parse_set(tuple(args.overrides))}
    for name in args.recipe:
        print(json.dumps(profile_recipe(name, overrides, args, device)), flush=True)


if __name__ == "__main__":
    main()
