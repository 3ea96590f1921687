"""``pgpig.diffusion``: PIDM's schedule, loss and samplers against the official code's own numbers.

``tests/data/pidm/diffusion_reference.safetensors`` holds what the official ``diffusion.py`` (ankanbhunia/PIDM at
the commit named in ``diffusion_reference.json``) computed, on the CPU, with ``TinyDenoiser`` below handed to it
through a thin adapter that speaks its call (``model(x=cat([x_t, pose]), t, x_cond=source, prob)``, ``encode`` as
the identity so that the null source is the zero image, and the official ``forward_with_cond_scale`` itself): its
float64 buffers for the 1000-step linear schedule, ``training_losses`` per sample and the gradients of their sum in
the net's weights, the source mask its ``prob_mask_like`` drew, ``ddim_steps`` (10 of 1000 steps, cond_scale 2,
eta 0 and 0.5) and ``p_sample_loop`` on a 10-step schedule (cond_scale 2). The inputs are stored; the net's weights
are drawn from the seed in the JSON. Seeds, shapes and the official commit: ``diffusion_reference.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgpig.diffusion import (
    Diffusion,
    Guidance,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    draw_keep_masks,
    guided_output,
    linear_betas,
)
from pgpig.errors import TrainError

DATA = Path(__file__).resolve().parents[1] / "data" / "pidm"


class TinyDenoiser(nn.Module):
    """A seeded two-layer conv net over cat([x_t, pose, source]) with a sinusoidal time embedding added after the
    first layer: the network interface of ``pgpig.diffusion`` at a size the CPU runs in milliseconds.

    x_t (B, 3, H, W), t (B,) int64, source (B, 3, H, W), pose (B, P, H, W) -> (B, 6, H, W). A False in a keep mask
    zeroes that condition, the official code's null (its encoder sees the zero image).
    """

    def __init__(self, seed: int, pose_channels: int = 18, hidden: int = 16, time_channels: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        inputs = 3 + pose_channels + 3

        def draw(*shape: int, scale: float) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g) * scale)

        self.time_channels = time_channels
        self.w1 = draw(hidden, inputs, 3, 3, scale=(inputs * 9) ** -0.5)
        self.b1 = draw(hidden, scale=0.1)
        self.w_time = draw(hidden, time_channels, scale=time_channels**-0.5)
        self.w2 = draw(6, hidden, 3, 3, scale=(hidden * 9) ** -0.5)
        self.b2 = draw(6, scale=0.1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, source: torch.Tensor, pose: torch.Tensor, *,
                keep_source: torch.Tensor | None = None, keep_pose: torch.Tensor | None = None) -> torch.Tensor:
        if keep_source is not None:
            source = source * keep_source.view(-1, 1, 1, 1).to(source.dtype)
        if keep_pose is not None:
            pose = pose * keep_pose.view(-1, 1, 1, 1).to(pose.dtype)
        half = self.time_channels // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        angles = t.float()[:, None] * freqs[None]
        embedding = torch.cat([angles.cos(), angles.sin()], dim=1) @ self.w_time.T
        h = F.conv2d(torch.cat([x_t, pose, source], dim=1), self.w1, self.b1, padding=1)
        h = F.silu(h + embedding[:, :, None, None])
        return F.conv2d(h, self.w2, self.b2, padding=1)


@pytest.fixture(scope="module")
def reference() -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config = json.loads((DATA / "diffusion_reference.json").read_text())
    return config, load_file(str(DATA / "diffusion_reference.safetensors"))


@pytest.fixture(scope="module")
def diffusion(reference) -> Diffusion:
    schedule = reference[0]["schedule"]
    return Diffusion(linear_betas(schedule["num_steps"], schedule["start"], schedule["end"]))


def _net(config: dict) -> TinyDenoiser:
    return TinyDenoiser(config["net_seed"], pose_channels=config["pose_channels"])


# Measured against the official outputs (CPU, torch 2.14, this machine): the buffers agree to 1e-13 relative; the
# DDIM (both etas) and DDPM samples and the gradients are bit-identical; loss and vb differ by 3.3e-8 and 1.8e-8 of
# their largest value (the KL's terms summed in another order). 1e-5 relative to the largest magnitude is asserted:
# the DDIM samples reach |x| ~ 290 (an untrained net's noise estimate over sqrt(abar) ~ 0.02 at step 900), and other
# builds or devices may round differently.
RTOL = 1e-5


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    scale = expected.abs().max().clamp(min=1e-12)
    error = ((actual.double() - expected.double()).abs().max() / scale).item()
    assert error <= rtol, f"largest difference {error:.2e} of the largest magnitude {scale.item():.3g}"


def test_buffers_equal_the_official_float64_ones(reference, diffusion) -> None:
    _, ref = reference
    for name in ("alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
                 "posterior_mean_coef2"):
        ours = getattr(diffusion, name)
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, ref[f"buffer.{name}"], rtol=1e-13, atol=0, msg=name)


def test_training_losses_and_gradients_match_the_official(reference, diffusion) -> None:
    config, ref = reference
    net = _net(config)
    keep_source = ref["official_keep_source"]
    assert not keep_source.all(), "the reference should exercise a dropped source"
    terms = diffusion.training_losses(net, ref["x_start"], ref["t"], ref["source"], ref["pose"], ref["noise"],
                                      keep_source=keep_source, keep_pose=torch.ones_like(keep_source))
    assert set(terms) == {"loss", "mse", "vb"} and all(v.shape == (config["batch"],) for v in terms.values())
    for name in ("loss", "mse", "vb"):
        _close(terms[name].detach(), ref[name])
    # t = 0 takes the decoder's likelihood, every other step the KL; the reference holds both.
    assert config["t"][0] == 0 and ref["vb"][0] > 1.0
    terms["loss"].sum().backward()
    for name, parameter in net.named_parameters():
        _close(parameter.grad, ref[f"grad.{name}"])


def test_vb_does_not_train_the_noise_prediction(reference, diffusion) -> None:
    config, ref = reference
    x_start = ref["x_start"]
    output = torch.randn(x_start.shape[0], 6, *x_start.shape[2:], requires_grad=True)
    x_t = diffusion.q_sample(x_start, ref["t"], ref["noise"])
    diffusion.variational_bound(torch.cat([output[:, :3].detach(), output[:, 3:]], 1), x_start, x_t,
                                ref["t"]).sum().backward()
    assert output.grad[:, :3].abs().max() == 0 and output.grad[:, 3:].abs().max() > 0


def test_source_mask_is_the_official_draw_from_the_same_seed(reference) -> None:
    config, ref = reference
    generator = torch.Generator().manual_seed(config["mask_seed"])
    keep_source, keep_pose = draw_keep_masks(config["batch"], generator, source_drop=config["guidance_prob"])
    assert torch.equal(keep_source, ref["official_keep_source"])
    assert keep_pose.all()


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_the_official_ddim_steps(reference, diffusion, eta: float) -> None:
    config, ref = reference
    n = config["sample_batch"]
    seed = config["ddim_seed"] if eta == 0 else config["ddim_eta_seed"]
    guidance = Guidance(appearance_scale=config["cond_scale"])
    sample = ddim_sample(_net(config), diffusion, ref["source"][:n], ref["pose"][:n],
                         torch.Generator().manual_seed(seed), steps=config["ddim"]["steps"], eta=eta, guidance=guidance)
    assert sample.dtype == torch.float32
    _close(sample, ref[f"ddim_eta{eta}"])


def test_ddpm_matches_the_official_p_sample_loop(reference) -> None:
    config, ref = reference
    n, schedule = config["sample_batch"], config["ddpm_schedule"]
    short = Diffusion(linear_betas(schedule["num_steps"], schedule["start"], schedule["end"]))
    sample = ddpm_sample(_net(config), short, ref["source"][:n], ref["pose"][:n],
                         torch.Generator().manual_seed(config["ddpm_seed"]),
                         guidance=Guidance(appearance_scale=config["cond_scale"]))
    _close(sample, ref["ddpm"])
    assert sample.abs().max() <= 1.0 + 1e-6  # the last step's mean is the clamped x_0 prediction


class CountingNet(nn.Module):
    """The tiny net, counting its forward calls and the batch sizes they saw."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x_t, t, source, pose, **keep):
        self.batches.append(x_t.shape[0])
        return self.net(x_t, t, source, pose, **keep)


