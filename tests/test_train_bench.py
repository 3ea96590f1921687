"""``benchmarks/train_bench.py``: a mode names every speed field it sets, whatever the recipe says, and one CPU run
of two modes prints a line per mode and the pick."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from train_bench import parse_mode  # noqa: E402


def test_a_mode_sets_the_compile_fields():
    fields, arithmetic = parse_mode("bf16+cl+compilel+layout+tf32", channels_last=False, compile=False)
    assert arithmetic == "default"
    assert (fields["amp"], fields["channels_last"], fields["compile"], fields["compile_losses"],
            fields["compile_channels_last"], fields["tf32"]) == ("bf16", True, True, True, True, True)
    fields, _ = parse_mode("bf16+compile", channels_last=False, compile=False)
    assert fields["compile"] is True and fields["compile_losses"] is False  # VGG eager even where a recipe compiles it
    assert fields["compile_channels_last"] is False  # inductor's own layout choice even where a recipe forces it
    fields, _ = parse_mode("none+compileg", channels_last=False, compile=False)
    assert fields["compile"] == "generator" and fields["compile_losses"] is False


def test_two_modes_on_the_cpu():
    command = [sys.executable, str(REPO / "benchmarks" / "train_bench.py"), "--recipe",
               str(REPO / "pgpig" / "workflows" / "deepfashion" / "dptn.yaml"), "--set", "ngf=4", "--size", "32x32",
               "--batch-size", "2", "--modes", "none,fp32", "--steps", "1", "--warmup", "1", "--min-seconds", "0",
               "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    runs = [line for line in lines if line["bench"] == "train"]
    assert [line["mode"] for line in runs] == ["none", "fp32"]
    assert all(line["compile"] is False and line["compile_losses"] is False and line["compile_channels_last"] is False
               and line["steps_per_s"] > 0
               for line in runs)
    assert runs[1]["grad_cosine_vs_baseline"] > 0.999  # float32 without TF32 is float32 on the CPU
    assert lines[-1]["bench"] == "train_pick"
