"""``pgpig.models.patn``: PATN's generator at the paper settings against the official key list and parameter count,
the official weights reproducing the official outputs, shapes and gradients at both data sets' sizes, the
discriminators' 256-channel output, and the registry."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
from generators import assert_forward_backward

from pgpig.errors import TrainError
from pgpig.models import available, create, register
from pgpig.models.patn import PAPER_SETTINGS, PATN, patn_appearance_discriminator, patn_shape_discriminator

# Sum of numel over the official netG's state-dict keys less the buffers (running_mean, running_var,
# num_batches_tracked), from tests/data/reference/official/state_dict_shapes.json (keys "patn/deepfashion" and
# "patn/market1501", tengteng95/Pose-Transfer at the paper settings). Batch norm adds affine parameters and drops
# the conv biases: the two counts differ by 7,744.
OFFICIAL_PARAMS = {"deepfashion": 41_358_019, "market1501": 41_365_763}
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _official_shapes(shared_reference) -> dict[str, dict[str, list[int]]]:
    return json.loads((shared_reference / "official" / "state_dict_shapes.json").read_text())


@pytest.mark.parametrize("dataset", ["deepfashion", "market1501"])
def test_generator_at_paper_settings_matches_the_official_state_dict(dataset, shared_reference):
    official = _official_shapes(shared_reference)[f"patn/{dataset}"]
    official_params = sum(math.prod(shape) for key, shape in official.items() if not key.endswith(BUFFER_SUFFIXES))
    assert official_params == OFFICIAL_PARAMS[dataset]

    model = create("patn", **PAPER_SETTINGS[dataset])
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[dataset]
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == official  # same keys, buffers included, same shapes
    buffers = {name for name, _ in model.named_buffers()}
    assert buffers == {key for key in official if key.endswith(BUFFER_SUFFIXES)}
    assert bool(buffers) == (dataset == "market1501")


def test_official_weights_reproduce_the_official_outputs(shared_reference):
    public = torch.load(shared_reference / "official" / "patn_public.pt", weights_only=True)
    c = public["constructor"]
    assert c["input_nc"] == [3, 36] and c["padding_type"] == "reflect" and c["use_dropout"]
    model = PATN(
        image_channels=c["output_nc"],
        pose_channels=c["input_nc"][1] // 2,
        ngf=c["ngf"],
        n_blocks=c["n_blocks"],
        norm=c["norm"],
        n_downsampling=c["n_downsampling"],
    ).eval()
    model.load_state_dict({key: value.float() for key, value in public["state_dict"].items()}, strict=True)

    image, poses = (x.float() for x in public["inputs"])
    with torch.no_grad():
        out = model(image, poses[:, :18], poses[:, 18:])
    expected = public["outputs"][0].float()
    assert out.shape == expected.shape == image.shape
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("norm", "size"), [("instance", (256, 176)), ("batch", (128, 64))])
def test_generator_forward_backward_shapes_and_gradients(norm, size):
    torch.manual_seed(0)
    model = create("patn", ngf=4, n_blocks=2, norm=norm).train()
    assert_forward_backward(model, size)


def test_dropout_zero_keeps_the_official_key_names():
    with_dropout = create("patn", ngf=4, n_blocks=2)
    without = create("patn", ngf=4, n_blocks=2, dropout=0.0).eval()
    assert with_dropout.state_dict().keys() == without.state_dict().keys()
    without.load_state_dict(with_dropout.state_dict())


def test_generator_output_depends_on_the_target_pose():
    torch.manual_seed(0)
    model = create("patn", ngf=4, n_blocks=2).eval()
    image, source_pose = torch.rand(1, 3, 32, 24), torch.rand(1, 18, 32, 24)
    with torch.no_grad():
        a = model(image, source_pose, torch.rand(1, 18, 32, 24))
        b = model(image, source_pose, torch.rand(1, 18, 32, 24))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_discriminators_end_in_a_256_channel_map(norm):
    image = torch.rand(2, 3, 128, 64)
    appearance = patn_appearance_discriminator(norm=norm)
    shape = patn_shape_discriminator(norm=norm)
    assert appearance.model[1].in_channels == 6 and shape.model[1].in_channels == 21
    for disc, condition in ((appearance, torch.rand(2, 3, 128, 64)), (shape, torch.rand(2, 18, 128, 64))):
        out = disc(image, condition)
        assert out.shape == (2, 256, 32, 16)  # no final 1-channel conv, as the official ResnetDiscriminator
        out.mean().backward()
        for name, parameter in disc.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_discriminator_parameter_counts_follow_the_norm():
    # Instance norm: convs with bias, no norm parameters; batch norm: no conv bias, affine weight and bias.
    # Stem 7x7 + two stride-2 convs + 3 residual blocks of two 3x3 256->256 convs, input 6 (D_A) or 21 (D_S).
    def count(in_channels: int, bias: bool) -> int:
        convs = [(in_channels, 64, 49), (64, 128, 9), (128, 256, 9)] + [(256, 256, 9)] * 6
        return sum(i * o * k + (o if bias else 2 * o) for i, o, k in convs)

    for norm, bias in (("instance", True), ("batch", False)):
        assert sum(p.numel() for p in patn_appearance_discriminator(norm=norm).parameters()) == count(6, bias)
        assert sum(p.numel() for p in patn_shape_discriminator(norm=norm).parameters()) == count(21, bias)


def test_registry_creates_by_name_and_names_the_choices_for_an_unknown_one():
    assert "patn" in available()
    assert isinstance(create("patn", ngf=4, n_blocks=1), PATN)
    with pytest.raises(TrainError, match=r"unknown model 'nope'.*patn"):
        create("nope")
    with pytest.raises(TrainError, match="unknown norm 'group'"):
        create("patn", norm="group")
    with pytest.raises(TrainError, match="registered twice"):
        register("patn")(torch.nn.Identity)


def test_every_registered_generator_keeps_the_registry_promise():
    # pgpig.models' docstring: every generator builds with its paper defaults, takes a base width ``ngf`` and has the
    # same forward inputs
    for name in available():
        with torch.device("meta"):
            model = create(name)
        assert "ngf" in inspect.signature(type(model)).parameters, name
        assert list(inspect.signature(model.forward).parameters)[:3] == ["source_image", "source_pose",
                                                                         "target_pose"], name
