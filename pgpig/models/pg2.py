"""PG2, the two-stage Pose Guided Person Generation Network: G1, G2, the DCGAN discriminator and the objective.

Ma, Jia, Sun, Schiele, Tuytelaars, Van Gool, "Pose Guided Person Image Generation", NeurIPS 2017, arXiv:1705.09368.
Facts read from the official TensorFlow code charliememory/Pose-Guided-Person-Image-Generation (``models.py``,
``models256.py``, ``trainer.py``, ``trainer256.py``, ``wgan_gp.py``, ``config.py``, ``run_*_train.sh``); the
specification, parameter counts and training are ``docs/models/pg2.md``.

``forward(source_image (B, 3, H, W), source_pose (unused), target_pose (B, 18, H, W) in [0, 1])`` -> ``(B, 3, H,
W)``: stage 1 G1's coarse image, stage 2 ``coarse + G2(coarse, source)`` with G1 frozen; raw in training mode,
clamped to ``[-1, 1]`` in eval mode. ``H`` is a power of two and ``H``, ``W`` multiples of ``2**(log2(H) - 3)``
(256x256 DeepFashion, 128x64 Market-1501). Convs pad as TensorFlow's ``SAME`` does; initialisation is slim's
(G1, G2) and tflib's (D).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pgpig.errors import TrainError
from pgpig.losses import adversarial_loss, masked_l1
from pgpig.models import register
from pgpig.models.objective import Objective, StepBatch

__all__ = ["PG2", "PG2Discriminator", "PG2Objective", "PG2Stage1", "PG2Stage2", "pg2_depth"]

Z_NUM = 64
"""Width of G1's fully-connected bottleneck (``--z_num=64`` in both train scripts)."""
D_WIDTH = 64
"""Base width of the DCGAN discriminator (``WGAN_GP(DIM=64)`` in both trainers)."""


# ------------------------------------------------------------------------------------------------ constructor pieces


