"""XingGAN, the crossing-branch generator: two encoder branches, crossing attention blocks, co-attention fusion.

Tang, Bai, Zhang, Torr, Sebe, "XingGAN for Person Image Generation", ECCV 2020, arXiv:2007.09278. Facts read from
the official code Ha0Tang/XingGAN (``models/model_variants.py``, ``models/networks.py``, ``models/XingGAN.py``, the
``train_*.sh`` scripts) and its state-dict key list; the specification is ``docs/models/xinggan.md``.

``forward(source_image (B, 3, H, W), source_pose (B, 18, H, W), target_pose (B, 18, H, W))`` -> the target image
``(B, 3, H, W)``, a convex combination of 20 tanh images and the source (so in ``[-1, 1]``); ``H`` and ``W``
multiples of 4. The official code is PATN's with another generator: XingGAN builds from PATN's blocks
(``pgpig.models.patn``) and trains with its ``PairGANObjective``. Key names mirror the official ones, so official
weights load with ``load_state_dict``. The two crossing attentions of a block run as one pair of batched matrix
products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgpig.errors import TrainError
from pgpig.models import register
from pgpig.models.patn import (
    PairGANObjective,
    conv_pair,
    decoder_layers,
    encoder_layers,
    init_official_normal,
    norm_layer,
    norm_uses_bias,
)

__all__ = ["IMAGES_PER_BRANCH", "PAPER_SETTINGS", "XingBlock", "XingGAN", "cross_attention"]

# The official training settings per data set (train_deepfashion.sh: --norm instance; train_market.sh: --norm
# batch; define_G hard-codes 9 blocks, and both official key lists hold model.att.0..8).
PAPER_SETTINGS: dict[str, dict[str, object]] = {
    "deepfashion": {"ngf": 64, "n_blocks": 9, "norm": "instance", "n_downsampling": 2, "dropout": 0.5},
    "market1501": {"ngf": 64, "n_blocks": 9, "norm": "batch", "n_downsampling": 2, "dropout": 0.5},
}

IMAGES_PER_BRANCH = 10
"""Intermediate images each decoder produces (the official 30 output channels); the fusion weighs these 20 and the
source image, 21 maps."""

# The named modules of ``model`` run one after the other on the last shape code, and on the fused codes.
SHAPE_DECODER = ("x2_con", "x2_norm", "x2_relu", "stream2_up")
FUSION = ("atte_con", "atte_norm", "atte_relu", "atte_con1", "atte_norm1", "atte_relu1", "atte_con2")


def cross_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``out[:, :, i] = sum_j softmax_j(query[:, :, i] . key[:, :, j]) value[:, :, j]`` over the ``N = h w`` positions,
    unscaled: ``query``, ``key`` ``(B, C', h, w)``, ``value`` ``(B, C, h, w)`` -> ``(B, C, h, w)``.

    ``scaled_dot_product_attention`` with scale 1, one head whose value is wider than its query: on a GPU a fused
    kernel, which never holds the ``(B, N, N)`` attention matrix. At the DeepFashion recipe's shapes (64 codes of
    256 channels at 64x44) on an H100, forward and backward took 6.2 ms in bf16 against 21.0 ms for the two batched
    products, and 28.3 against 31.3 ms in float32, with 0.6-0.9 GiB of memory against 9.8 and a float32 result
    closer to float64 (``benchmarks/attention_bench.py``)."""
    b, c, h, w = value.shape
    q, k, v = (t.flatten(2).transpose(1, 2).contiguous().unsqueeze(1) for t in (query, key, value))  # (B, 1, N, *)
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, 1, N, C)
    return out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)


