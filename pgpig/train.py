"""Training a pose-guided generator on a pgpig shard set: the loop, top to bottom, in ``train(cfg)``.

One iteration: batch from the loader → pose maps rendered on the device → ``train_step`` (forward, the family's
losses, generator step, discriminator step on real and pooled generated pairs) → log → samples and validation →
checkpoint. The model family's ``Objective`` (``pgpig.models.objective``) builds its networks and computes its
losses; everything here is the same for every family. The configuration is ``pgpig.config``, the checkpoint files
``pgpig.checkpoint``, the sample pictures ``pgpig.samples``.

Resume is exact (``N`` steps straight equal ``k`` steps + resume to ``N``, bit for bit on the CPU), Ctrl-C and
SIGTERM stop at a step boundary with a checkpoint to resume from, and ``torchrun`` runs the same loop data-parallel;
how these work, and PATN's training recipe this loop follows (the official tengteng95/Pose-Transfer code), are in
``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from pgpig import models
from pgpig.checkpoint import CHECKPOINTS, load_checkpoint, load_init_weights, save_checkpoint, step_folders
from pgpig.config import TrainConfig, check_config, config_dict, resolve_amp, resolve_speed
from pgpig.data import (
    POSE_STICK_CHANNELS,
    PairDataset,
    make_loader,
    render_pose_disks,
    render_pose_maps,
    render_pose_sticks,
    start_epoch,
    usable_cores,
)
from pgpig.ema import WeightAverage
from pgpig.errors import TrainError
from pgpig.losses import l1_loss
from pgpig.memory import MemoryEstimate, check_memory
from pgpig.models.objective import Objective, StepBatch, generated_image
from pgpig.samples import pair_grid, save_png
from pgpig.step_graph import GraphedStep
from pipeline.devices import resolve_device
from schemas.files import atomic_path
from schemas.keypoints import NUM_KEYPOINTS

__all__ = ["AMP_DTYPES", "HOST_DRAWN_ENCODINGS", "HistoryPool", "Parts", "TrainInterrupted", "build", "build_generator",
           "compile_parts", "lr_factor", "pose_channels", "pose_maps", "prepare_batch", "steps_per_schedule_epoch",
           "total_steps", "train", "train_step"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------------- schedule


def _step_seed(seed: int, step: int, rank: int) -> int:
    """The global RNG seed of ``step`` on ``rank``: a function of these alone, so resume reproduces dropout."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def steps_per_schedule_epoch(cfg: TrainConfig, train_pairs: int) -> int:
    """Optimizer steps in one epoch of the LR schedule: ``ceil(pairs / batch_size)`` (PATN keeps ragged batches)."""
    return math.ceil((cfg.schedule_epoch_pairs or train_pairs) / cfg.batch_size)


def total_steps(cfg: TrainConfig, train_pairs: int) -> int:
    """``cfg.steps``, or for ``steps: null`` the whole linear schedule."""
    if cfg.steps is not None:
        return cfg.steps
    return (cfg.lr_constant_epochs + cfg.lr_decay_epochs) * steps_per_schedule_epoch(cfg, train_pairs)


def lr_factor(cfg: TrainConfig, step: int, train_pairs: int) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based): 1, or PATN's linear decay by schedule epochs
    (``docs/training.md``), times the warm-up's ``lr_warmup_start + (1 - lr_warmup_start) * step / lr_warmup_steps``
    until it reaches 1 (tensorfn's linear phase, which PIDM's scheduler steps before each optimizer step)."""
    warmup = 1.0
    if step < cfg.lr_warmup_steps:
        warmup = cfg.lr_warmup_start + (1.0 - cfg.lr_warmup_start) * step / cfg.lr_warmup_steps
    if cfg.lr_policy == "constant":
        return warmup
    epoch = step // steps_per_schedule_epoch(cfg, train_pairs) + 1  # counted from 1, as the official loop
    return warmup * max(0.0, 1.0 - max(0, epoch + 1 - cfg.lr_constant_epochs) / (cfg.lr_decay_epochs + 1))


HOST_DRAWN_ENCODINGS = frozenset({"sticks"})
"""Pose encodings drawn on the host (OpenCV): their maps are best made from keypoints already there."""


def pose_maps(cfg: TrainConfig, keypoints: torch.Tensor, size: tuple[int, int],
              device: torch.device | None = None) -> torch.Tensor:
    """The pose maps ``(B, pose_channels(cfg), H, W)`` a run of ``cfg`` feeds its generator, from ``(B, 18, 2)``
    keypoints, on ``device`` (default: the keypoints'; training, validation and ``pgpig generate`` all render them
    here): Gaussians of ``sigma``, PG2's binary disks of ``pose_radius`` (both drawn on that device) or PIDM's
    stick figure and limb distances (``pose_encoding``; drawn on the host, ``HOST_DRAWN_ENCODINGS``), in
    ``[0, 1]``."""
    if cfg.pose_encoding == "sticks":
        return render_pose_sticks(keypoints, size, device)
    if device is not None:
        keypoints = keypoints.to(device, non_blocking=True)
    if cfg.pose_encoding == "disk":
        return render_pose_disks(keypoints, size, cfg.pose_radius)
    return render_pose_maps(keypoints, size, cfg.sigma)


def pose_channels(cfg: TrainConfig) -> int:
    """Channels of ``pose_maps(cfg, ...)``: 18, one per joint, or PIDM's 20 (``sticks``)."""
    return POSE_STICK_CHANNELS if cfg.pose_encoding == "sticks" else NUM_KEYPOINTS


