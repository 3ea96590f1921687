"""Make ``pose_sticks_reference.npz``: PIDM's official pose input for fixed keypoints, the golden data of
``tests/pgpig/test_pose_sticks.py``.

Runs the official ``data/fashion_data.py`` ``Dataset.get_label_tensor`` (github:ankanbhunia/PIDM) on three
skeletons at 64x64 and 256x256. Its ``trans_keypoins`` (PATN's 176-wide frame to the image) is replaced by the
identity, so the keypoints stored here are exactly the ones it draws, in the image frame, as pgpig passes them.
The official module needs ``cv2``, ``torch``, ``torchvision`` and ``PIL``; it imports ``lmdb`` without using it
here, so an empty ``lmdb.py`` on the path will do.

    python tests/data/pidm/pose_sticks_reference.py OFFICIAL_ROOT [OUT.npz]

``OFFICIAL_ROOT`` holds the official ``data/`` package.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

SIZES = ((64, 64), (256, 256))
M = -1.0  # the official files' missing joint

# (18, 2) pixel (x, y) at 256x256 in the OpenPose-18 order; the 64x64 sets are these times 1/4
SKELETONS = np.array([
    # a standing person, every joint visible, fractional coordinates
    [[128.4, 40.7], [127.9, 70.2], [100.3, 71.6], [92.8, 112.5], [88.1, 150.9], [155.6, 69.8], [163.2, 111.1],
     [167.7, 149.3], [110.5, 145.2], [108.9, 195.4], [107.2, 240.6], [145.1, 146.0], [147.3, 196.8],
     [149.9, 241.2], [122.6, 35.3], [134.2, 35.1], [115.7, 39.8], [141.5, 38.9]],
    # missing joints: the nose and the left wrist (-1, -1), the right ear with only x = -1, the right ankle with
    # only y = -1; the left ear stays (its limb to the left shoulder is in limbSeq but not drawn)
    [[M, M], [120.5, 66.0], [95.2, 68.4], [80.6, 100.3], [70.1, 130.8], [146.7, 64.9], [170.3, 95.5], [M, M],
     [105.8, 140.7], [100.2, 188.1], [97.6, M], [140.4, 139.9], [150.8, 186.6], [160.3, 230.2], [113.9, 30.6],
     [125.5, 29.8], [M, 34.2], [133.8, 33.7]],
    # edge cases: joints off the image (negative, past the edge, -0.6 truncating to 0), a zero-length limb
    # (neck on the right shoulder), exactly vertical and horizontal limbs, integer coordinates, a limb leaving
    # the image; angles whose truncation goes towards zero from both sides
    [[-0.6, 12.25], [60.0, 80.0], [60.0, 80.0], [60.0, 140.0], [20.0, 140.0], [200.5, 79.5], [263.0, 90.1],
     [300.7, -20.4], [70.25, 170.75], [71.0, 230.0], [69.9, 270.3], [180.0, 170.0], [181.9, 229.1],
     [255.9, 255.9], [-3.2, 5.5], [12.5, -7.5], [0.0, 0.0], [30.1, 0.4]],
], dtype=np.float32)


def official_dataset(root: Path):
    """The official ``Dataset`` built by its own ``__init__`` on an empty pair list, drawing keypoints as given."""
    sys.path.insert(0, str(root))
    from data.fashion_data import Dataset

    folder = Path(tempfile.mkdtemp())
    (folder / "train_pairs.txt").write_text("")
    opt = SimpleNamespace(path=str(folder), sub_path="unused", preprocess_mode="none", scale_param=0.05)
    dataset = Dataset(opt, is_inference=False, labels_required=True)
    dataset.trans_keypoins = lambda keypoints, param, img_size: keypoints
    return dataset


def render(dataset, keypoints: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The official ``(20, H, W)`` tensor of one skeleton as uint8 (it is a uint8 image over 255)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        np.savetxt(f, keypoints.astype(np.float64), fmt="%.17g")  # float32 values, exactly
    tensor, _ = dataset.get_label_tensor(f.name, torch.zeros(3, *size), {})
    scaled = tensor.numpy() * 255
    assert np.array_equal(scaled, np.round(scaled))
    return np.round(scaled).astype(np.uint8)


def main(root: str, out: str = str(Path(__file__).with_suffix(".npz"))) -> None:
    dataset = official_dataset(Path(root))
    arrays = {}
    for h, w in SIZES:
        keypoints = np.where(SKELETONS == M, M, SKELETONS * np.float32(w / 256)).astype(np.float32)
        arrays[f"keypoints_{h}x{w}"] = keypoints
        arrays[f"maps_{h}x{w}"] = np.stack([render(dataset, k, (h, w)) for k in keypoints])
    np.savez_compressed(out, **arrays)
    print(out, {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    main(*sys.argv[1:])