class XingBlock(nn.Module):
    """One Xing block (an SA and an AS update) on ``dim``-channel codes.

    ``x1`` ``(B, dim, h, w)`` appearance codes, ``x2`` ``(B, dim or 2*dim, h, w)`` shape codes (``2*dim`` after the
    first block, ``cat_input=True``) -> updated ``x1`` ``(B, dim, h, w)`` and ``x2`` ``(B, 2*dim, h, w)``.

    As in the official block, ``gamma * attention`` is added to the conv outputs, not to the block's input: a Xing
    block has no identity skip (a PAT block has one).
    """

    def __init__(self, dim: int, norm: str, dropout: float, cat_input: bool) -> None:
        super().__init__()
        shape_dim = 2 * dim if cat_input else dim
        self.gamma = nn.Parameter(torch.zeros(1))
        self.conv_block_stream1 = conv_pair(dim, dim, dim, norm, dropout, final_norm=True)
        self.conv_block_stream2 = conv_pair(shape_dim, shape_dim, dim, norm, dropout, final_norm=False)
        self.query_conv = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # appearance and shape on one batch axis: the 1x1 convs are shared, so each runs once for both updates
        both = torch.cat((self.conv_block_stream1(x1), self.conv_block_stream2(x2)), dim=0)
        keys = self.key_conv(both)
        crossed_keys = torch.cat(keys.chunk(2)[::-1], dim=0)  # appearance queries meet shape keys, and vice versa
        both = both + self.gamma * cross_attention(self.query_conv(both), crossed_keys, self.value_conv(both))
        appearance, shape = both.chunk(2)
        return appearance, torch.cat((appearance, shape), dim=1)


@register("xinggan", objective=PairGANObjective)  # the official training code is PATN's
class XingGAN(nn.Module):
    """The Xing generator: ``forward(source_image, source_pose, target_pose) -> (B, 3, H, W)`` in ``[-1, 1]``.

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
        if n_downsampling != 2:
            raise TrainError(f"xinggan needs n_downsampling 2 (its fusion upsamples twice), got {n_downsampling}")
        if ngf < 2:
            raise TrainError(f"xinggan needs ngf >= 2 (its attention keys have ngf / 2 channels), got {ngf}")
        make_norm, bias = norm_layer(norm), norm_uses_bias(norm)
        dim = ngf * 2**n_downsampling
        images = IMAGES_PER_BRANCH * image_channels
        maps = 2 * IMAGES_PER_BRANCH + 1

        # A ModuleDict named ``model`` gives the official key names (``model.stream1_down.1.weight``,
        # ``model.atte_con.weight``, ...), built in the official order.
        self.model = nn.ModuleDict(
            {
                "stream1_down": nn.Sequential(*encoder_layers(image_channels, ngf, n_downsampling, norm)),
                "stream2_down": nn.Sequential(*encoder_layers(2 * pose_channels, ngf, n_downsampling, norm)),
                "att": nn.ModuleList(XingBlock(dim, norm, dropout, cat_input=i > 0) for i in range(n_blocks)),
                "stream1_up": nn.Sequential(*decoder_layers(ngf, n_downsampling, norm, images)),
                "stream2_up": nn.Sequential(*decoder_layers(ngf, n_downsampling, norm, images)),
                "x2_con": nn.ConvTranspose2d(2 * dim, dim, kernel_size=1, bias=bias),
                "x2_norm": make_norm(dim),
                "x2_relu": nn.ReLU(inplace=True),
                "atte_con": nn.ConvTranspose2d(3 * dim, dim, 3, stride=2, padding=1, output_padding=1, bias=bias),
                "atte_norm": make_norm(dim),
                "atte_relu": nn.ReLU(inplace=True),
                "atte_con1": nn.ConvTranspose2d(dim, dim // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                "atte_norm1": make_norm(dim // 2),
                "atte_relu1": nn.ReLU(inplace=True),
                "atte_con2": nn.ConvTranspose2d(dim // 2, maps, kernel_size=1, bias=bias),
            }
        )
        self.apply(init_official_normal)

    def _chain(self, names: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = self.model[name](x)
        return x

    def forward(self, source_image: torch.Tensor, source_pose: torch.Tensor, target_pose: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)``, ``(B, 18, H, W)``, ``(B, 18, H, W)`` -> ``(B, 3, H, W)`` in ``[-1, 1]``."""
        appearance = self.model["stream1_down"](source_image)
        shape = self.model["stream2_down"](torch.cat((source_pose, target_pose), dim=1))
        for block in self.model["att"]:
            appearance, shape = block(appearance, shape)

        weights = torch.softmax(self._chain(FUSION, torch.cat((appearance, shape), dim=1)), dim=1)  # (B, 21, H, W)
        b, c, h, w = source_image.shape
        candidates = torch.cat(
            (self.model["stream1_up"](appearance).view(b, IMAGES_PER_BRANCH, c, h, w),
             self._chain(SHAPE_DECODER, shape).view(b, IMAGES_PER_BRANCH, c, h, w),
             source_image.unsqueeze(1)),
            dim=1,
        )  # (B, 21, C, H, W): appearance branch's images, shape branch's, the source
        return (candidates * weights.unsqueeze(2)).sum(dim=1)
