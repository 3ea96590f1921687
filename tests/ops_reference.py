"""Slow, literal references for ``pgpig.models.ops``: one Python loop iteration per output pixel, float64.

Each follows the official GFLA kernel's arithmetic step by step (the kernels are described in the docstring of
``pgpig/models/ops.py``), vectorised only over channels so that autograd gives the gradients. Used by
``tests/pgpig/test_ops.py`` only: far too slow for anything but a few hundred pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _safe_div(a, b: Tensor) -> Tensor:
    """The kernels' ``SAFE_DIV``: a zero divisor is replaced by 1e-8."""
    return a / (1e-8 if float(b.detach()) == 0 else b)


def resample2d_reference(
    source: Tensor, flow: Tensor, kernel_size: int = 2, dilation: int = 1, sigma: float = 5.0,
    official_source_grad: bool = True,
) -> Tensor:
    """GFLA's ``Resample2d`` forward; the source gradient follows the official backward when asked.

    The official source gradient takes the sample's fraction as ``x - trunc(x)`` (``floor`` in the forward), which
    differs for negative coordinates; with ``official_source_grad`` the value is unchanged and only that gradient
    is redirected through weights computed the official backward's way.
    """
    source, flow = source.double(), flow.double()
    b_n, c_n, hs, ws = source.shape
    _, _, h, w = flow.shape
    two_s2 = 2.0 * sigma * sigma or 1e-8  # SAFE_DIV of the exponents
    pixels = []
    for b in range(b_n):
        for y in range(h):
            for x in range(w):
                xf = flow[b, 0, y, x] + x
                yf = flow[b, 1, y, x] + y
                fx0, fy0 = math.floor(float(xf.detach())), math.floor(float(yf.detach()))
                alpha, beta = xf - fx0, yf - fy0
                alpha_t, beta_t = xf - math.trunc(float(xf.detach())), yf - math.trunc(float(yf.detach()))
                val = torch.zeros(c_n, dtype=torch.float64)
                total = 0.0
                taps = []  # (weight, weight for the source gradient, row, column)
                for fy in range(kernel_size // 2):
                    for fx in range(kernel_size // 2):
                        rows = (fy0 - fy * dilation, fy0 + (fy + 1) * dilation)
                        cols = (fx0 - fx * dilation, fx0 + (fx + 1) * dilation)
                        # distance to the top/bottom row and left/right column, as in the kernel
                        dys = (fy * dilation + beta, (fy + 1) * dilation - beta)
                        dxs = (fx * dilation + alpha, (fx + 1) * dilation - alpha)
                        dys_t = (fy * dilation + beta_t, (fy + 1) * dilation - beta_t)
                        dxs_t = (fx * dilation + alpha_t, (fx + 1) * dilation - alpha_t)
                        for i in range(2):
                            for j in range(2):
                                wgt = torch.exp(-dys[i] * dys[i] / two_s2) * torch.exp(
                                    -dxs[j] * dxs[j] / two_s2)
                                wgt_t = torch.exp(-dys_t[i] * dys_t[i] / two_s2) * torch.exp(
                                    -dxs_t[j] * dxs_t[j] / two_s2)
                                r = min(max(rows[i], 0), hs - 1)
                                c = min(max(cols[j], 0), ws - 1)
                                taps.append((wgt, wgt_t.detach(), r, c))
                for wgt, _, r, c in taps:
                    val = val + wgt * source[b, :, r, c]
                    total = total + wgt
                pixel = _safe_div(val, total)
                if official_source_grad:
                    total_t = sum(t[1] for t in taps)
                    for wgt, wgt_t, r, c in taps:
                        # zero in value; moves the source gradient from wgt/total to wgt_t/total_t
                        tap = source[b, :, r, c]
                        shift = (_safe_div(wgt_t, total_t) - _safe_div(wgt, total)).detach()
                        pixel = pixel + shift * (tap - tap.detach())
                pixels.append(pixel)
    return torch.stack(pixels).reshape(b_n, h, w, c_n).permute(0, 3, 1, 2)


def block_extractor_reference(source: Tensor, flow: Tensor, kernel_size: int) -> Tensor:
    """GFLA's ``BlockExtractor`` forward (its backward is the exact derivative, so autograd gives it)."""
    source, flow = source.double(), flow.double()
    b_n, c_n, hs, ws = source.shape
    _, _, h, w = flow.shape
    k = kernel_size
    pixels = []
    for b in range(b_n):
        for yy in range(h * k):
            for xx in range(w * k):
                i, j = yy // k, xx // k
                py = flow[b, 1, i, j] + (yy % k - k // 2) + i
                px = flow[b, 0, i, j] + (xx % k - k // 2) + j
                y0, x0 = math.floor(float(py.detach())), math.floor(float(px.detach()))
                ay, ax = py - y0, px - x0
                top, bottom = min(max(y0, 0), hs - 1), min(max(y0 + 1, 0), hs - 1)
                left, right = min(max(x0, 0), ws - 1), min(max(x0 + 1, 0), ws - 1)
                pixels.append(
                    (1 - ax) * (1 - ay) * source[b, :, top, left]
                    + ax * (1 - ay) * source[b, :, top, right]
                    + (1 - ax) * ay * source[b, :, bottom, left]
                    + ax * ay * source[b, :, bottom, right]
                )
    return torch.stack(pixels).reshape(b_n, h * k, w * k, c_n).permute(0, 3, 1, 2)


def local_attn_reshape_reference(x: Tensor, kernel_size: int) -> Tensor:
    """GFLA's ``LocalAttnReshape``: output ``(i*k + a, j*k + b)`` is channel ``a*k + b`` of pixel ``(i, j)``."""
    x = x.double()
    b_n, _, h, w = x.shape
    k = kernel_size
    pixels = []
    for b in range(b_n):
        for yy in range(h * k):
            for xx in range(w * k):
                pixels.append(x[b, (yy % k) * k + xx % k, yy // k, xx // k])
    return torch.stack(pixels).reshape(b_n, 1, h * k, w * k)
