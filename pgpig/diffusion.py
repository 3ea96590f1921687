"""PIDM's Gaussian diffusion: the linear beta schedule, the hybrid training loss (noise MSE plus the variational
bound that learns the variance), condition dropout, and the DDIM and DDPM samplers with disentangled
classifier-free guidance.

Paper: Bhunia et al., "Person Image Synthesis via Denoising Diffusion Model", CVPR 2023 (arXiv:2211.12500),
sec. 3.1 (the hybrid loss of Nichol & Dhariwal, arXiv:2102.09672) and sec. 3.3 (disentangled guidance).
Facts read in the official code (github.com/ankanbhunia/PIDM): ``config/diffusion.conf`` (schedule),
``diffusion.py`` (``GaussianDiffusion`` buffers and ``training_losses``, ``p_sample_loop``, ``ddim_steps``),
``models/unet_autoenc.py`` (``forward_with_cond_scale``, ``prob_mask_like``), ``train.py`` (guidance_prob 0.1,
cond_scale 2). The specification, the guidance equation and the choices taken: ``docs/diffusion.md``.

The network is any callable ``net(x_t (B,3,H,W), t (B,) int64, source (B,3,H,W), pose (B,P,H,W), *,
keep_source=None, keep_pose=None) -> (B,6,H,W)``: the noise in channels 0-2, the variance interpolation in 3-5; a
False in a ``keep_*`` (B,) bool mask nulls that condition for that sample.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from torch import Tensor

from pgpig.errors import TrainError

__all__ = [
    "DenoisingNet",
    "Diffusion",
    "Guidance",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "draw_keep_masks",
    "guided_output",
    "linear_betas",
]


PREDICTIONS = ("noise", "velocity")
"""What the network's first channels predict: the noise (the paper's), or the velocity
v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0 (Salimans & Ho, arXiv:2202.00512)."""


class DenoisingNet(Protocol):
    def __call__(self, x_t: Tensor, t: Tensor, source: Tensor, pose: Tensor, *, keep_source: Tensor | None = None,
                 keep_pose: Tensor | None = None) -> Tensor: ...


def linear_betas(num_steps: int = 1000, start: float = 1e-4, end: float = 2e-2) -> Tensor:
    """The official schedule (``config/diffusion.conf``): ``num_steps`` betas evenly spaced from ``start`` to
    ``end``, (num_steps,) float64."""
    if num_steps < 2 or not 0 < start <= end < 1:
        raise TrainError(f"diffusion schedule: need at least 2 steps and 0 < start <= end < 1, got {num_steps} steps "
                         f"from {start} to {end}")
    return torch.linspace(start, end, num_steps, dtype=torch.float64)


def _take(buffer: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``buffer[t]`` as (B, 1, ..., 1) in ``like``'s dtype, to scale a (B, ...) tensor per sample."""
    return buffer[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _mean_per_sample(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def _normal_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)) per element, in nats."""
    return 0.5 * (log_var2 - log_var1 - 1.0 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * torch.exp(-log_var2))


def _normal_cdf(x: Tensor) -> Tensor:
    # The tanh approximation of the standard normal CDF that the official likelihood uses; kept for equal numbers.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _discretised_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) per element for 8-bit images scaled to [-1, 1]: the Gaussian's mass over x's bin of width 2/255,
    the two end bins stretched to infinity."""
    inv_std = torch.exp(-log_scale)
    cdf_upper = _normal_cdf(inv_std * (x - mean + 1.0 / 255.0))
    cdf_lower = _normal_cdf(inv_std * (x - mean - 1.0 / 255.0))
    log_below_upper = torch.log(cdf_upper.clamp(min=1e-12))
    log_above_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
    log_in_bin = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    return torch.where(x < -0.999, log_below_upper, torch.where(x > 0.999, log_above_lower, log_in_bin))


