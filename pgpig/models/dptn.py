"""DPTN, the Dual-task Pose Transformer Network, its discriminator and its training.

Zhang, Yang, Lai, Xie, "Exploring Dual-task Correlation for Pose Guided Person Image Generation", CVPR 2022,
arXiv:2203.02910; official code PangzeCheung/Dual-task-Pose-Transformer-Network (``models/networks.py`` for the
generator and ``ResDiscriminator``, ``models/PTM.py`` for the Pose Transformer Module, ``models/base_function.py``
for the blocks, norms, activations and initialisation, ``models/external_function.py`` for the losses,
``models/DPTN_model.py`` for the training, ``options/*.py``, ``data/*_dataset.py``, ``util/pose_utils.py`` and
``scripts/train_{fashion,market}.sh``; read for the facts below, file by file).

Input: ``source_image`` ``(B, 3, H, W)`` in ``[-1, 1]``, ``source_pose`` and ``target_pose`` ``(B, 18, H, W)``
Gaussian heatmaps, ``H`` and ``W`` multiples of ``2**encoder_layer`` = 8 (256x256 DeepFashion, 128x64 Market-1501).
Output of ``forward``: in training mode the pair ``(target image, source reconstruction)``, both ``(B, 3, H, W)``
tanh images in ``[-1, 1]``, in the official order; in eval mode ``(target image, None)``, as the official
``is_train=False`` path, which skips the source decoder (``is_train=True`` forces both, as the official test file
``shared/reference/official/dptn_public.pt`` was computed).

Architecture (``DPTNGenerator`` in ``models/networks.py``; ``m`` = ``min(2**k, img_f / ngf)``, widths ``ngf m``; every
activation is the one ``activation`` names, ``LeakyReLU`` with slope 0.1 at the paper setting, ``ReLU``/``SELU``
also accepted; every norm is ``norm``: ``InstanceNorm2d(affine=True)`` or ``BatchNorm2d(momentum=0.1)``):

- A Siamese pair of branches with shared weights: the self-reconstruction branch encodes ``cat(source, source
  pose, source pose)`` and the transformation branch ``cat(source, source pose, target pose)`` (``3 + 2 * 18 = 39``
  channels) with the same encoder: ``block0`` (4x4 stride-2 conv to ``ngf``, norm, act, 3x3 conv), then
  ``encoder_layer - 1`` blocks ``encoder{i}`` (norm, act, 4x4 stride-2 conv, norm, act, 3x3 conv), then
  ``num_blocks`` residual blocks ``mblock{i}`` (``model``: norm, act, 3x3 conv, norm, act, 3x3 conv, plus a 1x1
  ``shortcut``); every conv with bias. 256 channels at ``H/8 x W/8`` at the paper setting.
- ``source_encoder`` (En_s): the same encoder layout (``block0``, ``encoder{i}``, no residual blocks) on the source
  image alone (3 channels), with its own weights.
- ``PTM``, the Pose Transformer Module on the ``N = H W / 64`` positions as tokens of ``d = ngf m`` channels:
  ``num_CABs`` context augment blocks on the self-reconstruction features (self-attention, add, norm, feed-forward
  ``linear1`` d -> d, LeakyReLU 0.1 whatever ``activation`` is, ``linear2``, add, norm), then ``num_TTBs`` texture
  transfer blocks on the transformation features (self-attention, add, norm; attention with queries from the
  transformation features, keys from the CAB output and values from En_s's source features, add, norm;
  feed-forward, add, norm), then a final norm (``PTM.decoder.norm``). Attention is ``nn.MultiheadAttention``
  (``nhead`` 2, scaled dot product, no dropout); no positional encoding (the official forward passes none); the
  norms are ``InstanceNorm1d`` over the positions (``BatchNorm1d`` under ``norm="batch"``), affine per ``affine``.
- A shared decoder for both branches: ``encoder_layer`` blocks ``decoder{i}`` (``model``: norm, act, 3x3 conv, norm,
  act, 3x3 stride-2 transposed conv; ``shortcut``: 3x3 stride-2 transposed conv) to ``2 ngf``, ``ngf``, ``ngf``,
  then ``outconv`` (act, reflection pad 1, 3x3 conv to 3 channels, tanh). The target image is the decoder on the
  PTM's output, the source reconstruction the decoder on the self-reconstruction branch's features.

State-dict keys mirror the official ones, so official weights load with ``load_state_dict(strict=True)``: the
official ``ResBlock`` and ``Output`` also keep their convs as attributes (``mblock0.conv1`` is ``mblock0.model.2``,
``conv2`` is ``model.5``, ``bypass`` is ``shortcut.0``; ``outconv.conv1`` is ``outconv.model.2``), so both names are
in the state dict for one tensor, here as there. ``state_dict()`` returns such a second name as a copy (a
``safetensors`` file refuses two names for one CPU tensor); ``parameters()`` counts each tensor once. At the paper
setting the keys and shapes are ``shared/reference/official/state_dict_shapes.json`` (``dptn/deepfashion``), and
the official parameter count is 9,794,371 (the README's "9.79 million"; ``tests/pgpig/test_dptn.py`` derives it
from that file, aliases once, and checks ours).

Paper setting (``PAPER_SETTINGS``, the constructor's defaults): ``DPTN_model.py`` builds the generator with
``ngf=64, img_f=512, encoder_layer=3, activation='LeakyReLU', output_nc=3, num_blocks=3, affine=True`` and the
options ``--norm instance`` (``base_options.py`` default, neither script changes it), ``--use_spect_g`` off
(``set_defaults(use_spect_g=False)``), ``--use_coord`` off, ``--nhead 2 --num_CABs 2 --num_TTBs 2``; the same on
both data sets. Initialisation (``init_net``, ``--init_type orthogonal``): the PTM's matrices are Xavier-uniform
first (``PTM._reset_parameters``), then every conv, transposed conv and linear layer (the attention output
projections included, not the attention input projections) is orthogonal with gain 0.02 and zero bias; batch-norm
weights ``N(1, 0.02)``.

Discriminator (``ResDiscriminator``; ``define_D(opt, ndf=32, img_f=128, layers=opt.dis_layers,
use_spect=opt.use_spect_d)`` in ``DPTN_model.py``): on the image alone (3 channels, no condition), no norm, LeakyReLU
0.1, spectral norm on every conv (``torch.nn.utils.spectral_norm``, hence the keys ``weight_orig``, ``weight_u``,
``weight_v``): ``block0`` (3x3 conv, act, 4x4 stride-2 conv; shortcut 2x2 average pool then 1x1 conv), ``layers -
1`` blocks ``encoder{i}`` (act, 3x3 conv, act, 4x4 stride-2 conv; same shortcut) to widths ``ndf min(2**k, img_f /
ndf)`` = 64, 128, 128, then act and a 1x1 conv to one channel: a patch map of ``H / 2**layers x W / 2**layers``
logits. ``--dis_layers`` 4 on DeepFashion (default), 3 on Market-1501 (``train_market.sh``). Orthogonal
initialisation, gain 0.02, applied to ``weight_orig``.

Training (``DPTNModel`` in ``models/DPTN_model.py``, the scripts, ``options/train_options.py``; implemented by
``DPTNObjective``):

- Generator loss ``t (L_t) + (1 - t) (L_s) + lambda_g GAN(D(target image), real)``, with ``L_x = lambda_rec L1 +
  lambda_content content + lambda_style style`` of each branch's output against its ground truth (the target image
  for the target branch, the source image for the reconstruction), ``t = t_s_ratio``: 0.5, ``lambda_rec`` 5,
  ``lambda_g`` 2 on DeepFashion (defaults), ``--t_s_ratio 0.8 --lambda_rec 2 --lambda_g 5`` on Market-1501;
  ``lambda_content`` 0.5 and ``lambda_style`` 500 on both. Here ``lambda_l1``, ``lambda_perceptual``,
  ``lambda_style``, ``lambda_gan`` and ``t_s_ratio`` of the ``TrainConfig``.
- ``VGGLoss`` (``external_function.py``) is GFLA's: content = L1 of VGG-19 ``relu1_1 ... relu5_1`` features, style =
  L1 of Gram matrices ``F F^T / (C H W)`` at ``relu2_2, relu3_4, relu4_4, relu5_2`` (``GFLA_PERCEPTUAL_LAYERS``,
  ``GFLA_STYLE_LAYERS`` of ``pgpig.losses``). One difference, as for GFLA: the official VGG gets the ``[-1, 1]``
  images unnormalised; ``VGG19Features`` normalises them to ImageNet statistics first.
- Discriminator loss ``(GAN(D(target), real) + GAN(D(generated target), fake)) / 2``, no weight; ``--gan_mode
  lsgan`` (default); no history pool (``fake_pool`` is commented out). The source reconstruction is never judged.
- Adam for G at ``--lr`` 2e-4, betas ``(--beta1 0.5, 0.999)``; for D at ``lr * --ratio_g2d`` (0.1), with the *same*
  betas ``(0.5, 0.999)`` (GFLA's D uses ``(0, 0.999)``, DPTN's does not).
- Data: pose maps are 18 Gaussians ``exp(-d^2 / (2 sigma^2))`` of sigma 6 pixels around each visible joint, all
  zero for a missing one (``cords_to_map``), in the training frame, the joint truncated to an integer pixel
  (``int()``); ``pgpig.data.render_pose_maps`` draws the same maps (integer keypoints give identical ones).
  DeepFashion images are PATN's 256x176 crops (``generate_fashion_datasets.py`` cuts 40 columns per side) resized
  to 256x256, the keypoints scaled alike (``fashion_dataset.py``, ``load_size`` 256, ``old_size`` (256, 176)), so
  there the person is stretched by 256/176 in width; pgpig has no resize setting, and the recipe feeds the stored
  256x256 image (the same person unstretched, between white margins) at the same size. Market-1501 at 128x64. No
  flips. Batch 32. 200 epochs, each one pass over the training pairs (``__len__`` drops the last
  partial batch); lr constant for ``--niter`` 100 epochs, then ``1 - (epoch - 100) / 101`` in epoch 101 ... 200
  (``lr_policy lambda`` with ``iter_start`` 1).

Decisions:

- The two branches run as one batch of ``2B`` through the shared encoder and decoder (the same numbers as the
  official two calls: instance norm is per sample); under batch norm in training mode they run one after the
  other, so each branch is normalised by its own batch statistics, as there.
- ``forward(source_image, source_pose, target_pose, is_train=None)``: ``is_train`` defaults to ``self.training``.
- ``use_coord=True`` (CoordConv, which the official code prints an error for) and the ``PReLU`` activation (one
  parameter shared by the whole network there) are refused.
- ``DPTNObjective`` runs VGG-19 once on both branches' outputs and once on their ground truths, and takes the
  content and style terms of each branch from those features (the official ``VGGLoss`` runs it per branch); the
  VGG runs under the loop's autocast, the distances and Gram matrices in float32.
- pgpig's loop updates the generator, then the discriminator; the official ``optimize_parameters`` updates the
  discriminator first, then the generator against the updated discriminator. The losses are the same.
- From a ``TrainConfig``: ``ngf``, ``img_f = 8 ngf`` (512 at 64), ``num_blocks = n_blocks``, ``norm``; the
  discriminator's ``ndf = ngf / 2`` and ``img_f = 2 ngf`` (32 and 128 at 64) and ``layers = d_blocks``. ``dropout``
  does not apply (DPTN has none).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from pgpig.errors import TrainError
from pgpig.losses import GFLA_PERCEPTUAL_LAYERS, GFLA_STYLE_LAYERS, VGG19Features, adversarial_loss, gram_matrix
from pgpig.models import register
from pgpig.models.objective import Objective, StepBatch

__all__ = ["DPTN", "PAPER_SETTINGS", "DPTNDiscriminator", "DPTNObjective", "PoseTransformer", "generator_kwargs"]

# The official generator's arguments at the paper setting (DPTN_model.py and the option defaults; both data sets).
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    dataset: {"image_nc": 3, "pose_nc": 18, "ngf": 64, "img_f": 512, "encoder_layer": 3, "norm": "instance",
              "activation": "LeakyReLU", "use_spect": False, "use_coord": False, "output_nc": 3, "num_blocks": 3,
              "affine": True, "nhead": 2, "num_CABs": 2, "num_TTBs": 2}
    for dataset in ("deepfashion", "market1501")
}

LEAKY_SLOPE = 0.1
"""Negative slope of the official ``LeakyReLU`` (``get_nonlinearity_layer``), generator, PTM and discriminator."""
ORTHOGONAL_GAIN = 0.02
"""Gain of the official ``init_weights(init_type="orthogonal")``."""


# ---------------------------------------------------------------------------------------------------- layers


def _norm2d(norm: str) -> Callable[[int], nn.Module]:
    """The official ``get_norm_layer``: affine instance norm (no running statistics) or batch norm."""
    if norm == "instance":
        return lambda channels: nn.InstanceNorm2d(channels, affine=True)
    if norm == "batch":
        return lambda channels: nn.BatchNorm2d(channels, momentum=0.1, affine=True)
    raise TrainError(f"dptn: unknown norm {norm!r}; choose instance or batch")


def _activation(name: str) -> Callable[[], nn.Module]:
    """The official ``get_nonlinearity_layer`` (without PReLU, whose one shared parameter this layout lacks)."""
    makers = {"ReLU": nn.ReLU, "SELU": nn.SELU, "LeakyReLU": lambda: nn.LeakyReLU(LEAKY_SLOPE)}
    if name not in makers:
        raise TrainError(f"dptn: unsupported activation {name!r}; choose one of {', '.join(makers)}")
    return makers[name]


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, use_spect: bool = False,
          transposed: bool = False) -> nn.Module:
    """A conv (or a stride-2 transposed conv with ``output_padding`` 1) with bias, spectrally normalised on request."""
    if transposed:
        conv = nn.ConvTranspose2d(cin, cout, kernel, stride=stride, padding=padding, output_padding=1)
    else:
        conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)
    return spectral_norm(conv) if use_spect else conv


class EncoderBlock(nn.Module):
    """A stride-2 encoder step ``(B, cin, H, W) -> (B, cout, H/2, W/2)``: ``first`` (the official
    ``EncoderBlockOptimized``) 4x4/2 conv, norm, act, 3x3 conv; else (``EncoderBlock``) norm, act, 4x4/2 conv, norm,
    act, 3x3 conv."""

    def __init__(self, cin: int, cout: int, norm: str, activation: str, use_spect: bool, first: bool) -> None:
        super().__init__()
        make_norm, act = _norm2d(norm), _activation(activation)
        down = _conv(cin, cout, 4, 2, 1, use_spect)
        fine = _conv(cout, cout, 3, 1, 1, use_spect)
        layers = [down, make_norm(cout), act(), fine] if first else \
            [make_norm(cin), act(), down, make_norm(cout), act(), fine]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ResBlock(nn.Module):
    """``model(x) + shortcut(x)``: norm, act, 3x3 conv, norm, act, 3x3 conv, plus a 1x1 conv; ``(B, cin, h, w) ->
    (B, cout, h, w)``. ``conv1``, ``conv2``, ``bypass`` are the same modules as ``model.2``, ``model.5``,
    ``shortcut.0`` (the official attributes, hence state-dict keys)."""

    def __init__(self, cin: int, cout: int, norm: str, activation: str, use_spect: bool) -> None:
        super().__init__()
        make_norm, act = _norm2d(norm), _activation(activation)
        self.conv1 = _conv(cin, cout, 3, 1, 1, use_spect)
        self.conv2 = _conv(cout, cout, 3, 1, 1, use_spect)
        self.bypass = _conv(cin, cout, 1, 1, 0, use_spect)
        self.model = nn.Sequential(make_norm(cin), act(), self.conv1, make_norm(cout), act(), self.conv2)
        self.shortcut = nn.Sequential(self.bypass)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shortcut(x)


class DecoderBlock(nn.Module):
    """The official ``ResBlockDecoder``, ``(B, cin, h, w) -> (B, cout, 2h, 2w)``: norm, act, 3x3 conv, norm, act, 3x3
    stride-2 transposed conv, plus a 3x3 stride-2 transposed-conv shortcut."""

    def __init__(self, cin: int, cout: int, norm: str, activation: str, use_spect: bool) -> None:
        super().__init__()
        make_norm, act = _norm2d(norm), _activation(activation)
        self.model = nn.Sequential(make_norm(cin), act(), _conv(cin, cout, 3, 1, 1, use_spect), make_norm(cout), act(),
                                   _conv(cout, cout, 3, 2, 1, use_spect, transposed=True))
        self.shortcut = nn.Sequential(_conv(cin, cout, 3, 2, 1, use_spect, transposed=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shortcut(x)


class OutputBlock(nn.Module):
    """The official ``Output`` without norm: act, reflection pad 1, 3x3 conv, tanh; ``conv1`` is ``model.2``."""

    def __init__(self, cin: int, cout: int, activation: str, use_spect: bool) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, 1, 0, use_spect)
        self.model = nn.Sequential(_activation(activation)(), nn.ReflectionPad2d(1), self.conv1, nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Encoder(nn.Module):
    """``block0`` and ``encoder0 ... encoder{layers-2}``: ``(B, cin, H, W) -> (B, ngf m, H / 2**layers, W /
    2**layers)`` (the official ``SourceEncoder``, and the first part of the generator's own encoder)."""

    def __init__(self, cin: int, ngf: int, img_f: int, layers: int, norm: str, activation: str,
                 use_spect: bool) -> None:
        super().__init__()
        self.layers = layers
        self.block0 = EncoderBlock(cin, ngf, norm, activation, use_spect, first=True)
        widths = _widths(ngf, img_f, layers)
        for i in range(layers - 1):
            setattr(self, f"encoder{i}", EncoderBlock(widths[i], widths[i + 1], norm, activation, use_spect,
                                                      first=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block0(x)
        for i in range(self.layers - 1):
            x = getattr(self, f"encoder{i}")(x)
        return x


def _widths(ngf: int, img_f: int, layers: int) -> list[int]:
    """The encoder's output widths, ``ngf * min(2**i, img_f // ngf)`` for ``i < layers`` (the official ``mult``)."""
    return [ngf * min(2**i, img_f // ngf) for i in range(layers)]


# ---------------------------------------------------------------------------------------------------- PTM


def _norm1d(norm: str, channels: int, affine: bool) -> nn.Module:
    """The PTM's norm over token positions: batch norm under ``norm="batch"``, instance norm otherwise."""
    if norm == "batch":
        return nn.BatchNorm1d(channels, affine=affine)
    return nn.InstanceNorm1d(channels, affine=affine)


def _normalise(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1-d norm on tokens ``(B, N, C)``: channels second for the norm, back after."""
    return norm(x.transpose(1, 2)).transpose(1, 2)


class ContextAugmentBlock(nn.Module):
    """CAB: ``x = norm1(x + SelfAttention(x))``, ``x = norm2(x + linear2(LeakyReLU(linear1(x))))`` on ``(B, N, C)``."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, affine: bool, norm: str) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = _norm1d(norm, d_model, affine)
        self.norm2 = _norm1d(norm, d_model, affine)
        self.activation = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _normalise(self.norm1, x + self.self_attn(x, x, x, need_weights=False)[0])
        return _normalise(self.norm2, x + self.linear2(self.activation(self.linear1(x))))


class TextureTransferBlock(nn.Module):
    """TTB on tokens ``(B, N, C)``: self-attention on ``x``; attention with queries ``x``, keys ``memory`` (the CABs'
    output), values ``value`` (the source image's features); feed-forward; each added and normalised."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, affine: bool, norm: str) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = _norm1d(norm, d_model, affine)
        self.norm2 = _norm1d(norm, d_model, affine)
        self.norm3 = _norm1d(norm, d_model, affine)
        self.activation = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        x = _normalise(self.norm1, x + self.self_attn(x, x, x, need_weights=False)[0])
        x = _normalise(self.norm2, x + self.multihead_attn(x, memory, value, need_weights=False)[0])
        return _normalise(self.norm3, x + self.linear2(self.activation(self.linear1(x))))


class _Blocks(nn.Module):
    """A list of blocks as ``layers`` and an optional final ``norm`` (the official ``CABs`` and ``TTBs``)."""

    def __init__(self, blocks: list[nn.Module], norm: nn.Module | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(blocks)
        self.norm = norm


class PoseTransformer(nn.Module):
    """The PTM: ``forward(source_source, source_target, source)``, three ``(B, d_model, h, w)`` feature maps ->
    ``(B, d_model, h, w)``, the transformation branch's features after ``num_CABs`` CABs on the self-reconstruction
    features and ``num_TTBs`` TTBs (module docstring)."""

    def __init__(self, d_model: int, nhead: int, num_CABs: int, num_TTBs: int, dim_feedforward: int, affine: bool,
                 norm: str) -> None:
        super().__init__()
        if d_model % nhead:
            raise TrainError(f"dptn: the PTM's width {d_model} does not split into nhead={nhead} heads")
        self.encoder = _Blocks([ContextAugmentBlock(d_model, nhead, dim_feedforward, affine, norm)
                                for _ in range(num_CABs)], None)
        self.decoder = _Blocks([TextureTransferBlock(d_model, nhead, dim_feedforward, affine, norm)
                                for _ in range(num_TTBs)], _norm1d(norm, d_model, affine))
        for p in self.parameters():  # the official _reset_parameters, before the network-wide initialisation
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, source_source: torch.Tensor, source_target: torch.Tensor,
                source: torch.Tensor) -> torch.Tensor:
        b, c, h, w = source_target.shape

        def tokens(x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, h w, C)
            return x.flatten(2).transpose(1, 2)

        memory = tokens(source_source)
        for block in self.encoder.layers:
            memory = block(memory)
        x, value = tokens(source_target), tokens(source)
        for block in self.decoder.layers:
            x = block(x, memory, value)
        return self.decoder.norm(x.transpose(1, 2)).reshape(b, c, h, w)


# ------------------------------------------------------------------------------------------ initialisation, state dict


def _init_orthogonal(module: nn.Module) -> None:
    """The official ``init_weights(init_type="orthogonal", gain=0.02)`` for ``Module.apply``: conv, transposed-conv
    and linear weights (``weight_orig`` under spectral norm) orthogonal with gain 0.02 and biases 0; batch-norm (2-d)
    weights ``N(1, 0.02)`` and biases 0; anything else keeps its initialisation."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        weight = module.weight_orig if hasattr(module, "weight_orig") else module.weight
        with torch.no_grad():
            nn.init.orthogonal_(weight, gain=ORTHOGONAL_GAIN)
            if module.bias is not None:
                module.bias.zero_()
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _copy_aliases(module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str,
                  local_metadata: dict) -> None:
    """State-dict hook: a second name of the same tensor (``mblock0.conv1.weight`` / ``mblock0.model.2.weight``) gets a
    copy, which ``safetensors`` can write (it refuses two names sharing one CPU tensor); loading either is the same."""
    seen: set[tuple[int, int]] = set()
    for key, value in state_dict.items():
        if isinstance(value, nn.Parameter) or not key.startswith(prefix):
            continue  # keep_vars=True asks for the variables themselves
        where = (value.untyped_storage().data_ptr(), value.storage_offset())
        if where in seen:
            state_dict[key] = value.clone()
        seen.add(where)


def generator_kwargs(cfg: Any) -> dict[str, Any]:
    """The ``DPTN`` constructor arguments of a ``TrainConfig`` (module docstring, "Decisions")."""
    return {"ngf": cfg.ngf, "img_f": 8 * cfg.ngf, "num_blocks": cfg.n_blocks, "norm": cfg.norm,
            **(getattr(cfg, "generator_options", None) or {})}


# ---------------------------------------------------------------------------------------------------- discriminator


class DiscriminatorBlock(nn.Module):
    """The official ``ResBlockEncoderOptimized`` (``first``: 3x3 conv, act, 4x4/2 conv) or ``ResBlockEncoder`` (act,
    3x3 conv, act, 4x4/2 conv), no norm, plus a shortcut of 2x2 average pooling and a 1x1 conv:
    ``(B, cin, h, w) -> (B, cout, h/2, w/2)``."""

    def __init__(self, cin: int, cout: int, hidden: int, activation: str, use_spect: bool, first: bool) -> None:
        super().__init__()
        act = _activation(activation)
        conv1 = _conv(cin, hidden, 3, 1, 1, use_spect)
        conv2 = _conv(hidden, cout, 4, 2, 1, use_spect)
        self.model = nn.Sequential(conv1, act(), conv2) if first else nn.Sequential(act(), conv1, act(), conv2)
        self.shortcut = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2), _conv(cin, cout, 1, 1, 0, use_spect))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shortcut(x)


class DPTNDiscriminator(nn.Module):
    """The official ``ResDiscriminator`` as DPTN builds it: ``forward(image (B, input_nc, H, W))`` -> logits ``(B, 1,
    H / 2**layers, W / 2**layers)`` (module docstring). Defaults: DeepFashion's (``ndf=32, img_f=128, layers=4``)."""

    def __init__(self, input_nc: int = 3, ndf: int = 32, img_f: int = 128, layers: int = 4,
                 activation: str = "LeakyReLU", use_spect: bool = True) -> None:
        super().__init__()
        if layers < 1 or img_f < ndf:
            raise TrainError(f"dptn discriminator needs layers >= 1 and img_f >= ndf, got {layers}, {img_f}, {ndf}")
        self.layers = layers
        self.block0 = DiscriminatorBlock(input_nc, ndf, ndf, activation, use_spect, first=True)
        widths = [ndf * min(2**i, img_f // ndf) for i in range(layers)]
        for i in range(layers - 1):
            setattr(self, f"encoder{i}", DiscriminatorBlock(widths[i], widths[i + 1], widths[i], activation,
                                                            use_spect, first=False))
        self.nonlinearity = _activation(activation)()
        self.conv = _conv(widths[-1], 1, 1, use_spect=use_spect)
        self.apply(_init_orthogonal)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.block0(image)
        for i in range(self.layers - 1):
            x = getattr(self, f"encoder{i}")(x)
        return self.conv(self.nonlinearity(x))


# ---------------------------------------------------------------------------------------------------- training


class DPTNObjective(Objective):
    """DPTN's training (module docstring): ``t_s_ratio * L(target branch) + (1 - t_s_ratio) * L(source branch) +
    lambda_gan * GAN``, ``L = lambda_l1 * L1 + lambda_perceptual * content + lambda_style * style``; the
    discriminator ``(real + fake) / 2`` on target images alone."""

    vgg: VGG19Features | None = None
    """VGG-19 up to the deepest content or style layer; ``None`` when both weights are 0."""

    def __init__(self, cfg: Any, device: torch.device):
        super().__init__(cfg, device)
        if not 0.0 <= cfg.t_s_ratio <= 1.0:
            raise TrainError(f"config field 't_s_ratio' must lie in [0, 1], got {cfg.t_s_ratio}")

    @classmethod
    def build_generator(cls, cfg: Any, size: tuple[int, int]) -> nn.Module:
        from pgpig import models

        model = models.create(cfg.model, **generator_kwargs(cfg))
        if size[0] % 2**model.layers or size[1] % 2**model.layers:
            raise TrainError(f"dptn needs image sides that are multiples of {2**model.layers}, got {size[0]}x"
                             f"{size[1]} (256x256 DeepFashion, 128x64 Market-1501; check crop_margin)")
        return model

    def build_discriminators(self, size: tuple[int, int]) -> dict[str, nn.Module]:
        cfg = self.cfg
        if not cfg.use_gan:
            return {}
        return {"d": DPTNDiscriminator(ndf=max(1, cfg.ngf // 2), img_f=2 * cfg.ngf, layers=cfg.d_blocks)}

    def build_losses(self) -> None:
        cfg = self.cfg
        layers = (GFLA_PERCEPTUAL_LAYERS if cfg.lambda_perceptual else ()) + \
            (GFLA_STYLE_LAYERS if cfg.lambda_style else ())
        if layers:
            self.vgg = VGG19Features(layers, cfg.vgg_weights, allow_random=cfg.allow_random_vgg).to(self.device)

    def branch_losses(self, generated: torch.Tensor, real: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """``[{"l1", "perceptual", "style"}, ...]`` of each of the two halves of a batch concatenation of branch
        outputs ``generated`` against ``real``: one VGG-19 pass over each batch (under the caller's autocast), the
        distances in float32."""
        cfg = self.cfg
        device = generated.device.type
        fake_features = real_features = {}
        if self.vgg is not None:
            fake_features = self.vgg(generated)
            with torch.no_grad():
                real_features = self.vgg(real)
        with torch.autocast(device_type=device, enabled=False):
            terms = [{"l1": F.l1_loss(g.float(), r.float()), "perceptual": torch.zeros((), device=generated.device),
                      "style": torch.zeros((), device=generated.device)}
                     for g, r in zip(generated.chunk(2), real.chunk(2), strict=True)]
            for name in GFLA_PERCEPTUAL_LAYERS if cfg.lambda_perceptual else ():
                pairs = zip(fake_features[name].chunk(2), real_features[name].chunk(2), strict=True)
                for term, (f, r) in zip(terms, pairs, strict=True):
                    term["perceptual"] = term["perceptual"] + F.l1_loss(f.float(), r.float())
            for name in GFLA_STYLE_LAYERS if cfg.lambda_style else ():
                pairs = zip(fake_features[name].chunk(2), real_features[name].chunk(2), strict=True)
                for term, (f, r) in zip(terms, pairs, strict=True):
                    term["style"] = term["style"] + F.l1_loss(gram_matrix(f), gram_matrix(r))
        return terms

    def generator_loss(self, generator, discriminators, batch: StepBatch):
        cfg = self.cfg
        target, source = generator(batch.source, batch.source_pose, batch.target_pose)
        terms_t, terms_s = self.branch_losses(torch.cat((target, source)), torch.cat((batch.target, batch.source)))

        def weighted(terms: dict[str, torch.Tensor]) -> torch.Tensor:
            return (cfg.lambda_l1 * terms["l1"] + cfg.lambda_perceptual * terms["perceptual"]
                    + cfg.lambda_style * terms["style"])

        loss = cfg.t_s_ratio * weighted(terms_t) + (1 - cfg.t_s_ratio) * weighted(terms_s)
        scalars = {**terms_t, **{f"{name}_source": value for name, value in terms_s.items()}}
        if discriminators:
            loss_gan = adversarial_loss(discriminators["d"](target), True, cfg.gan_kind, for_discriminator=False)
            loss = loss + cfg.lambda_gan * loss_gan
            scalars["g_gan"] = loss_gan
        return target, loss, scalars

    def discriminator_loss(self, discriminators, pools, batch, generated):
        kind = self.cfg.gan_kind
        d = discriminators["d"]
        (fake,) = pools["d"].query(generated)
        return 0.5 * (adversarial_loss(d(batch.target), True, kind) + adversarial_loss(d(fake), False, kind))


# ---------------------------------------------------------------------------------------------------- generator


@register("dptn", objective=DPTNObjective)
class DPTN(nn.Module):
    """The DPTN generator: ``forward(source_image, source_pose, target_pose) -> (target image, source
    reconstruction)`` in training mode, ``(target image, None)`` in eval mode (module docstring).

    The constructor takes the official ``define_G`` arguments by their official names; the defaults are the paper
    setting (``PAPER_SETTINGS``)."""

    def __init__(
        self,
        image_nc: int = 3,
        pose_nc: int = 18,
        ngf: int = 64,
        img_f: int = 512,
        encoder_layer: int = 3,
        norm: str = "instance",
        activation: str = "LeakyReLU",
        use_spect: bool = False,
        use_coord: bool = False,
        output_nc: int = 3,
        num_blocks: int = 3,
        affine: bool = True,
        nhead: int = 2,
        num_CABs: int = 2,  # noqa: N803 (the official argument name)
        num_TTBs: int = 2,  # noqa: N803
    ) -> None:
        super().__init__()
        if use_coord:
            raise TrainError("dptn: use_coord (CoordConv) is not supported; the official code flags it as an error")
        if encoder_layer < 1 or ngf < 1 or img_f < ngf:
            raise TrainError(f"dptn needs encoder_layer >= 1 and img_f >= ngf >= 1, got {encoder_layer}, {img_f}, "
                             f"{ngf}")
        _norm2d(norm)  # both raise a TrainError for a name the official code does not build here
        _activation(activation)
        self.layers = encoder_layer
        self.num_blocks = num_blocks
        self.batch_norm = norm == "batch"
        widths = _widths(ngf, img_f, encoder_layer)
        dim = widths[-1]

        # the shared encoder En_c, attribute by attribute in the official order (hence its state-dict keys)
        encoder = Encoder(image_nc + 2 * pose_nc, ngf, img_f, encoder_layer, norm, activation, use_spect)
        self.block0 = encoder.block0
        for i in range(encoder_layer - 1):
            setattr(self, f"encoder{i}", getattr(encoder, f"encoder{i}"))
        for i in range(num_blocks):
            setattr(self, f"mblock{i}", ResBlock(dim, dim, norm, activation, use_spect))
        self.PTM = PoseTransformer(dim, nhead, num_CABs, num_TTBs, dim, affine, norm)
        self.source_encoder = Encoder(image_nc, ngf, img_f, encoder_layer, norm, activation, use_spect)
        # the shared decoder: widths back down, the last block staying at ngf
        for i, out in enumerate(widths[-2::-1] + [ngf]):
            setattr(self, f"decoder{i}", DecoderBlock(dim, out, norm, activation, use_spect))
            dim = out
        self.outconv = OutputBlock(ngf, output_nc, activation, use_spect)

        self.apply(_init_orthogonal)
        self.register_state_dict_post_hook(_copy_aliases)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 39, H, W) -> (B, dim, H/8, W/8)``: En_c and the residual blocks."""
        x = self.block0(x)
        for i in range(self.layers - 1):
            x = getattr(self, f"encoder{i}")(x)
        for i in range(self.num_blocks):
            x = getattr(self, f"mblock{i}")(x)
        return x

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, dim, H/8, W/8) -> (B, 3, H, W)``: the decoder and the output layer."""
        for i in range(self.layers):
            x = getattr(self, f"decoder{i}")(x)
        return self.outconv(x)

    def _both(self, fn: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor,
              b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fn(a), fn(b))`` for the two branches: one batch, except where batch statistics must stay per branch."""
        if self.batch_norm and self.training:
            return fn(a), fn(b)
        return fn(torch.cat((a, b))).chunk(2)

    def forward(self, source_image: torch.Tensor, source_pose: torch.Tensor, target_pose: torch.Tensor,
                is_train: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, 3, H, W)``, ``(B, 18, H, W)``, ``(B, 18, H, W)`` -> ``(target image, source reconstruction)``, each
        ``(B, 3, H, W)`` in ``[-1, 1]``; the reconstruction is ``None`` unless ``is_train`` (default: training
        mode)."""
        is_train = self.training if is_train is None else is_train
        h, w = source_image.shape[-2:]
        if h % 2**self.layers or w % 2**self.layers:
            raise TrainError(f"dptn needs image sides that are multiples of {2**self.layers}, got {h}x{w}")
        features_ss, features_st = self._both(self._encode, torch.cat((source_image, source_pose, source_pose), 1),
                                              torch.cat((source_image, source_pose, target_pose), 1))
        features_st = self.PTM(features_ss, features_st, self.source_encoder(source_image))
        if not is_train:
            return self._decode(features_st), None
        source_rec, target = self._both(self._decode, features_ss, features_st)
        return target, source_rec