def pg2_depth(size: tuple[int, int]) -> int:
    """``R = log2(H) - 2``, G1's residual blocks (the official ``repeat_num``); ``TrainError`` for a size the
    official reshapes cannot take (``H`` not a power of two, ``H`` or ``W`` not a multiple of ``2**(R - 1)``)."""
    h, w = size
    depth = int(math.log2(h)) - 2 if h > 0 else 0
    factor = 2 ** (depth - 1) if depth >= 2 else 0
    if depth < 3 or 2 ** (depth + 2) != h or w % factor:
        raise TrainError(f"PG2 needs a power-of-two image height of at least 32 and a width that is a multiple of "
                         f"H/8, got {h}x{w} (256x256 DeepFashion, 128x64 Market-1501; check crop_margin)")
    return depth


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """A conv with bias, TensorFlow ``SAME`` padding, and a ReLU unless ``relu=False``."""
    if stride == 1:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2)]
    else:  # TF puts the odd padding pixel after (even input sizes)
        before = (kernel - stride) // 2
        after = kernel - stride - before
        layers = [nn.ZeroPad2d((before, after, before, after)), nn.Conv2d(cin, cout, kernel, stride=stride)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """``x + relu(conv(relu(conv(x))))`` at constant width (G1's blocks)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(width, width), _conv(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _init_slim(module: nn.Module) -> None:
    # slim.conv2d / slim.fully_connected defaults: Xavier-uniform weights, zero biases
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def _encode(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The encoder both U-Nets share in form: ``net.stem``, then each of ``net.encoder``'s levels, with a stride-2
    ``net.down`` conv between levels; returns the deepest features and every level's output (the skips)."""
    x = net.stem(x)
    skips = []
    for i, block in enumerate(net.encoder):
        x = block(x)
        skips.append(x)
        if i < len(net.down):
            x = net.down[i](x)
    return x, skips


class PG2Stage1(nn.Module):
    """G1: ``(B, 3 + 18, H, W)`` (source, target pose in {-1, 1}) -> coarse ``(B, 3, H, W)``, unbounded."""

    def __init__(self, size: tuple[int, int], ngf: int = 128) -> None:
        super().__init__()
        depth = pg2_depth(size)
        self.bottom = (size[0] // 2 ** (depth - 1), size[1] // 2 ** (depth - 1))
        self.ngf = ngf
        self.stem = _conv(3 + 18, ngf)
        self.encoder = nn.ModuleList(_Residual(ngf * (i + 1)) for i in range(depth))
        self.down = nn.ModuleList(_conv(ngf * (i + 1), ngf * (i + 2), stride=2) for i in range(depth - 1))
        cells = self.bottom[0] * self.bottom[1]
        self.fc_in = nn.Linear(cells * ngf * depth, Z_NUM)
        self.fc_out = nn.Linear(Z_NUM, cells * ngf)
        # decoder block i reads cat(x, encoder[depth - 1 - i]): n + depth n at the bottom, then 2 (depth - i) n
        widths = [ngf + ngf * depth] + [2 * ngf * (depth - i) for i in range(1, depth)]
        self.decoder = nn.ModuleList(_Residual(c) for c in widths)
        self.up = nn.ModuleList(_conv(widths[i], ngf * (depth - 1 - i), kernel=1) for i in range(depth - 1))
        self.out = _conv(widths[-1], 3, relu=False)
        self.apply(_init_slim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = _encode(self, x)
        x = self.fc_out(self.fc_in(x.flatten(1)))
        x = x.view(-1, self.ngf, *self.bottom)
        for i, block in enumerate(self.decoder):
            x = block(torch.cat((x, skips[-1 - i]), dim=1))
            if i < len(self.up):
                x = self.up[i](nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.out(x)


class PG2Stage2(nn.Module):
    """G2: ``(B, 3 + 3, H, W)`` (coarse, source) -> difference map ``(B, 3, H, W)``, unbounded.

    ``skip_all``: the 256x256 variant (``UAE_noFC_AfterNoise``: a skip from every level); otherwise the 128x64 one
    (``UAE_noFC_After2Noise``: no skip from the top level)."""

    def __init__(self, size: tuple[int, int], ngf: int = 128, skip_all: bool = True) -> None:
        super().__init__()
        levels = pg2_depth(size) - 2
        self.skip_all = skip_all
        widths = [ngf * (i + 1) for i in range(levels)]
        self.stem = _conv(3 + 3, ngf)
        self.encoder = nn.ModuleList(
            nn.Sequential(_conv(widths[i - 1] if i else ngf, widths[i]), _conv(widths[i], widths[i]))
            for i in range(levels))
        self.down = nn.ModuleList(_conv(widths[i], widths[i], stride=2) for i in range(levels - 1))
        decoder = []
        for i in range(levels):
            skip = widths[levels - 1 - i] if self._skips(i, levels) else 0
            cin = widths[-1] + skip if i == 0 else ngf + skip
            decoder.append(nn.Sequential(_conv(cin, ngf), _conv(ngf, ngf)))
        self.decoder = nn.ModuleList(decoder)
        self.out = _conv(ngf, 3, relu=False)
        self.apply(_init_slim)

    def _skips(self, i: int, levels: int) -> bool:
        """Whether decoder level ``i`` concatenates encoder level ``levels - 1 - i``."""
        return self.skip_all or i < levels - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = len(self.encoder)
        x, skips = _encode(self, x)
        for i, block in enumerate(self.decoder):
            if self._skips(i, levels):
                x = torch.cat((x, skips[levels - 1 - i]), dim=1)
            x = block(x)
            if i < levels - 1:
                x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.out(x)


# ---------------------------------------------------------------------------------------------------- generator


class PG2(nn.Module):
    """The PG2 generator of one stage: ``forward(source_image, source_pose, target_pose) -> (B, 3, H, W)``.

    Stage 1 holds ``g1``; stage 2 holds ``g1`` (frozen) and ``g2``. Training mode returns the raw output (the
    official losses see it unclipped); eval mode clamps it to ``[-1, 1]``, as the official image writer does."""

    def __init__(self, size: tuple[int, int] = (128, 64), stage: int = 1, ngf: int = 128) -> None:
        super().__init__()
        if stage not in (1, 2):
            raise TrainError(f"PG2 has stages 1 and 2, not {stage}")
        self.stage = stage
        self.g1 = PG2Stage1(size, ngf)
        self.g2: PG2Stage2 | None = None
        if stage == 2:
            self.g1.requires_grad_(False)
            self.g2 = PG2Stage2(size, ngf, skip_all=size[0] >= 256)  # the official 256x256 and 128x64 variants

    def forward(self, source_image: torch.Tensor, source_pose: torch.Tensor, target_pose: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)``, ``(B, 18, H, W)`` (unused), ``(B, 18, H, W)`` in ``[0, 1]`` -> ``(B, 3, H, W)``."""
        g1_input = torch.cat((source_image, target_pose * 2 - 1), dim=1)
        if self.g2 is None:
            out = self.g1(g1_input)
        else:
            with torch.no_grad():
                coarse = self.g1(g1_input)
            out = coarse + self.g2(torch.cat((coarse, source_image), dim=1))
        return out if self.training else out.clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------------- discriminator


class PG2Discriminator(nn.Module):
    """The DCGAN discriminator: ``(B, 3, H, W)`` -> one logit per image ``(B,)``.

    ``log2(H) - 3`` stride-2 5x5 convs (4 at 128x64, 5 at 256x256) of widths ``64 * 2**min(k, 3)``, batch norm
    after all but the first, LeakyReLU 0.2, then a linear layer from the ``8 x W / 2**k`` map."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        pg2_depth(size)
        h, w = size
        n = int(math.log2(h)) - 3
        layers: list[nn.Module] = []
        cin = 3
        for k in range(n):
            cout = D_WIDTH * 2 ** min(k, 3)
            layers += list(_conv(cin, cout, kernel=5, stride=2, relu=False))
            if k > 0:
                layers.append(nn.BatchNorm2d(cout))  # tflib's fused batch norm, epsilon 1e-5, batch statistics
            layers.append(nn.LeakyReLU(0.2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.output = nn.Linear(cin * (h // 2**n) * (w // 2**n), 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):  # tflib uniform(+-0.02 sqrt 3): standard deviation 0.02
                bound = 0.02 * math.sqrt(3)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(image).flatten(1)).flatten()


# ---------------------------------------------------------------------------------------------------- objective


class PG2Objective(Objective):
    """PG2's two stages (``docs/models/pg2.md``): stage 1 ``masked_l1(G1, target, M)``; stage 2 ``lambda_l1 *
    masked_l1(G1 + G2, target, M) + lambda_gan * GAN`` and D's ``0.5 real + 0.25 source + 0.25 generated``."""

    @classmethod
    def build_generator(cls, cfg: Any, size: tuple[int, int]) -> nn.Module:
        from pgpig import models

        if cfg.stage not in (1, 2):
            raise TrainError(f"PG2 has stages 1 (G1) and 2 (G2 + D, G1 fixed); stage is {cfg.stage}")
        return models.create(cfg.model, size=size, stage=cfg.stage, ngf=cfg.ngf)

    def build_discriminators(self, size: tuple[int, int]) -> dict[str, nn.Module]:
        if self.cfg.stage < 2 or not self.cfg.use_gan:
            return {}
        return {"d": PG2Discriminator(size)}

    def pose_mask(self, batch: StepBatch) -> torch.Tensor:
        """The target's PG2 pose mask ``(B, 1, H, W)``."""
        from pgpig.data import render_pg2_masks

        return render_pg2_masks(batch.target_kp, tuple(batch.target.shape[-2:]), self.cfg.mask_radius)

    def generator_loss(self, generator, discriminators, batch):
        cfg = self.cfg
        generated = generator(batch.source, batch.source_pose, batch.target_pose)
        loss_l1 = masked_l1(generated, batch.target, self.pose_mask(batch), weight_outside=1.0)
        scalars = {"mask_l1": loss_l1}
        if cfg.stage == 1:
            return generated, loss_l1, scalars
        loss = cfg.lambda_l1 * loss_l1
        if discriminators:
            d = discriminators["d"]
            fake_logits = d(torch.cat((batch.target, batch.source, generated))).chunk(3)[2]
            loss_gan = adversarial_loss(fake_logits, True, cfg.gan_kind, for_discriminator=False)
            loss = loss + cfg.lambda_gan * loss_gan
            scalars["g_gan"] = loss_gan
        return generated, loss, scalars

    def discriminator_loss(self, discriminators, pools, batch, generated):
        kind = self.cfg.gan_kind
        (fake,) = pools["d"].query(generated)
        real, source, fake = discriminators["d"](torch.cat((batch.target, batch.source, fake))).chunk(3)
        return (0.5 * adversarial_loss(real, True, kind) + 0.25 * adversarial_loss(source, False, kind)
                + 0.25 * adversarial_loss(fake, False, kind))


register("pg2", objective=PG2Objective)(PG2)
