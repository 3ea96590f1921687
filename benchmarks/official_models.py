"""The official training code of PATN, XingGAN, DPTN, GFLA and PIDM, made importable in this process for
``official_bench.py``.

Each official repository (a ``git archive`` of tengteng95/Pose-Transfer, Ha0Tang/XingGAN,
PangzeCheung/Dual-task-Pose-Transformer-Network, RenYurui/Global-Flow-Local-Attention, ankanbhunia/PIDM, never
committed) is copied
(its ``.py`` files) to a work folder with the textual ``PORTS`` a file needs to import or run on current PyTorch
(each must match its stated number of times, so a changed upstream file stops the run), and put first on
``sys.path``. ``install_shims`` makes the runtime changes (``SHIMS``) the code needs in this process without
editing it. Per model, ``OFFICIAL`` holds the DeepFashion training command line of the repository's own script
(README or ``train_*.sh``), parsed by the repository's own option parser, and how its model class is fed
(``set_input``'s dict) and how its generator, discriminators and generator optimizer are reached. PIDM has no
model class: ``PIDMStep`` runs ``train.py``'s step and ``diffusion.ddim_steps`` through the official functions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import re
import shutil
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# (old text, expected count, new text, why)
Port = tuple[str, int, str, str]

DATA0 = (".data[0]", 6, ".item()",
         "indexing a 0-dim tensor is an error since PyTorch 0.5; .item() is the replacement (a host sync, as "
         ".data[0] was), the one XingGAN's copy of this file already made")

SHIMS = {
    "vgg19": "torchvision.models.vgg19 builds a randomly initialised VGG-19 (weights=None): the ImageNet weights "
             "cannot be downloaded on the benchmark machines; the cost of a step is the same",
    "skimage.draw.circle": "alias of a function raising NotImplementedError: the official util modules import "
                           "skimage.draw.circle (removed in scikit-image 0.19) for pose drawing, which no "
                           "training step calls",
    "pandas": "an empty stand-in module when pandas is not installed: DPTN's and GFLA's option parsers import their "
              "data set modules (which import pandas) to read their defaults; no training step uses pandas",
    "natsort": "a stand-in module (natsorted = sorted) when natsort is not installed: GFLA's util imports it for "
               "file listings no training step makes",
    "cuda-on-cpu": "on the CPU only: Tensor.cuda() and Module.cuda() return the object unchanged (the official "
                   "perceptual losses call .cuda() whatever the device)",
    "cpu-inputs": "on the CPU only: DPTN's and GFLA's set_input move their inputs to attributes only when they "
                  "have GPU ids, so the bench sets the same attributes before calling it",
    "wandb": "an empty stand-in module when wandb is not installed: PIDM's train.py imports it for logging, which "
             "its training step does not do",
    "tensorfn": "stand-in modules tensorfn, tensorfn.config (plain classes for the config field types) and "
                "tensorfn.optim when tensorfn is not installed: PIDM's config/diffconfig.py and train.py import them "
                "to parse config/diffusion.conf; the bench reads that file's values (PIDM_CONF) and builds the "
                "optimizer and scheduler itself",
    "pydantic": "stand-in types StrictStr, StrictInt, StrictFloat, StrictBool when pydantic is not installed: "
                "PIDM's config/diffconfig.py annotates its config fields with them",
    "pidm-scheduler": "PIDM's tensorfn 'cycle' scheduler (warm-up of 5,000 steps from lr x 0.04, then flat) as a "
                      "torch LambdaLR: train.py steps it every step; only the learning rate it sets differs",
    "pidm-single-process": "PIDM's train.py wraps the model in DistributedDataParallel (find_unused_parameters) "
                           "even on one GPU; the bench runs its step on the plain model, as pgpig's train_step "
                           "runs one process (accumulate(ema, model.module) becomes accumulate(ema, model))",
    "gfla-ops": "GFLA's CUDA extensions (resample2d, block_extractor, local_attn_reshape) are not built: their "
                "modules are replaced by stand-ins with the same classes calling pgpig.models.ops",
}

class ConfigStandIn:
    """A stand-in for tensorfn's config field types: PIDM's config classes subclass or annotate with them."""


STAND_INS: dict[str, dict[str, Any]] = {
    "pandas": {}, "natsort": {"natsorted": sorted}, "wandb": {},
    "tensorfn": {"load_config": None}, "tensorfn.optim": {"lr_scheduler": None},
    "pydantic": {"StrictStr": str, "StrictInt": int, "StrictFloat": float, "StrictBool": bool},
    "tensorfn.config": {name: type(name, (ConfigStandIn,), {}) for name in ("MainConfig", "Config", "Optimizer",
                                                                            "Scheduler", "DataLoader", "Instance")}}
"""Modules the official code imports for parts no training step runs: their stand-ins' attributes."""


