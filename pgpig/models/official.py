"""The official checkpoints of PATN, XingGAN, GFLA, DPTN and PIDM, loaded into pgpig's generators.

The released ``.pth`` files (tengteng95/Pose-Transfer, Ha0Tang/XingGAN, RenYurui/Global-Flow-Local-Attention,
PangzeCheung/Dual-task-Pose-Transformer-Network) are plain ``torch.save(net.state_dict())`` files, and pgpig's
generators keep the official parameter names and shapes, so loading one is ``load_state_dict(strict=True)`` once
the model is built with the checkpoint's own widths. Per model (``MODELS``) this module knows how the official
constructor's arguments, by their official names, map onto pgpig's constructor; how to read them back from a state
dict's shapes (``infer_constructor``) and which paper setting a state dict is (``paper_settings``); and the official
forward's inputs and outputs in the official order (``forward``).

``pgpig import-official`` (``import_checkpoint``) turns a checkpoint into a run folder that ``pgpig generate``,
``pgpig eval`` and ``pgpig train --init-weights`` read. Checkpoints are read with ``torch.load(weights_only=True)``
or safetensors only; keys that do not fit are listed by name, never ignored. PG2's official checkpoints are
TensorFlow files, whose flatten order and padding differ from ``pgpig.models.pg2``'s, so PG2 is not importable.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from pgpig.errors import TrainError

__all__ = ["MODELS", "OfficialModel", "forward", "import_checkpoint", "infer_constructor", "load", "paper_settings",
           "read_checkpoint"]

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class OfficialModel:
    """How one official generator maps onto pgpig's."""

    build: Callable[[dict[str, Any]], nn.Module]
    """Official constructor arguments -> pgpig's generator (fresh weights)."""
    infer: Callable[[StateDict], dict[str, Any]]
    """A state dict -> the official constructor arguments that give its shapes."""
    forward: Callable[[nn.Module, Sequence[torch.Tensor]], list[torch.Tensor]]
    """The official forward: official inputs in, official outputs out, both in the official order."""
    config: Callable[[dict[str, Any], str], dict[str, Any]]
    """Official constructor arguments and the data set -> the ``TrainConfig`` fields that rebuild the same
    generator."""
    paper: Mapping[str, dict[str, Any]]
    """The official constructor arguments of the paper's model per data set."""
    recipe: str = ""
    """The shipped recipe (under the data set's folder) an imported run's config starts from; empty: the model's
    name. GFLA's is its end-to-end stage, ``gfla-stage2``."""


def _block_count(state: StateDict, prefix: str) -> int:
    """``1 + max N`` over keys ``{prefix}N.…`` (0 when there are none): how many numbered blocks a module has."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for key in state if (m := pattern.match(key))]
    return max(found) + 1 if found else 0


def _need(state: StateDict, key: str) -> torch.Tensor:
    if key not in state:
        raise TrainError(f"the checkpoint has no {key!r}; it is not this model's official generator")
    return state[key]


# ---------------------------------------------------------------------------------------------------- PATN, XingGAN


def _two_stream_kwargs(c: dict[str, Any]) -> dict[str, Any]:
    """PATN's and XingGAN's ``define_G`` arguments -> pgpig's constructor keywords."""
    input_nc = list(c.get("input_nc", [3, 36]))
    if len(input_nc) != 2 or input_nc[1] % 2:
        raise TrainError(f"input_nc must be [image channels, 2 x pose channels], got {input_nc}")
    if c.get("padding_type", "reflect") != "reflect":
        raise TrainError(f"only padding_type 'reflect' (the official default) is built, got {c['padding_type']!r}")
    if c.get("output_nc", input_nc[0]) != input_nc[0]:
        raise TrainError(f"output_nc {c['output_nc']} differs from the image channels {input_nc[0]}")
    return {"image_channels": input_nc[0], "pose_channels": input_nc[1] // 2, "ngf": c.get("ngf", 64),
            "n_blocks": c.get("n_blocks", 9), "norm": c.get("norm", "instance"),
            "n_downsampling": c.get("n_downsampling", 2), "dropout": 0.5 if c.get("use_dropout", True) else 0.0}


