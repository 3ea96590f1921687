"""GFLA, the Global-Flow Local-Attention generator, and its two training stages.

Ren, Yu, Chen, Li, Li, "Deep Image Spatial Transformation for Person Image Generation", CVPR 2020,
arXiv:2003.00696. Facts read from the official code, RenYurui/Global-Flow-Local-Attention@3afa8fe9e0c1
(``model/networks/generator.py``, ``model/pose_model.py``, ``model/poseflownet_model.py``,
``model/networks/external_function.py``, ``options/*.py``, ``PERSON_IMAGE_GENERATION.md``). The blocks it shares with
DPTN are ``pgpig.models.gfla_blocks``, its three CUDA ops ``pgpig.models.ops``.

``GFLA(source_image (B, 3, H, W), source_pose (B, 18, H, W), target_pose (B, 18, H, W))`` with ``H`` and ``W``
multiples of 32 returns ``(image (B, 3, H, W), flows, masks)``: one flow field ``(B, 2, H / 2**l, W / 2**l)`` and
one occlusion mask ``(B, 1, H / 2**l, W / 2**l)`` per attention level ``l``, coarsest first. ``stage=1`` builds the
flow estimator alone. ``GFLAObjective`` trains stage 1 (sampling correctness and affine regularisation) and stage 2
(adds L1, VGG content and style, GAN). Architecture, sources of each fact and the decisions taken:
``docs/models/gfla.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pgpig.errors import TrainError
from pgpig.losses import (
    GFLA_PERCEPTUAL_LAYERS,
    GFLA_STYLE_LAYERS,
    VGG19Features,
    adversarial_loss,
    l1_loss,
)
from pgpig.models import register
from pgpig.models.gfla_blocks import (
    ActivatedConv,
    DecoderBlock,
    Encoder,
    ResDiscriminator,
    activation_layer,
    conv,
    init_orthogonal,
    two_convs,
)
from pgpig.models.objective import Objective, StepBatch
from pgpig.models.ops import block_extractor, check_finite_on_cpu, local_attn_reshape, resample2d

__all__ = ["DISCRIMINATOR", "FLOW_NET", "GFLA", "PAPER_SETTINGS", "GFLAObjective", "affine_regularization",
           "generator_settings", "paper_setting_for", "sampling_correctness", "warp_image"]

PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "deepfashion": {"image_nc": 3, "structure_nc": 18, "output_nc": 3, "ngf": 64, "img_f": 512, "layers": 3,
                    "num_blocks": 2, "norm": "instance", "activation": "LeakyReLU", "attn_layer": [2, 3],
                    "extractor_kz": {"2": 5, "3": 3}, "use_spect": False, "use_coord": False},
    "market1501": {"image_nc": 3, "structure_nc": 18, "output_nc": 3, "ngf": 64, "img_f": 512, "layers": 3,
                   "num_blocks": 2, "norm": "instance", "activation": "LeakyReLU", "attn_layer": [2],
                   "extractor_kz": {"2": 3}, "use_spect": False, "use_coord": False},
}
"""The official generator's constructor arguments per data set (``docs/models/gfla.md``)."""

FLOW_NET = {"ngf": 32, "img_f": 256, "encoder_layer": 5}
"""The flow estimator's widths and depth, hard-coded inside the official ``PoseGenerator``."""

DISCRIMINATOR = {dataset: {"ndf": 32, "img_f": 128, "layers": layers, "spectral_output": True}
                 for dataset, layers in (("deepfashion", 4), ("market1501", 3))}
"""``ResDiscriminator`` as ``model/pose_model.py`` builds it per data set (spectral norm on, GFLA's variant)."""

ATTENTION_HIDDEN = 128
"""Hidden width of the local attention's conv (hard-coded in ``ExtractorAttn``)."""

CORRECTNESS_RESAMPLE = {"kernel_size": 4, "dilation": 1, "sigma": 2.0}
"""``Resample2d(4, 1, sigma=2)`` of ``PerceptualCorrectness``."""

_EPS = 1e-8  # PerceptualCorrectness's eps


# ---------------------------------------------------------------------------------------------------- blocks


