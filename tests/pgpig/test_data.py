"""``pgpig.data``: pose maps and PG2 masks against slow references, the recipe crop, and pairs from real shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_reference import disk_reference, pg2_masks_reference, pose_disks_reference, pose_maps_reference

from pgpig.data import (
    PG2_MASK_LIMBS,
    PairDataset,
    crop_width,
    make_loader,
    render_pg2_masks,
    render_pose_disks,
    render_pose_maps,
    start_epoch,
)
from pgpig.errors import TrainError
from schemas.keypoints import FLIP_PERMUTATION, KEYPOINT_NAMES

J = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory):
    """A DeepFashion-layout mannequin shard set (256x256, flat studio background), built once per module: not the
    session's sets, because the recipe crop under test (40 px a side) needs DeepFashion's stored width of 256."""
    from pipeline.synthetic import mannequin_shards

    return mannequin_shards(tmp_path_factory.mktemp("data"), "deepfashion", identities=3, poses=4) / "train"


def random_keypoints(rng: np.random.Generator, batch: int, size: tuple[int, int], hidden: float = 0.3) -> np.ndarray:
    h, w = size
    xy = np.stack([rng.uniform(-2, w + 1, (batch, 18)), rng.uniform(-2, h + 1, (batch, 18))], axis=-1)
    xy[rng.random((batch, 18)) < hidden] = -1
    return xy.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- pose maps


def test_pose_maps_match_the_slow_reference_and_peak_at_integer_keypoints():
    rng = np.random.default_rng(0)
    size = (20, 13)
    xy = random_keypoints(rng, 3, size)
    xy[0, J["nose"]] = (4, 7)  # integer keypoints: the map is exactly 1 there
    xy[1, J["l_ankle"]] = (12, 19)
    xy[2, J["neck"]] = -1
    maps = render_pose_maps(torch.from_numpy(xy), size, sigma=2.5)
    assert maps.shape == (3, 18, 20, 13) and maps.dtype == torch.float32
    np.testing.assert_allclose(maps.numpy(), pose_maps_reference(xy, size, 2.5), atol=1e-5, rtol=0)
    assert maps[0, J["nose"], 7, 4] == 1.0 and maps[0, J["nose"]].max() == 1.0
    assert maps[1, J["l_ankle"], 19, 12] == 1.0
    peak = maps[0, J["nose"]].flatten().argmax()
    assert divmod(int(peak), 13) == (7, 4)
    hidden = (xy == -1).all(-1)
    assert hidden.any() and (maps[torch.from_numpy(hidden)] == 0).all()
    inside = ~hidden & (xy[..., 0] >= 0) & (xy[..., 0] <= 12) & (xy[..., 1] >= 0) & (xy[..., 1] <= 19)
    assert inside.any() and (maps[torch.from_numpy(inside)].amax(dim=(1, 2)) > 0.9).all()  # within half a pixel
    assert render_pose_maps(torch.from_numpy(xy), size, 2.5, dtype=torch.float16).dtype == torch.float16


def test_pg2_pose_disks_match_the_slow_reference():
    """The official ``_getSparsePose(radius=4, mode='Solid')``: a binary disk per visible joint around ``int(x, y)``."""
    rng = np.random.default_rng(2)
    size = (26, 19)
    xy = random_keypoints(rng, 3, size)
    xy[0, J["nose"]] = (4, 7)
    xy[1, J["neck"]] = (0.7, 25.9)  # truncated to (0, 25): the disk is cut by the image border
    disks = render_pose_disks(torch.from_numpy(xy), size, radius=4)
    assert disks.shape == (3, 18, 26, 19) and disks.dtype == torch.float32
    np.testing.assert_array_equal(disks.numpy(), pose_disks_reference(xy, size, 4))
    assert disks[0, J["nose"]].sum() == 49  # the radius-4 'Solid' disk has 49 pixels
    assert disks[0, J["nose"], 7, 4] == 1 and disks[0, J["nose"], 7, 8] == 1 and disks[0, J["nose"], 7, 9] == 0
    assert disks[1, J["neck"], 25, 0] == 1
    hidden = torch.from_numpy((xy == -1).all(-1))
    assert hidden.any() and (disks[hidden] == 0).all()
    assert render_pose_disks(torch.from_numpy(xy), size, 4, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_pg2_masks_match_the_slow_reference_and_skimage():
    """The official ``_getPoseMask(radius=4)``: disks along 23 limbs, closed by skimage's 5x5 dilation + erosion."""
    rng = np.random.default_rng(3)
    size = (48, 33)
    xy = random_keypoints(rng, 4, size, hidden=0.25)
    xy[1] = np.round(xy[1])  # integer keypoints, as the official OpenPose peaks
    xy[3] = -1  # nobody visible: an empty mask
    mask = render_pg2_masks(torch.from_numpy(xy), size, radius=4)
    assert mask.shape == (4, 1, 48, 33)
    reference = pg2_masks_reference(xy, size, 4)
    np.testing.assert_array_equal(mask.numpy(), reference)
    assert mask[3].sum() == 0 and all(mask[b].sum() > 0 for b in range(3))
    # the reference's closing is skimage's, the library the official conversion calls
    morphology = pytest.importorskip("skimage.morphology")
    square = np.ones((5, 5), bool)
    for b in range(3):
        dense = np.zeros(size)
        for ja, jb in PG2_MASK_LIMBS:
            (c0, r0), (c1, r1) = xy[b, ja].astype(np.float64), xy[b, jb].astype(np.float64)
            if (xy[b, ja] == -1).all() or (xy[b, jb] == -1).all():
                continue
            n = int(np.sqrt((r0 - r1) ** 2 + (c0 - c1) ** 2) / 4)
            for r, c in [(r0, c0), (r1, c1)] + [(r0 + (r1 - r0) * i / n, c0 + (c1 - c0) * i / n) for i in range(1, n)]:
                disk_reference(dense, r, c, 4)
        closed = morphology.erosion(morphology.dilation(dense, square), square)
        np.testing.assert_array_equal(mask[b, 0].numpy(), closed)