def _two_stream_infer(state: StateDict) -> dict[str, Any]:
    """``define_G`` arguments read from a PATN or XingGAN state dict (dropout leaves no weights: assumed on, as both
    papers train; it only matters in training mode)."""
    image, pose = _need(state, "model.stream1_down.1.weight"), _need(state, "model.stream2_down.1.weight")
    downs = sum(1 for key, value in state.items()
                if re.fullmatch(r"model\.stream1_down\.\d+\.weight", key) and value.dim() == 4) - 1
    return {"input_nc": [image.shape[1], pose.shape[1]], "output_nc": image.shape[1], "ngf": image.shape[0],
            "norm": "batch" if any(key.endswith(".running_mean") for key in state) else "instance",
            "use_dropout": True, "n_blocks": _block_count(state, "model.att."), "n_downsampling": downs,
            "padding_type": "reflect"}


def _two_stream_forward(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The official forward takes ``[image, cat(source pose, target pose)]`` and returns ``[image]``."""
    image, poses = inputs
    half = poses.shape[1] // 2
    return [model(image, poses[:, :half], poses[:, half:])]


def _two_stream_config(c: dict[str, Any], dataset: str) -> dict[str, Any]:
    kwargs = _two_stream_kwargs(c)
    if kwargs["image_channels"] != 3 or kwargs["pose_channels"] != 18 or kwargs["n_downsampling"] != 2:
        raise TrainError("pgpig trains and generates with 3-channel images, 18 pose maps and 2 downsamplings; "
                         f"this checkpoint has {kwargs['image_channels']}, {kwargs['pose_channels']} and "
                         f"{kwargs['n_downsampling']}")
    return {key: kwargs[key] for key in ("ngf", "n_blocks", "norm", "dropout")}


def _two_stream(model_name: str) -> OfficialModel:
    def build(c: dict[str, Any]) -> nn.Module:
        from pgpig import models

        return models.create(model_name, **_two_stream_kwargs(c))

    paper = {dataset: {"input_nc": [3, 36], "output_nc": 3, "ngf": 64, "norm": norm, "use_dropout": True,
                       "n_blocks": 9, "n_downsampling": 2, "padding_type": "reflect"}
             for dataset, norm in (("deepfashion", "instance"), ("market1501", "batch"))}
    return OfficialModel(build, _two_stream_infer, _two_stream_forward, _two_stream_config, paper)


# ---------------------------------------------------------------------------------------------------- DPTN, GFLA


def _options_config(c: dict[str, Any], dataset: str, pose_key: str,
                    derive: Callable[[Any, tuple[int, int]], dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """``TrainConfig`` fields of a generator built from ``ngf``, ``n_blocks``, ``norm`` and ``generator_options``
    (GFLA, DPTN): the options are exactly the arguments that differ from what the family's own ``derive(cfg,
    size)`` builds from the fields alone."""
    from types import SimpleNamespace

    if c.get("image_nc", 3) != 3 or c.get(pose_key, 18) != 18 or c.get("output_nc", 3) != 3:
        raise TrainError("pgpig trains and generates with 3-channel images and 18 pose maps; this checkpoint has "
                         f"{c.get('image_nc')}, {c.get(pose_key)} and {c.get('output_nc')}")
    fields = {"ngf": c["ngf"], "n_blocks": c["num_blocks"], "norm": c["norm"], **fields}
    derived = derive(SimpleNamespace(**fields, generator_options=None), STORED_SIZES[dataset])
    extra = {key: value for key, value in c.items() if key not in derived or derived[key] != value}
    return {**fields, "generator_options": extra or None}


def _weight(state: StateDict, module: str) -> torch.Tensor:
    """A conv's weight, under spectral norm ``weight_orig``."""
    return state[f"{module}.weight_orig"] if f"{module}.weight_orig" in state else _need(state, f"{module}.weight")


