"""Shard sets on real mannequin trees: both formats written and read back, resize and keypoints, verify, crashes."""

from __future__ import annotations

import json
import pickle
from itertools import permutations
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from corpus import cv2_bytes, with_orientation, write

from pipeline.decode import decode_image
from pipeline.errors import PipelineError
from pipeline.shards import (
    ROWS_PER_GROUP,
    ShardImage,
    ShardSet,
    read_pairs_table,
    scale_keypoints,
    verify_shard_set,
    write_shard_set,
)
from pipeline.synthetic import SynthConfig, draw_image, plan, sample_appearance
from schemas.files import sha256_file
from schemas.keypoints import MISSING, NUM_KEYPOINTS, visible_mask
from schemas.manifest import Manifest
from schemas.patn import deepfashion_margin, deepfashion_relpath, from_patn_frame, read_annotations
from schemas.tables import SHARD_IMAGES_SCHEMA, keypoints_to_numpy


def shard_image(root: Path, rel: str, identity: str, xy: np.ndarray, patn_name: str | None = None) -> ShardImage:
    """What the keypoints table says about one raw file: its hash, upright size and keypoints."""
    decoded = decode_image(root / rel)
    assert decoded.ok, decoded.reason
    scores = visible_mask(xy).astype(np.float32)
    return ShardImage(rel, patn_name, identity, sha256_file(root / rel), decoded.width, decoded.height,
                      np.asarray(xy, np.float32), scores)


