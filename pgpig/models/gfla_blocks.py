"""GFLA's block library, which DPTN's official code reuses: norms, activations, convs, the encoder and decoder
blocks, the output layer, the orthogonal initialisation and the ``ResDiscriminator``.

Ren, Yu, Chen, Li, Li, "Deep Image Spatial Transformation for Person Image Generation", CVPR 2020,
arXiv:2003.00696. Read from RenYurui/Global-Flow-Local-Attention@3afa8fe9e0c1 (``model/networks/base_function.py``,
``model/networks/discriminator.py``, ``model/networks/base_network.py``) and its copy in
PangzeCheung/Dual-task-Pose-Transformer-Network@59a759030ff4 (``models/base_function.py``). Class and attribute
names follow the official ones, so the state-dict keys match. ``docs/models/gfla.md`` and ``docs/models/dptn.md``
describe the blocks in their models.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pgpig.errors import TrainError

__all__ = ["LEAKY_SLOPE", "ORTHOGONAL_GAIN", "ActivatedConv", "DecoderBlock", "Encoder", "EncoderBlock",
           "ResBlockEncoder", "ResDiscriminator", "activation_layer", "conv", "copy_aliases", "init_orthogonal",
           "norm_layer", "two_convs", "up_conv", "widths"]

LEAKY_SLOPE = 0.1
"""Negative slope of the official ``LeakyReLU`` (``get_nonlinearity_layer``)."""
ORTHOGONAL_GAIN = 0.02
"""Gain of the official ``init_weights(init_type="orthogonal")``."""


def norm_layer(norm: str, channels: int) -> nn.Module | None:
    """``get_norm_layer``: affine instance norm (no running statistics), batch norm, or ``None`` for ``"none"``."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm2d(channels, momentum=0.1, affine=True)
    if norm == "none":
        return None
    raise TrainError(f"unknown norm {norm!r}; choose one of instance, batch, none")


def activation_layer(name: str) -> nn.Module:
    """``get_nonlinearity_layer`` without PReLU: the official shares one PReLU instance (one learnt slope) across a
    whole network, which per-block modules cannot express."""
    if name == "LeakyReLU":
        return nn.LeakyReLU(LEAKY_SLOPE)
    if name == "ReLU":
        return nn.ReLU()
    if name == "SELU":
        return nn.SELU()
    raise TrainError(f"unsupported activation {name!r}; choose one of LeakyReLU, ReLU, SELU")


def _spectral(module: nn.Module, use_spect: bool) -> nn.Module:
    # torch.nn.utils.spectral_norm keeps the official key names (weight_orig, weight_u, weight_v)
    return nn.utils.spectral_norm(module) if use_spect else module


def conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, use_spect: bool = False) -> nn.Module:
    """A conv with bias, spectrally normalised on request."""
    return _spectral(nn.Conv2d(cin, cout, kernel, stride, padding), use_spect)


def up_conv(cin: int, cout: int, use_spect: bool) -> nn.Module:
    """A 3x3 stride-2 transposed conv that doubles the size exactly: ``(B, cin, h, w) -> (B, cout, 2h, 2w)``."""
    return _spectral(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), use_spect)


def two_convs(cin: int, mid: int, conv1: nn.Module, conv2: nn.Module, norm: str, activation: str) -> nn.Sequential:
    """``norm, act, conv1, norm, act, conv2`` (convs at indices 2 and 5), or ``act, conv1, act, conv2`` (1 and 3)
    under ``norm="none"``: the body of most official blocks."""
    n1, n2 = norm_layer(norm, cin), norm_layer(norm, mid)
    if n1 is None:
        return nn.Sequential(activation_layer(activation), conv1, activation_layer(activation), conv2)
    return nn.Sequential(n1, activation_layer(activation), conv1, n2, activation_layer(activation), conv2)


