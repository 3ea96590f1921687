"""XingGAN's cross attention alone (``pgpig.models.xinggan.cross_attention``: unscaled, query and key of C/8
channels, value of C) computed several ways, forward and backward, side by side in one run.

    python benchmarks/attention_bench.py [--batch 64] [--size 64x44] [--channels 256] [--repeat 20] [--label TEXT]

The defaults are the DeepFashion recipe's shapes at batch 32 (both branches of a Xing block on one batch axis: 64
codes of 256 channels at 64x44, N = 2,816 positions). Ways:

- ``bmm`` (the official formula): two batched products around a softmax, in float32 with TF32 off, with TF32 on,
  and under bf16 autocast;
- ``model``: the model's ``cross_attention`` (``scaled_dot_product_attention``, one head), float32 and bf16;
- ``sdpa``: ``scaled_dot_product_attention(scale=1)`` with the value's head size unlike the query's (PyTorch picks
  the kernel; one that cannot take it falls back or fails, which the line says);
- ``sdpa_padded``: query and key padded with zeros to the value's channels (the same products), so every fused
  kernel applies;
- ``sdpa_heads``: the value cut into C/8-channel heads that share the query and key (head sizes equal);
- ``..._flash``, ``..._efficient``, ``..._cudnn``: held to that kernel (a kernel that cannot take the shapes gives
  an ``error`` entry).

Per way: milliseconds of forward + backward (median of ``--repeat``), peak memory above the inputs, and the
largest difference of the output and of the three gradients from a float64 computation on the first two codes,
relative to that computation's largest value. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def as_sequences(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Query, key, value maps ``(B, C, h, w)`` → sequences ``(B, 1, N, C)`` (one head, N = h w)."""
    return tuple(t.flatten(2).transpose(1, 2).contiguous().unsqueeze(1) for t in (query, key, value))


def back_to_maps(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, heads, N, d)`` → ``(B, heads * d, h, w)`` in ``like``'s layout."""
    b, c, h, w = like.shape
    return out.transpose(1, 2).reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)


def bmm_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The official formula as two batched products around a softmax, holding the ``(B, N, N)`` attention."""
    b, c, h, w = value.shape
    energy = torch.bmm(query.flatten(2).transpose(1, 2), key.flatten(2))
    return torch.bmm(value.flatten(2), torch.softmax(energy, dim=-1).transpose(1, 2)).view(b, c, h, w)


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    q, k, v = as_sequences(query, key, value)
    return back_to_maps(F.scaled_dot_product_attention(q, k, v, scale=1.0), value)


def sdpa_padded(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    q, k, v = as_sequences(query, key, value)
    extra = v.shape[-1] - q.shape[-1]
    q, k = F.pad(q, (0, extra)), F.pad(k, (0, extra))
    return back_to_maps(F.scaled_dot_product_attention(q, k, v, scale=1.0), value)


def sdpa_heads(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    q, k, v = as_sequences(query, key, value)
    d = q.shape[-1]
    heads = v.shape[-1] // d
    b, _, n, _ = v.shape
    v = v.reshape(b, n, heads, d).transpose(1, 2)  # (B, heads, N, d): channels h*d .. h*d+d-1 in head h
    out = F.scaled_dot_product_attention(q.expand(b, heads, n, d), k.expand(b, heads, n, d), v, scale=1.0)
    return back_to_maps(out, value)


def only(backend: str, fn: Callable) -> Callable:
    """``fn`` with ``scaled_dot_product_attention`` held to one kernel (``flash``, ``efficient``, ``cudnn``)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

    def held(*args):
        with sdpa_kernel(chosen):
            return fn(*args)

    return held


