"""``pgpig-data export-pairs`` / ``export-annotations`` with ``--images``: the raw images a list names, under the
list's flat names in ``<root>/<split>/``, the folder the official loaders open; atomic, resumable, never outside
the output root."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main as data_main
from pipeline.errors import PipelineError
from pipeline.export import export_annotations, export_pairs, shard_images, write_images
from schemas.files import sha256_file


def _pair_names(path: Path) -> set[str]:
    with open(path) as f:
        return {name for row in csv.DictReader(f) for name in (row["from"], row["to"])}


def test_every_image_of_the_exported_test_pairs_is_in_the_test_folder(market_shards, tmp_path):
    folder = market_shards / "test"
    names, images, hashes = shard_images(folder)
    out = tmp_path / "market"
    n = export_pairs(folder, tmp_path / "market-pairs-test.csv", images_to=out)
    needed = _pair_names(tmp_path / "market-pairs-test.csv")
    assert n > 0 and needed
    # the test split holds query/ images too: the official README layout (bounding_box_test/ alone) misses them
    from_query = {name for name, image in zip(names, images, strict=True) if image.startswith("query/")}
    assert from_query & needed
    assert {p.name for p in (out / "test").iterdir()} == needed
    raw = market_shards.parent / "raw"
    for name, image, content_hash in zip(names, images, hashes, strict=True):
        if name in needed:
            assert sha256_file(out / "test" / name) == content_hash == sha256_file(raw / image)


def test_cli_links_resumes_and_reports_a_missing_raw_file_in_one_line(market_shards, tmp_path):
    folder = market_shards / "test"
    out = tmp_path / "linked"
    args = ["export-pairs", str(folder), str(tmp_path / "pairs.csv"), "--images", str(out), "--link"]
    result = CliRunner().invoke(data_main, args)
    assert result.exit_code == 0, result.output
    assert f"and their images under {out}" in result.output
    names, images, hashes = shard_images(folder)
    raw = market_shards.parent / "raw"
    first = sorted((out / "test").iterdir())[0]
    image = images[names.index(first.name)]
    assert os.stat(first).st_ino == os.stat(raw / image).st_ino  # a hard link, not a copy
    # a second run finds every file in place and writes none
    rows = [(n, i, h) for n, i, h in zip(names, images, hashes, strict=True) if (out / "test" / n).exists()]
    assert write_images(rows, raw, out / "test") == 0
    # a raw folder without the images: one line naming the file and the option to fix it
    empty = tmp_path / "empty-raw"
    empty.mkdir()
    failed = CliRunner().invoke(data_main, args[:-1] + ["--raw", str(empty), "--images", str(tmp_path / "again")])
    assert failed.exit_code != 0
    lines = failed.output.strip().splitlines()
    assert len(lines) == 1 and "raw image not found" in lines[0] and "--raw" in lines[0], failed.output
    assert not any((tmp_path / "again").rglob("*.jpg"))


def test_names_and_raw_paths_never_leave_their_roots(market_shards, tmp_path):
    raw = market_shards.parent / "raw"
    names, images, hashes = shard_images(market_shards / "test")
    for rows, message in [([("../escaped.jpg", images[0], hashes[0])], "not a flat file name"),
                          ([("a.jpg", "../" + images[0], hashes[0])], "leaves or is not inside"),
                          ([("a.jpg", images[0], hashes[0]), ("a.jpg", images[1], hashes[1])], "both named a.jpg"),
                          ([("a.jpg", images[0], "0" * 64)], "changed since extraction")]:
        with pytest.raises(PipelineError, match=message):
            write_images(rows, raw, tmp_path / "out" / "test")
    assert not (tmp_path / "escaped.jpg").exists() and not list((tmp_path / "out").rglob("*.jpg"))


def test_exported_annotations_bring_their_images_per_split(market_shards, tmp_path):
    work = market_shards.parent
    out = tmp_path / "market"
    n = export_annotations(work / "keypoints", tmp_path / "market-annotation-test.csv", split="test",
                           images_to=out, run_file=work / "extract.json")
    with open(tmp_path / "market-annotation-test.csv") as f:
        written = [line.split(":", 1)[0] for line in f.read().splitlines()[1:]]
    assert len(written) == n > 0
    assert {p.name for p in (out / "test").iterdir()} == set(written)
    assert not (out / "train").exists()