# ---------------------------------------------------------------------------------------------------- one step


class HistoryPool:
    """Generated pairs from earlier steps, mixed into a discriminator's fake batch (PATN's ``--pool_size``).

    The idea of Shrivastava et al. (CVPR 2017, arXiv:1612.07828), as the PATN code uses it: until ``size`` items are
    held, each new item is stored and used; afterwards each new item is, with probability 1/2, swapped for a random
    held one (the old one is used, the new one stored), else used directly. Items are tuples of tensors (the
    generated image and the discriminator's condition), taken one batch row at a time. Draws use the global torch
    RNG, which the training loop seeds per step.
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.items: list[tuple[torch.Tensor, ...]] = []

    def query(self, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.size == 0:
            return batch
        chosen = []
        for row in zip(*(t.detach() for t in batch), strict=True):
            if len(self.items) < self.size:
                self.items.append(row)
            elif torch.rand(()) < 0.5:
                k = int(torch.randint(self.size, ()))
                self.items[k], row = row, self.items[k]
            chosen.append(row)
        return tuple(torch.stack(column) for column in zip(*chosen, strict=True))

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.items:
            return {}
        return {str(i): torch.stack([item[i] for item in self.items]).cpu() for i in range(len(self.items[0]))}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        columns = [state[str(i)].to(device) for i in range(len(state))]
        self.items = list(zip(*(list(c) for c in columns), strict=True)) if columns else []


@dataclass
class Parts:
    """The models, objective, optimizers and pools of a run (``build``); ``train_step`` uses them."""

    generator: torch.nn.Module
    discriminators: dict[str, torch.nn.Module]
    objective: Objective
    """The family's losses (``pgpig.models.objective``), holding its loss networks (VGG) on the device."""
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler
    pools: dict[str, HistoryPool]
    ema: WeightAverage | None = None
    """The average of the generator's weights (``ema_decay`` > 0), updated after each generator step."""


def build_generator(cfg: TrainConfig, size: tuple[int, int]) -> torch.nn.Module:
    """The generator a config describes for ``(H, W)`` images, freshly initialised (training and ``pgpig generate``
    build it so). No loss network is built."""
    return models.objective_class(cfg.model).build_generator(cfg, size)


def build(cfg: TrainConfig, device: torch.device, size: tuple[int, int]) -> Parts:
    """Generator, discriminators, objective, optimizers and pools of ``cfg`` for ``(H, W)`` images on ``device``."""
    cfg = resolve_speed(cfg, device)
    if device.type == "cuda":  # process-wide: the training process builds one set of parts
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    objective = models.objective_class(cfg.model)(cfg, device)
    generator = objective.build_generator(cfg, size).to(device)
    discriminators = {name: d.to(device) for name, d in objective.build_discriminators(size).items()}
    objective.build_losses()
    if cfg.channels_last:
        for module in (generator, *discriminators.values()):
            module.to(memory_format=torch.channels_last)
    ema = WeightAverage(generator, cfg.ema_decay, cfg.ema_start) if cfg.ema_decay > 0 else None
    # parameters the objective holds fixed (PG2's G1 in stage 2) are not optimised
    fused = cfg.fused_adam or None  # None: PyTorch's default implementation for the device
    capturable = bool(cfg.cuda_graph) and device.type == "cuda"  # a CUDA graph replays the update
    opt_g = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.betas,
                             fused=fused, capturable=capturable)
    # one Adam over all discriminators: Adam is per parameter, so this equals PATN's one optimizer per D
    opt_d = torch.optim.Adam([p for d in discriminators.values() for p in d.parameters()],
                             lr=cfg.lr * cfg.d_lr_ratio, betas=cfg.d_betas or cfg.betas,
                             fused=fused, capturable=capturable) if discriminators else None
    # fp16 needs loss scaling against gradient underflow; bf16 has float32's range and does not
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    pools = {name: HistoryPool(cfg.pool_size) for name in discriminators}
    return Parts(generator, discriminators, objective, opt_g, opt_d, scaler, pools, ema)


