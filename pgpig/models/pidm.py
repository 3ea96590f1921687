"""PIDM's denoising network: a noise-predicting UNet on ``cat(x_t, target_pose)``, conditioned on the source image
through a texture encoder whose multi-scale features enter the UNet by cross-attention.

Bhunia, Khan, Cholakkal, Anwer, Laaksonen, Shah, Khan, "Person Image Synthesis via Denoising Diffusion Model",
CVPR 2023, arXiv:2211.12500. Facts read from the official code ankanbhunia/PIDM@e4f1d880772 (``config/diffconfig.py``
``get_model_conf``, ``models/unet_autoenc.py``, ``models/unet.py``, ``models/blocks.py``, ``models/nn.py``,
``data/fashion_data.py``, ``data/prepare_data.py``, ``train.py``, ``diffusion.py``); the specification is
``docs/models/pidm.md``.

``PIDMUNet.forward(x_t (B, 3, H, W), t (B,), source_image (B, 3, H, W), target_pose (B, P, H, W))`` -> ``(B, 6, H,
W)``: the predicted noise (channels 0-2) and the learned-variance interpolation (3-5). ``H`` and ``W`` are multiples
of ``2 ** (len(channel_mult) - 1)`` (32 at the paper setting). State-dict keys and shapes are the official model's, so
its checkpoints' ``model``/``ema`` dicts load with ``load_state_dict``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pgpig.diffusion import Diffusion, Guidance, ddim_sample, ddpm_sample, draw_keep_masks, linear_betas
from pgpig.errors import TrainError
from pgpig.models import create, register
from pgpig.models.objective import Objective, StepBatch

__all__ = ["OFFICIAL_PAPER_CONFIG", "PAPER_SETTINGS", "PIDM", "CrossAttention", "DiffusionObjective", "PIDMUNet",
           "ResBlock", "Sampling", "SourceEncoder", "UnusedWeights", "pair_generator", "timestep_embedding"]

# get_model_conf(): model_channels 128, channel_mult (1, 1, 2, 2, 4, 4), 2 res blocks a level, embed 512, dropout 0.1,
# attention at resolutions (32, 16, 8) of image_size 256, i.e. at levels 3, 4 and 5; in 3 + 20, out 3 * 2.
PAPER_SETTINGS: dict[str, object] = {
    "ngf": 128, "channel_mult": (1, 1, 2, 2, 4, 4), "num_res_blocks": 2, "attention_levels": (3, 4, 5),
    "embed_channels": 512, "dropout": 0.1, "image_channels": 3, "pose_channels": 20, "out_channels": 6,
}


OFFICIAL_PAPER_CONFIG: dict[str, object] = {
    "model_channels": 128, "channel_mult": [1, 1, 2, 2, 4, 4], "num_res_blocks": 2,
    "attention_resolutions": [32, 16, 8], "image_size": 256, "embed_channels": 512, "dropout": 0.1,
    "in_channels": 23, "out_channels": 6}
"""``PAPER_SETTINGS`` by the official ``BeatGANsAutoencConfig`` names (``pgpig import-official --constructor``)."""


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the timesteps ``t (B,)`` -> ``(B, dim)``: ``cos`` then ``sin`` of ``t * f_i`` with
    ``f_i = max_period ** (-i / (dim // 2))``, a zero column appended when ``dim`` is odd."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """``GroupNorm(min(32, channels), channels)`` computed in float32 whatever the input dtype, as the official
    ``normalization`` is (its statistics are fragile in half precision)."""

    def __init__(self, channels: int) -> None:
        if channels % min(32, channels):
            raise TrainError(f"PIDM group norm over {channels} channels needs a multiple of 32 (or fewer than 32): "
                             f"choose ngf and channel_mult so every level width and skip concatenation is one")
        super().__init__(min(32, channels), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)  # float32, or float64 (a reference run)


def zeroed(module: nn.Module) -> nn.Module:
    """``module`` with its parameters set to zero (the official init of each residual branch's last conv, the
    attention output projection and the output conv: every block starts as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class UnusedWeights(nn.Module):
    """A ``weight`` and ``bias`` the official network creates but its forward never reads, frozen
    (``requires_grad=False``) so official state dicts load and save key-for-key while optimisers, gradient clipping
    and DDP see no parameter that never gets a gradient. Zero-initialised: the values never matter."""

    def __init__(self, weight_shape: tuple[int, ...], bias_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(weight_shape), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(bias_shape), requires_grad=False)


def unused_linear_at(index: int, in_features: int, out_features: int) -> nn.ModuleDict:
    """An unused ``Linear(in_features, out_features)`` at ``index`` of what was an official ``nn.Sequential``, so
    its keys read ``<name>.<index>.weight``."""
    return nn.ModuleDict({str(index): UnusedWeights((out_features, in_features), (out_features,))})


class ResBlock(nn.Module):
    """The residual block: ``GroupNorm, SiLU, [resample], conv3x3``, then ``GroupNorm``, scale-shift by the time
    embedding, ``SiLU, Dropout, conv3x3`` (zero-initialised), plus the skip (identity, or a 1x1 conv when the width
    changes): ``(B, in_channels, h, w) -> (B, out_channels, h', w')`` with ``h' = 2h`` (``resample="up"``, nearest),
    ``h / 2`` (``"down"``, 2x2 average pool) or ``h``. The resample acts on both the branch and the skip.

    ``time_conditioned=False`` (the texture encoder's blocks) skips the scale-shift: the official encoder is never
    given a time embedding, though its blocks hold ``emb_layers`` weights. ``cond_emb_layers`` is never used by either.
    """

    def __init__(self, in_channels: int, out_channels: int, embed_channels: int, dropout: float,
                 resample: str | None = None, time_conditioned: bool = True) -> None:
        super().__init__()
        if resample not in (None, "up", "down"):
            raise TrainError(f"ResBlock resample must be None, 'up' or 'down', not {resample!r}")
        self.resample = resample
        self.in_layers = nn.Sequential(
            GroupNorm32(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1))
        if time_conditioned:
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(embed_channels, 2 * out_channels))
        else:
            self.emb_layers = unused_linear_at(1, embed_channels, 2 * out_channels)
        self.time_conditioned = time_conditioned
        self.cond_emb_layers = unused_linear_at(1, out_channels, out_channels)
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
            zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if in_channels == out_channels
                                else nn.Conv2d(in_channels, out_channels, 1))

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, in_channels, h, w)``, ``emb (B, embed_channels)`` (ignored when not time-conditioned)."""
        norm, act, conv = self.in_layers
        h = conv(self._resample(act(norm(x))))
        x = self._resample(x)
        out_norm, out_act, out_dropout, out_conv = self.out_layers
        h = out_norm(h)
        if self.time_conditioned:
            scale, shift = self.emb_layers(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = out_conv(out_dropout(out_act(h)))
        return self.skip_connection(x) + h


class CrossAttention(nn.Module):
    """The texture diffusion module's block: queries from the group-normalised UNet features, keys and values from
    the texture encoder's features of the same shape (not normalised), one head, softmax over the source positions,
    a zero-initialised output projection, residual: ``x (B, C, h, w), source (B, C, h, w) -> (B, C, h, w)``.

    ``qkv`` and ``proj_out1`` belong to the official self-attention path, which its forward has commented out.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = GroupNorm32(channels)
        self.qkv = UnusedWeights((3 * channels, channels, 1), (3 * channels,))
        self.to_kv = nn.Conv1d(channels, 2 * channels, 1)
        self.to_q = nn.Conv1d(channels, channels, 1)
        self.proj_out1 = UnusedWeights((channels, channels, 1), (channels,))
        self.proj_out2 = zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if source.shape != x.shape:
            raise TrainError(f"cross-attention needs source features of shape {tuple(x.shape)}, "
                             f"got {tuple(source.shape)}")
        q = self.to_q(self.norm(x.flatten(2)))
        k, v = self.to_kv(source.flatten(2)).chunk(2, dim=1)
        # (B, 1 head, tokens, C); SDPA's default scale 1/sqrt(C) is the official (q C^-1/4) . (k C^-1/4).
        attended = F.scaled_dot_product_attention(*(z.transpose(1, 2)[:, None] for z in (q, k, v)))
        return x + self.proj_out2(attended[:, 0].transpose(1, 2)).view(b, c, h, w)


