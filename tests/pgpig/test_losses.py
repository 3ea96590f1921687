"""``pgpig.losses``: the VGG-19 layer map against torchvision's architecture, weight loading (and its refusals),
perceptual, content/style and Gram, PG2's masked L1 and the adversarial losses by hand."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from pgpig.errors import TrainError
from pgpig.losses import (
    GFLA_PERCEPTUAL_LAYERS,
    GFLA_STYLE_LAYERS,
    VGG19_IMAGENET_URL,
    VGG19_LAYERS,
    PerceptualLoss,
    VGG19Features,
    adversarial_loss,
    gram_matrix,
    l1_loss,
    masked_l1,
    vgg19_features,
    vgg_content_style,
)

NAMED = ("conv1_2", "relu1_1", "relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_1")
CHANNELS = {"conv1_2": 64, "relu1_1": 64, "relu1_2": 64, "relu2_2": 128, "relu3_4": 256, "relu4_4": 512,
            "relu5_1": 512}
POOLS_BEFORE = {"conv1_2": 0, "relu1_1": 0, "relu1_2": 0, "relu2_2": 1, "relu3_4": 2, "relu4_4": 3, "relu5_1": 4}


class NotATensor:
    """A Python object that ``torch.load(weights_only=True)`` must refuse to rebuild."""

    def __init__(self) -> None:
        self.payload = 1


def images(seed: int, shape=(2, 3, 32, 32)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def random_vgg19() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg19(weights=None).eval()


@pytest.fixture(scope="module")
def vgg() -> VGG19Features:
    torch.manual_seed(1)
    return VGG19Features(NAMED + GFLA_PERCEPTUAL_LAYERS + GFLA_STYLE_LAYERS, weights=None, allow_random=True)


# ---------------------------------------------------------------------------------------------------- layer map


def test_layer_map_matches_torchvision_vgg19(random_vgg19):
    # walk the real module list independently of torchvision's cfg: count convs within a block, pools between
    expected, block, conv = {}, 1, 0
    for index, module in enumerate(random_vgg19.features):
        if isinstance(module, nn.Conv2d):
            conv += 1
            expected[f"conv{block}_{conv}"] = index
        elif isinstance(module, nn.ReLU):
            expected[f"relu{block}_{conv}"] = index
        else:
            assert isinstance(module, nn.MaxPool2d)
            expected[f"pool{block}"] = index
            block, conv = block + 1, 0
    assert VGG19_LAYERS == expected
    assert {name: VGG19_LAYERS[name] for name in ("relu1_1", "conv1_2", "relu1_2", "relu2_2", "relu3_4", "relu4_4",
                                                   "relu5_1", "relu5_2", "relu5_4")} == {
        "relu1_1": 1, "conv1_2": 2, "relu1_2": 3, "relu2_2": 8, "relu3_4": 17, "relu4_4": 26, "relu5_1": 29,
        "relu5_2": 31, "relu5_4": 35}
    for name, channels in CHANNELS.items():
        conv_index = VGG19_LAYERS[name] - (1 if name.startswith("relu") else 0)
        assert random_vgg19.features[conv_index].out_channels == channels, name


@pytest.mark.parametrize("depth", [1, 4, 37])
def test_own_vgg19_stack_is_torchvisions_layer_for_layer(random_vgg19, depth):
    torch.manual_seed(3)
    ours = vgg19_features(depth)
    theirs = random_vgg19.features[:depth]
    assert len(ours) == depth
    for mine, reference in zip(ours, theirs, strict=True):
        assert type(mine) is type(reference)
        if isinstance(mine, nn.Conv2d):
            assert (mine.in_channels, mine.out_channels, mine.kernel_size, mine.stride, mine.padding) == (
                reference.in_channels, reference.out_channels, reference.kernel_size, reference.stride,
                reference.padding)
        elif isinstance(mine, nn.MaxPool2d):
            assert (mine.kernel_size, mine.stride) == (reference.kernel_size, reference.stride)
        else:
            assert not mine.inplace  # a conv output the loss returns must survive the next ReLU
    # the same fresh weights as torchvision's own feature builder draws from the same seed
    torch.manual_seed(3)
    drawn = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])[:depth].state_dict()
    assert all(torch.equal(drawn[key], value) for key, value in ours.state_dict().items())
    assert VGG19_IMAGENET_URL == torchvision.models.VGG19_Weights.IMAGENET1K_V1.url


def test_features_shapes_channels_and_frozen(vgg):
    x = images(0, (2, 3, 64, 48)).requires_grad_(True)
    out = vgg(x)
    assert set(out) == set(vgg.layers)
    for name in NAMED:
        scale = 2 ** POOLS_BEFORE[name]
        assert out[name].shape == (2, CHANNELS[name], 64 // scale, 48 // scale), name
    # conv1_2 is the convolution's output (signed), not overwritten by the in-place ReLU after it
    assert (out["conv1_2"] < 0).any() and torch.equal(out["relu1_2"], out["conv1_2"].clamp_min(0))
    assert len(vgg.features) == VGG19_LAYERS["relu5_2"] + 1  # truncated at the deepest requested layer
    assert not any(p.requires_grad for p in vgg.parameters())
    nn.Sequential(vgg).train()
    assert not vgg.training
    sum(o.float().square().mean() for o in out.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


def test_unknown_layer_is_an_error():
    with pytest.raises(ValueError, match="relu6_1"):
        VGG19Features(["relu6_1"], weights=None, allow_random=True)


# ---------------------------------------------------------------------------------------------------- weights


def test_no_weights_without_allow_random():
    with pytest.raises(TrainError, match="--vgg-weights"):
        VGG19Features(["relu1_1"], weights=None)


def test_missing_file_names_file_and_option(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(TrainError) as info:
        VGG19Features(["relu1_1"], weights=path)
    assert str(path) in str(info.value) and "--vgg-weights" in str(info.value)


def test_imagenet_offline_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(TrainError) as info:
        VGG19Features(["relu1_1"])
    message = str(info.value)
    assert "\n" not in message and "--vgg-weights" in message
    assert str(tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in message


def test_imagenet_from_hub_cache(tmp_path, monkeypatch, random_vgg19):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    features_only = {f"features.{k}": v for k, v in random_vgg19.features.state_dict().items()}
    torch.save(features_only, tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    loaded = VGG19Features(["relu1_2"])
    assert torch.equal(loaded.features[2].weight, random_vgg19.features[2].weight)


@pytest.mark.parametrize("form", ["full.pth", "full.safetensors", "features.pth", "features.safetensors",
                                  "bare.pth"])
def test_saved_state_dict_reproduces_features(tmp_path, random_vgg19, form):
    kind, suffix = form.split(".")
    if kind == "full":
        state = random_vgg19.state_dict()
    elif kind == "features":
        state = {f"features.{k}": v for k, v in random_vgg19.features.state_dict().items()}
    else:  # the state dict of vgg19().features itself: keys "0.weight", ...
        state = random_vgg19.features.state_dict()
    path = tmp_path / form
    if suffix == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)

    layers = ("conv1_2", "relu2_2", "relu3_1")
    loaded = VGG19Features(layers, weights=path)
    x = images(3)
    out = loaded(x)
    normalised = ((x + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        for name in layers:
            want = random_vgg19.features[: VGG19_LAYERS[name] + 1](normalised.clone())
            torch.testing.assert_close(out[name], want, rtol=1e-5, atol=1e-5)


def test_wrong_shapes_named(tmp_path, random_vgg19):
    state = {f"features.{k}": v for k, v in random_vgg19.features.state_dict().items()}
    state["features.2.weight"] = torch.zeros(32, 64, 3, 3)
    path = tmp_path / "bad_shapes.pth"
    torch.save(state, path)
    with pytest.raises(TrainError, match="bad_shapes.pth.*features.2.weight"):
        VGG19Features(["relu1_2"], weights=path)


def test_wrong_keys_named(tmp_path):
    path = tmp_path / "other_model.safetensors"
    save_file({"encoder.weight": torch.zeros(3)}, str(path))
    with pytest.raises(TrainError, match="other_model.safetensors"):
        VGG19Features(["relu1_2"], weights=path)


def test_pickled_object_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "extra": NotATensor()}, path)
    with pytest.raises(TrainError, match="evil.pth"):
        VGG19Features(["relu1_1"], weights=path)
    # the refusal comes from weights_only itself, not from a check after unpickling
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        torch.load(path, weights_only=True)


def test_non_tensor_values_refused(tmp_path):
    path = tmp_path / "strings.pth"
    torch.save({"features.0.weight": "not a tensor"}, path)
    with pytest.raises(TrainError, match="strings.pth.*not a state dict of tensors"):
        VGG19Features(["relu1_1"], weights=path)


# ---------------------------------------------------------------------------------------------------- VGG losses


def style(vgg: VGG19Features, layers: tuple[str, ...] = GFLA_STYLE_LAYERS):
    """GFLA's style loss of two images: ``vgg_content_style``'s style term, the target's features without gradient."""

    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = vgg(target)
        return vgg_content_style(vgg(pred), target_features, (), layers)[1]

    return loss


