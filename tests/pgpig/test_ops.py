"""``pgpig.models.ops``: GFLA's three CUDA ops in plain PyTorch, against the official kernels' own outputs.

The golden file ``tests/data/reference/gfla_ops_golden.pt`` holds the official CUDA ops' forward outputs and input
gradients (for a stored ``grad_output``) on fixed float32 inputs (README beside it). Both the fast ops and the slow
per-pixel references of ``tests/ops_reference.py`` must reproduce them. Largest differences measured for the fast
ops in float32 (development machine CPU, torch 2.14; H100, torch 2.11, the same to the digits shown but for one
gradient): resample2d 2.4e-7 (output, magnitude up to 0.98), 9.5e-7 / 6e-8 (source / flow gradients, magnitudes up
to 2.6 / 0.21); block_extractor 8.3e-7 and 1.9e-6 (2.4e-6 on the H100) / 2.1e-6 (gradient magnitudes up to 7.2 /
5.6); local_attn_reshape exactly 0. The float64 references: at most 7.4e-7 (resample2d) and 1.2e-6
(block_extractor), all in the gradients, i.e. the official kernels' own float32 rounding (atomic accumulation
order). The tolerance asserted is 1e-5, absolute.

Beyond the file: float64 ``gradcheck`` of each fast op, fast against reference on other parameters (dilation, odd
kernel, grids of different sizes, flows leaving the image), the kernels' geometry on images we can reason about
(zero and integer flows, borders, the block layout shared with ``local_attn_reshape``), autocast, and argument
errors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ops_reference import block_extractor_reference, local_attn_reshape_reference, resample2d_reference

from pgpig.models.ops import block_extractor, local_attn_reshape, resample2d

FAST = {"resample2d": resample2d, "block_extractor": block_extractor, "local_attn_reshape": local_attn_reshape}
REFERENCE = {
    "resample2d": resample2d_reference,
    "block_extractor": block_extractor_reference,
    "local_attn_reshape": local_attn_reshape_reference,
}
GOLDEN_ATOL = 1e-5


@pytest.fixture(scope="module")
def golden(shared_reference) -> list[dict]:
    data = torch.load(shared_reference / "gfla_ops_golden.pt", weights_only=True)
    assert {c["op"] for c in data["cases"]} == set(FAST)
    return data["cases"]


def _run(fn, inputs: list[torch.Tensor], params: dict, grad_output: torch.Tensor, dtype: torch.dtype):
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
    out = fn(*leaves, **params)
    out.backward(grad_output.to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("op", list(FAST))
def test_matches_official_kernels(golden, op, impl):
    case = next(c for c in golden if c["op"] == op)
    fn = FAST[op] if impl == "fast" else REFERENCE[op]
    dtype = torch.float32 if impl == "fast" else torch.float64
    out, grads = _run(fn, case["inputs"], case["params"], case["grad_output"], dtype)
    assert out.shape == case["output"].shape
    torch.testing.assert_close(out.double(), case["output"].double(), atol=GOLDEN_ATOL, rtol=0)
    for got, want in zip(grads, case["grads"], strict=True):
        torch.testing.assert_close(got.double(), want.double(), atol=GOLDEN_ATOL, rtol=0)


def test_golden_resample2d_needs_the_official_source_gradient(golden):
    """The file's flows leave the image on the left and top, where the official source gradient is not the derivative.

    The true derivative (the reference without the official rule) misses the stored gradient by far more than
    rounding, so the golden test above really checks that the fast op reproduces the official backward.
    """
    case = next(c for c in golden if c["op"] == "resample2d")
    first = [t[:1] for t in case["inputs"]]  # the first batch item is enough (and half the cost)
    _, grads = _run(
        lambda s, f, **p: resample2d_reference(s, f, official_source_grad=False, **p),
        first, case["params"], case["grad_output"][:1], torch.float64,
    )
    assert (grads[0] - case["grads"][0][:1].double()).abs().max() > 1e-2
    torch.testing.assert_close(grads[1], case["grads"][1][:1].double(), atol=GOLDEN_ATOL, rtol=0)


def _inputs(seed: int, c: int, hs: int, ws: int, h: int, w: int, flow_lo: float, flow_hi: float):
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(2, c, hs, ws, generator=g, dtype=torch.float64) * 2 - 1
    flow = torch.rand(2, 2, h, w, generator=g, dtype=torch.float64) * (flow_hi - flow_lo) + flow_lo
    return source, flow


@pytest.mark.parametrize(
    "params,sizes,flow_range",
    [
        ({"kernel_size": 2, "dilation": 1, "sigma": 5.0}, (6, 5, 4, 3), (-2.5, 2.5)),
        ({"kernel_size": 4, "dilation": 2, "sigma": 2.0}, (5, 7, 6, 4), (-3.0, 3.0)),
        ({"kernel_size": 3, "dilation": 1, "sigma": 1.0}, (4, 4, 3, 5), (-1.5, 4.0)),
    ],
)
def test_resample2d_fast_equals_reference(params, sizes, flow_range):
    """Other parameters than the golden case, source and flow grids of different sizes, flows leaving the image."""
    source, flow = _inputs(1, 3, *sizes, *flow_range)
    grad_out = torch.randn(2, 3, sizes[2], sizes[3], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out, grads = _run(resample2d, [source, flow], params, grad_out, torch.float64)
    out_ref, grads_ref = _run(resample2d_reference, [source, flow], params, grad_out, torch.float64)
    torch.testing.assert_close(out, out_ref, atol=1e-12, rtol=0)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_block_extractor_fast_equals_reference(kernel_size):
    source, flow = _inputs(3, 3, 5, 6, 4, 3, -3.0, 3.0)
    grad_out = torch.randn(2, 3, 4 * kernel_size, 3 * kernel_size, generator=torch.Generator().manual_seed(4),
                           dtype=torch.float64)
    out, grads = _run(block_extractor, [source, flow], {"kernel_size": kernel_size}, grad_out, torch.float64)
    out_ref, grads_ref = _run(block_extractor_reference, [source, flow], {"kernel_size": kernel_size}, grad_out,
                              torch.float64)
    torch.testing.assert_close(out, out_ref, atol=1e-12, rtol=0)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_gradcheck_resample2d():
    # sample points right of column 0 and below row 0, where the official source gradient is the true derivative;
    # they still cross the right and bottom borders (clamped taps)
    source, flow = _inputs(5, 2, 4, 5, 3, 4, 0.1, 2.9)
    source.requires_grad_(True)
    flow.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, f: resample2d(s, f, 4, 1, 2.0), (source, flow))
    assert torch.autograd.gradcheck(lambda s, f: resample2d(s, f, 2, 2, 0.7), (source, flow))


def test_gradcheck_block_extractor():
    source, flow = _inputs(6, 2, 4, 5, 3, 2, -2.0, 2.0)
    source.requires_grad_(True)
    flow.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, f: block_extractor(s, f, 3), (source, flow))
    assert torch.autograd.gradcheck(lambda s, f: block_extractor(s, f, 2), (source, flow))


def test_gradcheck_local_attn_reshape():
    x = torch.randn(1, 9, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: local_attn_reshape(t, 3), (x,))


def _image(h: int = 9, w: int = 8) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def test_resample2d_geometry():
    src = _image()
    zero = torch.zeros(1, 2, 9, 8, dtype=torch.float64)
    # a tiny sigma makes every tap but the nearest (distance 0 at integer points) underflow: a pure gather
    torch.testing.assert_close(resample2d(src, zero, 4, 1, 0.01), src, atol=0, rtol=0)
    # zero flow at sigma 2 is not the identity: the kernel-2 taps are the pixel and its right / lower neighbours
    e = torch.exp(torch.tensor(-1 / 8, dtype=torch.float64))
    pad = F.pad(src, (0, 1, 0, 1), mode="replicate")
    blur = pad[..., :-1, :-1] + e * pad[..., :-1, 1:] + e * pad[..., 1:, :-1] + e * e * pad[..., 1:, 1:]
    blur = blur / (1 + e) ** 2
    torch.testing.assert_close(resample2d(src, zero, 2, 1, 2.0), blur, atol=1e-12, rtol=0)
    # an integer flow (x +2, y -1) moves the image by that many pixels, away from the borders
    shift = zero.clone()
    shift[:, 0], shift[:, 1] = 2.0, -1.0
    torch.testing.assert_close(resample2d(src, shift, 4, 1, 0.01)[..., 1:, :-2], src[..., :-1, 2:], atol=0, rtol=0)
    moved, still = resample2d(src, shift, 4, 1, 2.0), resample2d(src, zero, 4, 1, 2.0)
    torch.testing.assert_close(moved[..., 2:, :-4], still[..., 1:-1, 2:-2], atol=1e-12, rtol=0)
    # far outside: every tap clamps to the border column / row
    left = zero.clone()
    left[:, 0] = -100.0
    torch.testing.assert_close(resample2d(src, left, 4, 1, 0.01), src[..., :1].expand_as(src), atol=0, rtol=0)
    below = zero.clone()
    below[:, 1] = 100.0
    torch.testing.assert_close(resample2d(src, below, 4, 1, 0.01), src[..., -1:, :].expand_as(src), atol=0, rtol=0)
    # normalised weights: a constant image stays constant under any flow
    flat = torch.full_like(src, 0.3)
    flow = torch.randn(1, 2, 5, 6, dtype=torch.float64) * 4
    torch.testing.assert_close(resample2d(flat, flow, 4, 2, 2.0), torch.full((1, 3, 5, 6), 0.3, dtype=torch.float64))


def _neighbourhoods(src: torch.Tensor, k: int) -> torch.Tensor:
    """Zero-flow blocks built independently: replicate-pad, unfold, tile each pixel's k x k patch in place."""
    b, c, h, w = src.shape
    before = k // 2
    padded = F.pad(src, (before, k - 1 - before, before, k - 1 - before), mode="replicate")
    patches = F.unfold(padded, k).reshape(b, c, k, k, h, w)
    return patches.permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * k, w * k)