def _img_f(ngf: int, layers: int, widest: int) -> int:
    """``img_f`` (the width cap of GFLA's and DPTN's encoders, ``ngf * min(2**k, img_f / ngf)``) read from the widest
    encoder width: that width where it caps, else the papers' ``8 ngf`` (any value at least as wide builds the
    same model)."""
    return widest if widest < ngf * 2 ** (layers - 1) else max(widest, 8 * ngf)


def _dptn_infer(state: StateDict) -> dict[str, Any]:
    """``DPTNGenerator`` arguments from a state dict. ``nhead`` and ``activation`` leave no trace in the shapes: the
    paper's 2 and LeakyReLU are assumed; ``img_f`` only matters where it caps the widths (else the paper's 8 ngf)."""
    first, source = _weight(state, "block0.model.0"), _weight(state, "source_encoder.block0.model.0")
    ngf, image_nc = first.shape[0], source.shape[1]
    layers = 1 + _block_count(state, "source_encoder.encoder")
    dim = _need(state, "PTM.decoder.norm.weight").shape[0] if "PTM.decoder.norm.weight" in state else \
        _need(state, "PTM.encoder.layers.0.linear1.weight").shape[0]
    return {"image_nc": image_nc, "pose_nc": (first.shape[1] - image_nc) // 2, "ngf": ngf,
            "img_f": _img_f(ngf, layers, dim), "encoder_layer": layers,
            "norm": "batch" if any(key.endswith(".running_mean") for key in state) else "instance",
            "activation": "LeakyReLU", "use_spect": any(key.endswith(".weight_orig") for key in state),
            "use_coord": False, "output_nc": _weight(state, "outconv.conv1").shape[0],
            "num_blocks": _block_count(state, "mblock"), "affine": "PTM.decoder.norm.weight" in state, "nhead": 2,
            "num_CABs": _block_count(state, "PTM.encoder.layers."),
            "num_TTBs": _block_count(state, "PTM.decoder.layers.")}