def test_perceptual_and_style_zero_on_identical_positive_on_different(vgg):
    perceptual = PerceptualLoss(GFLA_PERCEPTUAL_LAYERS, vgg=vgg)
    mse = PerceptualLoss(("conv1_2", "relu2_2"), layer_weights=(1.0, 0.5), criterion="mse", vgg=vgg)
    a, b = images(1), images(2)
    for loss in (perceptual, mse, style(vgg)):
        assert loss(a, a).item() == 0
        assert loss(a, b).item() > 0


def test_content_and_style_are_the_sums_over_their_layers(vgg):
    fa, fb = vgg(images(4)), vgg(images(5))
    content, style_term = vgg_content_style(fa, fb)  # GFLA's layers by default
    torch.testing.assert_close(content, sum((fa[n] - fb[n]).abs().mean() for n in GFLA_PERCEPTUAL_LAYERS))
    torch.testing.assert_close(style_term, sum((gram_matrix(fa[n]) - gram_matrix(fb[n])).abs().mean()
                                               for n in GFLA_STYLE_LAYERS))
    assert vgg_content_style(fa, fb, (), ()) == (0, 0)


def test_perceptual_gradient_reaches_prediction_only(vgg):
    perceptual = PerceptualLoss(("relu2_2",), vgg=vgg)
    pred, target = images(1).requires_grad_(True), images(2).requires_grad_(True)
    perceptual(pred, target).backward()
    assert pred.grad.abs().sum() > 0 and target.grad is None


