"""The training losses of the pose-guided generators: pixel L1, PG2's pose-mask L1, perceptual, content and style
losses on VGG-19 features, and the adversarial losses.

The papers' definitions (PG2, arXiv:1705.09368, eq. 2 and its official TensorFlow code; PATN, arXiv:1904.03349,
``L1_plus_perceptualLoss``; GFLA, arXiv:2003.00696, ``model/networks/external_function.py``), the VGG-19 layer
names and the decisions taken are in ``docs/losses.md``. In short: ``VGG19Features`` returns named layers
(``relu1_2``, ``relu2_2``, ...; ``VGG19_LAYERS`` maps them to torchvision's ``vgg19().features`` indices) of a
frozen VGG-19 with ImageNet normalisation inside and ReLUs not in place; weights are read as tensors only, never
unpickled; Gram matrices and every loss are computed in float32 with autocast off; discriminators return logits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from pgpig.errors import TrainError
from pgpig.weights import download_state_dict, read_state_dict

__all__ = [
    "GFLA_PERCEPTUAL_LAYERS",
    "GFLA_STYLE_LAYERS",
    "PATN_PERCEPTUAL_LAYERS",
    "PerceptualLoss",
    "VGG19Features",
    "VGG19_IMAGENET_URL",
    "VGG19_LAYERS",
    "adversarial_loss",
    "gram_matrix",
    "l1_loss",
    "masked_l1",
    "vgg19_features",
    "vgg_content_style",
]

PATN_PERCEPTUAL_LAYERS = ("relu1_2",)
GFLA_PERCEPTUAL_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
GFLA_STYLE_LAYERS = ("relu2_2", "relu3_4", "relu4_4", "relu5_2")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHTS_HELP = ("pass --vgg-weights PATH (a .pth or .safetensors state dict of torchvision's vgg19, full or "
                 "features.* only)")


VGG19_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                       512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
"""VGG-19's feature stack (configuration "E" of Simonyan & Zisserman): output channels of each 3x3 convolution
(each followed by a ReLU), ``"M"`` for a 2x2 max pool; torchvision's ``vgg19().features`` has this layout."""
VGG19_IMAGENET_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
"""torchvision's ``VGG19_Weights.IMAGENET1K_V1`` file; kept here so that training does not import torchvision."""


def _vgg19_layer_names() -> dict[str, int]:
    """``{"conv1_1": 0, "relu1_1": 1, ..., "pool5": 36}``: the index of each layer in ``vgg19().features``."""
    names: dict[str, int] = {}
    index, block, conv = 0, 1, 0
    for entry in VGG19_CONFIG:
        if entry == "M":
            names[f"pool{block}"] = index
            index, block, conv = index + 1, block + 1, 0
        else:
            conv += 1
            names[f"conv{block}_{conv}"] = index
            names[f"relu{block}_{conv}"] = index + 1
            index += 2
    return names


VGG19_LAYERS: dict[str, int] = _vgg19_layer_names()


def vgg19_features(depth: int) -> nn.Sequential:
    """The first ``depth`` layers of ``vgg19().features``, freshly initialised, with ReLUs not in place (a returned
    conv output must not be overwritten by the next ReLU)."""
    layers: list[nn.Module] = []
    channels = 3
    for entry in VGG19_CONFIG:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(entry), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(entry)
        if len(layers) >= depth:
            break
    return nn.Sequential(*layers[:depth])


# ---------------------------------------------------------------------------------------------------- VGG-19 weights