class Step(nn.ModuleList):
    """One official ``TimestepEmbedSequential``: its layers in order, each given what it takes (a ``ResBlock`` the
    time embedding, a ``CrossAttention`` the source features, a plain conv only ``x``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None, source: torch.Tensor | None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, CrossAttention):
                x = layer(x, source)
            else:
                x = layer(x)
        return x


def encoder_steps(in_channels: int, ngf: int, channel_mult: tuple[int, ...], num_res_blocks: int,
                  embed_channels: int, dropout: float, time_conditioned: bool,
                  attention_levels: tuple[int, ...] = ()) -> tuple[nn.ModuleList, list[int]]:
    """The downsampling half both the UNet and the texture encoder share: a 3x3 conv to ``ngf * channel_mult[0]``,
    then per level ``num_res_blocks`` ResBlocks to ``ngf * mult`` (cross-attention after the last one on
    ``attention_levels``) and, except on the last level, a down-ResBlock keeping the width. Returns the steps and
    each step's output width; step ``k``'s output is ``H / 2**level`` high."""
    ch = ngf * channel_mult[0]
    steps = nn.ModuleList([Step([nn.Conv2d(in_channels, ch, 3, padding=1)])])
    widths = [ch]
    for level, mult in enumerate(channel_mult):
        for i in range(num_res_blocks):
            layers: list[nn.Module] = [ResBlock(ch, ngf * mult, embed_channels, dropout,
                                                time_conditioned=time_conditioned)]
            ch = ngf * mult
            if level in attention_levels and i == num_res_blocks - 1:
                layers.append(CrossAttention(ch))
            steps.append(Step(layers))
            widths.append(ch)
        if level < len(channel_mult) - 1:
            steps.append(Step([ResBlock(ch, ch, embed_channels, dropout, resample="down",
                                        time_conditioned=time_conditioned)]))
            widths.append(ch)
    return steps, widths


class SourceEncoder(nn.Module):
    """The texture encoder: the UNet's downsampling half without attention or time conditioning, on the source
    image: ``(B, image_channels, H, W)`` -> one feature map per step, the same shapes as the UNet's own
    ``input_blocks`` outputs, which the cross-attentions read. ``time_embed`` is official but unused."""

    def __init__(self, image_channels: int, ngf: int, channel_mult: tuple[int, ...], num_res_blocks: int,
                 embed_channels: int, dropout: float) -> None:
        super().__init__()
        self.time_embed = nn.ModuleDict({"0": UnusedWeights((embed_channels, ngf), (embed_channels,)),
                                         "2": UnusedWeights((embed_channels, embed_channels), (embed_channels,))})
        self.input_blocks, _ = encoder_steps(image_channels, ngf, channel_mult, num_res_blocks, embed_channels,
                                             dropout, time_conditioned=False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features = []
        h = image
        for step in self.input_blocks:
            h = step(h, None, None)
            features.append(h)
        return features


class TimeEmbedding(nn.Module):
    """``Linear(ngf, embed), SiLU, Linear(embed, embed)`` on the sinusoidal embedding; the extra level of nesting
    gives the official keys ``time_embed.time_embed.{0,2}``."""

    def __init__(self, ngf: int, embed_channels: int) -> None:
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(ngf, embed_channels), nn.SiLU(),
                                        nn.Linear(embed_channels, embed_channels))

    def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
        return self.time_embed(t_emb)


class PIDMUNet(nn.Module):
    """PIDM's noise-prediction network (the official ``BeatGANsAutoencModel`` at ``get_model_conf()``).

    ``ngf`` is the base width (official ``model_channels``); level ``l`` has ``ngf * channel_mult[l]`` channels at
    ``H / 2**l``; every width and skip concatenation must be a multiple of 32 or below 32 (group norm), which any
    ``ngf`` multiple of 32 gives. ``attention_levels`` are the levels whose last down-side block and last-but-one
    up-side block cross-attend to the source (the middle block always does). ``pose_channels`` is ``P``, the
    target-pose channels concatenated to ``x_t``.
    """

    def __init__(self, ngf: int = 128, channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4), num_res_blocks: int = 2,
                 attention_levels: tuple[int, ...] = (3, 4, 5), embed_channels: int = 512, dropout: float = 0.1,
                 image_channels: int = 3, pose_channels: int = 20, out_channels: int = 6) -> None:
        super().__init__()
        widths = [ngf * m for m in channel_mult]
        self.ngf, self.image_channels, self.pose_channels = ngf, image_channels, pose_channels
        self.downsampling = 2 ** (len(channel_mult) - 1)
        self.time_embed = TimeEmbedding(ngf, embed_channels)
        self.input_blocks, skip_widths = encoder_steps(
            image_channels + pose_channels, ngf, channel_mult, num_res_blocks, embed_channels, dropout,
            time_conditioned=True, attention_levels=attention_levels)
        ch = widths[-1]
        self.middle_block = Step([ResBlock(ch, ch, embed_channels, dropout), CrossAttention(ch),
                                  ResBlock(ch, ch, embed_channels, dropout)])
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + skip_widths.pop(), widths[level], embed_channels, dropout)]
                ch = widths[level]
                if level in attention_levels and i == num_res_blocks - 1:
                    layers.append(CrossAttention(ch))
                if level > 0 and i == num_res_blocks:
                    layers.append(ResBlock(ch, ch, embed_channels, dropout, resample="up"))
                self.output_blocks.append(Step(layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), zeroed(nn.Conv2d(ch, out_channels, 3, padding=1)))
        self.encoder = SourceEncoder(image_channels, ngf, channel_mult, num_res_blocks, embed_channels, dropout)

    def encode_source(self, source_image: torch.Tensor, keep_source: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The texture encoder's features of ``source_image (B, 3, H, W)``, zeroed first where ``keep_source (B,)`` is
        False (the official null condition for classifier-free guidance). Samplers can compute this once per image
        and call ``denoise`` at every step."""
        if keep_source is not None:
            source_image = torch.where(keep_source.view(-1, 1, 1, 1), source_image, 0.0)
        return self.encoder(source_image)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, source_features: list[torch.Tensor],
                target_pose: torch.Tensor, keep_pose: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet on ``cat(x_t, target_pose)`` given ``encode_source``'s features: ``(B, 6, H, W)``."""
        if keep_pose is not None:
            target_pose = torch.where(keep_pose.view(-1, 1, 1, 1), target_pose, 0.0)
        # float32 like the official embedding; float64 when the network is (a reference run)
        emb = self.time_embed(timestep_embedding(t, self.ngf).to(torch.promote_types(x_t.dtype, torch.float32)))
        h = torch.cat([x_t, target_pose], dim=1)
        skips = []
        for step, source in zip(self.input_blocks, source_features, strict=True):
            h = step(h, emb, source)
            skips.append(h)
        h = self.middle_block(h, emb, source_features[-1])
        # Up step k takes the skip and the source features of down step K-1-k (same level, same shape).
        for step, source in zip(self.output_blocks, reversed(source_features), strict=True):
            h = step(torch.cat([h, skips.pop()], dim=1), emb, source)
        return self.out(h)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, source_image: torch.Tensor, target_pose: torch.Tensor, *,
                keep_source: torch.Tensor | None = None, keep_pose: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t (B, 3, H, W)`` the noisy target, ``t (B,)`` int64 timesteps, ``source_image (B, 3, H, W)``,
        ``target_pose (B, P, H, W)``; ``keep_source``/``keep_pose`` ``(B,)`` bool, False zeroing that sample's
        source image (before the encoder) or pose channels; None keeps all. Returns ``(B, 6, H, W)``."""
        self._check_inputs(x_t, t, source_image, target_pose)
        return self.denoise(x_t, t, self.encode_source(source_image, keep_source), target_pose, keep_pose)

    def _check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, source_image: torch.Tensor,
                      target_pose: torch.Tensor) -> None:
        b, _, h, w = x_t.shape
        expected = {"x_t": (b, self.image_channels, h, w), "source_image": (b, self.image_channels, h, w),
                    "target_pose": (b, self.pose_channels, h, w)}
        for name, tensor in (("x_t", x_t), ("source_image", source_image), ("target_pose", target_pose)):
            if tuple(tensor.shape) != expected[name]:
                raise TrainError(f"PIDM {name} must be {expected[name]}, got {tuple(tensor.shape)}")
        if tuple(t.shape) != (b,):
            raise TrainError(f"PIDM t must be ({b},), got {tuple(t.shape)}")
        if h % self.downsampling or w % self.downsampling:
            raise TrainError(f"PIDM needs H and W multiples of {self.downsampling}, got {h}x{w} "
                             f"(pad or resize, e.g. 256x176 to 256x192 or 256x256)")


# ---------------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Sampling:
    """How a trained PIDM generates: the sampler, its steps and eta, the guidance and the noise's seed."""

    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance: Guidance = Guidance()
    seed: int = 0

    def as_dict(self) -> dict[str, object]:
        """The settings for a results table (eval.json); DDPM has no step count or eta of its own."""
        out: dict[str, object] = {"sampler": self.sampler, **self.guidance.as_dict(), "seed": self.seed}
        if self.sampler == "ddim":
            out.update(steps=self.steps, eta=self.eta)
        return out