def test_pg2_masks_sample_a_fixed_window_exactly_for_joints_anywhere():
    """The samples along each limb are a window sized by the image, not by the longest limb (which the host would
    have to read back from the device): the mask still equals the official loops for limbs corner to corner, limbs
    with a joint far outside the image, limbs along an edge, and at radius 1 (the most samples)."""
    rng = np.random.default_rng(5)
    size = (48, 33)
    xy = random_keypoints(rng, 8, size, hidden=0.2)
    neck, right_hip, right_knee, right_ankle = J["neck"], J["r_hip"], J["r_knee"], J["r_ankle"]
    xy[0, neck], xy[0, right_hip] = (0, 0), (size[1] - 0.01, size[0] - 0.01)  # a PG2 limb across the diagonal
    xy[1, neck], xy[1, right_hip] = (-900.5, -1300.25), (20.0, 30.0)  # one joint far out, the limb ends inside
    xy[2, neck], xy[2, right_hip] = (-400.0, 24.0), (500.0, 24.0)  # crosses the whole image, both joints outside
    xy[3, right_hip], xy[3, right_knee] = (0.0, -50.0), (0.0, 100.0)  # vertical, on the left edge
    xy[4, right_knee], xy[4, right_ankle] = (-4.5, -300.0), (-4.5, 300.0)  # vertical, just left of the image
    xy[5:] = rng.uniform(-3, 4, xy[5:].shape) * np.array([size[1], size[0]])  # joints scattered far and wide
    for radius in (4, 1):
        mask = render_pg2_masks(torch.from_numpy(xy), size, radius=radius)
        np.testing.assert_array_equal(mask.numpy(), pg2_masks_reference(xy, size, radius))
    assert all(mask[b].sum() > 0 for b in range(4))


