"""PATN's two discriminators (Zhu et al., CVPR 2019, arXiv:1904.03349, Sec. 3.2): the appearance discriminator
``D_A`` judges (image, source image) pairs and the shape discriminator ``D_S`` (image, target pose) pairs.

Both are the official ``ResnetDiscriminator`` (tengteng95/Pose-Transfer ``models/networks.py``, read for these
facts; ``models/PATN.py`` for the inputs): the ResNet encoder stem (reflection pad, 7x7 conv to ``ndf``, two
stride-2 convs to ``4 * ndf``), then ``n_blocks`` residual blocks (``--n_layers_D 3`` in the README's train
commands), and nothing after them: the output is the last residual block's ``(B, 4 * ndf, H/4, W/4)`` = ``(B, 256,
H/4, W/4)`` map itself, no final 1-channel conv. The official model appends a sigmoid only with ``--no_lsgan`` (the
README's Market-1501 command passes it, the DeepFashion one does not, so DeepFashion trains with the least-squares
loss); here the output is always the raw map and the loss decides (``BCEWithLogits`` for "vanilla"). The norm is the
generator's (``--norm``: instance on DeepFashion, batch on Market-1501); dropout 0.5 in each residual block (the
option ``--no_dropout_D`` is off by default and the README's commands do not pass it). Inputs, as ``models/PATN.py``
concatenates them: ``D_A`` ``cat(image, source image)`` (6 channels), ``D_S`` ``cat(image, target pose)`` (21
channels). Official ``define_D`` applies no custom initialisation, so PyTorch's defaults stay.
``state_dict_shapes.json`` lists no discriminator keys, so the parameter counts are not checked against it; the key
names mirror the official ones (``model.1.weight``, ``model.10.conv_block.1.weight``, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from pgpig.models.blocks import conv_pair, encoder_layers

__all__ = ["PATNDiscriminator", "ResnetBlock", "patn_appearance_discriminator", "patn_shape_discriminator"]


class ResnetBlock(nn.Module):
    """``x + (pad, conv3x3, norm, ReLU, dropout, pad, conv3x3, norm)(x)`` on ``(B, dim, h, w)``."""

    def __init__(self, dim: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.conv_block = conv_pair(dim, dim, dim, norm, dropout, final_norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class PATNDiscriminator(nn.Module):
    """``forward(image (B, image_channels, H, W), condition (B, condition_channels, H, W))`` -> logits
    ``(B, ndf * 2**n_downsampling, H / 2**n, W / 2**n)``."""

    def __init__(
        self,
        condition_channels: int,
        image_channels: int = 3,
        ndf: int = 64,
        n_blocks: int = 3,
        norm: str = "instance",
        n_downsampling: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        dim = ndf * 2**n_downsampling
        layers = encoder_layers(image_channels + condition_channels, ndf, n_downsampling, norm)
        layers += [ResnetBlock(dim, norm, dropout) for _ in range(n_blocks)]
        self.model = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat((image, condition), dim=1))


def patn_appearance_discriminator(image_channels: int = 3, **kwargs: object) -> PATNDiscriminator:
    """``D_A``: ``forward(image, source_image)``."""
    return PATNDiscriminator(condition_channels=image_channels, image_channels=image_channels, **kwargs)


def patn_shape_discriminator(image_channels: int = 3, pose_channels: int = 18, **kwargs: object) -> PATNDiscriminator:
    """``D_S``: ``forward(image, target_pose)``."""
    return PATNDiscriminator(condition_channels=pose_channels, image_channels=image_channels, **kwargs)