@pytest.mark.parametrize("k", [3, 4, 5])
def test_block_extractor_geometry(k):
    # grid_sample's conversion to [-1, 1] and back rounds the sample points by ~1e-16 px in float64: atol 1e-12
    src = _image()
    zero = torch.zeros(1, 2, 9, 8, dtype=torch.float64)
    # zero flow: block (i, j) is the k x k neighbourhood of pixel (i, j), border pixels repeated
    torch.testing.assert_close(block_extractor(src, zero, k), _neighbourhoods(src, k), atol=1e-12, rtol=0)
    # an integer flow takes the blocks of the pixel it points to
    shift = zero.clone()
    shift[:, 0], shift[:, 1] = -2.0, 1.0
    moved = block_extractor(src, shift, k)[..., : 8 * k, 2 * k :]
    torch.testing.assert_close(moved, _neighbourhoods(src, k)[..., k:, : 6 * k], atol=1e-12, rtol=0)
    # a half-pixel flow averages two neighbourhoods (bilinear), where all of the block's points lie inside
    half = zero.clone()
    half[:, 0] = 0.5
    blocks = _neighbourhoods(src, k)[..., 2 * k : 5 * k]
    right = _neighbourhoods(src[..., 1:], k)[..., 2 * k : 5 * k]  # tile j here is pixel j + 1
    torch.testing.assert_close(block_extractor(src, half, k)[..., 2 * k : 5 * k], (blocks + right) / 2, atol=1e-12,
                               rtol=0)
    # far above the image: every block reads the top row (the columns are unchanged)
    up = zero.clone()
    up[:, 1] = -50.0
    top = _neighbourhoods(src[..., :1, :].expand_as(src), k)
    torch.testing.assert_close(block_extractor(src, up, k), top, atol=1e-12, rtol=0)