def _imagenet_cache_path() -> Path:
    url = VGG19_IMAGENET_URL
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` or ``.safetensors`` file, refusing anything but tensors."""
    if not path.is_file():
        raise TrainError(f"VGG-19 weights {path} not found: {_WEIGHTS_HELP}")
    return read_state_dict(path, "VGG-19", _WEIGHTS_HELP)


def _imagenet_state_dict() -> tuple[dict[str, torch.Tensor], Path]:
    path = _imagenet_cache_path()
    if path.is_file():
        return _read_state_dict(path), path
    try:
        state = download_state_dict(VGG19_IMAGENET_URL)
    except Exception as error:  # offline (URLError), proxy, hash mismatch: all mean "no weights"
        raise TrainError(f"ImageNet VGG-19 weights unavailable ({type(error).__name__}): {_WEIGHTS_HELP}, or put "
                         f"torchvision's vgg19-dcbb9e9d.pth at {path}") from error
    return state, path


def _features_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                    source: Path) -> dict[str, torch.Tensor]:
    """The part of a vgg19 (or vgg19.features) state dict that ``expected`` (a truncated features) needs."""
    if any(key.startswith("features.") for key in state):
        state = {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
    missing = [key for key in expected if key not in state]
    if missing:
        raise TrainError(f"VGG-19 weights {source} lack {len(missing)} tensors of vgg19.features (first: "
                         f"{missing[0]!r}; has {sorted(state)[:3]}...): {_WEIGHTS_HELP}")
    for key, want in expected.items():
        if tuple(state[key].shape) != tuple(want.shape):
            raise TrainError(f"VGG-19 weights {source}: features.{key} has shape {tuple(state[key].shape)}, vgg19 "
                             f"needs {tuple(want.shape)} (not torchvision's vgg19?): {_WEIGHTS_HELP}")
    return {key: state[key] for key in expected}


# ---------------------------------------------------------------------------------------------------- features


class VGG19Features(nn.Module):
    """Frozen VGG-19 activations at named layers, for perceptual and style losses.

    Args:
        layers: names from ``VGG19_LAYERS`` (``"conv1_2"``, ``"relu2_2"``, ...); the network stops at the deepest.
        weights: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` from torch hub's cache, downloaded if online),
            a path to a ``.pth``/``.safetensors`` state dict of torchvision's ``vgg19`` (full, or ``features.*``
            only), or ``None`` for random weights (only with ``allow_random``, for tests).
        allow_random: permit ``weights=None``.

    ``forward(x)``: ``x`` ``(B, 3, H, W)`` in ``[-1, 1]`` → ``{name: (B, C, H / 2^k, W / 2^k)}``, normalised to the
    ImageNet mean/std inside. Parameters never require gradients and the module stays in eval mode, but gradients
    flow to ``x``.
    """

    def __init__(self, layers: Sequence[str], weights: str | Path | None = "imagenet",
                 allow_random: bool = False) -> None:
        super().__init__()
        self.layers = tuple(dict.fromkeys(layers))
        unknown = [name for name in self.layers if name not in VGG19_LAYERS]
        if not self.layers or unknown:
            raise ValueError(f"unknown VGG-19 layers {unknown or '(none given)'}; known: {', '.join(VGG19_LAYERS)}")
        deepest = max(VGG19_LAYERS[name] for name in self.layers)
        self.features = vgg19_features(deepest + 1)

        if weights is None:
            if not allow_random:
                raise TrainError(f"no VGG-19 weights given: {_WEIGHTS_HELP}, or use the ImageNet weights")
        else:
            if isinstance(weights, str) and weights == "imagenet":
                state, source = _imagenet_state_dict()
            else:
                source = Path(weights)
                state = _read_state_dict(source)
            self.features.load_state_dict(_features_state(state, self.features.state_dict(), source))

        self._names_at: dict[int, list[str]] = {}
        for name in self.layers:
            self._names_at.setdefault(VGG19_LAYERS[name], []).append(name)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        # a frozen loss network: a parent's .train() must not switch it
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(x.shape)}")
        x = ((x + 1) / 2 - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for index, module in enumerate(self.features):
            x = module(x)
            for name in self._names_at.get(index, ()):
                out[name] = x
        return out


# ---------------------------------------------------------------------------------------------------- losses


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, C, C)``: ``F F^T / (C H W)`` with ``F`` the ``(B, C, H W)`` features, in float32."""
    b, c, h, w = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        f = _float(x).reshape(b, c, h * w)
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements, in float32."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        return F.l1_loss(_float(pred), _float(target))


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
              weight_outside: float = 1.0) -> torch.Tensor:
    """PG2's pose-mask L1: ``mean(|pred - target| * (weight_outside + mask))``.

    ``pred``, ``target``: ``(B, C, H, W)``; ``mask``: ``(B, 1, H, W)`` or ``(B, C, H, W)`` in ``[0, 1]``. The mean is
    over all ``B C H W`` elements. ``weight_outside=1`` is PG2's ``(1 + M)``: body pixels count twice, the
    background once; ``weight_outside=0`` is the L1 on the body alone.
    """
    if mask.ndim != 4 or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:] \
            or mask.shape[1] not in (1, pred.shape[1]):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit images {tuple(pred.shape)}")
    with torch.autocast(device_type=pred.device.type, enabled=False):
        return ((_float(pred) - _float(target)).abs() * (weight_outside + _float(mask))).mean()