@dataclass(frozen=True)
class Official:
    """How one official repository's model class is built and driven."""

    folder: str
    """The subfolder of ``--official-repo``'s parent layout (``official/<folder>``), also the pgpig model name."""
    repo: str
    argv: tuple[str, ...]
    """The DeepFashion training command line of the official script, verbatim (``--batchSize`` and ``--gpu_ids``
    are then overridden by the bench)."""
    argv_source: str
    options: Callable[[list[str]], Any]
    """argv -> the argparse namespace the official option classes make (no files written)."""
    create: Callable[[Any], Any]
    """options -> the official model object (``optimize_parameters`` ready)."""
    inputs: Callable[[dict[str, torch.Tensor]], dict[str, Any]]
    """``{source, target, source_pose, target_pose}`` -> ``set_input``'s dict."""
    generator: Callable[[Any], nn.Module]
    discriminators: Callable[[Any], list[nn.Module]]
    optimizer_g: Callable[[Any], torch.optim.Optimizer]
    generate: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]
    """The generator's forward as the official model calls it -> the generated target image."""
    ports: dict[str, list[Port]] = field(default_factory=dict)
    recipe: str = ""
    """pgpig's shipped recipe under ``deepfashion/`` (empty: the folder name)."""
    ops: str = "official"
    """Whose custom ops the official side runs (GFLA: ``pgpig``'s)."""
    cpu_shims: tuple[str, ...] = ()
    """Shims its ``create`` applies on the CPU (``cpu-inputs``)."""
    after_import: Callable[[], list[str]] | None = None
    """Shims that replace official modules, made once the code is on ``sys.path``; returns their names."""
    kinds: tuple[str, ...] = ("full", "generator")
    """The bench's step kinds this model has (``--kinds``' default)."""
    bench_argv: Callable[[int, torch.device], list[str]] = lambda batch, device: [
        "--batchSize", str(batch), "--gpu_ids", gpu_ids(device)]
    """The flags the bench appends to ``argv``: the batch and the device."""
    configure: Callable[[Any, Any, tuple[int, int]], dict[str, Any]] | None = None
    """``(options, pgpig config, (H, W))`` -> the official network's settings, put on the options (PIDM: its
    ``get_model_conf()`` with the width, image size and attention levels of the pgpig config, so that a reduced
    config builds both networks alike); None: the options alone decide."""
    sample: Callable[[Any, dict[str, torch.Tensor], torch.Tensor], torch.Tensor] | None = None
    """``(model, batch, noise (B, 3, H, W))`` -> images: the official sampler as its scripts call it (``sample``
    kind)."""


# ---------------------------------------------------------------------------------------------------- the code


