"""``pgpig-data report``: its numbers against the tables they come from, bad files shown with their reason, a page
that needs nothing else (checked in a real headless browser when chromium is installed), and the CLI's inputs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from corpus import cv2_bytes, write

from pipeline.cli import main
from pipeline.extract import ExtractConfig, run_extract
from pipeline.keypoints import read_keypoints
from pipeline.pair import PairRunConfig, run_pair
from pipeline.report import ReportConfig, json_path, run_report
from pipeline.report.page import SECTIONS
from pipeline.report.stats import KeypointArrays, keypoint_stats, status_stats, worst_rows
from pipeline.synthetic import SynthConfig, write_mannequins
from schemas.keypoints import KEYPOINT_NAMES
from schemas.tables import table_from_pydict

CHROMIUM = Path("/usr/bin/chromium")
HEADINGS = tuple(SECTIONS.values())


def quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A small mannequin run (synth → extract → pair train and test) with two bad files and one raw image removed
    after pairing, and its report (every row sampled, so each file's tile is in it)."""
    work = tmp_path_factory.mktemp("report")
    raw = work / "raw"
    write_mannequins(raw, SynthConfig(identities=4, poses_per_identity=4, distractors=2, seed=11))
    good = sorted((raw / "bounding_box_train").glob("0*.jpg"))
    photo = cv2.imread(str(good[0]))
    write(raw / "bounding_box_train" / "0002_c6s1_999901_00.jpg", b"")  # empty
    write(raw / "bounding_box_train" / "0002_c6s1_999902_00.jpg", cv2_bytes(photo, ".jpg")[:300])  # truncated
    csvs = (raw / "market-annotation-train.csv", raw / "market-annotation-test.csv")
    run_extract(ExtractConfig(raw=raw, out=work / "keypoints", run_file=work / "extract.json", workers=0,
                              annotations=csvs), log=quiet)
    for split in ("train", "test"):
        run_pair(PairRunConfig(split=split, keypoints_dir=work / "keypoints", run_file=work / "extract.json",
                               out=work / "shards"), log=quiet)
    gone = good[1].relative_to(raw).as_posix()
    good[1].unlink()  # after pairing: the shards still hold it, the report must show it as missing
    out = work / "report" / "report.html"
    record = run_report(ReportConfig(keypoints=work / "keypoints", shards=work / "shards", out=out, samples=1000,
                                     run_file=work / "extract.json"), log=quiet)
    return {"work": work, "raw": raw, "out": out, "record": record, "gone": gone,
            "bad": {"bounding_box_train/0002_c6s1_999901_00.jpg", "bounding_box_train/0002_c6s1_999902_00.jpg"}}


def test_report_json_holds_the_numbers_of_the_tables(run):
    record = json.loads(json_path(run["out"]).read_text())
    assert record == json.loads(json.dumps(run["record"]))  # what the function returned is what was written
    rows = read_keypoints(run["work"] / "keypoints").to_pylist()

    st = record["keypoints"]["statuses"]
    assert st["rows"] == len(rows)
    assert st["statuses"] == dict(Counter(r["status"] for r in rows))
    assert st["statuses"]["unreadable"] == 2 and st["statuses"]["skipped"] == 2  # the bad files, the distractors
    groups = Counter((r["dataset"], r["split"]) for r in rows)
    assert {(g["dataset"], g["split"]): g["rows"] for g in st["groups"]} == dict(groups)
    for g in st["groups"]:
        mine = [r for r in rows if (r["dataset"], r["split"]) == (g["dataset"], g["split"])]
        assert g["statuses"] == dict(Counter(r["status"] for r in mine))
    reasons = Counter((r["status"], r["reason"]) for r in rows if r["reason"] is not None)
    assert {(e["status"], e["reason"]): e["count"] for e in st["reasons"]} == dict(reasons)
    by_image = {r["image"]: r for r in rows}
    for e in st["reasons"]:
        assert 1 <= len(e["examples"]) <= 3
        assert all(by_image[name]["reason"] == e["reason"] for name in e["examples"])

    ok = [r for r in rows if r["status"] == "ok"]
    visible = [sum(1 for r in ok if r["keypoints"][j] != [-1.0, -1.0]) for j in range(18)]
    joints = record["keypoints"]["joints"]
    assert joints["names"] == list(KEYPOINT_NAMES)
    assert joints["visible"] == visible
    assert joints["rate"] == pytest.approx([v / len(ok) for v in visible])
    assert record["keypoints"]["ok_rows"] == len(ok)
    assert record["keypoints"]["persons_per_image"] == {"1": len(ok)}  # annotations: one person each
    assert sum(record["keypoints"]["person_height"]["counts"]) == len(ok)

    for section in record["shards"]:
        folder = Path(section["folder"])
        manifest = json.loads((folder / "manifest.json").read_text())
        pairs = pq.read_table(folder / "pairs.parquet")["identity"].to_pylist()
        per_identity = Counter(pairs)
        p = section["pairs_per_identity"]
        unpaired = manifest["counts"]["identities"] - len(per_identity)
        expected = Counter(per_identity.values())
        if unpaired:
            expected[0] += unpaired
        assert p["distribution"] == {str(k): v for k, v in sorted(expected.items())}
        assert p["max"] == max(per_identity.values())
        assert section["verify"] == {"mode": "full", "ok": True, "problems": [], "count": 0}
        funnel = section["funnel"]
        assert funnel[0]["left"] == len(rows) and funnel[-1]["left"] == manifest["counts"]["images"]
        assert {f["filter"]: f["removed"] for f in funnel[1:]} == manifest["filter"]["removed"]
        assert section["manifest"]["counts"] == manifest["counts"]