def compile_parts(parts: Parts, setting: bool | str = True, losses: bool = False,
                  channels_last: bool = False) -> None:
    """``torch.compile`` the generator, the discriminators and the objective's loss maths on VGG features
    (``Objective.compiled_maths``: the content and style losses' float32 casts, distances and Gram matrices, GFLA's
    sampling correctness, in fused kernels instead of eager copies of every feature map) in place, after any DDP
    wrapping; the generator alone when ``setting`` (the config's ``compile``) is ``generator``; with ``losses`` (the
    config's ``compile_losses``), the objective's loss networks (VGG-19) too; with ``channels_last`` (the config's
    ``compile_channels_last``), every graph's convolutions laid out channels-last by inductor.

    A discriminator's spectral-norm hooks (DPTN's) stay eager: each forward's power iteration updates the ``u``
    vector in place, and a discriminator runs on real and fake images before one backward; eager spectral norm
    differentiates through a copy of ``u``, but the compiled graph kept the buffer itself, whose second update
    then failed the first backward ("modified by an inplace operation"). The cost is a graph break at each of
    those convolutions.

    Inductor's advice to use TF32 matrix multiplications (a UserWarning at the first float32 compile in torch 2.11, a
    log record in later versions) is silenced: the recipes chose compile with PyTorch's default arithmetic (TF32
    convolutions, full-precision matmuls), which is what their gradient checks measured
    (``pgpig/workflows/README.md``)."""
    import warnings

    from torch.nn.utils.spectral_norm import SpectralNorm

    warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores for float32 matrix multiplication",
                            category=UserWarning)

    for d in parts.discriminators.values():
        for module in d.modules():
            for key, hook in list(module._forward_pre_hooks.items()):
                if isinstance(hook, SpectralNorm):
                    module._forward_pre_hooks[key] = torch._dynamo.disable(hook)
    # inductor's forced layout cannot order the strides of a graph with symbolic sizes (it fails the compile), so
    # those graphs are compiled for each new shape instead of once for any size
    options, dynamic = ({"force_layout_optimization": True}, False) if channels_last else (None, None)
    parts.generator = torch.compile(parts.generator, dynamic=dynamic, options=options)
    if setting != "generator":
        parts.discriminators = {name: torch.compile(d, dynamic=dynamic, options=options)
                                for name, d in parts.discriminators.items()}
        for name in parts.objective.compiled_maths:
            setattr(parts.objective, name, torch.compile(getattr(type(parts.objective), name), dynamic=False,
                                                         options=options))
    if losses:
        for name, module in list(vars(parts.objective).items()):
            if isinstance(module, torch.nn.Module):
                setattr(parts.objective, name, torch.compile(module, dynamic=dynamic, options=options))


def compile_configured(parts: Parts, cfg: TrainConfig) -> None:
    """``compile_parts`` as ``cfg`` asks (``compile``, ``compile_losses``, ``compile_channels_last``); nothing when
    ``compile`` is off."""
    if cfg.compile:
        compile_parts(parts, cfg.compile, losses=cfg.compile_losses, channels_last=cfg.compile_channels_last)


def _autocast(cfg: TrainConfig, device: torch.device, cache: bool = True) -> torch.autocast:
    """Autocast to ``cfg.amp``'s dtype on ``device`` (a no-op for ``amp: none``, and for ``auto`` off CUDA);
    ``cache=False``: without the cache of weights cast to that dtype, which a CUDA graph must not keep."""
    amp = resolve_amp(cfg.amp, device)
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp != "none",
                          cache_enabled=cache)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP and/or ``torch.compile`` wrappers."""
    module = getattr(module, "_orig_mod", module)
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)


def train_step(parts: Parts, cfg: TrainConfig, batch: StepBatch,
               autocast_cache: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One generator and one discriminator update on a batch; returns the generated batch and the losses.
    ``autocast_cache=False`` for a step a CUDA graph captures (``pgpig.step_graph``)."""
    discriminators, scaler, objective = parts.discriminators, parts.scaler, parts.objective
    # -- generator forward and losses; the discriminators unwrapped (no DDP: no D gradient is wanted here) and
    # frozen, so the generator's step leaves their gradients alone
    plain = {name: _unwrap(d).requires_grad_(False) for name, d in discriminators.items()}
    with _autocast(cfg, batch.source.device, autocast_cache):
        generated, loss_g, losses = objective.generator_loss(parts.generator, plain, batch)
    losses["g_total"] = loss_g

    # -- generator backward and step
    parts.opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(parts.opt_g)
        # the norm before clipping, logged: how often and how hard the clip acts
        losses["grad_norm"] = torch.nn.utils.clip_grad_norm_(
            [p for g in parts.opt_g.param_groups for p in g["params"]], cfg.grad_clip)
    scaler.step(parts.opt_g)
    if parts.ema is not None:
        parts.ema.update(_unwrap(parts.generator))

    # -- discriminators: real pairs against generated ones (through the history pools)
    if discriminators:
        for d in plain.values():
            d.requires_grad_(True)
        with _autocast(cfg, batch.source.device, autocast_cache):
            loss_d = objective.discriminator_loss(discriminators, parts.pools, batch, generated.detach())
        parts.opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(parts.opt_d)
        losses["d"] = loss_d
    scaler.update()
    return generated, losses


# ---------------------------------------------------------------------------------------------------- train


def _distributed() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment; ``(0, 0, 1)`` outside it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world