def prepare(source: Path, work: Path, ports: dict[str, list[Port]]) -> list[str]:
    """Copy the ``.py`` (and ``.conf``: PIDM's config) files of ``source`` to ``work`` with ``ports`` applied;
    returns them as ``file: old -> new (why)``. A port whose text does not occur its stated number of times stops
    the run."""
    if not source.is_dir():
        raise SystemExit(f"{source}: no official checkout here; export it with git archive (see official_bench.py)")
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(source, work, ignore=lambda d, names: [n for n in names if (Path(d) / n).is_file()
                                                           and not n.endswith((".py", ".conf"))] + ["__pycache__"])
    done = []
    for name, changes in ports.items():
        path = work / name
        text = path.read_text()
        for old, count, new, why in changes:
            if text.count(old) != count:
                raise SystemExit(f"{source / name}: expected {old!r} {count} times, found {text.count(old)}: the "
                                 "official file changed; review the ports in official_models.py")
            text = text.replace(old, new)
            done.append(f"{name}: `{old}` x{count} -> `{new}` ({why})")
        path.write_text(text)
    return done


def install_shims(device: torch.device) -> list[str]:
    """The runtime shims (``SHIMS``) for this process; returns their names."""
    import skimage.draw
    import torchvision.models

    done = ["vgg19"]
    plain_vgg19 = torchvision.models.vgg19

    def vgg19(*args: Any, pretrained: bool = False, weights: Any = None, **kwargs: Any) -> nn.Module:
        return plain_vgg19(*args, weights=None, **kwargs)

    torchvision.models.vgg19 = vgg19
    if not hasattr(skimage.draw, "circle"):
        def circle(*args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("skimage.draw.circle: removed from scikit-image (bench shim)")

        skimage.draw.circle = circle
        done.append("skimage.draw.circle")
    for name, attributes in STAND_INS.items():
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = stand_in = types.ModuleType(name)
            vars(stand_in).update(attributes)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, stand_in)
            if name.split(".")[0] not in done:
                done.append(name.split(".")[0])
    if device.type == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self
        nn.Module.cuda = lambda self, *a, **k: self
        done.append("cuda-on-cpu")
    return done


def load_code(work: Path) -> None:
    """Put ``work`` first on ``sys.path`` (the official packages are top-level ``models``, ``options``, ...)."""
    for name in [n for n in sys.modules if n.split(".")[0] in ("models", "options", "losses", "util", "data",
                                                                "model", "config", "diffusion", "train")]:
        del sys.modules[name]
    sys.path.insert(0, str(work))


def quietly(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with its prints (network listings, option tables) kept off our stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def gpu_ids(device: torch.device) -> str:
    return str(device.index or 0) if device.type == "cuda" else "-1"


def parsed_gpu_ids(opt: Any) -> None:
    """The official ``parse()``'s turning of ``--gpu_ids`` into a list and selecting the first GPU (its other part,
    writing ``opt.txt``, is left out)."""
    opt.gpu_ids = [int(i) for i in str(opt.gpu_ids).split(",") if int(i) >= 0]
    if opt.gpu_ids:
        torch.cuda.set_device(opt.gpu_ids[0])


# ---------------------------------------------------------------------------------------------------- PATN, XingGAN


def two_stream_options(argv: list[str]) -> Any:
    train_options = importlib.import_module("options.train_options")
    options = train_options.TrainOptions()
    options.initialize()
    opt = options.parser.parse_args(argv)
    opt.isTrain = options.isTrain
    parsed_gpu_ids(opt)
    return opt


def two_stream_create(opt: Any) -> Any:
    return importlib.import_module("models.models").create_model(opt)


def two_stream_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"P1": batch["source"], "BP1": batch["source_pose"], "P2": batch["target"], "BP2": batch["target_pose"],
            "P1_path": ["source.jpg"], "P2_path": ["target.jpg"]}