def test_bad_and_missing_images_are_shown_with_their_reason(run):
    record = run["record"]
    tiles = {t["image"]: t for t in record["samples"]["tiles"]}
    # samples=1000: every row the data set holds; skipped files (distractors, junk) are left out of the sample
    statuses = record["keypoints"]["statuses"]
    assert len(tiles) == statuses["rows"] - statuses["statuses"].get("skipped", 0)
    assert not any(t["caption"][0].startswith("skipped") for t in tiles.values())
    rows = {r["image"]: r for r in read_keypoints(run["work"] / "keypoints").to_pylist()}
    for name in run["bad"]:
        assert not tiles[name]["shown"]
        assert rows[name]["reason"] in tiles[name]["caption"]  # the table's reason, e.g. empty or truncated
    assert not tiles[run["gone"]]["shown"]
    assert any("file not found" in line for line in tiles[run["gone"]]["caption"])
    assert record["samples"]["placeholders"] == 3
    assert all(t["shown"] for name, t in tiles.items() if name not in run["bad"] | {run["gone"]})
    unreadable = [e for e in record["keypoints"]["statuses"]["reasons"] if e["status"] == "unreadable"]
    assert {n for e in unreadable for n in e["examples"]} == run["bad"]
    page = run["out"].read_text()
    for name in run["bad"] | {run["gone"]}:
        assert name in page


def test_page_is_self_contained_with_every_section_and_real_inline_images(run):
    page = run["out"].read_text()
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    # tiles (one per row) + worst cases + plots (4 keypoint plots, funnel and pairs per shard set)
    tiles = len(run["record"]["samples"]["tiles"]) + sum(len(v) for v in run["record"]["worst"].values())
    assert len(sources) == tiles + 4 + 2 * len(run["record"]["shards"])
    for src in sources:
        image = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.std() > 5  # a real picture, not a blank
    assert not list(run["out"].parent.glob(".*.tmp"))  # atomic writes leave no temporary behind


