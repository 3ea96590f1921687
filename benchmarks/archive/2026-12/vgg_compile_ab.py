"""DPTN DeepFashion's step with and without its VGG-19 compiled, alternating in one process (CUDA only).

    python benchmarks/archive/2026-12/vgg_compile_ab.py [--variants A,B,C,D,A]

The step is ``pgpig.train.train_step`` at the recipe's setting on ``train_bench.py``'s batch (smooth random images,
random keypoints, random VGG-19), built afresh for each variant: ``A`` the recipe with the loss network eager,
``B`` with it compiled (``compile_parts(..., losses=True)``, the ``compile_losses`` setting), ``C`` compiled with its
input made channels-last first, ``D`` eager with that input. Each prints a JSON line: the best of three 5-step
means, pairs/s, the warm-up seconds, the peak memory and the layout of the loss network's first input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_bench import fixed_inputs, recipe_size, step_pose_maps  # noqa: E402

from pgpig.config import load_config, recipe_path, resolve_speed  # noqa: E402
from pgpig.losses import VGG19Features  # noqa: E402
from pgpig.models.objective import StepBatch  # noqa: E402
from pgpig.train import build, compile_parts, train_step  # noqa: E402

RECIPE = "deepfashion/dptn"


def measure(variant: str, device: torch.device, first_input: list) -> dict:
    forward = VGG19Features.forward
    make_cl = variant in "CD"

    def vgg_forward(self, x):
        if not first_input:
            first_input.append({"contiguous": x.is_contiguous(),
                                "channels_last": x.is_contiguous(memory_format=torch.channels_last)})
        return forward(self, x.contiguous(memory_format=torch.channels_last) if make_cl else x)

    VGG19Features.forward = vgg_forward
    try:
        cfg = resolve_speed(load_config(recipe_path(RECIPE), {"vgg_weights": None, "allow_random_vgg": True,
                                                              "device": str(device)}), device)
        h, w = recipe_size(RECIPE, cfg)
        torch.manual_seed(0)
        parts = build(cfg, device, (h, w))
        b = cfg.batch_size
        source, target, keypoints, layout = fixed_inputs(cfg, device, (h, w))
        draw = step_pose_maps(cfg, keypoints, (h, w), device, layout)
        compile_parts(parts, cfg.compile, losses=variant in "BC")

        def step() -> None:
            source_pose, target_pose = draw()
            train_step(parts, cfg, StepBatch(source, target, source_pose, target_pose, keypoints[0], keypoints[1]))

        start = time.perf_counter()
        for _ in range(3):
            step()
        torch.cuda.synchronize(device)
        warm = time.perf_counter() - start
        torch.cuda.reset_peak_memory_stats(device)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(5):
                step()
            torch.cuda.synchronize(device)
            best = min(best, (time.perf_counter() - start) / 5 * 1e3)
    finally:
        VGG19Features.forward = forward
    return {"bench": "vgg_compile_ab", "recipe": RECIPE, "variant": variant, "batch": b, "step_ms_best": round(best, 2),
            "pairs_per_s": round(b / best * 1e3, 1), "warm_s": round(warm, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2), "vgg_input": first_input[:1],
            "device": torch.cuda.get_device_name(device), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="A,B,C,D,A")
    args = parser.parse_args()
    device = torch.device("cuda")
    for variant in args.variants.split(","):
        if variant not in ("A", "B", "C", "D"):
            parser.error(f"unknown variant {variant!r} (A, B, C or D)")
        print(json.dumps(measure(variant, device, [])), flush=True)


if __name__ == "__main__":
    main()
