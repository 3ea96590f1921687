"""Reflection padding from slice copies: ``torch.nn.ReflectionPad2d``'s values and gradients, in either memory format.

The pix2pix block library that PATN and XingGAN build on (Isola et al., CVPR 2017, arXiv:1611.07004), and GFLA's
output layers, pad by reflection before every size-preserving convolution. This pad writes the interior with one
copy and the reflected borders with copies of thin slices, and its backward folds the border gradients back onto
the interior the same way, so its cost is a memory copy in either direction; it keeps a channels-last input
channels-last. Values equal ``F.pad(x, (p, p, p, p), mode="reflect")`` exactly; gradients equal its gradients up to
the order of the additions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ReflectionPad2d", "reflection_pad2d"]


def _check(x: Tensor, p: int) -> None:
    if x.dim() not in (3, 4):
        raise ValueError(f"reflection padding takes a (C, H, W) or (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if p >= x.shape[-2] or p >= x.shape[-1]:
        raise ValueError(f"reflection padding of {p} needs a height and width above {p}, got {tuple(x.shape[-2:])}")


def _empty_like_padded(x: Tensor, height: int, width: int) -> Tensor:
    """An uninitialised ``(..., height, width)`` tensor in ``x``'s dtype, device and memory format."""
    shape = (*x.shape[:-2], height, width)
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return x.new_empty(shape)


class _ReflectionPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: int) -> Tensor:  # type: ignore[override]
        ctx.p = p
        h, w = x.shape[-2:]
        out = _empty_like_padded(x, h + 2 * p, w + 2 * p)
        out[..., p:p + h, p:p + w] = x
        out[..., p:p + h, :p] = x[..., :, 1:p + 1].flip(-1)  # columns p..1 to the left
        out[..., p:p + h, p + w:] = x[..., :, w - 1 - p:w - 1].flip(-1)  # columns w-2..w-1-p to the right
        out[..., :p, :] = out[..., p + 1:2 * p + 1, :].flip(-2)  # whole padded rows, corners included
        out[..., p + h:, :] = out[..., h - 1:h - 1 + p, :].flip(-2)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        p = ctx.p
        h, w = grad.shape[-2] - 2 * p, grad.shape[-1] - 2 * p
        rows = grad[..., p:p + h, :].clone(memory_format=torch.preserve_format)
        rows[..., 1:p + 1, :] += grad[..., :p, :].flip(-2)
        rows[..., h - 1 - p:h - 1, :] += grad[..., p + h:, :].flip(-2)
        out = rows[..., p:p + w].clone(memory_format=torch.preserve_format)
        out[..., 1:p + 1] += rows[..., :p].flip(-1)
        out[..., w - 1 - p:w - 1] += rows[..., p + w:].flip(-1)
        return out, None


def reflection_pad2d(x: Tensor, p: int) -> Tensor:
    """``x`` ``(B, C, H, W)`` or ``(C, H, W)`` padded by reflection by ``p`` on every side (``p < H`` and ``p <
    W``): ``(..., H + 2p, W + 2p)``, in ``x``'s memory format."""
    _check(x, p)
    return x if p == 0 else _ReflectionPad.apply(x, p)


class ReflectionPad2d(nn.ReflectionPad2d):
    """``nn.ReflectionPad2d`` of one padding on every side, computed by ``reflection_pad2d``."""

    def __init__(self, padding: int) -> None:
        if not isinstance(padding, int):
            raise TypeError(f"ReflectionPad2d takes one int padding, got {padding!r}")
        super().__init__(padding)

    def forward(self, x: Tensor) -> Tensor:
        return reflection_pad2d(x, self.padding[0])