class Diffusion:
    """The forward process of a beta schedule and its posterior, with the per-step buffers in float64 (as the
    official ``GaussianDiffusion`` keeps them); each buffer is cast to the dtype of the tensor it scales.

    The model predicts the noise (or, with ``prediction="velocity"``, the velocity; ``PREDICTIONS``) and, in its
    second half of channels, ``v`` in [-1, 1] that interpolates the log-variance between the posterior's (clipped
    at step 0) and beta's (Nichol & Dhariwal's learned range).
    """

    def __init__(self, betas: Tensor, prediction: str = "noise") -> None:
        if prediction not in PREDICTIONS:
            raise TrainError(f"diffusion: prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        self.prediction = prediction
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or len(betas) < 2 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise TrainError("diffusion schedule: betas must be a 1-D list of at least 2 values in (0, 1]")
        self.betas = betas
        self.num_steps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        self.log_betas = betas.log()
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at step 0; its log takes step 1's value there.
        self.posterior_log_variance_clipped = torch.cat(
            [self.posterior_variance[1:2], self.posterior_variance[1:]]).log()
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)

    def to(self, device: torch.device | str) -> Diffusion:
        """A copy with every buffer on ``device``."""
        moved = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(moved, name, value.to(device))
        return moved

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise; x_start, noise (B, C, H, W), t (B,) int64."""
        return (_take(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + _take(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def q_posterior(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (B, C, H, W) and clipped log-variance (B, 1, 1, 1) of q(x_{t-1} | x_t, x_0)."""
        mean = _take(self.posterior_mean_coef1, t, x_t) * x_start + _take(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _take(self.posterior_log_variance_clipped, t, x_t)

    def p_mean_log_variance(self, output: Tensor, x_t: Tensor, t: Tensor, *, clip: bool) -> tuple[Tensor, Tensor,
                                                                                                     Tensor]:
        """The model's p(x_{t-1} | x_t) from its output (B, 2C, H, W): mean, log-variance and the predicted x_0
        (each (B, C, H, W)); ``clip`` clamps the predicted x_0 to [-1, 1] before the mean is formed."""
        prediction, v = _split_output(output, x_t)
        frac = (v + 1.0) / 2.0
        log_variance = (frac * _take(self.log_betas, t, x_t)
                        + (1.0 - frac) * _take(self.posterior_log_variance_clipped, t, x_t))
        if self.prediction == "velocity":
            pred_start = self.from_velocity(prediction, x_t, t)[0]
        else:
            pred_start = (_take(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                          - _take(self.sqrt_recipm1_alphas_cumprod, t, x_t) * prediction)
        if clip:
            pred_start = pred_start.clamp(-1.0, 1.0)
        mean, _ = self.q_posterior(pred_start, x_t, t)
        return mean, log_variance, pred_start

    def from_velocity(self, velocity: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The x_0 and the noise that a predicted velocity gives at x_t: x_0 = sqrt(abar) x_t - sqrt(1 - abar) v,
        noise = sqrt(1 - abar) x_t + sqrt(abar) v; each like x_t."""
        a, b = _take(self.sqrt_alphas_cumprod, t, x_t), _take(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return a * x_t - b * velocity, b * x_t + a * velocity

    def variational_bound(self, output: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The bound's term at step t in bits per dimension, (B,): KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
        for t > 0, the discretised decoder's negative log-likelihood of x_0 at t = 0."""
        true_mean, true_log_variance = self.q_posterior(x_start, x_t, t)
        mean, log_variance, _ = self.p_mean_log_variance(output, x_t, t, clip=False)
        kl = _mean_per_sample(_normal_kl(true_mean, true_log_variance, mean, log_variance)) / math.log(2.0)
        nll = -_mean_per_sample(_discretised_log_likelihood(x_start, mean, 0.5 * log_variance)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, net: DenoisingNet, x_start: Tensor, t: Tensor, source: Tensor, pose: Tensor,
                        noise: Tensor, keep_source: Tensor | None = None,
                        keep_pose: Tensor | None = None) -> dict[str, Tensor]:
        """The official hybrid loss per sample: ``mse`` of the predicted noise (or velocity) plus ``vb``, the
        variational bound with the prediction detached so that only the variance channels learn from it; each (B,).

        x_start: target images (B, 3, H, W) in [-1, 1]; t: (B,) int64 steps; source (B, 3, H, W); pose
        (B, P, H, W); noise: like x_start; keep_*: (B,) bool condition masks (``draw_keep_masks``).
        """
        x_t = self.q_sample(x_start, t, noise)
        output = net(x_t, t, source, pose, keep_source=keep_source, keep_pose=keep_pose)
        prediction, v = _split_output(output, x_t)
        if self.prediction == "velocity":
            wanted = (_take(self.sqrt_alphas_cumprod, t, x_start) * noise
                      - _take(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start)
        else:
            wanted = noise
        mse = _mean_per_sample((wanted - prediction) ** 2)
        vb = self.variational_bound(torch.cat([prediction.detach(), v], dim=1), x_start, x_t, t)
        return {"loss": mse + vb, "mse": mse, "vb": vb}


def _split_output(output: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
    channels = x_t.shape[1]
    if output.shape != (x_t.shape[0], 2 * channels, *x_t.shape[2:]):
        raise TrainError(f"diffusion: the network returned {tuple(output.shape)}, expected "
                         f"{(x_t.shape[0], 2 * channels, *x_t.shape[2:])} (noise and variance channels)")
    return output[:, :channels], output[:, channels:]


def draw_keep_masks(batch: int, generator: torch.Generator, source_drop: float = 0.1,
                    pose_drop: float = 0.0) -> tuple[Tensor, Tensor]:
    """Condition dropout for one training batch: (keep_source, keep_pose), each (B,) bool on the generator's device.

    Each sample keeps its source image with probability ``1 - source_drop`` and its pose with ``1 - pose_drop``,
    independently. The official training drops the source only (``prob = 1 - guidance_prob``, 0.1) and never the
    pose; the paper drops both, which ``pose_drop > 0`` gives. The source draw comes first and equals the
    official ``prob_mask_like`` draw from a generator seeded alike.
    """
    for name, p in (("source_drop", source_drop), ("pose_drop", pose_drop)):
        if not 0.0 <= p <= 1.0:
            raise TrainError(f"condition dropout: {name} must be in [0, 1], got {p}")
    keep_source = torch.rand(batch, generator=generator, device=generator.device) < 1.0 - source_drop
    keep_pose = torch.rand(batch, generator=generator, device=generator.device) < 1.0 - pose_drop
    return keep_source, keep_pose


@dataclass(frozen=True)
class Guidance:
    """Disentangled classifier-free guidance (paper eq. 6; ``docs/diffusion.md``).

    ``null_pose=True`` is the paper's equation, for a network trained with pose dropout:
    eps = e(0, 0) + pose_scale (e(pose, 0) - e(0, 0)) + appearance_scale (e(0, source) - e(0, 0)).
    ``null_pose=False`` keeps the pose in every term, since a network trained with pose dropout 0 (the official
    setting) never saw a null pose: the pose term vanishes and eps = e(pose, 0) + appearance_scale
    (e(pose, source) - e(pose, 0)), the official ``forward_with_cond_scale`` with cond_scale = appearance_scale;
    pose_scale has no effect. Guidance applies to all six output channels, the variance ones included, as in the
    official code.
    """

    pose_scale: float = 2.0
    appearance_scale: float = 2.0
    null_pose: bool = False

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)

    def terms(self) -> tuple[tuple[bool, bool], list[tuple[tuple[bool, bool], float]]]:
        """The anchor's (keep_source, keep_pose) and each guided term's (keep_source, keep_pose) and scale; terms of
        scale 0 are left out, and the official form at scale 1 is the plain conditional prediction alone."""
        if not self.null_pose:
            if self.appearance_scale == 1:
                return (True, True), []
            terms = [((True, True), self.appearance_scale)]
            anchor = (False, True)
        else:
            terms = [((False, True), self.pose_scale), ((True, False), self.appearance_scale)]
            anchor = (False, False)
        return anchor, [(keep, scale) for keep, scale in terms if scale != 0]


def guided_output(net: DenoisingNet, x_t: Tensor, t: Tensor, source: Tensor, pose: Tensor,
                  guidance: Guidance) -> Tensor:
    """The guided network output (B, 6, H, W): the anchor and every guided term in one forward of n*B samples,
    then anchor + sum(scale * (term - anchor))."""
    anchor, terms = guidance.terms()
    conditions = [anchor] + [keep for keep, _ in terms]
    n, batch = len(conditions), x_t.shape[0]
    keep = torch.tensor(conditions, dtype=torch.bool, device=x_t.device).repeat_interleave(batch, dim=0)
    output = net(x_t.repeat(n, 1, 1, 1), t.repeat(n), source.repeat(n, 1, 1, 1), pose.repeat(n, 1, 1, 1),
                 keep_source=keep[:, 0], keep_pose=keep[:, 1])
    outputs = output.chunk(n)
    guided = outputs[0]
    for (_, scale), term in zip(terms, outputs[1:], strict=True):
        guided = guided + (term - outputs[0]) * scale
    return guided


Generators = torch.Generator | Sequence[torch.Generator]
"""A sampler's noise source: one generator for the batch, or one per sample (each sample's noise then depends on
that sample's generator alone, not on its batch neighbours or its position)."""


def _standard_normal(shape: torch.Size, generator: Generators, device: torch.device) -> Tensor:
    # Drawn on the generator's device, so one CPU generator gives the same noise whatever device samples.
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device).to(device)
    if len(generator) != shape[0]:
        raise TrainError(f"diffusion: {len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g, device=g.device).to(device) for g in generator])


def ddim_timesteps(num_steps: int, steps: int) -> list[int]:
    """The official DDIM steps: ``range(0, num_steps, num_steps // steps)`` (0, 20, ..., 980 for 50 of 1000);
    when ``steps`` does not divide ``num_steps`` the list is a little longer than ``steps``."""
    if not 1 <= steps <= num_steps:
        raise TrainError(f"DDIM: steps must be between 1 and the schedule's {num_steps}, got {steps}")
    return list(range(0, num_steps, num_steps // steps))


@torch.no_grad()
def ddim_sample(net: DenoisingNet, diffusion: Diffusion, source: Tensor, pose: Tensor, generator: Generators,
                *, steps: int = 50, eta: float = 0.0, guidance: Guidance = Guidance()) -> Tensor:
    """DDIM sampling (Song et al., arXiv:2010.02502, eq. 12) over ``ddim_timesteps``, as the official
    ``ddim_steps``: x_T, then (eta > 0) one noise tensor per step, all drawn from ``generator`` (one for the batch,
    or one per sample).

    source (B, 3, H, W), pose (B, P, H, W) -> images (B, 3, H, W) in source's dtype, not clipped. The chain runs in
    float64, as the official one does (its alphas are float64 tensors); the network sees source's dtype.
    """
    if eta < 0:
        raise TrainError(f"DDIM: eta must be >= 0, got {eta}")
    diffusion = diffusion.to(source.device)
    times = ddim_timesteps(diffusion.num_steps, steps)
    x = _standard_normal(source.shape, generator, source.device).double()
    one = diffusion.alphas_cumprod.new_ones(())
    for now, after in zip(reversed(times), reversed([-1, *times[:-1]]), strict=True):
        t = torch.full((source.shape[0],), now, dtype=torch.long, device=source.device)
        a_now = diffusion.alphas_cumprod[now]
        a_next = diffusion.alphas_cumprod[after] if after >= 0 else one
        output = guided_output(net, x.to(source.dtype), t, source, pose, guidance)
        prediction = _split_output(output, x)[0].double()
        if diffusion.prediction == "velocity":
            x_start, eps = diffusion.from_velocity(prediction, x, t)
        else:
            eps = prediction
            x_start = (x - eps * (1.0 - a_now).sqrt()) / a_now.sqrt()
        x_next = a_next.sqrt() * x_start
        if eta > 0:
            c_noise = eta * ((1.0 - a_now / a_next) * (1.0 - a_next) / (1.0 - a_now)).sqrt()
            x_next = x_next + c_noise * _standard_normal(source.shape, generator, source.device).double()
        else:
            c_noise = 0.0
        x = x_next + (1.0 - a_next - c_noise**2).sqrt() * eps
    return x.to(source.dtype)


@torch.no_grad()
def ddpm_sample(net: DenoisingNet, diffusion: Diffusion, source: Tensor, pose: Tensor, generator: Generators,
                *, guidance: Guidance = Guidance(), clip: bool = True) -> Tensor:
    """Ancestral sampling over every step of the schedule, as the official ``p_sample_loop``: the learned
    variance, the predicted x_0 clamped to [-1, 1] (``clip``), x_T and then one noise tensor per step t > 0 drawn
    from ``generator`` (one for the batch, or one per sample). source (B, 3, H, W), pose (B, P, H, W) -> images
    (B, 3, H, W)."""
    diffusion = diffusion.to(source.device)
    x = _standard_normal(source.shape, generator, source.device)
    for now in reversed(range(diffusion.num_steps)):
        t = torch.full((source.shape[0],), now, dtype=torch.long, device=source.device)
        output = guided_output(net, x, t, source, pose, guidance)
        mean, log_variance, _ = diffusion.p_mean_log_variance(output, x, t, clip=clip)
        x = mean if now == 0 else mean + torch.exp(0.5 * log_variance) * _standard_normal(x.shape, generator,
                                                                                             x.device)
    return x
