"""What training a generator family means: the contract between ``pgpig.train``'s loop and a family's
``Objective``, and the ``StepBatch`` of tensors one step hands it.

The loop owns data, optimizers, AMP, DDP, checkpoints and logging; an ``Objective`` owns which networks a family
has and the maths of its step. A model file registers its generator with ``@register(name, objective=...)``; PATN's
``pgpig.models.patn.PairGANObjective`` is the default. The methods' docstrings are the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pgpig.losses import vgg_content_style

__all__ = ["Objective", "StepBatch", "generated_image"]


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
    """Base class: the networks and losses of a generator family under a ``TrainConfig`` (``cfg``).

    The loop calls ``build_generator``, ``build_discriminators`` then ``build_losses`` in this order on a fresh seed,
    then per step ``generator_loss`` and (when there are discriminators) ``discriminator_loss``, both inside its
    autocast."""

    content_style = staticmethod(vgg_content_style)
    """The content and style losses on VGG features (``pgpig.losses.vgg_content_style``)."""

    compiled_maths: tuple[str, ...] = ("content_style",)
    """The static methods holding loss maths that ``compile_parts`` replaces on the instance by compiled copies."""

    def __init__(self, cfg: Any, device: torch.device):
        self.cfg = cfg
        self.device = device

    @classmethod
    def build_generator(cls, cfg: Any, size: tuple[int, int]) -> nn.Module:
        """The generator of ``cfg`` for ``(H, W)`` images, freshly initialised, on the CPU (a class method: building
        it for ``pgpig generate`` needs no loss network).

        Its ``forward(source_image, source_pose, target_pose)`` returns the generated target image (or a tuple whose
        first item is it), which ``pgpig generate`` and evaluation call. Parameters the objective keeps fixed
        (``requires_grad=False``) are left out of the generator's optimizer."""
        raise NotImplementedError

    def build_discriminators(self, size: tuple[int, int]) -> dict[str, nn.Module]:
        """The discriminators by name (empty: no adversarial training), freshly initialised, on the CPU."""
        return {}

    def build_losses(self) -> None:
        """Make the loss networks (VGG, ...) on ``self.device``; called after the generator and discriminators are
        built, so their initialisation draws the same random numbers whatever the losses are."""

    def generator_loss(self, generator: nn.Module, discriminators: dict[str, nn.Module],
                       batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(generated, loss, scalars)`` of the generator's step: the generated batch, the loss to minimise and the
        named scalars to log.

        ``generator`` may be wrapped in DDP or ``torch.compile``: call it, not its submodules, so gradients are
        synchronised. The ``discriminators`` are plain and frozen."""
        raise NotImplementedError

    def discriminator_loss(self, discriminators: dict[str, nn.Module], pools: dict[str, Any], batch: StepBatch,
                           generated: torch.Tensor) -> torch.Tensor:
        """The discriminators' loss on real pairs and the (detached, pooled) ``generated`` ones; ``discriminators``
        may be wrapped. Called only when there are discriminators."""
        raise NotImplementedError

    def sample_columns(self, generator: nn.Module, batch: StepBatch) -> list[torch.Tensor]:
        """More ``(B, 3, H, W)`` images in ``[-1, 1]`` for the sample grids, shown between the generated image and the
        target (GFLA: the source warped by its flow); ``generator`` is the plain module. None by default."""
        return []
