"""The options of the trainer's commands, each with its default and its meaning: ``TrainConfig`` (``pgpig train``),
its recipes (YAML files of its fields) and their checks, and ``EvalConfig`` (``pgpig eval``).

A recipe sets only fields that exist (unknown keys are an error); ``load_config`` turns each YAML value into its
field's type (``Literal`` fields accept only their listed values) and ``check_config`` checks ranges. The shipped
recipes live in ``pgpig/workflows/``. How training uses the fields: ``docs/training.md``. This module imports no
torch, so the command line can read the defaults for its help cheaply.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from pgpig.errors import TrainError

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_DEVICE", "SAMPLING_FIELDS", "SAMPLING_RECORD_NAMES", "EvalConfig", "TrainConfig", "check_config",
           "config_dict", "load_config", "recipe_path", "resolve_amp", "resolve_speed", "shipped_recipes"]

DEFAULT_DEVICE = "auto"
"""The ``--device`` of every command: CUDA if available, else the CPU (``pipeline.devices.resolve_device``)."""


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
    norm: Literal["instance", "batch"] = "instance"
    """``instance`` (PATN DeepFashion) or ``batch`` (PATN Market-1501); the discriminators use the same."""
    dropout: float = 0.5
    """Dropout in generator and discriminator blocks (PATN official: 0.5)."""
    d_blocks: int = 3
    """Residual blocks per discriminator (PATN ``--n_layers_D 3``)."""
    crop_margin: int = 0
    """Columns cut from each side of the stored images: 40 turns DeepFashion 256x256 into PATN's 256x176."""
    sigma: float = 6.0
    """Standard deviation in pixels of the Gaussian pose maps (PATN: 6)."""
    pose_encoding: Literal["gaussian", "disk", "sticks"] = "gaussian"
    """Pose maps fed to the generator: ``gaussian`` (PATN's, ``sigma``), ``disk`` (PG2's binary disks of
    ``pose_radius``, the official ``_getSparsePose`` 'Solid' maps) or ``sticks`` (PIDM's 20 channels: an RGB stick
    figure and 17 limb distance maps, the official ``get_label_tensor``)."""
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
    lr_warmup_steps: int = 0
    """Steps over which the learning rate rises linearly from ``lr_warmup_start * lr`` to the schedule's (PIDM:
    5000, tensorfn's ``cycle_scheduler`` warm-up phase that its config names); 0: none."""
    lr_warmup_start: float = 0.04
    """The warm-up's first multiplier of the learning rate (tensorfn's ``initial_multiplier`` default)."""
    grad_clip: float = 0.0
    """Clip the generator's gradient to this total norm before its step (PIDM: 1); 0: no clipping."""
    lr_policy: Literal["constant", "linear"] = "constant"
    """``constant``, or ``linear``: PATN's rule, constant, then linearly to 0 (``pgpig.train.lr_factor``)."""
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
    gan_kind: Literal["lsgan", "vanilla", "hinge"] = "lsgan"
    """Adversarial loss: ``lsgan`` (PATN DeepFashion), ``vanilla`` (PATN Market-1501, ``--no_lsgan``) or ``hinge``."""
    use_gan: bool = True
    """Train the appearance and shape discriminators and add the adversarial loss (PATN: yes)."""
    pool_size: int = 0
    """Past generated pairs each discriminator also trains on (PATN Market-1501: 50, DeepFashion: 0)."""
    vgg_weights: str | None = "imagenet"
    """VGG-19 weights for the perceptual loss: ``imagenet`` (torch hub cache), a state-dict path, or null."""
    allow_random_vgg: bool = False
    """Permit ``vgg_weights: null`` (random VGG): for tests only, the perceptual loss then means little."""
    amp: Literal["none", "bf16", "fp16", "auto"] = "auto"
    """Mixed precision: ``none``, ``bf16`` (autocast), ``fp16`` (autocast + gradient scaling), or ``auto``: bf16 on
    a CUDA device that has it, float32 elsewhere (on the CPU float32 is the fast path for convolutions)."""
    device: str = DEFAULT_DEVICE
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun: each rank's GPU)."""
    channels_last: bool | Literal["auto"] = False
    """Models and batches in channels-last memory format (faster convolutions with AMP for some models on recent
    GPUs); ``auto``: on a CUDA device only."""
    compile: bool | Literal["auto", "generator"] = False
    """``torch.compile`` the generator, the discriminators and the objective's loss maths on VGG features (content
    and style, GFLA's sampling correctness; slow first steps; for long GPU runs); ``auto``: on a CUDA device only;
    ``generator``: the generator alone (a spectrally normalised discriminator breaks the graph at each convolution,
    whose frames then recompile until dynamo's limit and run eager)."""
    compile_losses: bool = False
    """With ``compile`` on, ``torch.compile`` the objective's loss networks (VGG-19) too: its convolutions' bias
    adds, ReLUs and their backward fused by inductor (DPTN DeepFashion on an H100: 1.18x the step)."""
    compile_channels_last: bool = False
    """With ``compile`` on, inductor lays out every compiled graph's convolutions, and the gradients they take,
    channels-last (its ``force_layout_optimization``). Its own heuristic keeps the NCHW layout for a whole training
    graph that holds one convolution halving the channels with a kernel wider than 1 (a generator's to-RGB output
    does), and then each convolution's backward copies its gradient to the channels-last layout of its saved input
    (DPTN DeepFashion on an H100: 1.05x the step)."""
    cuda_graph: bool | Literal["auto"] = False
    """Replay each training step from one CUDA graph (``pgpig.step_graph``): the host launches a whole step at once
    instead of kernel by kernel, which pays where the eager step leaves the GPU waiting for Python (small batches).
    CUDA only; not with ``amp: fp16`` (its loss scaler checks for overflow on the host), a history pool
    (``pool_size`` > 0), PIDM or several processes. ``auto``: on a CUDA device, where none of these applies."""
    channel_mult: tuple[int, ...] | None = None
    """PIDM: each UNet level's width as a multiple of ``ngf``; null: the paper's ``(1, 1, 2, 2, 4, 4)`` (256 px)."""
    attention_levels: tuple[int, ...] | None = None
    """PIDM: the UNet levels whose blocks cross-attend to the source's features; null: the paper's ``(3, 4, 5)``
    (the 32, 16 and 8 px levels of 256 px images)."""
    embed_channels: int = 512
    """PIDM: width of the timestep embedding the UNet's blocks are conditioned on (official ``embed_channels``)."""
    diffusion_steps: int = 1000
    """PIDM: steps of the linear noise schedule (betas 1e-4 to 2e-2, ``pgpig.diffusion``)."""
    prediction: Literal["noise", "velocity"] = "noise"
    """PIDM: what the network learns to predict: the noise (the paper's and the official code's), or the velocity
    sqrt(abar) noise - sqrt(1 - abar) x_0 (Salimans & Ho), which learns usable samples in far fewer steps."""
    source_drop: float = 0.1
    """PIDM: probability that a training sample's source image is dropped (classifier-free guidance; official 0.1)."""
    pose_drop: float = 0.0
    """PIDM: probability that a training sample's pose is dropped (the paper's disentangled guidance needs it > 0;
    the official training never drops it)."""
    sampler: Literal["ddim", "ddpm"] = "ddim"
    """PIDM: how ``pgpig generate``, eval and the grids sample: DDIM over ``sample_steps`` or ancestral DDPM."""
    sample_steps: int = 50
    """PIDM: DDIM steps (the official prediction script: 50)."""
    sample_eta: float = 0.0
    """PIDM: DDIM's eta (0: deterministic given the starting noise)."""
    guidance_appearance: float = 2.0
    """PIDM: classifier-free guidance scale of the source's appearance (official ``cond_scale`` 2)."""
    guidance_pose: float = 2.0
    """PIDM: guidance scale of the pose; used only with ``guidance_null_pose`` (a model trained with pose_drop > 0)."""
    guidance_null_pose: bool = False
    """PIDM: the paper's disentangled guidance against a null pose and a null source; false: the official form,
    the pose kept in every term (``docs/diffusion.md``)."""
    sample_seed: int = 0
    """PIDM: seed of the sampler's noise, which each pair draws from its own generator (this seed and the pair's
    source image and pose), whatever batch it is in."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the generator's weights with this decay (0: none); its weights are
    the ones ``pgpig generate``, eval and the validation grids use (PIDM: 0.9999)."""
    ema_start: int = 0
    """Optimizer steps during which the average is a plain copy of the weights (PIDM: its 5,000 warm-up steps)."""
    tf32: bool = False
    """Float32 matrix multiplications (attention, linear layers) on TF32 tensor cores, as cuDNN's float32
    convolutions already run by default; CUDA only (the CPU has no TF32). Off: PyTorch's full-precision matmuls."""
    fused_adam: bool = False
    """Each Adam step as fused kernels (``torch.optim.Adam(fused=True)``) instead of PyTorch's default (multi-tensor
    kernels on CUDA, a loop over the parameters on the CPU); the same update, rounded differently in the last bits."""
    sync_batchnorm: bool = False
    """Under DDP on CUDA, batch statistics over all GPUs (``SyncBatchNorm``). Off: each GPU normalises its own share,
    which at the recipe's per-GPU batch is the paper's one-GPU regime; SyncBatchNorm measured 3.5x slower
    (PATN Market, 2 H100s: 237 vs 825 pairs/s, ``benchmarks/results/train-ddp-h100x2.jsonl``)."""
    seed: int = 0
    """Seed of weights, data order, flips and dropout."""
    skip_verify: bool = False
    """Train without checking the shard sets first. Off: before step 0 every file the manifests list is checked
    against its size and sha256 (``ShardSet(verify=True)``, no image decoded), and a damaged set is refused."""
    skip_memory_check: bool = False
    """Train without the memory check. Off: before step 0 a dry run of the step on throwaway networks measures the
    run's peak memory, and a batch that would not fit in 90% of the available memory is refused with the largest
    batch that fits (``pgpig.memory``; ``PGPIG_MEMORY_LIMIT`` caps what counts as available)."""
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



