"""``benchmarks/official_bench.py`` end to end on the CPU for PATN and PIDM: the official repository's own
training step (tengteng95/Pose-Transfer, ankanbhunia/PIDM, exports given by ``PGPIG_OFFICIAL_PATN`` and
``PGPIG_OFFICIAL_PIDM``) and pgpig's, at batch 2 on small images; PIDM's sampling too.

    git --git-dir=PATH/Pose-Transfer/.git archive HEAD | tar -x -C official/patn
    git -C PATH/PIDM archive HEAD -- '*.py' '*.conf' | tar -x -C official/pidm
    PGPIG_OFFICIAL_PATN=official/patn PGPIG_OFFICIAL_PIDM=official/pidm \
        python -m pytest tests/test_official_bench.py -m slow
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CHECKOUT = os.environ.get("PGPIG_OFFICIAL_PATN")
PIDM_CHECKOUT = os.environ.get("PGPIG_OFFICIAL_PIDM")
sys.path.insert(0, str(REPO / "benchmarks"))

import official_models  # noqa: E402

# PATN's generator at DeepFashion's paper setting (ngf 64, 9 PAT blocks, instance norm, dropout), counted by the
# bench on both sides in a CPU run (its parameter count does not depend on the image size)
PATN_GENERATOR_PARAMETERS = 41_358_019
# PIDM's network at ngf 32 (the paper's levels, blocks and attention levels; embed 512), counted by the bench on
# both sides in a CPU run at 64x64 (the count does not depend on the image size)
PIDM_NGF32_PARAMETERS = 15_252_134

# The lines of PIDM's config/diffusion.conf the bench reads, in the file's layout
PIDM_CONF_TEXT = """diffusion: {
    beta_schedule: {
        __target: diffusion.make_beta_schedule
        schedule: linear
        n_timestep: 1000
        linear_start: 1e-4
        linear_end: 2e-2
    }
}
training: {
    optimizer: {
        type: adam
        lr: 2e-5
    }
    scheduler: {
        type: cycle
        lr: 2e-5
        n_iter: 2400000
        warmup: 5000
        decay: [linear, flat]
    }
}
"""


def test_prepare_ports_copies_and_stops_on_a_changed_file(tmp_path):
    """The ports apply where their text occurs the stated number of times, only ``.py`` and ``.conf`` files are
    copied, and an
    official file whose text changed stops the run naming the file."""
    source = tmp_path / "official"
    (source / "models").mkdir(parents=True)
    (source / "models" / "PATN.py").write_text("a = loss.data[0]\nb = other.data[0]\n")
    (source / "models" / "weights.pth").write_bytes(b"\0")
    (source / "models" / "diffusion.conf").write_text("n_timestep: 1000\n")
    ports = {"models/PATN.py": [(".data[0]", 2, ".item()", "0-dim tensors")]}
    done = official_models.prepare(source, tmp_path / "work", ports)
    assert (tmp_path / "work" / "models" / "PATN.py").read_text() == "a = loss.item()\nb = other.item()\n"
    assert not (tmp_path / "work" / "models" / "weights.pth").exists()
    assert (tmp_path / "work" / "models" / "diffusion.conf").read_text() == "n_timestep: 1000\n"  # PIDM's config
    assert done == ["models/PATN.py: `.data[0]` x2 -> `.item()` (0-dim tensors)"]
    (source / "models" / "PATN.py").write_text("a = loss.item()\nb = other.data[0]\n")
    with pytest.raises(SystemExit, match="PATN.py: expected '.data\\[0\\]' 2 times, found 1"):
        official_models.prepare(source, tmp_path / "work", ports)


def run_bench(tmp_path: Path, checkout: str, model: str, *flags: str) -> list[dict]:
    """``official_bench.py`` on the CPU at batch 2, 2 rounds of 1 step after 1 warm-up step; its JSON lines."""
    out = tmp_path / "official.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "official_bench.py"), "--official-repo",
                           checkout, "--model", model, "--device", "cpu", "--batch", "2", "--rounds", "2",
                           "--steps", "1", "--warmup", "1", *flags, "--work", str(tmp_path / "work"), "--out",
                           str(out)], capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.skipif(not CHECKOUT, reason="PGPIG_OFFICIAL_PATN (an export of tengteng95/Pose-Transfer) is not set")
def test_official_bench_runs_patn_on_the_cpu(tmp_path):
    lines = run_bench(tmp_path, CHECKOUT, "patn", "--size", "32x24", "--modes", "fp32,bf16")
    sides = [ln for ln in lines if ln["bench"] == "official"]
    assert {(ln["side"], ln["mode"], ln["kind"]) for ln in sides} == {
        (side, mode, kind) for side in ("official", "pgpig") for mode in ("fp32", "bf16")
        for kind in ("full", "generator")}
    for line in sides:
        assert line["params_equal"] is True and line["same_generator_weights"] is True
        assert line["params"]["official"]["generator"] == PATN_GENERATOR_PARAMETERS
        assert line["img_per_s"] > 0 and len(line["rounds_ms"]) == 2
        assert "peak_gib" not in line or line["peak_measure"] == "resident set"  # CPU: no CUDA peak
        assert line["host"]["cpus"] == os.cpu_count()
    full = next(ln for ln in sides if ln["side"] == "official" and ln["kind"] == "full")
    assert sorted(full["params"]["official"]["discriminators"]) == sorted(full["params"]["pgpig"]["discriminators"])
    assert full["official_options"]["batchSize"] == 2 and full["official_options"]["lambda_GAN"] == 5.0
    assert any(p.startswith("models/PATN.py: `.data[0]`") for p in full["ports"])
    assert "vgg19" in full["shims"] and "cuda-on-cpu" in full["shims"]
    ratio = lines[-1]
    assert ratio["bench"] == "official_ratio" and ratio["params_equal"] is True
    assert set(ratio["pgpig_over_official_img_per_s"]) == {
        f"{kind}/{mode}/official_{mode}" for mode in ("fp32", "bf16") for kind in ("full", "generator")}


def test_read_pidm_conf_reads_the_values_and_stops_on_a_changed_file(tmp_path):
    """The beta schedule, Adam's lr and the cycle scheduler's warm-up come from the file; a scheduler that is no
    longer warm-up-then-flat stops the run naming the file."""
    path = tmp_path / "diffusion.conf"
    path.write_text(PIDM_CONF_TEXT)
    assert official_models.read_pidm_conf(path) == {"schedule": "linear", "n_timestep": 1000, "linear_start": 1e-4,
                                                    "linear_end": 2e-2, "lr": 2e-5, "warmup": 5000}
    path.write_text(PIDM_CONF_TEXT.replace("[linear, flat]", "[cos, flat]"))
    with pytest.raises(SystemExit, match="diffusion.conf: no warmup as the bench reads it"):
        official_models.read_pidm_conf(path)


@pytest.mark.slow
@pytest.mark.skipif(not PIDM_CHECKOUT, reason="PGPIG_OFFICIAL_PIDM (an export of ankanbhunia/PIDM) is not set")
def test_official_bench_runs_pidm_on_the_cpu(tmp_path):
    lines = run_bench(tmp_path, PIDM_CHECKOUT, "pidm", "--size", "64x64", "--set", "ngf=32", "--modes", "fp32")
    sides = [ln for ln in lines if ln["bench"] == "official"]
    assert {(ln["side"], ln["kind"]) for ln in sides} == {(side, kind) for side in ("official", "pgpig")
                                                          for kind in ("full", "sample")}
    for line in sides:
        assert line["params_equal"] is True and line["same_generator_weights"] is True
        assert line["params"]["official"]["generator"] == PIDM_NGF32_PARAMETERS
        assert line["params"]["official"]["discriminators"] == line["params"]["pgpig"]["discriminators"] == []
        assert line["img_per_s"] > 0 and len(line["rounds_ms"]) == 2
    official = [ln for ln in sides if ln["side"] == "official"]
    for line in official:
        assert line["official_model_conf"]["model_channels"] == 32
        assert line["official_model_conf"]["attention_resolutions"] == [8, 4, 2]  # levels 3, 4, 5 of 64 px
        assert line["official_options"]["batch_size"] == 2 and line["official_options"]["warmup"] == 5000
        assert {"pidm-scheduler", "pidm-single-process"} <= set(line["shims"])
    # the same x_T, weights and guidance: the two DDIM chains give the same images up to float32 rounding
    sample = next(ln for ln in official if ln["kind"] == "sample")
    assert sample["sample_max_abs_diff"] < 1e-3
    assert set(lines[-1]["pgpig_over_official_img_per_s"]) == {"full/fp32/official_fp32",
                                                               "sample/fp32/official_fp32"}


def test_ratios_put_the_recipe_against_both_official_precisions():
    import official_bench

    def line(side, mode, rate):
        return {"side": side, "mode": mode, "kind": "full", "img_per_s": rate}

    lines = [line("official", "bf16", 50.0), line("pgpig", "bf16", 60.0),
             line("official", "recipe", 40.0), line("pgpig", "recipe", 100.0)]
    assert official_bench.ratios(lines) == {
        "full/bf16/official_bf16": 1.2, "full/recipe/official_fp32": 2.5, "full/recipe/official_bf16": 2.0}
    assert official_bench.ratios(lines[2:]) == {"full/recipe/official_fp32": 2.5}


def test_host_speed_names_the_cpu_a_line_ran_on():
    import official_bench

    host = official_bench.host_speed(torch.device("cpu"))
    assert host["cpus"] == os.cpu_count() and host["cpu"] and "launch_us" not in host  # launches: CUDA only