def _inputs(reference, n: int = 3):
    config, ref = reference
    x_t = ref["noise"][:n]
    return x_t, ref["t"][1:n + 1], ref["source"][:n], ref["pose"][:n]


def _prediction(net, inputs, keep_source: bool, keep_pose: bool) -> torch.Tensor:
    x_t, t, source, pose = inputs
    n = x_t.shape[0]
    return net(x_t, t, source, pose, keep_source=torch.full((n,), keep_source),
               keep_pose=torch.full((n,), keep_pose))


def test_official_form_at_scale_one_is_the_plain_conditional_prediction(reference) -> None:
    net, inputs = CountingNet(_net(reference[0])), _inputs(reference)
    guided = guided_output(net, *inputs, Guidance(pose_scale=1.0, appearance_scale=1.0))
    assert torch.equal(guided, _prediction(net.net, inputs, True, True))
    assert net.batches == [3]


def test_official_form_is_cond_scale_guidance_in_one_forward(reference) -> None:
    net, inputs = CountingNet(_net(reference[0])), _inputs(reference)
    with torch.no_grad():
        guided = guided_output(net, *inputs, Guidance(pose_scale=5.0, appearance_scale=2.0))
        conditional, null_source = _prediction(net.net, inputs, True, True), _prediction(net.net, inputs, False, True)
    torch.testing.assert_close(guided, null_source + (conditional - null_source) * 2.0)
    assert net.batches == [6]  # both predictions in one forward; pose_scale has no effect in this form
    torch.testing.assert_close(guided_output(net, *inputs, Guidance(pose_scale=0.0, appearance_scale=2.0)), guided)