class PerceptualLoss(nn.Module):
    """Weighted sum over layers of the L1 (or MSE) between VGG-19 features of ``pred`` and ``target``.

    Args:
        layers: VGG-19 layer names (``PATN_PERCEPTUAL_LAYERS``, ``GFLA_PERCEPTUAL_LAYERS``).
        layer_weights: one weight per layer (default 1 each).
        criterion: ``"l1"`` (PATN, GFLA) or ``"mse"``.
        vgg: a ``VGG19Features`` to share (it must return every layer); built from ``vgg_weights`` if ``None``.

    ``forward(pred, target)``: ``(B, 3, H, W)`` in ``[-1, 1]`` each → scalar. The target's features carry no
    gradient (the target is the real image, as PATN's ``detach``).
    """

    def __init__(self, layers: Sequence[str], layer_weights: Sequence[float] | None = None, criterion: str = "l1",
                 vgg: VGG19Features | None = None, vgg_weights: str | Path | None = "imagenet",
                 allow_random: bool = False) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.layer_weights = tuple(float(w) for w in layer_weights) if layer_weights is not None \
            else (1.0,) * len(self.layers)
        if len(self.layer_weights) != len(self.layers):
            raise ValueError(f"{len(self.layer_weights)} weights for {len(self.layers)} layers")
        if criterion not in ("l1", "mse"):
            raise ValueError(f"criterion must be 'l1' or 'mse', got {criterion!r}")
        self.criterion = criterion
        self.vgg = vgg if vgg is not None else VGG19Features(self.layers, vgg_weights, allow_random)
        missing = [name for name in self.layers if name not in self.vgg.layers]
        if not self.layers or missing:
            raise ValueError(f"the VGG19Features given does not return layers {missing or '(none given)'}")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred_features = self.vgg(pred)
        with torch.no_grad():  # the target is a fixed reference: its features carry no gradient
            target_features = self.vgg(target)
        distance = F.l1_loss if self.criterion == "l1" else F.mse_loss
        with torch.autocast(device_type=pred.device.type, enabled=False):
            return sum(w * distance(_float(pred_features[name]), _float(target_features[name]))
                       for name, w in zip(self.layers, self.layer_weights, strict=True))


def vgg_content_style(generated: Mapping[str, torch.Tensor], real: Mapping[str, torch.Tensor],
                      content_layers: Sequence[str] = GFLA_PERCEPTUAL_LAYERS,
                      style_layers: Sequence[str] = GFLA_STYLE_LAYERS) -> tuple[torch.Tensor, torch.Tensor]:
    """GFLA's ``VGGLoss`` (DPTN's too) on features already computed, as float32 scalars ``(content, style)``.

    ``generated``, ``real``: ``{layer: (B, C, h, w)}`` from one ``VGG19Features``; ``real`` holds at least one layer.
    ``content`` is the sum over ``content_layers`` of the L1 between the features, ``style`` the sum over
    ``style_layers`` of the L1 between their Gram matrices; a term with no layers is 0. The objectives run VGG-19
    once per batch and share its features between this and their other terms, hence features, not images.
    """
    zero = torch.zeros((), device=next(iter(real.values())).device)
    content = sum((l1_loss(generated[name], real[name]) for name in content_layers), zero)
    style = sum((l1_loss(gram_matrix(generated[name]), gram_matrix(real[name])) for name in style_layers), zero)
    return content, style


def adversarial_loss(logits: torch.Tensor, target_is_real: bool, kind: str = "vanilla",
                     for_discriminator: bool = True) -> torch.Tensor:
    """GAN loss of discriminator logits (any shape: a patch map or one score per image), as a float32 scalar.

    - ``"vanilla"``: BCE with logits against 1 (real) or 0 (fake); the generator calls it on fake logits with
      ``target_is_real=True`` (the non-saturating loss).
    - ``"lsgan"``: mean squared error to 1 or 0, same calling convention.
    - ``"hinge"``: for the discriminator ``mean(relu(1 - logits))`` on real and ``mean(relu(1 + logits))`` on fake;
      for the generator ``-mean(logits)`` on fake logits, which must be called with ``target_is_real=True``.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = _float(logits)
        if kind == "vanilla":
            target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
            return F.binary_cross_entropy_with_logits(logits, target)
        if kind == "lsgan":
            return F.mse_loss(logits, torch.full_like(logits, 1.0 if target_is_real else 0.0))
        if kind == "hinge":
            if not for_discriminator:
                if not target_is_real:
                    raise ValueError("the hinge generator loss is -mean(fake logits): call it with target_is_real=True")
                return -logits.mean()
            return F.relu(1 - logits).mean() if target_is_real else F.relu(1 + logits).mean()
    raise ValueError(f"adversarial loss kind must be 'vanilla', 'lsgan' or 'hinge', got {kind!r}")