def _dptn_forward(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The official forward with ``is_train=True``: ``image, source pose, target pose`` -> ``[target image, source
    reconstruction]``."""
    image, source_pose, target_pose = inputs
    return list(model(image, source_pose, target_pose, is_train=True))


def _dptn_config(c: dict[str, Any], dataset: str) -> dict[str, Any]:
    from pgpig.models.dptn import PAPER_SETTINGS, generator_kwargs

    return _options_config(c, dataset, "pose_nc",
                           lambda cfg, size: {**PAPER_SETTINGS[dataset], **generator_kwargs(cfg)})


def _dptn() -> OfficialModel:
    def build(c: dict[str, Any]) -> nn.Module:
        from pgpig import models

        return models.create("dptn", **c)

    from pgpig.models.dptn import PAPER_SETTINGS

    return OfficialModel(build, _dptn_infer, _dptn_forward, _dptn_config, PAPER_SETTINGS)


# ---------------------------------------------------------------------------------------------------- GFLA


def _gfla_infer(state: StateDict) -> dict[str, Any]:
    """``PoseGenerator`` arguments from a state dict (the flow estimator's widths are fixed by the official code).
    Attention block ``attn{i}`` of the target net sits at level ``layers - i``; its first conv's kernel is that
    level's ``extractor_kz``; ``activation`` leaves no trace in the shapes (the paper's LeakyReLU is assumed)."""
    first, source = _weight(state, "target.block0.model.2"), _weight(state, "source.block0.model.2")
    layers = 1 + _block_count(state, "target.encoder")
    widest = _weight(state, f"target.encoder{layers - 2}.model.2").shape[0] if layers > 1 else first.shape[0]
    levels = {layers - i: _weight(state, f"target.attn{i}.fully_connect_layer.0").shape[-1]
              for i in range(layers) if any(k.startswith(f"target.attn{i}.") for k in state)}
    # decoder{i} is [a stack of num_blocks - 1 residual blocks,] then the upsampling block
    stacked = any(k.startswith("target.decoder0.1.") for k in state)
    return {"image_nc": source.shape[1], "structure_nc": first.shape[1],
            "output_nc": _weight(state, "target.outconv.conv1").shape[0], "ngf": first.shape[0],
            "img_f": _img_f(first.shape[0], layers, widest), "layers": layers,
            "num_blocks": 1 + (_block_count(state, "target.decoder0.0.model.") if stacked else 0),
            "norm": "batch" if any(key.endswith(".running_mean") for key in state) else "instance",
            "activation": "LeakyReLU", "attn_layer": sorted(levels),
            "extractor_kz": {str(level): levels[level] for level in sorted(levels)},
            "use_spect": any(key.endswith(".weight_orig") for key in state), "use_coord": False}


def _gfla_forward(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``image, source pose, target pose`` -> ``[image, *flow fields, *occlusion masks]``."""
    image, flows, masks = model(*inputs)
    return [image, *flows, *masks]


def _gfla_config(c: dict[str, Any], dataset: str) -> dict[str, Any]:
    from pgpig.models.gfla import generator_settings

    return _options_config(c, dataset, "structure_nc", generator_settings, stage=2)


def _gfla() -> OfficialModel:
    def build(c: dict[str, Any]) -> nn.Module:
        from pgpig import models

        c = {k: v for k, v in c.items() if k != "flow_net"}  # the reference files note the fixed flow-net widths
        return models.create("gfla", **c)

    from pgpig.models.gfla import PAPER_SETTINGS

    return OfficialModel(build, _gfla_infer, _gfla_forward, _gfla_config, PAPER_SETTINGS, recipe="gfla-stage2")


# ---------------------------------------------------------------------------------------------------- PIDM


def _pidm_levels(c: dict[str, Any]) -> tuple[int, ...]:
    """The UNet levels of ``attention_resolutions``: level ``l`` is at ``image_size / 2**l`` pixels."""
    return tuple(level for level in range(len(c["channel_mult"]))
                 if c["image_size"] // 2**level in c["attention_resolutions"])


def _pidm_kwargs(c: dict[str, Any]) -> dict[str, Any]:
    return {"ngf": c["model_channels"], "channel_mult": tuple(c["channel_mult"]), "num_res_blocks": c["num_res_blocks"],
            "attention_levels": _pidm_levels(c), "embed_channels": c["embed_channels"], "dropout": c["dropout"],
            "pose_channels": c["in_channels"] - 3, "out_channels": c["out_channels"]}


def _pidm_infer(state: StateDict) -> dict[str, Any]:
    """``BeatGANsAutoencConfig`` arguments from a state dict: the widths of the first and last convolutions and of
    the time embedding; the levels, blocks and attention resolutions are the paper's (``--constructor`` for
    others)."""
    from pgpig.models.pidm import OFFICIAL_PAPER_CONFIG

    first = _need(state, "input_blocks.0.0.weight")
    return {**OFFICIAL_PAPER_CONFIG, "model_channels": first.shape[0], "in_channels": first.shape[1],
            "out_channels": _need(state, "out.2.weight").shape[0],
            "embed_channels": _need(state, "time_embed.time_embed.0.weight").shape[0]}


def _pidm_forward(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The official forward with every condition kept (``prob=1``): ``cat(x_t, target pose), t, source image`` ->
    ``[noise and variance prediction]``."""
    x, t, source = inputs
    return [model(source, None, x[:, 3:], noisy=x[:, :3], timesteps=t)]


def _pidm_config(c: dict[str, Any], dataset: str) -> dict[str, Any]:
    return {"ngf": c["model_channels"], "channel_mult": list(c["channel_mult"]), "n_blocks": c["num_res_blocks"],
            "attention_levels": list(_pidm_levels(c)), "embed_channels": c["embed_channels"], "dropout": c["dropout"],
            "pose_encoding": "sticks"}


def _pidm() -> OfficialModel:
    def build(c: dict[str, Any]) -> nn.Module:
        from pgpig import models

        return models.create("pidm", **_pidm_kwargs(c))

    from pgpig.models.pidm import OFFICIAL_PAPER_CONFIG

    return OfficialModel(build, _pidm_infer, _pidm_forward, _pidm_config, {"deepfashion": OFFICIAL_PAPER_CONFIG})


MODELS: dict[str, OfficialModel] = {"patn": _two_stream("patn"), "xinggan": _two_stream("xinggan"), "dptn": _dptn(),
                                    "gfla": _gfla(), "pidm": _pidm()}
"""The importable generators by pgpig model name."""


def _spec(name: str) -> OfficialModel:
    if name not in MODELS:
        raise TrainError(f"no official checkpoint support for {name!r}; choose one of: {', '.join(sorted(MODELS))}"
                         + (" (PG2's official checkpoints are TensorFlow files)" if name == "pg2" else ""))
    return MODELS[name]


# ---------------------------------------------------------------------------------------------------- API


def _strip_wrapper(state: StateDict) -> dict[str, torch.Tensor]:
    """A state dict saved from ``nn.DataParallel`` has every key under ``module.``; drop that prefix."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def _mismatch(expected: Mapping[str, tuple[int, ...]], state: StateDict, limit: int = 8) -> str:
    """Missing, unexpected and wrongly shaped keys, by name (the first ``limit`` of each)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shaped = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
              if k in state and tuple(state[k].shape) != expected[k]]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shaped)):
        if keys:
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            parts.append(f"{label} ({len(keys)}): {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)


def infer_constructor(name: str, state_dict: StateDict) -> dict[str, Any]:
    """The official constructor arguments (official names) that give ``state_dict``'s keys and shapes."""
    return _spec(name).infer(_strip_wrapper(state_dict))


def meta_shapes(spec: OfficialModel, constructor: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of ``spec``'s generator built with ``constructor``, without allocating it."""
    with torch.device("meta"):
        return _shapes(spec.build(dict(constructor)))


def paper_settings(name: str, state_dict: StateDict) -> list[str]:
    """The data sets (``deepfashion``, ``market1501``) whose paper model has exactly ``state_dict``'s keys and shapes
    (both, for a generator the papers build alike on the two)."""
    spec, state = _spec(name), _strip_wrapper(state_dict)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    return [dataset for dataset, constructor in spec.paper.items() if meta_shapes(spec, constructor) == shapes]


def load(name: str, state_dict: StateDict, constructor: dict[str, Any] | None = None) -> nn.Module:
    """pgpig's ``name`` generator holding the official ``state_dict`` (float32, eval mode, on the CPU).

    ``constructor``: the official constructor's arguments by their official names; omitted, they are inferred from
    the state dict's shapes. ``TrainError`` listing the keys by name when the state dict does not fit."""
    spec, state = _spec(name), _strip_wrapper(state_dict)
    if constructor is None:
        constructor = spec.infer(state)
    # built without memory or initialisation (DPTN's orthogonal init alone takes seconds), then given the weights
    with torch.device("meta"):
        model = spec.build(dict(constructor))
    problems = _mismatch(_shapes(model), state)
    if problems:
        raise TrainError(f"the checkpoint does not fit the official {name} generator built with {constructor}: "
                         f"{problems}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True,
                          assign=True)
    left = [k for k, v in [*model.named_parameters(), *model.named_buffers()] if v.is_meta]
    if left:  # a tensor the state dict does not hold (none of the official generators has one)
        raise TrainError(f"the official {name} generator has tensors no checkpoint sets: {', '.join(left)}")
    return model.eval()


def forward(name: str, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The official forward of ``name``: its inputs in the official order, its outputs in the official order."""
    return _spec(name).forward(model, list(inputs))


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint file: ``torch.load(weights_only=True)`` (anything that needs
    unpickling arbitrary objects is refused) or safetensors, a flat ``{name: tensor}`` mapping; of a training
    checkpoint ``{"model": ..., "ema": ...}`` of plain tensors (PIDM's, less its pickled config), the average."""
    from pgpig.weights import read_state_dict

    return read_state_dict(Path(path), "official checkpoint",
                           "give the generator file the official repository saved (a plain state dict, e.g. "
                           "latest_net_netG.pth / latest_net_G.pth); PIDM's last.pt also pickles its config object: "
                           "save its weights alone where that code runs, e.g. torch.save(torch.load('last.pt')['ema'], "
                           "'pidm_ema.pt'), and import that", inner="ema")


# ---------------------------------------------------------------------------------------------------- run folders

# (height, width) of each data set's stored images (pgpig-data pair's defaults); a recipe's crop_margin narrows them
# to what its model sees (PATN and XingGAN on DeepFashion: 256x176)
STORED_SIZES = {"deepfashion": (256, 256), "market1501": (128, 64)}


def _paper_dataset(name: str, state: StateDict, checkpoint: Path) -> str:
    """The one data set whose paper model ``state`` is; ``TrainError`` asking for ``--dataset`` otherwise."""
    candidates = paper_settings(name, state)
    if len(candidates) != 1:
        which = (f"the paper builds the same {name} for {' and '.join(candidates)}" if candidates else
                 f"its shapes are not a paper model of {name} ({infer_constructor(name, state)})")
        raise TrainError(f"{checkpoint}: {which}; say which data set with --dataset")
    return candidates[0]


def import_checkpoint(name: str, checkpoint: Path, out: Path, dataset: str | None = None,
                      constructor: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the run folder ``out`` (``config.yaml`` + ``generator.safetensors``) holding the official checkpoint.

    The config is the shipped paper recipe ``{dataset}/{name}`` with the checkpoint's widths; ``dataset`` is read
    from the shapes when omitted (a paper model), and needed otherwise. Returns a summary (model, data set, image
    size, parameters, constructor, checkpoint SHA-256)."""
    from safetensors.torch import save_file

    from pgpig.config import config_dict, load_config, recipe_path, shipped_recipes
    from schemas.files import atomic_path

    checkpoint, out = Path(checkpoint), Path(out)
    state = _strip_wrapper(read_checkpoint(checkpoint))
    spec = _spec(name)
    if dataset is None:
        dataset = _paper_dataset(name, state, checkpoint)
    if dataset not in STORED_SIZES:
        raise TrainError(f"unknown data set {dataset!r}; choose one of: {', '.join(STORED_SIZES)}")
    constructor = dict(constructor) if constructor is not None else spec.infer(state)
    try:
        model = load(name, state, constructor)
    except TrainError as error:
        raise TrainError(f"{checkpoint}: {error}") from None
    if (out / "config.yaml").exists() or (out / "generator.safetensors").exists():
        raise TrainError(f"{out} already holds a run; choose another --out")

    recipe = f"{dataset}/{spec.recipe or name}"
    overrides = {"model": name, "run_dir": out, **spec.config(constructor, dataset)}
    cfg = load_config(recipe_path(recipe) if recipe in shipped_recipes() else None, overrides)
    stored = STORED_SIZES[dataset]
    size = (stored[0], stored[1] - 2 * cfg.crop_margin)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    meta = {"step": "0", "height": str(size[0]), "width": str(size[1]), "imported_from": checkpoint.name,
            "sha256": digest, "official_constructor": json.dumps(constructor, sort_keys=True)}
    out.mkdir(parents=True, exist_ok=True)
    # the weights first: a folder with config.yaml but no generator is "no checkpoint yet", never a wrong model
    with atomic_path(out / "generator.safetensors") as path:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    with atomic_path(out / "config.yaml") as path:
        path.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
    return {"model": name, "dataset": dataset, "size": list(size), "run": str(out), "constructor": constructor,
            "parameters": sum(p.numel() for p in model.parameters()), "sha256": digest}
