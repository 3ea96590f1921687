"""Shared fixtures: small real data built per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The installed packages first: with tests/ on sys.path, an editable install (`pip install -e .`, whose finder
# comes after sys.path's) would take tests/pgpig and tests/pipeline for namespace packages of those names, and
# pgpig's shipped recipes (importlib.resources) would not be found.
import pgpig  # noqa: E402, F401
import pipeline  # noqa: E402, F401

# test data builders shared by several test files (tests/corpus.py)
sys.path.insert(0, str(Path(__file__).resolve().parent))

# reference data the tests compare against, vendored in the repository (tests/data/reference/README.md)
REFERENCE = Path(__file__).resolve().parent / "data" / "reference"


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """``tests/data/reference``: the official outputs, shapes and name lists that the tests compare against."""
    return REFERENCE


@pytest.fixture(scope="session")
def market_tree(tmp_path_factory) -> tuple[Path, dict]:
    """A small mannequin set in the Market-1501 layout (with distractors), written once per session."""
    from pipeline.synthetic import SynthConfig, write_mannequins

    out = tmp_path_factory.mktemp("market") / "raw"
    summary = write_mannequins(out, SynthConfig(identities=6, poses_per_identity=6, distractors=4, seed=3))
    return out, summary


@pytest.fixture(scope="session")
def deepfashion_tree(tmp_path_factory) -> tuple[Path, dict]:
    """A small mannequin set in the DeepFashion In-shop layout."""
    from pipeline.synthetic import SynthConfig, write_mannequins

    out = tmp_path_factory.mktemp("deepfashion") / "raw"
    cfg = SynthConfig(identities=5, poses_per_identity=7, layout="deepfashion", distractors=2, seed=5)
    summary = write_mannequins(out, cfg)
    return out, summary


@pytest.fixture(scope="session")
def market_shards(tmp_path_factory) -> Path:
    """Market-layout mannequins through synth, extract and pair: 4 identities x 4 poses stored at 128x64, ``train/``
    (2 identities, 24 pairs) and ``test/``. The shard set of the trainer, generator and eval tests; read-only."""
    from pipeline.synthetic import mannequin_shards

    return mannequin_shards(tmp_path_factory.mktemp("market-shards"), "market", identities=4, poses=4,
                            splits=("train", "test"))


@pytest.fixture(scope="session")
def small_market_shards(tmp_path_factory) -> Path:
    """``market_shards``' mannequins stored at 64x32: a quarter of the pixels, for tests that train many steps or
    whose checks do not depend on the image size (resume, kill, faults, GFLA's two stages). Read-only; the tests
    that pair again read ``.parent`` (``keypoints/``, ``extract.json``)."""
    from pipeline.synthetic import mannequin_shards

    return mannequin_shards(tmp_path_factory.mktemp("small-market-shards"), "market", identities=4, poses=4,
                            splits=("train", "test"), size=(64, 32))


@pytest.fixture(scope="session")
def learning_shards(tmp_path_factory) -> Path:
    """The set of every generator's learning test (``tests/learning.py``): 16 DeepFashion-layout mannequin identities x
    6 poses stored at 64x64, split into train and test identities. Read-only."""
    from pipeline.synthetic import mannequin_shards

    return mannequin_shards(tmp_path_factory.mktemp("learning-shards"), "deepfashion", identities=16, poses=6,
                            splits=("train", "test"), size=(64, 64))


def ultralytics_assets() -> Path:
    """The real photos that ship with ultralytics (bus.jpg: several people; zidane.jpg: two)."""
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets"


@pytest.fixture(scope="session")
def photo_market_tree(tmp_path_factory) -> Path:
    """The shipped photos in the Market-1501 layout: copies, flips and crops as different 'cameras'."""
    import cv2

    assets = ultralytics_assets()
    bus = cv2.imread(str(assets / "bus.jpg"))
    zidane = cv2.imread(str(assets / "zidane.jpg"))
    root = tmp_path_factory.mktemp("photos") / "market"
    images = {
        "bounding_box_train/0001_c1s1_000101_01.jpg": bus,
        "bounding_box_train/0001_c2s1_000102_01.jpg": bus[:, ::-1],
        "bounding_box_train/0001_c3s1_000103_01.jpg": bus[350:950, 0:400],  # one man, cropped
        "bounding_box_train/0002_c1s1_000201_01.jpg": zidane,
        "bounding_box_train/0002_c2s1_000202_01.jpg": zidane[:, 640:],  # the right half
        "bounding_box_test/0003_c1s1_000301_01.jpg": cv2.resize(zidane, (640, 360)),
        "bounding_box_test/0000_c1s1_000401_01.jpg": bus[:300, :300],  # a distractor: skipped
        "query/0003_c4s1_000302_01.jpg": zidane[:, ::-1],
        "query/0003_c5s1_000303_01.jpg": bus[:200, 400:],  # sky and bus front: nobody
    }
    for rel, image in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return root
