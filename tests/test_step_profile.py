"""``benchmarks/step_profile.py`` on the CPU: one PATN Market step profiled, with ``--detail``'s tables of the
operators by input shape, by the calling lines of this repository and by the operators they run inside."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_detailed_profile_names_shapes_and_callers():
    command = [sys.executable, str(REPO / "benchmarks" / "step_profile.py"), "--recipe", "market1501/patn",
               "--batch", "2", "--steps", "1", "--warmup", "1", "--device", "cpu", "--set", "ngf=8",
               "--set", "n_blocks=1", "--detail"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["bench"] == "step_profile" and line["batch"] == 2 and line["busy_ms_per_step"] > 0
    assert line["compile"] is False and line["compile_losses"] is False
    assert line["busy_ms_per_step"] <= line["wall_ms_per_step"] * 1.05  # own times of operators within the wall
    shapes = line["top_aten_by_shape"]
    assert shapes and all(name.startswith("aten::") and ms > 0 for name, _, ms in shapes)
    assert any("[2, " in described for _, described, _ in shapes)  # the batch of 2 in the recorded shapes
    callers = line["top_aten_by_caller"]
    # forward operators are traced to this repository's lines (file(line): function), innermost first
    frames = [frame for _, found, _ in callers for frame in found]
    assert any(frame.startswith("patn.py(") for frame in frames), callers
    assert any(frame.startswith("train.py(") and "train_step" in frame for frame in frames), callers
    # backward operators, which have no line of ours, are placed by the operators they run inside
    parents = line["top_aten_by_parents"]
    assert parents and all(name.startswith("aten::") and ms > 0 for name, _, _, ms in parents)
    assert any(name == "aten::convolution_backward" and "ConvolutionBackward0" in enclosing
               for name, _, enclosing, _ in parents), parents
    assert any(name == "aten::mkldnn_convolution" and enclosing[:2] == ["aten::_convolution", "aten::convolution"]
               for name, _, enclosing, _ in parents), parents