class PIDM(PIDMUNet):
    """PIDM as a pgpig generator: ``forward(source_image, source_pose, target_pose)`` samples the target image
    ``(B, 3, H, W)`` in [-1, 1] by ``sampling`` (the registry's interface, which ``pgpig generate`` and eval call),
    and with ``noisy``/``timesteps`` it is the denoising network (the training loss's call, through any DDP or
    compile wrapper). ``source_pose`` is not used. State-dict keys are ``PIDMUNet``'s, the official model's."""

    def __init__(self, ngf: int = 128, channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4), num_res_blocks: int = 2,
                 attention_levels: tuple[int, ...] = (3, 4, 5), embed_channels: int = 512, dropout: float = 0.1,
                 image_channels: int = 3, pose_channels: int = 20, out_channels: int = 6, *,
                 sampling: Sampling = Sampling(), diffusion_steps: int = 1000, prediction: str = "noise") -> None:
        super().__init__(ngf, channel_mult, num_res_blocks, attention_levels, embed_channels, dropout, image_channels,
                         pose_channels, out_channels)
        self.sampling = sampling
        with torch.device("cpu"):  # also when the network is built on the meta device (official imports)
            self.diffusion = Diffusion(linear_betas(diffusion_steps), prediction)

    def forward(self, source_image: torch.Tensor, source_pose: torch.Tensor | None, target_pose: torch.Tensor, *,
                noisy: torch.Tensor | None = None, timesteps: torch.Tensor | None = None,
                keep_source: torch.Tensor | None = None, keep_pose: torch.Tensor | None = None) -> torch.Tensor:
        if noisy is None:
            return self.sample(source_image, target_pose)
        return super().forward(noisy, timesteps, source_image, target_pose, keep_source=keep_source,
                               keep_pose=keep_pose)

    @torch.no_grad()
    def sample(self, source_image: torch.Tensor, target_pose: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [-1, 1] for a batch. Each sample's noise comes from its own CPU generator,
        seeded by ``sampling.seed`` and the bytes of its source image and pose: the same pair gets the same image in
        any batch, at any position, on any device. The source's features are computed once per guidance term."""
        s = self.sampling
        features: dict[tuple[bool, ...] | None, list[torch.Tensor]] = {}

        def net(x_t: torch.Tensor, t: torch.Tensor, source: torch.Tensor, pose: torch.Tensor, *,
                keep_source: torch.Tensor | None = None, keep_pose: torch.Tensor | None = None) -> torch.Tensor:
            key = None if keep_source is None else tuple(keep_source.tolist())
            if key not in features:  # the terms' source masks stay the same over the steps
                features[key] = self.encode_source(source, keep_source)
            return self.denoise(x_t, t, features[key], pose, keep_pose)

        generator = [pair_generator(s.seed, image, pose) for image, pose in zip(source_image, target_pose,
                                                                                 strict=True)]
        if s.sampler == "ddpm":
            images = ddpm_sample(net, self.diffusion, source_image, target_pose, generator, guidance=s.guidance)
        else:
            images = ddim_sample(net, self.diffusion, source_image, target_pose, generator, steps=s.steps, eta=s.eta,
                                 guidance=s.guidance)
        return images.clamp(-1.0, 1.0)


def pair_generator(seed: int, source_image: torch.Tensor, target_pose: torch.Tensor) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and one pair's source image ``(3, H, W)`` and pose ``(P, H, W)`` (their
    float32 bytes)."""
    digest = hashlib.sha256(str(seed).encode())
    for tensor in (source_image, target_pose):
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return torch.Generator().manual_seed(int.from_bytes(digest.digest()[:8], "little") >> 1)


class DiffusionObjective(Objective):
    """PIDM's training: the hybrid loss (noise MSE + variational bound) at a uniform random step, with the source
    (and, if asked, the pose) dropped per sample for classifier-free guidance (``pgpig.diffusion``). No
    discriminators, no perceptual loss. The generated image it reports is the one-step estimate of the target."""

    @classmethod
    def build_generator(cls, cfg: Any, size: tuple[int, int]) -> nn.Module:
        from pgpig.train import pose_channels  # pgpig.train imports the models

        levels = tuple(cfg.channel_mult or PAPER_SETTINGS["channel_mult"])
        step = 2 ** (len(levels) - 1)
        if size[0] % step or size[1] % step:
            raise TrainError(f"PIDM with {len(levels)} levels needs image sides that are multiples of {step}; the "
                             f"shards give {size[0]}x{size[1]} (after crop_margin {cfg.crop_margin}): change "
                             f"crop_margin (DeepFashion 256x256: 0 or 32) or channel_mult")
        sampling = Sampling(cfg.sampler, cfg.sample_steps, cfg.sample_eta,
                            Guidance(cfg.guidance_pose, cfg.guidance_appearance, cfg.guidance_null_pose),
                            cfg.sample_seed)
        return create(cfg.model, ngf=cfg.ngf, channel_mult=levels, num_res_blocks=cfg.n_blocks,
                      attention_levels=tuple(cfg.attention_levels if cfg.attention_levels is not None
                                             else PAPER_SETTINGS["attention_levels"]),
                      embed_channels=cfg.embed_channels, dropout=cfg.dropout, pose_channels=pose_channels(cfg),
                      sampling=sampling,
                      diffusion_steps=cfg.diffusion_steps, prediction=cfg.prediction)

    def build_losses(self) -> None:
        self.diffusion = Diffusion(linear_betas(self.cfg.diffusion_steps), self.cfg.prediction).to(self.device)

    def generator_loss(self, generator: nn.Module, discriminators: dict[str, nn.Module],
                       batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        target = batch.target
        b, device = target.shape[0], target.device
        t = torch.randint(0, self.diffusion.num_steps, (b,), device=device)
        # drawn in float32 whatever the target's dtype, so a float64 reference run draws the same noise
        noise = torch.randn(target.shape, device=device, dtype=torch.float32).to(target.dtype)
        draws = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, ())))  # from the step's seed
        keep_source, keep_pose = draw_keep_masks(b, draws, self.cfg.source_drop, self.cfg.pose_drop)
        seen = []  # the noisy target and the network's output, for the one-step estimate

        def net(x_t: torch.Tensor, t: torch.Tensor, source: torch.Tensor, pose: torch.Tensor, *,
                keep_source: torch.Tensor | None = None, keep_pose: torch.Tensor | None = None) -> torch.Tensor:
            output = generator(source, None, pose, noisy=x_t, timesteps=t, keep_source=keep_source,
                               keep_pose=keep_pose)
            seen.append((x_t, output))
            return output

        terms = self.diffusion.training_losses(net, target, t, batch.source, batch.target_pose, noise, keep_source,
                                               keep_pose)
        with torch.no_grad():
            x_t, output = seen[0]
            estimate = self.diffusion.p_mean_log_variance(output.detach().float(), x_t, t, clip=True)[2]
        scalars = {"mse": terms["mse"].mean().detach(), "vb": terms["vb"].mean().detach()}
        return estimate.to(target.dtype), terms["loss"].mean(), scalars


register("pidm", objective=DiffusionObjective)(PIDM)
