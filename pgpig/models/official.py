"""The official checkpoints of the bundled generators, loaded into pgpig's modules.

The released ``.pth`` files of PATN (Zhu et al., CVPR 2019, tengteng95/Pose-Transfer), XingGAN (Tang et al., ECCV
2020, Ha0Tang/XingGAN), GFLA (Ren et al., CVPR 2020, RenYurui/Global-Flow-Local-Attention) and DPTN (Zhang et al.,
CVPR 2022, PangzeCheung/Dual-task-Pose-Transformer-Network) are plain ``torch.save(net.state_dict())`` files. pgpig's
generators keep the official parameter names and shapes, so loading one is ``load_state_dict(strict=True)`` once
the model is built with the checkpoint's own widths. This module knows, per model:

- how the official constructor's arguments (by their official names, as ``shared/reference/official/*_public.pt``
  records them) map onto pgpig's constructor;
- how to read those arguments back from a state dict's shapes (``infer_constructor``), and which paper setting
  (DeepFashion or Market-1501) a state dict is (``paper_setting``);
- the official forward's inputs and outputs, in the official order (``forward``).

``pgpig import-official`` (``import_checkpoint``) turns a checkpoint into a run folder that ``pgpig generate`` and
``pgpig eval`` read, and that ``pgpig train --init-weights`` fine-tunes from. Checkpoints are read with
``torch.load(weights_only=True)`` or safetensors only; keys that do not fit are listed by name, never ignored.

PG2's official checkpoints are TensorFlow files: no TensorFlow checkpoint reader is installable in this workplace,
and its flatten order and padding differ from pgpig's (``pgpig.models.pg2``), so PG2 is not importable.
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

__all__ = ["MODELS", "OfficialModel", "forward", "import_checkpoint", "infer_constructor", "load", "paper_setting",
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
    config: Callable[[dict[str, Any]], dict[str, Any]]
    """Official constructor arguments -> the ``TrainConfig`` fields that rebuild the same generator."""
    paper: Mapping[str, dict[str, Any]]
    """The official constructor arguments of the paper's model per data set."""
    note: str = ""
    """What the user should know (e.g. outputs not reproducible from a reference)."""


def _block_count(state: StateDict, prefix: str) -> int:
    """``1 + max N`` over keys ``{prefix}N.…`` (0 when there are none)."""
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


def _two_stream_config(c: dict[str, Any]) -> dict[str, Any]:
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


MODELS: dict[str, OfficialModel] = {"patn": _two_stream("patn"), "xinggan": _two_stream("xinggan")}
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


def paper_setting(name: str, state_dict: StateDict) -> str | None:
    """The data set (``deepfashion``, ``market1501``) whose paper model ``state_dict`` is, or ``None``."""
    spec, state = _spec(name), _strip_wrapper(state_dict)
    for dataset, constructor in spec.paper.items():
        if constructor == spec.infer(state):
            return dataset
    return None


def load(name: str, state_dict: StateDict, constructor: dict[str, Any] | None = None) -> nn.Module:
    """pgpig's ``name`` generator holding the official ``state_dict`` (float32, eval mode, on the CPU).

    ``constructor``: the official constructor's arguments by their official names; omitted, they are inferred from
    the state dict's shapes. ``TrainError`` listing the keys by name when the state dict does not fit."""
    spec, state = _spec(name), _strip_wrapper(state_dict)
    if constructor is None:
        constructor = spec.infer(state)
    model = spec.build(dict(constructor))
    expected = _shapes(model)
    problems = _mismatch(expected, state)
    if problems:
        raise TrainError(f"the checkpoint does not fit the official {name} generator built with {constructor}: "
                         f"{problems}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model.eval()


def forward(name: str, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The official forward of ``name``: its inputs in the official order, its outputs in the official order
    (``shared/reference/README.md``, ``official/``)."""
    return _spec(name).forward(model, list(inputs))


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint file: ``torch.load(weights_only=True)`` (anything that needs
    unpickling arbitrary objects is refused) or safetensors, a flat ``{name: tensor}`` mapping."""
    from pgpig.weights import read_state_dict

    return read_state_dict(Path(path), "official checkpoint",
                           "give the generator file the official repository saved (a plain state dict, e.g. "
                           "latest_net_netG.pth / latest_net_G.pth)")


# ---------------------------------------------------------------------------------------------------- run folders

# (height, width) of the images each data set's models see (DeepFashion in PATN's 256x176 crop, Market at 128x64)
IMAGE_SIZES = {"deepfashion": (256, 176), "market1501": (128, 64)}


def import_checkpoint(name: str, checkpoint: Path, out: Path, dataset: str | None = None,
                      constructor: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the run folder ``out`` (``config.yaml`` + ``generator.safetensors``) holding the official checkpoint.

    The config is the shipped paper recipe ``{dataset}/{name}`` with the checkpoint's widths; ``dataset`` is read
    from the shapes when omitted (a paper model), and needed otherwise. Returns a summary (model, data set, image
    size, parameters, constructor, checkpoint SHA-256)."""
    from safetensors.torch import save_file

    from pgpig.train import _config_dict, load_config, recipe_path, shipped_recipes
    from schemas.files import atomic_path

    checkpoint, out = Path(checkpoint), Path(out)
    state = _strip_wrapper(read_checkpoint(checkpoint))
    spec = _spec(name)
    if dataset is None:
        dataset = paper_setting(name, state)
        if dataset is None:
            raise TrainError(f"{checkpoint}: its shapes are not a paper model of {name} "
                             f"({infer_constructor(name, state)}); say which data set with --dataset")
    if dataset not in IMAGE_SIZES:
        raise TrainError(f"unknown data set {dataset!r}; choose one of: {', '.join(IMAGE_SIZES)}")
    constructor = dict(constructor) if constructor is not None else spec.infer(state)
    try:
        model = load(name, state, constructor)
    except TrainError as error:
        raise TrainError(f"{checkpoint}: {error}") from None
    if (out / "config.yaml").exists() or (out / "generator.safetensors").exists():
        raise TrainError(f"{out} already holds a run; choose another --out")

    recipe = f"{dataset}/{name}"
    overrides = {"model": name, "run_dir": out, **spec.config(constructor)}
    cfg = load_config(recipe_path(recipe) if recipe in shipped_recipes() else None, overrides)
    size = IMAGE_SIZES[dataset]
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    meta = {"step": "0", "height": str(size[0]), "width": str(size[1]), "imported_from": checkpoint.name,
            "sha256": digest, "official_constructor": json.dumps(constructor, sort_keys=True)}
    out.mkdir(parents=True, exist_ok=True)
    # the weights first: a folder with config.yaml but no generator is "no checkpoint yet", never a wrong model
    with atomic_path(out / "generator.safetensors") as path:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    with atomic_path(out / "config.yaml") as path:
        path.write_text(yaml.safe_dump(_config_dict(cfg), sort_keys=False))
    return {"model": name, "dataset": dataset, "size": list(size), "run": str(out), "constructor": constructor,
            "parameters": sum(p.numel() for p in model.parameters()), "sha256": digest}
