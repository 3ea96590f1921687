"""Reflection padding and instance norm that keep a channels-last tensor channels-last: the pix2pix block library's
layers (Isola et al., CVPR 2017, arXiv:1611.07004), which PATN and XingGAN build on, and the affine instance norm
and output pads of GFLA's and DPTN's blocks.

``ReflectionPad2d`` writes the interior with one copy and the reflected borders with copies of thin slices; its
backward folds the border gradients back onto the interior the same way, so its cost is a memory copy in either
direction, in either memory format. Values equal ``F.pad(x, (p, p, p, p), mode="reflect")`` exactly; gradients equal
its gradients up to the order of the additions.

``InstanceNorm2d`` (no running statistics; affine or not: GFLA's and DPTN's norm, or the pix2pix ``"instance"``
norm) is torch's own on a contiguous input. On a channels-last input it computes the same normalisation with
reductions over the image axes, in float32 at least, and returns channels-last, where torch's would make a
contiguous copy of the input and return a contiguous output, so that every convolution of a channels-last model
would get an input to transpose back. Its backward is not differentiable again (no double backward).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["InstanceNorm2d", "ReflectionPad2d", "instance_norm_channels_last", "reflection_pad2d"]


def _channels_last_only(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _check(x: Tensor, p: int) -> None:
    if x.dim() not in (3, 4):
        raise ValueError(f"reflection padding takes a (C, H, W) or (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if p >= x.shape[-2] or p >= x.shape[-1]:
        raise ValueError(f"reflection padding of {p} needs a height and width above {p}, got {tuple(x.shape[-2:])}")


def _empty_like_padded(x: Tensor, height: int, width: int) -> Tensor:
    """An uninitialised ``(..., height, width)`` tensor in ``x``'s dtype, device and memory format."""
    shape = (*x.shape[:-2], height, width)
    if _channels_last_only(x):
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return x.new_empty(shape)


def _mirrored(t: Tensor, dim: int) -> Tensor:
    """``t`` reversed along ``dim``; a slice one wide (a padding of 1) is its own mirror image and is not copied."""
    return t if t.shape[dim] == 1 else t.flip(dim)


class _ReflectionPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: int) -> Tensor:  # type: ignore[override]
        ctx.p = p
        h, w = x.shape[-2:]
        out = _empty_like_padded(x, h + 2 * p, w + 2 * p)
        middle = out.narrow(-2, p, h)  # the input's rows: the input, and its columns p..1 and w-2..w-1-p mirrored
        middle.narrow(-1, p, w).copy_(x)
        middle.narrow(-1, 0, p).copy_(_mirrored(x.narrow(-1, 1, p), -1))
        middle.narrow(-1, p + w, p).copy_(_mirrored(x.narrow(-1, w - 1 - p, p), -1))
        out.narrow(-2, 0, p).copy_(_mirrored(out.narrow(-2, p + 1, p), -2))  # whole padded rows, corners included
        out.narrow(-2, p + h, p).copy_(_mirrored(out.narrow(-2, h - 1, p), -2))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        p = ctx.p
        h, w = grad.shape[-2] - 2 * p, grad.shape[-1] - 2 * p
        rows = grad.narrow(-2, p, h).clone(memory_format=torch.preserve_format)
        rows.narrow(-2, 1, p).add_(_mirrored(grad.narrow(-2, 0, p), -2))
        rows.narrow(-2, h - 1 - p, p).add_(_mirrored(grad.narrow(-2, p + h, p), -2))
        out = rows.narrow(-1, p, w).clone(memory_format=torch.preserve_format)
        out.narrow(-1, 1, p).add_(_mirrored(rows.narrow(-1, 0, p), -1))
        out.narrow(-1, w - 1 - p, p).add_(_mirrored(rows.narrow(-1, p + w, p), -1))
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


class _InstanceNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None,  # type: ignore[override]
                eps: float) -> Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        var, mean = torch.var_mean(wide, dim=(2, 3), unbiased=False, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, mean, rstd, weight)
        out = (wide - mean) * rstd
        if weight is not None:
            out = out * weight.to(wide.dtype)[:, None, None] + bias.to(wide.dtype)[:, None, None]
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, mean, rstd, weight = ctx.saved_tensors
        normalised = (x.to(mean.dtype) - mean) * rstd
        wide = grad.to(mean.dtype)
        grad_weight = grad_bias = None
        if weight is not None:
            grad_weight = (wide * normalised).sum(dim=(0, 2, 3)).to(weight.dtype)
            grad_bias = wide.sum(dim=(0, 2, 3)).to(weight.dtype)
            wide = wide * weight.to(wide.dtype)[:, None, None]
        mean_grad = wide.mean(dim=(2, 3), keepdim=True)
        mean_projection = (wide * normalised).mean(dim=(2, 3), keepdim=True)
        grad_x = ((wide - mean_grad - normalised * mean_projection) * rstd).to(x.dtype)
        return grad_x, grad_weight, grad_bias, None


def instance_norm_channels_last(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                                eps: float = 1e-5) -> Tensor:
    """``F.instance_norm(x, weight=weight, bias=bias, eps=eps)`` (no running statistics) of a ``(B, C, H, W)``
    tensor, statistics and arithmetic in float32 at least, the result in ``x``'s dtype and memory format."""
    if (weight is None) != (bias is None):
        raise ValueError("instance_norm_channels_last takes both weight and bias, or neither")
    return _InstanceNorm.apply(x, weight, bias, eps)


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d(channels, affine=affine)`` without running statistics (the state dict holds ``weight``
    and ``bias`` when affine, nothing otherwise), channels-last in and out on a channels-last input
    (``instance_norm_channels_last``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False) -> None:
        super().__init__(num_features, eps=eps, affine=affine, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        if _channels_last_only(x):
            if x.shape[1] != self.num_features:
                raise ValueError(f"expected {self.num_features} channels, got {x.shape[1]}")
            return instance_norm_channels_last(x, self.weight, self.bias, self.eps)
        return super().forward(x)
