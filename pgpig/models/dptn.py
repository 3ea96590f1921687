"""DPTN, the Dual-task Pose Transformer Network, and its training.

Zhang, Yang, Lai, Xie, "Exploring Dual-task Correlation for Pose Guided Person Image Generation", CVPR 2022,
arXiv:2203.02910. Facts read from the official code, PangzeCheung/Dual-task-Pose-Transformer-Network@59a759030ff4
(``models/networks.py``, ``models/PTM.py``, ``models/DPTN_model.py``, ``models/external_function.py``,
``options/*.py``, ``scripts/train_{fashion,market}.sh``). Its blocks, initialisation and discriminator are GFLA's,
shared in ``pgpig.models.gfla_blocks``.

``DPTN(source_image (B, 3, H, W), source_pose (B, 18, H, W), target_pose (B, 18, H, W))`` with ``H`` and ``W``
multiples of ``2**encoder_layer`` (8) returns ``(target image, source reconstruction)``, both ``(B, 3, H, W)`` in
``[-1, 1]``, in training mode, and ``(target image, None)`` in eval mode (``is_train`` overrides). A Siamese encoder
reads both branches, the Pose Transformer Module (``PoseTransformer``) carries the source texture to the target pose,
and a shared decoder renders both. ``DPTNObjective`` weighs L1, VGG content and style of both branches and a GAN
term on the target branch. Architecture, sources of each fact and the decisions taken: ``docs/models/dptn.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pgpig.errors import TrainError
from pgpig.losses import (
    GFLA_PERCEPTUAL_LAYERS,
    GFLA_STYLE_LAYERS,
    VGG19Features,
    adversarial_loss,
    l1_loss,
)
from pgpig.models import register
from pgpig.models.gfla_blocks import (
    LEAKY_SLOPE,
    ActivatedConv,
    DecoderBlock,
    Encoder,
    ResDiscriminator,
    activation_layer,
    conv,
    copy_aliases,
    init_orthogonal,
    two_convs,
    widths,
)
from pgpig.models.objective import Objective, StepBatch

__all__ = ["DPTN", "PAPER_SETTINGS", "DPTNObjective", "PoseTransformer", "generator_kwargs"]

# The official generator's arguments at the paper setting (DPTN_model.py and the option defaults; both data sets).
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    dataset: {"image_nc": 3, "pose_nc": 18, "ngf": 64, "img_f": 512, "encoder_layer": 3, "norm": "instance",
              "activation": "LeakyReLU", "use_spect": False, "use_coord": False, "output_nc": 3, "num_blocks": 3,
              "affine": True, "nhead": 2, "num_CABs": 2, "num_TTBs": 2}
    for dataset in ("deepfashion", "market1501")
}


# ---------------------------------------------------------------------------------------------------- blocks


class ResBlock(nn.Module):
    """``model(x) + shortcut(x)``: norm, act, 3x3 conv, norm, act, 3x3 conv, plus a 1x1 conv; ``(B, cin, h, w) ->
    (B, cout, h, w)``. DPTN's copy of GFLA's ``ResBlock`` also keeps its convs as attributes: ``conv1``, ``conv2``,
    ``bypass`` are the modules ``model.2``, ``model.5``, ``shortcut.0``, both names in the state dict."""

    def __init__(self, cin: int, cout: int, norm: str, activation: str, use_spect: bool) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, 1, 1, use_spect)
        self.conv2 = conv(cout, cout, 3, 1, 1, use_spect)
        self.bypass = conv(cin, cout, 1, 1, 0, use_spect)
        self.model = two_convs(cin, cout, self.conv1, self.conv2, norm, activation)
        self.shortcut = nn.Sequential(self.bypass)
        self.register_state_dict_post_hook(copy_aliases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shortcut(x)


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
    features and ``num_TTBs`` TTBs (``docs/models/dptn.md``)."""

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


# ---------------------------------------------------------------------------------------------------- generator


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
        if norm not in ("instance", "batch"):
            raise TrainError(f"dptn: unknown norm {norm!r}; choose instance or batch")
        activation_layer(activation)  # a TrainError for a name the official code does not build here
        self.layers = encoder_layer
        self.num_blocks = num_blocks
        self.batch_norm = norm == "batch"
        channels = widths(ngf, img_f, encoder_layer)
        dim = channels[-1]

        # the shared encoder En_c, attribute by attribute in the official order (hence its state-dict keys)
        encoder = Encoder(image_nc + 2 * pose_nc, ngf, img_f, encoder_layer, norm, activation, use_spect,
                          optimized_block0=True)
        self.block0 = encoder.block0
        for i in range(encoder_layer - 1):
            setattr(self, f"encoder{i}", getattr(encoder, f"encoder{i}"))
        for i in range(num_blocks):
            setattr(self, f"mblock{i}", ResBlock(dim, dim, norm, activation, use_spect))
        self.PTM = PoseTransformer(dim, nhead, num_CABs, num_TTBs, dim, affine, norm)
        self.source_encoder = Encoder(image_nc, ngf, img_f, encoder_layer, norm, activation, use_spect,
                                      optimized_block0=True)
        # the shared decoder: widths back down, the last block staying at ngf
        for i, out in enumerate(channels[-2::-1] + [ngf]):
            setattr(self, f"decoder{i}", DecoderBlock(dim, out, out, norm, activation, use_spect))
            dim = out
        self.outconv = ActivatedConv(ngf, output_nc, 3, activation, use_spect, tanh=True)
        self.apply(init_orthogonal)

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


# ---------------------------------------------------------------------------------------------------- training


def generator_kwargs(cfg: Any) -> dict[str, Any]:
    """The ``DPTN`` constructor arguments of a ``TrainConfig`` (``docs/models/dptn.md``, "Decisions")."""
    return {"ngf": cfg.ngf, "img_f": 8 * cfg.ngf, "num_blocks": cfg.n_blocks, "norm": cfg.norm,
            **(getattr(cfg, "generator_options", None) or {})}


class DPTNObjective(Objective):
    """DPTN's training (``docs/models/dptn.md``): ``t_s_ratio * L(target branch) + (1 - t_s_ratio) * L(source branch) +
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
        return {"d": ResDiscriminator(ndf=max(1, cfg.ngf // 2), img_f=2 * cfg.ngf, layers=cfg.d_blocks,
                                      optimized_block0=True)}

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
        content_layers = GFLA_PERCEPTUAL_LAYERS if cfg.lambda_perceptual else ()
        style_layers = GFLA_STYLE_LAYERS if cfg.lambda_style else ()
        fake_halves = real_halves = {}
        if self.vgg is not None:
            fake_halves = {name: f.chunk(2) for name, f in self.vgg(generated).items()}
            with torch.no_grad():
                real_halves = {name: r.chunk(2) for name, r in self.vgg(real).items()}
        terms = []
        for i, (g, r) in enumerate(zip(generated.chunk(2), real.chunk(2), strict=True)):
            term = {"l1": l1_loss(g, r)}
            if self.vgg is None:
                term["perceptual"] = term["style"] = torch.zeros((), device=generated.device)
            else:
                term["perceptual"], term["style"] = self.content_style(
                    {name: halves[i] for name, halves in fake_halves.items()},
                    {name: halves[i] for name, halves in real_halves.items()}, content_layers, style_layers)
            terms.append(term)
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


register("dptn", objective=DPTNObjective)(DPTN)
