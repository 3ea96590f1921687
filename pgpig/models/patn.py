"""PATN, the Pose-Attentional Transfer Network: its blocks, generator, two discriminators and objective.

Zhu, Huang, Shi, Wang, Bai, "Progressive Pose Attention Transfer for Person Image Generation", CVPR 2019,
arXiv:1904.03349. Facts read from the official code tengteng95/Pose-Transfer@281ee2d3f938 (``models/networks.py``,
``models/model_variants.py``, ``models/PATN.py``, ``losses/L1_plus_perceptualLoss.py``, the README's train
commands) and its state-dict key list; the specification is ``docs/models/patn.md``.

Generator: ``forward(source_image (B, 3, H, W), source_pose (B, 18, H, W), target_pose (B, 18, H, W))`` -> the
target image ``(B, 3, H, W)`` in ``[-1, 1]``, ``H`` and ``W`` multiples of ``2**n_downsampling``. Discriminators:
``(image, condition)`` -> an unpooled ``(B, 4 ndf, H/4, W/4)`` map. The constructor pieces (norm factory, encoder
stem, conv pair, decoder, initialisation) are the pix2pix block library that XingGAN's official code shares, so
``pgpig.models.xinggan`` builds from them too. Key names mirror the official ones, so official weights load with
``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pgpig.errors import TrainError
from pgpig.losses import PATN_PERCEPTUAL_LAYERS, PerceptualLoss, adversarial_loss, l1_loss
from pgpig.models import create, register
from pgpig.models.objective import Objective, StepBatch

__all__ = ["NORMS", "PAPER_SETTINGS", "PATBlock", "PATN", "PATNDiscriminator", "PairGANObjective", "ResnetBlock",
           "conv_pair", "decoder_layers", "encoder_layers", "init_official_normal", "norm_layer", "norm_uses_bias",
           "patn_appearance_discriminator", "patn_shape_discriminator"]

# The README's train commands: --norm instance on DeepFashion, --norm batch on Market-1501; define_G builds 9 blocks.
PAPER_SETTINGS: dict[str, dict[str, object]] = {
    "deepfashion": {"ngf": 64, "n_blocks": 9, "norm": "instance", "n_downsampling": 2, "dropout": 0.5},
    "market1501": {"ngf": 64, "n_blocks": 9, "norm": "batch", "n_downsampling": 2, "dropout": 0.5},
}

# ------------------------------------------------------------------------------------------------ constructor pieces
# Flat lists of plain modules, so a model can put them in one nn.Sequential and keep the official state-dict indices
# (``stream1_down.1.weight`` ...).

NORMS = ("instance", "batch")


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The normalisation layer by name, as a ``channels -> module`` factory.

    ``"instance"`` is ``InstanceNorm2d`` without affine parameters or running statistics and ``"batch"`` is an
    affine ``BatchNorm2d``: the pix2pix code's ``get_norm_layer``, which PATN and XingGAN inherit. The difference
    shows in the parameter count and the buffers (running mean/var only with batch norm).
    """
    if norm == "instance":
        return lambda channels: nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return lambda channels: nn.BatchNorm2d(channels, affine=True)
    raise TrainError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def norm_uses_bias(norm: str) -> bool:
    """Whether convolutions before this norm carry a bias: only before instance norm, whose lack of an affine
    shift would otherwise leave them none (batch norm's own shift makes a conv bias redundant)."""
    norm_layer(norm)  # validates the name
    return norm == "instance"


