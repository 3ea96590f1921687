"""Training a pose-guided generator on a pgpig shard set: the whole loop, top to bottom, in ``train(cfg)``.

Order of one iteration: batch from the loader → pose maps rendered on the device → forward → losses (L1 +
perceptual, + adversarial when ``use_gan``) → backward and optimizer steps → log → samples and validation →
checkpoint. The loss weights and Adam settings of PATN follow the official tengteng95/Pose-Transfer
``train.py`` flags (``--lambda_A`` L1, ``--lambda_B`` perceptual, ``--lambda_GAN``, ``--lr 0.0002``,
``--beta1 0.5``); the recipes in ``workflows/`` set them per data set.

Decisions:

- Resume is exact: the checkpoint stores the step, the epoch and the number of batches already taken from that
  epoch; the loader's order and flips depend only on ``(seed, epoch)`` (``pgpig.data``), so a resumed run skips
  exactly the consumed batches (they are decoded and dropped, not trained on). The global torch RNG (dropout)
  is re-seeded from ``(seed, step)`` before every step, so the random state never depends on how many
  DataLoader iterators were created before (each one draws a base seed from the global RNG). Together: ``N``
  steps straight equal ``k`` steps + resume to ``N``, bit for bit on CPU.
- Checkpoint files in the run folder, each written atomically: ``generator.safetensors``,
  ``discriminators.safetensors`` (``use_gan``), and ``train_state.pt`` (optimizers, scaler, step, epoch, position,
  RNG) saved with ``torch.save`` from plain tensors and dicts and read back with ``torch.load(weights_only=True)``.
  Every file carries the step; resume refuses files of different steps (a crash between two writes).
- "Epoch" here is one pass over the shard set's pairs (PATN's 4,000-pair "epoch" is only its LR-schedule unit;
  this trainer counts steps).
"""

from __future__ import annotations

import dataclasses
import random
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
from pgpig.data import PairDataset, make_loader, render_pose_maps, start_epoch
from pgpig.errors import TrainError
from pgpig.losses import PATN_PERCEPTUAL_LAYERS, PerceptualLoss, adversarial_loss, l1_loss
from pgpig.models.discriminators import patn_appearance_discriminator, patn_shape_discriminator
from schemas.files import atomic_path