def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.shards``; returns ``{"run_dir", "step", "epoch", "losses", "speed", "memory"}``
    (losses: the last logged; memory: the ``pgpig.memory.MemoryEstimate`` of the check, ``None`` when skipped)."""
    check_config(cfg)
    if cfg.resume and cfg.run_dir is None:
        raise TrainError("resume needs the run folder: pass --resume RUN_DIR")
    if cfg.stage > 1 and cfg.init_weights is None and not cfg.resume:
        raise TrainError(f"stage {cfg.stage} starts from the weights of stage {cfg.stage - 1}: pass --init-weights "
                         f"RUN (the folder of the stage-{cfg.stage - 1} run, or its generator.safetensors)")
    rank, local_rank, world = _distributed()
    device = resolve_device(cfg.device)
    if world > 1:
        import torch.distributed as dist

        if cfg.batch_size % world:
            raise TrainError(f"batch_size {cfg.batch_size} (the global batch) does not split over {world} processes")
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    elif device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the streams and CUDA graph of a run are the current device's
    try:
        cfg = dataclasses.replace(cfg, run_dir=_run_folder(cfg, world))
        created = rank == 0 and not cfg.run_dir.exists()
        try:
            return _train(cfg, device, rank, world)
        except BaseException:
            # a folder this run made and never checkpointed into holds nothing to resume: it goes, so that a crash
            # leaves no run behind (a signal's stop writes a checkpoint first, and its folder stays)
            if created and cfg.run_dir.is_dir() and not step_folders(cfg.run_dir):
                shutil.rmtree(cfg.run_dir, ignore_errors=True)
            raise
    finally:
        if world > 1:
            dist.destroy_process_group()


@dataclass
class Position:
    """Where a run is: optimizer steps taken, the data epoch, and batches already taken from that epoch."""

    step: int = 0
    epoch: int = 0
    in_epoch: int = 0


def _train(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> dict[str, Any]:
    given, run_dir = cfg, cfg.run_dir
    cfg = resolve_speed(cfg, device)  # config.yaml keeps the recipe's auto: a resume on other hardware decides anew
    _check_run_folder(run_dir, cfg.resume)
    if world > 1 and given.cuda_graph == "auto":  # a graph replays one process's step
        cfg = dataclasses.replace(cfg, cuda_graph=False)
    _check_graph(cfg, device, world)
    _seed_all(cfg.seed)  # weights and anything else drawn before the loop; the loop re-seeds per step

    train_set = PairDataset(cfg.shards / "train", flip=cfg.flip, crop_margin=cfg.crop_margin, seed=cfg.seed,
                            verify=not cfg.skip_verify)
    size, train_pairs = train_set.size, len(train_set)
    # a dry run on throwaway networks, drawn and undone before the run's own: the run's numbers stay the same
    memory = _memory_check(cfg, device, size, rank, world)
    parts = build(cfg, device, size)  # before the loader starts: a missing VGG-19 is reported at once
    if cfg.init_weights is not None and not cfg.resume:
        load_init_weights(parts.generator, cfg.init_weights)
        if parts.ema is not None:
            parts.ema.reset(parts.generator)
    loader = _train_loader(cfg, train_set, rank, world)
    steps = total_steps(cfg, train_pairs)
    val_batch = _validation_batch(cfg) if rank == 0 else None
    at = _restore(run_dir, parts, device) if cfg.resume else Position()
    if world > 1:
        _wrap_ddp(parts, cfg, device)
    notice = _notice(cfg, rank)
    if cfg.amp == "bf16" and device.type == "cpu":
        notice("amp: bf16 on the CPU: PyTorch's oneDNN bf16 convolutions give wrong values for some small feature "
               "maps (torch 2.14.1: 256 channels or more, stride 2, width 2); float32 (--amp none) is the CPU's tested "
               "path")
    if cfg.compile:
        notice(f"torch.compile: the first steps compile {cfg.model} for {device}, up to a few minutes on a GPU "
               "(--set compile=false trains eagerly)")
    compile_configured(parts, cfg)
    graphed = GraphedStep(parts, cfg, log=notice) if cfg.cuda_graph else None
    step = graphed or functools.partial(train_step, parts, cfg)

    bar = tqdm(total=steps, initial=at.step, disable=not (cfg.progress and rank == 0), desc="train", unit="it",
               dynamic_ncols=True)
    losses: dict[str, float] = {}
    for net in (parts.generator, *parts.discriminators.values()):
        net.train()
    stop, stopped = _StopSignals(world), 0
    finished = False  # the loop and the last checkpoint ran through: a later error is this run's only one
    writer = None
    with stop:
        try:
            writer = _open_run_folder(run_dir, given, at.step if cfg.resume else None) if rank == 0 else None
            while at.step < steps and not stopped:
                start_epoch(loader, at.epoch)
                # resumed mid-epoch: the epoch's order is fixed by (seed, epoch), so dropping the batches already
                # trained on puts the loader where the interrupted run was
                for batch in islice(loader, at.in_epoch, None):
                    if at.step >= steps:
                        break
                    inputs = prepare_batch(cfg, batch, device, size)
                    if writer is not None and at.step == 0:  # the untrained generator, so every run has a picture
                        _samples(run_dir, writer, parts, cfg, inputs, None, val_batch, 0)
                    torch.manual_seed(_step_seed(cfg.seed, at.step, rank))
                    _set_lr(parts, cfg, cfg.lr * lr_factor(cfg, at.step, train_pairs))
                    generated, step_losses = step(inputs)
                    at.step += 1
                    at.in_epoch += 1
                    bar.update(1)
                    if at.step % cfg.log_every == 0 or at.step == steps:
                        losses = _log(step_losses, parts, writer, at, world)
                        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
                    if writer is not None and (at.step % cfg.sample_every == 0 or at.step == steps):
                        _samples(run_dir, writer, parts, cfg, inputs, generated, val_batch, at.step)
                    if at.step % cfg.checkpoint_every == 0 and rank == 0:
                        _checkpoint(run_dir, parts, at, size, cfg.keep_checkpoints)
                    stopped = stop.agreed()  # a signal arrived: stop at this step boundary, every rank alike
                    if stopped:
                        break
                else:
                    at.epoch, at.in_epoch = at.epoch + 1, 0
            # at the end or at a signal; not after an exception, which may have hit between the generator's and the
            # step counter's update: the last periodic checkpoint is the consistent one to resume from. Signals
            # that arrive while it is written are ignored (``_StopSignals``), so the write is never cut short.
            if rank == 0:
                _checkpoint(run_dir, parts, at, size, cfg.keep_checkpoints)
            stop.barrier()  # the other ranks exit only once rank 0's checkpoint is complete
            finished = True
        finally:
            bar.close()
            if writer is not None:
                _close_writer(writer, report=finished)
            # the DataLoader's workers shut down now, while this process still attends to them; an exception's
            # traceback would otherwise keep them until interpreter exit
            del loader
    if stopped:
        raise _interrupted(stopped, at.step, run_dir, world)
    return {"run_dir": run_dir, "step": at.step, "epoch": at.epoch, "losses": losses,
            "speed": {"device": str(device), "amp": cfg.amp, "channels_last": cfg.channels_last,
                      "compile": cfg.compile, "compile_losses": bool(cfg.compile and cfg.compile_losses),
                      "compile_channels_last": bool(cfg.compile and cfg.compile_channels_last),
                      "tf32": cfg.tf32 and device.type == "cuda",
                      "cuda_graph": graphed.state() if graphed is not None else None}, "memory": memory}


def _check_graph(cfg: TrainConfig, device: torch.device, world: int) -> None:
    """Refuse ``cuda_graph: true`` where it cannot run (the settings ``check_config`` cannot judge alone)."""
    if not cfg.cuda_graph:
        return
    if device.type != "cuda":
        raise TrainError(f"cuda_graph: true needs a CUDA device, and this run trains on {device} "
                         "(--set cuda_graph=false, or auto: on CUDA only)")
    if world > 1:
        raise TrainError(f"cuda_graph: true trains one process only, and this run has {world} "
                         "(--set cuda_graph=false)")


def _notice(cfg: TrainConfig, rank: int) -> Callable[[str], None]:
    """A function that prints a one-line notice under the progress bar, where there is one (rank 0)."""

    def notice(message: str) -> None:
        if cfg.progress and rank == 0:
            tqdm.write(message, file=sys.stderr)

    return notice


def _memory_check(cfg: TrainConfig, device: torch.device, size: tuple[int, int], rank: int,
                  world: int) -> MemoryEstimate | None:
    """``check_memory``, announced first (its dry run takes seconds to minutes for a paper-size model on a CPU);
    ``None`` when the config skips it."""
    if cfg.skip_memory_check:
        return None
    notice = _notice(cfg, rank)
    notice(f"memory check: dry-run steps of {cfg.model} at {size[0]}x{size[1]} on {device} "
           "(--skip-memory-check skips it)")
    memory = check_memory(cfg, device, size, world)
    if memory is not None:
        notice(memory.summary(cfg.batch_size // world))
    return memory


def _interrupted(signum: int, step: int, run_dir: Path, world: int) -> TrainInterrupted:
    command = f"pgpig train --resume {shlex.quote(str(run_dir))}" + (f" --gpus {world}" if world > 1 else "")
    return TrainInterrupted(signum, step, run_dir / CHECKPOINTS / f"step-{step:08d}", command)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainInterrupted(TrainError):
    """Training stopped by SIGINT or SIGTERM after writing a checkpoint at ``step`` (``checkpoint``, its folder);
    ``command`` resumes it. The CLI exits with ``128 + signum`` (130 for Ctrl-C). The training's SIGINT and SIGTERM
    handlers stay installed (a further signal prints a note): a program that goes on after catching this sets its
    own with ``signal.signal``."""

    def __init__(self, signum: int, step: int, checkpoint: Path, command: str):
        self.signum, self.step, self.checkpoint, self.command = signum, step, checkpoint, command
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}: checkpoint {checkpoint}; "
                         f"resume with: {command}")


class _StopSignals:
    """SIGINT and SIGTERM during training, as a context manager: each only sets ``signum``; the loop stops at the
    next step boundary and writes a checkpoint. Later signals, until the context exits (the checkpoint written),
    are ignored with a note on stderr, so a second Ctrl-C never cuts a write short. Installed only in the main
    thread (Python delivers signals there); the previous handlers are restored on exit, unless a signal stopped the
    run: then they stay until the process exits (``TrainInterrupted``).

    Under DDP every rank may get the signal at a different step (or only some ranks get it), so ``agreed`` takes
    the maximum over the ranks each step, through a gloo group: a few bytes between the CPUs, with no wait for the
    GPU. DataLoader workers leave the signals to this process (``_worker_signals``)."""

    def __init__(self, world: int):
        self.world = world
        self.signum = 0
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}
        self._group = None

    def __enter__(self) -> _StopSignals:
        if self.world > 1:
            import torch.distributed as dist

            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.signum:
            # stopping: the process is on its way out (the CLI exits with 128 + signum); a Ctrl-C repeated until then
            # keeps printing its note instead of raising KeyboardInterrupt half way through the exit
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self._pid:  # a forked child (DataLoader workers replace it: _worker_signals)
            return
        if self.signum:
            # os.write, not print: a handler may run in the middle of another write to sys.stderr
            os.write(2, f"pgpig train: {signal.Signals(signum).name} ignored: already stopping (the step, then "
                        "its checkpoint)\n".encode())
        else:
            self.signum = signum

    def agreed(self) -> int:
        """The signal every rank acts on now (0: none); collective under DDP, so every rank calls it every step."""
        if self.world == 1:
            return self.signum
        import torch.distributed as dist

        flag = torch.tensor([self.signum])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        self.signum = int(flag)
        return self.signum

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self._group)


def _check_run_folder(run_dir: Path, resume: bool) -> None:
    """``TrainError`` when a new run's folder already holds a run, or when the folder is what a run killed before its
    first checkpoint leaves (``kill -9``, the OOM killer): ``config.yaml`` and its pictures, no checkpoint, no
    generator (an imported one has a generator), so nothing to resume."""
    if not resume and step_folders(run_dir):
        raise TrainError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, or another --run")
    if ((run_dir / "config.yaml").is_file() and not (run_dir / "generator.safetensors").exists()
            and not step_folders(run_dir)):
        raise TrainError(f"{run_dir}: a run that stopped before its first checkpoint (killed, e.g. out of memory, "
                         "or still starting): nothing to resume; remove the folder or pass another --run")


def _run_folder(cfg: TrainConfig, world: int) -> Path:
    """``cfg.run_dir``, or a new ``runs/<model>-<timestamp>``; under DDP rank 0's, which every rank writes to (and
    resumes from)."""
    run_dir = cfg.run_dir or Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if world > 1:
        import torch.distributed as dist

        shared = [run_dir]
        dist.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    return run_dir


def _train_loader(cfg: TrainConfig, train_set: PairDataset, rank: int, world: int) -> DataLoader:
    """The loader of this rank's share of each global batch of ``shards/train``."""
    # batches do not depend on the number of workers, so more workers than cores are not worth their memory
    workers = min(cfg.num_workers, usable_cores())
    loader = make_loader(train_set, cfg.batch_size // world, shuffle=True, seed=cfg.seed, num_workers=workers,
                         rank=rank, world_size=world)
    loader.worker_init_fn = functools.partial(_worker_signals, loader.worker_init_fn)
    if len(loader) == 0:
        raise TrainError(f"{cfg.shards / 'train'} has {len(train_set)} pairs, fewer than one batch of "
                         f"{cfg.batch_size}; lower batch_size")
    return loader


