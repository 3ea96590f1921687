"""GFLA's ops (``pgpig.models.ops``): forward and forward+backward time, peak GPU memory, at GFLA's real sizes.

    python benchmarks/ops_bench.py [--device auto|cpu|cuda] [--batch 8] [--dtype float32,bf16]
                                   [--repeats 20] [--warmup 3] [--no-baseline]

The sizes are where the official GFLA code calls each op for DeepFashion 256x176 (``model/pose_model.py``:
``ngf 64``, ``img_f 512``, 3 layers; README: ``--attn_layer=2,3 --kernel_size=2=5,3=3``; batch 8, the default
``--batchSize`` of ``options/base_options.py``):

- ``block_extractor`` in ``ExtractorAttn`` (``base_function.py``): 256 ch at 32x22 with k 3, 128 ch at 64x44 with
  k 5 (its output is 25x the source: 8 x 128 x 320 x 220);
- ``local_attn_reshape`` on the attention weights: 9 ch at 32x22, 25 ch at 64x44;
- ``resample2d(k 4, sigma 2)`` in the sampling-correctness loss (``external_function.py``): VGG-19 ``relu3_1``
  (256 ch, 64x44) and ``relu4_1`` (512 ch, 32x22).

Inputs are random (flows of a few pixels); the backward is driven by a random ``grad_output``. ``peak_mem_mb`` is
the CUDA peak during forward+backward above what the inputs already held (null on CPU); ``out_mb`` is the output's
size for comparison. Unless ``--no-baseline``, each line is followed by a straightforward alternative in the same
run with its ratio: for ``block_extractor`` (one ``grid_sample``) the kernel's own formulation, four clamped gathers
with bilinear weights and plain autograd; for ``resample2d`` (taps one at a time, recomputed in backward) a
gather-all-taps version (all k*k taps materialised and kept for autograd; not the official source gradient, timing
only). ``local_attn_reshape`` is ``pixel_shuffle`` itself and has no baseline.
``dtype`` bf16 runs the op under ``torch.autocast`` with bfloat16 inputs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgpig.models.ops import block_extractor, local_attn_reshape, resample2d  # noqa: E402

# (op, label, source shape without batch, flow/attention grid, params)
CASES = [
    ("block_extractor", "attn3 (k3)", (256, 32, 22), (32, 22), {"kernel_size": 3}),
    ("block_extractor", "attn2 (k5)", (128, 64, 44), (64, 44), {"kernel_size": 5}),
    ("local_attn_reshape", "attn3 (k3)", (9, 32, 22), None, {"kernel_size": 3}),
    ("local_attn_reshape", "attn2 (k5)", (25, 64, 44), None, {"kernel_size": 5}),
    ("resample2d", "relu3_1", (256, 64, 44), (64, 44), {"kernel_size": 4, "dilation": 1, "sigma": 2.0}),
    ("resample2d", "relu4_1", (512, 32, 22), (32, 22), {"kernel_size": 4, "dilation": 1, "sigma": 2.0}),
]


def four_gather_blocks(source: torch.Tensor, flow: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``block_extractor`` as the kernel writes it: four clamped gathers and bilinear weights, plain autograd."""
    k = kernel_size
    b, c, hs, ws = source.shape
    h, w = flow.shape[2:]
    offsets = torch.arange(k, device=flow.device, dtype=flow.dtype) - k // 2
    x = (flow[:, 0] + torch.arange(w, device=flow.device))[:, :, None, :, None] + offsets
    y = (flow[:, 1] + torch.arange(h, device=flow.device)[:, None])[:, :, None, :, None] + offsets[:, None, None]
    x = x.expand(b, h, k, w, k).reshape(b, 1, -1)
    y = y.expand(b, h, k, w, k).reshape(b, 1, -1)
    x0, y0 = x.floor(), y.floor()
    ax, ay = x - x0, y - y0
    flat = source.reshape(b, c, hs * ws)
    out = 0
    for dy, wy in ((0, 1 - ay), (1, ay)):
        for dx, wx in ((0, 1 - ax), (1, ax)):
            index = (y0.long() + dy).clamp(0, hs - 1) * ws + (x0.long() + dx).clamp(0, ws - 1)
            out = out + flat.gather(2, index.expand(b, c, index.shape[2])) * (wy * wx).to(source.dtype)
    return out.reshape(b, c, h * k, w * k)