class ResidualBlock(nn.Module):
    """``ResBlock`` at constant width: ``x + convs(x)``, ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, norm: str, activation: str, use_spect: bool) -> None:
        super().__init__()
        self.model = two_convs(channels, channels, conv(channels, channels, 3, 1, 1, use_spect),
                               conv(channels, channels, 3, 1, 1, use_spect), norm, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + x


class ResidualStack(nn.Module):
    """``ResBlocks``: ``n`` residual blocks at constant width, in ``model``."""

    def __init__(self, n: int, channels: int, norm: str, activation: str, use_spect: bool) -> None:
        super().__init__()
        self.model = nn.Sequential(*(ResidualBlock(channels, norm, activation, use_spect) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalAttention(nn.Module):
    """``ExtractorAttn``: ``source`` ``(B, C, h, w)`` features, ``target`` ``(B, C, h, w)`` features and ``flow``
    ``(B, 2, h, w)`` -> ``(B, C, h, w)``, the source patch at each flow target weighted by a softmax over its
    ``k x k`` positions, the sum divided by ``k*k`` (``avg_pool``, as the official)."""

    def __init__(self, channels: int, kernel_size: int, activation: str) -> None:
        super().__init__()
        k = self.kernel_size = kernel_size
        self.fully_connect_layer = nn.Sequential(
            nn.Conv2d(2 * channels, ATTENTION_HIDDEN, kernel_size=k, stride=k),
            activation_layer(activation),
            nn.Conv2d(ATTENTION_HIDDEN, k * k, kernel_size=1),
            nn.Softmax(dim=1),
        )

    def forward(self, source: torch.Tensor, target: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        source_patches = block_extractor(source, flow, k)  # (B, C, h k, w k)
        # The target's patches are taken at zero flow: whole pixels, border values outside. The first conv (k x k,
        # stride k) over their tiling is therefore a stride-1 conv of the border-padded target, computed so: the
        # same sums without the tiled copy and its resampling.
        first, c = self.fully_connect_layer[0], target.shape[1]
        before, after = k // 2, k - 1 - k // 2
        hidden = (F.conv2d(_edge_pad(target, before, after), first.weight[:, :c], first.bias)
                  + F.conv2d(source_patches, first.weight[:, c:], stride=k))
        for layer in self.fully_connect_layer[1:]:
            hidden = layer(hidden)
        return F.avg_pool2d(local_attn_reshape(hidden, k) * source_patches, k, k)


def _edge_pad(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """``x`` ``(B, C, h, w)`` padded by repeating its border rows and columns, ``before`` and ``after`` on each side
    of both axes (``F.pad``'s ``replicate``, written with slices and ``cat``: inductor's replication-pad backward
    mis-states its output strides in torch 2.14)."""
    for dim in (2, 3):
        first, last = x.narrow(dim, 0, 1), x.narrow(dim, x.shape[dim] - 1, 1)
        sizes = list(x.shape)
        x = torch.cat((first.expand(*sizes[:dim], before, *sizes[dim + 1:]), x,
                       last.expand(*sizes[:dim], after, *sizes[dim + 1:])), dim)
    return x


class SourceNet(Encoder):
    """``PoseSourceNet``: ``(B, 3, H, W)`` -> features ``[H/2**layers, ..., H/2, the image itself]``, coarsest
    first (the official reversed list).

    Only levels up to ``used`` (the deepest attention level) reach the output; the blocks below it (Market-1501's
    ``encoder1``) keep their official keys but are neither run nor trained (``requires_grad=False``, so DDP finds
    no parameter without a gradient); their place in the list holds ``None``."""

    def __init__(self, cin: int, ngf: int, img_f: int, n: int, norm: str, activation: str, use_spect: bool,
                 used: int) -> None:
        super().__init__(cin, ngf, img_f, n, norm, activation, use_spect)
        self.used = used
        for i in range(used - 1, n - 1):
            getattr(self, f"encoder{i}").requires_grad_(False)

    def forward(self, source: torch.Tensor) -> list[torch.Tensor | None]:
        return [*([None] * (self.n - self.used)), *reversed(self.levels(source, self.used)), source]


class TargetNet(Encoder):
    """``PoseTargetNet``: the target pose encoded, then decoded with the source features warped in by local
    attention at the levels of ``attn_layer``: ``(B, 18, H, W)`` -> ``(B, 3, H, W)`` in ``(-1, 1)``."""

    def __init__(self, structure_nc: int, output_nc: int, ngf: int, img_f: int, layers: int, num_blocks: int,
                 norm: str, activation: str, attn_layer: Sequence[int], extractor_kz: Mapping[int, int],
                 use_spect: bool) -> None:
        super().__init__(structure_nc, ngf, img_f, layers, norm, activation, use_spect)
        self.layers, self.attn_layer = layers, tuple(attn_layer)
        mult = min(2 ** (layers - 1), img_f // ngf)
        for i in range(layers):
            previous, mult = mult, min(2 ** (layers - i - 2), img_f // ngf) if i != layers - 1 else 1
            up = DecoderBlock(ngf * previous, ngf * mult, None, norm, activation, use_spect)
            blocks = [ResidualStack(num_blocks - 1, ngf * previous, norm, activation, use_spect)] \
                if num_blocks > 1 else []
            setattr(self, f"decoder{i}", nn.Sequential(*blocks, up))
            if layers - i in self.attn_layer:
                setattr(self, f"attn{i}", LocalAttention(ngf * previous, extractor_kz[layers - i], activation))
        self.outconv = ActivatedConv(ngf, output_nc, 3, activation, use_spect, tanh=True)

    def forward(self, target_pose: torch.Tensor, source_features: list[torch.Tensor], flows: list[torch.Tensor],
                masks: list[torch.Tensor]) -> torch.Tensor:
        x = self.levels(target_pose)[-1]
        used = 0
        for i in range(self.layers):
            if self.layers - i in self.attn_layer:
                attended = getattr(self, f"attn{i}")(source_features[i], x, flows[used])
                x = x * (1 - masks[used]) + attended * masks[used]
                used += 1
            x = getattr(self, f"decoder{i}")(x)
        return self.outconv(x)


class FlowNet(Encoder):
    """``PoseFlowNet``: ``cat(source, source pose, target pose)`` -> ``(flows, masks)``, one flow ``(B, 2, H/2**l,
    W/2**l)`` and one mask ``(B, 1, ...)`` per level ``l`` of ``attn_layer``, coarsest first."""

    def __init__(self, image_nc: int, structure_nc: int, attn_layer: Sequence[int], norm: str, activation: str,
                 use_spect: bool) -> None:
        ngf, img_f, encoder_layer = FLOW_NET["ngf"], FLOW_NET["img_f"], FLOW_NET["encoder_layer"]
        super().__init__(image_nc + 2 * structure_nc, ngf, img_f, encoder_layer, norm, activation, use_spect)
        self.encoder_layer, self.attn_layer = encoder_layer, tuple(attn_layer)
        self.decoder_layer = encoder_layer - min(attn_layer)
        mult = min(2 ** (encoder_layer - 1), img_f // ngf)
        for i in range(self.decoder_layer):
            previous, mult = mult, min(2 ** (encoder_layer - i - 2), img_f // ngf)
            width = ngf * mult
            setattr(self, f"decoder{i}", DecoderBlock(ngf * previous, width, width, norm, activation, use_spect))
            setattr(self, f"jump{i}", ActivatedConv(width, width, 3, activation, use_spect, tanh=False))
            if encoder_layer - i - 1 in self.attn_layer:
                setattr(self, f"output{i}", nn.Conv2d(width, 2, kernel_size=3, padding=1))
                setattr(self, f"mask{i}", nn.Sequential(nn.Conv2d(width, 1, kernel_size=3, padding=1), nn.Sigmoid()))

    def forward(self, source: torch.Tensor, source_pose: torch.Tensor,
                target_pose: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        skips = self.levels(torch.cat((source, source_pose, target_pose), 1))
        x = skips[-1]
        flows, masks = [], []
        for i in range(self.decoder_layer):
            x = getattr(self, f"decoder{i}")(x) + getattr(self, f"jump{i}")(skips[self.encoder_layer - i - 2])
            if self.encoder_layer - i - 1 in self.attn_layer:
                # float32 heads: bfloat16 flows would move sampling points by up to 1/8 px at 16 px displacement
                with torch.autocast(x.device.type, enabled=False):
                    flows.append(getattr(self, f"output{i}")(x.float()))
                    masks.append(getattr(self, f"mask{i}")(x.float()))
        return flows, masks


def warp_image(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` ``(B, C, H, W)`` sampled bilinearly at ``pixel + flow``, with the flow ``(B, 2, h, w)`` (pixels of
    its own grid, x first) upsampled to ``H x W`` and scaled to full-resolution pixels; border values outside (as
    the ops read them). The official stage-1 ``visi`` warps the source shrunk to the flow's size instead."""
    check_finite_on_cpu(flow, "warp_image")
    b, _, h, w = image.shape
    with torch.autocast(image.device.type, enabled=False):
        # the flow's pixels scaled to full resolution by Python numbers (a tensor of them would be a copy to
        # the device, which waits for the GPU)
        scale_x, scale_y = w / flow.shape[3], h / flow.shape[2]
        flow = F.interpolate(flow.float(), size=(h, w), mode="bilinear", align_corners=False)
        ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=torch.float32),
                                torch.arange(w, device=flow.device, dtype=torch.float32), indexing="ij")
        x = (xs + flow[:, 0] * scale_x) * (2 / max(w - 1, 1)) - 1
        y = (ys + flow[:, 1] * scale_y) * (2 / max(h - 1, 1)) - 1
        warped = F.grid_sample(image.float(), torch.stack((x, y), dim=3), mode="bilinear", padding_mode="border",
                               align_corners=True)
    return warped.to(image.dtype)


