"""The slice-copy reflection pad against torch's own ``F.pad(mode="reflect")``: values, gradients, layouts, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgpig.models.padding import ReflectionPad2d, reflection_pad2d


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