def gather_all_resample2d(source: torch.Tensor, flow: torch.Tensor, kernel_size: int, dilation: int,
                          sigma: float) -> torch.Tensor:
    """``resample2d``'s forward with every tap gathered at once, ``(B, C, k*k, h*w)``, and plain autograd."""
    b, c, hs, ws = source.shape
    h, w = flow.shape[2:]
    xf = flow[:, 0] + torch.arange(w, device=flow.device)
    yf = flow[:, 1] + torch.arange(h, device=flow.device)[:, None]
    offsets = torch.arange(1 - kernel_size // 2, kernel_size // 2 + 1, device=flow.device) * dilation
    gx = torch.exp(-((xf - xf.floor())[:, None] - offsets[:, None, None]) ** 2 / (2 * sigma**2))
    gy = torch.exp(-((yf - yf.floor())[:, None] - offsets[:, None, None]) ** 2 / (2 * sigma**2))
    weight = gy[:, :, None] * gx[:, None]
    weight = (weight / weight.sum((1, 2), keepdim=True)).reshape(b, 1, -1, h * w)
    cols = (xf.floor().long()[:, None] + offsets[:, None, None]).clamp(0, ws - 1)
    rows = (yf.floor().long()[:, None] + offsets[:, None, None]).clamp(0, hs - 1)
    index = (rows[:, :, None] * ws + cols[:, None]).reshape(b, 1, -1)
    taps = source.reshape(b, c, hs * ws).gather(2, index.expand(b, c, index.shape[2])).reshape(b, c, -1, h * w)
    return (taps * weight.to(taps.dtype)).sum(2).reshape(b, c, h, w)


OPS: dict[str, Callable] = {"block_extractor": block_extractor, "local_attn_reshape": local_attn_reshape,
                            "resample2d": resample2d}
BASELINES: dict[str, tuple[str, Callable]] = {"block_extractor": ("four_gathers", four_gather_blocks),
                                              "resample2d": ("gather_all_taps", gather_all_resample2d)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn: Callable, inputs: list[torch.Tensor], params: dict, device: torch.device, amp: torch.dtype | None,
          repeats: int, warmup: int) -> dict:
    """Median ms of the forward and of forward+backward, and the CUDA peak above the inputs."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]

    def forward() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return fn(*leaves, **params)

    with torch.no_grad():
        out = forward()
    grad_out = torch.randn_like(out)
    out_mb = out.numel() * out.element_size() / 2**20
    del out

    def forward_backward() -> None:
        forward().backward(grad_out)
        for t in leaves:
            t.grad = None

    times = {}
    for name, step in (("ms_fwd", forward), ("ms_fwd_bwd", forward_backward)):
        for _ in range(warmup):
            step()
        samples = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            samples.append((time.perf_counter() - start) * 1e3)
        times[name] = round(sorted(samples)[len(samples) // 2], 3)
    peak = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
        forward_backward()
        _sync(device)
        peak = round((torch.cuda.max_memory_allocated(device) - held) / 2**20, 1)
    return {**times, "peak_mem_mb": peak, "out_mb": round(out_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--batch", type=int, default=8, help="[default: 8, GFLA's training batch]")
    parser.add_argument("--dtype", default="float32,bf16", help="comma-separated: float32, bf16, fp16 (autocast)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="time the pgpig ops only")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    amps = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    common = {"bench": "gfla_ops", "device": machine, "torch": torch.__version__,
              "python": platform.python_version(), "batch": args.batch}
    g = torch.Generator(device="cpu").manual_seed(0)
    for op, label, shape, grid, params in CASES:
        source = torch.randn(args.batch, *shape, generator=g)
        inputs = [source] if grid is None else [source, torch.randn(args.batch, 2, *grid, generator=g) * 3]
        for dtype in args.dtype.split(","):
            amp = amps[dtype]
            moved = [t.to(device, amp or torch.float32) for t in inputs]
            result = bench(OPS[op], moved, params, device, amp, args.repeats, args.warmup)
            line = {**common, "op": op, "impl": "pgpig", "where": label, "dtype": dtype,
                    "shape": [list(t.shape) for t in moved], "params": params, **result}
            print(json.dumps(line), flush=True)
            if op in BASELINES and not args.no_baseline:
                name, fn = BASELINES[op]
                base = bench(fn, moved, params, device, amp, args.repeats, args.warmup)
                print(json.dumps({**line, "impl": name, **base,
                                  "pgpig_speedup_fwd_bwd": round(base["ms_fwd_bwd"] / result["ms_fwd_bwd"], 3)}),
                      flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