def _check_size(h: int, w: int) -> None:
    halvings = FLOW_NET["encoder_layer"]
    if h % 2**halvings or w % 2**halvings:
        raise TrainError(f"GFLA needs image sizes that are multiples of {2**halvings} (its flow estimator halves them "
                         f"{halvings} times), got {h}x{w}: 256x256 DeepFashion (crop_margin 0), 128x64 Market-1501")


# ---------------------------------------------------------------------------------------------------- generator


class GFLA(nn.Module):
    """The GFLA generator: ``forward(source_image, source_pose, target_pose) -> (image, flows, masks)``.

    Takes the official ``PoseGenerator``'s arguments by their names (defaults: the DeepFashion paper settings);
    ``extractor_kz`` maps each attention level (``int`` or ``str``, as the official options give it) to its
    kernel. ``stage=1`` builds the flow estimator alone, whose forward returns ``(warped source, flows, masks)``.
    """

    def __init__(self, image_nc: int = 3, structure_nc: int = 18, output_nc: int = 3, ngf: int = 64, img_f: int = 512,
                 layers: int = 3, num_blocks: int = 2, norm: str = "instance", activation: str = "LeakyReLU",
                 attn_layer: Sequence[int] = (2, 3), extractor_kz: Mapping[int | str, int] | None = None,
                 use_spect: bool = False, use_coord: bool = False, stage: int = 2) -> None:
        super().__init__()
        kernels = {int(k): int(v) for k, v in (extractor_kz or {2: 5, 3: 3}).items()}
        attn_layer = [int(level) for level in attn_layer]
        if stage not in (1, 2):
            raise TrainError(f"GFLA has stages 1 (flow estimator) and 2 (end to end), not {stage}")
        if use_coord:
            raise TrainError("GFLA: use_coord (CoordConv) is not supported; the official pose models never use it")
        if num_blocks < 1 or layers < 1 or not attn_layer:
            raise TrainError(f"GFLA needs num_blocks >= 1, layers >= 1 and attention levels, got {num_blocks}, "
                             f"{layers}, {attn_layer}")
        bad = [level for level in attn_layer if not 1 <= level <= min(layers, FLOW_NET["encoder_layer"] - 1)
               or level not in kernels]
        if bad:
            raise TrainError(f"GFLA: attention levels {bad} need 1 <= level <= min(layers, 4) and a kernel in "
                             f"extractor_kz {kernels}")
        self.stage = stage
        self.source: SourceNet | None = None
        self.target: TargetNet | None = None
        if stage == 2:
            self.source = SourceNet(image_nc, ngf, img_f, layers, norm, activation, use_spect, max(attn_layer))
            self.target = TargetNet(structure_nc, output_nc, ngf, img_f, layers, num_blocks, norm, activation,
                                    attn_layer, kernels, use_spect)
        self.flow_net = FlowNet(image_nc, structure_nc, attn_layer, norm, activation, use_spect)
        self.apply(init_orthogonal)
        if stage == 1:  # no stage-1 loss reaches the occlusion masks: they keep their initial weights, as officially
            for name, parameter in self.flow_net.named_parameters():
                parameter.requires_grad_(not name.startswith("mask"))

    def forward(self, source_image: torch.Tensor, source_pose: torch.Tensor, target_pose: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """``(B, 3, H, W)``, ``(B, 18, H, W)``, ``(B, 18, H, W)`` -> ``(image, flows, masks)`` (module docstring)."""
        _check_size(*source_image.shape[-2:])
        flows, masks = self.flow_net(source_image, source_pose, target_pose)
        if self.target is None:
            return warp_image(source_image, flows[-1]), flows, masks
        image = self.target(target_pose, self.source(source_image), flows, masks)
        return image, flows, masks

    def warped_source(self, source_image: torch.Tensor, source_pose: torch.Tensor,
                      target_pose: torch.Tensor) -> torch.Tensor:
        """The source image warped by the finest flow, ``(B, 3, H, W)``: what the flow estimator predicts alone."""
        flows, _ = self.flow_net(source_image, source_pose, target_pose)
        return warp_image(source_image, flows[-1])


# ---------------------------------------------------------------------------------------------------- losses


def sampling_correctness(target: torch.Tensor, source: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """GFLA's sampling-correctness loss of one flow: VGG features ``target``, ``source`` ``(B, C, h, w)`` (no
    gradient needed) and ``flow`` ``(B, 2, h', w')`` -> scalar, ``mean(exp(-cos(resampled source, target) /
    max_j cos(source_j, target))) - exp(-1)``; 0 when the flow samples the best-matching source feature everywhere.
    The flow is resized to ``h x w`` by nearest neighbour without rescaling its values (official; GFLA's flows
    already have their layer's size). float32 throughout."""
    b, c, h, w = target.shape
    with torch.autocast(target.device.type, enabled=False):
        target, source, flow = target.float(), source.float(), flow.float()
        if flow.shape[-2:] != (h, w):
            flow = F.interpolate(flow, size=(h, w))
        target_all = target.reshape(b, c, h * w)
        with torch.no_grad():
            source_unit = source.reshape(b, c, h * w) / (source.reshape(b, c, h * w).norm(dim=1, keepdim=True) + _EPS)
            target_unit = target_all / (target_all.norm(dim=1, keepdim=True) + _EPS)
            best = torch.bmm(source_unit.transpose(1, 2), target_unit).amax(dim=1)  # (B, N): over source positions
        sampled = resample2d(source, flow, **CORRECTNESS_RESAMPLE).reshape(b, c, h * w)
        cosine = F.cosine_similarity(sampled, target_all, dim=1)  # (B, N)
        return torch.exp(-cosine / (best + _EPS)).mean() - math.exp(-1)


@functools.lru_cache(maxsize=16)
def _affine_residual(kernel_size: int, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``I - A (A^T A)^-1 A^T`` ``(k*k, k*k)``: what is left of a ``k x k`` patch (row-major) after the least-squares
    fit of ``a + b row + c column``; solved in float64 on the CPU once per ``(k, device, dtype)`` (each copy to a
    GPU makes the host wait for it)."""
    if (device, dtype) != (None, torch.float64):
        return _affine_residual(kernel_size).to(device, dtype)
    k = kernel_size
    rows, cols = torch.meshgrid(torch.arange(k, dtype=torch.float64), torch.arange(k, dtype=torch.float64),
                                indexing="ij")
    a = torch.stack((rows.flatten(), cols.flatten(), torch.ones(k * k, dtype=torch.float64)), dim=1)
    return torch.eye(k * k, dtype=torch.float64) - a @ torch.linalg.solve(a.T @ a, a.T)


def affine_regularization(flow: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """GFLA's affine regularisation of one flow ``(B, 2, h, w)`` -> scalar: over every ``k x k`` patch (stride 1,
    no padding), the squared norm of the residual of the patch's x values after the best affine fit, plus the same
    for y, averaged over patches and batch (``AffineRegularizationLoss``; ``docs/models/gfla.md``). float32."""
    b = flow.shape[0]
    k = kernel_size
    with torch.autocast(flow.device.type, enabled=False):
        patches = F.unfold(flow.float(), k).view(b, 2, k * k, -1)  # (B, 2, k*k, patches)
        residual = torch.einsum("ij,bcjp->bcip", _affine_residual(k, patches.device, patches.dtype), patches)
        return residual.square().sum(dim=2).mean(dim=(0, 2)).sum()


# ---------------------------------------------------------------------------------------------------- training


def paper_setting_for(size: tuple[int, int]) -> str:
    """Which data set's settings a run at ``(H, W)`` uses: ``deepfashion`` from 256 px height, else
    ``market1501``."""
    return "deepfashion" if size[0] >= 256 else "market1501"


def generator_settings(cfg: Any, size: tuple[int, int]) -> dict[str, Any]:
    """The generator's constructor arguments for a ``TrainConfig`` at ``(H, W)`` images: the paper setting of that
    size, the config's ``ngf``, ``n_blocks`` and ``norm``, and its ``generator_options`` on top."""
    return {**PAPER_SETTINGS[paper_setting_for(size)], "ngf": cfg.ngf, "num_blocks": cfg.n_blocks, "norm": cfg.norm,
            **(cfg.generator_options or {})}


def correctness_layer(level: int) -> str:
    """The VGG-19 layer the correctness loss compares for the flow of attention level ``level`` (the official
    ``['rel1_1', 'relu2_1', 'relu3_1', 'relu4_1'][level]``; level 0 is a typo there and unused)."""
    if not 1 <= level <= 3:
        raise TrainError(f"GFLA's correctness loss has VGG layers for attention levels 1 to 3, not {level}")
    return f"relu{level + 1}_1"


class GFLAObjective(Objective):
    """GFLA's two stages (``docs/models/gfla.md``). Stage 1: ``lambda_correctness * correctness +
    lambda_regularization * regularisation`` on the flow estimator. Stage 2: ``lambda_l1 * L1 + lambda_correctness *
    correctness + lambda_regularization * regularisation + lambda_perceptual * content + lambda_style * style +
    lambda_gan * GAN``; the discriminator ``0.5 (real + fake)`` on target and generated images."""

    vgg: VGG19Features | None = None
    """VGG-19 returning the layers the non-zero terms need; ``None`` when none does."""

    correctness = staticmethod(sampling_correctness)
    """The sampling-correctness loss of one flow (``sampling_correctness``)."""

    compiled_maths = (*Objective.compiled_maths, "correctness")

    @classmethod
    def build_generator(cls, cfg: Any, size: tuple[int, int]) -> nn.Module:
        from pgpig import models

        if cfg.stage not in (1, 2):
            raise TrainError(f"GFLA has stages 1 (flow estimator) and 2 (end to end); stage is {cfg.stage}")
        _check_size(*size)
        return models.create(cfg.model, stage=cfg.stage, **generator_settings(cfg, size))

    def build_discriminators(self, size: tuple[int, int]) -> dict[str, nn.Module]:
        if self.cfg.stage < 2 or not self.cfg.use_gan:
            return {}
        return {"d": ResDiscriminator(**DISCRIMINATOR[paper_setting_for(size)])}

    def build_losses(self) -> None:
        cfg = self.cfg
        layers: list[str] = []
        if cfg.lambda_correctness:
            layers += [correctness_layer(level) for level in (2, 3)]  # both data sets' levels; one VGG serves all
        if cfg.stage == 2 and cfg.lambda_perceptual:
            layers += GFLA_PERCEPTUAL_LAYERS
        if cfg.stage == 2 and cfg.lambda_style:
            layers += GFLA_STYLE_LAYERS
        if layers:
            self.vgg = VGG19Features(layers, cfg.vgg_weights, cfg.allow_random_vgg).to(self.device)

    def flow_losses(self, flows: list[torch.Tensor], batch: StepBatch,
                    target_features: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``lambda_correctness * correctness + lambda_regularization * regularisation`` and both terms."""
        cfg = self.cfg
        setting = generator_settings(cfg, tuple(batch.source.shape[-2:]))  # the generator's levels and kernels
        levels = sorted(setting["attn_layer"], reverse=True)
        kernels = {int(k): v for k, v in setting["extractor_kz"].items()}
        zero = torch.zeros((), device=batch.source.device)
        correctness = zero
        if cfg.lambda_correctness:
            with torch.no_grad():
                source_features = self.vgg(batch.source)
                if target_features is None:
                    target_features = self.vgg(batch.target)
            correctness = sum(self.correctness(target_features[correctness_layer(level)],
                                                   source_features[correctness_layer(level)], flow)
                              for flow, level in zip(flows, levels, strict=True))
        regularization = sum(affine_regularization(flow, kernels[level]) for flow, level in
                             zip(flows, levels, strict=True)) if cfg.lambda_regularization else zero
        return (cfg.lambda_correctness * correctness + cfg.lambda_regularization * regularization,
                {"correctness": correctness, "regularization": regularization})

    def generator_loss(self, generator, discriminators, batch):
        cfg = self.cfg
        image, flows, _ = generator(batch.source, batch.source_pose, batch.target_pose)
        if cfg.stage == 1:
            loss, scalars = self.flow_losses(flows, batch, None)
            return image, loss, scalars

        generated_features = target_features = None
        if cfg.lambda_perceptual or cfg.lambda_style or cfg.lambda_correctness:
            with torch.no_grad():
                target_features = self.vgg(batch.target)
        if cfg.lambda_perceptual or cfg.lambda_style:
            generated_features = self.vgg(image)
        loss, scalars = self.flow_losses(flows, batch, target_features)
        scalars["l1"] = l1_loss(image, batch.target)
        scalars["perceptual"] = scalars["style"] = torch.zeros((), device=image.device)
        if generated_features is not None:
            scalars["perceptual"], scalars["style"] = self.content_style(
                generated_features, target_features, GFLA_PERCEPTUAL_LAYERS if cfg.lambda_perceptual else (),
                GFLA_STYLE_LAYERS if cfg.lambda_style else ())
        loss = loss + (cfg.lambda_l1 * scalars["l1"] + cfg.lambda_perceptual * scalars["perceptual"]
                       + cfg.lambda_style * scalars["style"])
        if discriminators:
            scalars["g_gan"] = adversarial_loss(discriminators["d"](image), True, cfg.gan_kind,
                                                for_discriminator=False)
            loss = loss + cfg.lambda_gan * scalars["g_gan"]
        return image, loss, scalars

    def discriminator_loss(self, discriminators, pools, batch, generated):
        kind, d = self.cfg.gan_kind, discriminators["d"]
        (fake,) = pools["d"].query(generated)
        return 0.5 * (adversarial_loss(d(batch.target), True, kind) + adversarial_loss(d(fake), False, kind))

    def sample_columns(self, generator: nn.Module, batch: StepBatch) -> list[torch.Tensor]:
        """Extra sample-grid columns: the source warped by the finest flow ``(B, 3, H, W)`` at stage 2 (none at
        stage 1, whose generated image already is that). ``generator`` is the plain module (no DDP wrapper)."""
        if self.cfg.stage == 1:
            return []
        with torch.no_grad():
            return [generator.warped_source(batch.source, batch.source_pose, batch.target_pose)]


register("gfla", objective=GFLAObjective)(GFLA)
