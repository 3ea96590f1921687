"""Training a pose-guided generator on a pgpig shard set: the whole loop, top to bottom, in ``train(cfg)``.

Order of one iteration: batch from the loader → pose maps rendered on the device → forward → losses (L1 +
perceptual, + adversarial when ``use_gan``) → generator step → discriminator step on real and (pooled) generated
pairs → log → samples and validation → checkpoint. ``train_step`` is that iteration's maths on tensors, shared with
``benchmarks/train_bench.py``; the model family's ``Objective`` (``pgpig.models.objective``, chosen by the model's
registration) builds its networks and computes its losses, and everything else here is the same for every family.

PATN's training, as the official tengteng95/Pose-Transfer code does it (``train.py``, ``models/PATN.py``,
``losses/L1_plus_perceptualLoss.py``, ``options/*.py``, the README's train commands; read for these facts):

- Generator loss ``lambda_A * L1 + lambda_B * L1(VGG19[:relu1_2](G), VGG19[:relu1_2](target)) + lambda_GAN *
  (GAN_appearance + GAN_shape) / 2``; each discriminator's loss ``lambda_GAN * (real + fake) / 2``. DeepFashion:
  ``lambda_A = lambda_B = 1``, LSGAN; Market-1501: ``lambda_A = lambda_B = 10``, vanilla GAN (``--no_lsgan``);
  ``lambda_GAN = 5`` on both. Adam, lr 2e-4, betas (0.5, 0.999), for G and both Ds.
- The discriminators see generated pairs through a history pool of past fakes (``--pool_size``: 50 by default,
  which the Market-1501 command keeps; the DeepFashion command passes 0).
- The learning rate is constant for ``--niter 500`` epochs, then falls linearly to zero over ``--niter_decay 200``
  (``lr = lr0 * (1 - max(0, k + 1 - niter) / (niter_decay + 1))`` in epoch ``k``, counted from 1, so the last
  epoch runs at 0), where an "epoch" is 4,000 randomly drawn pairs (the keypoint data set's ``__len__`` in
  training). Here: ``lr_policy: linear`` with ``schedule_epoch_pairs: 4000``, ``lr_constant_epochs: 500``,
  ``lr_decay_epochs: 200``, and the step count follows (``steps: null``). The pairs themselves come as whole
  shuffled passes over the shard set (each pair once per pass) instead of independent draws.

Decisions:

- Resume is exact: the checkpoint stores the step, the epoch and the number of batches already taken from that
  epoch; the loader's order and flips depend only on ``(seed, epoch)`` (``pgpig.data``), so a resumed run skips
  exactly the consumed batches (they are decoded and dropped, not trained on). The global torch RNG (dropout, the
  history pool) is re-seeded from ``(seed, step, rank)`` before every step, so the random state never depends on
  how many DataLoader iterators were created before (each one draws a base seed from the global RNG); the pools'
  contents are part of the checkpoint; the learning rate is a function of the step. Together: ``N`` steps
  straight equal ``k`` steps + resume to ``N``, bit for bit on CPU.
- A checkpoint is a folder ``checkpoints/step-NNNNNNNN/`` of ``generator.safetensors`` (metadata: step and the
  trained image size), ``discriminators.safetensors`` (``use_gan``) and ``train_state.pt`` (optimizers, scaler,
  step, epoch, position, pools; saved with ``torch.save`` from plain tensors and dicts, read back with
  ``torch.load(weights_only=True)``). It is written under a temporary name and renamed when complete, so a kill
  mid-write leaves the previous checkpoint whole; ``keep_checkpoints`` folders are kept. ``RUN/generator.safetensors``
  is the newest generator (a hard link), for ``pgpig generate`` and evaluation.
- Data parallel: launched by ``torchrun`` (``WORLD_SIZE`` > 1; ``pgpig train --gpus N`` launches it), each
  process trains one device under ``DistributedDataParallel``; ``batch_size`` is the global batch, dealt so that
  rank ``r`` gets every ``world``-th pair of the same global batch a single process would take. Rank 0 alone
  writes the run folder. Discriminators run unwrapped in the generator's step (no gradient of theirs is wanted
  there). Batch norm normalises each process's share (``sync_batchnorm: true`` for ``SyncBatchNorm`` on CUDA);
  running statistics are not broadcast from rank 0 (each rank keeps its own; rank 0's are saved).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import random
import shutil
import time
import typing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import default_collate
from tqdm import tqdm

from pgpig import models
from pgpig.data import PairDataset, make_loader, render_pose_disks, render_pose_maps, start_epoch
from pgpig.errors import TrainError
from pgpig.losses import l1_loss
from pgpig.models.objective import Objective, StepBatch, generated_image
from pipeline.devices import resolve_device
from schemas.files import atomic_path, fsync_dir

__all__ = ["HistoryPool", "Parts", "StepBatch", "TrainConfig", "build", "build_generator", "compile_parts",
           "load_config", "lr_factor", "pair_grid", "pose_image", "pose_maps", "resolve_speed",
           "sample_grid",
           "save_png", "step_folders", "train", "train_step"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Everything a training run depends on; a recipe YAML sets some of these fields and nothing else."""

    shards: Path = Path("shards")
    """Shard-set root with ``train/`` (and ``test/`` for validation, if present), from ``pgpig-data pair``."""
    run_dir: Path | None = None
    """Output folder (config, checkpoints, samples, TensorBoard); default ``runs/<model>-<YYYYmmdd-HHMMSS>``."""
    resume: bool = False
    """Continue the run in ``run_dir`` from its last checkpoint instead of starting fresh."""
    model: str = "patn"
    """Generator name in the ``pgpig.models`` registry."""
    generator_options: dict[str, Any] | None = None
    """More constructor arguments of the generator, by the official names, on top of those the fields here give
    (GFLA and DPTN): what ``pgpig import-official`` records for a checkpoint not at the paper's widths."""
    stage: int = 1
    """Training stage of a multi-stage generator (PG2: 1 = G1 alone, 2 = G2 and its discriminator with G1 fixed,
    started from stage 1's weights with ``init_weights``); single-stage generators have only stage 1."""
    init_weights: Path | None = None
    """Generator weights to start a new run from (a ``generator.safetensors`` of an earlier run, e.g. PG2's stage 1
    for its stage 2): every tensor in the file must exist in the generator with the same shape; generator tensors
    the file lacks keep their fresh initialisation. Ignored on resume (the checkpoint has everything)."""
    ngf: int = 64
    """Generator base width (PATN paper: 64)."""
    n_blocks: int = 9
    """Generator blocks (PATN paper: 9 PAT blocks on both data sets)."""
    norm: str = "instance"
    """``instance`` (PATN DeepFashion) or ``batch`` (PATN Market-1501); the discriminators use the same."""
    dropout: float = 0.5
    """Dropout in generator and discriminator blocks (PATN official: 0.5)."""
    d_blocks: int = 3
    """Residual blocks per discriminator (PATN ``--n_layers_D 3``)."""
    crop_margin: int = 0
    """Columns cut from each side of the stored images: 40 turns DeepFashion 256x256 into PATN's 256x176."""
    sigma: float = 6.0
    """Standard deviation in pixels of the Gaussian pose maps (PATN: 6)."""
    pose_encoding: str = "gaussian"
    """Pose maps fed to the generator: ``gaussian`` (PATN's, ``sigma``) or ``disk`` (PG2's binary disks of
    ``pose_radius``, the official ``_getSparsePose`` 'Solid' maps)."""
    pose_radius: int = 4
    """Radius in pixels of the ``disk`` pose maps (PG2: 4 on both data sets)."""
    mask_radius: int = 4
    """Radius in pixels of the disks along the limbs of PG2's pose mask, which weights its L1 (official: 4)."""
    flip: bool = False
    """Mirror pairs at random (PATN trains with ``--no_flip``, so off in the paper recipes)."""
    batch_size: int = 32
    """Pairs per step (PATN Market-1501: 32; DeepFashion: 7)."""
    lr: float = 2e-4
    """Initial Adam learning rate of the generator and the discriminators (PATN: 2e-4)."""
    betas: tuple[float, float] = (0.5, 0.999)
    """Adam betas (PATN ``--beta1 0.5``)."""
    d_lr_ratio: float = 1.0
    """The discriminators' learning rate is ``lr * d_lr_ratio`` (PATN: 1; GFLA and DPTN ``--ratio_g2d 0.1``)."""
    d_betas: tuple[float, float] | None = None
    """Adam betas of the discriminators; null: ``betas`` (GFLA: ``(0.0, 0.999)``; DPTN: null, its ``(0.5, 0.999)``)."""
    lr_policy: str = "constant"
    """``constant``, or ``linear``: PATN's rule, constant, then linearly to 0 (``lr_factor``; module docstring)."""
    schedule_epoch_pairs: int | None = None
    """Pairs in one epoch of the LR schedule (PATN: 4000); null: the train split's pair count."""
    lr_constant_epochs: int = 500
    """PATN ``--niter``: the decay starts in this schedule epoch (counted from 1; 500 in the paper)."""
    lr_decay_epochs: int = 200
    """Schedule epochs of linear decay to 0 (PATN ``--niter_decay 200``)."""
    steps: int | None = 1000
    """Total optimizer steps of the run (a resumed run continues up to this number); null: the whole linear
    schedule, ``(lr_constant_epochs + lr_decay_epochs) * ceil(schedule_epoch_pairs / batch_size)``."""
    lambda_l1: float = 10.0
    """Weight of the L1 loss to the target (PATN ``--lambda_A``)."""
    lambda_perceptual: float = 10.0
    """Weight of the VGG-19 perceptual loss (PATN ``--lambda_B``)."""
    lambda_gan: float = 5.0
    """Weight of the generator's adversarial loss (PATN ``--lambda_GAN``)."""
    lambda_style: float = 0.0
    """Weight of the VGG-19 style (Gram matrix) loss (GFLA and DPTN ``--lambda_style 500``; PATN has none)."""
    lambda_correctness: float = 0.0
    """Weight of GFLA's sampling-correctness loss on the warped VGG features (``--lambda_correct 5``)."""
    lambda_regularization: float = 0.0
    """Weight of GFLA's flow regularisation (local affine) loss (``--lambda_regularization 0.0025``)."""
    t_s_ratio: float = 0.5
    """DPTN's weight of the source-to-target branch's losses; the source-to-source branch's get ``1 - t_s_ratio``
    (official ``--t_s_ratio``, ``models/DPTN_model.py``: default 0.5, DeepFashion; ``train_market.sh`` 0.8)."""
    gan_kind: str = "lsgan"
    """Adversarial loss: ``lsgan`` (PATN DeepFashion), ``vanilla`` (PATN Market-1501, ``--no_lsgan``) or ``hinge``."""
    use_gan: bool = True
    """Train the appearance and shape discriminators and add the adversarial loss (PATN: yes)."""
    pool_size: int = 0
    """Past generated pairs each discriminator also trains on (PATN Market-1501: 50, DeepFashion: 0)."""
    vgg_weights: str | None = "imagenet"
    """VGG-19 weights for the perceptual loss: ``imagenet`` (torch hub cache), a state-dict path, or null."""
    allow_random_vgg: bool = False
    """Permit ``vgg_weights: null`` (random VGG): for tests only, the perceptual loss then means little."""
    amp: str = "auto"
    """Mixed precision: ``none``, ``bf16`` (autocast), ``fp16`` (autocast + gradient scaling), or ``auto``: bf16 on
    a CUDA device that has it, float32 elsewhere (on the CPU float32 is the fast path for convolutions)."""
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun: each rank's GPU)."""
    channels_last: bool | str = False
    """Models and batches in channels-last memory format (faster convolutions with AMP for some models on recent
    GPUs); ``auto``: on a CUDA device only."""
    compile: bool | str = False
    """``torch.compile`` the generator and discriminators (slow first steps; for long GPU runs); ``auto``: on a CUDA
    device only."""
    sync_batchnorm: bool = False
    """Under DDP on CUDA, batch statistics over all GPUs (``SyncBatchNorm``). Off: each GPU normalises its own share,
    which at the recipe's per-GPU batch is the paper's one-GPU regime; SyncBatchNorm measured 3.5x slower
    (PATN Market, 2 H100s: 237 vs 825 pairs/s, ``benchmarks/results/train-ddp-h100x2.jsonl``)."""
    seed: int = 0
    """Seed of weights, data order, flips and dropout."""
    skip_verify: bool = False
    """Train without checking the shard sets first. Off: before step 0 every file the manifests list is checked
    against its size and sha256 (``ShardSet(verify=True)``, no image decoded), and a damaged set is refused."""
    num_workers: int = 4
    """DataLoader worker processes (0: load in the main process)."""
    log_every: int = 10
    """Steps between TensorBoard scalars and progress-bar updates."""
    sample_every: int = 500
    """Steps between sample grids (PNG and TensorBoard) and the validation L1."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (one is always written at the end of the run)."""
    keep_checkpoints: int = 2
    """Checkpoint folders kept in ``RUN/checkpoints/`` (the newest ones)."""
    val_pairs: int = 8
    """Test pairs for the validation L1 and the validation grid (the first ones of ``shards/test``)."""
    progress: bool = True
    """Show a tqdm progress bar."""


