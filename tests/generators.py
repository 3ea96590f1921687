"""Checks every generator's tests share (importable from tests: conftest puts tests/ on sys.path)."""

from __future__ import annotations

import torch

# GFLA's loss weights per stage (the official options; the paper recipes hold them too)
GFLA_STAGE_WEIGHTS = {
    1: {"lambda_correctness": 20.0, "lambda_regularization": 0.01, "lambda_l1": 0.0, "lambda_perceptual": 0.0,
        "use_gan": False},
    2: {"lambda_correctness": 5.0, "lambda_regularization": 0.0025, "lambda_l1": 5.0, "lambda_perceptual": 0.5,
        "lambda_style": 500.0, "lambda_gan": 2.0},
}


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


def assert_compiled_step_is_eager(cfg, size: tuple[int, int], batch, device: str = "cpu") -> tuple:
    """``train_step`` of ``cfg``'s parts on ``device``, built from seed 0 and run on ``batch`` with seed 1, eagerly
    and after ``compile_configured`` with ``compile: true`` (and ``cfg``'s other compile fields): the same losses
    (1e-4 relative) and generator gradients (1e-3 relative, 1e-5 absolute). Returns the eager parts, the compiled
    parts and the eager losses, for checks of their own."""
    import dataclasses

    import pytest

    from pgpig.train import build, compile_configured, train_step

    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        parts = build(cfg, torch.device(device), size)
        if compiled:
            compile_configured(parts, dataclasses.replace(cfg, compile=True))
        plain = getattr(parts.generator, "_orig_mod", parts.generator)
        torch.manual_seed(1)
        _, losses = train_step(parts, cfg, batch)
        runs.append((parts, {k: float(v.detach()) for k, v in losses.items()},
                     {n: p.grad.clone() for n, p in plain.named_parameters() if p.grad is not None}))
    (eager, eager_losses, eager_grads), (compiled, losses, grads) = runs
    assert losses.keys() == eager_losses.keys()
    for name, value in eager_losses.items():
        assert losses[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert grads.keys() == eager_grads.keys() and grads
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5)
    return eager, compiled, eager_losses