# ---------------------------------------------------------------------------------------------------- crop


def test_crop_width_shifts_keypoints_by_the_margin_and_hides_those_outside():
    images = torch.arange(2 * 3 * 8 * 256, dtype=torch.float32).reshape(2, 3, 8, 256)
    xy = np.full((2, 18, 2), -1, np.float32)
    xy[0, :6] = [(40, 1), (215, 2), (120.5, 3), (39.5, 4), (215.5, 5), (10, 6)]
    xy[1, 3] = (100, 7)
    cropped, kp = crop_width(images, torch.from_numpy(xy), 40)
    assert cropped.shape == (2, 3, 8, 176) and torch.equal(cropped, images[..., 40:216])
    expected = np.full((2, 18, 2), -1, np.float32)
    expected[0, :3] = [(0, 1), (175, 2), (80.5, 3)]  # 39.5, 215.5 and 10 fall outside the 176 columns
    expected[1, 3] = (60, 7)
    np.testing.assert_array_equal(kp.numpy(), expected)
    with pytest.raises(ValueError):
        crop_width(images, torch.from_numpy(xy), 128)


def test_dataset_crop_is_crop_width(shard_folder):
    plain, cropped = PairDataset(shard_folder), PairDataset(shard_folder, crop_margin=40)
    assert cropped.size == (256, 176)
    for k in (0, 5, len(plain) - 1):
        a, b = plain[k], cropped[k]
        images, kp = crop_width(torch.stack([a["source"], a["target"]]), torch.stack([a["source_kp"], a["target_kp"]]),
                                40)
        assert torch.equal(images, torch.stack([b["source"], b["target"]]))
        assert torch.equal(kp, torch.stack([b["source_kp"], b["target_kp"]]))
    with pytest.raises(TrainError, match="crop_margin"):
        PairDataset(shard_folder, crop_margin=128)
    with pytest.raises(TrainError, match="manifest"):
        PairDataset(shard_folder.parent / "nothing")


# ---------------------------------------------------------------------------------------------------- pairs