def test_perceptual_matches_manual_sum(vgg):
    a, b = images(4), images(5)
    fa, fb = vgg(a), vgg(b)
    want = 2.0 * (fa["relu1_1"] - fb["relu1_1"]).abs().mean() + 0.5 * (fa["relu2_2"] - fb["relu2_2"]).abs().mean()
    got = PerceptualLoss(("relu1_1", "relu2_2"), layer_weights=(2.0, 0.5), vgg=vgg)(a, b)
    torch.testing.assert_close(got, want)


def test_loss_refuses_vgg_without_layer():
    small = VGG19Features(["relu1_1"], weights=None, allow_random=True)
    with pytest.raises(ValueError, match="relu2_2"):
        PerceptualLoss(("relu2_2",), vgg=small)


def test_gram_matrix_against_einsum():
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    n = x.numpy()
    want = np.einsum("bchw,bdhw->bcd", n, n) / (5 * 4 * 3)
    np.testing.assert_allclose(gram_matrix(x).numpy(), want, rtol=1e-12)


def test_style_loss_invariant_to_pixel_permutation():
    # the Gram matrix sums over positions, so permuting the positions of a feature map leaves it unchanged
    f = torch.randn(2, 8, 6, 5)
    shuffled = f.flatten(2)[:, :, torch.randperm(30)].reshape(2, 8, 6, 5)
    assert not torch.allclose(shuffled, f)
    torch.testing.assert_close(gram_matrix(shuffled), gram_matrix(f))
    # through the loss: with conv1_1 reduced to its centre tap, relu1_1 is per pixel, so shuffling the pixels of an
    # image shuffles its features: the style loss does not see it, the perceptual loss does
    pointwise = VGG19Features(["relu1_1"], weights=None, allow_random=True)
    with torch.no_grad():
        centre = pointwise.features[0].weight[:, :, 1, 1].clone()
        pointwise.features[0].weight.zero_()
        pointwise.features[0].weight[:, :, 1, 1] = centre
    a = images(6, (1, 3, 8, 8))
    b = a.flatten(2)[:, :, torch.randperm(64)].reshape(1, 3, 8, 8)
    assert style(pointwise, ("relu1_1",))(a, b).item() == pytest.approx(0, abs=1e-6)
    assert PerceptualLoss(("relu1_1",), vgg=pointwise)(a, b).item() > 1e-3


def test_vgg_losses_under_bf16_autocast(vgg):
    a, b = images(1), images(2)
    perceptual = PerceptualLoss(("relu1_2", "relu2_2"), vgg=vgg)
    style_loss = style(vgg, ("relu2_2",))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert vgg(a)["relu2_2"].dtype == torch.bfloat16
        p, s = perceptual(a, b), style_loss(a, b)
        g = gram_matrix(vgg(a)["relu2_2"])
    assert p.dtype == s.dtype == g.dtype == torch.float32
    torch.testing.assert_close(p, perceptual(a, b), rtol=0.05, atol=0)
    torch.testing.assert_close(s, style_loss(a, b), rtol=0.1, atol=0)