__all__ = ["TrainConfig", "load_config", "train"]

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
    flip: bool = False
    """Mirror pairs at random (PATN trains with ``--no_flip``, so off in the paper recipes)."""
    batch_size: int = 32
    """Pairs per step (PATN Market-1501: 32; DeepFashion: 7)."""
    lr: float = 2e-4
    """Adam learning rate of the generator and the discriminators (constant; PATN's linear decay is not here)."""
    betas: tuple[float, float] = (0.5, 0.999)
    """Adam betas (PATN ``--beta1 0.5``)."""
    steps: int = 1000
    """Total optimizer steps of the run (a resumed run continues up to this number)."""
    lambda_l1: float = 10.0
    """Weight of the L1 loss to the target (PATN ``--lambda_A``)."""
    lambda_perceptual: float = 10.0
    """Weight of the VGG-19 perceptual loss (PATN ``--lambda_B``)."""
    lambda_gan: float = 5.0
    """Weight of the generator's adversarial loss (PATN ``--lambda_GAN``)."""
    gan_kind: str = "lsgan"
    """Adversarial loss: ``lsgan`` (PATN DeepFashion), ``vanilla`` (PATN Market-1501, ``--no_lsgan``) or ``hinge``."""
    use_gan: bool = True
    """Train the appearance and shape discriminators and add the adversarial loss (PATN: yes)."""
    vgg_weights: str | None = "imagenet"
    """VGG-19 weights for the perceptual loss: ``imagenet`` (torch hub cache), a state-dict path, or null."""
    allow_random_vgg: bool = False
    """Permit ``vgg_weights: null`` (random VGG): for tests only, the perceptual loss then means little."""
    amp: str = "none"
    """Mixed precision: ``none``, ``bf16`` (autocast) or ``fp16`` (autocast + gradient scaling)."""
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    seed: int = 0
    """Seed of weights, data order, flips and dropout."""
    num_workers: int = 4
    """DataLoader worker processes (0: load in the main process)."""
    log_every: int = 10
    """Steps between TensorBoard scalars and progress-bar updates."""
    sample_every: int = 500
    """Steps between sample grids (PNG and TensorBoard) and the validation L1."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (one is always written at exit)."""
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
    except ValueError:
        pass
    else:
        return value
    raise TrainError(f"config field {name!r}: {value!r} is not a {getattr(hint, '__name__', hint)}")


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
    choices = {"amp": ("none", "bf16", "fp16"), "gan_kind": ("lsgan", "vanilla", "hinge"),
               "norm": ("instance", "batch")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise TrainError(f"config field {name!r} is {getattr(cfg, name)!r}; choose one of {', '.join(allowed)}")
    for name in ("batch_size", "steps", "log_every", "sample_every", "checkpoint_every", "ngf", "n_blocks"):
        if getattr(cfg, name) < 1:
            raise TrainError(f"config field {name!r} must be at least 1, got {getattr(cfg, name)}")
    if cfg.vgg_weights is None and not cfg.allow_random_vgg:
        raise TrainError("vgg_weights is null: give a VGG-19 state dict path or 'imagenet' "
                         "(random VGG only with allow_random_vgg: true, for tests)")


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as YAML-friendly values (paths as strings, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
    return out


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
    return device


def _step_seed(seed: int, step: int) -> int:
    """The global RNG seed of step ``step``: a function of ``(seed, step)`` only, so resume reproduces dropout."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ---------------------------------------------------------------------------------------------------- images


def _pose_image(pose_maps: torch.Tensor) -> torch.Tensor:
    """``(B, 18, H, W)`` in ``[0, 1]`` → ``(B, 3, H, W)`` grey in ``[-1, 1]``: the max over the joint channels."""
    return (pose_maps.amax(dim=1, keepdim=True) * 2 - 1).expand(-1, 3, -1, -1)


def sample_grid(columns: list[torch.Tensor]) -> torch.Tensor:
    """``(B, 3, H, W)`` tensors in ``[-1, 1]`` side by side, one row per pair → ``(3, B H, K W)`` uint8."""
    rows = torch.cat([c.detach().float().cpu().clamp(-1, 1) for c in columns], dim=3)  # (B, 3, H, K W)
    grid = torch.cat(list(rows), dim=1)  # (3, B H, K W)
    return ((grid + 1) * 127.5).round().to(torch.uint8)


def _save_png(path: Path, grid: torch.Tensor) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")


# ---------------------------------------------------------------------------------------------------- checkpoints


def _save_checkpoint(run_dir: Path, step: int, generator: torch.nn.Module, discriminators: dict[str, torch.nn.Module],
                     state: dict[str, Any], image_size: tuple[int, int]) -> None:
    # the generator file alone says what it generates: step, and the (cropped) image size it was trained at
    meta = {"step": str(step), "height": str(image_size[0]), "width": str(image_size[1])}
    weights = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    with atomic_path(run_dir / "generator.safetensors") as tmp:
        save_file(weights, str(tmp), metadata=meta)
    if discriminators:
        d_weights = {f"{name}.{k}": v.detach().cpu().contiguous()
                     for name, d in discriminators.items() for k, v in d.state_dict().items()}
        with atomic_path(run_dir / "discriminators.safetensors") as tmp:
            save_file(d_weights, str(tmp), metadata=meta)
    with atomic_path(run_dir / "train_state.pt") as tmp:
        torch.save(state, tmp)


def _load_checkpoint(run_dir: Path, generator: torch.nn.Module, discriminators: dict[str, torch.nn.Module],
                     device: torch.device) -> dict[str, Any]:
    """Load weights into the models and return the train state; ``TrainError`` for a missing or torn checkpoint."""
    state_path = run_dir / "train_state.pt"
    if not state_path.is_file():
        raise TrainError(f"{run_dir}: no checkpoint to resume (train_state.pt missing); start a new run instead")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        files = {"generator.safetensors": {"": generator}}
        if discriminators:
            files["discriminators.safetensors"] = {f"{n}.": d for n, d in discriminators.items()}
        for name, parts in files.items():
            path = run_dir / name
            with safe_open(str(path), framework="pt") as f:
                step = int((f.metadata() or {}).get("step", -1))
            if step != state["step"]:
                raise TrainError(f"{path} is from step {step} but train_state.pt from step {state['step']}: "
                                 "the last checkpoint write was interrupted; restore an older copy or start anew")
            tensors = load_file(str(path), device=str(device))
            for prefix, module in parts.items():
                module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    except (OSError, RuntimeError, KeyError, SafetensorError) as exc:
        raise TrainError(f"{run_dir}: cannot read the checkpoint ({exc}); it is damaged or from another recipe") \
            from None
    return state


# ---------------------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.shards``; returns ``{"run_dir", "step", "epoch", "losses"}`` (last logged)."""
    check_config(cfg)
    if cfg.resume and cfg.run_dir is None:
        raise TrainError("resume needs the run folder: pass --resume RUN_DIR")
    run_dir = Path(cfg.run_dir or Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = dataclasses.replace(cfg, run_dir=run_dir)
    device = _resolve_device(cfg.device)

    # -- seed everything (weights and anything else drawn before the loop; the loop re-seeds per step)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # -- data: pairs of shards/train; a few fixed pairs of shards/test for validation
    train_set = PairDataset(cfg.shards / "train", flip=cfg.flip, crop_margin=cfg.crop_margin, seed=cfg.seed)
    loader = make_loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, num_workers=cfg.num_workers)
    if len(loader) == 0:
        raise TrainError(f"{cfg.shards / 'train'} has {len(train_set)} pairs, fewer than one batch of "
                         f"{cfg.batch_size}; lower batch_size")
    size = train_set.size
    val_batch = None
    if (cfg.shards / "test" / "manifest.json").exists() or (cfg.shards / "test").is_dir():
        val_set = PairDataset(cfg.shards / "test", crop_margin=cfg.crop_margin)
        val_batch = default_collate([val_set[k] for k in range(min(cfg.val_pairs, len(val_set)))])

    # -- models, losses, optimizers
    generator = models.create(cfg.model, ngf=cfg.ngf, n_blocks=cfg.n_blocks, norm=cfg.norm,
                              dropout=cfg.dropout).to(device)
    discriminators: dict[str, torch.nn.Module] = {}
    if cfg.use_gan:
        d_kwargs = {"ndf": cfg.ngf, "n_blocks": cfg.d_blocks, "norm": cfg.norm, "dropout": cfg.dropout}
        discriminators = {"appearance": patn_appearance_discriminator(**d_kwargs).to(device),
                          "shape": patn_shape_discriminator(**d_kwargs).to(device)}
    perceptual = PerceptualLoss(PATN_PERCEPTUAL_LAYERS, vgg_weights=cfg.vgg_weights,
                                allow_random=cfg.allow_random_vgg).to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam([p for d in discriminators.values() for p in d.parameters()], lr=cfg.lr,
                             betas=cfg.betas) if discriminators else None
    # fp16 needs loss scaling against gradient underflow; bf16 has float32's range and does not
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    def autocast():
        return torch.autocast(device.type, dtype=AMP_DTYPES.get(cfg.amp, torch.float32), enabled=cfg.amp != "none")

    # -- run folder: fresh, or resumed from its checkpoint
    step, epoch, in_epoch = 0, 0, 0
    if cfg.resume:
        state = _load_checkpoint(run_dir, generator, discriminators, device)
        opt_g.load_state_dict(state["opt_g"])
        if opt_d is not None:
            opt_d.load_state_dict(state["opt_d"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, in_epoch = state["step"], state["epoch"], state["in_epoch"]
        torch.set_rng_state(state["rng_cpu"])
    elif (run_dir / "train_state.pt").exists():
        raise TrainError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, or another --run")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(_config_dict(cfg), sort_keys=False))
    (run_dir / "samples").mkdir(exist_ok=True)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step if cfg.resume else None)

    def checkpoint() -> None:
        state = {"step": step, "epoch": epoch, "in_epoch": in_epoch, "opt_g": opt_g.state_dict(),
                 "opt_d": opt_d.state_dict() if opt_d is not None else {}, "scaler": scaler.state_dict(),
                 "rng_cpu": torch.get_rng_state()}
        _save_checkpoint(run_dir, step, generator, discriminators, state, size)

    def pose_maps(keypoints: torch.Tensor) -> torch.Tensor:
        return render_pose_maps(keypoints.to(device, non_blocking=True), size, cfg.sigma)

    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, desc="train", unit="it", dynamic_ncols=True)
    losses: dict[str, float] = {}
    generator.train()
    try:
        while step < cfg.steps:
            start_epoch(loader, epoch)
            # resumed mid-epoch: the epoch's order is fixed by (seed, epoch), so dropping the batches already
            # trained on puts the loader where the interrupted run was
            for batch in islice(loader, in_epoch, None):
                if step >= cfg.steps:
                    break
                torch.manual_seed(_step_seed(cfg.seed, step))

                # -- forward
                source = batch["source"].to(device, non_blocking=True)
                target = batch["target"].to(device, non_blocking=True)
                source_pose, target_pose = pose_maps(batch["source_kp"]), pose_maps(batch["target_kp"])
                with autocast():
                    generated = generator(source, source_pose, target_pose)

                    # -- generator losses
                    loss_l1 = l1_loss(generated, target)
                    loss_perceptual = perceptual(generated, target)
                    loss_g = cfg.lambda_l1 * loss_l1 + cfg.lambda_perceptual * loss_perceptual
                    if discriminators:
                        for d in discriminators.values():
                            d.requires_grad_(False)  # the generator's step must not accumulate D gradients
                        loss_gan = 0.5 * (
                            adversarial_loss(discriminators["appearance"](generated, source), True, cfg.gan_kind,
                                             for_discriminator=False)
                            + adversarial_loss(discriminators["shape"](generated, target_pose), True, cfg.gan_kind,
                                               for_discriminator=False))
                        loss_g = loss_g + cfg.lambda_gan * loss_gan

                # -- generator backward and step
                opt_g.zero_grad(set_to_none=True)
                scaler.scale(loss_g).backward()
                scaler.step(opt_g)

                # -- discriminators: real pairs against the (detached) generated ones
                if discriminators:
                    for d in discriminators.values():
                        d.requires_grad_(True)
                    fake = generated.detach()
                    with autocast():
                        loss_d = 0.0
                        for d, condition in ((discriminators["appearance"], source),
                                             (discriminators["shape"], target_pose)):
                            loss_d = loss_d + 0.5 * (adversarial_loss(d(target, condition), True, cfg.gan_kind)
                                                     + adversarial_loss(d(fake, condition), False, cfg.gan_kind))
                    opt_d.zero_grad(set_to_none=True)
                    scaler.scale(loss_d).backward()
                    scaler.step(opt_d)
                scaler.update()
                step += 1
                in_epoch += 1
                bar.update(1)

                # -- log
                if step % cfg.log_every == 0 or step == cfg.steps:
                    losses = {"g_total": loss_g.item(), "l1": loss_l1.item(), "perceptual": loss_perceptual.item()}
                    if discriminators:
                        losses.update({"g_gan": loss_gan.item(), "d": loss_d.item()})
                    for name, value in losses.items():
                        writer.add_scalar(f"train/{name}", value, step)
                    writer.add_scalar("train/epoch", epoch, step)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)

                # -- samples and validation
                if step % cfg.sample_every == 0:
                    n = min(4, source.shape[0])
                    grid = sample_grid([source[:n], _pose_image(source_pose[:n]), _pose_image(target_pose[:n]),
                                        generated[:n], target[:n]])
                    _save_png(run_dir / "samples" / f"step-{step:06d}.png", grid)
                    writer.add_image("train/samples", grid, step)
                    if val_batch is not None:
                        generator.eval()
                        with torch.no_grad(), autocast():
                            v_source = val_batch["source"].to(device)
                            v_target = val_batch["target"].to(device)
                            v_sp, v_tp = pose_maps(val_batch["source_kp"]), pose_maps(val_batch["target_kp"])
                            v_generated = generator(v_source, v_sp, v_tp)
                            writer.add_scalar("val/l1", l1_loss(v_generated, v_target).item(), step)
                        n = min(4, v_source.shape[0])
                        writer.add_image("val/samples", sample_grid(
                            [v_source[:n], _pose_image(v_sp[:n]), _pose_image(v_tp[:n]), v_generated[:n],
                             v_target[:n]]), step)
                        generator.train()

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
        writer.close()
    return {"run_dir": run_dir, "step": step, "epoch": epoch, "losses": losses}
