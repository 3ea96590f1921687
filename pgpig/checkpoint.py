"""Checkpoints of a training run: written whole or not at all, read back for ``--resume`` and ``init_weights``.

A checkpoint is a folder ``RUN/checkpoints/step-NNNNNNNN/`` of ``generator.safetensors`` (metadata: the step and
the trained image size), ``discriminators.safetensors`` (when the run has discriminators) and ``train_state.pt``
(optimizers, scaler, step, epoch, position in the epoch, history pools: plain tensors and dicts, read back with
``torch.load(weights_only=True)``), and ``generator-ema.safetensors`` when the run keeps a weight average
(``ema_decay``). ``RUN/generator.safetensors`` is the newest generator (the average, when kept), for ``pgpig
generate`` and ``pgpig eval``.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pgpig.errors import TrainError
from schemas.files import atomic_path, fsync_dir

__all__ = ["CHECKPOINTS", "EMA_NAME", "load_checkpoint", "load_init_weights", "save_checkpoint", "step_folders"]


EMA_NAME = "generator-ema"
"""A checkpoint's file of the generator's weight average (``generator-ema.safetensors``), when the run keeps one."""

CHECKPOINTS = "checkpoints"
"""Sub-folder of a run holding one complete folder per checkpoint, ``step-00001000/``."""


def step_folders(run_dir: Path) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first (temporary ``.step-*.tmp`` ones excluded)."""
    folders = [p for p in (run_dir / CHECKPOINTS).glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[5:]))


def save_checkpoint(run_dir: Path, step: int, generator: torch.nn.Module, discriminators: dict[str, torch.nn.Module],
                    state: dict[str, Any], image_size: tuple[int, int], keep: int,
                    average: torch.nn.Module | None = None) -> None:
    """Write ``checkpoints/step-N/`` whole or not at all, point ``RUN/generator.safetensors`` at it, prune old ones.
    ``average``: the weight average (``generator-ema.safetensors``), which ``RUN/generator.safetensors`` then is.

    The files go into a temporary folder, each fsynced; one rename makes the folder visible, so a kill at any
    moment leaves the previous checkpoint intact and never a mix of two steps."""
    root = run_dir / CHECKPOINTS
    final = root / f"step-{step:08d}"
    if final.is_dir():  # this step is already saved (the exit checkpoint right after a periodic one)
        return
    tmp = root / f".step-{step:08d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    # the generator file alone says what it generates: step, and the (cropped) image size it was trained at
    meta = {"step": str(step), "height": str(image_size[0]), "width": str(image_size[1])}
    for name, module in (("generator", generator), (EMA_NAME, average)):
        if module is not None:
            weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            with atomic_path(tmp / f"{name}.safetensors") as path:
                save_file(weights, str(path), metadata=meta)
    if discriminators:
        d_weights = {f"{name}.{k}": v.detach().cpu().contiguous()
                     for name, d in discriminators.items() for k, v in d.state_dict().items()}
        with atomic_path(tmp / "discriminators.safetensors") as path:
            save_file(d_weights, str(path), metadata=meta)
    with atomic_path(tmp / "train_state.pt") as path:
        torch.save(state, path)
    os.rename(tmp, final)
    fsync_dir(root)
    # the latest generator beside config.yaml, where `pgpig generate` and eval look (the average, when kept): a
    # hard link swapped in atomically (a copy where the file system has no hard links)
    shown = final / f"{EMA_NAME if average is not None else 'generator'}.safetensors"
    with atomic_path(run_dir / "generator.safetensors") as path:
        path.unlink()
        try:
            os.link(shown, path)
        except OSError:
            shutil.copyfile(shown, path)
    for old in step_folders(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_init_weights(generator: torch.nn.Module, path: Path) -> None:
    """Copy the tensors of the safetensors file ``path`` into ``generator`` by name (``init_weights``)."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise TrainError(f"{path}: cannot read the init_weights file ({exc})") from None
    own = generator.state_dict()
    unknown = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(tensors) & set(own) if tensors[k].shape != own[k].shape)
    if unknown or wrong or not tensors:
        why = (f"{len(unknown)} tensors the generator lacks (first: {unknown[0]})" if unknown else
               f"{len(wrong)} tensors of another shape (first: {wrong[0]}, {tuple(tensors[wrong[0]].shape)} vs "
               f"{tuple(own[wrong[0]].shape)})" if wrong else "no tensors")
        raise TrainError(f"{path}: init_weights does not fit this {type(generator).__name__} generator: {why}")
    generator.load_state_dict(tensors, strict=False)


def load_checkpoint(run_dir: Path, generator: torch.nn.Module, discriminators: dict[str, torch.nn.Module],
                    device: torch.device, average: torch.nn.Module | None = None) -> dict[str, Any]:
    """Load the newest checkpoint folder into the models (and the weight average, when given) and return its train
    state; ``TrainError`` if none."""
    folders = step_folders(run_dir)
    if not folders:
        raise TrainError(f"{run_dir}: no checkpoint to resume ({CHECKPOINTS}/step-* missing); start a new run "
                         "instead")
    for stale in (run_dir / CHECKPOINTS).glob(".step-*.tmp"):  # a checkpoint a kill interrupted
        shutil.rmtree(stale, ignore_errors=True)
    folder = folders[-1]
    try:
        state = torch.load(folder / "train_state.pt", map_location="cpu", weights_only=True)
        files = {"generator.safetensors": {"": generator}}
        if discriminators:
            files["discriminators.safetensors"] = {f"{n}.": d for n, d in discriminators.items()}
        if average is not None:
            files[f"{EMA_NAME}.safetensors"] = {"": average}
        for name, parts in files.items():
            path = folder / name
            with safe_open(str(path), framework="pt") as f:
                step = int((f.metadata() or {}).get("step", -1))
            if step != state["step"]:
                raise TrainError(f"{path} is from step {step} but its train_state.pt from step {state['step']}: "
                                 "the folder was changed by hand; remove it to resume from the one before")
            tensors = load_file(str(path), device=str(device))
            for prefix, module in parts.items():
                module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    except (OSError, RuntimeError, KeyError, SafetensorError, pickle.UnpicklingError) as exc:
        if isinstance(exc, pickle.UnpicklingError):  # torch's own text suggests weights_only=False: never do that
            reason = "not plain tensors: weights-only loading refused to unpickle it"
        else:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainError(f"{folder}: cannot read the checkpoint ({reason}); it is damaged or from another recipe; "
                         "remove it to resume from the one before") from None
    return state