def two_stream_generate(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.netG([batch["source"], torch.cat((batch["source_pose"], batch["target_pose"]), 1)])


def _two_stream(folder: str, repo: str, argv: str, source: str, ports: dict[str, list[Port]]) -> Official:
    return Official(folder, repo, tuple(argv.split()), source, two_stream_options, two_stream_create,
                    two_stream_inputs, lambda m: m.netG, lambda m: [m.netD_PB, m.netD_PP], lambda m: m.optimizer_G,
                    two_stream_generate, ports)


PATN = _two_stream(
    "patn", "tengteng95/Pose-Transfer",
    "--dataroot ./fashion_data/ --name fashion_PATN --model PATN --lambda_GAN 5 --lambda_A 1 --lambda_B 1 "
    "--dataset_mode keypoint --n_layers 3 --norm instance --batchSize 7 --pool_size 0 --resize_or_crop no "
    "--gpu_ids 0 --BP_input_nc 18 --no_flip --which_model_netG PATN --niter 500 --niter_decay 200 "
    "--checkpoints_dir ./checkpoints --pairLst ./fashion_data/fasion-resize-pairs-train.csv "
    "--L1_type l1_plus_perL1 --n_layers_D 3 --with_D_PP 1 --with_D_PB 1 --display_id 0",
    "README.md (DeepFashion train command)", {"models/PATN.py": [DATA0]})

XINGGAN = _two_stream(
    "xinggan", "Ha0Tang/XingGAN",
    "--dataroot ./SelectionGAN/person_transfer/datasets/fashion_data/ --name deepfashion_XingGAN --model XingGAN "
    "--lambda_GAN 5 --lambda_A 50 --lambda_B 1 --dataset_mode keypoint --n_layers 3 --norm instance --batchSize 32 "
    "--pool_size 0 --resize_or_crop no --gpu_ids 0 --BP_input_nc 18 --no_flip --which_model_netG Xing --niter 200 "
    "--niter_decay 100 --checkpoints_dir ./checkpoints "
    "--pairLst ./SelectionGAN/person_transfer/datasets/fashion_data/fasion-resize-pairs-train.csv "
    "--L1_type l1_plus_perL1 --n_layers_D 3 --with_D_PP 1 --with_D_PB 1 --display_id 0 --gpu_ids 0,1,2,3",
    "train_deepfashion.sh (its 4 GPUs: one here)", {})


# ---------------------------------------------------------------------------------------------------- DPTN


def options_with_setters(argv: list[str]) -> Any:
    """DPTN's and GFLA's ``BaseOptions.parse`` without its file writes: the base and train options, then the
    model's and the data set's option setters (``gather_options``), parsed from ``argv``."""
    saved = sys.argv
    sys.argv = ["train.py", *argv]  # the option classes read sys.argv (parse_known_args)
    try:
        options = importlib.import_module("options.train_options").TrainOptions()
        if hasattr(options, "gather_options"):  # GFLA
            opt = options.gather_options()
        else:  # DPTN: the same steps inside parse()
            options.initialize()
            opt, _ = options.parser.parse_known_args()
            parser = importlib.import_module("models").get_option_setter(opt.model)(options.parser, options.isTrain)
            parser = importlib.import_module("data").get_option_setter(opt.dataset_mode)(parser, options.isTrain)
            opt = parser.parse_args()
    finally:
        sys.argv = saved
    opt.isTrain = options.isTrain
    opt.device = torch.device("cuda") if "-1" not in opt.gpu_ids.split(",") else torch.device("cpu")
    parsed_gpu_ids(opt)
    return opt


def cpu_inputs(model: Any, opt: Any, names: dict[str, str]) -> Any:
    """Shim ``cpu-inputs``: without GPU ids, set ``model.<attribute>`` from ``set_input``'s dict (``names``: key ->
    attribute) before the official ``set_input``, which sets them only on a GPU."""
    if not opt.gpu_ids:
        plain = model.set_input

        def set_input(inputs: dict[str, Any]) -> None:
            for key, attribute in names.items():
                setattr(model, attribute, inputs[key])
            plain(inputs)

        model.set_input = set_input
    return model


def dptn_create(opt: Any) -> Any:
    model = importlib.import_module("models.models").create_model(opt)
    return cpu_inputs(model, opt, {"Xs": "source_image", "Ps": "source_pose", "Xt": "target_image",
                                   "Pt": "target_pose"})


def dptn_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    b = batch["source"].shape[0]
    return {"Xs": batch["source"], "Ps": batch["source_pose"], "Xt": batch["target"], "Pt": batch["target_pose"],
            "Xs_path": [f"s{i}.jpg" for i in range(b)], "Xt_path": [f"t{i}.jpg" for i in range(b)]}


DPTN = Official(
    "dptn", "PangzeCheung/Dual-task-Pose-Transformer-Network",
    tuple("--name=DPTN_fashion --model=DPTN --dataset_mode=fashion --dataroot=./dataset/fashion --batchSize 32 "
          "--gpu_id=0".split()),
    "scripts/train_fashion.sh", options_with_setters, dptn_create, dptn_inputs, lambda m: m.net_G, lambda m: [m.net_D],
    lambda m: m.optimizer_G,
    lambda m, b: m.net_G(b["source"], b["source_pose"], b["target_pose"])[0], cpu_shims=("cpu-inputs",))



# ---------------------------------------------------------------------------------------------------- GFLA


def gfla_ops() -> list[str]:
    """Shim ``gfla-ops``: the three extension modules as stand-ins whose classes call ``pgpig.models.ops``."""
    from pgpig.models import ops

    class Resample2d(nn.Module):
        def __init__(self, kernel_size: int = 2, dilation: int = 1, sigma: float = 5):
            super().__init__()
            self.kernel_size, self.dilation, self.sigma = kernel_size, dilation, float(sigma)

        def forward(self, source: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
            return ops.resample2d(source, flow, self.kernel_size, self.dilation, self.sigma)

    class BlockExtractor(nn.Module):
        def __init__(self, kernel_size: int = 3):
            super().__init__()
            self.kernel_size = kernel_size

        def forward(self, source: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
            return ops.block_extractor(source, flow, self.kernel_size)

    class LocalAttnReshape(nn.Module):
        def forward(self, inputs: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
            return ops.local_attn_reshape(inputs, kernel_size)

    for name, cls in (("resample2d_package.resample2d", Resample2d), ("block_extractor.block_extractor",
                                                                     BlockExtractor),
                      ("local_attn_reshape.local_attn_reshape", LocalAttnReshape)):
        module = types.ModuleType(f"model.networks.{name}")
        setattr(module, cls.__name__, cls)
        sys.modules[module.__name__] = module
    return ["gfla-ops"]


def gfla_create(opt: Any) -> Any:
    model = importlib.import_module("model").create_model(opt)
    return cpu_inputs(model, opt, {"P1": "input_P1", "BP1": "input_BP1", "P2": "input_P2", "BP2": "input_BP2"})


def gfla_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    b = batch["source"].shape[0]
    return {**two_stream_inputs(batch), "P1_path": [f"s{i}.jpg" for i in range(b)],
            "P2_path": [f"t{i}.jpg" for i in range(b)]}


ASYNC = ("async=True", 4, "non_blocking=True",
         "async is a keyword since Python 3.7 (a SyntaxError); non_blocking is the argument's name since PyTorch 0.4")

GFLA = Official(
    "gfla", "RenYurui/Global-Flow-Local-Attention",
    tuple("--name=fashion --model=pose --attn_layer=2,3 --kernel_size=2=5,3=3 --gpu_id=0 --dataset_mode=fashion "
          "--dataroot=./dataset/fashion".split()),
    "PERSON_IMAGE_GENERATION.md (the end-to-end stage; --continue_train left out: it loads stage 1's checkpoint, "
    "which does not change a step's cost)", options_with_setters, gfla_create, gfla_inputs, lambda m: m.net_G,
    lambda m: [m.net_D], lambda m: m.optimizer_G,
    lambda m, b: m.net_G(b["source"], b["source_pose"], b["target_pose"])[0],
    {"model/pose_model.py": [ASYNC]}, recipe="gfla-stage2", ops="pgpig", cpu_shims=("cpu-inputs",),
    after_import=gfla_ops)

# ---------------------------------------------------------------------------------------------------- PIDM


PIDM_CONF = {  # the values the bench reads from config/diffusion.conf: name -> pattern
    "schedule": r"schedule:\s*(linear)\b", "n_timestep": r"n_timestep:\s*(\d+)",
    "linear_start": r"linear_start:\s*([\d.e-]+)", "linear_end": r"linear_end:\s*([\d.e-]+)",
    "lr": r"optimizer:\s*{\s*type:\s*adam\s+lr:\s*([\d.e-]+)",
    "warmup": r"scheduler:\s*{\s*type:\s*cycle\s+lr:\s*[\d.e-]+\s+n_iter:\s*\d+\s+warmup:\s*(\d+)\s+"
              r"decay:\s*\[linear,\s*flat\]"}


def pidm_options(argv: list[str]) -> Any:
    """train.py's flags that its step and validation sampling read (its parser lives under ``__main__``; these are
    its names and defaults), and ``PIDM_CONF`` from the copied ``config/diffusion.conf`` (linear betas, Adam, the
    cycle scheduler's warm-up then flat)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--guidance_prob", type=float, default=0.1)
    parser.add_argument("--cond_scale", type=int, default=2)
    parser.add_argument("--sample_algorithm", default="ddim")
    parser.add_argument("--device", default="cuda")
    opt, _ = parser.parse_known_args(argv)
    vars(opt).update(read_pidm_conf(Path(importlib.import_module("diffusion").__file__).parent / "config" /
                                    "diffusion.conf"))
    opt.model_conf = {}
    return opt


def read_pidm_conf(path: Path) -> dict[str, Any]:
    """``PIDM_CONF``'s values in PIDM's ``config/diffusion.conf``; a value not found as expected stops the run."""
    text, out = path.read_text(), {}
    for name, pattern in PIDM_CONF.items():
        found = re.search(pattern, text)
        if not found:
            raise SystemExit(f"{path}: no {name} as the bench reads it; review PIDM_CONF in official_models.py")
        out[name] = found.group(1)
    return {**out, "n_timestep": int(out["n_timestep"]), "warmup": int(out["warmup"]), "lr": float(out["lr"]),
            "linear_start": float(out["linear_start"]), "linear_end": float(out["linear_end"])}


def pidm_configure(opt: Any, cfg: Any, size: tuple[int, int]) -> dict[str, Any]:
    """The official ``get_model_conf()`` settings that differ at ``cfg``'s width, levels and ``(H, W)``: at the
    paper config (256x256) none."""
    levels = tuple(cfg.channel_mult or (1, 1, 2, 2, 4, 4))
    attention = cfg.attention_levels if cfg.attention_levels is not None else (3, 4, 5)
    opt.model_conf = {"model_channels": cfg.ngf, "channel_mult": levels, "num_res_blocks": cfg.n_blocks,
                      "image_size": size[0], "attention_resolutions": tuple(size[0] // 2**level for level in attention),
                      "embed_channels": cfg.embed_channels, "dropout": cfg.dropout}
    return opt.model_conf


class PIDMStep:
    """PIDM's train.py step driven like the other official models (``set_input`` + ``optimize_parameters``), on
    the official objects: ``get_model_conf().make_model()`` twice (model and EMA), ``create_gaussian_diffusion`` of
    ``make_beta_schedule``'s betas, Adam; ``train.accumulate`` for the EMA."""

    def __init__(self, opt: Any):
        diffconfig = importlib.import_module("config.diffconfig")
        diffusion = importlib.import_module("diffusion")
        self.train = importlib.import_module("train")
        self.ddim_steps = diffusion.ddim_steps
        self.opt, device = opt, torch.device(opt.device)

        def make_model() -> nn.Module:  # make_model sets conf.in_channels for the encoder: one conf a model
            return dataclasses.replace(diffconfig.get_model_conf(), **opt.model_conf).make_model().to(device)

        self.model, self.ema = make_model(), make_model()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=opt.lr)
        warmup = opt.warmup
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(  # shim pidm-scheduler
            self.optimizer, lambda i: 0.04 + 0.96 * i / warmup if i < warmup else 1.0)
        self.betas = diffusion.make_beta_schedule(opt.schedule, opt.n_timestep, opt.linear_start, opt.linear_end)
        self.diffusion = diffusion.create_gaussian_diffusion(self.betas, predict_xstart=False)
        self.losses: list[float] = []

    def set_input(self, inputs: dict[str, torch.Tensor]) -> None:
        self.inputs = inputs

    def optimize_parameters(self) -> None:
        """train.py's loop body, in its order, on the plain model (shim pidm-single-process)."""
        img, target_img, target_pose = self.inputs["source"], self.inputs["target"], self.inputs["target_pose"]
        time_t = torch.randint(0, self.opt.n_timestep, (img.shape[0],), device=img.device)
        loss_dict = self.diffusion.training_losses(self.model, x_start=target_img, t=time_t,
                                                   cond_input=[img, target_pose], prob=1 - self.opt.guidance_prob)
        loss = loss_dict["loss"].mean()
        loss_mse = loss_dict["mse"].mean()
        loss_vb = loss_dict["vb"].mean()
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1)
        self.scheduler.step()
        self.optimizer.step()
        # train.py logs the three means every step: three host syncs
        self.losses = [loss.detach().item(), loss_mse.detach().item(), loss_vb.detach().item()]
        self.train.accumulate(self.ema, self.model, 0.9999)


def pidm_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("source", "target", "target_pose")}


def pidm_sample(step: PIDMStep, batch: dict[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
    """train.py's DDIM validation call (50 steps; ``ddim_steps`` guides with cond_scale 2) on the model, in eval
    mode as predict.py's: ``(B, 3, H, W)``, not clipped."""
    seq = range(0, step.opt.n_timestep, step.opt.n_timestep // 50)
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        xs, _ = step.ddim_steps(noise, seq, step.model, step.betas.to(noise.device),
                                [batch["source"], batch["target_pose"]])
    return xs[-1]


PIDM = Official(
    "pidm", "ankanbhunia/PIDM", tuple('--dataset_path ./dataset/deepfashion --batch_size 8 --exp_name '
                                      'pidm_deepfashion'.split()),
    "README.md (the DeepFashion train command, run by torch.distributed.launch on 8 GPUs: one process here); "
    "train.py's defaults; config/diffusion.conf", pidm_options, PIDMStep, pidm_inputs, lambda m: m.model,
    lambda m: [], lambda m: m.optimizer, lambda m, b: pidm_sample(m, b, torch.randn_like(b["source"])),
    kinds=("full", "sample"), bench_argv=lambda batch, device: ["--batch_size", str(batch), "--device", str(device)],
    configure=pidm_configure, sample=pidm_sample, after_import=lambda: ["pidm-scheduler", "pidm-single-process"])

OFFICIAL: dict[str, Official] = {"patn": PATN, "xinggan": XINGGAN, "dptn": DPTN, "gfla": GFLA, "pidm": PIDM}
"""The official training code per pgpig model name."""


def loss_modules(model: Any) -> list[nn.Module]:
    """The networks an official model holds besides generator and discriminators (VGG losses, PIDM's EMA copy),
    for the memory it keeps."""
    found = []
    for name in ("criterionL1", "Vggloss", "Correctness", "Regularization", "ema"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            found.append(module)
    return found
