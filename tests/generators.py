"""Checks every generator's tests share (importable from tests: conftest puts tests/ on sys.path)."""

from __future__ import annotations

import torch


def assert_forward_backward(model: torch.nn.Module, size: tuple[int, int], batch: int = 2) -> None:
    """``model(image, source pose, target pose)`` gives a ``(B, 3, H, W)`` image in [-1, 1], and a loss on it sends a
    non-zero gradient to every parameter."""
    image = torch.rand(batch, 3, *size) * 2 - 1
    source_pose, target_pose = torch.rand(batch, 18, *size), torch.rand(batch, 18, *size)
    out = model(image, source_pose, target_pose)
    assert out.shape == (batch, 3, *size)
    assert out.abs().max() <= 1
    out.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