# ---------------------------------------------------------------------------------------------------- config


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn a YAML value into the field's type; ``TrainError`` when it cannot be."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise TrainError(f"config field {name!r} may not be null")
    if args and type(None) in args:  # Optional[X]: coerce to the first non-None type
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if hint is Path:
            return Path(value)
        if origin is tuple:
            if not isinstance(value, (list, tuple)) or len(value) != len(args):
                raise ValueError
            return tuple(_coerce(name, v, a) for v, a in zip(value, args, strict=True))
        if hint is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if set(args) == {bool, str}:  # a switch that may also be "auto" (decided per device: resolve_speed)
            if not isinstance(value, bool) and value != "auto":
                raise ValueError
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError
            return float(value)
        if hint is str:
            return str(value)
        if origin is dict:
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError
            return dict(value)
    except ValueError:
        pass
    else:
        return value
    what = "true, false or auto" if set(args) == {bool, str} else f"a {getattr(hint, '__name__', hint)}"
    raise TrainError(f"config field {name!r}: {value!r} is not {what}")


def shipped_recipes() -> dict[str, Path]:
    """The recipes installed with pgpig (``pgpig/workflows/``, which the repository's ``workflows/`` links to) by
    name: ``market1501/patn``, ``demo``, ..."""
    import importlib.resources

    root = Path(str(importlib.resources.files("pgpig") / "workflows"))
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def recipe_path(recipe: str | Path) -> Path:
    """A recipe argument as a file: an existing path as it is, else the shipped recipe of that name."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    name = str(recipe).removesuffix(".yaml").removeprefix("workflows/")
    if name in shipped:
        return shipped[name]
    raise TrainError(f"{recipe}: no such recipe file, nor a shipped recipe; shipped: {', '.join(shipped)}")


def load_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A ``TrainConfig`` from a recipe YAML (optional) with ``overrides`` on top; unknown keys are a ``TrainError``."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise TrainError(f"{path}: cannot read the recipe ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise TrainError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise TrainError(f"{path}: a recipe is a mapping of config fields, got {type(loaded).__name__}")
        values.update(loaded or {})
    values.update(overrides or {})
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        where = f"{yaml_path}: " if yaml_path is not None else ""
        raise TrainError(f"{where}unknown config keys {', '.join(unknown)}; known: {', '.join(hints)}")
    cfg = TrainConfig(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """``TrainError`` for values outside their allowed sets or ranges."""
    choices = {"amp": ("none", "bf16", "fp16", "auto"), "gan_kind": ("lsgan", "vanilla", "hinge"),
               "norm": ("instance", "batch"), "lr_policy": ("constant", "linear"),
               "pose_encoding": ("gaussian", "disk")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise TrainError(f"config field {name!r} is {getattr(cfg, name)!r}; choose one of {', '.join(allowed)}")
    for name in ("batch_size", "steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "ngf",
                 "n_blocks", "schedule_epoch_pairs", "lr_constant_epochs", "lr_decay_epochs", "stage", "pose_radius",
                 "mask_radius"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise TrainError(f"config field {name!r} must be at least 1, got {getattr(cfg, name)}")
    if cfg.d_lr_ratio <= 0:
        raise TrainError(f"config field 'd_lr_ratio' must be positive, got {cfg.d_lr_ratio}")
    if cfg.pool_size < 0:
        raise TrainError(f"config field 'pool_size' must be 0 or more, got {cfg.pool_size}")
    if cfg.steps is None and cfg.lr_policy != "linear":
        raise TrainError("steps is null, which means 'the whole LR schedule', but lr_policy is constant; "
                         "give steps or use lr_policy: linear")
    if cfg.vgg_weights is None and not cfg.allow_random_vgg:
        raise TrainError("vgg_weights is null: give a VGG-19 state dict path or 'imagenet' "
                         "(random VGG only with allow_random_vgg: true, for tests)")


def resolve_speed(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """``cfg`` with its ``auto`` speed settings decided for ``device``: on CUDA, bf16 autocast (where the GPU has
    bf16), and channels-last and ``torch.compile`` where the recipe says ``auto``; on the CPU, float32 and neither.
    The recipes' choices are the fastest correct settings measured per generator
    (``benchmarks/results/train-defaults-*.jsonl``)."""
    cuda = device.type == "cuda"
    return dataclasses.replace(cfg, amp=_amp(cfg.amp, device),
                               channels_last=cuda if cfg.channels_last == "auto" else cfg.channels_last,
                               compile=cuda if cfg.compile == "auto" else cfg.compile)


def _amp(amp: str, device: torch.device) -> str:
    if amp != "auto":
        return amp
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as YAML-friendly values (paths as strings, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
    return out


def _step_seed(seed: int, step: int, rank: int = 0) -> int:
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
    """Multiplier of ``cfg.lr`` at ``step`` (0-based): 1, or PATN's linear decay by schedule epochs (module doc)."""
    if cfg.lr_policy == "constant":
        return 1.0
    epoch = step // steps_per_schedule_epoch(cfg, train_pairs) + 1  # counted from 1, as the official loop
    return max(0.0, 1.0 - max(0, epoch + 1 - cfg.lr_constant_epochs) / (cfg.lr_decay_epochs + 1))


