"""Where ``pgpig train``'s main thread spends a run: py-spy samples of the whole command, by the part of the loop.

    python benchmarks/loop_profile.py [--rate 200] [--label TEXT] -- --shards DIR --recipe market1501/pg2 \
        --steps 600 --set sample_every=100000 ...

Runs ``python -m pgpig.cli train`` with the arguments after ``--`` under ``py-spy record`` (every thread, idle
samples kept, the target never paused) and sorts the main thread's samples by the frame directly under
``pgpig.train._train``: ``train_step`` (the model's forward, losses, backward and updates), ``prepare_batch`` (the
batch to the device, pose maps rendered), the DataLoader's ``__next__`` (waiting for a batch), logging, samples,
and what ``_train`` does itself; the rest (samples outside ``_train``: imports, the command line; and under it:
models built, data sets opened, the final checkpoint) is start-up and one-offs. Prints one JSON line: each
part's seconds, and each per-step part's milliseconds per step (its samples x wall seconds / samples /
``--steps``); the baseline is ``train_step``'s own time in the same run (``loop_overhead_vs_train_step``: the
other per-step parts' milliseconds over its). Needs py-spy.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOP_FRAME = re.compile(r"^_train \(.*pgpig/train\.py:\d+\)$")
# what _train calls per step, by the function's own name (py-spy names methods with their class: tqdm.update,
# PATNObjective.sample_columns); the rest is start-up and one-offs: models built, data sets opened, imports, the
# final checkpoint
PER_STEP = {"train_step", "prepare_batch", "__next__", "_step_seed", "lr_factor", "_set_lr", "_train itself",
            "<listcomp>", "_log", "update", "set_postfix", "start_epoch", "_samples"}


def per_step(part: str) -> bool:
    """Whether a part of ``parts_of`` is work of every step (``tqdm.update``: ``update``)."""
    return part.rsplit(".", 1)[-1] in PER_STEP


def _function(frame: str) -> str:
    """``prepare_batch (pgpig/train.py:812)`` → ``prepare_batch``, ``f.<locals>.g`` → ``g``."""
    name = frame.split(" (", 1)[0]
    return name.rsplit("<locals>.", 1)[-1]


def parts_of(raw: Path) -> tuple[collections.Counter, int]:
    """Main-thread samples by the function directly under ``_train`` (``outside _train`` for the rest), and the
    number of main-thread samples."""
    parts: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or "MainThread" not in frames[0]:
            continue
        n = int(count)
        total += n
        below = [i for i, f in enumerate(frames) if LOOP_FRAME.match(f)]
        if not below:
            parts["outside _train"] += n
        elif below[0] + 1 < len(frames):
            parts[_function(frames[below[0] + 1])] += n
        else:
            parts["_train itself"] += n
    return parts, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--label", default="")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then pgpig train's arguments")
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"] if args.train_args[:1] == ["--"] else args.train_args
    if "--steps" not in train_args:
        raise SystemExit("pass pgpig train's --steps N after --: the milliseconds per step need it")
    steps = int(train_args[train_args.index("--steps") + 1])
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "spy.txt"
        command = [spy, "record", "--threads", "--idle", "--nonblocking", "--rate", str(args.rate), "--format",
                   "raw", "-o", str(raw), "--", sys.executable, "-m", "pgpig.cli", "train", *train_args]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0 or not raw.is_file():
            raise SystemExit(f"py-spy or pgpig train failed ({result.returncode}): {result.stderr[-2000:]}")
        parts, total = parts_of(raw)
    seconds_per_sample = wall / total if total else 0.0
    seconds = {name: round(n * seconds_per_sample, 3) for name, n in parts.most_common()}
    loop_ms = {name: round(1000 * value / steps, 3) for name, value in seconds.items() if per_step(name)}
    step_ms = loop_ms.get("train_step", 0.0)
    overhead = round(sum(v for k, v in loop_ms.items() if k != "train_step"), 3)
    print(json.dumps({
        "bench": "train_loop_profile", "steps": steps, "wall_seconds": round(wall, 2), "main_thread_samples": total,
        "seconds": seconds, "loop_ms_per_step": loop_ms, "train_step_ms": step_ms,
        "loop_overhead_ms_per_step": overhead,
        "loop_overhead_vs_train_step": round(overhead / step_ms, 4) if step_ms else None,
        "start_up_and_one_off_seconds": round(sum(v for k, v in seconds.items() if not per_step(k)), 2),
        "train_args": train_args, "label": args.label, "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