def from_annotations(root: Path, layout: str) -> list[ShardImage]:
    """ShardImages of every annotated image of a mannequin tree, keypoints from its PATN CSVs (raw frame)."""
    prefix = "market" if layout == "market" else "fashion"
    by_name = {p.name: p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
    images = []
    for split in ("train", "test"):
        ann = read_annotations(root / f"{prefix}-annotation-{split}.csv")
        for name, xy in zip(ann.names, ann.keypoints, strict=True):
            if layout == "market":
                rel, identity = by_name[name], name[:4]
            else:
                rel = deepfashion_relpath(name)
                identity = rel.split("/")[3]
                # the DeepFashion CSV is in PATN's 256×176 crop: back to the raw 256×256 frame
                xy = from_patn_frame(xy, deepfashion_margin(256))
            images.append(shard_image(root, rel, identity, xy, name))
    return images


def all_pairs(images: list[ShardImage]) -> tuple[np.ndarray, list[str]]:
    """PATN's rule: every ordered pair of two images of one identity."""
    by_identity: dict[str, list[int]] = {}
    for i, item in enumerate(images):
        by_identity.setdefault(item.identity, []).append(i)
    pairs = [(s, t) for idxs in by_identity.values() for s, t in permutations(idxs, 2)]
    identities = [images[s].identity for s, _ in pairs]
    return np.array(pairs, np.int64).reshape(-1, 2), identities


def write_set(folder: Path, root: Path, images: list[ShardImage], **kw) -> Manifest:
    pairs, identities = all_pairs(images)
    kw.setdefault("split", "train")
    kw.setdefault("dataset", "market1501")
    return write_shard_set(folder, raw_root=root, images=images, pairs=pairs, pair_identities=identities, **kw)


def rgb_of(path: Path) -> np.ndarray:
    return decode_image(path).image[..., ::-1]


@pytest.fixture(scope="module")
def market(market_tree) -> tuple[Path, list[ShardImage]]:
    root, _ = market_tree
    return root, from_annotations(root, "market")


@pytest.fixture(scope="module")
def deepfashion(deepfashion_tree) -> tuple[Path, list[ShardImage]]:
    root, _ = deepfashion_tree
    return root, from_annotations(root, "deepfashion")


# ---------------------------------------------------------------------------------------------- round trips


def test_parquet_keeps_raw_bytes_and_round_trips(market, tmp_path):
    root, images = market
    manifest = write_set(tmp_path / "s", root, images, size=(128, 64), images_per_shard=16, seed=7,
                         filter={"min_visible": 4}, pairing={"rule": "all"}, extract={"path": "extract.json"})
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["images-00000.parquet", "images-00001.parquet", "images-00002.parquet", "manifest.json",
                     "pairs.parquet"]
    assert manifest.counts == {"images": len(images), "pairs": len(all_pairs(images)[0]), "identities": 6}
    on_disk = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert on_disk["seed"] == 7 and on_disk["filter"] == {"min_visible": 4} and on_disk["size"] == [128, 64]
    assert on_disk["pgpig_version"] and on_disk["created"].endswith("+00:00") and on_disk["dataset"] == "market1501"

    # stored bytes are the raw files' own bytes: no re-encode at the native size
    rows = pq.read_table(tmp_path / "s" / "images-00001.parquet")
    for row in rows.to_pylist():
        assert row["data"] == (root / row["image"]).read_bytes()
        assert row["encoding"] == "jpeg" and (row["height"], row["width"]) == (128, 64)
    assert rows["index"].to_pylist() == list(range(16, 32))
    assert np.array_equal(keypoints_to_numpy(rows["keypoints"]), np.stack([it.keypoints for it in images[16:32]]))

    shards = ShardSet(tmp_path / "s", verify=True)
    assert len(shards) == len(images)
    for i in (0, 15, 16, 35, 3, -1):
        sample = shards[i]
        item = images[i]
        assert sample.index == i % len(images) and sample.identity == item.identity
        assert sample.image.dtype == np.uint8 and sample.image.shape == (128, 64, 3)
        assert np.array_equal(sample.image, rgb_of(root / item.image))
        assert np.array_equal(sample.keypoints, item.keypoints) and np.array_equal(sample.scores, item.scores)
    pairs, identities = all_pairs(images)
    assert np.array_equal(shards.pairs, pairs) and shards.pair_identities == identities
    got_pairs, got_ids = read_pairs_table(tmp_path / "s")
    assert got_pairs.dtype == np.int64 and np.array_equal(got_pairs, pairs) and got_ids == identities
    assert verify_shard_set(tmp_path / "s") == []
    with pytest.raises(IndexError):
        shards[len(images)]


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_hdf5_is_bit_exact(deepfashion, tmp_path, compression):
    import h5py

    root, images = deepfashion
    write_set(tmp_path / "s", root, images, format="hdf5", size=(256, 256), images_per_shard=20,
              compression=compression, dataset="deepfashion")
    with h5py.File(tmp_path / "s" / "images-00000.h5", "r") as f:
        assert f["images"].chunks == (1, 256, 256, 3) and f["images"].compression == compression
        assert f["patn_name"].asstr()[0] == images[0].patn_name
    shards = ShardSet(tmp_path / "s")
    for i, item in enumerate(images):
        sample = shards[i]
        assert np.array_equal(sample.image, rgb_of(root / item.image))
        # the CSV's crop-frame x came back to the raw frame: 40 px right of PATN's
        assert np.array_equal(sample.keypoints, item.keypoints)
    assert verify_shard_set(tmp_path / "s") == []


def test_deepfashion_annotations_are_in_the_raw_frame(deepfashion, deepfashion_tree):
    # the CSV holds rounded crop-frame pixels; +40 must land on the drawn joints of the 256×256 file
    root, images = deepfashion
    cfg = SynthConfig(identities=5, poses_per_identity=7, layout="deepfashion", distractors=2, seed=5)
    items = {it.relpath: it for it in plan(cfg)}
    for item in images[:8]:
        plan_item = items[item.image]
        _, truth, _ = draw_image(cfg, plan_item, sample_appearance(np.random.default_rng([5, 0, plan_item.identity])))
        vis = visible_mask(item.keypoints)
        assert np.array_equal(vis, visible_mask(truth))
        assert np.abs(item.keypoints[vis] - truth[vis]).max() <= 0.5


# ---------------------------------------------------------------------------------------------- resize


def exact_images(cfg: SynthConfig, root: Path) -> tuple[list[ShardImage], dict[str, np.ndarray]]:
    """ShardImages with the drawing's exact float keypoints, and the keypoints of the same drawing at half size."""
    h, w = cfg.resolved_size()
    half = SynthConfig(**{**cfg.__dict__, "size": (h // 2, w // 2)})
    images, truth = [], {}
    for item in plan(cfg):
        if item.annotation_name is None:
            continue
        app = sample_appearance(np.random.default_rng([cfg.seed, 0, item.identity]))
        _, xy, _ = draw_image(cfg, item, app)
        _, small, _ = draw_image(half, item, app)
        images.append(shard_image(root, item.relpath, str(item.identity), xy))
        truth[item.relpath] = small
    return images, truth


@pytest.mark.parametrize("layout", ["market", "deepfashion"])
@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_resize_scales_keypoints(layout, fmt, market_tree, deepfashion_tree, tmp_path):
    root, summary = market_tree if layout == "market" else deepfashion_tree
    cfg = SynthConfig(**{**summary["config"], "size": None})
    h, w = cfg.resolved_size()
    images, truth = exact_images(cfg, root)
    write_set(tmp_path / "s", root, images, format=fmt, size=(h // 2, w // 2))
    shards = ShardSet(tmp_path / "s")
    assert shards.manifest.size == (h // 2, w // 2)
    for i, item in enumerate(images):
        sample = shards[i]
        assert sample.image.shape == (h // 2, w // 2, 3)
        # the stored pixels are the raw image shrunk by area averaging (re-encoded as JPEG q95 for Parquet)
        expected = cv2.resize(rgb_of(root / item.image), (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        err = np.abs(sample.image.astype(int) - expected).mean()
        assert err == 0 if fmt == "hdf5" else err < 3.0  # q95 4:4:4 on noisy 32-px-wide images
        # ... and the keypoints are where the same mannequin drawn at half size has its joints
        small = truth[item.image]
        both = visible_mask(sample.keypoints) & visible_mask(small)
        assert both.sum() >= 4
        assert np.abs(sample.keypoints[both] - small[both]).max() <= 0.5
        assert np.all(sample.keypoints[~visible_mask(item.keypoints)] == MISSING)
    if fmt == "parquet":
        table = pq.read_table(tmp_path / "s" / "images-00000.parquet", columns=["data", "encoding", "width"])
        assert set(table["encoding"].to_pylist()) == {"jpeg"} and set(table["width"].to_pylist()) == {w // 2}
        assert table["data"][0].as_py() != (root / images[0].image).read_bytes()
        # small row groups (a random read fetches one), image bytes neither compressed nor in the statistics
        meta = pq.ParquetFile(tmp_path / "s" / "images-00000.parquet").metadata
        assert meta.num_row_groups == -(-len(images) // ROWS_PER_GROUP) > 1
        data_column = meta.row_group(0).column(SHARD_IMAGES_SCHEMA.names.index("data"))
        assert data_column.compression == "UNCOMPRESSED" and not data_column.is_stats_set


def blob_tree(root: Path) -> tuple[Path, ShardImage]:
    """A 64×128 PNG, black but for a 4×4 white block on pixels 8..11 × 40..43: its centre is (9.5, 41.5)."""
    image = np.zeros((128, 64, 3), np.uint8)
    image[40:44, 8:12] = 255
    write(root / "person" / "blob.png", cv2_bytes(image, ".png"))
    xy = np.full((NUM_KEYPOINTS, 2), MISSING, np.float32)
    xy[0] = (9.5, 41.5)
    return root, shard_image(root, "person/blob.png", "person", xy)


def centroid(image: np.ndarray) -> np.ndarray:
    weight = image[..., 0].astype(np.float64)
    ys, xs = np.indices(weight.shape)
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


@pytest.mark.parametrize("size", [(64, 32), (256, 128), (96, 48)])
def test_keypoints_use_the_pixel_centre_convention(tmp_path, size):
    # x' = (x + 0.5) * W'/W - 0.5: the scaled keypoint stays on the centre of the resized blob
    root, item = blob_tree(tmp_path / "raw")
    write_shard_set(tmp_path / "s", split="test", dataset=None, raw_root=root, images=[item],
                    pairs=np.zeros((0, 2), np.int64), pair_identities=[], format="hdf5", size=size)
    sample = ShardSet(tmp_path / "s")[0]
    assert np.allclose(sample.keypoints[0], centroid(sample.image), atol=0.02)
    assert np.allclose(sample.keypoints[0], scale_keypoints(item.keypoints, (128, 64), size)[0])
    assert np.all(sample.keypoints[1:] == MISSING)


def test_reencodes_only_what_needs_it(tmp_path):
    ys, xs = np.indices((128, 64))
    photo = np.dstack([xs * 4, ys * 2, (xs + ys) % 256]).astype(np.uint8)  # smooth: JPEG keeps it close
    alpha = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    alpha[:, :8, 3] = 0
    root = tmp_path / "raw"
    write(root / "p" / "plain.jpg", cv2_bytes(photo, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90))
    write(root / "p" / "plain.png", cv2_bytes(photo, ".png"))
    # stored sideways with EXIF "rotate 90° clockwise": upright it is 64 wide × 128 high
    write(root / "p" / "exif.jpg", with_orientation(np.ascontiguousarray(np.rot90(photo, 1)), 6))
    write(root / "p" / "alpha.png", cv2_bytes(alpha, ".png"))
    write(root / "p" / "sixteen.png", cv2_bytes(photo.astype(np.uint16) * 257, ".png"))
    names = ["plain.jpg", "plain.png", "exif.jpg", "alpha.png", "sixteen.png"]
    xy = np.full((NUM_KEYPOINTS, 2), MISSING, np.float32)
    images = [shard_image(root, f"p/{n}", "p", xy) for n in names]
    write_set(tmp_path / "s", root, images, size=(128, 64))
    rows = {r["image"]: r for r in pq.read_table(tmp_path / "s" / "images-00000.parquet").to_pylist()}
    kept = {n for n in names if rows[f"p/{n}"]["data"] == (root / "p" / n).read_bytes()}
    # 16-bit samples decode the same way (>> 8) in OpenCV and pipeline.decode: kept as they are
    assert kept == {"plain.jpg", "plain.png", "sixteen.png"}
    assert rows["p/exif.jpg"]["encoding"] == "jpeg" and rows["p/alpha.png"]["encoding"] == "png"
    shards = ShardSet(tmp_path / "s")
    for i, n in enumerate(names):
        got = shards[i].image
        want = rgb_of(root / "p" / n)
        # upright, composited: what pipeline.decode saw (the EXIF one through one more JPEG encode)
        assert np.abs(got.astype(int) - want).mean() < (3 if n == "exif.jpg" else 1e-9), n


# ---------------------------------------------------------------------------------------------- refusals


def test_changed_raw_file_is_named(market, tmp_path):
    root, images = market
    changed = [ShardImage(**{**images[0].__dict__, "content_hash": "0" * 64}), *images[1:]]
    with pytest.raises(PipelineError, match=rf"{images[0].image}: file changed since extraction.*re-run extract"):
        write_set(tmp_path / "s", root, changed)
    assert not (tmp_path / "s" / "manifest.json").exists()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "s").iterdir())
    escaping = [ShardImage(**{**images[0].__dict__, "image": "../outside.jpg"})]
    with pytest.raises(PipelineError, match="outside.jpg"):
        write_shard_set(tmp_path / "t", split="train", dataset=None, raw_root=root, images=escaping,
                        pairs=np.zeros((0, 2)), pair_identities=[])


def test_bad_pairs_are_refused(market, tmp_path):
    root, images = market
    kw = dict(split="train", dataset=None, raw_root=root, images=images[:12])
    with pytest.raises(PipelineError, match="pair indices"):
        write_shard_set(tmp_path / "s", pairs=np.array([[0, 12]]), pair_identities=[images[0].identity], **kw)
    with pytest.raises(PipelineError, match="same identity"):
        write_shard_set(tmp_path / "s", pairs=np.array([[0, 11]]), pair_identities=[images[0].identity], **kw)
    with pytest.raises(PipelineError, match="listed twice"):
        write_shard_set(tmp_path / "s", split="train", dataset=None, raw_root=root, images=[images[0], images[0]],
                        pairs=np.zeros((0, 2)), pair_identities=[])


def test_verify_names_damaged_files(market, tmp_path):
    root, images = market
    write_set(tmp_path / "p", root, images, images_per_shard=20)
    write_set(tmp_path / "h", root, images, images_per_shard=20, format="hdf5")
    # one flipped byte in the middle of a Parquet image file: same size, other sha256
    target = tmp_path / "p" / "images-00001.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    problems = verify_shard_set(tmp_path / "p")
    assert len(problems) == 1 and str(target) in problems[0] and "sha256" in problems[0]
    ShardSet(tmp_path / "p")  # sizes still match: the cheap check opens it ...
    with pytest.raises(PipelineError, match="images-00001.parquet"):
        ShardSet(tmp_path / "p", verify=True)  # ... the full one does not
    # a truncated HDF5 file
    target = tmp_path / "h" / "images-00000.h5"
    target.write_bytes(target.read_bytes()[:-1000])
    problems = verify_shard_set(tmp_path / "h")
    assert len(problems) == 1 and str(target) in problems[0] and "bytes" in problems[0]
    with pytest.raises(PipelineError, match="images-00000.h5"):
        ShardSet(tmp_path / "h")


def test_manifest_path_escaping_the_folder_is_refused(market, tmp_path):
    root, images = market
    write_set(tmp_path / "s", root, images[:6])
    manifest = tmp_path / "s" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"][0]["path"] = "../x"
    manifest.write_text(json.dumps(data))
    problems = verify_shard_set(tmp_path / "s")
    assert len(problems) == 1 and "'../x'" in problems[0]
    with pytest.raises(PipelineError, match=r"\.\./x"):
        ShardSet(tmp_path / "s")


def test_crash_before_manifest_leaves_no_shard_set(market, tmp_path, monkeypatch):
    root, images = market

    def crash(self, folder):
        raise KeyboardInterrupt("power cut")

    write_set(tmp_path / "s", root, images[:12])
    monkeypatch.setattr(Manifest, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        write_set(tmp_path / "new", root, images[:12])
    assert (tmp_path / "new" / "images-00000.parquet").is_file()  # the parts are there ...
    with pytest.raises(PipelineError, match="no manifest"):  # ... but no reader takes them
        ShardSet(tmp_path / "new")
    assert "no manifest" in verify_shard_set(tmp_path / "new")[0]
    # a crash while overwriting a good set leaves no set either (the old manifest went first)
    with pytest.raises(KeyboardInterrupt):
        write_set(tmp_path / "s", root, images[:6], overwrite=True)
    with pytest.raises(PipelineError, match="no manifest"):
        ShardSet(tmp_path / "s")
    monkeypatch.undo()
    # re-running over the leftovers works without --overwrite: there was no valid set to protect
    write_set(tmp_path / "new", root, images[:12])
    assert len(ShardSet(tmp_path / "new", verify=True)) == 12


def test_overwrite(market, tmp_path):
    root, images = market
    write_set(tmp_path / "s", root, images, images_per_shard=10)
    with pytest.raises(PipelineError, match="already holds a shard set.*--overwrite"):
        write_set(tmp_path / "s", root, images[:12], format="hdf5")
    assert len(ShardSet(tmp_path / "s")) == len(images)  # untouched
    (tmp_path / "s" / "notes.txt").write_text("mine")
    write_set(tmp_path / "s", root, images[:12], format="hdf5", compression="lzf", overwrite=True, progress=True)
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["images-00000.h5", "manifest.json", "notes.txt", "pairs.parquet"]
    shards = ShardSet(tmp_path / "s", verify=True)
    assert shards.manifest.format == "hdf5" and len(shards) == 12


# ---------------------------------------------------------------------------------------------- workers


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_pickles_and_feeds_a_dataloader(market, tmp_path, fmt):
    import torch

    root, images = market
    write_set(tmp_path / "s", root, images[:16], format=fmt, images_per_shard=6)
    shards = ShardSet(tmp_path / "s")
    direct = [shards[i] for i in range(len(shards))]  # opens the files in this process
    clone = pickle.loads(pickle.dumps(shards))
    assert np.array_equal(clone[5].image, direct[5].image) and clone[5].identity == direct[5].identity
    loader = torch.utils.data.DataLoader(shards, batch_size=4, shuffle=True, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))
    seen = 0
    for batch in loader:
        for j, i in enumerate(batch.index.tolist()):
            assert torch.equal(batch.image[j], torch.from_numpy(direct[i].image))
            assert torch.equal(batch.keypoints[j], torch.from_numpy(direct[i].keypoints))
            assert batch.identity[j] == direct[i].identity
            seen += 1
    assert seen == 16


def test_dask_workers_write_the_same_files_as_threads(market, tmp_path):
    """Each shard file is one Dask task on a local cluster; the files are the same bytes as written here."""
    root, images = market
    threads = write_set(tmp_path / "threads", root, images, size=(64, 32), images_per_shard=10)
    dask = write_set(tmp_path / "dask", root, images, size=(64, 32), images_per_shard=10, dask_workers=2)
    assert len(threads.files) == len(dask.files) >= 4
    assert [(e.path, e.rows, e.sha256) for e in dask.files] == [(e.path, e.rows, e.sha256) for e in threads.files]
    assert verify_shard_set(tmp_path / "dask") == []