# ---------------------------------------------------------------------------------------------------- images


def pose_maps(cfg: TrainConfig, keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The pose maps ``(B, 18, H, W)`` a run of ``cfg`` feeds its generator, from ``(B, 18, 2)`` keypoints, on their
    device (training, validation and ``pgpig generate`` all render them here): Gaussians of ``sigma``, or PG2's
    binary disks of ``pose_radius`` (``pose_encoding``), in ``[0, 1]``."""
    if cfg.pose_encoding == "disk":
        return render_pose_disks(keypoints, size, cfg.pose_radius)
    return render_pose_maps(keypoints, size, cfg.sigma)


def pose_image(pose_maps: torch.Tensor) -> torch.Tensor:
    """``(B, 18, H, W)`` in ``[0, 1]`` → ``(B, 3, H, W)`` grey in ``[-1, 1]``: the max over the joint channels."""
    return (pose_maps.amax(dim=1, keepdim=True) * 2 - 1).expand(-1, 3, -1, -1)


def sample_grid(columns: list[torch.Tensor]) -> torch.Tensor:
    """``(B, 3, H, W)`` tensors in ``[-1, 1]`` side by side, one row per pair → ``(3, B H, K W)`` uint8."""
    rows = torch.cat([c.detach().float().cpu().clamp(-1, 1) for c in columns], dim=3)  # (B, 3, H, K W)
    grid = torch.cat(list(rows), dim=1)  # (3, B H, K W)
    return ((grid + 1) * 127.5).round().to(torch.uint8)


def pair_grid(source: torch.Tensor, source_pose: torch.Tensor, target_pose: torch.Tensor, generated: torch.Tensor,
              target: torch.Tensor, rows: int = 4, extra: list[torch.Tensor] | tuple = ()) -> torch.Tensor:
    """The sample grid of the first ``rows`` pairs: source | source pose | target pose | generated | ``extra``
    columns (the family's own, e.g. GFLA's warped source) | target."""
    n = min(rows, source.shape[0])
    return sample_grid([source[:n], pose_image(source_pose[:n]), pose_image(target_pose[:n]), generated[:n],
                        *(column[:n] for column in extra), target[:n]])


def save_png(path: Path, grid: torch.Tensor) -> None:
    """``(3, H, W)`` uint8 → an RGB PNG, written atomically (parent folders made)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")


# ---------------------------------------------------------------------------------------------------- checkpoints


CHECKPOINTS = "checkpoints"
"""Sub-folder of a run holding one complete folder per checkpoint, ``step-00001000/``."""


def step_folders(run_dir: Path) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first (temporary ``.step-*.tmp`` ones excluded)."""
    folders = [p for p in (run_dir / CHECKPOINTS).glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[5:]))


def _save_checkpoint(run_dir: Path, step: int, generator: torch.nn.Module, discriminators: dict[str, torch.nn.Module],
                     state: dict[str, Any], image_size: tuple[int, int], keep: int) -> None:
    """Write ``checkpoints/step-N/`` whole or not at all, point ``RUN/generator.safetensors`` at it, prune old ones.

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
    weights = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    with atomic_path(tmp / "generator.safetensors") as path:
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
    # the latest generator beside config.yaml, where `pgpig generate` and eval look: a hard link swapped in
    # atomically (a copy where the file system has no hard links)
    with atomic_path(run_dir / "generator.safetensors") as path:
        path.unlink()
        try:
            os.link(final / "generator.safetensors", path)
        except OSError:
            shutil.copyfile(final / "generator.safetensors", path)
    for old in step_folders(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _load_init_weights(generator: torch.nn.Module, path: Path) -> None:
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


def _load_checkpoint(run_dir: Path, generator: torch.nn.Module, discriminators: dict[str, torch.nn.Module],
                     device: torch.device) -> dict[str, Any]:
    """Load the newest checkpoint folder into the models and return its train state; ``TrainError`` if none."""
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


def build_generator(cfg: TrainConfig, size: tuple[int, int]) -> torch.nn.Module:
    """The generator a config describes for ``(H, W)`` images, freshly initialised (training and ``pgpig generate``
    build it so). No loss network is built."""
    return models.objective_class(cfg.model).build_generator(cfg, size)


def build(cfg: TrainConfig, device: torch.device, size: tuple[int, int]) -> Parts:
    """Generator, discriminators, objective, optimizers and pools of ``cfg`` for ``(H, W)`` images on ``device``."""
    cfg = resolve_speed(cfg, device)
    objective = models.objective_class(cfg.model)(cfg, device)
    generator = objective.build_generator(cfg, size).to(device)
    discriminators = {name: d.to(device) for name, d in objective.build_discriminators(size).items()}
    objective.build_losses()
    if cfg.channels_last:
        for module in (generator, *discriminators.values()):
            module.to(memory_format=torch.channels_last)
    # parameters the objective holds fixed (PG2's G1 in stage 2) are not optimised
    opt_g = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.betas)
    # one Adam over all discriminators: Adam is per parameter, so this equals PATN's one optimizer per D
    opt_d = torch.optim.Adam([p for d in discriminators.values() for p in d.parameters()],
                             lr=cfg.lr * cfg.d_lr_ratio, betas=cfg.d_betas or cfg.betas) if discriminators else None
    # fp16 needs loss scaling against gradient underflow; bf16 has float32's range and does not
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    pools = {name: HistoryPool(cfg.pool_size) for name in discriminators}
    return Parts(generator, discriminators, objective, opt_g, opt_d, scaler, pools)


def compile_parts(parts: Parts) -> None:
    """``torch.compile`` the generator and the discriminators in place (after any DDP wrapping).

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
    parts.generator = torch.compile(parts.generator)
    parts.discriminators = {name: torch.compile(d) for name, d in parts.discriminators.items()}


def _autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """Autocast to ``cfg.amp``'s dtype on ``device`` (a no-op for ``amp: none``, and for ``auto`` off CUDA)."""
    amp = _amp(cfg.amp, device)
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp != "none")


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP and/or ``torch.compile`` wrappers."""
    module = getattr(module, "_orig_mod", module)
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)


def train_step(parts: Parts, cfg: TrainConfig, batch: StepBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One generator and one discriminator update on a batch; returns the generated batch and the losses."""
    discriminators, scaler, objective = parts.discriminators, parts.scaler, parts.objective
    # -- generator forward and losses; the discriminators unwrapped (no DDP: no D gradient is wanted here) and
    # frozen, so the generator's step leaves their gradients alone
    plain = {name: _unwrap(d).requires_grad_(False) for name, d in discriminators.items()}
    with _autocast(cfg, batch.source.device):
        generated, loss_g, losses = objective.generator_loss(parts.generator, plain, batch)
    losses["g_total"] = loss_g

    # -- generator backward and step
    parts.opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(parts.opt_g)

    # -- discriminators: real pairs against generated ones (through the history pools)
    if discriminators:
        for d in plain.values():
            d.requires_grad_(True)
        with _autocast(cfg, batch.source.device):
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
    """Train ``cfg.model`` on ``cfg.shards``; returns ``{"run_dir", "step", "epoch", "losses"}`` (last logged)."""
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
    try:
        return _train(cfg, device, rank, world)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> dict[str, Any]:
    main_process = rank == 0
    run_dir = cfg.run_dir or Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if world > 1:  # every rank must write to (and resume from) rank 0's folder
        import torch.distributed as dist

        shared = [run_dir]
        dist.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    given = cfg = dataclasses.replace(cfg, run_dir=run_dir)
    cfg = resolve_speed(cfg, device)  # config.yaml keeps the recipe's auto: a resume on other hardware decides anew
    if not cfg.resume and step_folders(run_dir):
        raise TrainError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, or another --run")

    # -- seed everything (weights and anything else drawn before the loop; the loop re-seeds per step)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # -- data: pairs of shards/train (this rank's share of each global batch); a few of shards/test for validation
    train_set = PairDataset(cfg.shards / "train", flip=cfg.flip, crop_margin=cfg.crop_margin, seed=cfg.seed,
                            verify=not cfg.skip_verify)
    size = train_set.size

    # -- models, losses, optimizers (before the loader starts: a missing VGG-19 is reported at once)
    parts = build(cfg, device, size)
    if cfg.init_weights is not None and not cfg.resume:
        _load_init_weights(parts.generator, cfg.init_weights)

    # batches do not depend on the number of workers, so more workers than cores are not worth their memory
    workers = min(cfg.num_workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                  os.cpu_count() or 1)
    loader = make_loader(train_set, cfg.batch_size // world, shuffle=True, seed=cfg.seed, num_workers=workers,
                         rank=rank, world_size=world)
    if len(loader) == 0:
        raise TrainError(f"{cfg.shards / 'train'} has {len(train_set)} pairs, fewer than one batch of "
                         f"{cfg.batch_size}; lower batch_size")
    steps = total_steps(cfg, len(train_set))
    val_batch = None
    if main_process and (cfg.shards / "test").is_dir():
        val_set = PairDataset(cfg.shards / "test", crop_margin=cfg.crop_margin, verify=not cfg.skip_verify)
        val_batch = default_collate([val_set[k] for k in range(min(cfg.val_pairs, len(val_set)))])

    # -- resumed from the run folder's checkpoint
    generator, discriminators = parts.generator, parts.discriminators  # the plain modules: checkpoints, validation
    step, epoch, in_epoch = 0, 0, 0
    if cfg.resume:
        state = _load_checkpoint(run_dir, generator, discriminators, device)
        parts.opt_g.load_state_dict(state["opt_g"])
        if parts.opt_d is not None:
            parts.opt_d.load_state_dict(state["opt_d"])
        parts.scaler.load_state_dict(state["scaler"])
        for name, pool in parts.pools.items():
            pool.load_state_dict(state.get("pools", {}).get(name, {}), device)
        step, epoch, in_epoch = state["step"], state["epoch"], state["in_epoch"]
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        def wrap(module: torch.nn.Module) -> torch.nn.Module:
            if device.type == "cuda" and cfg.sync_batchnorm:
                module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
            # broadcast_buffers off: rank 0's BN statistics broadcast in place at the discriminator's second forward
            # would overwrite tensors its first forward saved for backward; SyncBatchNorm keeps them equal anyway
            return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                           broadcast_buffers=False)

        parts.generator = wrap(generator)
        parts.discriminators = {name: wrap(d) for name, d in discriminators.items()}
        generator = _unwrap(parts.generator)
        discriminators = {name: _unwrap(d) for name, d in parts.discriminators.items()}
    if cfg.compile:
        compile_parts(parts)

    # -- run folder (rank 0 writes it)
    writer = None
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(_config_dict(given), sort_keys=False))
        (run_dir / "samples").mkdir(exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step if cfg.resume else None)

    def checkpoint() -> None:
        if not main_process:
            return
        state = {"step": step, "epoch": epoch, "in_epoch": in_epoch, "opt_g": parts.opt_g.state_dict(),
                 "opt_d": parts.opt_d.state_dict() if parts.opt_d is not None else {},
                 "scaler": parts.scaler.state_dict(),
                 "pools": {name: pool.state_dict() for name, pool in parts.pools.items()}}
        _save_checkpoint(run_dir, step, generator, discriminators, state, size, cfg.keep_checkpoints)

    def to_device(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if cfg.channels_last else images

    def prepare(batch: dict[str, torch.Tensor]) -> StepBatch:
        source_kp = batch["source_kp"].to(device, non_blocking=True)
        target_kp = batch["target_kp"].to(device, non_blocking=True)
        return StepBatch(to_device(batch["source"]), to_device(batch["target"]),
                         to_device(pose_maps(cfg, source_kp, size)), to_device(pose_maps(cfg, target_kp, size)),
                         source_kp, target_kp)

    bar = tqdm(total=steps, initial=step, disable=not (cfg.progress and main_process), desc="train", unit="it",
               dynamic_ncols=True)
    losses: dict[str, float] = {}
    parts.generator.train()
    for d in parts.discriminators.values():
        d.train()
    try:
        while step < steps:
            start_epoch(loader, epoch)
            # resumed mid-epoch: the epoch's order is fixed by (seed, epoch), so dropping the batches already
            # trained on puts the loader where the interrupted run was
            for batch in islice(loader, in_epoch, None):
                if step >= steps:
                    break
                torch.manual_seed(_step_seed(cfg.seed, step, rank))
                lr = cfg.lr * lr_factor(cfg, step, len(train_set))
                for opt, ratio in ((parts.opt_g, 1.0), (parts.opt_d, cfg.d_lr_ratio)):
                    for group in opt.param_groups if opt is not None else ():
                        group["lr"] = lr * ratio

                inputs = prepare(batch)
                generated, step_losses = train_step(parts, cfg, inputs)
                step += 1
                in_epoch += 1
                bar.update(1)

                # -- log (the mean over the processes)
                if step % cfg.log_every == 0 or step == steps:
                    values = torch.stack([v.detach().float() for v in step_losses.values()])
                    if world > 1:
                        torch.distributed.all_reduce(values)
                        values /= world
                    losses = dict(zip(step_losses, values.tolist(), strict=True))
                    if writer is not None:
                        for name, value in losses.items():
                            writer.add_scalar(f"train/{name}", value, step)
                        writer.add_scalar("train/epoch", epoch, step)
                        writer.add_scalar("train/lr", parts.opt_g.param_groups[0]["lr"], step)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)

                # -- samples and validation
                if writer is not None and step % cfg.sample_every == 0:
                    extra = parts.objective.sample_columns(generator, inputs)
                    grid = pair_grid(inputs.source, inputs.source_pose, inputs.target_pose, generated, inputs.target,
                                     extra=extra)
                    save_png(run_dir / "samples" / f"step-{step:06d}.png", grid)
                    writer.add_image("train/samples", grid, step)
                    if val_batch is not None:
                        _validate(generator, parts.objective, prepare(val_batch), cfg, writer, step)

                # -- checkpoint
                if step % cfg.checkpoint_every == 0:
                    checkpoint()
            else:
                epoch, in_epoch = epoch + 1, 0
        # at the end; not after an exception, which may have hit between the generator's and the step counter's
        # update: the last periodic checkpoint is the consistent one to resume from
        checkpoint()
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return {"run_dir": run_dir, "step": step, "epoch": epoch, "losses": losses,
            "speed": {"device": str(device), "amp": cfg.amp, "channels_last": cfg.channels_last,
                      "compile": cfg.compile}}


def _validate(generator: torch.nn.Module, objective: Objective, batch: StepBatch, cfg: TrainConfig, writer,
              step: int) -> None:
    """L1 and a sample grid of the fixed validation pairs, in eval mode (rank 0, the plain module)."""
    generator.eval()
    with torch.no_grad(), _autocast(cfg, batch.source.device):
        generated = generated_image(generator(batch.source, batch.source_pose, batch.target_pose))
        writer.add_scalar("val/l1", l1_loss(generated, batch.target).item(), step)
        extra = objective.sample_columns(generator, batch)
    writer.add_image("val/samples", pair_grid(batch.source, batch.source_pose, batch.target_pose, generated,
                                              batch.target, extra=extra), step)
    generator.train()
