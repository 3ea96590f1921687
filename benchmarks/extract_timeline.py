"""Where one `pgpig-data extract` run's time goes, thread by thread: the fast backend's steps timed inside a real run.

    python benchmarks/extract_timeline.py [--images 40000] [--sizes mixed | --size 256x176] [--imgsz 256]
                                          [--extract-args "..."] [--no-sync] [--label CARD]

``extract_profile.py`` times each stage alone; this runs ``pgpig-data extract --workers 0`` in this process (the
same command line, through click) on ``extract_bench.py``'s files and wraps the fast backend's steps with timers:

- the producer threads (``--prepare-threads``): waiting for the reader processes (``BatchReader.read``), the
  torch JPEG decoder's calls, the rest of preparing a batch, also split: files the torch decoder refused decoded
  on the CPU, CPU-decoded images to the device, the network inputs (the letterbox, its own share, and the frames),
  the merge of a batch's decode chunks (host time: the GPU work they launch runs on);
- the main thread: waiting for a prepared batch, launching the network (a new input shape's CUDA graph capture
  counted apart, with when it happened), waiting for the GPU's results (``Event.synchronize``), collecting them,
  writing the part files;
- the warm-up, and the shape warmer's threads (a sample of a task's shapes, each new shape's first call ahead) with
  the main thread's waits for them;
- a part's write split into its table, its Parquet file and the fsyncs; a probe thread that sleeps 5 ms at a
  time and lists its wake-ups over 50 ms late with when (a call holding the interpreter's lock, or the process
  stopped: not a CUDA call's wait, which leaves the other threads running), and the garbage collector's passes
  (those over 20 ms listed with when);
- the start-up's steps, which run before any of those: the torch import with the GPU check (``_gpu_visible``), the
  settings, the listing's rows, the planning, the device's priming (its CUDA context), the worker's source
  (``task_source``: the model's load) and ``warm_worker``. Nothing imports torch before the run starts: the
  backend's timers go in once its source is made.

The first calls of every step are also listed with when they started (seconds since this script's start, the files'
making left out): the start-up's chain, and what holds up the first task (its first decode calls, captures, writes).
Prints one JSON line: per thread and step the seconds, calls and the median, 90th percentile and longest call in
milliseconds, and when the longest started (a few slow batches hold up the batches behind them: the consumer takes
them in order), the captures (seconds since the start, shape, seconds), the run record's timings, and the wall time
from the start of this script (imports included) to the run's end. What a thread waits for is what bounds it; the
main thread's waits say which side is the bottleneck, and a producer's seconds short of the run's are its idle time
(waiting for room ahead).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import faulthandler  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

_STACKS_AFTER = [0.0]  # --stacks-after, for the forked readers too
_LOCK = threading.Lock()
_DURATIONS: dict[tuple[str, str], list[float]] = defaultdict(list)
_CAPTURES: list[tuple[float, list, float]] = []
_FIRST_CALLS: list[tuple[float, str, str, float]] = []  # (start, thread, step, seconds) of each step's first calls
_LONGEST: dict[tuple[str, str], tuple[float, float]] = {}  # (seconds, start) of each thread's and step's longest call
FIRST_CALLS = 3  # per thread and step
_LATE: list[tuple[float, float]] = []  # (start, seconds behind) of the probe's wake-ups over 50 ms late
_LONG_GCS: list[tuple[float, int, float]] = []  # (start, generation, seconds) of collections over 20 ms
_MADE = [0.0]  # seconds this script spent making the files, left out of the start times
_INSTRUMENTED = [False]  # the backend's timers are in


def _since_start(start: float) -> float:
    """``start`` (``perf_counter``) in seconds since this script's start, the files' making left out."""
    return round(start - START - _MADE[0], 3)


def _add(step: str, seconds: float, start: float | None = None) -> None:
    thread = threading.current_thread().name
    with _LOCK:
        calls = _DURATIONS[thread, step]
        calls.append(seconds)
        if start is not None and len(calls) <= FIRST_CALLS:
            _FIRST_CALLS.append((_since_start(start), thread, step, round(seconds, 3)))
        if start is not None and seconds > _LONGEST.get((thread, step), (0.0, 0.0))[0]:
            _LONGEST[thread, step] = (seconds, start)


def _timed(owner, name: str, step: str, then=None) -> None:
    """Wrap ``owner.name`` (a function) so that its calls add to ``step`` of the calling thread; ``then(args,
    start, seconds)``, if given, sees each call too."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - start
            _add(step, seconds, start)
            if then is not None:
                then(args, start, seconds)

    setattr(owner, name, wrapper)


