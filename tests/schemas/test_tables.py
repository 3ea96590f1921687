"""Arrow schemas through Parquet: round trips, version stamps, and the errors for foreign files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.errors import SchemaError
from schemas.files import atomic_write
from schemas.tables import (
    META_TABLE,
    META_VERSION,
    SCHEMA_VERSION,
    empty_keypoints,
    fixed_list_to_numpy,
    keypoints_to_numpy,
    read_table,
    table_from_pydict,
    write_table,
)


def keypoint_columns(n: int = 5) -> dict:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, size=(n, 18, 2)).astype(np.float32)
    xy[0, 3] = -1
    scores = rng.uniform(0, 1, size=(n, 18)).astype(np.float32)
    box = rng.uniform(0, 100, size=(n, 5)).astype(np.float32)
    box[1] = np.nan  # no person → a box of NaN
    return {
        "image": [f"bounding_box_train/000{i}_c1s1_000001_01.jpg" for i in range(n)],
        "patn_name": [f"000{i}_c1s1_000001_01.jpg" for i in range(n)],
        "dataset": ["market1501"] * n,
        "split": ["train"] * n,
        "identity": [f"000{i}" for i in range(n)],
        "camera": [1] * n,
        "view": [None] * n,
        "width": [64] * n,
        "height": [128] * n,
        "content_hash": ["ab" * 32] * n,
        "status": ["ok", "no_person"] + ["ok"] * (n - 2),
        "reason": [None, "no person detected"] + [None] * (n - 2),
        "n_persons": [1, 0] + [2] * (n - 2),
        "box": box,
        "keypoints": xy,
        "scores": scores,
        "n_visible": (xy[..., 0] >= 0).sum(1).astype(np.int8),
        "source": ["yolo"] * n,
    }


def test_keypoints_table_round_trips_through_parquet(tmp_path):
    cols = keypoint_columns()
    path = tmp_path / "keypoints" / "part-00000.parquet"
    write_table(table_from_pydict("keypoints", cols), path, "keypoints")
    back = read_table(path, "keypoints")
    np.testing.assert_array_equal(keypoints_to_numpy(back["keypoints"]), cols["keypoints"])
    np.testing.assert_array_equal(fixed_list_to_numpy(back["scores"]), cols["scores"])
    box = fixed_list_to_numpy(back["box"])
    assert np.isnan(box[1]).all() and back["box"].null_count == 0
    np.testing.assert_array_equal(box[[0, 2, 3, 4]], cols["box"][[0, 2, 3, 4]])
    assert back["image"].to_pylist() == cols["image"]
    assert back["reason"].to_pylist()[:2] == [None, "no person detected"]
    assert back.schema.field("keypoints").type == pa.list_(pa.list_(pa.float32(), 2), 18)
    meta = pq.ParquetFile(path).schema_arrow.metadata
    assert meta[META_TABLE] == b"keypoints" and meta[META_VERSION] == str(SCHEMA_VERSION).encode()
    assert [p.name for p in path.parent.iterdir()] == ["part-00000.parquet"]  # no temporary left


def test_shard_and_pair_tables_round_trip(tmp_path):
    xy, scores = empty_keypoints(3)
    images = table_from_pydict("shard_images", {
        "index": [0, 1, 2], "image": ["a.jpg", "b.jpg", "c.png"], "identity": ["1", "1", "2"],
        "content_hash": ["cd" * 32] * 3, "width": [64] * 3, "height": [128] * 3,
        "data": [b"\xff\xd8jpeg", b"\xff\xd8\x00\x01", b"\x89PNG"], "encoding": ["jpeg", "jpeg", "png"],
        "keypoints": xy, "scores": scores,
    })
    write_table(images, tmp_path / "images-00000.parquet", "shard_images")
    back = read_table(tmp_path / "images-00000.parquet", "shard_images")
    assert back["data"].to_pylist() == [b"\xff\xd8jpeg", b"\xff\xd8\x00\x01", b"\x89PNG"]
    assert back["patn_name"].null_count == 3
    np.testing.assert_array_equal(keypoints_to_numpy(back["keypoints"]), xy)

    pairs = table_from_pydict("pairs", {"source": [0, 1], "target": [1, 0], "identity": ["1", "1"]})
    write_table(pairs, tmp_path / "pairs.parquet", "pairs")
    assert read_table(tmp_path / "pairs.parquet", "pairs").to_pydict() == pairs.to_pydict()


def test_reading_a_table_as_another_kind_names_the_file(tmp_path):
    path = tmp_path / "pairs.parquet"
    write_table(table_from_pydict("pairs", {"source": [0], "target": [1], "identity": ["x"]}), path, "pairs")
    with pytest.raises(SchemaError, match=r"pairs\.parquet.*'pairs' table, expected 'keypoints'"):
        read_table(path, "keypoints")


def test_unknown_schema_version_is_refused(tmp_path):
    table = table_from_pydict("pairs", {"source": [0], "target": [1], "identity": ["x"]})
    path = tmp_path / "future.parquet"
    pq.write_table(table.replace_schema_metadata({META_TABLE: b"pairs", META_VERSION: b"99"}), path)
    with pytest.raises(SchemaError, match=r"future\.parquet: schema version 99 is not supported"):
        read_table(path, "pairs")


def test_foreign_and_broken_files_are_refused(tmp_path):
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"source": [1]}), foreign)
    with pytest.raises(SchemaError, match="not a pgpig table"):
        read_table(foreign, "pairs")
    text = tmp_path / "text.parquet"
    text.write_text("hello")
    with pytest.raises(SchemaError, match="not a readable Parquet file"):
        read_table(text, "pairs")
    with pytest.raises(SchemaError, match="file not found"):
        read_table(tmp_path / "absent.parquet", "pairs")


def test_missing_or_unknown_columns_and_bad_shapes_are_errors():
    with pytest.raises(SchemaError, match=r"missing columns \['identity'\]"):
        table_from_pydict("pairs", {"source": [0], "target": [1]})
    with pytest.raises(SchemaError, match=r"unknown columns \['weight'\]"):
        table_from_pydict("pairs", {"source": [0], "target": [1], "identity": ["a"], "weight": [1.0]})
    cols = keypoint_columns()
    cols["keypoints"] = np.zeros((5, 17, 2), np.float32)
    with pytest.raises(SchemaError, match=r"keypoints must be \(N, 18, 2\)"):
        table_from_pydict("keypoints", cols)
    cols = keypoint_columns()
    cols["width"] = ["wide"] * 5
    with pytest.raises(SchemaError, match="column width"):
        table_from_pydict("keypoints", cols)


def test_write_table_refuses_a_table_of_the_wrong_shape(tmp_path):
    with pytest.raises(SchemaError, match="does not match the pairs schema"):
        write_table(pa.table({"source": [0]}), tmp_path / "p.parquet", "pairs")
    assert not any(tmp_path.iterdir())


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_the_contract_page_lists_every_column_with_its_nullability():
    from pathlib import Path

    from schemas.tables import SCHEMAS

    page = (Path(__file__).resolve().parents[2] / "docs" / "data-contract.md").read_text()
    for kind, schema in SCHEMAS.items():
        section = page.split(f"### `{kind}`")[1].split("###")[0]
        for field in schema:
            assert f"| `{field.name}` |" in section, (kind, field.name)
            row = section.split(f"| `{field.name}` |")[1].split("\n")[0]
            assert ("| yes |" if field.nullable else "| no |") in row, (kind, field.name)


@pytest.mark.parametrize(("arrow_type", "values"), [
    (pa.string(), ["a.jpg", None, "é/日本.jpg", ""]), (pa.string(), []), (pa.string(), [None, None]),
    (pa.string(), ["\udcff"]), (pa.string(), [1]), (pa.int32(), [256, None, -3]), (pa.int32(), []),
    (pa.int16(), [40000]), (pa.int32(), [True, 2]), (pa.int32(), [1.5]), (pa.int8(), [None]),
    (pa.int64(), [2**40, None]), (pa.int16(), np.array([1, -2], np.int16)), (pa.int16(), np.array([1, 2], np.int64)),
])
def test_columns_built_from_their_buffers_equal_what_pa_array_makes(arrow_type, values):
    """The common columns skip ``pa.array`` (which imports pandas where installed); the result, or the error, is
    the same as ``pa.array``'s."""
    from schemas.tables import _to_arrow

    field = pa.field("c", arrow_type)
    try:
        want = pa.array(values, type=arrow_type, from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError) as exc:
        with pytest.raises(SchemaError if isinstance(exc, pa.ArrowException) else type(exc)):
            _to_arrow(values, field)
        return
    got = _to_arrow(values, field)
    got.validate(full=True)
    assert got.type == arrow_type and got.equals(want) and got.null_count == want.null_count


