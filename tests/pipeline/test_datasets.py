"""Raw layouts: detection, identities, splits and skip reasons on tiny trees in the real layouts."""

from __future__ import annotations

import functools
import gzip
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

import pipeline
from pipeline.datasets import DATASETS, IMAGE_EXTENSIONS, RawImage, background, detect_layout, list_images
from pipeline.datasets.background import start_listing
from pipeline.errors import PipelineError
from schemas.patn import deepfashion_flat_name, deepfashion_relpath

MARKET_FOLDERS = ("bounding_box_train", "bounding_box_test", "query")


@functools.cache
def jpeg() -> bytes:
    """A small real JPEG (64×32 grey gradient), encoded once."""
    image = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (64, 1))
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    assert ok
    return data.tobytes()


def put(root: Path, rel: str, data: bytes | None = None) -> Path:
    """Write ``root/rel`` (a JPEG unless ``data`` is given), creating its folders."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg() if data is None else data)
    return path


def files_on_disk(root: Path, folders: tuple[str, ...]) -> Counter:
    """Every non-folder entry below ``root/<folder>`` (links to folders count, ``.*.tmp`` do not), via os.walk."""
    found: Counter = Counter()
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(root / folder):
            rel = Path(dirpath).relative_to(root).as_posix()
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for name in filenames + links:
                if not (name.startswith(".") and name.endswith(".tmp")):
                    found[f"{rel}/{name}"] += 1
    return found


def by_image(rows: list[RawImage]) -> dict[str, RawImage]:
    images = [r.image for r in rows]
    assert images == sorted(images), "rows must come sorted by image"
    assert len(set(images)) == len(images), "an image listed twice"
    return {r.image: r for r in rows}


def check_rows(rows: list[RawImage]) -> None:
    """What holds for every listing: kept rows have an identity and a split value of the contract."""
    for r in rows:
        assert r.dataset in DATASETS
        assert r.split in ("train", "test", None)
        assert isinstance(r.identity, str)
        if r.skip_reason is None:
            assert r.identity, r
        else:
            assert r.skip_reason.strip() and "\n" not in r.skip_reason, r


# ---------------------------------------------------------------- Market-1501


def test_market_mannequins_identity_camera_split_and_skips(market_tree):
    root, summary = market_tree
    assert detect_layout(root) == "market1501"
    rows = list_images(root)
    check_rows(rows)
    table = by_image(rows)
    assert Counter(table.keys()) == files_on_disk(root, MARKET_FOLDERS)
    assert len(rows) == summary["images"] == 40
    for r in rows:
        folder, name = r.image.split("/")
        assert r.split == ("train" if folder == "bounding_box_train" else "test")
        assert r.patn_name == name and r.identity == name.split("_")[0]
        assert r.camera == int(name.split("_")[1][1])
    reasons = Counter(r.skip_reason for r in rows)
    assert reasons == {None: 36, "Market-1501 junk id -1": 2, "Market-1501 distractor id 0000": 2}
    assert {r.identity for r in rows if r.skip_reason} == {"-1", "0000"}
    # Market's own split never shares a person between train and test
    train = {r.identity for r in rows if r.split == "train" and not r.skip_reason}
    test = {r.identity for r in rows if r.split == "test" and not r.skip_reason}
    assert train and test and not train & test


def test_market_download_extras_are_skipped_or_left_out(tmp_path):
    root = tmp_path / "Market-1501-v15.09.15"
    put(root, "bounding_box_train/0002_c1s1_000451_03.jpg")
    put(root, "bounding_box_test/-1_c3s2_045328_01.jpg")
    put(root, "bounding_box_test/0000_c6s3_051942_03.jpg")
    put(root, "bounding_box_test/Thumbs.db", b"\x00" * 16)
    put(root, "query/0003_c2s1_000301_00.jpg")
    put(root, "query/0003_c2s1_000301_00 (copy).jpg")  # a space and a suffix: not the pattern
    put(root, "query/3_c2s1_000301_00.jpg")
    put(root, "query/.DS_Store", b"mac")
    put(root, "query/.0004_c1s1_000001_01.jpg.x1y2.tmp")  # our own half-written file: left out
    put(root, "bounding_box_train/extra/0005_c1s1_000001_01.jpg")  # a subfolder the download does not have
    put(root, "gt_bbox/0001_c1s1_001051_00.jpg")  # the hand-drawn boxes: not part of the listing
    put(root, "gt_query/0001_c1s1_001051_00_good.mat", b"mat")
    put(root, "readme.txt", b"read me")
    rows = list_images(root)
    check_rows(rows)
    table = by_image(rows)
    assert Counter(table.keys()) == files_on_disk(root, MARKET_FOLDERS)
    assert not any(r.image.startswith(("gt_bbox", "gt_query", "readme")) for r in rows)
    assert not any(r.image.endswith(".tmp") for r in rows)

    ok = table["bounding_box_train/0002_c1s1_000451_03.jpg"]
    assert (ok.split, ok.identity, ok.camera, ok.patn_name, ok.skip_reason) == (
        "train", "0002", 1, "0002_c1s1_000451_03.jpg", None)
    assert table["query/0003_c2s1_000301_00.jpg"].split == "test"
    junk = table["bounding_box_test/-1_c3s2_045328_01.jpg"]
    assert (junk.identity, junk.camera, junk.skip_reason) == ("-1", 3, "Market-1501 junk id -1")
    assert table["bounding_box_test/0000_c6s3_051942_03.jpg"].skip_reason == "Market-1501 distractor id 0000"
    assert table["bounding_box_test/Thumbs.db"].skip_reason == "not an image file"
    assert table["query/.DS_Store"].skip_reason == "hidden file"
    for bad in ("query/0003_c2s1_000301_00 (copy).jpg", "query/3_c2s1_000301_00.jpg"):
        assert "PPPP_cCsS_FFFFFF_NN.jpg" in table[bad].skip_reason
        assert table[bad].identity == "" and table[bad].camera is None
    nested = table["bounding_box_train/extra/0005_c1s1_000001_01.jpg"]
    assert nested.skip_reason.startswith("not directly inside bounding_box_train/")
    assert nested.identity == "0005"  # best known, for the reader of the table


def test_market_forced_on_other_layout_and_options_that_do_not_apply(tmp_path, market_tree):
    put(tmp_path / "df", "img/MEN/Denim/id_00000080/01_1_front.jpg")
    with pytest.raises(PipelineError, match="bounding_box_train"):
        list_images(tmp_path / "df", "market1501")
    root, _ = market_tree
    with pytest.raises(PipelineError, match="DeepFashion only"):
        list_images(root, split_lists=(tmp_path / "a.lst", tmp_path / "b.lst"))


# ---------------------------------------------------------------- DeepFashion In-shop


def test_deepfashion_mannequins_follow_the_partition_file(deepfashion_tree):
    root, summary = deepfashion_tree
    assert detect_layout(root) == "deepfashion"
    rows = list_images(root)
    check_rows(rows)
    table = by_image(rows)
    assert Counter(table.keys()) == files_on_disk(root, ("img",))
    assert len(rows) == summary["images"]
    lines = (root / "list_eval_partition.txt").read_text().splitlines()[2:]
    expected = {p: {"train": "train", "query": "test", "gallery": "test"}[s] for p, _, s in map(str.split, lines)}
    assert {r.image: r.split for r in rows} == expected
    for r in rows:
        assert r.skip_reason is None and r.patn_name == deepfashion_flat_name(r.image)
        assert r.identity == r.image.split("/")[3] and r.view == r.image.rsplit("_", 1)[1][:-4]
    assert {r.view for r in rows} <= {"front", "side", "back", "full", "additional", "flat"}
    assert any(r.view == "flat" for r in rows)  # the distractor product shots are images too


def test_deepfashion_partition_maps_onto_img_highres_and_unlisted_images(tmp_path):
    root = tmp_path / "inshop"
    put(root, "img_highres/WOMEN/Dresses/id_00000002/02_1_front.jpg")
    put(root, "img_highres/WOMEN/Dresses/id_00000002/02_2_side.jpg")
    put(root, "img_highres/MEN/Denim/id_00000080/01_4_full.jpg")
    put(root, "img_highres/MEN/Denim/id_00000099/01_1_front.jpg")  # on disk, not in the partition file
    put(root, "Eval/list_eval_partition.txt", (
        b"3\nimage_name item_id evaluation_status\n"
        b"img/WOMEN/Dresses/id_00000002/02_1_front.jpg                     id_00000002 query\n"
        b"img/WOMEN/Dresses/id_00000002/02_2_side.jpg                      id_00000002 gallery\n"
        b"img/MEN/Denim/id_00000080/01_4_full.jpg                          id_00000080 train\n"
    ))
    assert detect_layout(root) == "deepfashion"
    table = by_image(list_images(root))  # only img_highres/ exists: listed without asking
    assert {k: v.split for k, v in table.items()} == {
        "img_highres/WOMEN/Dresses/id_00000002/02_1_front.jpg": "test",
        "img_highres/WOMEN/Dresses/id_00000002/02_2_side.jpg": "test",
        "img_highres/MEN/Denim/id_00000080/01_4_full.jpg": "train",
        "img_highres/MEN/Denim/id_00000099/01_1_front.jpg": None,
    }
    unlisted = table["img_highres/MEN/Denim/id_00000099/01_1_front.jpg"]
    assert unlisted.skip_reason is None and unlisted.patn_name == "fashionMENDenimid0000009901_1front.jpg"

    # with both trees, img/ unless highres is asked for
    put(root, "img/MEN/Denim/id_00000080/01_4_full.jpg")
    assert [r.image for r in list_images(root)] == ["img/MEN/Denim/id_00000080/01_4_full.jpg"]
    assert all(r.image.startswith("img_highres/") for r in list_images(root, highres=True))
    put(tmp_path / "only-img", "img/MEN/Denim/id_00000080/01_4_full.jpg")
    with pytest.raises(PipelineError, match="no img_highres/ folder"):
        list_images(tmp_path / "only-img", highres=True)


def test_deepfashion_broken_partition_file_is_refused(tmp_path):
    root = tmp_path / "inshop"
    put(root, "img/MEN/Denim/id_00000080/01_4_full.jpg")
    header = "image_name item_id evaluation_status\n"
    line = "img/MEN/Denim/id_00000080/01_4_full.jpg id_00000080 {}\n"
    for text, message in (
        ("2\n" + header + line.format("train"), "says 2 images but 1"),
        ("1\n" + header + line.format("validation"), ":3: unknown evaluation_status 'validation'"),
        ("1\n" + header + "img/MEN/Denim/id_00000080/01_4_full.jpg\n", ":3: expected"),
        ("img/MEN/Denim/id_00000080/01_4_full.jpg id_00000080 train\n", "count line"),
    ):
        put(root, "list_eval_partition.txt", text.encode())
        with pytest.raises(PipelineError, match=message):
            list_images(root)


def test_deepfashion_split_lists_decide_through_patn_names(tmp_path, shared_reference):
    train_names = gzip.decompress((shared_reference / "patn_fashion_train.lst.gz").read_bytes()).decode().split()[:4]
    test_names = gzip.decompress((shared_reference / "patn_fashion_test.lst.gz").read_bytes()).decode().split()[:3]
    root = tmp_path / "inshop"
    for name in train_names + test_names:
        put(root, deepfashion_relpath(name))
    extra = put(root, "img/MEN/Denim/id_09999999/01_1_front.jpg").relative_to(root).as_posix()
    # a partition file that says otherwise: the lists win
    put(root, "list_eval_partition.txt", (
        f"1\nimage_name item_id evaluation_status\n{deepfashion_relpath(train_names[0])} x gallery\n").encode())
    lists = (put(tmp_path, "train.lst", "\n".join(train_names).encode()),
             put(tmp_path, "test.lst", "\n".join(test_names).encode() + b"\n"))
    rows = list_images(root, split_lists=lists)
    check_rows(rows)
    got = {r.patn_name: r.split for r in rows}
    assert got == {**dict.fromkeys(train_names, "train"), **dict.fromkeys(test_names, "test"),
                   deepfashion_flat_name(extra): None}
    assert {r.image for r in rows} == {deepfashion_relpath(n) for n in train_names + test_names} | {extra}

    put(tmp_path, "test.lst", "\n".join(test_names + train_names[:1]).encode())
    with pytest.raises(PipelineError, match="in both"):
        list_images(root, split_lists=lists)
    with pytest.raises(PipelineError, match="missing.lst"):
        list_images(root, split_lists=(tmp_path / "missing.lst", lists[1]))


def inshop_items(root: Path, n: int) -> list[str]:
    """``n`` items of 3 views each under ``root/img`` (no partition file); returns their ids."""
    ids = []
    for i in range(n):
        item = f"id_{i + 1:08d}"
        gender, category = ("WOMEN", "Dresses") if i % 2 else ("MEN", "Tees_Tanks")
        for view in ("1_front", "2_side", "3_back"):
            put(root, f"img/{gender}/{category}/{item}/01_{view}.jpg")
        ids.append(item)
    return ids


def split_of_identity(rows: list[RawImage]) -> dict[str, str]:
    splits: dict[str, set] = {}
    for r in rows:
        if r.skip_reason is None:
            splits.setdefault(r.identity, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values()), "an identity is split between train and test"
    return {k: s.pop() for k, s in splits.items()}


def test_deepfashion_seeded_split_is_stable_per_identity_and_seed(tmp_path):
    root = tmp_path / "inshop"
    ids = inshop_items(root, 40)
    first = split_of_identity(list_images(root, seed=7))
    assert split_of_identity(list_images(root, seed=7)) == first
    assert set(first) == set(ids) and set(first.values()) == {"train", "test"}
    assert 8 <= Counter(first.values())["test"] <= 32  # about half of 40
    assert split_of_identity(list_images(root, seed=8)) != first
    assert set(split_of_identity(list_images(root, seed=7, test_fraction=0.0)).values()) == {"train"}
    assert set(split_of_identity(list_images(root, seed=7, test_fraction=1.0)).values()) == {"test"}
    # adding an item never moves the others
    inshop_items(tmp_path / "more", 41)
    more = split_of_identity(list_images(tmp_path / "more", seed=7))
    assert {k: more[k] for k in first} == first
    with pytest.raises(PipelineError, match="between 0 and 1"):
        list_images(root, test_fraction=1.5)


def test_deepfashion_odd_files_are_skipped_with_reasons(tmp_path):
    root = tmp_path / "inshop"
    good = "img/WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg"
    put(root, good)
    put(root, "img/WOMEN/Blouses_Shirts/id_00000001/Thumbs.db", b"\x00")
    put(root, "img/WOMEN/Blouses_Shirts/id_00000001/.DS_Store", b"\x00")
    put(root, "img/WOMEN/Blouses_Shirts/id_00000001/02_5_sideways.jpg")
    put(root, "img/WOMEN/Blouses_Shirts/id_00000001/front.jpg")
    put(root, "img/WOMEN/Blouses_Shirts/id_00000001/.ipynb_checkpoints/02_1_front.jpg")
    put(root, "img/WOMEN/Blouses_Shirts/02_1_front.jpg")  # one folder too shallow
    put(root, "img/KIDS/Tees/id_00000003/01_1_front.jpg")
    put(root, "img/WOMEN/Dresses/item_7/01_1_front.jpg")
    put(root, "img/stray.jpg")
    rows = list_images(root, test_fraction=0.0)
    check_rows(rows)
    table = by_image(rows)
    assert Counter(table.keys()) == files_on_disk(root, ("img",))
    assert table[good].skip_reason is None and table[good].split == "train"
    reasons = {k: v.skip_reason for k, v in table.items() if k != good}
    assert reasons["img/WOMEN/Blouses_Shirts/id_00000001/Thumbs.db"] == "not an image file"
    assert reasons["img/WOMEN/Blouses_Shirts/id_00000001/.DS_Store"] == "hidden file"
    assert "unknown In-shop view 'sideways'" in reasons["img/WOMEN/Blouses_Shirts/id_00000001/02_5_sideways.jpg"]
    assert "hidden folder .ipynb_checkpoints/" in reasons[
        "img/WOMEN/Blouses_Shirts/id_00000001/.ipynb_checkpoints/02_1_front.jpg"]
    for rel in ("img/WOMEN/Blouses_Shirts/id_00000001/front.jpg", "img/WOMEN/Blouses_Shirts/02_1_front.jpg",
                "img/KIDS/Tees/id_00000003/01_1_front.jpg", "img/WOMEN/Dresses/item_7/01_1_front.jpg",
                "img/stray.jpg"):
        assert reasons[rel].startswith("not an In-shop image path img/{MEN,WOMEN}/<Category>/id_XXXXXXXX/"), rel
    skipped = [v for v in table.values() if v.skip_reason]
    assert all(v.split is None and v.patn_name is None and v.view is None for v in skipped)
    assert table["img/KIDS/Tees/id_00000003/01_1_front.jpg"].identity == "id_00000003"  # best known
    assert table["img/stray.jpg"].identity == ""


# ---------------------------------------------------------------- folder


def test_folder_layout_identities_nesting_and_root_files(tmp_path):
    root = tmp_path / "people"
    put(root, "alice/a.jpg")
    put(root, "alice/day 2/b.PNG", b"not decoded here")
    put(root, "alice/notes.txt", b"x")
    put(root, "bob/1.jpeg")
    put(root, "bob/.hidden.jpg")
    put(root, "bob/.1.jpeg.ab12.tmp")
    put(root, "labels.csv", b"a,b")
    put(root, "cover.jpg")
    put(root, ".git/objects/aa", b"git")  # a hidden folder of the root is not an identity
    assert detect_layout(root) == "folder"
    rows = list_images(root)
    check_rows(rows)
    table = by_image(rows)
    assert set(table) == {"alice/a.jpg", "alice/day 2/b.PNG", "alice/notes.txt", "bob/1.jpeg", "bob/.hidden.jpg",
                          "labels.csv", "cover.jpg"}
    assert {k for k, v in table.items() if v.skip_reason is None} == {"alice/a.jpg", "alice/day 2/b.PNG", "bob/1.jpeg"}
    assert table["alice/day 2/b.PNG"].identity == "alice"
    assert table["alice/notes.txt"].skip_reason == "not an image file"
    assert table["bob/.hidden.jpg"].skip_reason == "hidden file" and table["bob/.hidden.jpg"].identity == "bob"
    assert table["cover.jpg"].skip_reason == "not inside an identity folder" and table["cover.jpg"].identity == ""
    assert table["labels.csv"].skip_reason == "not inside an identity folder"
    assert all(r.patn_name is None and r.camera is None and r.view is None for r in rows)
    assert all(r.dataset == "folder" for r in rows)
    kept = [r for r in rows if r.skip_reason is None]
    assert all(r.split in ("train", "test") for r in kept)
    split_of_identity(kept)


def test_folder_seeded_split_defaults_to_a_tenth(tmp_path):
    root = tmp_path / "people"
    for i in range(300):
        put(root, f"p{i:03d}/0.jpg", b"")
    splits = split_of_identity(list_images(root, seed=1))
    assert 10 <= Counter(splits.values())["test"] <= 55  # ~30 of 300
    assert splits == split_of_identity(list_images(root, "folder", seed=1))
    assert splits != split_of_identity(list_images(root, seed=2))


def test_odd_names_survive_as_strings(tmp_path):
    root = tmp_path / "people"
    names = ["José Ñúñez/ümlaut 1.jpg", "日本/写真.jpg", "new\nline/a\nb.jpg", "tab\tx/c.jpg"]
    for name in names:
        put(root, name)
    table = by_image(list_images(root))
    assert set(table) == set(names)
    assert table["日本/写真.jpg"].identity == "日本" and table["new\nline/a\nb.jpg"].identity == "new\nline"
    assert all(r.skip_reason is None for r in table.values())

    market = tmp_path / "market"
    put(market, "query/0001_c1s1_000001_01.jpg")
    put(market, "query/0001_c1s1_000001_01 ü.jpg")
    m = by_image(list_images(market))
    assert m["query/0001_c1s1_000001_01.jpg"].skip_reason is None
    assert "PPPP_cCsS_FFFFFF_NN.jpg" in m["query/0001_c1s1_000001_01 ü.jpg"].skip_reason


@pytest.mark.skipif(sys.platform != "linux", reason="arbitrary bytes in names are a Linux file-system feature")
def test_names_that_are_not_utf8_are_skipped_with_a_printable_key(tmp_path):
    root = tmp_path / "people"
    (root / "ann").mkdir(parents=True)
    put(root, "ann/ok.jpg")
    try:
        with open(os.path.join(os.fsencode(root), b"ann", b"caf\xe9.jpg"), "wb") as f:
            f.write(jpeg())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    table = by_image(list_images(root))
    assert set(table) == {"ann/ok.jpg", "ann/caf\\xe9.jpg"}
    bad = table["ann/caf\\xe9.jpg"]
    assert "not valid UTF-8" in bad.skip_reason
    bad.image.encode("utf-8")  # writable to Parquet


# ---------------------------------------------------------------- links, loops and other non-files


def test_links_loops_fifos_and_folders_named_like_images(tmp_path):
    root = tmp_path / "market"
    real = put(root, "bounding_box_train/0002_c1s1_000451_03.jpg")
    (root / "bounding_box_train/0003_c1s1_000001_01.jpg").mkdir()  # a folder named like an image
    put(root, "bounding_box_train/x.jpg/0004_c1s1_000001_01.jpg")
    os.symlink(real, root / "bounding_box_train/0005_c2s1_000001_01.jpg")  # a link to a file is a file
    os.symlink(root / "bounding_box_train", root / "bounding_box_train/loop")  # a loop through a folder link
    (root / "query").mkdir()
    os.symlink("self.jpg", root / "query/self.jpg")  # a link to itself: ELOOP when followed
    os.symlink(root / "nowhere.jpg", root / "query/0006_c1s1_000001_01.jpg")
    os.mkfifo(root / "query/0007_c1s1_000001_01.jpg")  # reading it would block: must not be an image
    rows = list_images(root)
    check_rows(rows)
    table = by_image(rows)
    assert Counter(table.keys()) == files_on_disk(root, MARKET_FOLDERS)
    assert table["bounding_box_train/0005_c2s1_000001_01.jpg"].skip_reason is None
    assert table["bounding_box_train/loop"].skip_reason == "symbolic link to a folder, not followed"
    assert "cannot be followed" in table["query/self.jpg"].skip_reason
    assert table["query/0006_c1s1_000001_01.jpg"].skip_reason == "broken symbolic link"
    assert table["query/0007_c1s1_000001_01.jpg"].skip_reason.startswith("not a regular file")
    assert table["bounding_box_train/x.jpg/0004_c1s1_000001_01.jpg"].skip_reason.startswith("not directly inside")
    assert "bounding_box_train/0003_c1s1_000001_01.jpg" not in table
    assert [r.image for r in rows if r.skip_reason is None] == [
        "bounding_box_train/0002_c1s1_000451_03.jpg", "bounding_box_train/0005_c2s1_000001_01.jpg"]


def test_folder_layout_does_not_follow_identity_folder_links(tmp_path):
    root = tmp_path / "people"
    put(root, "ann/1.jpg")
    os.symlink(root, root / "loop")
    os.symlink(root / "ann", root / "ann/again")
    table = by_image(list_images(root))
    assert table["ann/1.jpg"].skip_reason is None
    assert table["loop"].skip_reason == "symbolic link to a folder, not followed"
    assert table["ann/again"].skip_reason == "symbolic link to a folder, not followed"
    assert len(table) == 3


def test_layout_folders_may_themselves_be_links(tmp_path):
    put(tmp_path / "store", "query/0001_c1s1_000001_01.jpg")
    (tmp_path / "market").mkdir()
    os.symlink(tmp_path / "store/query", tmp_path / "market/query")
    rows = list_images(tmp_path / "market")
    assert [(r.image, r.skip_reason) for r in rows] == [("query/0001_c1s1_000001_01.jpg", None)]


def test_unreadable_folders(tmp_path, monkeypatch):
    root = tmp_path / "people"
    put(root, "ann/1.jpg")
    put(root, "ann/private/2.jpg")
    refused = {os.fspath(root / "ann/private")}
    real_scandir = os.scandir

    def scandir(path):
        # chmod 000 does not stop root (as in CI containers), so the refusal is simulated
        if os.fspath(path) in refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    table = by_image(list_images(root))
    assert table["ann/1.jpg"].skip_reason is None
    assert table["ann/private"].skip_reason == "folder cannot be read (Permission denied); its files are not listed"
    refused.add(os.fspath(root))  # the layout folder itself: nothing to list, so an error
    with pytest.raises(PipelineError, match=f"{root}: cannot list .*Permission denied"):
        list_images(root, "folder")


# ---------------------------------------------------------------- detection and errors


def test_detection_order_and_errors(tmp_path):
    both = tmp_path / "both"
    put(both, "query/0001_c1s1_000001_01.jpg")
    put(both, "img/MEN/Denim/id_00000080/01_4_full.jpg")
    assert detect_layout(both) == "market1501"  # Market's folders are the more specific sign
    assert {r.dataset for r in list_images(both, "deepfashion")} == {"deepfashion"}

    with pytest.raises(PipelineError, match=f"{tmp_path / 'missing'}.*does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(PipelineError, match="does not exist"):
        detect_layout(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match=f"{tmp_path / 'empty'}: no data set layout found"):
        list_images(tmp_path / "empty")
    put(tmp_path, "flat/a.jpg")  # images but no identity folders
    with pytest.raises(PipelineError, match="one subfolder per identity"):
        detect_layout(tmp_path / "flat")
    assert [r.skip_reason for r in list_images(tmp_path / "flat", "folder")] == ["not inside an identity folder"]
    put(tmp_path, "hidden-only/.cache/a.jpg")
    with pytest.raises(PipelineError, match="no data set layout"):
        list_images(tmp_path / "hidden-only")
    with pytest.raises(PipelineError, match="is a file"):
        list_images(put(tmp_path, "file.jpg"))
    with pytest.raises(PipelineError, match="unknown data set 'market'"):
        list_images(both, "market")
    (tmp_path / "empty-market/query").mkdir(parents=True)
    with pytest.raises(PipelineError, match="no files found in the market1501 layout"):
        list_images(tmp_path / "empty-market")
    (tmp_path / "empty-people/ann").mkdir(parents=True)
    with pytest.raises(PipelineError, match="no files found in the folder layout"):
        list_images(tmp_path / "empty-people")


def test_interface_constants():
    assert DATASETS == ("market1501", "deepfashion", "folder")
    assert {".jpg", ".jpeg", ".png"} <= IMAGE_EXTENSIONS and all(e == e.lower() for e in IMAGE_EXTENSIONS)
    row = RawImage("query/a.jpg", "folder", None, "a", None, None, None, None)
    with pytest.raises(AttributeError):
        row.split = "train"  # frozen: a listing cannot be edited by accident


# ---------------------------------------------------------------- listing in a child process (background.py)


def not_in_this_process(*_args, **_kwargs):
    raise AssertionError("listed in the test process: the child gave no result")


def odd_folder_tree(root: Path) -> Path:
    """A folder layout with nesting, skipped files and a name that is not UTF-8 where the file system allows it."""
    for rel in ("0001/a.jpg", "0001/day2/b.png", "0002/c.jpg", "0002/notes.txt", "loose.jpg", "José/ü.jpg"):
        put(root, rel)
    try:
        with open(os.path.join(os.fsencode(root), b"0002", b"caf\xe9.jpg"), "wb") as f:
            f.write(jpeg())
    except OSError:
        pass
    return root


def test_listing_in_a_child_process_gives_the_rows_of_list_images(market_tree, deepfashion_tree, tmp_path,
                                                                  monkeypatch):
    folder = odd_folder_tree(tmp_path / "people")
    cases = [(market_tree[0], {}), (deepfashion_tree[0], {}), (deepfashion_tree[0], {"dataset": "deepfashion"}),
             (folder, {}), (folder, {"seed": 7, "test_fraction": 0.5})]
    monkeypatch.setattr(background, "list_images", not_in_this_process)  # the child imports its own
    for root, options in cases:
        want = list_images(root, **options)
        with start_listing(root, **options) as listing:
            assert listing.seconds is None  # known once the rows are back
            rows = listing.rows()
        assert 0 < listing.seconds < 60  # list_images's own time, measured in the child
        assert rows == [row.as_dict() for row in want]  # same order, same fields, same values
        assert [RawImage(**row) for row in rows] == want
        assert all(list(row) == list(RawImage.__slots__) for row in rows)


def test_listing_errors_come_back_from_the_child_as_the_same_one_line_error(deepfashion_tree, market_tree, tmp_path,
                                                                          monkeypatch):
    (tmp_path / "empty").mkdir()
    bad_list = tmp_path / "train.lst"
    bad_list.write_bytes(b"\xff\xfe not text")
    cases = [(tmp_path / "missing", {}), (tmp_path / "empty", {}), (market_tree[0], {"dataset": "market"}),
             (deepfashion_tree[0], {"split_lists": (bad_list, bad_list)})]
    monkeypatch.setattr(background, "list_images", not_in_this_process)
    for root, options in cases:
        with pytest.raises(PipelineError) as here:
            list_images(root, **options)
        with pytest.raises(PipelineError) as child, start_listing(root, **options) as listing:
            listing.rows()
        assert str(child.value) == str(here.value) and "\n" not in str(child.value)
        assert str(root) in str(child.value) or str(bad_list) in str(child.value)


@pytest.mark.parametrize("executable", ["no-such-python", "/bin/false"])
def test_a_child_that_cannot_run_lists_in_this_process(market_tree, monkeypatch, executable):
    monkeypatch.setattr(sys, "executable", executable)
    with start_listing(market_tree[0]) as listing:
        assert listing.rows() == [row.as_dict() for row in list_images(market_tree[0])]
        assert listing.seconds > 0


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "sigint", "kill-9"])
def test_the_child_ends_with_its_parent(deepfashion_tree, tmp_path, how):
    """A split list that is a FIFO holds the child in its open() for good: only its parent's end can stop it.

    Ctrl-C signals the whole process group, ``kill -INT`` the parent alone (which then stops the child), and a
    parent killed with -9 runs no code at all (the child sees the pipe to it close)."""
    fifo = tmp_path / "train.lst"
    os.mkfifo(fifo)
    # Python keeps SIGINT ignored when it starts with it ignored (as under a non-interactive shell's `cmd &`);
    # the parent takes a terminal's Ctrl-C handling whatever the test runner was started with
    script = ("import signal, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "from pipeline.datasets.background import start_listing\n"
              "with start_listing(sys.argv[1], split_lists=(sys.argv[2], sys.argv[2])) as listing:\n"
              "    print(listing._child.pid, flush=True)\n"
              "    listing.rows()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(pipeline.__file__).resolve().parents[1])}
    parent = subprocess.Popen([sys.executable, "-c", script, str(deepfashion_tree[0]), str(fifo)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while open(f"/proc/{child}/wchan").read() != "wait_for_partner":  # the kernel's wait in a FIFO's open
            assert time.monotonic() < deadline, "the child never reached the FIFO"
            time.sleep(0.02)
        if how == "ctrl-c":
            os.killpg(parent.pid, signal.SIGINT)
        else:
            parent.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child)
        if how != "kill-9":
            assert "KeyboardInterrupt" in parent.stderr.read().decode()
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
        parent.stdout.close()
        parent.stderr.close()
