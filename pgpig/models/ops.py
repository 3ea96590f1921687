"""GFLA's three custom CUDA ops, rebuilt from plain PyTorch tensor ops.

Ren, Yu, Li, Liu, Li, "Deep Image Spatial Transformation for Person Image Generation", CVPR 2020, arXiv:2003.00696;
official code RenYurui/Global-Flow-Local-Attention, whose ``model/networks/resample2d_package/``,
``model/networks/block_extractor/`` and ``model/networks/local_attn_reshape/`` hold CUDA kernels that no longer build.
The semantics below are read from those kernels (``*_kernel.cu``) and their Python wrappers; every fact names its file.

``resample2d(source, flow, kernel_size, dilation, sigma)``: ``(B, C, H, W)``, ``(B, 2, h, w)`` -> ``(B, C, h, w)``.
  Used by the sampling-correctness loss (``external_function.py``, ``PerceptualCorrectness``: ``Resample2d(4, 1,
  sigma=2)`` on VGG ``relu3_1`` 256 ch at 64x44 and ``relu4_1`` 512 ch at 32x22 for DeepFashion 256x176).
  From ``resample2d_kernel.cu`` (``kernel_resample2d_update_output``):

  - the flow is in source pixels, channel 0 is x (width), channel 1 is y; output pixel ``(y, x)`` samples the point
    ``(yf, xf) = (y + flow_y, x + flow_x)`` of the source (no scaling between the grids: ``h, w`` may differ from
    ``H, W``);
  - the taps are a ``k x k`` grid (``k = kernel_size``; ``k // 2`` taps each side, so an odd ``k`` acts as
    ``k - 1``): rows ``floor(yf) + o * dilation`` for ``o`` in ``-(k/2 - 1) .. k/2``, the same offsets for the
    columns; a tap outside the source reads the nearest border pixel (row and column indices clamped to
    ``[0, H-1]``, ``[0, W-1]``);
  - each tap is weighted by a separable Gaussian of its distance to the sample point, measured before clamping:
    ``exp(-(xf - x_tap)^2 / (2 sigma^2)) * exp(-(yf - y_tap)^2 / (2 sigma^2))``, and the weights are normalised to
    sum to 1. So ``kernel_size=2`` is not bilinear: it tends to the nearest of its 4 taps as ``sigma -> 0``
    and to their plain average as ``sigma -> inf``; a zero flow is not the identity (it blurs toward +x, +y);
  - ``sigma`` is a constant third flow channel that the module appends (``resample2d.py``, ``Resample2d.forward``,
    default 5; GFLA uses 2); its gradient is dropped by the module. A zero divisor is replaced by ``1e-8``
    (``SAFE_DIV``), so ``sigma = 0`` or weights that all underflow give 0;
  - gradients (``kernel_resample2d_backward_input2``): the flow gradient is the exact derivative of the forward,
    floors treated as constants. The source gradient (``kernel_resample2d_backward_input1``) recomputes the weights
    with ``xf - int(xf)`` (truncation toward zero) in place of ``xf - floor(xf)``: the same for ``xf >= 0``, but for
    a sample point left of column 0 or above row 0 (non-integer) the source receives weights of the point shifted
    by one pixel, not the derivative of the forward. We reproduce that, so training matches the official code; it
    only concerns flows pointing outside the top or left edge.

``block_extractor(source, flow, kernel_size)``: ``(B, C, H, W)``, ``(B, 2, h, w)`` -> ``(B, C, h*k, w*k)``.
  Used by ``ExtractorAttn`` (``base_function.py``; DeepFashion: 256 ch at 32x22 with k 3 and 128 ch at 64x44 with
  k 5, ``--kernel_size=2=5,3=3`` in the README, once with the flow and once with a zero flow on the target) and by
  ``AffineRegularizationLoss`` (``external_function.py``). From ``block_extractor_kernel.cu``:

  - output pixel ``(Y, X)`` belongs to block ``(i, j) = (Y // k, X // k)`` at position
    ``(dy, dx) = (Y % k - k // 2, X % k - k // 2)`` inside it, and samples the source at
    ``(i + flow_y[i, j] + dy, j + flow_x[i, j] + dx)`` in pixels: block ``(i, j)`` is the ``k x k`` patch centred
    (for odd ``k``; one more row and column before the centre for even ``k``) on the flow's target point, laid out
    in place, so the output is the ``h x w`` grid of patches tiled side by side;
  - plain bilinear interpolation from the four neighbours ``floor`` and ``floor + 1``, indices clamped to the
    source, weights not renormalised: outside the source it reads the nearest border value (like ``grid_sample``
    with ``padding_mode="border"``, ``align_corners=True``);
  - gradients are the exact derivatives of that (flow gradients summed over the ``k x k`` outputs of the block).

``local_attn_reshape(x, kernel_size)``: ``(B, k*k, h, w)`` -> ``(B, 1, h*k, w*k)``. From
  ``local_attn_reshape_kernel.cu``: channel ``a * k + b`` of pixel ``(i, j)`` goes to ``(i * k + a, j * k + b)``,
  i.e. each pixel's ``k*k`` attention weights become its ``k x k`` block, matching ``block_extractor``'s layout.
  That is exactly ``pixel_shuffle(x, k)``. The official module takes ``kernel_size`` at call time
  (``local_attn_reshape.py``: ``LocalAttnReshape()(inputs, kernel_size)``).

Implementation: ``resample2d`` gathers its ``k*k`` taps one at a time from the flattened source and accumulates
``weight * tap`` into the output, in a small autograd ``Function`` whose backward recomputes the taps instead of
storing them, so the memory is about one output plus one tap at a time (gathering all taps at once would hold
``k*k`` outputs for the backward); the per-pixel weights (tiny next to the features) are plain autograd, which
carries the flow gradient; it is not twice differentiable (GFLA needs no double backward). ``block_extractor`` is
one ``grid_sample`` on the ``(h*k, w*k)`` grid of sample points (same sampling and borders; one fused pass, 3 to 5
times faster on CPU than four gathers, memory about the output), ``local_attn_reshape`` one ``pixel_shuffle``; both
fully autograd.

Dtypes: coordinates, weights and sums are computed in float32 (float64 when an input is float64), whatever the
input dtype and with autocast disabled inside, because half and bfloat16 cannot hold pixel coordinates (bfloat16
steps by 0.25 px between 32 and 64 px); the result is cast back to the source's dtype. The cost is a float32 copy of
the source and, for ``block_extractor``, a float32 output before the cast (on an H100 at GFLA's k 5 layer, batch 8:
peak 445 MB under bf16 autocast against 296 MB in float32, for a 138 MB bf16 output). ``local_attn_reshape`` keeps
its input's dtype (a pure permutation). The official kernels have no half or bfloat16 versions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["block_extractor", "local_attn_reshape", "resample2d"]

_EPS = 1e-8  # the official kernels' SAFE_DIV replacement for a zero divisor


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class _TapSum(torch.autograd.Function):
    """``out[b, c, m] = sum_t weight[b, t, m] * source[b, c, index[b, t, m]]``, taps recomputed in backward.

    ``source_weight`` replaces ``weight`` in the gradient of ``source``: resample2d's official backward weights the
    source gradient differently from its forward (module docstring).
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


def _gaussian(distance: Tensor, sigma: float) -> Tensor:
    denom = 2.0 * sigma * sigma
    return torch.exp(-distance * distance / (denom if denom != 0 else _EPS))


def resample2d(source: Tensor, flow: Tensor, kernel_size: int = 2, dilation: int = 1, sigma: float = 5.0) -> Tensor:
    """Gaussian-weighted resampling of ``source`` ``(B, C, H, W)`` at ``flow`` ``(B, 2, h, w)`` -> ``(B, C, h, w)``.

    Equals GFLA's ``Resample2d(kernel_size, dilation, sigma)(source, flow)`` in value and in both gradients (see
    the module docstring for the exact kernel, its borders and its source-gradient quirk). ``flow`` is in source
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
    border values outside the source (module docstring). ``flow`` is in source pixels, x first.
    """
    _check(source, flow, "block_extractor")
    if kernel_size < 1:
        raise ValueError(f"block_extractor: kernel_size must be >= 1, got {kernel_size}")
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
