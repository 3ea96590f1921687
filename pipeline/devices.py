"""Which torch device a ``--device`` option names (``auto``, ``cpu``, ``cuda``, ``cuda:N``), for both CLIs."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device", "visible_gpus"]


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


def visible_gpus() -> int:
    """The CUDA devices this process may use, without starting CUDA where it is not started yet: torch counts them
    with NVML then (``torch.cuda.device_count``), in ~0.02 s against ~0.2 s for the driver's start that
    ``torch.cuda.is_available`` makes (an H100, ``benchmarks/cuda_start.py``). Counted once per
    ``CUDA_VISIBLE_DEVICES``. A GPU that NVML sees but CUDA cannot start still counts: its first use fails or falls
    back to the CPU, as ``resolve_device`` says."""
    return _gpu_count(os.environ.get("CUDA_VISIBLE_DEVICES"))


@functools.lru_cache(maxsize=4)
def _gpu_count(visible: str | None) -> int:
    import torch

    return torch.cuda.device_count()