def test_paper_form_is_equation_6_in_one_forward(reference) -> None:
    net, inputs = CountingNet(_net(reference[0])), _inputs(reference)
    with torch.no_grad():
        uncond = _prediction(net.net, inputs, False, False)
        pose_term = _prediction(net.net, inputs, False, True) - uncond
        style_term = _prediction(net.net, inputs, True, False) - uncond
        guided = guided_output(net, *inputs, Guidance(pose_scale=2.0, appearance_scale=3.0, null_pose=True))
        torch.testing.assert_close(guided, uncond + 2.0 * pose_term + 3.0 * style_term)
        assert net.batches == [9]
        # At scales (1, 1) the equation gives e(p, 0) + e(0, s) - e(0, 0), which is the conditional prediction
        # only for a network additive in its two conditions; this one is not.
        ones = guided_output(net, *inputs, Guidance(pose_scale=1.0, appearance_scale=1.0, null_pose=True))
        torch.testing.assert_close(ones, uncond + pose_term + style_term)
        assert (ones - _prediction(net.net, inputs, True, True)).abs().max() > 1e-3
        # Scales (0, 0): the unconditional prediction, from one forward of B samples.
        net.batches.clear()
        zeros = guided_output(net, *inputs, Guidance(pose_scale=0.0, appearance_scale=0.0, null_pose=True))
        assert torch.equal(zeros, uncond) and net.batches == [3]


def test_guidance_is_recorded_as_a_dict() -> None:
    assert Guidance().as_dict() == {"pose_scale": 2.0, "appearance_scale": 2.0, "null_pose": False}


