"""Compare the training loss curves of runs: the first run against each of the others, step by step.

    python benchmarks/loss_curves.py RUN_A RUN_B [RUN_C ...] [--label CARD]

Reads the ``train/*`` scalars every run logged to TensorBoard (``RUN/tensorboard``; a resumed run's events from
both invocations) and prints one JSON line: per run the logged steps and the last values; per other run and loss,
at the steps both logged, the relative difference ``|b - a| / |a|`` at the first step, its median and maximum over
the curve, and the two curves' means over the last half (a multi-GPU run with the same global batch should start
where the one-GPU run starts and stay on its curve: the same means, differences of the order of the step-to-step
noise).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """``{loss name: {step: value}}`` of ``run``'s ``train/*`` scalars (the last value of a step logged twice)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict[int, float]] = {}
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith("train/") and tag not in ("train/epoch", "train/lr"):
                curves.setdefault(tag[len("train/"):], {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return curves


def compare(a: dict[int, float], b: dict[int, float]) -> dict[str, float] | None:
    steps = sorted(set(a) & set(b))
    if not steps:
        return None
    rel = [abs(b[s] - a[s]) / max(abs(a[s]), 1e-12) for s in steps]
    half = steps[len(steps) // 2:]
    return {"steps": len(steps), "first_step": steps[0], "rel_diff_first": round(rel[0], 6),
            "rel_diff_median": round(statistics.median(rel), 6), "rel_diff_max": round(max(rel), 6),
            "mean_last_half_a": round(statistics.fmean(a[s] for s in half), 6),
            "mean_last_half_b": round(statistics.fmean(b[s] for s in half), 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    curves = {str(run): scalars(run) for run in args.runs}
    first = str(args.runs[0])
    record = {"bench": "loss_curves", "label": args.label, "reference": first, "runs": {}, "against_reference": {}}
    for run, losses in curves.items():
        record["runs"][run] = {name: {"steps": len(c), "last_step": max(c), "last": round(c[max(c)], 6)}
                               for name, c in losses.items() if c}
        if run != first:
            record["against_reference"][run] = {name: compare(curves[first][name], c)
                                                for name, c in losses.items() if name in curves[first]}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
