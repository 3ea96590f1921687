"""The layout-keeping layers against torch's own: the reflection pad against ``F.pad(mode="reflect")`` and the
channels-last instance norm against ``F.instance_norm``: values, gradients, layouts, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgpig.models.layers import InstanceNorm2d, ReflectionPad2d, instance_norm_channels_last, reflection_pad2d

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_values_and_gradients_match_torch(p: int, channels_last: bool) -> None:
    torch.manual_seed(p)
    x = torch.randn(2, 5, 9, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = reflection_pad2d(mine, p)
    expected = F.pad(ref, (p, p, p, p), mode="reflect")
    assert out.shape == (2, 5, 9 + 2 * p, 7 + 2 * p)
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(mine.grad, ref.grad, rtol=0, atol=1e-12)
    assert mine.grad.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_unbatched_and_low_precision() -> None:
    x = torch.randn(4, 6, 5).to(torch.bfloat16)
    assert torch.equal(reflection_pad2d(x, 2), F.pad(x, (2, 2, 2, 2), mode="reflect"))


def test_double_backward() -> None:
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: reflection_pad2d(t, 2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: reflection_pad2d(t, 2) ** 2, (x,))


def test_module_is_a_reflection_pad_without_state() -> None:
    pad = ReflectionPad2d(3)
    assert isinstance(pad, nn.ReflectionPad2d) and pad.padding == (3, 3, 3, 3)
    assert pad.state_dict() == {}
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(pad(x), nn.ReflectionPad2d(3)(x))
    assert reflection_pad2d(x, 0) is x


def test_errors_name_the_shape() -> None:
    with pytest.raises(ValueError, match=r"height and width above 3, got \(3, 8\)"):
        reflection_pad2d(torch.zeros(1, 1, 3, 8), 3)
    with pytest.raises(ValueError, match="got shape"):
        reflection_pad2d(torch.zeros(8, 8), 1)
    with pytest.raises(TypeError):
        ReflectionPad2d((1, 2, 3, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_instance_norm_matches_torch(dtype: torch.dtype, affine: bool) -> None:
    torch.manual_seed(0)
    norm = InstanceNorm2d(5, affine=affine).to(dtype)
    reference = torch.nn.InstanceNorm2d(5, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            for module in (norm, reference):
                module.weight.copy_(torch.linspace(0.5, 2.0, 5))
                module.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    assert norm.state_dict().keys() == reference.state_dict().keys() == ({"weight", "bias"} if affine else set())
    x = (torch.randn(3, 5, 7, 6, dtype=dtype) * 3 + 2).contiguous(memory_format=torch.channels_last)
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = norm(mine), reference(ref)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, expected, rtol=0, atol=tol)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(mine.grad, ref.grad, rtol=0, atol=tol)
    assert mine.grad.is_contiguous(memory_format=torch.channels_last)
    if affine:
        torch.testing.assert_close(norm.weight.grad, reference.weight.grad, rtol=0, atol=tol * 10)
        torch.testing.assert_close(norm.bias.grad, reference.bias.grad, rtol=0, atol=tol * 10)


def test_affine_channels_last_instance_norm_gradients_and_arguments() -> None:
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight, bias = (torch.randn(5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(instance_norm_channels_last, (x, weight, bias))
    with pytest.raises(ValueError, match="both weight and bias"):
        instance_norm_channels_last(x, weight, None)


def test_channels_last_instance_norm_in_bfloat16_computes_in_float32() -> None:
    torch.manual_seed(1)
    x = (torch.randn(2, 4, 9, 8) * 5 + 40).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    out = instance_norm_channels_last(x)
    expected = F.instance_norm(x.float(), eps=1e-5)  # the statistics of the bf16 values, in float32
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=2 ** -7 * expected.abs().max().item())


def test_instance_norm_is_torchs_on_contiguous_inputs_and_keeps_an_empty_state() -> None:
    norm = InstanceNorm2d(4)
    assert isinstance(norm, nn.InstanceNorm2d) and not norm.affine and not norm.track_running_stats
    assert norm.state_dict() == {} and list(norm.parameters()) == []
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(norm(x), F.instance_norm(x))
    assert torch.equal(norm(x[0]), F.instance_norm(x[0][None])[0])  # unbatched (C, H, W)
    with pytest.raises(ValueError, match="expected 4 channels, got 3"):
        norm(torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last))


def test_the_channels_last_norm_has_exact_gradients_and_refuses_a_double_backward() -> None:
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(instance_norm_channels_last, (x,))
    (grad,) = torch.autograd.grad(instance_norm_channels_last(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def test_a_channels_last_patn_stays_channels_last_and_computes_the_same() -> None:
    """PATN (DeepFashion's instance norm) made channels-last: every convolution gets a channels-last input, as none
    would with torch's own pad and norm, and the output and gradients are those of the contiguous model."""
    from pgpig.models.patn import PATN

    torch.manual_seed(0)
    model = PATN(ngf=8, n_blocks=2, dropout=0.0).double()
    image, source_pose, target_pose = (torch.randn(2, c, 32, 24, dtype=torch.float64) for c in (3, 18, 18))
    want = model(image, source_pose, target_pose)
    want.square().sum().backward()
    want_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    layouts = []
    for conv in (m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))):
        conv.register_forward_pre_hook(
            lambda _m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    model = model.to(memory_format=torch.channels_last)
    got = model(*(t.contiguous(memory_format=torch.channels_last) for t in (image, source_pose, target_pose)))
    got.square().sum().backward()
    assert len(layouts) == 17 and all(layouts)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want_grads[name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize(("recipe", "size", "contiguous_convs"),
                         [("xinggan", (64, 48), 0), ("dptn", (64, 64), 2), ("gfla-stage2", (64, 64), 2)])
def test_channels_last_generators_keep_their_convolutions_channels_last(recipe, size, contiguous_convs) -> None:
    """The DeepFashion recipes' generators made channels-last: the convolutions' inputs stay channels-last but for
    at most ``contiguous_convs`` of them (after DPTN's and GFLA's attention reshapes), and the output is the
    contiguous model's. With torch's own pad and norm, at 256 px, 23 of DPTN's 31, 42 of GFLA's 58 and 77 of
    XingGAN's 79 were contiguous."""
    from pgpig import models
    from pgpig.config import load_config

    cfg = load_config(ROOT / "workflows" / "deepfashion" / f"{recipe}.yaml")
    torch.manual_seed(0)
    generator = models.objective_class(cfg.model)(cfg, torch.device("cpu")).build_generator(cfg, size).eval()
    inputs = [torch.randn(2, c, *size) for c in (3, 18, 18)]
    with torch.no_grad():
        want = generator(*inputs)
        layouts = []
        for conv in (m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))):
            conv.register_forward_pre_hook(
                lambda _m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        generator = generator.to(memory_format=torch.channels_last)
        got = generator(*(t.contiguous(memory_format=torch.channels_last) for t in inputs))
    assert layouts.count(False) <= contiguous_convs and len(layouts) > 20
    torch.testing.assert_close(got[0] if isinstance(got, tuple) else got,
                               want[0] if isinstance(want, tuple) else want, rtol=0, atol=1e-4)
