"""PG2, the two-stage Pose Guided Person Generation Network.

Ma, Jia, Sun, Schiele, Tuytelaars, Van Gool, "Pose Guided Person Image Generation", NeurIPS 2017, arXiv:1705.09368;
official TensorFlow code charliememory/Pose-Guided-Person-Image-Generation (``models.py``, ``models256.py``,
``trainer.py``, ``trainer256.py``, ``wgan_gp.py``, ``config.py``, ``main.py``, ``run_*_train.sh``,
``datasets/convert_*.py``; read for the facts below, file by file).

Input: ``source_image`` ``(B, 3, H, W)`` in ``[-1, 1]``, ``source_pose`` (unused: G1 sees the target pose only)
and ``target_pose`` ``(B, 18, H, W)`` in ``[0, 1]`` (PG2's binary disks, ``pose_encoding: disk``); ``H`` a power
of two and ``H``, ``W`` multiples of ``2**(log2(H) - 3)`` (256x256 DeepFashion, 128x64 Market-1501, 64x40 in the
tests). Output: ``(B, 3, H, W)``: stage 1 G1's coarse image, stage 2 ``coarse + G2(coarse, source)``.

Architecture (``n`` = ``ngf``, 128 = ``--conv_hidden_num`` default in ``config.py``; ``R = log2(H) - 2``, the
trainer's ``repeat_num``: 6 at 256, 5 at 128; every conv 3x3 with bias and ReLU unless said otherwise, since
``build_model`` passes ``activation_fn=tf.nn.relu``):

- **G1** (``GeneratorCNN_Pose_UAEAfterResidual`` in ``models.py``, ``..._256`` in ``models256.py``, identical but
  for the bottleneck's shape): input ``cat(source, 2 * target_pose - 1)`` (21 channels; the loaders of
  ``trainer.py`` map the stored {0, 1} maps to {-1, 1}); a conv to ``n``; ``R`` residual blocks ``x + conv(conv(x))``
  at widths ``n, 2n, ..., Rn``, with a stride-2 conv to the next width between them; a fully-connected bottleneck
  ``(H/2^(R-1)) (W/2^(R-1)) Rn -> z_num = 64`` (``--z_num=64``, no activation) ``-> (H/2^(R-1)) (W/2^(R-1)) n``;
  ``R`` decoder residual blocks on ``cat(x, encoder skip)``, each but the last followed by a nearest 2x upscale and
  a 1x1 conv to ``(R - 1 - i) n``; a conv to 3 channels, no activation.
- **G2** (``UAE_noFC_AfterNoise`` for 256x256 via ``models256.py``; ``UAE_noFC_After2Noise`` for 128x64 via
  ``models.py``; ``noise_dim=0`` in both ``build_model``): input ``cat(coarse, source)``; a conv to ``n``; ``R - 2``
  levels of two convs to ``(i + 1) n`` with a stride-2 conv of the same width between levels; a decoder of two
  convs to ``n`` per level on ``cat(x, encoder level)``, nearest 2x upscales between; a conv to 3, no activation.
  The two variants differ in the skips: at 256 every level is a skip; at 128 the first level is not, and the
  decoder's last level concatenates nothing. We take the 256 variant for ``H >= 256`` and the other below.
- **D** (``DCGANDiscriminator`` / ``DCGANDiscriminator_256`` in ``wgan_gp.py``, ``DIM=64``): on single 3-channel
  images, 5x5 stride-2 convs with bias to 64, 128, 256, 512 (and 512 more at 256), batch norm after all but the
  first, LeakyReLU 0.2, then a linear layer from the final ``8 x (W / 2^k) x 512`` map to one logit.
- Output: ``G2 = G1 + DiffMap`` with no tanh and no clip in the graph; only ``denorm_img`` clips when images are
  written. So training sees the raw sum and eval mode (``pgpig generate``, evaluation) clamps to ``[-1, 1]``.
- Padding is TensorFlow's ``SAME``: stride-1 convs pad evenly; stride-2 convs on even sizes pad one more row and
  column at the bottom and right (3x3: 0 before, 1 after; 5x5: 1 before, 2 after), which is reproduced here.
- Initialisation: slim's defaults for G1 and G2 (Xavier-uniform weights, zero biases); tflib's for D
  (``set_weights_stdev(0.02)``: weights uniform with standard deviation 0.02, zero biases; batch norm scale 1,
  offset 0).

Official parameter counts (derived in ``tests/pgpig/test_pg2.py`` from the layer list above, trainable variables
only): 256x256 G1 122,103,235, G2 12,696,067, D 10,896,257; 128x64 G1 70,795,075, G2 6,058,883, D 4,324,737.
Ours are exactly these numbers (D's batch-norm moving averages are buffers here, non-trainable variables there).

Training (``trainer.py`` ``PG2.train`` and ``build_model``, ``trainer256.py``, ``run_*_train.sh``):

- Stage 1 (``step < 22000``): G1 alone, ``g_loss1 = mean|G1 - target| + mean(|G1 - target| * M)``, ``M`` the
  target's pose mask (``pose_mask_r4``, radius 4: ``pgpig.data.render_pg2_masks``); that is ``masked_l1`` with
  ``weight_outside=1``. Stage 2 (steps 22000 to ``--max_step``: 80,000 DeepFashion, 60,000 Market): G2 and D, G1's
  variables outside every optimizer's ``var_list`` (G1 has no batch norm or dropout, so it is exactly fixed);
  ``g_loss2 = gen_cost + lambda * (mean|G2 - target| + mean(|G2 - target| * M))`` with ``lambda`` 50 on DeepFashion
  (``trainer256.py``) and 10 on Market (``trainer.py``).
- The discriminator is not conditioned by concatenation: the real class is the target image and the fake class
  the refined image *and the source image* (so D must tell the target from the condition). Its loss is
  ``0.5 BCE(D(target), 1) + 0.25 BCE(D(source), 0) + 0.25 BCE(D(G2), 0)`` in both trainers (``trainer256.py``
  writes it as the mean over ``[G2, source]`` plus the real term, halved). D runs once on the batch
  concatenation of target, source and G2 (and G1 on Market), so its batch norm normalises them together.
  ``gen_cost`` is ``BCE(D(G2), 1)`` on Market; on DeepFashion it is the mean over ``[D(G2), D(source)]``, whose
  source half reaches G2 only through D's batch statistics, so it is ``0.5 BCE(D(G2), 1)`` to first order.
- Optimisers (``_getOptimizer``, ``MODE='dcgan'``): Adam, lr 2e-5, beta1 0.5, beta2 0.999 (TF default) for each of
  G1, G2 and D, constant: the ``g_lr``/``d_lr`` variables that ``--lr_update_step`` halves are never passed to the
  optimisers. Batch size 1 on DeepFashion, 16 on Market (``run_DF_train.sh``, ``run_market_train.sh``).

Decisions:

- Stage 1 builds G1 only; stage 2 builds G1 and G2 and freezes G1 (``requires_grad=False``, run under
  ``no_grad``), and must start from a stage-1 run's ``generator.safetensors`` (``init_weights``, checked by the
  trainer). The stage-1 loss is the official unweighted masked L1 (``lambda_l1`` weighs it only in stage 2,
  against the adversarial term).
- D sees the batch ``[target, source, generated]`` in one forward, in both the generator's and the
  discriminator's step, so its batch norm sees what the official one saw (Market's extra G1 images are left out;
  they enter only its batch statistics). The generator's adversarial term is ``lambda_gan * BCE(D(G2), 1)``;
  the DeepFashion recipe sets ``lambda_gan: 0.5`` for the official mean over G2 and source logits.
- ``n_blocks``, ``norm`` and ``dropout`` of the config do not apply: the official code derives ``R`` from the
  image height and has no normalisation or dropout in G1 and G2.
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

    def __init__(self, size: tuple[int, int], in_channels: int = 21, out_channels: int = 3, ngf: int = 128,
                 z_num: int = Z_NUM) -> None:
        super().__init__()
        depth = pg2_depth(size)
        self.bottom = (size[0] // 2 ** (depth - 1), size[1] // 2 ** (depth - 1))
        self.ngf = ngf
        self.stem = _conv(in_channels, ngf)
        self.encoder = nn.ModuleList(_Residual(ngf * (i + 1)) for i in range(depth))
        self.down = nn.ModuleList(_conv(ngf * (i + 1), ngf * (i + 2), stride=2) for i in range(depth - 1))
        cells = self.bottom[0] * self.bottom[1]
        self.fc_in = nn.Linear(cells * ngf * depth, z_num)
        self.fc_out = nn.Linear(z_num, cells * ngf)
        # decoder block i reads cat(x, encoder[depth - 1 - i]): n + depth n at the bottom, then 2 (depth - i) n
        widths = [ngf + ngf * depth] + [2 * ngf * (depth - i) for i in range(1, depth)]
        self.decoder = nn.ModuleList(_Residual(c) for c in widths)
        self.up = nn.ModuleList(_conv(widths[i], ngf * (depth - 1 - i), kernel=1) for i in range(depth - 1))
        self.out = _conv(widths[-1], out_channels, relu=False)
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

    def __init__(self, size: tuple[int, int], in_channels: int = 6, out_channels: int = 3, ngf: int = 128,
                 skip_all: bool = True) -> None:
        super().__init__()
        levels = pg2_depth(size) - 2
        self.skip_all = skip_all
        widths = [ngf * (i + 1) for i in range(levels)]
        self.stem = _conv(in_channels, ngf)
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
        self.out = _conv(ngf, out_channels, relu=False)
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


class PG2Discriminator(nn.Module):
    """The DCGAN discriminator: ``(B, 3, H, W)`` -> one logit per image ``(B,)``.

    ``log2(H) - 3`` stride-2 5x5 convs (4 at 128x64, 5 at 256x256) of widths ``ndf * 2**min(k, 3)``, batch norm
    after all but the first, LeakyReLU 0.2, then a linear layer from the ``8 x W / 2**k`` map."""

    def __init__(self, size: tuple[int, int], in_channels: int = 3, ndf: int = D_WIDTH) -> None:
        super().__init__()
        pg2_depth(size)
        h, w = size
        n = int(math.log2(h)) - 3
        layers: list[nn.Module] = []
        cin = in_channels
        for k in range(n):
            cout = ndf * 2 ** min(k, 3)
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


class PG2Objective(Objective):
    """PG2's two stages (module docstring): stage 1 ``masked_l1(G1, target, M)``; stage 2 ``lambda_l1 *
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


@register("pg2", objective=PG2Objective)
class PG2(nn.Module):
    """The PG2 generator of one stage: ``forward(source_image, source_pose, target_pose) -> (B, 3, H, W)``.

    Stage 1 holds ``g1``; stage 2 holds ``g1`` (frozen) and ``g2``. Training mode returns the raw output (the
    official losses see it unclipped); eval mode clamps it to ``[-1, 1]``, as the official image writer does."""

    def __init__(self, size: tuple[int, int] = (128, 64), stage: int = 1, ngf: int = 128, image_channels: int = 3,
                 pose_channels: int = 18, z_num: int = Z_NUM, skip_all: bool | None = None) -> None:
        super().__init__()
        if stage not in (1, 2):
            raise TrainError(f"PG2 has stages 1 and 2, not {stage}")
        self.stage = stage
        self.g1 = PG2Stage1(size, image_channels + pose_channels, image_channels, ngf, z_num)
        self.g2: PG2Stage2 | None = None
        if stage == 2:
            self.g1.requires_grad_(False)
            self.g2 = PG2Stage2(size, 2 * image_channels, image_channels, ngf,
                                skip_all=size[0] >= 256 if skip_all is None else skip_all)

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
