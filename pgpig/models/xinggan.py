"""XingGAN, the crossing-branch generator.

Tang, Bai, Zhang, Torr, Sebe, "XingGAN for Person Image Generation", ECCV 2020, arXiv:2007.09278; official code
Ha0Tang/XingGAN (``models/model_variants.py`` for the generator, ``models/networks.py`` for ``define_G`` and the
initialisation, ``models/XingGAN.py`` and the ``train_*.sh`` scripts for the training).

Input: ``source_image`` ``(B, 3, H, W)`` in ``[-1, 1]``, ``source_pose`` and ``target_pose`` ``(B, 18, H, W)``
heatmaps, with ``H`` and ``W`` multiples of 4 (256x176 DeepFashion, 128x64 Market-1501).
Output: the generated target image ``(B, 3, H, W)``, a convex combination of tanh images and the source, so in
``[-1, 1]``.

Architecture (Sec. 3 of the paper, as the official code builds it):

- Two branches, each with the ResNet encoder stem to ``dim = ngf * 4`` channels at ``H/4 x W/4``:
  ``stream1_down`` encodes the appearance (the source image), ``stream2_down`` the shape (both poses concatenated,
  source first, 36 channels).
- ``n_blocks`` Xing blocks. Each runs the appearance code through a residual-style pair of 3x3 convs (with a final
  norm) and the shape code through a pair without final norm (``2 * dim`` input channels after the first block),
  exactly the two conv stacks of PATN's PAT block. Then the two crossing updates, which share one set of 1x1
  ``query_conv`` (``dim -> dim/8``), ``key_conv`` (``dim -> dim/8``), ``value_conv`` (``dim -> dim``) and one
  scalar ``gamma`` (initialised to 0, so a fresh block starts as its convs alone):

  - SA (shape-guided appearance): ``a' = a + gamma * softmax(q(a)^T k(s)) v(a)``: appearance positions attend
    over shape positions, and gather appearance values there;
  - AS (appearance-guided shape): ``s' = s + gamma * softmax(q(s)^T k(a)) v(s)``, and the shape code passed on is
    ``cat(a', s')`` (``2 * dim`` channels, appearance first).

  The softmax is over the key positions, with no ``1/sqrt(d)`` scale (the official ``bmm`` has none). Note that
  the official block adds ``gamma * attention`` to the conv outputs, not to the block's input: there is no
  identity skip around a Xing block (a PAT block has one).
- Decoders: ``stream1_up`` turns the last appearance code into 10 intermediate tanh images (30 channels);
  ``x2_con`` (a 1x1 transposed conv ``2 * dim -> dim``), ``x2_norm``, ReLU and ``stream2_up`` turn the last shape
  code into 10 more.
- Co-attention fusion: ``cat(a, s)`` (``3 * dim`` channels) goes through ``atte_con`` and ``atte_con1`` (stride-2
  transposed convs to ``dim`` and ``dim / 2``, each with norm and ReLU) and ``atte_con2`` (1x1 transposed conv to
  21 channels, no norm, with a bias only under instance norm), a softmax over those 21 channels, and the output
  is ``sum_k softmax_k * image_k`` over the 20 intermediate images and the source image itself.

Where each fact comes from:

- Layer order, widths, kernel sizes, biases and norms, the shared query/key/value convs and ``gamma``, the fusion:
  the official ``XingBlock`` and ``XingModel`` in ``models/model_variants.py``. The official code writes the
  attention widths as literals (256, 32, 512, 768, 128) and the image counts as 30 and 21; those are ``dim``,
  ``dim / 8``, ``2 * dim``, ``3 * dim``, ``dim / 2`` at ``ngf = 64`` and 10 images of 3 channels per branch, which
  is how they are written here so that ``ngf`` can be reduced (tests).
- State-dict key names (mirrored, so official weights load with ``load_state_dict``; the official ``XingNetwork``
  wraps ``XingModel`` as ``self.model``, hence the ``model.`` prefix) and shapes:
  ``shared/reference/official/state_dict_shapes.json`` (``xinggan/deepfashion``, ``xinggan/market1501``).
  Official parameter counts (buffers excluded): 44,844,634 (DeepFashion, instance norm) and 44,853,189
  (Market-1501, batch norm); ``tests/pgpig/test_xinggan.py`` checks ours equal them and every key and shape.
- Paper settings: 9 Xing blocks on both data sets (``define_G`` in ``models/networks.py`` passes ``n_blocks=9``
  whatever the options say; ``model.att.0`` ... ``model.att.8`` in both key lists); ``--norm instance`` for
  DeepFashion and ``--norm batch`` for Market-1501 (``train_deepfashion.sh``, ``train_market.sh``); dropout 0.5
  after the first conv of each conv pair (``use_dropout = not opt.no_dropout`` in ``models/XingGAN.py``, and
  neither script passes ``--no_dropout``), which puts the second conv at index 6; ``G_n_downsampling`` 2 (the
  option's default; the fusion's two stride-2 transposed convs assume it).
- Initialisation: ``init_weights(init_type="normal")`` of ``models/networks.py``, as PATN's
  (``blocks.init_official_normal``); ``gamma`` stays 0.
- Training: the official ``models/XingGAN.py`` is PATN's ``models/PATN.py`` with the generator swapped (same
  ``ResnetDiscriminator`` pair on ``(image, source image)`` and ``(image, target pose)``, same L1 + VGG-19
  ``relu1_2`` perceptual + GAN losses, history pools and Adam), and ``options/*.py``, ``train.py``,
  ``data/keypoint.py`` (4,000-pair epochs) and ``losses/L1_plus_perceptualLoss.py`` differ from PATN's only in
  PyTorch-version details, so it registers with the default ``PairGANObjective``. What differs is in the train
  scripts, hence in the recipes ``workflows/*/xinggan.yaml``: ``--lambda_A 50`` on both data sets (PATN 1 and
  10), ``--lambda_B`` 1 (DeepFashion) and 50 (Market-1501), batch 32 on DeepFashion (PATN 7, spread over 4 GPUs
  there), and DeepFashion's schedule ``--niter 200 --niter_decay 100`` (PATN 500 + 200).

Decisions: the forward takes the three tensors separately (the official one takes ``[image, cat(source pose,
target pose)]``). The two crossing attentions of a block run as one batched ``scaled_dot_product_attention`` call
(the convs are shared, so stacking appearance and shape on the batch axis computes both at once); where PyTorch has
a fused kernel for it (CUDA) that avoids storing the official ``(B, N, N)`` attention matrices (``N = H W / 16``:
2,816 positions at 256x176, 2 GB per block at batch 32 in float32). On the CPU only the math path takes keys
narrower than values, so a DeepFashion step at batch 32 needs more than 20 GB there. ``tests/pgpig/test_xinggan.py``
checks the function against the plain ``bmm`` formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgpig.errors import TrainError
from pgpig.models import register
from pgpig.models.blocks import (
    conv_pair,
    decoder_layers,
    encoder_layers,
    init_official_normal,
    norm_layer,
    norm_uses_bias,
)

__all__ = ["IMAGES_PER_BRANCH", "PAPER_SETTINGS", "XingBlock", "XingGAN", "cross_attention"]

# The official training settings per data set (train_deepfashion.sh: --norm instance; train_market.sh: --norm
# batch; define_G hard-codes 9 blocks, and both key lists of state_dict_shapes.json hold model.att.0..8).
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
    unscaled: ``query``, ``key`` ``(B, C', h, w)``, ``value`` ``(B, C, h, w)`` -> ``(B, C, h, w)``."""
    b, c, h, w = value.shape

    def positions(x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, 1, N, C): one head
        return x.flatten(2).transpose(1, 2).unsqueeze(1)

    out = F.scaled_dot_product_attention(positions(query), positions(key), positions(value), scale=1.0)
    return out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)


class XingBlock(nn.Module):
    """One Xing block (an SA and an AS update) on ``dim``-channel codes.

    ``x1`` ``(B, dim, h, w)`` appearance codes, ``x2`` ``(B, dim or 2*dim, h, w)`` shape codes (``2*dim`` after the
    first block, ``cat_input=True``) -> updated ``x1`` ``(B, dim, h, w)`` and ``x2`` ``(B, 2*dim, h, w)``.
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


@register("xinggan")
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