def test_a_keypoints_part_is_built_and_written_without_importing_pandas(tmp_path):
    """``pa.array``'s check for pandas objects imports pandas where it is installed (~1 s beside a GPU
    extraction's threads, on its first part file): a stand-in ``pandas`` that records its import must stay
    unimported while a part is built, written and read back, and the table must round-trip (``to_numpy`` on
    the reading side still checks for pandas: the stages that read parts run after the extraction)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    fake = tmp_path / "site" / "pandas"
    fake.mkdir(parents=True)
    mark = tmp_path / "imported"
    fake.joinpath("__init__.py").write_text(f"open({str(mark)!r}, 'w').close()\nraise ImportError('stand-in')\n")
    probe = (
        "import sys, numpy as np\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_tables import keypoint_columns\n"
        "from schemas.tables import table_from_pydict, write_table, read_table\n"
        "cols = keypoint_columns(9)\n"
        "cols['width'] = [256, None] + [3] * 7\n"
        "write_table(table_from_pydict('keypoints', cols), sys.argv[2], 'keypoints')\n"
        "back = read_table(sys.argv[2], 'keypoints')\n"
        "assert back['width'].to_pylist()[:3] == [256, None, 3], back['width']\n"
        "assert np.array_equal(np.array(back['keypoints'].to_pylist(), np.float32), cols['keypoints'])\n"
        "assert back['image'].to_pylist() == cols['image']\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}"}
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", probe, str(Path(__file__).parent), str(tmp_path / "part.parquet")],
                   check=True, cwd=root, env=env)
    assert (tmp_path / "part.parquet").is_file() and not mark.exists()