def test_local_attn_reshape_layout_matches_block_extractor():
    """One-hot attention on channel a*k + b picks offset (a - k//2, b - k//2), as ExtractorAttn relies on."""
    k, src = 3, _image()
    blocks = block_extractor(src, torch.zeros(1, 2, 9, 8, dtype=torch.float64), k)
    for a, b in [(1, 1), (0, 2), (2, 0)]:
        attn = torch.zeros(1, k * k, 9, 8, dtype=torch.float64)
        attn[:, a * k + b] = 1
        picked = F.avg_pool2d(local_attn_reshape(attn, k) * blocks, k, k) * k * k
        expected = F.pad(src, (1, 1, 1, 1), mode="replicate")[..., a : a + 9, b : b + 8]
        torch.testing.assert_close(picked, expected, atol=1e-12, rtol=0)
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    assert torch.equal(local_attn_reshape(x, 4), local_attn_reshape_reference(x, 4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", list(FAST))
def test_autocast_cpu(op, dtype):
    """Under autocast the ops compute in float32 and return the source's dtype.

    float32 inputs give the float32 result exactly (nothing is downcast inside); half inputs give the float32
    result of the same (rounded) inputs up to one rounding of the output to that dtype (2^-8 relative for
    bfloat16, 2^-11 for float16), and their gradients in that dtype.
    """
    g = torch.Generator().manual_seed(8)
    if op == "local_attn_reshape":
        inputs, params = [torch.randn(2, 9, 6, 5, generator=g)], {"kernel_size": 3}
    else:
        inputs = [torch.randn(2, 4, 12, 10, generator=g), torch.randn(2, 2, 12, 10, generator=g) * 3]
        params = {"kernel_size": 4, "sigma": 2.0} if op == "resample2d" else {"kernel_size": 3}
    fn = FAST[op]
    with torch.autocast("cpu", dtype=dtype):
        exact = fn(*inputs, **params)
    assert exact.dtype == torch.float32
    assert torch.equal(exact, fn(*inputs, **params))
    low = [t.to(dtype).requires_grad_(True) for t in inputs]
    with torch.autocast("cpu", dtype=dtype):
        out = fn(*low, **params)
    assert out.dtype == dtype
    want = fn(*[t.detach().float() for t in low], **params)
    unit = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    assert (out.float() - want).abs().max() <= unit * want.abs().max()
    out.float().square().sum().backward()
    assert all(t.grad.dtype == dtype and torch.isfinite(t.grad.float()).all() for t in low)


def test_argument_errors():
    with pytest.raises(ValueError, match="flow"):
        resample2d(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="kernel_size"):
        resample2d(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4), kernel_size=1)
    with pytest.raises(ValueError, match="flow"):
        block_extractor(torch.zeros(2, 3, 4, 4), torch.zeros(1, 2, 4, 4), 3)
    with pytest.raises(ValueError, match="3\\*3"):
        local_attn_reshape(torch.zeros(1, 8, 4, 4), 3)


def test_a_non_finite_flow_on_the_cpu_is_an_error_not_a_crash():
    """``grid_sample``'s CPU backward crashed the process (segmentation fault) on a NaN sample point, which a
    diverged flow estimator produces: block_extractor and GFLA's warp_image refuse such a flow first."""
    from pgpig.models.gfla import warp_image

    flow = torch.zeros(1, 2, 4, 4)
    flow[0, 0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="block_extractor: the flow holds NaN"):
        block_extractor(torch.zeros(1, 3, 4, 4), flow, 3)
    with pytest.raises(ValueError, match="warp_image: the flow holds NaN"):
        warp_image(torch.zeros(1, 3, 8, 8), flow.clone().fill_(float("inf")))
    block_extractor(torch.zeros(1, 3, 4, 4), flow.nan_to_num(), 3)  # finite: runs


@pytest.mark.gpu
@pytest.mark.parametrize("op", list(FAST))
def test_cuda_matches_official_kernels(golden, op):
    """On the GPU the golden file was made on: the same tolerance, and bfloat16 autocast runs."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    case = next(c for c in golden if c["op"] == op)
    leaves = [t.cuda().requires_grad_(True) for t in case["inputs"]]
    out = FAST[op](*leaves, **case["params"])
    out.backward(case["grad_output"].cuda())
    torch.testing.assert_close(out.cpu(), case["output"], atol=GOLDEN_ATOL, rtol=0)
    for leaf, want in zip(leaves, case["grads"], strict=True):
        torch.testing.assert_close(leaf.grad.cpu(), want, atol=GOLDEN_ATOL, rtol=0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = FAST[op](*[t.detach().bfloat16() for t in leaves], **case["params"])
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()