def _padded_conv_layers(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> list[nn.Module]:
    """Reflection-pad by ``kernel_size // 2``, conv (size-preserving), norm, ReLU: ``(B, in_channels, h, w) -> (B,
    out_channels, h, w)``, as a flat list (the conv at index 1, the norm at 2)."""
    return [
        nn.ReflectionPad2d(kernel_size // 2),
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, bias=norm_uses_bias(norm)),
        norm_layer(norm)(out_channels),
        nn.ReLU(inplace=True),
    ]


def encoder_layers(in_channels: int, ngf: int, n_downsampling: int, norm: str) -> list[nn.Module]:
    """Reflection-pad + 7x7 conv to ``ngf``, then ``n_downsampling`` stride-2 3x3 convs doubling the width, each
    followed by norm and ReLU: ``(B, in_channels, H, W) -> (B, ngf * 2**n_downsampling, H / 2**n, W / 2**n)``.

    A flat list: conv weights sit at indices 1, 4, 7, ... and norms at 2, 5, 8, ... once put in a Sequential.
    """
    make_norm, bias = norm_layer(norm), norm_uses_bias(norm)
    layers = _padded_conv_layers(in_channels, ngf, 7, norm)
    for i in range(n_downsampling):
        width = ngf * 2**i
        layers += [
            nn.Conv2d(width, width * 2, kernel_size=3, stride=2, padding=1, bias=bias),
            make_norm(width * 2),
            nn.ReLU(inplace=True),
        ]
    return layers


def conv_pair(
    in_channels: int, mid_channels: int, out_channels: int, norm: str, dropout: float, final_norm: bool
) -> nn.Sequential:
    """pad, conv3x3, norm, ReLU, dropout, pad, conv3x3[, norm]: the convs at indices 1 and 6, norms at 2 and 7.

    ``dropout=0`` puts an ``Identity`` in the dropout slot, so the second conv stays at index 6."""
    layers = _padded_conv_layers(in_channels, mid_channels, 3, norm) + [
        nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        nn.ReflectionPad2d(1),
        nn.Conv2d(mid_channels, out_channels, kernel_size=3, bias=norm_uses_bias(norm)),
    ]
    if final_norm:
        layers.append(norm_layer(norm)(out_channels))
    return nn.Sequential(*layers)


def decoder_layers(ngf: int, n_upsampling: int, norm: str, out_channels: int) -> list[nn.Module]:
    """``n_upsampling`` stride-2 3x3 transposed convs halving the width, each followed by norm and ReLU, then
    reflection-pad + 7x7 conv to ``out_channels`` and tanh: ``(B, ngf * 2**n, h, w) -> (B, out_channels, h * 2**n,
    w * 2**n)`` in ``[-1, 1]``, the mirror of ``encoder_layers``.

    A flat list: transposed convs at indices 0, 3, ..., norms at 1, 4, ..., the last conv at ``3 * n + 1``.
    """
    make_norm, bias = norm_layer(norm), norm_uses_bias(norm)
    layers: list[nn.Module] = []
    for i in range(n_upsampling):
        width = ngf * 2 ** (n_upsampling - i)
        layers += [
            nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
            make_norm(width // 2),
            nn.ReLU(inplace=True),
        ]
    return layers + [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, kernel_size=7), nn.Tanh()]


def init_official_normal(module: nn.Module) -> None:
    """The pix2pix code's ``init_weights(init_type="normal")`` for ``Module.apply``: conv and transposed-conv weights
    ``N(0, 0.02)``, batch-norm weights ``N(1, 0.02)`` and biases 0; conv biases and other parameters keep theirs."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class PATBlock(nn.Module):
    """One Pose-Attentional Transfer block on ``dim``-channel features.

    ``x1`` ``(B, dim, h, w)`` image codes, ``x2`` ``(B, dim or 2*dim, h, w)`` pose codes (``2*dim`` after the
    first block, ``cat_input=True``) -> updated ``x1`` ``(B, dim, h, w)`` and ``x2`` ``(B, 2*dim, h, w)``.
    """

    def __init__(self, dim: int, norm: str, dropout: float, cat_input: bool) -> None:
        super().__init__()
        pose_dim = 2 * dim if cat_input else dim
        self.conv_block_stream1 = conv_pair(dim, dim, dim, norm, dropout, final_norm=True)
        # no final norm: its output is the attention logit
        self.conv_block_stream2 = conv_pair(pose_dim, pose_dim, dim, norm, dropout, final_norm=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention_logit = self.conv_block_stream2(x2)
        x1 = x1 + self.conv_block_stream1(x1) * torch.sigmoid(attention_logit)
        return x1, torch.cat((attention_logit, x1), dim=1)


# ---------------------------------------------------------------------------------------------------- generator


@register("patn")
class PATN(nn.Module):
    """The PATN generator: ``forward(source_image, source_pose, target_pose) -> (B, 3, H, W)`` in ``[-1, 1]``.

    Defaults are the DeepFashion settings; ``PAPER_SETTINGS["market1501"]`` switches to batch norm.
    """

    def __init__(
        self,
        image_channels: int = 3,
        pose_channels: int = 18,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        n_downsampling: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.n_downsampling = n_downsampling
        dim = ngf * 2**n_downsampling
        up = decoder_layers(ngf, n_downsampling, norm, image_channels)  # built first: conv biases draw in this order

        # A ModuleDict named ``model`` gives the official key names (``model.stream1_down.1.weight``, ...).
        self.model = nn.ModuleDict(
            {
                "stream1_down": nn.Sequential(*encoder_layers(image_channels, ngf, n_downsampling, norm)),
                "stream2_down": nn.Sequential(*encoder_layers(2 * pose_channels, ngf, n_downsampling, norm)),
                "att": nn.ModuleList(PATBlock(dim, norm, dropout, cat_input=i > 0) for i in range(n_blocks)),
                "stream1_up": nn.Sequential(*up),
            }
        )
        self.apply(init_official_normal)

    def forward(self, source_image: torch.Tensor, source_pose: torch.Tensor, target_pose: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)``, ``(B, 18, H, W)``, ``(B, 18, H, W)`` -> ``(B, 3, H, W)`` in ``[-1, 1]``."""
        x1 = self.model["stream1_down"](source_image)
        # the official model takes cat(source pose, target pose) as one input, source first
        x2 = self.model["stream2_down"](torch.cat((source_pose, target_pose), dim=1))
        for block in self.model["att"]:
            x1, x2 = block(x1, x2)
        return self.model["stream1_up"](x1)


# ---------------------------------------------------------------------------------------------------- discriminators


class ResnetBlock(nn.Module):
    """``x + (pad, conv3x3, norm, ReLU, dropout, pad, conv3x3, norm)(x)`` on ``(B, dim, h, w)``."""

    def __init__(self, dim: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.conv_block = conv_pair(dim, dim, dim, norm, dropout, final_norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class PATNDiscriminator(nn.Module):
    """The official ``ResnetDiscriminator``: the encoder stem (two downsamplings) and ``n_blocks`` residual blocks,
    nothing after them. ``forward(image (B, image_channels, H, W), condition (B, condition_channels, H, W))`` ->
    logits ``(B, 4 ndf, H/4, W/4)``; PyTorch's default initialisation (the official ``define_D`` applies none)."""

    def __init__(
        self,
        condition_channels: int,
        image_channels: int = 3,
        ndf: int = 64,
        n_blocks: int = 3,
        norm: str = "instance",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        n_downsampling = 2
        dim = ndf * 2**n_downsampling
        layers = encoder_layers(image_channels + condition_channels, ndf, n_downsampling, norm)
        layers += [ResnetBlock(dim, norm, dropout) for _ in range(n_blocks)]
        self.model = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat((image, condition), dim=1))


def patn_appearance_discriminator(image_channels: int = 3, **kwargs: Any) -> PATNDiscriminator:
    """``D_A``: ``forward(image, source_image)``."""
    return PATNDiscriminator(condition_channels=image_channels, image_channels=image_channels, **kwargs)


def patn_shape_discriminator(image_channels: int = 3, pose_channels: int = 18, **kwargs: Any) -> PATNDiscriminator:
    """``D_S``: ``forward(image, target_pose)``."""
    return PATNDiscriminator(condition_channels=pose_channels, image_channels=image_channels, **kwargs)


# ---------------------------------------------------------------------------------------------------- objective


class PairGANObjective(Objective):
    """PATN's training, the registry's default objective (XingGAN's too): ``lambda_l1 * L1 + lambda_perceptual *
    perceptual + lambda_gan * (GAN_appearance + GAN_shape) / 2``; each discriminator ``lambda_gan * (real + fake)
    / 2``; the appearance discriminator judges ``(image, source image)``, the shape one ``(image, target pose)``."""

    perceptual: PerceptualLoss | None = None
    """VGG-19 ``relu1_2`` L1; ``None`` when its weight is 0 (no VGG is built or run)."""

    @classmethod
    def build_generator(cls, cfg: Any, size: tuple[int, int]) -> nn.Module:
        return create(cfg.model, ngf=cfg.ngf, n_blocks=cfg.n_blocks, norm=cfg.norm, dropout=cfg.dropout)

    def build_discriminators(self, size: tuple[int, int]) -> dict[str, nn.Module]:
        cfg = self.cfg
        if not cfg.use_gan:
            return {}
        kwargs = {"ndf": cfg.ngf, "n_blocks": cfg.d_blocks, "norm": cfg.norm, "dropout": cfg.dropout}
        return {"appearance": patn_appearance_discriminator(**kwargs), "shape": patn_shape_discriminator(**kwargs)}

    def build_losses(self) -> None:
        cfg = self.cfg
        if cfg.lambda_perceptual:
            self.perceptual = PerceptualLoss(PATN_PERCEPTUAL_LAYERS, vgg_weights=cfg.vgg_weights,
                                             allow_random=cfg.allow_random_vgg).to(self.device)

    def conditions(self, batch: StepBatch) -> dict[str, torch.Tensor]:
        """What each discriminator sees beside the image."""
        return {"appearance": batch.source, "shape": batch.target_pose}

    def reconstruction_loss(self, generated: torch.Tensor,
                            batch: StepBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``lambda_l1 * L1 + lambda_perceptual * perceptual`` and its terms."""
        cfg = self.cfg
        loss_l1 = l1_loss(generated, batch.target)
        loss_perceptual = self.perceptual(generated, batch.target) if self.perceptual is not None else \
            torch.zeros((), device=generated.device)
        return (cfg.lambda_l1 * loss_l1 + cfg.lambda_perceptual * loss_perceptual,
                {"l1": loss_l1, "perceptual": loss_perceptual})

    def generator_loss(self, generator, discriminators, batch):
        cfg = self.cfg
        generated = generator(batch.source, batch.source_pose, batch.target_pose)
        loss, scalars = self.reconstruction_loss(generated, batch)
        if discriminators:
            conditions = self.conditions(batch)
            loss_gan = sum(adversarial_loss(d(generated, conditions[name]), True, cfg.gan_kind, for_discriminator=False)
                           for name, d in discriminators.items()) / len(discriminators)
            loss = loss + cfg.lambda_gan * loss_gan
            scalars["g_gan"] = loss_gan
        return generated, loss, scalars

    def discriminator_loss(self, discriminators, pools, batch, generated):
        cfg = self.cfg
        loss = 0.0
        for name, condition in self.conditions(batch).items():
            d = discriminators[name]
            fake, fake_condition = pools[name].query(generated, condition)
            loss = loss + cfg.lambda_gan * 0.5 * (adversarial_loss(d(batch.target, condition), True, cfg.gan_kind)
                                                  + adversarial_loss(d(fake, fake_condition), False, cfg.gan_kind))
        return loss
