"""PATN annotation and pair CSVs: exact round trips, malformed lines named, flat DeepFashion names."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from schemas.errors import SchemaError
from schemas.patn import (
    deepfashion_flat_name,
    deepfashion_relpath,
    from_patn_frame,
    read_annotations,
    read_pairs,
    to_patn_frame,
    write_annotations,
    write_pairs,
)

# Two lines in the published layout (DeepFashion flat names, integer y then x, -1 missing).
PUBLISHED = (
    "name:keypoints_y:keypoints_x\n"
    "fashionWOMENDressesid0000262902_3back.jpg: "
    "[-1, 39, 39, 78, 113, 40, 80, 116, 121, 177, 230, 119, 176, 230, -1, -1, 17, 18]:"
    " [-1, 91, 63, 55, 52, 117, 126, 130, 70, 68, 66, 108, 111, 113, -1, -1, 79, 103]\n"
    "fashionMENTees_Tanksid0000008001_1front.jpg: "
    "[17, 36, 35, 67, 92, 38, 68, 94, 112, 163, 212, 111, 159, 207, 14, 14, 17, 17]:"
    " [83, 80, 57, 52, 53, 104, 110, 116, 63, 64, 64, 97, 104, 111, 78, 89, 71, 98]\n"
)


def test_published_annotation_text_round_trips_byte_exact(tmp_path):
    src = tmp_path / "fashion-annotation-train.csv"
    src.write_text(PUBLISHED)
    ann = read_annotations(src)
    assert ann.names == ["fashionWOMENDressesid0000262902_3back.jpg", "fashionMENTees_Tanksid0000008001_1front.jpg"]
    np.testing.assert_array_equal(ann.keypoints[0, 1], [91, 39])  # (x, y) of the neck
    np.testing.assert_array_equal(ann.keypoints[0, 0], [-1, -1])
    out = tmp_path / "out.csv"
    write_annotations(out, ann.names, ann.keypoints)
    assert out.read_text() == PUBLISHED


def test_compact_variant_without_spaces_reads_the_same(tmp_path):
    compact = tmp_path / "compact.csv"
    compact.write_text(PUBLISHED.replace(": [", ":[").replace(", ", ","))
    canonical = tmp_path / "canonical.csv"
    canonical.write_text(PUBLISHED)
    np.testing.assert_array_equal(read_annotations(compact).keypoints, read_annotations(canonical).keypoints)


def test_float_keypoints_are_rounded_and_missing_written_as_minus_one(tmp_path):
    xy = np.full((1, 18, 2), -1, np.float32)
    xy[0, 2] = [10.4, 20.6]
    xy[0, 3] = [-0.2, 5.0]  # rounds to 0: still inside the image
    xy[0, 4] = [-3.0, 5.0]  # negative after rounding: not a pixel → missing
    write_annotations(tmp_path / "a.csv", ["x.jpg"], xy)
    back = read_annotations(tmp_path / "a.csv").keypoints[0]
    np.testing.assert_array_equal(back[2], [10, 21])
    np.testing.assert_array_equal(back[3], [0, 5])
    np.testing.assert_array_equal(back[4], [-1, -1])
    with pytest.raises(SchemaError, match="contains ':'"):
        write_annotations(tmp_path / "b.csv", ["a:b.jpg"], xy)


@pytest.mark.parametrize("line, message", [
    ("a.jpg: [1, 2]: [3, 4]", "keypoints_y has 2 values, expected 18"),
    ("a.jpg: [1]", "3 fields"),
    ("a.jpg: 1, 2: [3]", "bracketed list"),
    ("a.jpg: [" + ", ".join(["x"] * 18) + "]: [" + ", ".join(["1"] * 18) + "]", "not an integer"),
    (": [" + ", ".join(["1"] * 18) + "]: [" + ", ".join(["1"] * 18) + "]", "empty image name"),
])
def test_malformed_annotation_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.csv"
    good = PUBLISHED.splitlines()[1]
    path.write_text(f"name:keypoints_y:keypoints_x\n{good}\n{line}\n")
    with pytest.raises(SchemaError, match=rf"bad\.csv:3: .*{message}"):
        read_annotations(path)


def test_annotation_header_and_duplicates(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("name,x,y\n")
    with pytest.raises(SchemaError, match=r"bad\.csv:1: expected the header"):
        read_annotations(path)
    good = PUBLISHED.splitlines()[1]
    path.write_text(f"name:keypoints_y:keypoints_x\n{good}\n\n{good}\n")
    with pytest.raises(SchemaError, match=r"bad\.csv:4: .* already annotated on line 2"):
        read_annotations(path)
    path.write_bytes(b"name:keypoints_y:keypoints_x\n\xff\xfe\n")
    with pytest.raises(SchemaError, match="not UTF-8"):
        read_annotations(path)


def test_pairs_round_trip_and_pandas_index_column(tmp_path):
    pairs = [("fashionWOMENDressesid0000262902_3back.jpg", "fashionWOMENDressesid0000262902_1front.jpg"),
             ("0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg")]
    path = tmp_path / "pairs.csv"
    write_pairs(path, pairs)
    assert path.read_text().splitlines()[0] == "from,to"
    assert read_pairs(path) == pairs
    indexed = tmp_path / "indexed.csv"
    indexed.write_text(",from,to\n0,a.jpg,b.jpg\n1,b.jpg,a.jpg\n")
    assert read_pairs(indexed) == [("a.jpg", "b.jpg"), ("b.jpg", "a.jpg")]
    bad = tmp_path / "bad.csv"
    bad.write_text("from,to\na.jpg,b.jpg\nc.jpg\n")
    with pytest.raises(SchemaError, match=r"bad\.csv:3: expected 2 comma-separated fields"):
        read_pairs(bad)
    bad.write_text("source,target\n")
    with pytest.raises(SchemaError, match=r"bad\.csv:1: expected the header"):
        read_pairs(bad)


def test_flat_name_of_the_design_example():
    path = "img/WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg"
    assert deepfashion_flat_name(path) == "fashionWOMENBlouses_Shirtsid0000000102_1front.jpg"
    assert deepfashion_flat_name("img_highres/" + path[4:]) == "fashionWOMENBlouses_Shirtsid0000000102_1front.jpg"
    assert deepfashion_relpath("fashionWOMENBlouses_Shirtsid0000000102_1front.jpg") == path
    with pytest.raises(SchemaError, match="not a DeepFashion In-shop path"):
        deepfashion_flat_name("img/WOMEN/Dresses/00000001/02_1_front.jpg")
    with pytest.raises(SchemaError, match="not a PATN DeepFashion flat name"):
        deepfashion_relpath("0002_c1s1_000451_03.jpg")


def test_every_published_patn_name_maps_one_to_one_onto_an_inshop_path(shared_reference):
    names = []
    for split in ("train", "test"):
        names += gzip.decompress((shared_reference / f"patn_fashion_{split}.lst.gz").read_bytes()).decode().split()
    assert len(names) == 48_674 + 4_038
    paths = [deepfashion_relpath(n) for n in names]
    assert len(set(paths)) == len(names) == 52_712
    assert [deepfashion_flat_name(p) for p in paths] == names


def test_crop_frame_shift_round_trips_and_hides_joints_outside_the_crop():
    xy = np.full((18, 2), -1, np.float32)
    xy[0] = [100, 50]
    xy[1] = [30, 60]  # in the left padding of a 256-wide image
    xy[2] = [220, 60]  # in the right padding
    cropped = to_patn_frame(xy, 40, width=176)
    np.testing.assert_array_equal(cropped[0], [60, 50])
    np.testing.assert_array_equal(cropped[1], [-1, -1])
    np.testing.assert_array_equal(cropped[2], [-1, -1])
    np.testing.assert_array_equal(from_patn_frame(cropped, 40)[0], xy[0])
    np.testing.assert_array_equal(from_patn_frame(cropped, 40)[3], [-1, -1])
