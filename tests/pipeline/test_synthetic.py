"""The mannequin set: deterministic, in the real layouts, keypoints on the drawn limbs, learnable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.synthetic import (
    SynthConfig,
    draw_image,
    plan,
    sample_appearance,
    write_mannequins,
)
from schemas.keypoints import visible_mask
from schemas.patn import (
    deepfashion_flat_name,
    deepfashion_margin,
    deepfashion_relpath,
    from_patn_frame,
    read_annotations,
)

MARKET_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
INSHOP_PATH = re.compile(
    r"^img/(MEN|WOMEN)/[A-Za-z_]+/id_(\d{8})/(\d{2})_(\d)_(front|side|back|full|additional|flat)\.jpg$"
)


def tree_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    cfg = SynthConfig(identities=3, poses_per_identity=3, distractors=2, seed=11)
    a = write_mannequins(tmp_path / "a", cfg)
    b = write_mannequins(tmp_path / "b", cfg)
    files_a, files_b = tree_files(tmp_path / "a"), tree_files(tmp_path / "b")
    files_a.pop("mannequin.json"), files_b.pop("mannequin.json")  # holds timings
    assert files_a == files_b and a["images"] == b["images"] == 11
    write_mannequins(tmp_path / "c", SynthConfig(identities=3, poses_per_identity=3, distractors=2, seed=12))
    files_c = tree_files(tmp_path / "c")
    images_a = {k: v for k, v in files_a.items() if k.endswith(".jpg")}
    images_c = {k: v for k, v in files_c.items() if k.endswith(".jpg")}
    assert not set(images_a.values()) & set(images_c.values())


def test_market_layout_names_splits_and_annotations(market_tree):
    root, summary = market_tree
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert len(files) == summary["images"] == 6 * 6 + 4
    assert {f.split("/")[0] for f in files} == {"bounding_box_train", "bounding_box_test", "query"}
    ids: dict[str, set[str]] = {"bounding_box_train": set(), "bounding_box_test": set(), "query": set()}
    for f in files:
        folder, name = f.split("/")
        m = MARKET_NAME.match(name)
        assert m, name
        assert 1 <= int(m.group(2)) <= 6  # camera
        ids[folder].add(m.group(1))
    assert ids["query"] <= ids["bounding_box_test"] - {"0000", "-1"}
    assert not ids["bounding_box_train"] & ids["bounding_box_test"]
    assert {"0000", "-1"} <= ids["bounding_box_test"]  # distractors and junk, as in the real test set

    train = read_annotations(root / "market-annotation-train.csv")
    test = read_annotations(root / "market-annotation-test.csv")
    assert sorted(train.names) == sorted(f.split("/")[1] for f in files if f.startswith("bounding_box_train"))
    assert sorted(test.names) == sorted(f.split("/")[1] for f in files
                                        if not f.startswith("bounding_box_train") and "/0000_" not in f
                                        and "/-1_" not in f)
    kp = train.keypoints
    vis = visible_mask(kp)
    assert vis.mean() > 0.7
    assert (kp[vis][:, 0] <= 63).all() and (kp[vis][:, 1] <= 127).all() and (kp[vis] >= 0).all()
    meta = json.loads((root / "mannequin.json").read_text())
    assert meta["config"]["size"] == [128, 64] and meta["annotated"] == {"train": 18, "test": 18}


def test_deepfashion_layout_partition_and_crop_frame(deepfashion_tree):
    root, summary = deepfashion_tree
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert len(files) == 5 * 7 + 2
    for f in files:
        assert INSHOP_PATH.match(f), f
    lines = (root / "list_eval_partition.txt").read_text().splitlines()
    assert int(lines[0]) == len(files) and lines[1].split() == ["image_name", "item_id", "evaluation_status"]
    partition = {parts[0]: (parts[1], parts[2]) for parts in (line.split() for line in lines[2:])}
    assert sorted(partition) == files
    for path, (item, status) in partition.items():
        assert path.split("/")[3] == item and status in {"train", "query", "gallery"}
    statuses = {}
    for item, status in partition.values():
        statuses.setdefault(item, set()).add("train" if status == "train" else "test")
    assert all(len(s) == 1 for s in statuses.values())  # an identity is never split

    ann = read_annotations(root / "fashion-annotation-train.csv")
    ann_test = read_annotations(root / "fashion-annotation-test.csv")
    annotated = set(ann.names) | set(ann_test.names)
    assert annotated == {deepfashion_flat_name(f) for f in files if not f.endswith("_flat.jpg")}
    vis = visible_mask(ann.keypoints)
    assert (ann.keypoints[vis][:, 0] <= 175).all()  # PATN's 176-wide crop frame
    assert not vis.all()  # half-body shots lose their legs below the frame
    for name in ann.names:
        assert (root / deepfashion_relpath(name)).is_file()


@pytest.mark.parametrize("layout", ["market", "deepfashion"])
def test_keypoints_lie_on_the_drawn_person(layout):
    cfg = SynthConfig(identities=4, poses_per_identity=5, layout=layout, seed=2)
    checked = 0
    for item in plan(cfg):
        app = sample_appearance(np.random.default_rng([cfg.seed, 0, item.identity]))
        image, xy, mask = draw_image(cfg, item, app)
        vis = visible_mask(xy)
        assert vis.sum() >= 5
        for x, y in xy[vis]:
            assert mask[int(round(y)), int(round(x))], (item.relpath, x, y)
            checked += 1
        # the person stands out from the background where it is drawn
        assert mask.mean() > 0.05
    assert checked > 100


def test_written_csv_keypoints_land_on_the_limbs(deepfashion_tree):
    """The saved JPEG + CSV pair: at each visible limb joint the pixel differs from the studio backdrop."""
    root, _ = deepfashion_tree
    ann = read_annotations(root / "fashion-annotation-train.csv")
    pad = deepfashion_margin(256)
    hits = total = 0
    for name, xy in zip(ann.names, ann.keypoints, strict=True):
        image = cv2.imread(str(root / deepfashion_relpath(name))).astype(np.float32)
        raw = from_patn_frame(xy, pad)
        backdrop = image[2, pad + 2]  # top-left corner of the photo area
        for x, y in raw[visible_mask(raw)]:
            total += 1
            hits += np.abs(image[int(round(y)), int(round(x))] - backdrop).max() > 12
    assert total > 100 and hits / total > 0.95


def test_same_identity_looks_alike_across_poses():
    """Colour histograms of the person pixels: same identity much closer than different identities."""
    cfg = SynthConfig(identities=6, poses_per_identity=4, seed=4)
    hists: dict[int, list[np.ndarray]] = {}
    for item in plan(cfg):
        app = sample_appearance(np.random.default_rng([cfg.seed, 0, item.identity]))
        image, _, mask = draw_image(cfg, item, app)
        q = (image[mask] // 64).astype(int)
        hist = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(float)
        hists.setdefault(item.identity, []).append(hist / hist.sum())

    def overlap(a, b):
        return np.minimum(a, b).sum()

    same = [overlap(h[i], h[j]) for h in hists.values() for i in range(4) for j in range(i + 1, 4)]
    ids = sorted(hists)
    other = [overlap(hists[a][0], hists[b][0]) for a in ids for b in ids if a < b]
    assert np.mean(same) > 0.7
    assert np.mean(same) > np.mean(other) + 0.3


def test_refuses_to_write_over_foreign_data_and_overwrites_its_own(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "precious.jpg").write_bytes(b"x")
    cfg = SynthConfig(identities=2, poses_per_identity=2)
    with pytest.raises(PipelineError, match="not empty"):
        write_mannequins(out, cfg)
    with pytest.raises(PipelineError, match="not written by `pgpig-data synth`"):
        write_mannequins(out, cfg, overwrite=True)
    assert (out / "precious.jpg").read_bytes() == b"x"

    own = tmp_path / "own"
    write_mannequins(own, SynthConfig(identities=3, poses_per_identity=2, layout="deepfashion"))
    write_mannequins(own, cfg, overwrite=True)
    assert not (own / "img").exists() and not (own / "list_eval_partition.txt").exists()
    assert len(list(own.rglob("*.jpg"))) == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "lsp"}, "--layout"),
    ({"identities": 0}, "at least 1"),
    ({"size": (16, 8)}, "at least 32x16"),
    ({"identities": 10_000}, "4-digit"),
])
def test_bad_settings_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(PipelineError, match=message):
        write_mannequins(tmp_path / "x", SynthConfig(**kwargs))


def test_worker_processes_write_the_same_bytes(tmp_path):
    cfg = SynthConfig(identities=20, poses_per_identity=8, layout="deepfashion", size=(128, 128), seed=9)
    write_mannequins(tmp_path / "one", cfg, workers=1)
    write_mannequins(tmp_path / "two", cfg, workers=2)
    one, two = tree_files(tmp_path / "one"), tree_files(tmp_path / "two")
    one.pop("mannequin.json"), two.pop("mannequin.json")
    assert one == two and len(one) == 160 + 3