def _worker_signals(init: Callable[[int], None] | None, worker: int) -> None:
    """A DataLoader worker's start: ``init``, then SIGINT ignored and SIGTERM put off for up to a minute.

    Ctrl-C reaches the terminal's whole process group, and torchrun (like systemd or SLURM) sends SIGTERM to a
    process group, so a worker gets the signal the main process is acting on; PyTorch's own SIGTERM handler would
    end it at once, and the loader would then raise in the main process, perhaps mid-checkpoint. The main process
    ends its workers itself when it stops. A worker it never ends (a hung one) dies of SIGALRM a minute after the
    first SIGTERM."""
    if init is not None:
        init(worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _put_off)


def _put_off(signum: int, frame: object) -> None:
    """A worker's SIGTERM: end the worker by SIGALRM in 60 s, or when the alarm already set goes off."""
    remaining = signal.alarm(0)  # reading the alarm clears it
    signal.alarm(remaining or 60)


def _validation_batch(cfg: TrainConfig) -> dict[str, torch.Tensor] | None:
    """The first ``val_pairs`` pairs of ``shards/test`` as one batch; ``None`` without a test split."""
    if not (cfg.shards / "test").is_dir():
        return None
    val_set = PairDataset(cfg.shards / "test", crop_margin=cfg.crop_margin, verify=not cfg.skip_verify)
    return default_collate([val_set[k] for k in range(min(cfg.val_pairs, len(val_set)))])


