"""PATN, the Pose-Attentional Transfer Network generator.

Zhu, Huang, Shi, Wang, Bai, "Progressive Pose Attention Transfer for Person Image Generation", CVPR 2019,
arXiv:1904.03349; official code tengteng95/Pose-Transfer (``models/model_variants.py``, ``models/networks.py``).

Input: ``source_image`` ``(B, 3, H, W)`` in ``[-1, 1]``, ``source_pose`` and ``target_pose`` ``(B, 18, H, W)``
heatmaps, with ``H`` and ``W`` multiples of ``2**n_downsampling`` (256x176 DeepFashion, 128x64 Market-1501).
Output: the generated target image ``(B, 3, H, W)`` in ``[-1, 1]`` (tanh).

Architecture (two streams, Sec. 3.1 of the paper):

- ``stream1_down`` encodes the image, ``stream2_down`` the two poses concatenated (36 channels), each with a
  reflection-padded 7x7 conv and ``n_downsampling`` stride-2 convs to ``ngf * 4`` channels at ``H/4 x W/4``.
- ``n_blocks`` PAT blocks: the image stream goes through a residual pair of 3x3 convs whose output is gated by
  ``sigmoid`` of the pose stream's pair of convs (``x1 = x1 + conv1(x1) * sigmoid(conv2(x2))``); the pose
  stream's next input is ``cat(conv2(x2), x1)``, so every block but the first reads ``2 * ngf * 4`` channels.
  The pose stream's last conv has no norm (its output is the attention logit).
- ``stream1_up`` decodes the image stream with transposed convs, a 7x7 conv and tanh.

Where each fact comes from:

- Layer order, widths, kernel sizes, which convs have a bias or a norm, the state-dict key names (mirrored here,
  so the official weights load with ``load_state_dict``): ``shared/reference/official/state_dict_shapes.json``
  (``patn/deepfashion``, ``patn/market1501``) and the official forward outputs in ``patn_public.pt``, which
  ``tests/pgpig/test_patn.py`` reproduces to 1e-4 from the official weights.
- Paper settings: both data sets use 9 PAT blocks (``model.att.0`` ... ``model.att.8`` in both key lists; the
  official ``define_G`` hard-codes ``n_blocks=9``); DeepFashion uses instance norm (no affine parameters, no
  running statistics, convs with bias) and Market-1501 batch norm (affine, running statistics, convs without
  bias), which is why the key lists differ. Official parameter counts: 41,358,019 (DeepFashion) and 41,365,763
  (Market-1501), buffers excluded; the test checks ours equal them exactly.
- Dropout 0.5 after the first conv of each PAT-block conv pair (``use_dropout=True`` in ``patn_public.pt``'s
  ``constructor``; the README's train commands do not pass ``--no_dropout``); it is why the second conv sits at
  index 6. ``dropout=0`` puts an ``Identity`` in that slot so the indices, and weight loading, stay the same.
- Initialisation as the official ``init_weights(init_type="normal")``: conv and transposed-conv weights
  ``N(0, 0.02)``, batch-norm weights ``N(1, 0.02)`` and biases 0; conv biases keep PyTorch's default.

Decisions: the forward takes the three tensors separately (the official one takes ``[image, cat(source pose,
target pose)]``) and concatenates the poses itself, source first as the official ``models/PATN.py`` does.
"""

from __future__ import annotations

import torch
from torch import nn

from pgpig.models import register
from pgpig.models.blocks import conv_pair, decoder_layers, encoder_layers, init_official_normal

__all__ = ["PAPER_SETTINGS", "PATBlock", "PATN"]

# The official training settings per data set (the README's ``train.py`` commands: ``--norm instance`` for
# DeepFashion, ``--norm batch`` for Market-1501; 9 blocks in both key lists of state_dict_shapes.json).
PAPER_SETTINGS: dict[str, dict[str, object]] = {
    "deepfashion": {"ngf": 64, "n_blocks": 9, "norm": "instance", "n_downsampling": 2, "dropout": 0.5},
    "market1501": {"ngf": 64, "n_blocks": 9, "norm": "batch", "n_downsampling": 2, "dropout": 0.5},
}


class PATBlock(nn.Module):
    """One Pose-Attentional Transfer block on ``dim``-channel features.

    ``x1`` ``(B, dim, h, w)`` image codes, ``x2`` ``(B, dim or 2*dim, h, w)`` pose codes (``2*dim`` after the
    first block, ``cat_input=True``) -> updated ``x1`` ``(B, dim, h, w)`` and ``x2`` ``(B, 2*dim, h, w)``.
    """

    def __init__(self, dim: int, norm: str, dropout: float, cat_input: bool) -> None:
        super().__init__()
        pose_dim = 2 * dim if cat_input else dim
        self.conv_block_stream1 = conv_pair(dim, dim, dim, norm, dropout, final_norm=True)
        self.conv_block_stream2 = conv_pair(pose_dim, pose_dim, dim, norm, dropout, final_norm=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention_logit = self.conv_block_stream2(x2)
        x1 = x1 + self.conv_block_stream1(x1) * torch.sigmoid(attention_logit)
        return x1, torch.cat((attention_logit, x1), dim=1)


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
        x2 = self.model["stream2_down"](torch.cat((source_pose, target_pose), dim=1))
        for block in self.model["att"]:
            x1, x2 = block(x1, x2)
        return self.model["stream1_up"](x1)

