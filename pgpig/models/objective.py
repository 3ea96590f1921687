"""What training a generator family means: which networks it has, which losses train them.

``pgpig.train`` owns the loop (data, optimizers, AMP, DDP, checkpoints, logging); an ``Objective`` owns the maths
of one step for its family. A model file registers its generator with ``@register(name, objective=...)``; the
default, ``PairGANObjective``, is PATN's (and XingGAN's, whose official training code is PATN's with another
generator): L1 + perceptual to the target, plus an appearance and a shape discriminator on (image, condition)
pairs. Another family (PG2's two stages, GFLA's flow losses) subclasses it and overrides what differs.

Contract with the loop:

- ``build_generator(cfg, size)``, ``build_discriminators(size)`` then ``build_losses()`` are called in this order
  on a fresh seed. The generator, for ``(H, W)`` training images, has ``forward(source_image, source_pose,
  target_pose)`` that returns the generated target image (or a tuple whose first item is it), which is
  what ``pgpig generate`` and evaluation call. Parameters the objective keeps fixed (``requires_grad=False``) are
  left out of the generator's optimizer.
- ``generator_loss`` runs the generator through the module it is given (which may be wrapped in DDP or
  ``torch.compile``: call it, not its submodules, so gradients are synchronised) and returns the generated batch,
  the loss to minimise and the named scalars to log. The discriminators it is given are plain and frozen.
- ``discriminator_loss`` gets the detached generated batch and the (possibly wrapped) discriminators, and returns
  their loss; it is called only when there are discriminators.
- Both run inside the loop's autocast; a ``StepBatch`` holds the device tensors of one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pgpig.losses import PATN_PERCEPTUAL_LAYERS, PerceptualLoss, adversarial_loss, l1_loss

__all__ = ["Objective", "PairGANObjective", "StepBatch", "generated_image"]


def generated_image(output: torch.Tensor | tuple | list) -> torch.Tensor:
    """The generated target image of a generator's forward output (a tensor, or a tuple whose first item it is)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@dataclass
class StepBatch:
    """One step's inputs on the device: images ``(B, 3, H, W)`` in [-1, 1], pose maps ``(B, 18, H, W)``, keypoints
    ``(B, 18, 2)`` in the (cropped) training frame with ``(-1, -1)`` for invisible joints."""

    source: torch.Tensor
    target: torch.Tensor
    source_pose: torch.Tensor
    target_pose: torch.Tensor
    source_kp: torch.Tensor
    target_kp: torch.Tensor


class Objective:
    """Base class: the networks and losses of a generator family under a ``TrainConfig`` (``cfg``)."""

    def __init__(self, cfg: Any, device: torch.device):
        self.cfg = cfg
        self.device = device

    @classmethod
    def build_generator(cls, cfg: Any, size: tuple[int, int]) -> nn.Module:
        """The generator of ``cfg`` for ``(H, W)`` images, freshly initialised, on the CPU (a class method: building
        it for ``pgpig generate`` needs no loss network)."""
        from pgpig import models

        return models.create(cfg.model, ngf=cfg.ngf, n_blocks=cfg.n_blocks, norm=cfg.norm, dropout=cfg.dropout)

    def build_discriminators(self, size: tuple[int, int]) -> dict[str, nn.Module]:
        """The discriminators by name (empty: no adversarial training), freshly initialised, on the CPU."""
        return {}

    def build_losses(self) -> None:
        """Make the loss networks (VGG, ...) on ``self.device``; called after the generator and discriminators are
        built, so their initialisation draws the same random numbers whatever the losses are."""

    def generator_loss(self, generator: nn.Module, discriminators: dict[str, nn.Module],
                       batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(generated, loss, scalars)`` of the generator's step."""
        raise NotImplementedError

    def discriminator_loss(self, discriminators: dict[str, nn.Module], pools: dict[str, Any], batch: StepBatch,
                           generated: torch.Tensor) -> torch.Tensor:
        """The discriminators' loss on real pairs and the (detached, pooled) generated ones."""
        raise NotImplementedError

    def sample_columns(self, generator: nn.Module, batch: StepBatch) -> list[torch.Tensor]:
        """More ``(B, 3, H, W)`` images in ``[-1, 1]`` for the sample grids, shown between the generated image and the
        target (GFLA: the source warped by its flow); ``generator`` is the plain module. None by default."""
        return []


class PairGANObjective(Objective):
    """PATN's training (module docstring of ``pgpig.train`` for the sources): ``lambda_l1 * L1 + lambda_perceptual *
    perceptual + lambda_gan * (GAN_appearance + GAN_shape) / 2``; each discriminator ``lambda_gan * (real + fake)
    / 2``; the appearance discriminator judges ``(image, source image)``, the shape one ``(image, target pose)``."""

    perceptual: PerceptualLoss | None = None
    """VGG-19 ``relu1_2`` L1; ``None`` when its weight is 0 (no VGG is built or run)."""

    def build_losses(self) -> None:
        cfg = self.cfg
        if cfg.lambda_perceptual:
            self.perceptual = PerceptualLoss(PATN_PERCEPTUAL_LAYERS, vgg_weights=cfg.vgg_weights,
                                             allow_random=cfg.allow_random_vgg).to(self.device)

    def build_discriminators(self, size: tuple[int, int]) -> dict[str, nn.Module]:
        from pgpig.models.discriminators import patn_appearance_discriminator, patn_shape_discriminator

        cfg = self.cfg
        if not cfg.use_gan:
            return {}
        kwargs = {"ndf": cfg.ngf, "n_blocks": cfg.d_blocks, "norm": cfg.norm, "dropout": cfg.dropout}
        return {"appearance": patn_appearance_discriminator(**kwargs), "shape": patn_shape_discriminator(**kwargs)}

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
