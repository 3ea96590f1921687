"""Where ``pgpig train`` makes the host wait for the GPU: CUDA's synchronisation debug mode over a real run.

    python benchmarks/sync_points.py --steps 40 --shards DIR --recipe market1501/pg2 [--recipe ...] \
        [--set key=value ...] [--label TEXT]

A host synchronisation inside the training step (``int(tensor)``, a boolean-mask index, a Python list copied to
the GPU with ``torch.tensor(..., device=cuda)``) stalls the CPU until every kernel queued so far has run, so it
cannot queue the next ones while the GPU works: on small steps (PG2 Market at 128x64) the GPU then idles for the
CPU's launch time at each sync. This runs ``pgpig train`` in this process, per recipe, with
``torch.cuda.set_sync_debug_mode("warn")``, which warns at every synchronising call, and counts the warnings by the
innermost frame in pgpig's or pipeline's code (the call site in our code), the innermost frame overall, and the
part of the training loop (as ``loop_profile.py`` names them). Prints one JSON line per recipe: the syncs inside
the loop's per-step parts with their count per step, and the one-offs (models built, the final checkpoint).
Needs a CUDA device; the recipes train at their GPU defaults (``amp``/``channels_last`` auto).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from loop_profile import per_step  # noqa: E402

OURS = (str(ROOT / "pgpig"), str(ROOT / "pipeline"))


def _where(frame: traceback.FrameSummary) -> str:
    path = Path(frame.filename)
    try:
        path = path.relative_to(ROOT)
    except ValueError:
        path = Path(*path.parts[-2:])
    return f"{path.as_posix()}:{frame.lineno} {frame.name}"


def count_syncs(train_args: list[str]) -> collections.Counter:
    """``pgpig train train_args`` in this process under the sync debug mode → warnings by (part of the loop, our
    site, innermost site, thread name). The part is the function ``pgpig.train._train`` called (``train_step``,
    ``prepare_batch``, ...; ``loop_profile.per_step`` says which run at every step), ``_train itself``, or ``outside
    _train`` (models built, the final checkpoint)."""
    import torch

    from pgpig.cli import main as pgpig_main

    sites: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchronizing" not in str(message):
            return
        stack = traceback.extract_stack()[:-1]
        while stack and stack[-1].filename.endswith("warnings.py"):
            stack.pop()
        loop = next((i for i, f in enumerate(stack) if f.name == "_train" and f.filename.startswith(OURS[0])), None)
        if loop is None:
            part = "outside _train"
        else:
            part = stack[loop + 1].name if loop + 1 < len(stack) else "_train itself"
        ours = next((f for f in reversed(stack) if f.filename.startswith(OURS)), None)
        sites[(part, _where(ours) if ours else "outside pgpig", _where(stack[-1]) if stack else "?",
               threading.current_thread().name)] += 1

    with warnings.catch_warnings():  # restores the filters and showwarning
        warnings.simplefilter("always")
        warnings.showwarning = record  # the other warnings, now shown every time, are dropped here
        torch.cuda.set_sync_debug_mode("warn")
        try:
            pgpig_main.main(args=["train", *train_args], standalone_mode=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--recipe", action="append", required=True, help="a shipped recipe's name or a path")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="passed on to pgpig train (e.g. vgg_weights=null)")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("sync_points.py needs a CUDA device: the debug mode reports CUDA synchronisations")
    for recipe in args.recipe:
        with tempfile.TemporaryDirectory() as tmp:
            train_args = ["--shards", args.shards, "--recipe", recipe, "--run", str(Path(tmp) / "run"),
                          "--steps", str(args.steps), "--quiet", "--set", "sample_every=1000000",
                          "--set", "checkpoint_every=1000000"]
            for item in args.settings:
                train_args += ["--set", item]
            error = None
            try:
                sites = count_syncs(train_args)
            except Exception as exc:  # a recipe that cannot run here is a result too
                sites, error = collections.Counter(), f"{type(exc).__name__}: {exc}"
        listed = [{"part": part, "site": ours, "innermost": inner, "thread": thread, "count": n}
                  for (part, ours, inner, thread), n in sites.most_common()]
        in_loop = [s for s in listed if s["part"] != "outside _train" and per_step(s["part"])]
        one_off = [s for s in listed if s not in in_loop]
        print(json.dumps({
            "bench": "train_sync_points", "recipe": recipe, "steps": args.steps,
            "syncs_per_step": round(sum(s["count"] for s in in_loop) / args.steps, 2),
            "loop_sites": [{**s, "per_step": round(s["count"] / args.steps, 2)} for s in in_loop],
            "one_off_syncs": sum(s["count"] for s in one_off), "one_off_sites": one_off, "error": error,
            "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "label": args.label}), flush=True)


if __name__ == "__main__":
    main()