# ---------------------------------------------------------------------------------------------------- pixel losses


def test_masked_l1_by_hand():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).repeat(1, 2, 1, 1)  # (1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # (1, 1, 2, 2)
    # weights 2, 1, 1, 2 per pixel, both channels: (2 + 2 + 3 + 8) * 2 / 8
    assert masked_l1(pred, target, mask).item() == pytest.approx(15 * 2 / 8)
    # PG2's own form: mean(|d|) + mean(|d| * M)
    d = (pred - target).abs()
    assert masked_l1(pred, target, mask).item() == pytest.approx((d.mean() + (d * mask).mean()).item())
    assert masked_l1(pred, target, mask, weight_outside=0).item() == pytest.approx((1 + 4) * 2 / 8)
    assert l1_loss(pred, target).item() == pytest.approx(10 * 2 / 8)
    with pytest.raises(ValueError, match="mask"):
        masked_l1(pred, target, mask[:, :, :1])


def test_masked_l1_under_autocast():
    pred, target = images(1), images(2)
    mask = (images(3, (2, 1, 32, 32)) > 0).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = masked_l1(pred, target, mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, masked_l1(pred, target, mask))


# ---------------------------------------------------------------------------------------------------- adversarial


LOGITS = torch.tensor([-2.0, -0.5, 0.5, 3.0])


def grad_of(kind: str, target_is_real: bool, for_discriminator: bool) -> tuple[float, torch.Tensor]:
    logits = LOGITS.clone().requires_grad_(True)
    loss = adversarial_loss(logits, target_is_real, kind, for_discriminator)
    loss.backward()
    return loss.item(), logits.grad


def test_hinge_by_hand():
    loss, grad = grad_of("hinge", True, True)  # relu(1 - x): 3, 1.5, 0.5, 0
    assert loss == pytest.approx(5 / 4)
    assert torch.equal(grad, torch.tensor([-0.25, -0.25, -0.25, 0.0]))  # push real logits up until the margin
    loss, grad = grad_of("hinge", False, True)  # relu(1 + x): 0, 0.5, 1.5, 4
    assert loss == pytest.approx(6 / 4)
    assert torch.equal(grad, torch.tensor([0.0, 0.25, 0.25, 0.25]))  # push fake logits down until the margin
    loss, grad = grad_of("hinge", True, False)  # generator: -mean(x)
    assert loss == pytest.approx(-1 / 4)
    assert torch.equal(grad, torch.full((4,), -0.25))
    with pytest.raises(ValueError, match="target_is_real=True"):
        adversarial_loss(LOGITS, False, "hinge", for_discriminator=False)


def test_vanilla_by_hand():
    loss, grad = grad_of("vanilla", True, True)
    want = np.mean(np.log1p(np.exp(-LOGITS.numpy())))  # -log(sigmoid(x))
    assert loss == pytest.approx(float(want), rel=1e-6)
    assert (grad < 0).all()
    loss, grad = grad_of("vanilla", False, True)
    assert loss == pytest.approx(float(np.mean(np.log1p(np.exp(LOGITS.numpy())))), rel=1e-6)
    assert (grad > 0).all()
    # the generator's non-saturating loss is the "real" target on fake logits, whatever for_discriminator says
    assert grad_of("vanilla", True, False)[0] == grad_of("vanilla", True, True)[0]
    # saturated logits stay finite (logits, not probabilities)
    assert torch.isfinite(adversarial_loss(torch.tensor([-200.0, 200.0]), True, "vanilla"))


def test_lsgan_by_hand():
    loss, grad = grad_of("lsgan", True, True)
    assert loss == pytest.approx(float(np.mean((LOGITS.numpy() - 1) ** 2)))
    assert torch.equal(grad.sign(), torch.tensor([-1.0, -1.0, -1.0, 1.0]))
    loss, grad = grad_of("lsgan", False, True)
    assert loss == pytest.approx(float(np.mean(LOGITS.numpy() ** 2)))
    assert torch.equal(grad.sign(), LOGITS.sign())


def test_adversarial_under_autocast_and_unknown_kind():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for kind in ("vanilla", "lsgan", "hinge"):
            assert adversarial_loss(LOGITS.bfloat16(), True, kind).dtype == torch.float32
    with pytest.raises(ValueError, match="wgan"):
        adversarial_loss(LOGITS, True, "wgan")
