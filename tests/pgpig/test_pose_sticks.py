"""``pgpig.data.render_pose_sticks``: PIDM's 20-channel pose input against tensors the official function made, its
routing through ``pose_encoding``, and the sample grid of 20-channel poses."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pgpig.config import load_config
from pgpig.data import PIDM_LIMBS, POSE_STICK_CHANNELS, render_pose_sticks
from pgpig.samples import pair_grid, pose_image, sample_grid
from pgpig.train import pose_channels, pose_maps
from schemas.keypoints import KEYPOINT_NAMES

# the official ankanbhunia/PIDM get_label_tensor run on three skeletons (all joints, missing joints, joints off
# the image and degenerate limbs) at 64x64 and 256x256, as uint8: made by pose_sticks_reference.py beside it
REFERENCE = Path(__file__).parents[1] / "data" / "pidm" / "pose_sticks_reference.npz"
J = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as f:
        return dict(f)


@pytest.mark.parametrize("side", [64, 256])
def test_equals_the_official_tensor_exactly(reference, side):
    keypoints = torch.from_numpy(reference[f"keypoints_{side}x{side}"])
    official = torch.from_numpy(reference[f"maps_{side}x{side}"])
    batch = render_pose_sticks(keypoints, (side, side))  # drawn on threads
    assert batch.shape == (3, 20, side, side) and batch.dtype == torch.float32
    drawn = (batch * 255).round().to(torch.uint8)
    assert torch.equal(drawn, official), f"{int((drawn != official).sum())} values differ (OpenCV {cv2.__version__})"
    assert torch.equal(batch, official.float() / 255)  # the official to_tensor's values, bit for bit
    for i in range(3):  # one at a time, no threads
        assert torch.equal(render_pose_sticks(keypoints[i:i + 1], (side, side)), batch[i:i + 1])


def test_reference_covers_the_official_quirks(reference):
    """The golden skeletons exercise what is easy to get wrong, so the exact match above means something."""
    kp, maps = reference["keypoints_256x256"], reference["maps_256x256"]
    drawn = (maps[:, 3:] < 255).any(axis=(2, 3))  # (3, 17): limbs drawn
    assert drawn[0].all()
    # skeleton 1: the nose (-1, -1), the right ear only x = -1, the right ankle only y = -1 each hide their limbs
    assert kp[1, J["r_ear"], 0] == -1 and kp[1, J["r_ear"], 1] != -1 and kp[1, J["r_ankle"], 1] == -1
    hidden = {k for k, (a, b) in enumerate(PIDM_LIMBS) if {a, b} & {J["nose"], J["l_wrist"], J["r_ear"], J["r_ankle"]}}
    assert {k for k in range(17) if not drawn[1, k]} == hidden
    assert (maps[1, 3 + np.array(sorted(hidden))] == 255).all()  # an undrawn limb is 255 everywhere
    # skeleton 2: joints off the image on both sides and a zero-length limb (neck on the right shoulder)
    assert (kp[2] < 0).any() and (kp[2] > 256).any() and (kp[2, J["neck"]] == kp[2, J["r_shoulder"]]).all()
    assert drawn[2, PIDM_LIMBS.index((J["neck"], J["r_shoulder"]))]


def test_one_joint_is_a_disk_in_the_swapped_colour():
    """A lone nose in a wide image: a radius-4 disk at the truncated position, in the official colour (255, 0, 0)
    taken as BGR, so pure blue; no limb, so every distance channel is 1."""
    kp = torch.full((1, 18, 2), -1.0)
    kp[0, J["nose"]] = torch.tensor([150.7, 20.2])
    out = render_pose_sticks(kp, (64, 176))
    assert out.shape == (1, 20, 64, 176)
    ys, xs = torch.meshgrid(torch.arange(64), torch.arange(176), indexing="ij")
    disk = (ys - 20) ** 2 + (xs - 150) ** 2 <= 16
    assert torch.equal(out[0, 2] > 0, disk) and (out[0, 2][disk] == 1).all()
    assert (out[0, :2] == 0).all() and (out[0, 3:] == 1).all()


def test_distance_maps_are_zero_on_the_limb_and_grow_by_a_third_per_pixel():
    kp = torch.full((1, 18, 2), -1.0)
    kp[0, J["neck"]] = torch.tensor([32.0, 10.0])
    kp[0, J["r_shoulder"]] = torch.tensor([32.0, 50.0])  # a vertical limb, x = 32, y 10..50
    out = render_pose_sticks(kp, (64, 64))[0]
    limb = out[3 + PIDM_LIMBS.index((J["neck"], J["r_shoulder"]))]
    row = (limb[30] * 255).round()  # across the limb at mid height: 4 px each side, then floor(d / 3)
    assert (row[28:37] == 0).all()
    assert row[:28].flip(0).tolist() == [d // 3 for d in range(1, 29)]
    assert ((out[3:] < 1).sum(dim=(1, 2)) > 0).sum() == 1  # only that limb is drawn
    assert out.min() >= 0 and out.max() <= 1


def test_shapes_and_bad_input():
    assert render_pose_sticks(torch.zeros(0, 18, 2), (32, 16)).shape == (0, 20, 32, 16)
    with pytest.raises(ValueError, match="expected keypoints"):
        render_pose_sticks(torch.zeros(2, 17, 2), (32, 32))


def test_pose_encoding_sticks_routes_through_pose_maps(reference):
    keypoints = torch.from_numpy(reference["keypoints_64x64"])
    for encoding, channels in (("gaussian", 18), ("disk", 18), ("sticks", POSE_STICK_CHANNELS)):
        cfg = load_config(None, {"pose_encoding": encoding})
        assert pose_channels(cfg) == channels
        assert pose_maps(cfg, keypoints, (64, 64)).shape == (3, channels, 64, 64)
    cfg = load_config(None, {"pose_encoding": "sticks"})
    assert torch.equal(pose_maps(cfg, keypoints, (64, 64)), render_pose_sticks(keypoints, (64, 64)))


def test_sample_grid_shows_the_rgb_stick_figure(reference):
    sticks = torch.from_numpy(reference["maps_64x64"]).float() / 255
    image = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(pose_image(sticks), sticks[:, :3] * 2 - 1)
    grid = pair_grid(image, sticks, sticks.flip(0), -image, image)
    plain = sample_grid([image, sticks[:, :3] * 2 - 1, sticks.flip(0)[:, :3] * 2 - 1, -image, image])
    assert torch.equal(grid[:, grid.shape[1] - plain.shape[1]:], plain)
    # the pose columns are in colour: the stick figure's red and blue differ somewhere
    pose_column = plain[:, :, 64:128].int()
    assert (pose_column[0] != pose_column[2]).any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_returns_on_the_keypoints_device(reference):
    keypoints = torch.from_numpy(reference["keypoints_256x256"])
    out = render_pose_sticks(keypoints.cuda(), (256, 256))
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), torch.from_numpy(reference["maps_256x256"]).float() / 255)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_batches_draw_from_the_loaders_keypoints_without_waiting_for_the_gpu(reference):
    """``prepare_batch`` draws PIDM's maps from the loader's (pinned, CPU) keypoints straight to the GPU: CUDA's
    sync debug mode set to "error" raises at any call that makes the host wait, and the maps are the official
    tensor's, as drawn from keypoints on the GPU."""
    from pgpig.config import load_config
    from pgpig.train import prepare_batch

    cfg = load_config(None, {"model": "pidm", "pose_encoding": "sticks"})
    keypoints = torch.from_numpy(reference["keypoints_256x256"]).float()
    batch = {"source": torch.rand(3, 3, 256, 256), "target": torch.rand(3, 3, 256, 256),
             "source_kp": keypoints.pin_memory(), "target_kp": keypoints.flip(0).pin_memory()}
    batch = {k: v.pin_memory() for k, v in batch.items()}
    prepare_batch(cfg, batch, torch.device("cuda"), (256, 256))  # the first call: CUDA and the pinned pool set up
    torch.cuda.synchronize()
    busy = torch.rand(4096, 4096, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            busy = busy @ busy  # queued GPU work the drawing must not wait for
        step = prepare_batch(cfg, batch, torch.device("cuda"), (256, 256))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    official = torch.from_numpy(reference["maps_256x256"]).float() / 255
    assert step.target_pose.device.type == "cuda"
    assert torch.equal(step.source_pose.cpu(), official)
    assert torch.equal(step.target_pose.cpu(), official.flip(0))
    assert torch.equal(step.target_pose, render_pose_sticks(keypoints.flip(0).cuda(), (256, 256)))


def test_prepare_batch_draws_the_official_maps_from_the_loaders_keypoints(reference):
    from pgpig.config import load_config
    from pgpig.train import prepare_batch

    cfg = load_config(None, {"model": "pidm", "pose_encoding": "sticks"})
    keypoints = torch.from_numpy(reference["keypoints_64x64"]).float()
    batch = {"source": torch.rand(3, 3, 64, 64), "target": torch.rand(3, 3, 64, 64), "source_kp": keypoints,
             "target_kp": keypoints.flip(0)}
    step = prepare_batch(cfg, batch, torch.device("cpu"), (64, 64))
    official = torch.from_numpy(reference["maps_64x64"]).float() / 255
    assert torch.equal(step.source_pose, official) and torch.equal(step.target_pose, official.flip(0))
    assert torch.equal(render_pose_sticks(keypoints, (64, 64), "cpu"), official)
