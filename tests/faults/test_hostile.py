"""Promise 6, hostile manifests and paths: nothing a manifest, a CSV or a link names is read from outside the data
root, and an image's size is bounded before it is decoded.

Already proven elsewhere: a manifest naming ``../`` or an absolute path, or a shard folder link out of its folder
(``tests/schemas/test_manifest.py::test_paths_that_leave_the_folder_are_refused``,
``::test_symlink_out_of_the_root_is_refused``, ``tests/pipeline/test_shards.py::
test_manifest_path_escaping_the_folder_is_refused``, and a keypoints row naming ``../`` in
``::test_changed_raw_file_is_named``); annotation and pair CSVs naming paths
(``tests/faults/test_bad_inputs.py::test_bad_annotation_csv_names_file_and_line`` and
``::test_bad_pair_csv_names_file_and_line``); decompression bombs (``tests/pipeline/test_decode.py::
test_decompression_bomb_headers_are_refused_before_decoding``, ``::test_huge_jpeg_and_bomb_decode_in_bounded_memory``).
Here: links in a raw tree, and a bomb, through extract and pair.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from corpus import png_claiming, write

from pipeline.datasets import list_images
from pipeline.errors import PipelineError
from pipeline.extract import ExtractConfig, run_extract
from pipeline.keypoints import read_keypoints
from pipeline.pair import PairRunConfig, run_pair
from pipeline.shards import ShardSet, verify_shard_set
from schemas.files import sha256_file
from schemas.patn import read_annotations
from schemas.tables import write_table


def quiet(*_args, **_kwargs) -> None:
    pass


def test_links_in_the_raw_tree_stay_inside_it_through_extract_and_pair(market_tree, tmp_path):
    """Layout folders linked from elsewhere are the data set; a file link out of it is skipped with a reason."""
    store, summary = market_tree
    raw = tmp_path / "raw"
    raw.mkdir()
    for folder in ("bounding_box_train", "bounding_box_test"):  # the data set assembled from links to a store
        os.symlink(store / folder, raw / folder)
    (raw / "query").mkdir()
    secret = write(tmp_path / "private" / "holiday.jpg",
                   cv2.imencode(".jpg", np.full((128, 64, 3), 200, np.uint8))[1].tobytes())
    os.symlink(secret, raw / "query" / "0001_c1s1_000001_00.jpg")  # a link out of the data set
    inside = write(raw / "query" / "0004_c1s1_000004_00.jpg", secret.read_bytes())
    os.symlink(inside, raw / "query" / "0002_c2s1_000002_00.jpg")  # a link to a file of the data set: followed
    # (a link from query/ into another linked layout folder points outside both roots and is refused too)
    write(raw / "query" / "0003_c3s1_000003_00.jpg", png_claiming(100_000, 100_000))  # a decompression bomb

    csvs = (store / "market-annotation-train.csv", store / "market-annotation-test.csv")
    cfg = ExtractConfig(raw=raw, out=tmp_path / "kp", run_file=tmp_path / "extract.json", workers=0,
                        annotations=csvs)
    record = run_extract(cfg, log=quiet)
    rows = {r["image"]: r for r in read_keypoints(cfg.out).to_pylist()}
    out_link = rows["query/0001_c1s1_000001_00.jpg"]
    assert out_link["status"] == "skipped" and out_link["reason"] == ("symbolic link to a file outside the raw data "
                                                                      "folder, not followed")
    assert out_link["content_hash"] is None  # never read
    assert rows["query/0002_c2s1_000002_00.jpg"]["content_hash"] is not None  # read through the inner link
    bomb = rows["query/0003_c3s1_000003_00.jpg"]
    assert bomb["status"] == "unreadable" and bomb["reason"].startswith("image too large (100000×100000")
    linked = [r for k, r in rows.items() if not k.startswith("query/")]
    assert len(rows) == len(linked) + 4
    assert len(linked) == summary["folders"]["bounding_box_train"] + summary["folders"]["bounding_box_test"]
    assert record["statuses"]["ok"] == sum(r["status"] == "ok" for r in rows.values()) > 0

    # pair reads the images of the linked layout folders (inside the data set) and stores them
    for split in ("train", "test"):
        run_pair(PairRunConfig(split=split, keypoints_dir=cfg.out, run_file=cfg.run_file, out=tmp_path / "shards"),
                 log=quiet)
        assert verify_shard_set(tmp_path / "shards" / split) == []
    stored = ShardSet(tmp_path / "shards" / "train")
    assert len(stored) == sum(r["status"] == "ok" and r["split"] == "train" for r in rows.values())


def test_a_keypoints_row_naming_a_link_out_is_refused_by_pair(market_tree, tmp_path):
    """Even if a keypoints table claims a file outside the raw root is ``ok`` (written by hand or by an older
    pgpig), the shard writer does not open it."""
    store, _ = market_tree
    raw = tmp_path / "raw"
    (raw / "bounding_box_train").mkdir(parents=True)
    first = sorted((store / "bounding_box_train").glob("0*.jpg"))[:2]
    for path in first:
        os.symlink(path, raw / "bounding_box_train" / path.name)  # links to files outside raw/
    cfg = ExtractConfig(raw=raw, out=tmp_path / "kp", run_file=tmp_path / "extract.json", workers=0,
                        annotations=(store / "market-annotation-train.csv",))
    run_extract(cfg, log=quiet)
    part = next(cfg.out.glob("part-*.parquet"))
    table = read_keypoints(cfg.out)
    assert set(table["status"].to_pylist()) == {"skipped"}  # the listing refused both links
    # forge the table: both rows ok, with the hash and size of the target and its annotated keypoints
    ann = read_annotations(store / "market-annotation-train.csv")
    index = ann.index()
    forged = {
        **{c: table[c].to_pylist() for c in table.column_names},
        "status": ["ok", "ok"],
        "reason": [None, None],
        "width": [64, 64],
        "height": [128, 128],
        "n_persons": [1, 1],
        "content_hash": [sha256_file(p) for p in first],
        "keypoints": [ann.keypoints[index[p.name]].tolist() for p in first],
    }
    part.unlink()
    write_table(pa.table(forged), part, "keypoints")
    assert pc.all(pc.equal(read_keypoints(cfg.out)["status"], "ok")).as_py()
    with pytest.raises(PipelineError, match=r"resolves outside .* \(through a symbolic link\)"):
        run_pair(PairRunConfig(split="train", keypoints_dir=cfg.out, run_file=cfg.run_file, out=tmp_path / "shards",
                               filter={"required_joints": None}), log=quiet)
    assert not (tmp_path / "shards" / "train" / "manifest.json").exists()


def test_links_resolve_relative_to_where_they_are(tmp_path):
    """A relative link that climbs out (``../../outside.jpg``) is caught like an absolute one."""
    root = tmp_path / "people"
    write(tmp_path / "outside.jpg", b"\xff\xd8\xff")
    write(root / "ann" / "real.jpg", b"\xff\xd8\xff")
    os.symlink("../../outside.jpg", root / "ann" / "climb.jpg")
    os.symlink("real.jpg", root / "ann" / "beside.jpg")
    rows = {r.image: r for r in list_images(root)}
    assert rows["ann/climb.jpg"].skip_reason.startswith("symbolic link to a file outside")
    assert rows["ann/beside.jpg"].skip_reason is None and rows["ann/real.jpg"].skip_reason is None
    assert Path(root / "ann" / "climb.jpg").resolve() == (tmp_path / "outside.jpg").resolve()