@pytest.mark.parametrize("sampler", ["ddim", "ddim_eta", "ddpm"])
def test_samples_are_determined_by_the_generator_seed(reference, sampler: str) -> None:
    config, ref = reference
    net, source, pose = _net(config), ref["source"][:2], ref["pose"][:2]
    short = Diffusion(linear_betas(10))

    def sample(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        if sampler == "ddpm":
            return ddpm_sample(net, short, source, pose, generator)
        return ddim_sample(net, short, source, pose, generator, steps=5, eta=0.5 if sampler == "ddim_eta" else 0.0)

    first = sample(3)
    assert torch.equal(first, sample(3))
    assert (first - sample(4)).abs().max() > 1e-3


def test_ddim_timesteps_are_the_official_sequence() -> None:
    assert ddim_timesteps(1000, 10) == list(range(0, 1000, 100))
    assert ddim_timesteps(1000, 50)[-1] == 980
    assert len(ddim_timesteps(1000, 30)) == 31  # 1000 // 30 = 33 apart
    with pytest.raises(TrainError, match="DDIM: steps"):
        ddim_timesteps(1000, 0)


def test_keep_mask_rates() -> None:
    n = 40_000
    keep_source, keep_pose = draw_keep_masks(n, torch.Generator().manual_seed(0), source_drop=0.1, pose_drop=0.3)
    assert keep_source.dtype == torch.bool and keep_source.shape == (n,)
    # Four standard deviations of a binomial rate over 40,000 draws: about 0.006 at 0.1 and 0.009 at 0.3.
    assert abs((~keep_source).float().mean().item() - 0.1) < 4 * math.sqrt(0.1 * 0.9 / n)
    assert abs((~keep_pose).float().mean().item() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    both = (~keep_source & ~keep_pose).float().mean().item()
    assert abs(both - 0.03) < 4 * math.sqrt(0.03 * 0.97 / n)  # drawn independently
    keep_source, keep_pose = draw_keep_masks(1000, torch.Generator().manual_seed(0))
    assert keep_pose.all() and not keep_source.all()  # the official setting never drops the pose
    with pytest.raises(TrainError, match="source_drop"):
        draw_keep_masks(4, torch.Generator(), source_drop=1.5)


class Oracle:
    """A network that knows the clean image: from x_t it returns the exact noise or velocity that x_t hides
    (``prediction``), and zeros for the variance channels; whatever the conditions, so guidance changes nothing."""

    def __init__(self, diffusion: Diffusion, x_start: torch.Tensor) -> None:
        self.diffusion, self.x_start = diffusion, x_start

    def __call__(self, x_t, t, source, pose, **keep):
        a = self.diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_start = self.x_start.repeat(len(x_t) // len(self.x_start), 1, 1, 1)  # guidance's blocks of the batch
        noise = (x_t.double() - a.sqrt() * x_start) / (1.0 - a).sqrt()
        wanted = a.sqrt() * noise - (1.0 - a).sqrt() * x_start if self.diffusion.prediction == "velocity" \
            else noise
        return torch.cat([wanted, torch.zeros_like(wanted)], dim=1).to(x_t.dtype)


@pytest.mark.parametrize("prediction", ["noise", "velocity"])
def test_an_exact_prediction_recovers_the_image_by_either_parameterisation(reference, prediction: str) -> None:
    """Given the exact noise or velocity, the loss is zero, the predicted x_0 is the image at every step, and DDIM
    (any eta) and DDPM return the image; a network predicting the other quantity does not."""
    config, ref = reference
    schedule = config["schedule"]
    diffusion = Diffusion(linear_betas(schedule["num_steps"], schedule["start"], schedule["end"]), prediction)
    x_start = ref["x_start"].double()
    source, pose, noise, t = ref["source"].double(), ref["pose"].double(), ref["noise"].double(), ref["t"]
    oracle = Oracle(diffusion, x_start)
    terms = diffusion.training_losses(oracle, x_start, t, source, pose, noise)
    assert terms["mse"].max() < 1e-20
    x_t = diffusion.q_sample(x_start, t, noise)
    torch.testing.assert_close(diffusion.p_mean_log_variance(oracle(x_t, t, source, pose), x_t, t, clip=False)[2],
                               x_start, rtol=0, atol=1e-9)
    for eta in (0.0, 0.5):
        image = ddim_sample(oracle, diffusion, source, pose, torch.Generator().manual_seed(0), steps=10, eta=eta)
        torch.testing.assert_close(image, x_start, rtol=0, atol=1e-9)
    short = Diffusion(linear_betas(10), prediction)
    image = ddpm_sample(Oracle(short, x_start), short, source, pose, torch.Generator().manual_seed(0))
    torch.testing.assert_close(image, x_start.clamp(-1, 1).float(), rtol=0, atol=1e-6)  # DDPM draws float32 noise
    other = Oracle(Diffusion(diffusion.betas, "velocity" if prediction == "noise" else "noise"), x_start)
    wrong = diffusion.p_mean_log_variance(other(x_t, t, source, pose), x_t, t, clip=False)[2]
    assert (wrong - x_start).abs().max() > 0.5


def test_an_unknown_prediction_is_refused() -> None:
    with pytest.raises(TrainError, match="prediction must be one of noise, velocity, got 'x0'"):
        Diffusion(linear_betas(10), "x0")


def test_bad_network_output_and_schedule_are_one_line_errors(reference, diffusion) -> None:
    config, ref = reference

    def three_channels(x_t, t, source, pose, **keep):
        return x_t

    with pytest.raises(TrainError, match=r"network returned \(6, 3, 8, 8\)"):
        diffusion.training_losses(three_channels, ref["x_start"], ref["t"], ref["source"], ref["pose"], ref["noise"])
    with pytest.raises(TrainError, match="schedule"):
        linear_betas(1000, 2e-2, 1e-4)


@pytest.mark.gpu
def test_cuda_matches_the_official_cpu_numbers(reference) -> None:
    """On CUDA with a CPU generator: the same noise, so the official CPU samples and losses within 1e-4 relative
    (float32 convolutions without TF32; the tolerance is a guess until the first GPU run measures it)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    config, ref = reference
    cuda = {k: v.cuda() for k, v in ref.items()}
    schedule, n = config["schedule"], config["sample_batch"]
    diffusion = Diffusion(linear_betas(schedule["num_steps"], schedule["start"], schedule["end"])).to("cuda")
    net, guidance = _net(config).cuda(), Guidance(appearance_scale=config["cond_scale"])
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        keep = cuda["official_keep_source"]
        terms = diffusion.training_losses(net, cuda["x_start"], cuda["t"], cuda["source"], cuda["pose"],
                                          cuda["noise"], keep_source=keep, keep_pose=torch.ones_like(keep))
        sample = ddim_sample(net, diffusion, cuda["source"][:n], cuda["pose"][:n],
                             torch.Generator().manual_seed(config["ddim_seed"]), steps=config["ddim"]["steps"],
                             guidance=guidance)
    _close(terms["loss"].detach().cpu(), ref["loss"], rtol=1e-4)
    _close(sample.cpu(), ref["ddim_eta0.0"], rtol=1e-4)