def _timed_iteration(owner, name: str, step: str) -> None:
    """Wrap the generator function ``owner.name`` so that the time spent in each of its ``next`` adds to ``step``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        items = original(*args, **kwargs)
        while True:
            start = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                _add(step, time.perf_counter() - start, start)
            yield item

    setattr(owner, name, wrapper)


def instrument() -> None:
    """Time the run's start-up steps now, and the backend's steps once the worker's source is made."""
    from pipeline import extract
    from pipeline.datasets import background

    _timed(extract, "_gpu_visible", "GPU check (the torch import included)")
    _timed(extract, "run_settings", "settings (model fingerprint)")
    _timed(background.Listing, "rows", "wait for the listing's rows")
    _timed(extract, "_start_run", "plan the tasks")
    _timed(extract, "_prime", "prime the device (CUDA context, cuDNN's load)")
    _timed(extract, "warm_worker", "warm_worker (source and warm-up)")
    _timed(extract, "task_source", "task_source (the model's load on first use)", then=_instrument_backend)
    _timed(extract._Part, "write", "write part files")
    # inside a part's write: the table, the Parquet file (its fsync included), and every fsync of the process
    _timed(extract, "table_from_pydict", "the part's table")
    _timed(extract, "write_table", "the part's Parquet file (fsync included)")
    _timed(os, "fsync", "fsync")
    threading.Thread(target=_late_wakeups, name="wake-up-probe", daemon=True).start()
    gc.callbacks.append(_collection)
    os.register_at_fork(after_in_child=_forked)


def _forked() -> None:
    """In a forked child (the file readers): no collection timing, and a lock of its own. The parent's lock may be
    held by one of its threads at the fork, which the child does not have, and the child's first collection would
    wait for it for ever."""
    global _LOCK
    _LOCK = threading.Lock()
    if _collection in gc.callbacks:
        gc.callbacks.remove(_collection)
    if _STACKS_AFTER[0]:
        faulthandler.dump_traceback_later(_STACKS_AFTER[0])  # a reader still alive then names where it is


_GC_START = [0.0]


def _collection(phase: str, info: dict) -> None:
    """The garbage collector's passes: each holds the interpreter's lock over every tracked object."""
    if phase == "start":
        _GC_START[0] = time.perf_counter()
        return
    seconds = time.perf_counter() - _GC_START[0]
    _add(f"garbage collection, generation {info['generation']}", seconds, _GC_START[0])
    if seconds > 0.02:
        with _LOCK:
            _LONG_GCS.append((_since_start(_GC_START[0]), info["generation"], round(seconds, 3)))


def _late_wakeups(period: float = 0.005, late: float = 0.02) -> None:
    """Sleep ``period`` again and again; a wake-up more than ``late`` behind adds its delay to this thread's step:
    the interpreter's lock held by one call that long (or the whole process stopped), against a wait of a CUDA
    call, which leaves other threads running."""
    while True:
        start = time.perf_counter()
        time.sleep(period)
        behind = time.perf_counter() - start - period
        if behind > late:
            _add("woke late (interpreter lock held, or the process stopped)", behind, start)
            if behind > 0.05:
                with _LOCK:
                    _LATE.append((_since_start(start), round(behind, 3)))