def _on_body(image: torch.Tensor, kp: torch.Tensor) -> np.ndarray:
    """Per visible keypoint: does its pixel differ from the studio background (the image border's median)?"""
    rgb = ((image.permute(1, 2, 0) + 1) * 127.5).round().numpy().astype(np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    xy = kp.numpy()
    xy = xy[~(xy == -1).all(axis=1)]
    cols, rows = np.rint(xy[:, 0]).astype(int), np.rint(xy[:, 1]).astype(int)
    return np.abs(rgb[rows, cols] - background).sum(axis=1) > 40


def test_items_are_the_stored_pairs_in_minus_one_to_one(shard_folder):
    from pipeline.shards import ShardSet

    shards = ShardSet(shard_folder)
    data = PairDataset(shard_folder)
    assert len(data) == len(shards.pairs) > 0
    item = data[3]
    s, t = shards.pairs[3]
    assert (item["source_index"], item["target_index"]) == (s, t) and not item["flipped"]
    assert item["source"].shape == item["target"].shape == (3, 256, 256) and item["source"].dtype == torch.float32
    assert -1 <= item["source"].min() and item["source"].max() <= 1
    expected = torch.from_numpy(shards[t].image).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(item["target"], expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(item["source_kp"].numpy(), shards[s].keypoints)


def test_flip_mirrors_both_images_and_swaps_left_and_right_on_the_body(shard_folder):
    plain = PairDataset(shard_folder)
    flipping = PairDataset(shard_folder, flip=True, seed=11)
    flipped = [k for k in range(len(flipping)) if flipping.flipped(k)]
    kept = [k for k in range(len(flipping)) if not flipping.flipped(k)]
    assert flipped and kept
    width = 256
    for k in flipped[:4]:
        a, b = plain[k], flipping[k]
        assert b["flipped"] and (a["source_index"], a["target_index"]) == (b["source_index"], b["target_index"])
        for side in ("source", "target"):
            assert torch.equal(b[side], a[side].flip(-1))
            orig, mirrored = a[f"{side}_kp"].numpy(), b[f"{side}_kp"].numpy()
            # the flipped right shoulder is where the left one was, mirrored; and so for every joint
            lsh = orig[J["l_shoulder"]]
            assert (lsh != -1).all()
            np.testing.assert_array_equal(mirrored[J["r_shoulder"]], (width - 1 - lsh[0], lsh[1]))
            for j, src in enumerate(FLIP_PERMUTATION):
                if (orig[src] == -1).all():
                    assert (mirrored[j] == -1).all()
                else:
                    np.testing.assert_array_equal(mirrored[j], (width - 1 - orig[src, 0], orig[src, 1]))
            on_plain, on_flipped = _on_body(a[side], a[f"{side}_kp"]), _on_body(b[side], b[f"{side}_kp"])
            assert on_flipped.mean() >= 0.85 and on_flipped.mean() == on_plain.mean()
    for k in kept[:2]:
        assert torch.equal(flipping[k]["source"], plain[k]["source"]) and not flipping[k]["flipped"]


def test_flips_depend_on_seed_and_epoch_only(shard_folder):
    a, b = PairDataset(shard_folder, flip=True, seed=3), PairDataset(shard_folder, flip=True, seed=3)
    n = len(a)
    draws = lambda d: [d.flipped(k) for k in range(n)]  # noqa: E731
    assert draws(a) == draws(b)
    a.set_epoch(1)
    assert draws(a) != draws(b)
    b.set_epoch(1)
    assert draws(a) == draws(b) and a.epoch == 1
    assert draws(PairDataset(shard_folder, flip=True, seed=4)) != draws(PairDataset(shard_folder, flip=True, seed=3))
    assert not any(draws(PairDataset(shard_folder, flip=False)))


def _epochs(loader, epochs: list[int]) -> list[list[dict]]:
    out = []
    for epoch in epochs:
        start_epoch(loader, epoch)
        out.append(list(loader))
    return out


def test_loader_batches_do_not_depend_on_workers_and_resume_by_epoch(shard_folder):
    def loader(workers: int, seed: int = 5):
        return make_loader(PairDataset(shard_folder, flip=True, crop_margin=40, seed=seed), batch_size=5,
                           shuffle=True, seed=seed, num_workers=workers)

    serial = _epochs(loader(0), [0, 1])
    parallel = _epochs(loader(2), [0, 1])  # persistent workers: the epoch must reach them
    resumed = _epochs(loader(0), [1])
    n = len(PairDataset(shard_folder))
    assert n % 5 and len(serial[0]) == n // 5  # drop_last when training
    for one, other in ((serial[0], parallel[0]), (serial[1], parallel[1]), (serial[1], resumed[0])):
        assert len(one) == len(other)
        for x, y in zip(one, other, strict=True):
            assert x.keys() == y.keys()
            for key in x:
                assert torch.equal(x[key], y[key]), key
    order = [torch.cat([b["source_index"] for b in e]).tolist() for e in serial]
    assert order[0] != order[1]  # a new order each epoch
    flips = [torch.cat([b["flipped"] for b in e]) for e in serial]
    assert 0 < int(flips[0].sum()) < len(flips[0])
    assert serial[0][0]["source"].shape == (5, 3, 256, 176)
    evaluation = make_loader(PairDataset(shard_folder), batch_size=5, shuffle=False)
    indices = torch.cat([b["source_index"] for b in evaluation]).tolist()
    assert indices == PairDataset(shard_folder).pairs[:, 0].tolist()  # every pair once, in order, ragged batch kept
    assert len(list(evaluation)) == n // 5 + 1
