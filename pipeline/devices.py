"""Which torch device a ``--device`` option names (``auto``, ``cpu``, ``cuda``, ``cuda:N``), for both CLIs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda:0`` when a GPU is visible, else ``cpu``; a name CUDA cannot serve is a ``PipelineError``."""
    import torch

    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PipelineError(f"device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
    return device