def _instrument_backend(*_) -> None:
    """The fast backend's steps (its modules are imported by then), once."""
    with _LOCK:
        if _INSTRUMENTED[0]:
            return
        _INSTRUMENTED[0] = True
    import torch

    from pipeline.pose import fast, reading, shapes

    _timed_iteration(reading.BatchReader, "read", "wait for the readers")
    _timed(fast.FastBackend, "_torch_decode", "torch JPEG decode calls")
    _timed(fast.FastBackend, "_prepare", "prepare a batch (decode calls included)")
    # inside a batch's preparation: what is not the decode call
    _timed(fast, "decode_bytes", "CPU decode of files the torch decoder refused")
    _timed(fast, "bgr_to_tensor", "CPU-decoded images to the device")
    _timed(fast.FastBackend, "_network_inputs", "network inputs (letterbox and frames, launches included)")
    _timed(fast, "letterbox_batch", "letterbox (launches)")
    _timed(fast, "merged_inputs", "merge a batch's chunks")
    _timed_iteration(fast.FastBackend, "_prepared", "wait for a prepared batch")
    _timed(fast.FastBackend, "_receive", "receive a prepared batch")
    _timed(fast.FastBackend, "_launch_call", "launch the network (captures included)")
    _timed(fast.FastBackend, "_finish_call", "collect results (GPU waits included)")
    _timed(fast.FastBackend, "warm_up", "warm-up")
    _timed(shapes, "sample_shapes", "read a sample of the files' shapes")
    _timed(shapes.ShapeWarmer, "_first_call", "a shape's first network call ahead (ShapeWarmer)")
    _timed(shapes.ShapeWarmer, "claim", "claim a shape (waits for its call ahead)")
    if torch.cuda.is_available():
        _timed(torch.cuda.Event, "synchronize", "wait for the GPU (events)")

    def captured(args, start: float, seconds: float) -> None:  # PersonGraphs._capture(self, key)
        with _LOCK:
            _CAPTURES.append((_since_start(start), list(args[1]), round(seconds, 3)))

    _timed(fast.PersonGraphs, "_capture", "graph capture (new input shape)", captured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40000)
    parser.add_argument("--sizes", choices=["uniform", "mixed"], default="mixed")
    parser.add_argument("--size", default="256x176", help="HxW of the uniform files")
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extract-args", default="", help="more options for pgpig-data extract")
    parser.add_argument("--no-sync", action="store_true",
                        help="leave the made files' write-back pending, as right after they are copied in")
    parser.add_argument("--label", default="")
    parser.add_argument("--stacks-after", type=float, default=60.0,
                        help="seconds into the run after which every thread's stack, this process's and each "
                             "reader's, goes to stderr (a run that hangs says where; 0: never)")
    args = parser.parse_args()

    from extract_bench import make_files

    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="pgpig-timeline-") as tmp:
        raw, work = Path(tmp) / "raw", Path(tmp) / "work"
        made = time.perf_counter()
        make_files(raw, args.sizes, args.images, size, args.seed, sync=not args.no_sync)
        _MADE[0] = time.perf_counter() - made
        instrument()
        from pipeline.cli import main as cli

        command = ["extract", str(raw), "--dataset", "folder", "--out", str(work / "kp"), "--run-file",
                   str(work / "extract.json"), "--workers", "0", "--imgsz", str(args.imgsz), "--overwrite", "--quiet",
                   *shlex.split(args.extract_args)]
        _STACKS_AFTER[0] = args.stacks_after
        if args.stacks_after:
            faulthandler.dump_traceback_later(args.stacks_after)
        run_start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the command's own summary lines: stdout is the JSON line's
            cli(command, standalone_mode=False)
        run_end = time.perf_counter()
        faulthandler.cancel_dump_traceback_later()
        run_seconds = run_end - run_start
        record = json.loads((work / "extract.json").read_text())
    import torch

    threads: dict[str, dict] = defaultdict(dict)
    for (thread, step), durations in sorted(_DURATIONS.items()):
        ms = np.asarray(durations) * 1e3
        threads[thread][step] = {"seconds": round(float(ms.sum()) / 1e3, 3), "calls": len(ms),
                                 "ms_p50": round(float(np.percentile(ms, 50)), 2),
                                 "ms_p90": round(float(np.percentile(ms, 90)), 2), "ms_max": round(float(ms.max()), 2)}
        if (thread, step) in _LONGEST:  # when the longest call started (seconds since the start, as first_calls)
            threads[thread][step]["longest_at_s"] = _since_start(_LONGEST[thread, step][1])
    print(json.dumps({
        "bench": "extract_timeline", "images": args.images, "sizes": args.sizes, "imgsz": args.imgsz,
        "extract_args": args.extract_args, "files_synced": not args.no_sync, "label": args.label,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "seconds_from_script_start_to_run_end": round(_since_start(run_end), 2),
        "run_seconds_in_process": round(run_seconds, 2), "images_per_s_in_process": round(args.images / run_seconds, 1),
        "record": {k: record.get(k) for k in ("seconds", "listing_seconds", "listing_alone_seconds",
                                              "start_wait_seconds", "task_seconds", "after_tasks_seconds",
                                              "first_batch_seconds", "warm_ups", "task_write_seconds",
                                              "read_processes", "prepare_threads")},
        "threads": threads, "captures": _CAPTURES, "late_wakeups": _LATE, "long_collections": _LONG_GCS,
        "first_calls": [list(call) for call in sorted(_FIRST_CALLS)],
        "python": platform.python_version(), "torch": torch.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