def _restore(run_dir: Path, parts: Parts, device: torch.device) -> Position:
    """Load the run folder's newest checkpoint into ``parts`` (models, optimizers, scaler, pools); where it was."""
    state = load_checkpoint(run_dir, parts.generator, parts.discriminators, device,
                            average=parts.ema.model if parts.ema is not None else None)
    if parts.ema is not None:
        parts.ema.updates = int(state.get("ema_updates", state["step"]))
    _load_optimizer(parts.opt_g, state["opt_g"])
    if parts.opt_d is not None:
        _load_optimizer(parts.opt_d, state["opt_d"])
    parts.scaler.load_state_dict(state["scaler"])
    for name, pool in parts.pools.items():
        pool.load_state_dict(state.get("pools", {}).get(name, {}), device)
    return Position(state["step"], state["epoch"], state["in_epoch"])


IMPLEMENTATION_KEYS = ("capturable", "fused", "foreach", "differentiable")
"""An optimizer group's choices of implementation: this run's settings (``cuda_graph``, ``fused_adam``), not the
checkpoint's, which ``load_state_dict`` would otherwise bring back (a CUDA graph run resumed on the CPU)."""


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict) -> None:
    """``opt.load_state_dict(saved)`` keeping ``opt``'s own ``IMPLEMENTATION_KEYS``."""
    groups = [{**group, **{k: live[k] for k in IMPLEMENTATION_KEYS if k in live}}
              for group, live in zip(saved["param_groups"], opt.param_groups, strict=False)]
    opt.load_state_dict({**saved, "param_groups": groups})