def _switch_choices(hint: Any) -> tuple[str, ...]:
    """The words a switch field takes besides true and false (``bool | Literal["auto", ...]``: ``auto`` decided
    per device by ``resolve_speed``); empty for any other hint."""
    args = typing.get_args(hint)
    if len(args) == 2 and bool in args:
        words = next(a for a in args if a is not bool)
        return _choices(words) or ()
    return ()


def _choices(hint: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` type hint; ``None`` for any other hint."""
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def _check_choice(name: str, value: Any, hint: Any, where: str | None = None) -> None:
    allowed = _choices(hint)
    if allowed is not None and value not in allowed:
        raise TrainError(f"{where or f'config field {name!r}'}: {value!r} is not one of {', '.join(allowed)}")


_TYPE_WORDS = {int: "a whole number (int)", float: "a number (float)", bool: "true or false (bool)",
               str: "a string", Path: "a path", dict: "a mapping of names to values"}


def _type_words(hint: Any) -> str:
    """What a value of type ``hint`` is, in words: ``a number (float)``, ``a list of 2 values (float, float)``."""
    if _switch_choices(hint):
        *first, last = ["true", "false", *_switch_choices(hint)]
        return f"{', '.join(first)} or {last}"
    args = typing.get_args(hint)
    if args and type(None) in args:
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is tuple and args[-1] is Ellipsis:
        return f"a list of values ({getattr(args[0], '__name__', args[0])})"
    if origin is tuple:
        return f"a list of {len(args)} values ({', '.join(getattr(a, '__name__', str(a)) for a in args)})"
    if origin is dict:
        return _TYPE_WORDS[dict]
    return _TYPE_WORDS.get(hint, f"a {getattr(hint, '__name__', hint)}")


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(name: str, value: Any, hint: Any, where: str | None = None) -> Any:
    """Turn a YAML value into the field's type; ``TrainError`` when it cannot be, naming ``where`` the value came
    from (``--set lambda_l1``, ``recipe.yaml: lambda_l1``), else the field."""
    where = where or f"config field {name!r}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise TrainError(f"{where}: may not be null; give {_type_words(hint)}")
    if args and type(None) in args:  # Optional[X]: coerce to the first non-None type
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _choices(hint) is not None:
        value = str(value)
        _check_choice(name, value, hint, where)
        return value
    switch = _switch_choices(hint)
    try:
        if hint is Path:
            return Path(value)
        if origin is tuple and args[-1] is Ellipsis:  # tuple[X, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return tuple(_coerce(name, v, args[0], where) for v in value)
        if origin is tuple:
            if not isinstance(value, (list, tuple)) or len(value) != len(args):
                raise ValueError
            return tuple(_coerce(name, v, a, where) for v, a in zip(value, args, strict=True))
        if hint is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if switch:
            if not isinstance(value, bool) and value not in switch:
                raise ValueError
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
            return value
        if hint is float:
            if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
                return float(value)  # YAML 1.1 reads 2e-4 (no dot in the mantissa) as a string
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
    raise TrainError(f"{where}: {value!r} is not {_type_words(hint)}")


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


def _unknown_keys_message(unknown: list[str], known: Collection[str], where: str | None) -> str:
    """One line naming the unknown keys, each with the nearest known key when one is close; the known keys are
    listed when some unknown key has no close one."""
    named, lost = [], False
    for key in unknown:
        close = difflib.get_close_matches(key, list(known), n=1)
        named.append(f"{key} (did you mean {close[0]}?)" if close else key)
        lost = lost or not close
    known_list = f"; known: {', '.join(known)}" if lost else ""
    return f"{f'{where}: ' if where else ''}unknown config key(s) {', '.join(named)}{known_list}"


def load_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                set_keys: Collection[str] = ()) -> TrainConfig:
    """A ``TrainConfig`` from a recipe YAML (optional) with ``overrides`` on top; unknown keys are a ``TrainError``.

    ``set_keys`` names the keys of ``overrides`` that came from ``--set KEY=VALUE``: errors about them blame
    ``--set``, errors about the recipe's own keys blame the recipe file."""
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
    from_recipe = set(values)
    values.update(overrides or {})
    hints = typing.get_type_hints(TrainConfig)
    set_keys = set(set_keys) & set(overrides or {})

    def where(key: str) -> str:
        if key in set_keys:
            return f"--set {key}"
        if yaml_path is not None and key in from_recipe and key not in (overrides or {}):
            return f"{yaml_path}: {key}"
        return f"config field {key!r}"

    unknown_set = sorted(k for k in set_keys if k not in hints)
    if unknown_set:
        raise TrainError(_unknown_keys_message(unknown_set, hints, "--set"))
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise TrainError(_unknown_keys_message(unknown, hints, str(yaml_path) if yaml_path is not None else None))
    cfg = TrainConfig(**{k: _coerce(k, v, hints[k], where(k)) for k, v in values.items()})
    check_config(cfg)
    return cfg


SAMPLING_FIELDS = ("sampler", "sample_steps", "sample_eta", "guidance_appearance", "guidance_pose",
                   "guidance_null_pose", "sample_seed")
"""The config fields of how a diffusion generator samples, which ``pgpig generate`` and eval may change."""

SAMPLING_RECORD_NAMES = {"sampler": "sampler", "steps": "sample_steps", "eta": "sample_eta",
                         "appearance_scale": "guidance_appearance", "pose_scale": "guidance_pose",
                         "null_pose": "guidance_null_pose", "seed": "sample_seed"}
"""The keys of a sampler's record (eval.json's ``generator.sampling``) → the ``SAMPLING_FIELDS`` that set them."""


def check_config(cfg: TrainConfig) -> None:
    """``TrainError`` for values outside their allowed sets (the ``Literal`` fields) or ranges."""
    for name, hint in typing.get_type_hints(TrainConfig).items():  # a config built in Python skips the coercion
        _check_choice(name, getattr(cfg, name), hint)
    for name in ("batch_size", "steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "ngf",
                 "n_blocks", "schedule_epoch_pairs", "lr_constant_epochs", "lr_decay_epochs", "stage", "pose_radius",
                 "mask_radius", "diffusion_steps", "sample_steps", "embed_channels"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise TrainError(f"config field {name!r} must be at least 1, got {getattr(cfg, name)}")
    if cfg.d_lr_ratio <= 0:
        raise TrainError(f"config field 'd_lr_ratio' must be positive, got {cfg.d_lr_ratio}")
    if cfg.pool_size < 0:
        raise TrainError(f"config field 'pool_size' must be 0 or more, got {cfg.pool_size}")
    for name in ("source_drop", "pose_drop"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise TrainError(f"config field {name!r} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.lr_warmup_steps < 0 or cfg.grad_clip < 0 or cfg.sample_eta < 0:
        bad = next(n for n in ("lr_warmup_steps", "grad_clip", "sample_eta") if getattr(cfg, n) < 0)
        raise TrainError(f"config field {bad!r} must be 0 or more, got {getattr(cfg, bad)}")
    if not 0 <= cfg.ema_decay < 1:
        raise TrainError(f"config field 'ema_decay' must be in [0, 1) (0: no average), got {cfg.ema_decay}")
    if cfg.ema_start < 0:
        raise TrainError(f"config field 'ema_start' must be 0 or more, got {cfg.ema_start}")
    if cfg.steps is None and cfg.lr_policy != "linear":
        raise TrainError("steps is null, which means 'the whole LR schedule', but lr_policy is constant; "
                         "give steps or use lr_policy: linear")
    if cfg.cuda_graph is True and (reason := _graph_obstacle(cfg, cfg.amp)):
        raise TrainError(f"cuda_graph: true cannot replay a step with {reason}; set cuda_graph: false")
    if cfg.vgg_weights is None and not cfg.allow_random_vgg:
        raise TrainError("vgg_weights is null: give a VGG-19 state dict path or 'imagenet' "
                         "(random VGG only with allow_random_vgg: true, for tests)")


def _graph_obstacle(cfg: TrainConfig, amp: str) -> str | None:
    """What in ``cfg`` (with ``amp`` resolved or not) a CUDA graph of the step cannot replay, or ``None``."""
    if amp == "fp16":
        return "amp: fp16 (its loss scaler checks for overflow on the host)"
    if cfg.pool_size > 0:
        return f"pool_size: {cfg.pool_size} (the history pool draws on the host)"
    if cfg.model == "pidm":
        return "model: pidm (its step seeds a random generator of its own from the host)"
    return None


def resolve_speed(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """``cfg`` with its ``auto`` speed settings decided for ``device``: on CUDA, bf16 autocast (where the GPU has
    bf16), and channels-last, ``torch.compile`` and the CUDA graph where the recipe says ``auto``; on the CPU,
    float32 and none of them.
    The recipes' choices are the fastest correct settings measured per generator
    (``benchmarks/results/train-defaults-*.jsonl``)."""
    cuda, amp = device.type == "cuda", resolve_amp(cfg.amp, device)
    graph = cuda and _graph_obstacle(cfg, amp) is None
    return dataclasses.replace(cfg, amp=amp,
                               channels_last=cuda if cfg.channels_last == "auto" else cfg.channels_last,
                               compile=cuda if cfg.compile == "auto" else cfg.compile,
                               cuda_graph=graph if cfg.cuda_graph == "auto" else cfg.cuda_graph)


SPEED_FIELDS = ("amp", "channels_last", "compile", "compile_losses", "compile_channels_last", "tf32", "cuda_graph",
                "fused_adam")
"""The config fields that change a step's speed and not what it computes (beyond rounding)."""


def speed_settings(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg``'s ``SPEED_FIELDS`` by name, as the benchmarks record them."""
    return {name: getattr(cfg, name) for name in SPEED_FIELDS}


def resolve_amp(amp: str, device: torch.device) -> str:
    """``amp`` with ``auto`` decided for ``device``: ``bf16`` on a CUDA device that has it, else ``none``."""
    import torch

    if amp != "auto":
        return amp
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as YAML-friendly values (paths as strings, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
    return out


# ---------------------------------------------------------------------------------------------------- eval


@dataclass
class EvalConfig:
    """Options of ``pgpig eval`` (one field per command-line option)."""

    shards: Path = Path("shards")
    """Shard-set root; the pairs are ``shards/<split>``."""
    split: str = "test"
    run_dir: Path | None = None
    """A run folder of ``pgpig train``: generate, then score. Exactly one of ``run_dir`` and ``generated``."""
    generated: Path | None = None
    """A folder of images made elsewhere, named by the pairs (PATN or GFLA names)."""
    sampling: dict[str, Any] | None = None
    """A diffusion run's sampler settings for this evaluation (``SAMPLING_FIELDS`` of the run's config), over the
    run's own."""
    target_from: str = "shards"
    """Each pair's target: ``shards`` (the stored image, the true target) or ``panel`` (the target slice of each
    PATN/XingGAN five-image panel of ``generated`` as read from the file, what the official scripts score against)."""
    out: Path | None = None
    """Output folder; default ``RUN/eval/<split>`` or ``<generated>-eval``."""
    metrics: tuple[str, ...] | None = None
    """Metrics asked for explicitly (missing weights are then an error); ``None``: all, skipping unavailable ones."""
    ssim: str = "patn"
    """The SSIM setting reported as ``ssim``: patn, gfla or pg2."""
    fid_reference: str = "train"
    """Real images of FID: the ``train`` split's stored images (GFLA) or the ``test`` split's."""
    fid_network: str = "tf"
    """FID features: ``tf`` (the TensorFlow FID Inception) or ``torchvision`` (GFLA's and DPTN's: torchvision's
    ImageNet Inception-v3, ``pgpig.metrics.FID_NETWORKS``)."""
    perceptual_frame: str = "padded"
    """The frame LPIPS, mask-LPIPS and FID see: ``padded`` (the stored frame, 176-wide DeepFashion images padded
    back to 256 with white) or ``crop`` (PATN's unpadded 176-wide crop of a DeepFashion ``img/`` shard set, as DPTN's
    ``metrics/metrics.py`` scores them; ``pgpig.evaluate.PERCEPTUAL_FRAMES``)."""
    lpips_net: str = "alex"
    baseline: bool = True
    """Also score the copy-the-source baseline."""
    max_pairs: int | None = None
    """Only the first N pairs (a quick look); recorded in the output."""
    batch_size: int = 32
    num_workers: int = 0
    device: str = DEFAULT_DEVICE
    weights_dir: Path | None = None
    pose_model: Path | None = None
    alpha: float = 0.5
    """PCKh threshold as a fraction of the head size."""
    pckh_protocol: str = "strict"
    """The PCKh reported as ``pckh``: ``strict`` or ``patn`` (PATN's integer keypoints and DeepFashion crop);
    both are in ``eval.json``."""
    progress: bool = True
    feature_extractor: Any = field(default=None, repr=False)
    """A ``FeatureExtractor`` to use instead of the FID Inception (tests, other features)."""
    lpips: Any = field(default=None, repr=False)
    """An ``LPIPS`` module to use instead of the default one (tests)."""
