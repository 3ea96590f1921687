"""Promise 1, bad inputs: every odd file gets exactly one row with a status and a reason, the run exits 0 with
counts by status, nothing else is skipped; a bad annotation or pair CSV is an error naming its file and line.

Decode-level coverage of each odd file (reasons, colours, orientation, bombs) is ``tests/pipeline/test_decode.py``;
the listing of links, FIFOs and odd names is ``tests/pipeline/test_datasets.py``. Here the whole ``pgpig-data
extract`` command runs on one tree holding all of them, with the real embedded model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner
from conftest import ultralytics_assets
from corpus import bad_file_tree, more_bad_files

import pipeline.decode as decode
from pipeline.cli import main as data_main
from pipeline.extract import ExtractConfig, run_extract
from pipeline.keypoints import read_keypoints


def quiet(*_args, **_kwargs) -> None:
    pass


def files_on_disk(root: Path) -> set[str]:
    """Every non-folder entry below ``root`` (files, links of any kind), as relative POSIX paths."""
    found = set()
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            found.add((rel / name).as_posix())
    return found


def test_odd_file_corpus_through_the_cli_one_row_each_and_a_summary(tmp_path, monkeypatch):
    zidane = cv2.imread(str(ultralytics_assets() / "zidane.jpg"))
    raw = tmp_path / "raw"
    expected = {**bad_file_tree(raw, zidane), **more_bad_files(raw, zidane)}
    assert expected.keys() == files_on_disk(raw)  # the corpus is every file there is (odd/folder.jpg is a folder)
    locked = raw / "odd" / "locked.jpg"
    simulated = os.geteuid() == 0
    if simulated:
        # root reads a mode-000 file anyway (CI containers run as root): refuse that one open as the kernel would
        real_open = os.open

        def refusing_open(path, *args, **kwargs):
            if os.fspath(path) == os.fspath(locked):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(decode.os, "open", refusing_open)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(data_main, ["extract", str(raw), "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output

    table = read_keypoints(tmp_path / "keypoints")
    rows = {r["image"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows  # no image twice
    assert rows.keys() == expected.keys()  # no file lost, none invented
    for rel, status in expected.items():
        row = rows[rel]
        assert row["status"] == status, (rel, row["reason"])
        if status == "ok":
            assert row["reason"] is None and row["n_persons"] >= 1, rel
        else:
            # a human-readable reason: words, one line
            assert row["reason"] and "\n" not in row["reason"] and re.search(r"[a-z]{3,} [a-z]{2,}", row["reason"])
    assert rows["odd/locked.jpg"]["reason"] == "cannot read: permission denied"
    assert "cannot be followed" in rows["odd/loop.jpg"]["reason"]
    assert rows["odd/page.jpg"]["reason"] == "not an image (looks like HTML, named .jpg)"
    assert rows["odd/empty.jpg"]["reason"] == "zero-byte file"
    assert "truncated" in rows["odd/truncated.jpg"]["reason"]
    # skipped is only what cannot be an image: nothing else is set aside
    assert {rel for rel, r in rows.items() if r["status"] == "skipped"} == {"odd/notes.txt", "odd/loop.jpg"}

    # the summary line: counts by status, as the table holds them
    counts = {}
    for row in rows.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    summary = next(line for line in result.output.splitlines() if " rows in " in line)
    assert summary.startswith(f"{len(expected)} rows in keypoints/")
    for status, n in counts.items():
        assert f"{status} {n}" in summary, (status, n, summary)


def annotated_market(market_tree) -> tuple[Path, Path]:
    root, _ = market_tree
    return root, root / "market-annotation-train.csv"


@pytest.mark.parametrize("line, message", [
    ("0001_c1s1_000001_00.jpg: [1, 2]: [3, 4]", r"keypoints_y has 2 values, expected 18"),
    ("0001_c1s1_000001_00.jpg [1]", r"expected 'name: \[y\.\.\.\]: \[x\.\.\.\]'"),
    ("../../etc/passwd.jpg: " + str([-1] * 18) + ": " + str([-1] * 18), r"is a path, not a PATN image name"),
    ("/abs/0001_c1s1_000001_00.jpg: " + str([-1] * 18) + ": " + str([-1] * 18), r"is a path"),
])
def test_bad_annotation_csv_names_file_and_line(market_tree, tmp_path, monkeypatch, line, message):
    root, good = annotated_market(market_tree)
    lines = good.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([*lines[:3], line, *lines[3:]]) + "\n")  # the inserted line is line 4
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(data_main, ["extract", str(root), "--annotations", str(bad), "--workers", "0",
                                            "--quiet"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.match(rf"error: {re.escape(str(bad))}:4: .*{message}", errors[0]), result.output
    assert not list((tmp_path / "keypoints").glob("part-*.parquet"))  # no row made from a file it cannot read


@pytest.fixture(scope="module")
def extracted(market_tree, tmp_path_factory) -> Path:
    """The market mannequins extracted from their annotations (no model): ``work/keypoints``, ``work/extract.json``."""
    root, _ = market_tree
    work = tmp_path_factory.mktemp("extracted")
    csvs = (root / "market-annotation-train.csv", root / "market-annotation-test.csv")
    run_extract(ExtractConfig(raw=root, out=work / "keypoints", run_file=work / "extract.json", workers=0,
                              annotations=csvs), log=quiet)
    return work


@pytest.mark.parametrize("line, message", [
    ("0001_c1s1_000001_00.jpg", r"expected 2 comma-separated fields"),
    ("0001_c1s1_000001_00.jpg,", r"expected 2 comma-separated fields"),
    ("../0001_c1s1_000001_00.jpg,0001_c1s1_000002_00.jpg", r"'\.\./0001_c1s1_000001_00\.jpg' is a path"),
    ("0001_c1s1_000001_00.jpg,/etc/passwd", r"'/etc/passwd' is a path"),
])
def test_bad_pair_csv_names_file_and_line(extracted, tmp_path, line, message):
    bad = tmp_path / "pairs.csv"
    bad.write_text(f"from,to\n0001_c1s1_000001_00.jpg,0001_c1s1_000002_00.jpg\n{line}\n")
    result = CliRunner().invoke(data_main, ["pair", "--split", "train", "--keypoints", str(extracted / "keypoints"),
                                            "--run-file", str(extracted / "extract.json"), "--out",
                                            str(tmp_path / "shards"), "--pairs", str(bad), "--quiet"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.match(rf"error: {re.escape(str(bad))}:3: .*{message}", errors[0]), result.output
    assert not (tmp_path / "shards" / "train" / "manifest.json").exists()