def widths(ngf: int, img_f: int, n: int) -> list[int]:
    """Channels after each of ``n`` down blocks: ``ngf * min(2**i, img_f // ngf)`` (the official ``mult``)."""
    return [ngf * min(2**i, img_f // ngf) for i in range(n)]


def init_orthogonal(module: nn.Module) -> None:
    """The official ``init_weights(init_type="orthogonal", gain=0.02)``, for ``Module.apply``: conv, transposed-conv
    and linear weights (``weight_orig`` under spectral norm) orthogonal with gain 0.02 and biases 0; batch-norm (2-d)
    scales ``N(1, 0.02)`` and shifts 0; anything else (instance norms: scale 1, shift 0) keeps its initialisation."""
    if isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        weight = module.weight_orig if hasattr(module, "weight_orig") else module.weight
        nn.init.orthogonal_(weight, gain=ORTHOGONAL_GAIN)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def copy_aliases(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post hook of a block that keeps one conv under two names (``conv1`` and ``model.2``), as the
    official blocks do: the second name gets a copy, which ``safetensors`` can write (it refuses two names sharing
    one CPU tensor); loading writes either into the one conv."""
    seen: set[tuple[int, int]] = set()
    for key, value in state_dict.items():
        if isinstance(value, nn.Parameter) or not key.startswith(prefix):
            continue  # keep_vars=True asks for the variables themselves
        where = (value.untyped_storage().data_ptr(), value.storage_offset())
        if where in seen:
            state_dict[key] = value.clone()
        seen.add(where)


class EncoderBlock(nn.Module):
    """A stride-2 encoder step ``(B, cin, H, W) -> (B, cout, H/2, W/2)``: ``EncoderBlock`` (norm, act, 4x4/2 conv,
    norm, act, 3x3 conv) or, ``optimized``, ``EncoderBlockOptimized`` (4x4/2 conv, norm, act, 3x3 conv)."""

    def __init__(self, cin: int, cout: int, norm: str, activation: str, use_spect: bool,
                 optimized: bool = False) -> None:
        super().__init__()
        down = conv(cin, cout, 4, 2, 1, use_spect)
        fine = conv(cout, cout, 3, 1, 1, use_spect)
        if optimized:
            norm_out = norm_layer(norm, cout)
            self.model = nn.Sequential(down, *([] if norm_out is None else [norm_out]), activation_layer(activation),
                                       fine)
        else:
            self.model = two_convs(cin, cout, down, fine, norm, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class DecoderBlock(nn.Module):
    """``ResBlockDecoder``: ``(B, cin, H, W) -> (B, cout, 2H, 2W)``, norm, act, 3x3 conv to ``hidden`` (default
    ``cin``), norm, act, 3x3 stride-2 transposed conv, plus a 3x3 stride-2 transposed-conv shortcut."""

    def __init__(self, cin: int, cout: int, hidden: int | None, norm: str, activation: str, use_spect: bool) -> None:
        super().__init__()
        hidden = cin if hidden is None else hidden
        self.model = two_convs(cin, hidden, conv(cin, hidden, 3, 1, 1, use_spect), up_conv(hidden, cout, use_spect),
                               norm, activation)
        self.shortcut = nn.Sequential(up_conv(cin, cout, use_spect))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shortcut(x)


class ActivatedConv(nn.Module):
    """``Jump`` (``tanh=False``) and ``Output`` (``tanh=True``) without norm: ``act, reflection pad, conv[, tanh]``,
    same size. The conv is registered twice, as ``conv1`` and as ``model.2``, as the official."""

    def __init__(self, cin: int, cout: int, kernel: int, activation: str, use_spect: bool, tanh: bool) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, kernel, use_spect=use_spect)
        layers = [activation_layer(activation), nn.ReflectionPad2d(kernel // 2), self.conv1]
        self.model = nn.Sequential(*layers, nn.Tanh()) if tanh else nn.Sequential(*layers)
        self.register_state_dict_post_hook(copy_aliases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Encoder(nn.Module):
    """``block0`` and ``encoder0 .. encoder{n-2}`` encoder blocks: ``(B, cin, H, W) -> (B, widths[-1], H / 2**n,
    W / 2**n)``; ``optimized_block0`` makes ``block0`` an ``EncoderBlockOptimized`` (DPTN's encoders)."""

    def __init__(self, cin: int, ngf: int, img_f: int, n: int, norm: str, activation: str, use_spect: bool,
                 optimized_block0: bool = False) -> None:
        super().__init__()
        self.n = n
        channels = widths(ngf, img_f, n)
        self.block0 = EncoderBlock(cin, channels[0], norm, activation, use_spect, optimized=optimized_block0)
        for i in range(n - 1):
            setattr(self, f"encoder{i}", EncoderBlock(channels[i], channels[i + 1], norm, activation, use_spect))

    def levels(self, x: torch.Tensor, n: int | None = None) -> list[torch.Tensor]:
        """The outputs of the first ``n`` blocks (default all), finest first."""
        out = [self.block0(x)]
        for i in range((self.n if n is None else n) - 1):
            out.append(getattr(self, f"encoder{i}")(out[-1]))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.levels(x)[-1]


# ---------------------------------------------------------------------------------------------------- discriminator


class ResBlockEncoder(nn.Module):
    """``ResBlockEncoder`` without norm (act, 3x3 conv, act, 4x4/2 conv) or, ``optimized``,
    ``ResBlockEncoderOptimized`` (3x3 conv, act, 4x4/2 conv), plus a shortcut of 2x2 average pooling and a 1x1 conv:
    ``(B, cin, h, w) -> (B, cout, h/2, w/2)``."""

    def __init__(self, cin: int, cout: int, hidden: int, activation: str, use_spect: bool, optimized: bool) -> None:
        super().__init__()
        conv1 = conv(cin, hidden, 3, 1, 1, use_spect)
        conv2 = conv(hidden, cout, 4, 2, 1, use_spect)
        if optimized:
            self.model = nn.Sequential(conv1, activation_layer(activation), conv2)
        else:
            self.model = nn.Sequential(activation_layer(activation), conv1, activation_layer(activation), conv2)
        self.shortcut = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2), conv(cin, cout, 1, use_spect=use_spect))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shortcut(x)


class ResDiscriminator(nn.Module):
    """``ResDiscriminator``: ``(B, input_nc, H, W)`` -> a patch map of logits ``(B, 1, H / 2**layers, W /
    2**layers)``, no norm, on the image alone.

    ``block0`` and ``layers - 1`` blocks ``encoder{i}`` to widths ``ndf * min(2**k, img_f // ndf)``, then act and a
    1x1 conv to one channel. The two official variants differ in two places: GFLA's ``block0`` starts with the
    activation and its output conv is spectrally normalised whatever ``use_spect`` says (``spectral_output=True``);
    DPTN's ``block0`` is a ``ResBlockEncoderOptimized`` (``optimized_block0=True``) and its output conv follows
    ``use_spect`` (``spectral_output=None``). Defaults: DeepFashion's (``ndf=32, img_f=128, layers=4``)."""

    def __init__(self, input_nc: int = 3, ndf: int = 32, img_f: int = 128, layers: int = 4,
                 activation: str = "LeakyReLU", use_spect: bool = True, optimized_block0: bool = False,
                 spectral_output: bool | None = None) -> None:
        super().__init__()
        if layers < 1 or img_f < ndf:
            raise TrainError(f"ResDiscriminator needs layers >= 1 and img_f >= ndf, got {layers}, {img_f}, {ndf}")
        self.layers = layers
        channels = widths(ndf, img_f, layers)
        self.block0 = ResBlockEncoder(input_nc, ndf, ndf, activation, use_spect, optimized=optimized_block0)
        for i in range(layers - 1):
            setattr(self, f"encoder{i}", ResBlockEncoder(channels[i], channels[i + 1], channels[i], activation,
                                                         use_spect, optimized=False))
        self.nonlinearity = activation_layer(activation)
        self.conv = conv(channels[-1], 1, 1, use_spect=use_spect if spectral_output is None else spectral_output)
        self.apply(init_orthogonal)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.block0(image)
        for i in range(self.layers - 1):
            x = getattr(self, f"encoder{i}")(x)
        return self.conv(self.nonlinearity(x))
