"""``pgpig eval --generated``: a folder in another frame than the shard set (GFLA/DPTN's stretched DeepFashion
against ``img/`` shards, PATN's crop against ``img_highres/`` shards, a wrong size on Market) stops with one line
naming the shard set to build; a folder in the shard set's frame scores as before."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pgpig.cli import main
from pgpig.config import EvalConfig
from pgpig.errors import TrainError
from pgpig.evaluate import StoredFrame, evaluate, pair_file_name, read_names, stored_frame
from pipeline.shards import ShardSet, resize_image

SIZE = (64, 64)
MARGIN = 10  # deepfashion_margin(64): PATN's 40 px of 256


def _quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def img_shards(tmp_path_factory) -> Path:
    """DeepFashion-layout mannequins from ``img/``, test split stored at 64x64."""
    from pipeline.synthetic import mannequin_shards

    return mannequin_shards(tmp_path_factory.mktemp("df-img"), "deepfashion", identities=8, poses=4,
                            splits=("test",), size=SIZE)


@pytest.fixture(scope="module")
def highres_shards(img_shards, tmp_path_factory) -> Path:
    """The same mannequins listed as ``img_highres/`` (``extract --highres``), test split stored at 64x64."""
    from pipeline.extract import ExtractConfig, run_extract
    from pipeline.pair import PairRunConfig, run_pair

    work = tmp_path_factory.mktemp("df-highres")
    raw = work / "raw"
    shutil.copytree(img_shards.parent / "raw", raw)
    (raw / "img").rename(raw / "img_highres")
    csvs = (raw / "fashion-annotation-train.csv", raw / "fashion-annotation-test.csv")
    run_extract(ExtractConfig(raw=raw, out=work / "keypoints", run_file=work / "extract.json", workers=0,
                              highres=True, annotations=csvs), log=_quiet)
    run_pair(PairRunConfig(split="test", keypoints_dir=work / "keypoints", run_file=work / "extract.json",
                           out=work / "shards", size=SIZE), log=_quiet)
    return work / "shards"


def stretched(image: np.ndarray) -> np.ndarray:
    """An ``img/`` image in GFLA/DPTN's frame: the middle columns stretched to the full width."""
    h, w = image.shape[:2]
    return resize_image(np.ascontiguousarray(image[:, MARGIN:w - MARGIN]), (h, w))


def squeezed(image: np.ndarray) -> np.ndarray:
    """A full-width image in ``img/``'s frame: squeezed into the middle columns, white at the sides."""
    h, w = image.shape[:2]
    inner = resize_image(image, (h, w - 2 * MARGIN))
    return np.pad(inner, ((0, 0), (MARGIN, MARGIN), (0, 0)), constant_values=255)


def write_folder(shards: Path, folder: Path, make: Callable[[np.ndarray], np.ndarray]) -> Path:
    """``make(target)`` saved under PATN's name for every test pair."""
    stored = ShardSet(shards / "test")
    names = read_names(stored)
    folder.mkdir()
    for s, t in stored.pairs:
        image = make(stored[int(t)].image)
        Image.fromarray(image).save(folder / pair_file_name(names[int(s)], names[int(t)]))
    return folder


def score(shards: Path, folder: Path) -> dict:
    return evaluate(EvalConfig(shards=shards, generated=folder, metrics=("ssim", "l1"), device="cpu",
                               progress=False, num_workers=0))


def eval_cli(shards: Path, folder: Path, tmp_path: Path):
    return CliRunner().invoke(main, ["eval", "--generated", str(folder), "--shards", str(shards), "--metrics",
                                     "ssim,l1", "--device", "cpu", "--quiet", "--out", str(tmp_path / "out")])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.output, result.output
    return errors[0]


def test_the_stored_frame_names_the_raw_folder(img_shards, highres_shards, market_shards):
    assert stored_frame(ShardSet(img_shards / "test")) == StoredFrame(SIZE, "deepfashion", "img")
    assert stored_frame(ShardSet(highres_shards / "test")) == StoredFrame(SIZE, "deepfashion", "img_highres")
    assert stored_frame(ShardSet(market_shards / "test")) == StoredFrame((128, 64), "market1501", "other")


def test_gfla_frame_outputs_on_img_shards_stop_with_one_line(img_shards, tmp_path):
    # perfect outputs in GFLA/DPTN's frame: the targets stretched; same size as the stored images
    folder = write_folder(img_shards, tmp_path / "gfla", stretched)
    line = one_error_line(eval_cli(img_shards, folder, tmp_path))
    assert line.startswith(f"error: {folder}: generated images are 64x64 from DeepFashion img_highres/ stretched")
    assert f"{img_shards / 'test'} stores 64x64 from DeepFashion img/" in line
    assert "`pgpig-data extract RAW --highres" in line and "`pgpig-data pair --split test" in line
    assert "--size 64x64`" in line
    assert not (tmp_path / "out" / "eval.json").exists()


def test_patn_crop_outputs_on_highres_shards_stop_with_one_line(highres_shards, tmp_path):
    folder = write_folder(highres_shards, tmp_path / "patn", lambda t: squeezed(t)[:, MARGIN:-MARGIN])
    line = one_error_line(eval_cli(highres_shards, folder, tmp_path))
    assert f"{folder}: generated images are 64x44 (a crop of DeepFashion img/" in line
    assert "stores 64x64 from DeepFashion img_highres/ stretched" in line
    assert "`pgpig-data extract RAW --out keypoints-img" in line and "--highres" not in line


def test_img_frame_outputs_of_the_same_size_on_highres_shards_are_caught_by_content(highres_shards, tmp_path):
    folder = write_folder(highres_shards, tmp_path / "pg2", squeezed)
    with pytest.raises(TrainError, match=r"generated images are 64x64 from DeepFashion img/ .*mean grey difference"):
        score(highres_shards, folder)


def test_wrong_size_on_market_stops_with_one_line(market_shards, tmp_path):
    folder = write_folder(market_shards, tmp_path / "square", lambda t: resize_image(t, (256, 256)))
    line = one_error_line(eval_cli(market_shards, folder, tmp_path))
    assert f"{folder}: generated images are 256x256 (Market-1501 is 128x64" in line
    assert "stores 128x64 Market-1501" in line and "--size 256x256" in line


@pytest.mark.parametrize("name, make", [("targets", lambda t: t),
                                        ("patn-crop", lambda t: t[:, MARGIN:-MARGIN]),
                                        ("blurred", lambda t: resize_image(resize_image(t, (16, 16)), SIZE))])
def test_outputs_in_the_stored_frame_score_as_before(img_shards, tmp_path, name, make):
    folder = write_folder(img_shards, tmp_path / name, make)
    row = score(img_shards, folder)["rows"]["model"]
    assert row["scored"] == len(ShardSet(img_shards / "test").pairs)
    if name != "blurred":
        assert row["ssim"] == pytest.approx(1.0) and row["l1"] == 0.0
    else:
        assert 0.1 < row["ssim"] < 1.0


def test_targets_in_their_own_frame_score_perfectly_on_highres_shards(highres_shards, tmp_path):
    folder = write_folder(highres_shards, tmp_path / "targets", lambda t: t)
    row = score(highres_shards, folder)["rows"]["model"]
    assert row["ssim"] == pytest.approx(1.0) and row["l1"] == 0.0