def _wrap_ddp(parts: Parts, cfg: TrainConfig, device: torch.device) -> None:
    """Wrap the generator and the discriminators in ``DistributedDataParallel`` in place."""
    from torch.nn.parallel import DistributedDataParallel

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if device.type == "cuda" and cfg.sync_batchnorm:
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        # broadcast_buffers off: rank 0's BN statistics broadcast in place at the discriminator's second forward
        # would overwrite tensors its first forward saved for backward; SyncBatchNorm keeps them equal anyway
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False)

    parts.generator = wrap(parts.generator)
    parts.discriminators = {name: wrap(d) for name, d in parts.discriminators.items()}


def _close_writer(writer: _Events, report: bool) -> None:
    """Close the TensorBoard writer (it flushes). A write error there (a full disk) becomes one line when nothing
    else failed; after another error it is dropped, so that the first error is the one reported."""
    try:
        writer.close()
    except TrainError:
        if report:
            raise
    finally:
        writer.release_thread_hook()


class _Events:
    """The run's TensorBoard ``SummaryWriter``, whose write errors (a full disk) become one line, worded as the
    atomic writes word theirs. The writer writes on a thread and raises what it met at the next call, so every
    call is covered. That thread also lets its ``OSError`` reach ``threading.excepthook``, which would print a
    traceback beside the line: until ``release_thread_hook``, the hook passes over an ``OSError`` of TensorBoard's
    writer threads and hands every other exception to the hook it replaced."""

    def __init__(self, writer, folder: Path):
        self._writer, self._folder = writer, folder
        self._previous_hook = threading.excepthook
        threading.excepthook = self._thread_hook

    @staticmethod
    def _tensorboard(thread: threading.Thread | None) -> bool:
        return type(thread).__module__.startswith("tensorboard.")

    def _thread_hook(self, args) -> None:
        if isinstance(args.exc_value, OSError) and self._tensorboard(args.thread):
            return
        self._previous_hook(args)

    def release_thread_hook(self) -> None:
        """Hand the hook back once any TensorBoard thread that failed has ended (it calls the hook last)."""
        for thread in threading.enumerate():
            if self._tensorboard(thread) and getattr(thread, "exception", None) is not None:
                thread.join(timeout=10)
        if threading.excepthook == self._thread_hook:
            threading.excepthook = self._previous_hook

    def __getattr__(self, name: str):  # the writer's methods (add_scalar, add_image, close)
        method = getattr(self._writer, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except OSError as exc:
                raise TrainError(f"{self._folder}: cannot write ({exc.strerror or exc}); checkpoints written before "
                                 "are kept: make room (or fix the file system) and run the same command again") from exc

        return call


def _open_run_folder(run_dir: Path, given: TrainConfig, purge_step: int | None):
    """Write ``config.yaml`` (the config as given, ``auto`` kept) and ``samples/``; the TensorBoard writer."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config_dict(given), sort_keys=False))
    (run_dir / "samples").mkdir(exist_ok=True)
    return _Events(SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step), run_dir / "tensorboard")


def _set_lr(parts: Parts, cfg: TrainConfig, lr: float) -> None:
    """The generator's learning rate ``lr``, the discriminators' ``lr * d_lr_ratio``."""
    for opt, ratio in ((parts.opt_g, 1.0), (parts.opt_d, cfg.d_lr_ratio)):
        for group in opt.param_groups if opt is not None else ():
            group["lr"] = lr * ratio


def prepare_batch(cfg: TrainConfig, batch: dict[str, torch.Tensor], device: torch.device,
                  size: tuple[int, int]) -> StepBatch:
    """A loader batch on ``device`` with its pose maps ``(B, 18, H, W)`` rendered there (channels-last if asked);
    host-drawn encodings are drawn from the loader's keypoints, so the host never waits for the GPU here."""

    def to_device(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if cfg.channels_last else images

    source_kp = batch["source_kp"].to(device, non_blocking=True)
    target_kp = batch["target_kp"].to(device, non_blocking=True)
    on_host = cfg.pose_encoding in HOST_DRAWN_ENCODINGS
    source_pose, target_pose = (pose_maps(cfg, batch[key] if on_host else kp, size, device)
                                for key, kp in (("source_kp", source_kp), ("target_kp", target_kp)))
    return StepBatch(to_device(batch["source"]), to_device(batch["target"]), to_device(source_pose),
                     to_device(target_pose), source_kp, target_kp)


def _log(step_losses: dict[str, torch.Tensor], parts: Parts, writer, at: Position, world: int) -> dict[str, float]:
    """The step's losses, averaged over the processes, written to TensorBoard (rank 0); returns them."""
    values = torch.stack([v.detach().float() for v in step_losses.values()])
    if world > 1:
        torch.distributed.all_reduce(values)
        values /= world
    losses = dict(zip(step_losses, values.tolist(), strict=True))
    if writer is not None:
        for name, value in losses.items():
            writer.add_scalar(f"train/{name}", value, at.step)
        writer.add_scalar("train/epoch", at.epoch, at.step)
        writer.add_scalar("train/lr", parts.opt_g.param_groups[0]["lr"], at.step)
    return losses


def _samples(run_dir: Path, writer, parts: Parts, cfg: TrainConfig, inputs: StepBatch,
             generated: torch.Tensor | None, val_batch: dict[str, torch.Tensor] | None, step: int) -> None:
    """The training batch's sample grid (PNG and TensorBoard), and the validation L1 and grid (rank 0).
    ``generated=None`` (step 0): the generator's image of ``inputs`` in eval mode, no state changed."""
    generator = _unwrap(parts.generator)
    if generated is None:
        generator.eval()
        with torch.no_grad(), _autocast(cfg, inputs.source.device):
            generated = generated_image(generator(inputs.source, inputs.source_pose, inputs.target_pose))
        generator.train()
    extra = parts.objective.sample_columns(generator, inputs)
    grid = pair_grid(inputs.source, inputs.source_pose, inputs.target_pose, generated, inputs.target, extra=extra)
    save_png(run_dir / "samples" / f"step-{step:06d}.png", grid)
    writer.add_image("train/samples", grid, step)
    if val_batch is not None:
        size = (inputs.source_pose.shape[-2], inputs.source_pose.shape[-1])  # the pose maps' (H, W)
        shown = parts.ema.model if parts.ema is not None else generator
        _validate(shown, parts.objective, prepare_batch(cfg, val_batch, inputs.source.device, size), cfg, writer, step)


def _checkpoint(run_dir: Path, parts: Parts, at: Position, size: tuple[int, int], keep: int) -> None:
    """Save the plain models and the train state at ``at`` (rank 0)."""
    state = {"step": at.step, "epoch": at.epoch, "in_epoch": at.in_epoch, "opt_g": parts.opt_g.state_dict(),
             "opt_d": parts.opt_d.state_dict() if parts.opt_d is not None else {},
             "scaler": parts.scaler.state_dict(),
             "pools": {name: pool.state_dict() for name, pool in parts.pools.items()}}
    if parts.ema is not None:
        state["ema_updates"] = parts.ema.updates
    save_checkpoint(run_dir, at.step, _unwrap(parts.generator),
                    {name: _unwrap(d) for name, d in parts.discriminators.items()}, state, size, keep,
                    average=parts.ema.model if parts.ema is not None else None)


def _validate(generator: torch.nn.Module, objective: Objective, batch: StepBatch, cfg: TrainConfig, writer,
              step: int) -> None:
    """L1 and a sample grid of the fixed validation pairs, in eval mode (rank 0, the plain module)."""
    training = generator.training  # the average's copy stays in eval mode
    generator.eval()
    with torch.no_grad(), _autocast(cfg, batch.source.device):
        generated = generated_image(generator(batch.source, batch.source_pose, batch.target_pose))
        writer.add_scalar("val/l1", l1_loss(generated, batch.target).item(), step)
        extra = objective.sample_columns(generator, batch)
    writer.add_image("val/samples", pair_grid(batch.source, batch.source_pose, batch.target_pose, generated,
                                              batch.target, extra=extra), step)
    generator.train(training)