def test_a_skeleton_tile_draws_the_visible_joints_and_marks_the_missing_ones():
    from pipeline.report.pictures import BAR, TILE, skeleton_tile

    image = np.full((128, 64, 3), 30, np.uint8)
    xy = np.full((18, 2), -1, np.float32)
    xy[1] = (32, 20)  # neck
    xy[2] = (20, 22)  # right shoulder: the neck-shoulder limb is drawn
    tile = skeleton_tile(image, xy)
    assert tile.shape == (TILE + BAR, TILE, 3)
    body = tile[:TILE].astype(int)
    assert (np.abs(body - 30).sum(axis=-1) > 60).sum() > 20  # coloured limb and joints on the grey image
    bar = tile[TILE:]
    cell = TILE // 18
    x0 = (TILE - cell * 18) // 2
    centre = [bar[BAR // 2, x0 + j * cell + cell // 2] for j in range(18)]
    assert tuple(centre[1]) != tuple(centre[0])  # neck cell in its colour, nose cell a grey cross
    assert all(len(set(c.tolist())) == 1 for j, c in enumerate(centre) if j not in (1, 2))  # greys only


def _table(rows: list[dict]):
    n = len(rows)
    xy = np.stack([r["xy"] for r in rows]).astype(np.float32)
    vis = ~(xy == -1).all(axis=-1)
    return table_from_pydict("keypoints", {
        "image": [f"x/{i}.jpg" for i in range(n)], "patn_name": None, "dataset": ["folder"] * n,
        "split": [r.get("split", "train") for r in rows], "identity": ["a"] * n,
        "width": [100] * n, "height": [200] * n, "content_hash": [str(i) for i in range(n)],
        "status": [r.get("status", "ok") for r in rows], "reason": [r.get("reason") for r in rows],
        "n_persons": np.array([r.get("persons", 1) for r in rows], np.int16),
        "box": np.array([r.get("box", [np.nan] * 5) for r in rows], np.float32), "keypoints": xy,
        "scores": np.array([r["scores"] for r in rows], np.float32), "n_visible": vis.sum(axis=1).astype(np.int8),
        "source": ["yolo"] * n,
    })


def test_worst_cases_and_histograms_on_a_table_made_by_hand():
    body = np.stack([np.full(18, 50.0), np.linspace(12, 183, 18)], axis=1)  # 171 of 200 px tall
    small = np.stack([np.full(18, 50.0), np.linspace(90, 110, 18)], axis=1)  # 20 px tall
    hidden = body.copy()
    hidden[[0, 14, 15, 16, 17]] = -1
    table = _table([
        {"xy": body, "scores": np.full(18, 0.9)},
        {"xy": hidden, "scores": np.r_[0.1, np.full(13, 0.6), np.full(4, 0.1)]},  # lowest mean confidence
        {"xy": small, "scores": np.full(18, 0.8), "persons": 3, "box": [40, 90, 60, 112, 0.9]},  # small, crowded
        {"xy": np.full((18, 2), -1), "scores": np.zeros(18), "status": "no_person", "reason": "no person detected",
         "persons": 0, "split": None},
    ])
    arrays = KeypointArrays(table)
    worst = worst_rows(arrays, k=2)
    assert worst == {"lowest_confidence": [1, 2], "multi_person": [2], "smallest_person": [2, 1]}
    stats = keypoint_stats(arrays)
    assert stats["ok_rows"] == 3
    assert stats["joints"]["visible"] == [2] + [3] * 13 + [2] * 4
    assert stats["persons_per_image"] == {"0": 1, "1": 2, "3": 1}
    # keypoint extents where there is no box: 171/200, and joints 1-13 only (153.9 - 22.1)/200; the box's 22/200
    heights = stats["person_height"]["counts"]
    assert heights[17] == heights[12] == heights[2] == 1 and sum(heights) == 3
    nose = stats["scores"]["per_joint"][0]  # scores 0.9, 0.1, 0.8 in bins of 0.05
    assert nose[18] == nose[2] == nose[16] == 1 and sum(nose) == 3
    st = status_stats(table)
    assert {(g["split"], g["rows"]) for g in st["groups"]} == {("train", 3), (None, 1)}  # a null split is a group
    assert st["reasons"] == [{"status": "no_person", "reason": "no person detected", "count": 1,
                              "examples": ["x/3.jpg"]}]


def test_cli_reports_keypoints_only_or_shards_only_and_refuses_neither(run, tmp_path, monkeypatch):
    work = run["work"]
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    shutil.copytree(work / "keypoints", tmp_path / "keypoints")
    shutil.copy(work / "extract.json", tmp_path / "extract.json")  # its raw root is the fixture's
    result = runner.invoke(main, ["report", "--samples", "4", "--verify", "none"])  # ./shards absent: left out
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "report.json").read_text())
    assert record["shards"] is None and record["keypoints"]["statuses"]["rows"] == run["record"]["keypoints"][
        "statuses"]["rows"]
    assert len(record["samples"]["tiles"]) == 4

    result = runner.invoke(main, ["report", "--keypoints", str(tmp_path / "none"), "--shards", str(work / "shards"),
                                  "--out", "shards.html", "--samples", "3"])
    assert result.exit_code == 1 and "keypoints folder not found" in result.output  # named, so it must exist
    shutil.rmtree(tmp_path / "keypoints")
    result = runner.invoke(main, ["report", "--shards", str(work / "shards"), "--out", "shards.html", "--samples", "3"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "shards.json").read_text())
    assert record["keypoints"] is None and [s["name"] for s in record["shards"]] == ["test", "train"]
    assert record["samples"]["source"].startswith("shards") and len(record["samples"]["tiles"]) == 3
    assert all(t["shown"] for t in record["samples"]["tiles"])

    result = runner.invoke(main, ["report"])  # neither default folder here any more
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: nothing to report on")


def test_a_damaged_shard_set_is_reported_not_fatal(run, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(run["work"] / "shards" / "train", shards / "train")
    pairs = shards / "train" / "pairs.parquet"
    pairs.write_bytes(pairs.read_bytes()[:-40])  # damaged: sha256 and size differ
    record = run_report(ReportConfig(keypoints=None, shards=shards, out=tmp_path / "r.html", samples=0), log=quiet)
    verify = record["shards"][0]["verify"]
    assert verify["ok"] is False and any("pairs.parquet" in p for p in verify["problems"])
    assert "problem(s)" in (tmp_path / "r.html").read_text()


def chromium_render(page: Path, work: Path) -> tuple[np.ndarray, str]:
    """Screenshot (BGR) and DOM of ``page`` rendered by headless chromium with a fresh profile."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={work / 'profile'}", "--window-size=1280,2000"]
    shot = work / "shot.png"
    subprocess.run([str(CHROMIUM), *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120,
                   check=True)
    dom = subprocess.run([str(CHROMIUM), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return cv2.imread(str(shot)), dom


def test_a_real_browser_renders_the_page(run, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install it (apt-get install -y chromium) to render the report headless")
    shot, dom = chromium_render(run["out"], tmp_path)
    assert shot is not None and shot.shape[:2] == (2000, 1280)
    assert shot.std() > 20  # not a blank page: header, plots, tiles
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in dom
    assert dom.count("<img") == run["out"].read_text().count("<img")
