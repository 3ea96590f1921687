"""Shared fixtures: small real data built per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """``../shared/reference`` beside the checkout (present in CI and developer sessions)."""
    ref = SHARED / "reference"
    if not ref.is_dir():
        pytest.fail(f"{ref} is missing: the tests read the official reference files from ../shared/reference")
    return ref


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
