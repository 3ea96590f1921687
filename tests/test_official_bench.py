"""``benchmarks/official_bench.py`` end to end on the CPU for PATN: the official repository's own training step
(tengteng95/Pose-Transfer, an export given by ``PGPIG_OFFICIAL_PATN``) and pgpig's, at batch 2 on small images.

    git --git-dir=PATH/Pose-Transfer/.git archive HEAD | tar -x -C official/patn
    PGPIG_OFFICIAL_PATN=official/patn python -m pytest tests/test_official_bench.py -m slow
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKOUT = os.environ.get("PGPIG_OFFICIAL_PATN")
sys.path.insert(0, str(REPO / "benchmarks"))

import official_models  # noqa: E402

# PATN's generator at DeepFashion's paper setting (ngf 64, 9 PAT blocks, instance norm, dropout), counted by the
# bench on both sides in a CPU run (its parameter count does not depend on the image size)
PATN_GENERATOR_PARAMETERS = 41_358_019


def test_prepare_ports_copies_and_stops_on_a_changed_file(tmp_path):
    """The ports apply where their text occurs the stated number of times, only ``.py`` files are copied, and an
    official file whose text changed stops the run naming the file."""
    source = tmp_path / "official"
    (source / "models").mkdir(parents=True)
    (source / "models" / "PATN.py").write_text("a = loss.data[0]\nb = other.data[0]\n")
    (source / "models" / "weights.pth").write_bytes(b"\0")
    ports = {"models/PATN.py": [(".data[0]", 2, ".item()", "0-dim tensors")]}
    done = official_models.prepare(source, tmp_path / "work", ports)
    assert (tmp_path / "work" / "models" / "PATN.py").read_text() == "a = loss.item()\nb = other.item()\n"
    assert not (tmp_path / "work" / "models" / "weights.pth").exists()
    assert done == ["models/PATN.py: `.data[0]` x2 -> `.item()` (0-dim tensors)"]
    (source / "models" / "PATN.py").write_text("a = loss.item()\nb = other.data[0]\n")
    with pytest.raises(SystemExit, match="PATN.py: expected '.data\\[0\\]' 2 times, found 1"):
        official_models.prepare(source, tmp_path / "work", ports)


@pytest.mark.slow
@pytest.mark.skipif(not CHECKOUT, reason="PGPIG_OFFICIAL_PATN (an export of tengteng95/Pose-Transfer) is not set")
def test_official_bench_runs_patn_on_the_cpu(tmp_path):
    out = tmp_path / "official.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "official_bench.py"), "--official-repo",
                           CHECKOUT, "--model", "patn", "--device", "cpu", "--batch", "2", "--size", "32x24",
                           "--rounds", "2", "--steps", "1", "--warmup", "1", "--modes", "fp32,bf16",
                           "--work", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    sides = [ln for ln in lines if ln["bench"] == "official"]
    assert {(ln["side"], ln["mode"], ln["kind"]) for ln in sides} == {
        (side, mode, kind) for side in ("official", "pgpig") for mode in ("fp32", "bf16")
        for kind in ("full", "generator")}
    for line in sides:
        assert line["params_equal"] is True and line["same_generator_weights"] is True
        assert line["params"]["official"]["generator"] == PATN_GENERATOR_PARAMETERS
        assert line["img_per_s"] > 0 and len(line["rounds_ms"]) == 2
        assert "peak_gib" not in line  # CPU: no CUDA peak
    full = next(ln for ln in sides if ln["side"] == "official" and ln["kind"] == "full")
    assert sorted(full["params"]["official"]["discriminators"]) == sorted(full["params"]["pgpig"]["discriminators"])
    assert full["official_options"]["batchSize"] == 2 and full["official_options"]["lambda_GAN"] == 5.0
    assert any(p.startswith("models/PATN.py: `.data[0]`") for p in full["ports"])
    assert "vgg19" in full["shims"] and "cuda-on-cpu" in full["shims"]
    ratio = lines[-1]
    assert ratio["bench"] == "official_ratio" and ratio["params_equal"] is True
    assert set(ratio["pgpig_over_official_img_per_s"]) == {
        f"{kind}/{mode}/official_{mode}" for mode in ("fp32", "bf16") for kind in ("full", "generator")}