def ways() -> dict[str, tuple[Callable, str]]:
    """name → (function, arithmetic): ``fp32`` TF32 off, ``tf32`` TF32 on, ``bf16`` autocast. ``sdpa*`` ways
    without a kernel named take PyTorch's choice."""
    from pgpig.models.xinggan import cross_attention

    return {"bmm_fp32": (bmm_attention, "fp32"), "bmm_tf32": (bmm_attention, "tf32"),
            "bmm_bf16": (bmm_attention, "bf16"), "model_fp32": (cross_attention, "fp32"),
            "model_bf16": (cross_attention, "bf16"), "sdpa_fp32": (sdpa, "fp32"), "sdpa_bf16": (sdpa, "bf16"),
            "sdpa_efficient_bf16": (only("efficient", sdpa), "bf16"),
            "sdpa_padded_bf16": (sdpa_padded, "bf16"), "sdpa_padded_flash_bf16": (only("flash", sdpa_padded), "bf16"),
            "sdpa_padded_cudnn_bf16": (only("cudnn", sdpa_padded), "bf16"),
            "sdpa_heads_bf16": (sdpa_heads, "bf16"), "sdpa_heads_flash_bf16": (only("flash", sdpa_heads), "bf16")}


def run(fn: Callable, arithmetic: str, inputs: list[torch.Tensor], grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Forward and backward of ``fn`` under ``arithmetic``: the output and the inputs' gradients (float32)."""
    device = inputs[0].device
    leaves = [t.detach().requires_grad_() for t in inputs]
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = arithmetic == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=arithmetic == "bf16"):
            out = fn(*leaves)
        out.backward(grad.to(out.dtype))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out.detach().float(), *(t.grad.float() for t in leaves)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, fn: Callable, arithmetic: str, inputs: list[torch.Tensor], grad: torch.Tensor,
            repeat: int) -> dict:
    device = inputs[0].device
    small = [t[:2].double() for t in inputs]
    want = run(ways()["bmm_fp32"][0], "fp64", small, grad[:2].double())  # the official formula
    try:
        got = run(fn, arithmetic, [t[:2] for t in inputs], grad[:2])
        run(fn, arithmetic, inputs, grad)  # first call: kernels chosen and loaded
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            run(fn, arithmetic, inputs, grad)
            sync(device)
            times.append(time.perf_counter() - start)
    except RuntimeError as exc:  # a kernel that cannot take these shapes
        return {"error": str(exc).splitlines()[0][:200]}
    errors = {part: float((g.double() - w).abs().max() / w.abs().max().clamp_min(1e-30))
              for part, g, w in zip(("out", "query", "key", "value"), got, want, strict=True)}
    result = {"ms": round(1000 * statistics.median(times), 3), "max_rel_diff": {k: float(f"{v:.3g}")
                                                                                 for k, v in errors.items()}}
    if device.type == "cuda":
        result["peak_gib"] = round((torch.cuda.max_memory_allocated(device) - base) / 2**30, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="codes (twice the training batch)")
    parser.add_argument("--size", default="64x44", help="hxw of the codes")
    parser.add_argument("--channels", type=int, default=256, help="C, the value's channels (query and key: C/8)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--ways", default=None, help="comma-separated names [default: all]")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*(kernel not used|stride 1|Memory efficient|Flash|CuDNN).*")
    device = torch.device(args.device)
    h, w = (int(v) for v in args.size.split("x"))
    c = args.channels
    generator = torch.Generator(device="cpu").manual_seed(0)
    inputs = [torch.randn(args.batch, ch, h, w, generator=generator).to(device) for ch in (c // 8, c // 8, c)]
    inputs[0], inputs[1] = inputs[0] * 0.3, inputs[1] * 0.3  # energies of a few units, as a trained block's
    grad = torch.randn(args.batch, c, h, w, generator=generator).to(device)
    chosen = ways() if args.ways is None else {k: ways()[k] for k in args.ways.split(",")}
    results = {name: measure(name, fn, arithmetic, inputs, grad, args.repeat)
               for name, (fn, arithmetic) in chosen.items()}
    print(json.dumps({
        "bench": "xinggan_attention", "batch": args.batch, "size": [h, w], "positions": h * w, "channels": c,
        "repeat": args.repeat, "ways": results, "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else "cpu", "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "label": args.label, "python": sys.version.split()[0], "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
