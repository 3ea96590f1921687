"""``pgpig train`` as a separate process killed with SIGKILL once it has checkpointed (importable from tests: conftest
puts tests/ on sys.path); ``test_train_kill.py`` and ``test_pidm.py`` resume what it leaves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from pgpig.checkpoint import step_folders

REPO = Path(__file__).resolve().parents[1]


def checkpoint_step(run: Path) -> int:
    """The step of the run's newest complete checkpoint folder, -1 while there is none."""
    folders = step_folders(run)
    return int(folders[-1].name[5:]) if folders else -1


def train_until_killed(args: list[str], run: Path, cwd: Path, at_step: int,
                       timeout: float = 180) -> tuple[int, int, str]:
    """Run ``python -m pgpig.cli train ARGS``, poll ``run`` for a checkpoint of ``at_step`` or later and SIGKILL the
    process then (unless it has exited); returns ``(the step seen before the kill, the process's return code, its
    output)``. The child uses this process's thread count: another count rounds the sums differently, and earlier
    tests leave thread variables in os.environ (importing ultralytics sets OMP_NUM_THREADS=1, a Dask LocalCluster
    also MKL_ and OPENBLAS_NUM_THREADS=1)."""
    threads = str(torch.get_num_threads())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    proc = subprocess.Popen([sys.executable, "-m", "pgpig.cli", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while (step := checkpoint_step(run)) < at_step:
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # os.kill(pid, SIGKILL), unless it has already exited
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return step, proc.returncode, output
