"""Manifest JSON round trip, validation, file checks, and paths that try to leave the shard folder."""

from __future__ import annotations

import json
import os

import pytest

from schemas.errors import SchemaError
from schemas.files import safe_join
from schemas.manifest import Manifest, file_entry


def shard_folder(tmp_path):
    (tmp_path / "images-00000.parquet").write_bytes(b"image rows " * 100)
    (tmp_path / "pairs.parquet").write_bytes(b"pair rows " * 10)
    return Manifest(
        format="parquet", split="train", size=(128, 64),
        counts={"images": 12, "pairs": 40, "identities": 3},
        files=[file_entry(tmp_path, "images-00000.parquet", "images", 12),
               file_entry(tmp_path, "pairs.parquet", "pairs", 40)],
        seed=7, filter={"min_visible": 10}, pairing={"max_per_identity": None},
        extract={"path": "extract.json"}, dataset="market1501",
    )


def test_round_trip_and_files_match(tmp_path):
    manifest = shard_folder(tmp_path)
    path = manifest.write(tmp_path)
    back = Manifest.read(tmp_path)
    assert back == manifest and back.size == (128, 64)
    assert Manifest.read(path) == manifest
    assert back.file_problems(tmp_path) == []
    assert json.loads(path.read_text())["schema_version"] == 1


def test_file_problems_name_a_flipped_byte_and_a_truncated_file(tmp_path):
    manifest = shard_folder(tmp_path)
    data = bytearray((tmp_path / "pairs.parquet").read_bytes())
    data[5] ^= 0x01
    (tmp_path / "pairs.parquet").write_bytes(bytes(data))
    with open(tmp_path / "images-00000.parquet", "r+b") as f:
        f.truncate(50)
    problems = manifest.file_problems(tmp_path)
    assert len(problems) == 2
    assert "images-00000.parquet: 50 bytes, manifest says 1100" in problems[0]
    assert "pairs.parquet: sha256 differs" in problems[1]
    os.unlink(tmp_path / "pairs.parquet")
    assert "pairs.parquet: missing" in manifest.file_problems(tmp_path)[1]


def test_unknown_version_and_unknown_keys_are_refused(tmp_path):
    manifest = shard_folder(tmp_path)
    data = json.loads(manifest.to_json())
    with pytest.raises(SchemaError, match=r"m\.json: schema version 2 is not supported"):
        Manifest.from_json(json.dumps({**data, "schema_version": 2}), "m.json")
    with pytest.raises(SchemaError, match=r"unknown keys \['colour'\]"):
        Manifest.from_json(json.dumps({**data, "colour": "red"}))
    with pytest.raises(SchemaError, match="not valid JSON"):
        Manifest.from_json("{")
    with pytest.raises(SchemaError, match="no manifest"):
        Manifest.read(tmp_path / "elsewhere")


@pytest.mark.parametrize("change, message", [
    ({"format": "zip"}, "format 'zip'"),
    ({"split": "val"}, "split 'val'"),
    ({"size": [128]}, "size"),
    ({"counts": {"images": 12, "pairs": 40}}, "counts.identities"),
    ({"counts": {"images": 11, "pairs": 40, "identities": 3}}, "hold 12 rows, counts.images is 11"),
])
def test_invalid_values_are_named(tmp_path, change, message):
    data = json.loads(shard_folder(tmp_path).to_json())
    with pytest.raises(SchemaError, match=message):
        Manifest.from_json(json.dumps({**data, **change}))


@pytest.mark.parametrize("bad", ["../outside.parquet", "/etc/passwd", "a/../../b.parquet", "./x", "a//b",
                                 "C:/x.parquet", "a\\..\\b", ""])
def test_paths_that_leave_the_folder_are_refused(tmp_path, bad):
    data = json.loads(shard_folder(tmp_path).to_json())
    data["files"][1]["path"] = bad
    with pytest.raises(SchemaError):
        Manifest.from_json(json.dumps(data))
    with pytest.raises(SchemaError):
        safe_join(tmp_path, bad)


def test_symlink_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    (root / "link.parquet").symlink_to(outside)
    with pytest.raises(SchemaError, match="outside"):
        safe_join(root, "link.parquet")
    (root / "inner.parquet").write_text("y")
    assert safe_join(root, "inner.parquet") == root / "inner.parquet"
