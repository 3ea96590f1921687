"""The layout-keeping layers against torch's own: the reflection pad against ``F.pad(mode="reflect")`` and the
channels-last instance norm against ``F.instance_norm``: values, gradients, layouts, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgpig.models.layers import InstanceNorm2d, ReflectionPad2d, instance_norm_channels_last, reflection_pad2d


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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_instance_norm_matches_torch(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 7, 6, dtype=dtype) * 3 + 2).contiguous(memory_format=torch.channels_last)
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    norm = InstanceNorm2d(5)
    out = norm(mine)
    expected = F.instance_norm(ref, eps=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, expected, rtol=0, atol=tol)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(mine.grad, ref.grad, rtol=0, atol=tol)
    assert mine.grad.is_contiguous(memory_format=torch.channels_last)


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
