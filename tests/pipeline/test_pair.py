"""``pipeline.pair``: filters, PATN pairing, published pair lists, and the pair → shards run end to end."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.pair import (
    FILTER_ORDER,
    FilterConfig,
    PairConfig,
    count_pairs,
    defaults_for,
    empty_selection_message,
    filter_labels,
    funnel_lines,
    identity_codes,
    make_pairs,
    pairs_from_lists,
    select_images,
)
from schemas.keypoints import KEYPOINT_NAMES
from schemas.patn import deepfashion_flat_name, write_pairs
from schemas.tables import table_from_pydict

J = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


def body(top: float = 10.0, bottom: float = 110.0, hidden: tuple[str, ...] = ()) -> np.ndarray:
    """(18, 2) keypoints spread from ``top`` to ``bottom`` in y, ``hidden`` joints (-1, -1)."""
    xy = np.stack([np.full(18, 32.0), np.linspace(top, bottom, 18)], axis=1).astype(np.float32)
    for name in hidden:
        xy[J[name]] = -1
    return xy


def keypoints_table(rows: list[dict]):
    """A keypoints table from short row dicts; unspecified columns get the values of a good image."""
    defaults = {"dataset": "market1501", "split": "train", "status": "ok", "n_persons": 1, "source": "yolo",
                "height": 128, "width": 64}
    full = [{**defaults, **r} for r in rows]
    xy = np.stack([r.get("xy", body()) for r in full])
    vis = ~(xy == -1).all(axis=-1)
    return table_from_pydict("keypoints", {
        "image": [r["image"] for r in full],
        "patn_name": [r.get("patn_name", Path(r["image"]).name) for r in full],
        "dataset": [r["dataset"] for r in full],
        "split": [r["split"] for r in full],
        "identity": [r["identity"] for r in full],
        "width": [r["width"] for r in full],
        "height": [r["height"] for r in full],
        "content_hash": [r.get("hash", r["image"]) for r in full],
        "status": [r["status"] for r in full],
        "reason": [None if r["status"] == "ok" else "why" for r in full],
        "n_persons": [r["n_persons"] for r in full],
        "box": np.zeros((len(full), 5), np.float32),
        "keypoints": xy,
        "scores": vis.astype(np.float32),
        "n_visible": vis.sum(axis=1).astype(np.int8),
        "source": [r["source"] for r in full],
    })


def test_each_filter_removes_its_rows_and_counts_them_in_order():
    rows = [
        {"image": "a/0001_1.jpg", "identity": "0001"},
        {"image": "a/0001_2.jpg", "identity": "0001"},
        {"image": "a/0001_0_nobody.jpg", "identity": "0001", "status": "no_person"},
        {"image": "a/0000_1.jpg", "identity": "0000"},  # distractor left ok by another tool
        {"image": "b/0002_1.jpg", "identity": "0002", "split": "test"},
        {"image": "a/0001_3_crowd.jpg", "identity": "0001", "n_persons": 3},
        {"image": "a/0001_4_annotated.jpg", "identity": "0001", "n_persons": 2, "source": "annotations"},
        {"image": "a/0001_5_sparse.jpg", "identity": "0001",
         "xy": body(hidden=tuple(n for n in KEYPOINT_NAMES if n not in ("r_shoulder", "l_shoulder", "r_hip",
                                                                        "l_hip", "neck")))},
        {"image": "a/0001_6_nohip.jpg", "identity": "0001", "xy": body(hidden=("l_hip",))},
        {"image": "a/0001_7_tiny.jpg", "identity": "0001", "xy": body(50, 60)},
        {"image": "a/0001_9_copy.jpg", "identity": "0001", "hash": "a/0001_2.jpg"},  # same bytes as 0001_2
        {"image": "a/0003_1.jpg", "identity": "0003", "split": None},
    ]
    table = keypoints_table(rows)
    cfg = FilterConfig(min_visible=8, min_height=0.3, exclude_ids=("-1", "0000"))
    kept, removed = select_images(table, "train", cfg)
    assert list(removed) == list(FILTER_ORDER)
    assert removed == {"status": 1, "exclude_ids": 1, "split": 2, "persons": 1, "min_visible": 1,
                       "required_joints": 1, "min_height": 1, "duplicates": 1}
    names = table["image"].take(kept).to_pylist()
    assert names == ["a/0001_1.jpg", "a/0001_2.jpg", "a/0001_4_annotated.jpg"]  # by path; annotated passes
    assert len(kept) + sum(removed.values()) == table.num_rows

    # the same rows without the optional filters: only status, split and duplicates bite
    kept, removed = select_images(table, "train", FilterConfig(max_persons=None, required_joints=None))
    assert removed["persons"] == removed["required_joints"] == removed["min_visible"] == removed["min_height"] == 0
    assert len(kept) == 8 and removed["duplicates"] == 1
    with pytest.raises(PipelineError, match="unknown joint"):
        select_images(table, "train", FilterConfig(required_joints=("r_hip", "tail")))


def test_funnel_lines_and_the_empty_selection_name_each_filter_in_words():
    rows = [
        {"image": "a/0001_1.jpg", "identity": "0001"},
        {"image": "a/0001_2.jpg", "identity": "0001", "status": "no_person"},
        {"image": "a/0001_3.jpg", "identity": "0001", "split": "test"},
        {"image": "a/0001_4.jpg", "identity": "0001", "n_persons": 2},
        {"image": "a/0001_5.jpg", "identity": "0001", "xy": body(hidden=("l_hip",))},
    ]
    table = keypoints_table(rows)
    cfg = FilterConfig()
    kept, removed = select_images(table, "train", cfg)
    lines = funnel_lines(table.num_rows, removed, cfg)
    assert len(lines) == 2 + len(FILTER_ORDER)
    assert lines[0].split() == ["filter", "removed", "left"]
    assert lines[1].split() == ["keypoints", "table", "rows", "5"]
    by_label = {label.strip(): [int(n), int(left)] for label, n, left in (line.rsplit(None, 2) for line in lines[2:])}
    assert list(by_label) == list(filter_labels(cfg).values())
    assert by_label["status not ok"] == [1, 4]
    assert by_label["in the other split"] == [1, 3]
    assert by_label["more than 1 person(s)"] == [1, 2]
    assert by_label["a required joint not visible"] == [1, 1]
    assert by_label["duplicate file (same content hash)"] == [0, len(kept)] == [0, 1]

    # the last filter to remove rows is the one the message tells to loosen; no raw dict in the line
    strict = FilterConfig(min_height=0.9)  # the bodies span 100 of 128 rows
    kept, removed = select_images(table, "train", strict)
    assert len(kept) == 0
    message = empty_selection_message("kp", "train", table.num_rows, removed, strict)
    assert message == ("kp: no train image passes the filters (of 5 rows: status not ok 1, in the other split 1, "
                       "more than 1 person(s) 1, a required joint not visible 1, keypoints shorter than 0.9 of the "
                       "image 1); loosen --min-height")
    _, removed = select_images(keypoints_table([{"image": "x.jpg", "identity": "1"}]), "test", cfg)
    message = empty_selection_message("kp", "test", 1, removed, cfg)
    assert message.endswith("the table has no test rows; check --split (a folder layout's split is drawn at "
                            "extract by its --seed)")
    assert "{" not in message


def test_pair_before_extract_names_what_is_missing_in_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import main as data_main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(data_main, ["pair", "--split", "train"])
    assert result.exit_code == 1
    assert result.output == ("error: no extract run record extract.json and no keypoints folder keypoints/: run "
                             "`pgpig-data extract RAW` here first (or pass --run-file and --keypoints where it wrote "
                             "them)\n")
    Path("extract.json").write_text("{}")
    result = CliRunner().invoke(data_main, ["pair", "--split", "train", "--keypoints", "kp"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("error: no keypoints folder kp/: run `pgpig-data extract RAW` here first")


def test_duplicates_collapse_to_the_first_path_whatever_the_row_order():
    rows = [{"image": f"x/{name}.jpg", "identity": "1", "hash": "same"} for name in ("c", "a", "b")]
    rows.append({"image": "x/d.jpg", "identity": "1", "hash": "other"})
    table = keypoints_table(rows)
    kept, removed = select_images(table, "train", FilterConfig())
    assert table["image"].take(kept).to_pylist() == ["x/a.jpg", "x/d.jpg"] and removed["duplicates"] == 2


def random_table(n_ids: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_ids):
        split = "test" if i % 3 == 0 else "train"
        for j in range(int(rng.integers(1, 9))):
            rows.append({"image": f"{split}/{i:04d}_{j}.jpg", "identity": f"{i:04d}", "split": split})
    order = rng.permutation(len(rows))  # parts come in any order
    return keypoints_table([rows[k] for k in order])


def test_pairs_stay_within_identity_and_split_and_follow_the_patn_count():
    table = random_table()
    all_splits = {}
    for split in ("train", "test"):
        kept, _ = select_images(table, split, FilterConfig())
        codes, identities = identity_codes(table, kept)
        pairs = make_pairs(codes, PairConfig())
        assert set(table["split"].take(kept).to_pylist()) == {split}
        ids = np.asarray(table["identity"].take(kept).to_pylist())
        assert (ids[pairs[:, 0]] == ids[pairs[:, 1]]).all()  # no cross-identity pair
        assert (pairs[:, 0] != pairs[:, 1]).all()  # no self pair
        assert len(np.unique(pairs, axis=0)) == len(pairs)
        assert (np.lexsort((pairs[:, 1], pairs[:, 0])) == np.arange(len(pairs))).all()  # sorted
        # exactly the ordered permutations of PATN's create_pairs_dataset.py
        expected = set()
        for identity in set(ids):
            expected |= set(itertools.permutations(np.flatnonzero(ids == identity).tolist(), 2))
        assert set(map(tuple, pairs.tolist())) == expected
        sizes = np.bincount(codes)
        assert len(pairs) == count_pairs(sizes) == int((sizes * (sizes - 1)).sum())
        all_splits[split] = set(table["image"].take(kept).to_pylist())
    assert not all_splits["train"] & all_splits["test"]


def test_patn_count_formula():
    assert count_pairs(np.array([1, 2, 3, 10])) == 0 + 2 + 6 + 90
    assert len(make_pairs(np.repeat(np.arange(4), [1, 2, 3, 10]), PairConfig())) == 98
    assert len(make_pairs(np.array([], np.int64), PairConfig())) == 0
    assert len(make_pairs(np.arange(5), PairConfig())) == 0  # one image per identity: nothing to pair


def test_caps_are_respected_and_the_seed_decides_the_sample():
    codes = np.repeat(np.arange(40), np.arange(40) % 9 + 1)
    every = set(map(tuple, make_pairs(codes, PairConfig()).tolist()))
    cfg = PairConfig(max_pairs_per_identity=5, max_pairs=100, seed=7)
    a = make_pairs(codes, cfg)
    assert np.array_equal(a, make_pairs(codes, cfg))  # deterministic
    b = make_pairs(codes, PairConfig(max_pairs_per_identity=5, max_pairs=100, seed=8))
    assert not np.array_equal(a, b)
    for pairs in (a, b):
        assert len(pairs) == 100 and set(map(tuple, pairs.tolist())) <= every
        assert np.bincount(codes[pairs[:, 0]]).max() <= 5
        assert len(np.unique(pairs, axis=0)) == 100
    per_identity = make_pairs(codes, PairConfig(max_pairs_per_identity=5))
    sizes = np.bincount(codes)
    assert np.array_equal(np.bincount(codes[per_identity[:, 0]], minlength=40), np.minimum(sizes * (sizes - 1), 5))
    total_only = make_pairs(codes, PairConfig(max_pairs=50, seed=1))
    assert len(total_only) == 50 and set(map(tuple, total_only.tolist())) <= every
    with pytest.raises(PipelineError, match="at least 1"):
        make_pairs(codes, PairConfig(max_pairs=0))


def test_parts_as_chunks_give_the_same_selection_and_codes():
    import pyarrow as pa

    table = random_table(seed=2)
    parts = pa.concat_tables([table.slice(0, 50), table.slice(50, 30), table.slice(80)])  # as read_keypoints
    assert parts["identity"].num_chunks == 3
    for split in ("train", "test"):
        kept, removed = select_images(table, split, FilterConfig())
        kept_parts, removed_parts = select_images(parts, split, FilterConfig())
        assert np.array_equal(kept, kept_parts) and removed == removed_parts
        codes, ids = identity_codes(parts, kept_parts)
        assert [ids[c] for c in codes] == table["identity"].take(kept).to_pylist()


def test_huge_identities_are_sampled_without_building_every_pair():
    codes = np.zeros(20_000, np.int64)  # 399,980,000 ordered pairs
    with pytest.raises(PipelineError, match="would not fit in memory"):
        make_pairs(codes, PairConfig())
    for cfg in (PairConfig(max_pairs=1000), PairConfig(max_pairs_per_identity=1000)):
        pairs = make_pairs(codes, cfg)
        assert len(pairs) == len(np.unique(pairs, axis=0)) == 1000 and (pairs[:, 0] != pairs[:, 1]).all()
        assert pairs.min() >= 0 and pairs.max() < 20_000


def test_a_million_rows_pair_quickly():
    import time

    codes = np.repeat(np.arange(100_000), 10)
    start = time.perf_counter()
    pairs = make_pairs(np.random.default_rng(0).permutation(codes), PairConfig())
    assert len(pairs) == 9_000_000
    assert time.perf_counter() - start < 20  # seconds, generous for a slow CI core


def test_defaults_mirror_patn():
    market_test = defaults_for("market1501", "test")
    assert market_test[1].max_pairs == 12_000 and market_test[0].exclude_ids == ("-1", "0000")
    assert defaults_for("market1501", "train")[1].max_pairs is None
    for dataset in ("market1501", "deepfashion"):
        filt = defaults_for(dataset, "train")[0]
        assert filt.required_joints == ("r_shoulder", "l_shoulder", "r_hip", "l_hip") and filt.min_visible is None
    assert defaults_for("deepfashion", "test")[1].max_pairs is None
    assert defaults_for("folder", "train")[0].min_visible == 8
    with pytest.raises(PipelineError):
        defaults_for("market1501", "query")


def test_published_pair_list_round_trip_with_flat_names(tmp_path):
    paths = [f"img/WOMEN/Dresses/id_{i:08d}/0{v}_{v}_{view}.jpg" for i in (1, 2) for v, view in
             ((1, "front"), (2, "side"), (3, "back"))]
    names = [deepfashion_flat_name(p) for p in paths]
    assert names[0] == "fashionWOMENDressesid0000000101_1front.jpg"
    codes = np.repeat([0, 1], 3)
    pairs = make_pairs(codes, PairConfig())
    csv = tmp_path / "fashion-pairs-train.csv"
    listed = [(names[s], names[t]) for s, t in pairs.tolist()]
    # a published list can name images missing from a download, or filtered out: reported, not dropped silently
    listed += [("fashionMENTeesid0000009901_1front.jpg", names[0]), (names[1], "fashionMENTeesid0000009902_2side.jpg")]
    write_pairs(csv, listed)
    back, report = pairs_from_lists(names, csv)
    assert np.array_equal(back, pairs)
    assert report["rows"] == len(pairs) + 2 and report["matched"] == len(pairs)
    assert report["unmatched_pairs"] == 2 and report["unmatched_names"] == 2
    assert report["examples"] == ["fashionMENTeesid0000009901_1front.jpg", "fashionMENTeesid0000009902_2side.jpg"]
    with pytest.raises(PipelineError, match="several kept images"):
        pairs_from_lists(names + [names[0]], csv)


# ---------------------------------------------------------------- end to end: mannequins → extract → pair → shards


def quiet(*_args) -> None:
    pass


@pytest.fixture(scope="module")
def extracted(market_tree, deepfashion_tree, tmp_path_factory):
    """Keypoints of both mannequin trees, imported from their PATN annotation CSVs."""
    from pipeline.extract import ExtractConfig, run_extract

    out = {}
    for layout, (root, summary) in (("market", market_tree), ("deepfashion", deepfashion_tree)):
        prefix = "market" if layout == "market" else "fashion"
        work = tmp_path_factory.mktemp(f"pair-{layout}")
        csvs = (root / f"{prefix}-annotation-train.csv", root / f"{prefix}-annotation-test.csv")
        cfg = ExtractConfig(raw=root, out=work / "keypoints", run_file=work / "extract.json", workers=0,
                            annotations=csvs)
        run_extract(cfg, log=quiet)
        out[layout] = (work, root, summary)
    return out


def _on_the_mannequin(sample) -> float:
    """Fraction of visible keypoints whose pixel differs from the background (the image border's median)."""
    image = sample.image.astype(np.int16)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background = np.median(border, axis=0)
    xy = sample.keypoints[(sample.keypoints != -1).any(axis=1)]
    h, w = image.shape[:2]
    cols = np.clip(np.rint(xy[:, 0]).astype(int), 0, w - 1)
    rows = np.clip(np.rint(xy[:, 1]).astype(int), 0, h - 1)
    return float(np.mean(np.abs(image[rows, cols] - background).sum(axis=1) > 40))


@pytest.mark.parametrize("layout,fmt,size", [("market", "parquet", None), ("deepfashion", "hdf5", (128, 128))])
def test_extract_then_pair_writes_shards_whose_pairs_are_the_patn_pairs(extracted, layout, fmt, size, tmp_path):
    from pipeline.export import export_pairs
    from pipeline.keypoints import read_keypoints
    from pipeline.pair import PairRunConfig, run_pair
    from pipeline.shards import ShardSet, verify_shard_set
    from schemas.patn import read_pairs

    work, root, summary = extracted[layout]
    table = read_keypoints(work / "keypoints")
    for split in ("train", "test"):
        cfg = PairRunConfig(split=split, keypoints_dir=work / "keypoints", run_file=work / "extract.json",
                            out=tmp_path / "shards", format=fmt, size=size)
        lines: list[str] = []
        manifest = run_pair(cfg, log=lines.append)
        folder = tmp_path / "shards" / split
        assert verify_shard_set(folder) == []
        shards = ShardSet(folder)
        assert len(shards) == summary["annotated"][split]  # every annotated image of the split, once
        assert manifest.filter["kept"] == len(shards) and manifest.extract["sha256"]
        assert manifest.filter["required_joints"] == ["r_shoulder", "l_shoulder", "r_hip", "l_hip"]
        funnel = {label.strip(): int(n) for label, n, _ in (line.rsplit(None, 2)
                                                             for line in lines[3:3 + len(FILTER_ORDER)])}
        assert funnel["status not ok"] == table["status"].to_pylist().count("skipped")
        statuses_splits = zip(table["status"].to_pylist(), table["split"].to_pylist(), strict=True)
        assert funnel["in the other split"] == sum(st == "ok" and sp != split for st, sp in statuses_splits) > 0
        # the pairs are PATN's: every ordered pair within an identity of the split
        ids = np.array([shards[i].identity for i in range(len(shards))])
        sizes = np.unique(ids, return_counts=True)[1]
        assert manifest.pairing["candidates"] == count_pairs(sizes)
        capped = layout == "market" and split == "test"  # PATN samples 12,000 Market test pairs
        expected = min(12_000, count_pairs(sizes)) if capped else count_pairs(sizes)
        assert len(shards.pairs) == manifest.counts["pairs"] == expected > 0
        assert (ids[shards.pairs[:, 0]] == ids[shards.pairs[:, 1]]).all()
        assert (shards.pairs[:, 0] != shards.pairs[:, 1]).all()
        assert shards.pair_identities == ids[shards.pairs[:, 0]].tolist()
        # stored keypoints are the annotated ones (in the stored frame) and sit on the drawn mannequin
        from pipeline.export import shard_names
        from pipeline.shards import scale_keypoints
        from schemas.patn import from_patn_frame, read_annotations

        names = shard_names(folder)
        prefix = "market" if layout == "market" else "fashion"
        truth = read_annotations(root / f"{prefix}-annotation-{split}.csv")
        truth = dict(zip(truth.names, truth.keypoints, strict=True))
        raw_size = (128, 64) if layout == "market" else (256, 256)
        on = []
        for s, t in shards.pairs[:: max(1, len(shards.pairs) // 10)]:
            for sample in (shards[s], shards[t]):
                assert sample.image.shape[:2] == (size or raw_size)
                expected = truth[names[sample.index]]
                if layout == "deepfashion":
                    expected = from_patn_frame(expected, 40)
                expected = scale_keypoints(expected, raw_size, size or raw_size)
                np.testing.assert_allclose(sample.keypoints, expected, atol=1e-4)
                on.append(_on_the_mannequin(sample))
        assert np.mean(on) >= 0.95 and min(on) >= 0.85, on  # keypoints elsewhere in the image score ~0.7
        # export → the same pairs, named as PATN names them
        csv = tmp_path / f"{split}-pairs.csv"
        assert export_pairs(folder, csv) == len(shards.pairs)
        assert read_pairs(csv) == [(names[s], names[t]) for s, t in shards.pairs.tolist()]
        if layout == "deepfashion":
            assert all(n.startswith("fashion") for n in names)
        # the exported list reproduces the pairs exactly when imported again
        again = run_pair(PairRunConfig(split=split, keypoints_dir=work / "keypoints", run_file=work / "extract.json",
                                       out=tmp_path / "again", format=fmt, size=size, pairs_csv=csv), log=quiet)
        assert np.array_equal(ShardSet(tmp_path / "again" / split).pairs, shards.pairs)
        assert again.pairing["source"] == "csv" and again.pairing["unmatched"]["unmatched_pairs"] == 0


def test_run_pair_caps_and_unmatched_list_are_recorded(extracted, tmp_path):
    from pipeline.pair import PairRunConfig, run_pair

    work, root, _ = extracted["market"]
    base = dict(split="train", keypoints_dir=work / "keypoints", run_file=work / "extract.json")
    m = run_pair(PairRunConfig(**base, out=tmp_path / "a", pairing={"max_pairs_per_identity": 4, "max_pairs": 9},
                               filter={"min_visible": 5}, seed=3), log=quiet)
    assert m.counts["pairs"] == 9 and m.seed == 3
    assert m.pairing["max_pairs"] == 9 and m.pairing["max_pairs_per_identity"] == 4 and m.filter["min_visible"] == 5
    csv = tmp_path / "list.csv"
    write_pairs(csv, [("nobody.jpg", "noone.jpg")])
    lines: list[str] = []
    m = run_pair(PairRunConfig(**base, out=tmp_path / "b", pairs_csv=csv), log=lines.append)
    assert m.counts["pairs"] == 0 and m.pairing["unmatched"]["unmatched_names"] == 2
    assert any(line.startswith("warning: 1 of 1 listed pairs") for line in lines)
    with pytest.raises(PipelineError, match="unknown filter"):
        run_pair(PairRunConfig(**base, out=tmp_path / "c", filter={"min_visibel": 3}), log=quiet)
    with pytest.raises(PipelineError, match="no extract run record .*none.json: run `pgpig-data extract RAW`"):
        run_pair(PairRunConfig(**{**base, "run_file": tmp_path / "none.json"}, out=tmp_path / "d"), log=quiet)


def test_cli_extract_then_pair_with_no_other_flag(market_tree, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import main as data_main
    from schemas.patn import read_pairs

    root, summary = market_tree
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(data_main, ["extract", str(root), "--annotations",
                                       str(root / "market-annotation-train.csv"), "--annotations",
                                       str(root / "market-annotation-test.csv"), "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(data_main, ["pair", "--split", "train"])
    assert result.exit_code == 0, result.output
    assert f"kept {summary['annotated']['train']} images" in result.output
    # the funnel is on the terminal: every filter with what it removed and what is left
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if "keypoints table rows" in line)
    funnel = lines[start:start + 1 + len(FILTER_ORDER)]
    assert funnel[0].split()[-1] == str(summary["images"])
    assert funnel[-1].startswith("  duplicate file") and funnel[-1].split()[-1] == str(summary["annotated"]["train"])
    result = runner.invoke(data_main, ["verify", "shards/train"])
    assert result.exit_code == 0 and "OK" in result.output, result.output
    result = runner.invoke(data_main, ["export-pairs", "shards/train", "pairs.csv"])
    assert result.exit_code == 0, result.output
    pairs = read_pairs("pairs.csv")
    assert pairs and all(s.split("_")[0] == t.split("_")[0] and s != t for s, t in pairs)
    result = runner.invoke(data_main, ["pair", "--split", "train"])
    assert result.exit_code == 1 and result.output.startswith("error: ")  # a set is there: --overwrite
    result = runner.invoke(data_main, ["pair", "--split", "train", "--overwrite", "--max-pairs", "5",
                                       "--format", "hdf5", "--quiet"])
    assert result.exit_code == 0, result.output
    # a damaged file is found and named
    Path("shards/train/pairs.parquet").write_bytes(b"broken")
    result = runner.invoke(data_main, ["verify", "shards/train"])
    assert result.exit_code == 1 and "pairs.parquet" in result.output
