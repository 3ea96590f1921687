"""COCO-17 → OpenPose-18 conversion, flip permutation and skeleton, on hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.keypoints import (
    COCO17_NAMES,
    FLIP_PERMUTATION,
    KEYPOINT_NAMES,
    LIMBS,
    coco17_to_openpose18,
    flip_keypoints,
    visible_mask,
)


def person(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 200, size=(17, 2)).astype(np.float32), np.full(17, 0.9, np.float32)


def test_every_joint_comes_from_the_coco_joint_of_the_same_name():
    xy, scores = person()
    out, out_scores = coco17_to_openpose18(xy, scores, 0.5)
    assert out.shape == (18, 2) and out.dtype == np.float32 and out_scores.shape == (18,)
    for i, name in enumerate(KEYPOINT_NAMES):
        if name == "neck":
            continue
        j = COCO17_NAMES.index(name)
        np.testing.assert_array_equal(out[i], xy[j], err_msg=name)
        assert out_scores[i] == scores[j]


def test_neck_is_shoulder_midpoint_when_both_visible():
    xy, scores = person()
    scores[5], scores[6] = 0.7, 0.6
    out, out_scores = coco17_to_openpose18(xy, scores, 0.5)
    np.testing.assert_allclose(out[1], (xy[5] + xy[6]) / 2)
    assert out_scores[1] == pytest.approx(0.6)


@pytest.mark.parametrize("low", [5, 6])
def test_neck_is_missing_when_one_shoulder_is_missing(low):
    xy, scores = person()
    scores[low] = 0.2
    out, out_scores = coco17_to_openpose18(xy, scores, 0.5)
    np.testing.assert_array_equal(out[1], [-1, -1])
    assert out_scores[1] == pytest.approx(0.2)  # the score is kept
    shoulder18 = KEYPOINT_NAMES.index(COCO17_NAMES[low])
    np.testing.assert_array_equal(out[shoulder18], [-1, -1])
    other = KEYPOINT_NAMES.index(COCO17_NAMES[11 - low])  # 5 ↔ 6
    np.testing.assert_array_equal(out[other], xy[11 - low])


def test_low_scores_become_minus_one_and_keep_their_score():
    xy, scores = person()
    scores[[0, 9, 16]] = [0.1, 0.49, 0.5]
    out, out_scores = coco17_to_openpose18(xy, scores, 0.5)
    np.testing.assert_array_equal(out[0], [-1, -1])  # nose
    np.testing.assert_array_equal(out[KEYPOINT_NAMES.index("l_wrist")], [-1, -1])
    np.testing.assert_array_equal(out[KEYPOINT_NAMES.index("r_ankle")], xy[16])  # exactly at threshold: visible
    assert out_scores[0] == pytest.approx(0.1)
    assert visible_mask(out).sum() == 16


def test_several_persons_convert_like_each_person_alone():
    people = [person(s) for s in range(4)]
    xy = np.stack([p[0] for p in people])
    scores = np.stack([p[1] for p in people])
    scores[1, 5] = 0.0
    scores[3, :] = 0.0
    out, out_scores = coco17_to_openpose18(xy, scores, 0.3)
    assert out.shape == (4, 18, 2)
    for k in range(4):
        single, single_scores = coco17_to_openpose18(xy[k], scores[k], 0.3)
        np.testing.assert_array_equal(out[k], single)
        np.testing.assert_array_equal(out_scores[k], single_scores)
    assert not visible_mask(out[3]).any()
    assert not visible_mask(out[1])[1]


def test_empty_batch_and_bad_shapes():
    out, out_scores = coco17_to_openpose18(np.zeros((0, 17, 2)), np.zeros((0, 17)), 0.5)
    assert out.shape == (0, 18, 2) and out_scores.shape == (0, 18)
    with pytest.raises(ValueError):
        coco17_to_openpose18(np.zeros((18, 2)), np.zeros(18), 0.5)
    with pytest.raises(ValueError):
        coco17_to_openpose18(np.zeros((2, 17, 2)), np.zeros((3, 17)), 0.5)


def test_flip_permutation_swaps_names_left_and_right():
    perm = np.array(FLIP_PERMUTATION)
    np.testing.assert_array_equal(perm[perm], np.arange(18))  # an involution
    for i, j in enumerate(perm):
        a, b = KEYPOINT_NAMES[i], KEYPOINT_NAMES[j]
        assert a.replace("r_", "X").replace("l_", "r_").replace("X", "l_") == b


def test_flip_keypoints_follow_a_flipped_image():
    rng = np.random.default_rng(1)
    h, w = 40, 30
    xy = rng.integers(0, [w, h], size=(18, 2)).astype(np.float32)
    xy[3] = -1  # an invisible joint stays invisible
    image = np.zeros((h, w), np.int32)
    for i, (x, y) in enumerate(xy.astype(int)):
        if x >= 0:
            image[y, x] = i + 1
    flipped_image = image[:, ::-1]
    flipped = flip_keypoints(xy, w)
    for i, (x, y) in enumerate(flipped):
        source = FLIP_PERMUTATION[i]
        if source == 3:
            np.testing.assert_array_equal([x, y], [-1, -1])
            continue
        if xy[source][0] >= 0:
            assert flipped_image[int(y), int(x)] in {source + 1}, KEYPOINT_NAMES[i]
    np.testing.assert_array_equal(flip_keypoints(flipped, w), xy)


def test_skeleton_joins_every_joint_and_only_valid_indices():
    seen = {1}
    frontier = [1]
    while frontier:
        j = frontier.pop()
        for a, b in LIMBS:
            for x, y in ((a, b), (b, a)):
                if x == j and y not in seen:
                    seen.add(y)
                    frontier.append(y)
    assert seen == set(range(18))
    # limbs are mirrored by the flip permutation onto limbs
    limbs = {frozenset(limb) for limb in LIMBS}
    assert {frozenset(FLIP_PERMUTATION[i] for i in limb) for limb in limbs} == limbs
