"""GFLA's three custom CUDA ops, rebuilt from plain PyTorch tensor ops.

Ren, Yu, Chen, Li, Li, "Deep Image Spatial Transformation for Person Image Generation", CVPR 2020,
arXiv:2003.00696. The semantics are read from the official kernels and their Python wrappers,
RenYurui/Global-Flow-Local-Attention@3afa8fe9e0c1 (``model/networks/resample2d_package/``,
``model/networks/block_extractor/``, ``model/networks/local_attn_reshape/``), which no longer build on current
PyTorch. The specification of each op,
fact by fact, is ``docs/models/ops.md``.

- ``resample2d(source (B, C, H, W), flow (B, 2, h, w), kernel_size, dilation, sigma) -> (B, C, h, w)``: the source
  sampled at ``pixel + flow`` by a normalised Gaussian over a ``k x k`` tap grid (GFLA's correctness loss).
- ``block_extractor(source (B, C, H, W), flow (B, 2, h, w), kernel_size) -> (B, C, h*k, w*k)``: the bilinear
  ``k x k`` patch at each flow target, tiled side by side (GFLA's local attention).
- ``local_attn_reshape(x (B, k*k, h, w), kernel_size) -> (B, 1, h*k, w*k)``: each pixel's ``k*k`` weights as its
  ``k x k`` block, ``pixel_shuffle``.

Coordinates and sums are float32 (float64 for float64 inputs) with autocast off inside; results take the source's
dtype. Each op has a slow per-pixel reference in ``tests/ops_reference.py``; the tests hold both to the official
kernels' outputs and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["block_extractor", "check_finite_on_cpu", "local_attn_reshape", "resample2d"]

_EPS = 1e-8  # the official kernels' SAFE_DIV replacement for a zero divisor


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class _TapSum(torch.autograd.Function):
    """``out[b, c, m] = sum_t weight[b, t, m] * source[b, c, index[b, t, m]]``, taps recomputed in backward.

    ``source_weight`` replaces ``weight`` in the gradient of ``source``: resample2d's official backward weights the
    source gradient differently from its forward (``docs/models/ops.md``).
    """

    @staticmethod
    def forward(ctx, source: Tensor, weight: Tensor, source_weight: Tensor, index: Tensor) -> Tensor:
        b, c, _ = source.shape
        m = index.shape[2]
        out = source.new_zeros(b, c, m)
        for t in range(index.shape[1]):
            tap = source.gather(2, index[:, t : t + 1].expand(b, c, m))
            out.addcmul_(tap, weight[:, t : t + 1])
        ctx.save_for_backward(source, weight, source_weight, index)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        source, weight, source_weight, index = ctx.saved_tensors
        b, c, _ = source.shape
        m = index.shape[2]
        grad_out = grad_out.contiguous()
        grad_source = torch.zeros_like(source) if ctx.needs_input_grad[0] else None
        grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        for t in range(index.shape[1]):
            idx = index[:, t : t + 1].expand(b, c, m)
            if grad_source is not None:
                grad_source.scatter_add_(2, idx, grad_out * source_weight[:, t : t + 1])
            if grad_weight is not None:
                grad_weight[:, t] = (grad_out * source.gather(2, idx)).sum(1)
        return grad_source, grad_weight, None, None


def _check(source: Tensor, flow: Tensor, name: str) -> None:
    if source.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2 or flow.shape[0] != source.shape[0]:
        raise ValueError(
            f"{name}: expected source (B, C, H, W) and flow (B, 2, h, w), got {tuple(source.shape)} and "
            f"{tuple(flow.shape)}"
        )


def check_finite_on_cpu(flow: Tensor, name: str) -> None:
    """Raise ``ValueError`` for a CPU ``flow`` holding NaN or infinity: ``grid_sample``'s CPU backward reads memory
    outside the source at such sample points and crashes the process (torch 2.14). On a GPU the check would wait
    for the device at every call, and its kernel skips those points."""
    if flow.device.type == "cpu" and not bool(torch.isfinite(flow).all()):
        raise ValueError(f"{name}: the flow holds NaN or infinite values (a diverged flow estimator?); "
                         "sampling at them would crash grid_sample's CPU backward")


def _gaussian(distance: Tensor, sigma: float) -> Tensor:
    denom = 2.0 * sigma * sigma
    return torch.exp(-distance * distance / (denom if denom != 0 else _EPS))


def resample2d(source: Tensor, flow: Tensor, kernel_size: int = 2, dilation: int = 1, sigma: float = 5.0) -> Tensor:
    """Gaussian-weighted resampling of ``source`` ``(B, C, H, W)`` at ``flow`` ``(B, 2, h, w)`` -> ``(B, C, h, w)``.

    Equals GFLA's ``Resample2d(kernel_size, dilation, sigma)(source, flow)`` in value and in both gradients (see
    ``docs/models/ops.md`` for the exact kernel, its borders and its source-gradient quirk). ``flow`` is in source
    pixels, x (width) first.
    """
    _check(source, flow, "resample2d")
    if kernel_size < 2:
        raise ValueError(f"resample2d: kernel_size must be >= 2 (k // 2 taps a side), got {kernel_size}")
    ct = _compute_dtype(source, flow)
    b, c, hs, ws = source.shape
    h, w = flow.shape[2:]
    with torch.autocast(source.device.type, enabled=False):
        flow = flow.to(ct)
        xf = flow[:, 0] + torch.arange(w, device=flow.device, dtype=ct)  # (B, h, w)
        yf = flow[:, 1] + torch.arange(h, device=flow.device, dtype=ct)[:, None]
        x0, y0 = torch.floor(xf), torch.floor(yf)
        # tap offsets: the kernel's "left/top" taps at -f*d and "right/bottom" ones at (f+1)*d, f < k/2
        offsets = torch.arange(1 - kernel_size // 2, kernel_size // 2 + 1, device=flow.device, dtype=ct) * dilation
        # (B, k, h, w) distances from the sample point to each tap row / column, before clamping
        dx = (xf - x0)[:, None] - offsets[:, None, None]
        dy = (yf - y0)[:, None] - offsets[:, None, None]
        gx, gy = _gaussian(dx, sigma), _gaussian(dy, sigma)
        # the source gradient's weights use x - trunc(x) for the fraction (kernel_resample2d_backward_input1)
        with torch.no_grad():
            gx_src = _gaussian((xf - torch.trunc(xf))[:, None] - offsets[:, None, None], sigma)
            gy_src = _gaussian((yf - torch.trunc(yf))[:, None] - offsets[:, None, None], sigma)
        cols = (x0.long()[:, None] + offsets.long()[:, None, None]).clamp_(0, ws - 1)  # (B, k, h, w)
        rows = (y0.long()[:, None] + offsets.long()[:, None, None]).clamp_(0, hs - 1)
        k = 2 * (kernel_size // 2)  # an odd kernel_size acts as the even one below it, as in the kernel's loops
        weight = _normalised(gy[:, :, None] * gx[:, None])  # (B, k, k, h, w): [row tap, column tap]
        weight_src = _normalised(gy_src[:, :, None] * gx_src[:, None])
        index = rows[:, :, None] * ws + cols[:, None]
        out = _TapSum.apply(
            source.to(ct).reshape(b, c, hs * ws),
            weight.reshape(b, k * k, h * w),
            weight_src.reshape(b, k * k, h * w),
            index.reshape(b, k * k, h * w),
        )
    return out.reshape(b, c, h, w).to(source.dtype)


def _normalised(weight: Tensor) -> Tensor:
    """``weight / sum`` over the two tap dimensions (1, 2), with the kernel's zero-sum rule (output 0)."""
    total = weight.sum(dim=(1, 2), keepdim=True)
    return weight / torch.where(total == 0, torch.full_like(total, _EPS), total)


