"""``pgpig.models.pidm``: PIDM's network against the official state-dict keys, shapes and parameter count at the
paper config, and against the official outputs at a reduced config (full condition, null source, per-sample source
mask, null pose); which weights train; the zero initialisation; the input checks.

``tests/data/pidm/official_shapes.json``: the official ``get_model_conf().make_model()`` state dict (key -> shape, in
order) and parameter count, built on the CPU from ankanbhunia/PIDM@e4f1d880772. ``reference_small.*``: the official
model at ``model_channels 32``, ``channel_mult (1, 1, 1)``, 2 res blocks, ``embed_channels 32``, attention at
resolutions (16, 8) of 32 (levels 1 and 2), random float16-exact weights (seed 20231), run on 2 inputs at 32x24 in
eval mode, float32, CPU (torch 2.14.1). Ours reproduced all four outputs with max abs differences 0.0, 0.0, 2.4e-6
(the mixed mask, where the official ran the two samples as separate batches) and 0.0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pgpig.errors import TrainError
from pgpig.models.pidm import PAPER_SETTINGS, PIDMUNet, UnusedWeights

DATA = Path(__file__).resolve().parents[1] / "data" / "pidm"


def small_model() -> tuple[PIDMUNet, dict[str, torch.Tensor]]:
    """Ours at the reference config, official weights loaded strictly, in eval mode; and the reference tensors."""
    config = json.loads((DATA / "reference_small.json").read_text())["ours"]
    model = PIDMUNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    tensors = load_file(DATA / "reference_small.safetensors")
    weights = {k.removeprefix("weights."): v.float() for k, v in tensors.items() if k.startswith("weights.")}
    model.load_state_dict(weights, strict=True)
    return model.eval(), tensors


def test_paper_config_has_the_official_keys_shapes_and_parameter_count() -> None:
    official = json.loads((DATA / "official_shapes.json").read_text())
    with torch.device("meta"):
        model = PIDMUNet(**PAPER_SETTINGS)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(official["keys"])
    assert ours == official["keys"]
    assert sum(p.numel() for p in model.parameters()) == official["parameters"] == 180_355_718
    # The official forward never reads 17,981,312 of them (docs/models/pidm.md lists which); ours freezes those.
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 162_374_406
    assert model.pose_channels == 20


@pytest.mark.parametrize("output, keep_source, keep_pose", [
    ("full", None, None),
    ("null_source", [False, False], None),
    ("keep_source_1_0", [True, False], None),
    ("null_pose", None, [False, False]),
])
def test_small_config_reproduces_the_official_outputs(output: str, keep_source: list[bool] | None,
                                                       keep_pose: list[bool] | None) -> None:
    model, ref = small_model()
    masks = {name: None if keep is None else torch.tensor(keep)
             for name, keep in (("keep_source", keep_source), ("keep_pose", keep_pose))}
    with torch.no_grad():
        got = model(ref["input.x_t"], ref["input.t"], ref["input.source_image"], ref["input.target_pose"], **masks)
    assert got.shape == (2, 6, 32, 24)
    assert (got - ref[f"output.{output}"]).abs().max().item() < 1e-4
    if output != "full":  # the condition changed the output, so the comparison above saw the mask act
        assert (ref[f"output.{output}"] - ref["output.full"]).abs().max().item() > 1e-2


def test_every_trainable_weight_gets_a_gradient_and_only_the_unused_ones_are_frozen() -> None:
    """DDP without ``find_unused_parameters`` needs a gradient for every trainable parameter."""
    model, ref = small_model()
    model.train()
    out = model(ref["input.x_t"], ref["input.t"], ref["input.source_image"], ref["input.target_pose"],
                keep_source=torch.tensor([True, False]))
    out.square().mean().backward()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    unused = {f"{prefix}.{suffix}" for prefix, module in model.named_modules() if isinstance(module, UnusedWeights)
              for suffix in ("weight", "bias")}
    assert frozen == unused
    parts = {part for name in frozen for part in name.split(".")}
    assert {"cond_emb_layers", "qkv", "proj_out1", "encoder", "emb_layers", "time_embed"} <= parts
    # The encoder never gets a time embedding; the UNet's own emb_layers train.
    assert all(name.startswith("encoder.") for name in frozen if ".emb_layers." in name)
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_fresh_model_predicts_zero_like_the_official_init() -> None:
    """The output conv starts at zero (the official ``zero_module``), so the untrained prediction is 0."""
    torch.manual_seed(0)
    model = PIDMUNet(ngf=32, channel_mult=(1, 2), attention_levels=(1,), embed_channels=32).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x, torch.tensor([10]), x, torch.rand(1, 20, 32, 32))
    assert out.shape == (1, 6, 32, 32)
    assert out.abs().max().item() == 0.0


def test_bad_inputs_are_named() -> None:
    model = PIDMUNet(ngf=32, channel_mult=(1, 1, 1), attention_levels=(2,), embed_channels=32)
    x = torch.zeros(1, 3, 32, 22)
    with pytest.raises(TrainError, match="multiples of 4, got 32x22"):
        model(x, torch.tensor([0]), x, torch.zeros(1, 20, 32, 22))
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(TrainError, match="target_pose must be"):
        model(x, torch.tensor([0]), x, torch.zeros(1, 18, 32, 32))
    with pytest.raises(TrainError, match="group norm over 48 channels"):
        PIDMUNet(ngf=16, channel_mult=(1, 2, 2))