def block_extractor(source: Tensor, flow: Tensor, kernel_size: int) -> Tensor:
    """The ``k x k`` source patch at each flow target, tiled: ``(B, C, H, W)``, ``(B, 2, h, w)`` -> ``(B, C, hk, wk)``.

    Equals GFLA's ``BlockExtractor(kernel_size)(source, flow)``: block ``(i, j)`` of the output holds the bilinear
    samples of ``source`` at ``(i + flow_y + dy, j + flow_x + dx)``, ``dy, dx`` in ``-(k // 2) .. k - 1 - k // 2``,
    border values outside the source (``docs/models/ops.md``). ``flow`` is in source pixels, x first.
    """
    _check(source, flow, "block_extractor")
    if kernel_size < 1:
        raise ValueError(f"block_extractor: kernel_size must be >= 1, got {kernel_size}")
    check_finite_on_cpu(flow, "block_extractor")
    ct = _compute_dtype(source, flow)
    k = kernel_size
    b, _, hs, ws = source.shape
    h, w = flow.shape[2:]
    with torch.autocast(source.device.type, enabled=False):
        flow = flow.to(ct)
        offsets = torch.arange(k, device=flow.device, dtype=ct) - k // 2
        # sample points (B, h, k, w, k): row i*k + a, column j*k + b of the output, in source pixels
        x = (flow[:, 0] + torch.arange(w, device=flow.device, dtype=ct))[:, :, None, :, None] + offsets
        y = (flow[:, 1] + torch.arange(h, device=flow.device, dtype=ct)[:, None])[:, :, None, :, None]
        y = y + offsets[:, None, None]
        x = x.expand(b, h, k, w, k).reshape(b, h * k, w * k)
        y = y.expand(b, h, k, w, k).reshape(b, h * k, w * k)
        # grid_sample's bilinear with border padding and align_corners=True is the kernel's sampling exactly (the
        # four neighbours floor and floor + 1, indices clamped), in one fused pass; only the pixel <-> [-1, 1]
        # conversion adds a rounding (about 1e-6 px in float32)
        grid = torch.stack([x * (2 / max(ws - 1, 1)) - 1, y * (2 / max(hs - 1, 1)) - 1], dim=-1)
        out = F.grid_sample(source.to(ct), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(source.dtype)


def local_attn_reshape(x: Tensor, kernel_size: int) -> Tensor:
    """Each pixel's ``k*k`` weights as its ``k x k`` block: ``(B, k*k, h, w)`` -> ``(B, 1, h*k, w*k)``.

    Equals GFLA's ``LocalAttnReshape()(x, kernel_size)``: channel ``a * k + b`` of pixel ``(i, j)`` lands at
    ``(i * k + a, j * k + b)``, the layout of ``block_extractor``'s blocks.
    """
    if x.dim() != 4 or x.shape[1] != kernel_size * kernel_size:
        raise ValueError(f"local_attn_reshape: expected (B, {kernel_size}*{kernel_size}, h, w), got {tuple(x.shape)}")
    return F.pixel_shuffle(x, kernel_size)
