"""``pgpig-data extract``: 18-keypoint skeletons for every raw image, as Dask tasks over partitions.

The raw tree is listed (``pipeline.datasets``), images already in finished parts are dropped (resume), and the
rest is cut into partitions. A task hands its partition's files to the run's keypoint source
(``pipeline.pose``: the ``fast`` or ``ultralytics`` model, or annotation CSVs), which reads, decodes and batches
them and gives back each file's record and chosen person; the task writes one ``keypoints/part-NNNNN.parquet``
atomically and returns a small summary. Every listed file gets exactly one row with a status and, when not
``ok``, a reason; a bad file never stops the run.

The tasks run in this process (``workers=0``), on a ``LocalCluster`` of one worker per GPU (or CPU workers), or
on the cluster at ``scheduler``; each worker loads and warms up its source (``warm_worker``) while a child process
lists the files (``pipeline.datasets.background``). Consecutive parts can be one stream of the source
(``extract_stream``), whose reading then runs on from part to part. ``extract.json`` records the run: written at
the start (``complete: false``, so a resume can check it continues the same settings) and again at the end with
counts, speed and where the time went.
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from pipeline.devices import visible_gpus
from pipeline.errors import PipelineError
from pipeline.keypoints import PART_PATTERN, part_name, read_keypoints
from pipeline.versions import library_versions
from schemas.errors import SchemaError
from schemas.files import atomic_write, sha256_file
from schemas.tables import SCHEMA_VERSION, empty_keypoints, read_table, table_from_pydict, write_table

BACKENDS = ("auto", "fast", "ultralytics")
# per source when not given: images per model call, images per part, parts one stream may run (None: any number).
# The fast backend wants large batches, and its reader processes and device pipeline run on across parts; the others
# read on a thread pool that fills in milliseconds, and ultralytics counts its batches in readable images of a part,
# so one part per stream keeps each part's rows independent of its neighbours.
SOURCE_SIZES = {"fast": (256, 4096, None), "ultralytics": (32, 512, 1), "annotations": (32, 512, 1)}
# the fast backend's batch and part on the CPU: its first network call waits for a whole batch to be read, the
# network runs 1.6-3.5x slower on 256 inputs at once (benchmarks/cpu_network_bench.py), and CPU workers run parts
# at about 100 img/s, where parts of 4096 files would leave one worker with the last minute of a run
FAST_CPU_BATCH, FAST_CPU_PARTITION = 32, 512
RUN_FILE_VERSION = 1
# settings that change the keypoints: a resume must not mix parts made with other values
_RESULT_SETTINGS = ("backend", "model_sha256", "imgsz", "conf", "kpt_threshold", "annotations_sha256",
                    "dataset", "max_pixels", "person")


@dataclass
class ExtractConfig:
    """Everything ``pgpig-data extract`` can be told, with its defaults (the CLI's come from here)."""

    raw: Path
    """Root of the raw data set (Market-1501, DeepFashion In-shop, or ``<identity>/<image>`` folders)."""
    out: Path = Path("keypoints")
    """Folder of the keypoint parts."""
    run_file: Path = Path("extract.json")
    """Where the run record goes."""
    dataset: str | None = None
    """``market1501``, ``deepfashion`` or ``folder``; None detects it."""
    split_lists: tuple[Path, Path] | None = None
    """PATN train/test name lists deciding the DeepFashion split."""
    highres: bool = False
    """DeepFashion: list ``img_highres/`` instead of ``img/``."""
    seed: int = 0
    """Seed of the identity split when the layout gives none."""
    model: Path | None = None
    """YOLO-pose weights; None → the embedded yolo11n-pose.pt."""
    pose_backend: str = "auto"
    """``fast`` (``pipeline.pose.fast``), ``ultralytics`` (``YOLO.predict``, the reference) or ``auto``: fast, on a
    GPU and on the CPU alike (on the CPU it runs 1.1-1.7x the ultralytics backend with the same keypoints,
    ``docs/fast-backend.md``). Unused with ``annotations``."""
    annotations: tuple[Path, ...] = ()
    """PATN annotation CSVs: keypoints come from them and no model runs."""
    imgsz: int = 256
    """Model input size."""
    conf: float = 0.25
    """Person detection confidence threshold."""
    kpt_threshold: float = 0.5
    """A keypoint is visible when its score is at least this."""
    person: str | None = None
    """Which person of an image is kept (``pipeline.pose.choose_person``): ``largest`` (box area × score) or
    ``centre`` (box height × score × closeness to the image's centre line, for crops made for one person);
    None → the layout's (``pipeline.datasets.default_person``): centre for Market-1501 and DeepFashion, largest for
    a folder. Unused with ``annotations``."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` (``auto`` pins one worker per GPU)."""
    batch_size: int | None = None
    """Images per model call; None → 256 with the fast backend on a GPU, 32 otherwise (``SOURCE_SIZES``,
    ``FAST_CPU_BATCH``)."""
    partition_size: int | None = None
    """Images per task and part file; None → 4096 with the fast backend on a GPU, 512 otherwise (``SOURCE_SIZES``,
    ``FAST_CPU_PARTITION``)."""
    workers: int | None = None
    """Worker processes of the local cluster; None → one per GPU, or CPU workers; 0 → in this process."""
    threads: int = 1
    """Threads per worker (Dask threads; torch gets the CPU cores divided between workers)."""
    read_processes: int | None = None
    """Fast backend: processes reading the files of each worker (``pipeline.pose.reading``); None → with a GPU
    the worker's cores less 2 (the GPU feeding threads), at most 8; without one 0 (threads)."""
    cpu_decode_share: float = 0.0
    """Fast backend: the share of the JPEGs the GPU decoder could take that the reader processes decode instead
    (picked by content, ``pipeline.pose.reading.cpu_routed``); for a GPU whose decoder and network take turns while
    CPU cores are free."""
    prepare_threads: int | None = None
    """Fast backend: threads of each worker that decode and letterbox read batches ahead of the network, each on
    its own CUDA stream; None → 2 with a GPU (one batch's letterboxing overlaps the next one's decoding), 1
    without."""
    scheduler: str | None = None
    """Address of an existing Dask cluster (``tcp://host:8786``)."""
    overwrite: bool = False
    """Discard earlier parts and start over."""
    max_pixels: int = 40_000_000
    """Larger images are decoded reduced (keypoints still in full-resolution pixels)."""

    @property
    def backend(self) -> str:
        """The source this run uses, as recorded in extract.json: ``annotations``, ``fast`` or ``ultralytics``."""
        if self.annotations:
            return "annotations"
        if self.pose_backend not in BACKENDS:
            raise PipelineError(f"unknown pose backend {self.pose_backend!r}; choose one of: {', '.join(BACKENDS)}")
        return "fast" if self.pose_backend == "auto" else self.pose_backend

    def sizes(self) -> tuple[int, int, int | None]:
        """``(batch_size, partition_size, parts per stream)`` with the source's defaults filled in."""
        batch_size, partition_size, stream = SOURCE_SIZES[self.backend]
        if self.backend == "fast" and not _gpu_visible(self):
            batch_size, partition_size = FAST_CPU_BATCH, FAST_CPU_PARTITION
        return self.batch_size or batch_size, self.partition_size or partition_size, stream

    def reader_processes(self, cores: int) -> int | None:
        """The fast backend's reader processes per worker of ``cores`` cores; None for the sources that read none."""
        if self.backend != "fast":
            return None
        if self.read_processes is not None:
            return self.read_processes
        return min(8, max(0, cores - 2)) if _gpu_visible(self) else 0


def _gpu_visible(cfg: ExtractConfig) -> bool:
    """A GPU is visible and ``--device`` does not rule it out: the fast backend then reads on processes, in larger
    batches and parts. Counted without starting CUDA (``visible_gpus``): a local run starts it on a thread."""
    return cfg.device != "cpu" and visible_gpus() > 0


@dataclass
class PartitionTask:
    """One task: a part number and the listed files it owns (small, picklable)."""

    part: int
    rows: list[dict]
    raw: str
    settings: dict = field(default_factory=dict)

    def todo(self) -> list[int]:
        """The rows a source reads (those not skipped), in order."""
        return [i for i, row in enumerate(self.rows) if row["skip_reason"] is None]

    def paths(self) -> list[str]:
        """The files of ``todo``: plain strings, which are all a reader needs (a ``Path`` each costs 10x more)."""
        return [os.path.join(self.raw, self.rows[i]["image"]) for i in self.todo()]


def person_rule(cfg: ExtractConfig, raw: Path) -> str | None:
    """The run's person rule: ``--person``, else the default of the layout (given or detected in ``raw``); None
    with annotations, where no model runs."""
    from pipeline.datasets import default_person
    from pipeline.pose import checked_rule

    if cfg.annotations:
        return None
    return checked_rule(cfg.person) if cfg.person is not None else default_person(raw, cfg.dataset)


def run_settings(cfg: ExtractConfig, dataset: str | None, person: str | None = None) -> dict:
    """The settings recorded in extract.json, including the fingerprints that resume compares; ``person`` the
    run's rule (``person_rule``)."""
    backend = cfg.backend
    batch_size, partition_size, _ = cfg.sizes()
    settings = {
        "backend": backend,
        "dataset": dataset,
        "imgsz": cfg.imgsz,
        "conf": cfg.conf,
        "kpt_threshold": cfg.kpt_threshold,
        "person": person,
        "batch_size": batch_size,
        "device": cfg.device,
        "partition_size": partition_size,
        "max_pixels": cfg.max_pixels,
        "model": None,
        "model_sha256": None,
        "annotations": [str(p) for p in cfg.annotations],
        "annotations_sha256": [sha256_file(p) for p in cfg.annotations] if cfg.annotations else None,
    }
    if cfg.annotations:
        settings.update(imgsz=None, conf=None, kpt_threshold=None)
        return settings
    from pipeline.pose import default_model_path

    model = Path(cfg.model) if cfg.model else default_model_path()
    if not model.is_file():
        raise PipelineError(f"{model}: pose model weights not found (--model)")
    settings["model"] = str(model.resolve())
    settings["model_sha256"] = sha256_file(model)
    return settings


# ---------------------------------------------------------------- the task (runs on a worker)


def _worker_device(device: str) -> str:
    """Pin each Dask worker to its own GPU: a worker whose name ends in ``k`` gets ``cuda:k % n``.

    LocalCluster names its workers 0, 1, ...; dask-jobqueue with several processes per job names them
    ``<job>-<k>``; a worker started by hand under ``CUDA_VISIBLE_DEVICES=i`` sees one GPU, so any name maps it to
    that GPU (``pipeline/cluster/``). A name without a trailing number, or no worker at all, gets ``cuda:0``."""
    if device != "auto":
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    index = 0
    if "distributed" in sys.modules:  # a Dask worker has imported it; elsewhere its import would cost ~0.2-0.5 s
        from distributed import get_worker

        try:
            match = re.search(r"(\d+)$", str(get_worker().name))
            index = int(match.group(1)) if match else 0
        except ValueError:  # not in a worker
            pass
    return f"cuda:{index % torch.cuda.device_count()}"


def task_source(s: dict):
    """This process's keypoint source for the settings ``s`` of a task, made on first use (``cached_backend``): the
    tasks and the warm-up get the same one. The one place that knows which options each source takes."""
    from pipeline.pose import cached_backend, set_torch_threads

    set_torch_threads(s["torch_threads"])  # this worker's share of the cores
    options = {"batch_size": s["batch_size"], "read_threads": s["decode_threads"]}
    if s["backend"] == "annotations":
        options.update(paths=tuple(s["annotations"]), dataset=s["dataset"])
    else:
        options.update(model=s["model"], imgsz=s["imgsz"], conf=s["conf"], kpt_threshold=s["kpt_threshold"],
                       person=s["person"], device=_worker_device(s["device"]))
    if s["backend"] == "fast":
        options.update(read_processes=s["read_processes"], cpu_decode_share=s["cpu_decode_share"],
                       prepare_threads=s["prepare_threads"])
    if s["backend"] in ("fast", "ultralytics"):
        options.update(torch_threads=s["torch_threads"])
    return cached_backend(s["backend"], **options)


def warm_worker(settings: dict, made: Callable | None = None) -> dict:
    """Make this process's source for ``settings`` and its first calls (``warm_up``), so that the first partition
    does not wait for them: run on every worker while the driver lists the files. ``made(source)`` is called
    once the source is made, before its warm-up.

    Returns ``{"seconds", "error"}`` and never raises: a source that cannot load fails the first task that needs
    it, which names its part (the run's error), and a warm-up that fails otherwise costs only its time."""
    start = time.perf_counter()
    error = None
    try:
        source = task_source(settings)
        if made is not None:
            made(source)
        source.warm_up()
    except Exception as exc:  # noqa: BLE001 - reported in the run record; the tasks raise what matters
        error = f"{type(exc).__name__}: {exc}"
    return {"seconds": round(time.perf_counter() - start, 3), "error": error}


class _Part:
    """The rows of one part as they are filled: every listed file of its task, a skipped one already final."""

    def __init__(self, task: PartitionTask, source: str):
        self.task, n = task, len(task.rows)
        self.source = source
        self.status = ["skipped"] * n
        self.reason = [row["skip_reason"] for row in task.rows]
        self.width: list[int | None] = [None] * n
        self.height: list[int | None] = [None] * n
        self.digest: list[str | None] = [None] * n
        self.persons = np.zeros(n, np.int16)
        self.keypoints, self.scores = empty_keypoints(n)
        self.boxes = np.full((n, 5), np.nan, np.float32)
        self.todo = np.asarray(task.todo(), dtype=np.int64)
        """The rows a source reads, in order."""

    def paths(self) -> list[str]:
        """The files of ``todo``."""
        return self.task.paths()

    def names(self) -> list[str | None]:
        """The PATN flat names of ``todo``."""
        return [self.task.rows[i]["patn_name"] for i in self.todo.tolist()]

    def take(self, batch, lo: int, hi: int, rows: np.ndarray) -> None:
        """Files ``lo:hi`` of a source's ``PersonBatch`` are this part's ``rows``."""
        for j, i in zip(range(lo, hi), rows.tolist(), strict=True):
            self.status[i], self.reason[i] = batch.status[j], batch.reason[j]
            self.width[i], self.height[i], self.digest[i] = batch.width[j], batch.height[j], batch.digest[j]
        self.persons[rows] = batch.persons[lo:hi]
        self.boxes[rows] = batch.boxes[lo:hi]
        self.keypoints[rows], self.scores[rows] = batch.keypoints[lo:hi], batch.scores[lo:hi]

    def write(self, out: str) -> tuple[dict, float]:
        """Write the part file atomically; returns its statuses and the seconds the table and the write took."""
        start = time.perf_counter()
        rows, n = self.task.rows, len(self.task.rows)
        vis = (self.keypoints != -1).any(axis=-1)
        table = table_from_pydict("keypoints", {
            "image": [r["image"] for r in rows],
            "patn_name": [r["patn_name"] for r in rows],
            "dataset": [r["dataset"] for r in rows],
            "split": [r["split"] for r in rows],
            "identity": [r["identity"] for r in rows],
            "camera": [r["camera"] for r in rows],
            "view": [r["view"] for r in rows],
            "width": self.width,
            "height": self.height,
            "content_hash": self.digest,
            "status": self.status,
            "reason": self.reason,
            "n_persons": self.persons,
            "box": self.boxes,
            "keypoints": self.keypoints,
            "scores": self.scores,
            "n_visible": vis.sum(axis=1).astype(np.int8),
            "source": [self.source] * n,
        })
        write_table(table, Path(out) / part_name(self.task.part), "keypoints")
        return dict(Counter(self.status)), time.perf_counter() - start


def extract_stream(tasks: list[PartitionTask], out: str) -> Iterator[dict]:
    """The partitions of ``tasks`` as one ``extract_files`` of the source over all their files, each part written
    as soon as its last file is back; yields a summary per part, in order, once its file is on disk: ``{"part",
    "rows", "statuses", "seconds", "backend_seconds", "write_seconds", "first_batch_seconds"}`` (seconds: from the
    previous part's summary to its own; getting the source, which loads the model unless a warm-up or an earlier
    task did, and the first batch's wait count in the first part only). The source's reading runs on from one part
    into the next; however the parts are grouped into streams, the files and rows are the same (``SOURCE_SIZES``
    keeps the sources whose batches would differ to one part per stream).

    The part files are written by one thread beside the source's loop (building the table, compressing it and the
    fsync of the atomic write take their time off the loop that feeds the device), in part order; a write's error
    is raised when its part's turn comes, and whatever way the stream ends, the parts already complete are written
    before it returns."""
    start = time.perf_counter()
    source = task_source(tasks[0].settings)
    backend_seconds = time.perf_counter() - start
    parts = [_Part(task, source.origin) for task in tasks]
    ends = np.cumsum([len(p.todo) for p in parts])  # files read when each part is complete
    rows = np.concatenate([p.todo for p in parts])
    handed = reported = read = 0  # parts given to the writer, parts reported, files handed back
    pending: deque[Future] = deque()  # the writer's results, in part order
    first_batch = None
    failed = threading.Event()  # a write failed: the writer writes no later part

    def write(part: _Part) -> tuple[dict, float] | None:
        if failed.is_set():
            return None
        try:
            return part.write(out)
        except BaseException:
            failed.set()
            raise

    def hand_over() -> None:
        nonlocal handed
        while handed < len(parts) and read >= ends[handed]:
            pending.append(writer.submit(write, parts[handed]))
            handed += 1

    def written(wait: bool) -> Iterator[dict]:
        nonlocal reported, start
        while pending and (wait or pending[0].done()):
            result = pending.popleft().result()  # a failed write raises here, in part order
            if result is None:  # after a failed write: the parts the writer left
                pending.clear()
                return
            statuses, write_seconds = result
            now, part = time.perf_counter(), parts[reported]
            yield {"part": part.task.part, "rows": len(part.task.rows), "statuses": statuses,
                   "seconds": now - start, "backend_seconds": backend_seconds if reported == 0 else 0.0,
                   "write_seconds": write_seconds, "first_batch_seconds": first_batch if reported == 0 else None}
            reported, start = reported + 1, now

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgpig-part-writer")
    try:
        hand_over()  # leading parts with no file to read
        paths = [path for p in parts for path in p.paths()]
        names = [name for p in parts for name in p.names()]
        for batch in source.extract_files(paths, tasks[0].settings["max_pixels"], names):
            if first_batch is None:
                first_batch = time.perf_counter() - start
            n, lo = len(batch), 0
            while lo < n:  # this batch's files, part by part
                k = int(np.searchsorted(ends, read + lo, side="right"))
                hi = min(n, int(ends[k]) - read)
                parts[k].take(batch, lo, hi, rows[read + lo:read + hi])
                lo = hi
            read += n
            hand_over()
            yield from written(wait=False)
        if read != len(rows):
            raise PipelineError(f"the {tasks[0].settings['backend']} source returned {read} of {len(rows)} files")
        yield from written(wait=True)
    except Exception:
        yield from written(wait=True)  # the parts complete before the error are written and reported first
        raise
    finally:
        writer.shutdown(wait=True)  # and on disk however the stream stops (an interrupt, a closed generator)


def _part_failed(task: PartitionTask, exc: BaseException) -> PipelineError:
    # finished parts stay valid: the next run resumes after fixing the cause
    first = task.rows[0]["image"] if task.rows else "?"
    return PipelineError(f"part {task.part} (from {first}) failed: {type(exc).__name__}: {exc}; "
                         "parts written so far are kept, run again to resume")


def _run_parts(tasks: list[PartitionTask], out: str) -> Iterator[dict]:
    """The summaries of ``tasks`` run in this process, in order, as streams of as many parts as the source
    streams (``SOURCE_SIZES``). A failure raises a ``PipelineError`` that names the first part not written.

    The tasks run with the objects alive at their start (the libraries' modules, the model, the listing's rows)
    set aside from the garbage collector's full passes (``gc.freeze``): such a pass runs under the interpreter's
    lock, stalling every thread that feeds the device. Objects made later are collected as always; the set-aside
    ones are handed back when the tasks end."""
    size = tasks[0].settings["parts_per_stream"] or len(tasks)
    streams = chain.from_iterable(extract_stream(tasks[i:i + size], out) for i in range(0, len(tasks), size))
    written = 0
    gc.freeze()
    try:
        for summary in streams:
            written += 1
            yield summary
    except (PipelineError, SchemaError):
        raise
    except Exception as exc:
        raise _part_failed(tasks[written], exc) from exc
    finally:
        gc.unfreeze()


def extract_parts(tasks: list[PartitionTask], out: str) -> list[dict]:
    """Several partitions as one Dask task: a worker streams a group of parts, as this process does
    (``_run_parts``), instead of refilling its source's pipeline at every part."""
    return list(_run_parts(tasks, out))


def task_groups(tasks: list[PartitionTask], workers: int) -> list[list[PartitionTask]]:
    """The Dask tasks of a run: groups of up to 8 parts (and no more than a stream of the source takes), at least 4
    groups per worker where there are enough parts (so that the last ones still spread over the workers)."""
    if not tasks:
        return []
    size = max(1, min(8, tasks[0].settings["parts_per_stream"] or 8, len(tasks) // (4 * max(1, workers))))
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


# ---------------------------------------------------------------- the driver


def finished_parts(out: Path) -> tuple[dict[int, Path], set[str]]:
    """Parts already written (by number) and the images they hold.

    A part that cannot be read as a keypoints table (damaged on disk) is renamed ``*.corrupt`` so its
    images are processed again; temporaries of an interrupted write are removed.
    """
    parts: dict[int, Path] = {}
    done: set[str] = set()
    if not out.is_dir():
        return parts, done
    for entry in sorted(out.iterdir()):
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            entry.unlink()
            continue
        m = PART_PATTERN.match(entry.name)
        if not m:
            continue
        try:
            images = read_table(entry, "keypoints", columns=["image"])["image"].to_pylist()
        except SchemaError:
            entry.rename(entry.with_name(entry.name + ".corrupt"))
            continue
        parts[int(m.group(1))] = entry
        done.update(images)
    return parts, done


def _check_resume(cfg: ExtractConfig, settings: dict, raw: Path, unknown: tuple[str, ...] = ()) -> None:
    """Refuse to continue a run made with other settings (the ``_RESULT_SETTINGS`` but ``unknown`` ones)."""
    if not cfg.run_file.is_file():
        return
    try:
        previous = json.loads(cfg.run_file.read_text())
    except json.JSONDecodeError:
        return  # not ours to trust; the parts are still checked one by one
    if previous.get("raw") not in (None, str(raw)):
        raise PipelineError(f"{cfg.out} holds keypoints of {previous['raw']}, not {raw}; "
                            "pass --overwrite or another --out")
    old = dict(previous.get("settings", {}))
    if old.get("model_sha256") and "person" not in old:  # recorded before the rule was: the largest person
        old["person"] = "largest"
    changed = [k for k in _RESULT_SETTINGS if k in old and k not in unknown and old[k] != settings[k]]
    if changed:
        flag = {"backend": "--backend", "person": "--person"}.get(changed[0]) if len(changed) == 1 else None
        hint = f" (it was made with {flag} {old[changed[0]]})" if flag else ""
        raise PipelineError(f"{cfg.out} was extracted with other settings ({', '.join(changed)}){hint}; "
                            "pass --overwrite to start over, or --out for a separate run")


def _clear(cfg: ExtractConfig) -> None:
    if cfg.out.is_dir():
        for entry in cfg.out.iterdir():
            if PART_PATTERN.match(entry.name) or entry.name.endswith((".tmp", ".corrupt")):
                entry.unlink()
    if cfg.run_file.is_file():
        cfg.run_file.unlink()


def _write_run(cfg: ExtractConfig, record: dict) -> None:
    with atomic_write(cfg.run_file, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")


def default_workers() -> tuple[int, int]:
    """(workers, torch threads per worker): one per GPU when there are several, else one CPU worker per 4 cores.

    With one GPU, or below 8 cores without one, the work runs in this process (0 workers): a single worker
    process only adds its start-up and the hand-over of every task. On one H200 this process ran 200,000 JPEGs
    1.3x faster end to end than one worker (``benchmarks/results/extract-h200.jsonl``, extract_cli lines), its
    parts streaming at 13-15k img/s against 8-10k; on 2 CPU cores one worker ran at half the in-process speed
    (``extract-cpu-2core.jsonl``).
    """
    cores = os.cpu_count() or 1
    gpus = visible_gpus()
    if gpus > 0:
        return (gpus if gpus > 1 else 0), max(1, cores // gpus)
    workers = cores // 4
    if workers <= 1:
        return 0, cores
    return workers, max(1, cores // workers)


def _worker_settings(cfg: ExtractConfig) -> tuple[int, dict]:
    """The worker processes, and what each task's source gets of the machine: torch threads, decoding threads
    (the cores left to each worker, at least 2 so reading overlaps the model), reader processes and parts per
    stream."""
    workers, torch_threads = default_workers()
    if cfg.workers is not None:
        workers = cfg.workers
        torch_threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    cores = (os.cpu_count() or 1) // max(1, workers)
    return workers, {"torch_threads": torch_threads, "decode_threads": max(2, min(8, cores)),
                     "read_processes": cfg.reader_processes(cores), "parts_per_stream": cfg.sizes()[2],
                     "cpu_decode_share": cfg.cpu_decode_share, "prepare_threads": cfg.prepare_threads}


def run_extract(cfg: ExtractConfig, progress: bool = False, log=print) -> dict:
    """Run (or resume) an extraction; returns the record written to ``extract.json``.

    A child process lists the files (``start_listing``) while this one reads the settings and starts the workers,
    each of which loads its source and warms it up (``warm_worker``) on a thread: the listing does not share this
    interpreter's lock with the warm-up's imports. The tasks are planned once the listing is back."""
    from pipeline.datasets.background import start_listing

    started = time.perf_counter()
    raw = Path(cfg.raw).resolve()
    if not raw.is_dir():
        raise PipelineError(f"{cfg.raw}: raw data folder not found")
    with start_listing(raw, cfg.dataset, split_lists=cfg.split_lists, seed=cfg.seed, highres=cfg.highres) as listing:
        batch_size, partition_size, _ = cfg.sizes()
        if partition_size < 1 or batch_size < 1:
            raise PipelineError("--partition-size and --batch-size must be at least 1")
        workers, worker_settings = _worker_settings(cfg)
        if _runs_here(cfg, workers):  # its device starts meanwhile
            _start_priming(cfg)
        # a detected dataset's name is filled in after the listing; its person rule is known now, so the workers
        # warm up the source the tasks use
        settings = run_settings(cfg, cfg.dataset, person_rule(cfg, raw))
        if not cfg.overwrite:  # before anything starts: a resume with other settings fails at once
            _check_resume(cfg, settings, raw, unknown=() if cfg.dataset else ("dataset",))
        pool = _Workers(cfg, workers, {**settings, **worker_settings})
        try:
            listed = listing.rows()
            settings["dataset"] = listed[0]["dataset"] if listed else (cfg.dataset or "folder")
            record, tasks = _start_run(cfg, raw, settings, worker_settings, listed, log)
            pool.plan(tasks)
            listing_seconds = time.perf_counter() - started
            summaries = pool.run(tasks, str(Path(cfg.out).resolve()), progress, log) if tasks else []
            tasks_done = time.perf_counter()
            warm_ups = pool.warm_ups()
            for warm in warm_ups:
                if warm["error"]:
                    log(f"warning: a worker's warm-up failed ({warm['error']}); its first task loaded the model "
                        "instead")
        finally:
            pool.close()
    ended = time.perf_counter()
    record.update(_timings(summaries, ended - started, listing_seconds, listing.seconds),
                  # the tasks' planning to the first task: waiting for the workers' start (this process: its warm-up)
                  start_wait_seconds=round(pool.start_wait, 3),
                  # the last task's summary to the run's end: the workers' and the listing's shutdown
                  after_tasks_seconds=round(ended - tasks_done, 3),
                  warm_ups=warm_ups,
                  workers=workers if cfg.scheduler is None else None,
                  read_processes=worker_settings["read_processes"],
                  cpu_decode_share=worker_settings["cpu_decode_share"],
                  prepare_threads=worker_settings["prepare_threads"],
                  scheduler=cfg.scheduler)
    _finish_record(cfg, record, bool(listed))
    _write_run(cfg, record)
    return record


def _runs_here(cfg: ExtractConfig, workers: int) -> bool:
    """The tasks run in this process: no scheduler named and no worker processes."""
    return cfg.scheduler is None and workers == 0


def _start_priming(cfg: ExtractConfig) -> None:
    """For the fast backend on a GPU: create the device's CUDA context, load cuDNN and set up nvJPEG on a thread
    (``prime_device``), while this process reads the settings and then loads the model."""
    if cfg.backend != "fast" or not _gpu_visible(cfg):
        return
    threading.Thread(target=_prime, args=(cfg.device,), name="extract-prime", daemon=True).start()


def _prime(device: str) -> None:
    try:
        from pipeline.pose.fast import prime_device

        prime_device(_worker_device(device))
    except Exception:  # noqa: BLE001 - the backend's own first CUDA calls name any error
        pass


def _start_run(cfg: ExtractConfig, raw: Path, settings: dict, worker_settings: dict, listed: list[dict],
               log) -> tuple[dict, list[PartitionTask]]:
    """Check or clear the earlier run, write the starting record, and plan the tasks of the files not done yet."""
    if cfg.overwrite:
        _clear(cfg)
    else:
        _check_resume(cfg, settings, raw)
    cfg.out.mkdir(parents=True, exist_ok=True)
    parts, done = finished_parts(cfg.out)
    todo = [r for r in listed if r["image"] not in done]
    record = {
        "version": RUN_FILE_VERSION,
        "schema_version": SCHEMA_VERSION,
        "raw": str(raw),
        "out": str(Path(cfg.out).resolve()),
        "settings": settings,
        "versions": library_versions(),
        "listed": len(listed),
        "already_done": len(listed) - len(todo),
        "complete": False,
    }
    _write_run(cfg, record)
    log(f"{raw}: {len(listed)} files ({settings['dataset']}); {record['already_done']} already extracted, "
        f"{len(todo)} to do")
    task_settings = {**settings, **worker_settings}
    first, size = max(parts, default=-1) + 1, settings["partition_size"]
    tasks = [PartitionTask(first + k, todo[i:i + size], str(raw), task_settings)
             for k, i in enumerate(range(0, len(todo), size))]
    return record, tasks


def _timings(summaries: list[dict], seconds: float, listing_seconds: float, listing_alone: float | None) -> dict:
    """The run record's counts of work and time, from the tasks' summaries."""
    processed = sum(s["rows"] for s in summaries)
    return {
        "processed": processed,
        "seconds": round(seconds, 3),
        # from the start to the tasks' planning: the listing (``listing_alone_seconds``, in a child process) and,
        # meanwhile, this process's settings (its first torch import) and the check of the finished parts; the
        # workers start meanwhile
        "listing_seconds": round(listing_seconds, 3),
        "listing_alone_seconds": round(listing_alone, 3) if listing_alone is not None else None,
        "task_seconds": round(sum(s["seconds"] for s in summaries), 3),  # inside tasks: no start-up, no listing
        # [rows, seconds] of every task, in completion order: a worker's first task also loads the model unless
        # its warm-up had
        "tasks": [[s["rows"], round(s["seconds"], 3)] for s in summaries],
        # of task_seconds: getting the source (a model load when not warmed up) and writing the part files
        "task_backend_seconds": round(sum(s.get("backend_seconds", 0.0) for s in summaries), 3),
        "task_write_seconds": round(sum(s.get("write_seconds", 0.0) for s in summaries), 3),
        # from the first task's start to its first batch back (the source's pipeline filled)
        "first_batch_seconds": summaries[0].get("first_batch_seconds") if summaries else None,
        "images_per_second": round(processed / seconds, 2) if seconds > 0 else None,
    }


def _finish_record(cfg: ExtractConfig, record: dict, listed: bool) -> None:
    """Complete the record with the finished table's counts (one read of a few small columns), the annotated names
    that match no file, and the end-of-run ``warnings`` (``run_warnings``)."""
    columns = ["status", "reason", "split", "identity"] + (["patn_name"] if cfg.annotations else [])
    table = read_keypoints(cfg.out, columns) if listed else None
    rows = table.to_pydict() if table is not None else {c: [] for c in columns}
    record.update(complete=True, rows=len(rows["status"]), statuses=dict(sorted(Counter(rows["status"]).items())))
    if cfg.annotations:
        record["unmatched_annotations"] = _unmatched_annotations(cfg, record["settings"]["dataset"],
                                                                 set(rows["patn_name"]))
    record["warnings"] = run_warnings(cfg, record["settings"]["dataset"], rows)


NO_PERSON_WARNING = 0.2
"""Above this fraction of the images a source was run on ending without a person, the run says what to try."""


def run_warnings(cfg: ExtractConfig, dataset: str, rows: dict[str, list]) -> list[str]:
    """One line per thing the finished run should tell its user, from the table's ``status``, ``reason``,
    ``split`` and ``identity`` columns: many images without a person, a folder layout with an empty split, PATN
    annotation CSVs in the raw folder left unused."""
    return [line for line in (_no_person_warning(cfg, rows), _split_warning(cfg, dataset, rows),
                              _annotations_hint(cfg)) if line]


def _no_person_warning(cfg: ExtractConfig, rows: dict[str, list]) -> str | None:
    attempted = [i for i, status in enumerate(rows["status"]) if status != "skipped"]
    failed = [i for i in attempted if rows["status"][i] != "ok"]
    if not attempted or len(failed) <= NO_PERSON_WARNING * len(attempted):
        return None
    reasons = Counter(rows["reason"][i] or rows["status"][i] for i in failed).most_common(3)
    top = ", ".join(f"{reason} {n}" for reason, n in reasons)
    if cfg.annotations:
        advice = "check that --annotations names the CSVs of this raw folder"
    else:
        advice = (f"try a larger --imgsz (now {cfg.imgsz}), a lower --conf (now {cfg.conf:g}), or --annotations "
                  "FILE with known keypoints, each with --overwrite")
    return (f"warning: {len(failed)} of {len(attempted)} images ({len(failed) / len(attempted):.0%}) have no "
            f"person ({top}); {advice}")


def _split_warning(cfg: ExtractConfig, dataset: str, rows: dict[str, list]) -> str | None:
    """A folder layout's seeded identity split that left one split empty, and a ``--seed`` that fills both."""
    from pipeline.datasets.folder import DEFAULT_TEST_FRACTION as FOLDER_TEST_FRACTION
    from pipeline.datasets.listing import identity_in_test

    if dataset != "folder":
        return None
    identities = sorted({i for i, split in zip(rows["identity"], rows["split"], strict=True) if split is not None})
    splits = {split for split in rows["split"] if split is not None}
    if not identities or len(splits) != 1:
        return None
    (only,) = splits
    other = "test" if only == "train" else "train"
    said = (f"warning: all {len(identities)} identities of {cfg.raw} are in the {only} split (the seeded split sends "
            f"about {FOLDER_TEST_FRACTION:.0%} of the identity folders to test), so `pgpig-data pair --split {other}` "
            "will find no image; ")
    if len(identities) < 2:
        return said + "add identity folders (one folder per person) to get both splits"
    for seed in range(cfg.seed + 1, cfg.seed + 10_000):
        in_test = sum(identity_in_test(identity, seed, FOLDER_TEST_FRACTION) for identity in identities)
        if 0 < in_test < len(identities):
            return said + (f"re-run with --seed {seed} --overwrite ({in_test} of them in test), or add identity "
                           "folders")
    return said + "add identity folders (one folder per person) to get both splits"


def _annotations_hint(cfg: ExtractConfig) -> str | None:
    """PATN annotation CSVs (as ``pgpig-data synth`` writes them) in the raw folder's top, not used by this run."""
    if cfg.annotations:
        return None
    found = sorted(Path(cfg.raw).glob("*-annotation-*.csv"))
    if not found:
        return None
    flags = " ".join(f"--annotations {path}" for path in found)
    return (f"hint: {cfg.raw} holds PATN annotation CSVs ({', '.join(p.name for p in found)}); `pgpig-data extract "
            f"{cfg.raw} {flags} --overwrite` takes their exact keypoints instead of the model's")


def _unmatched_annotations(cfg: ExtractConfig, dataset: str, names: set[str]) -> dict:
    """Annotated names that match none of ``names`` (the table's): counted and sampled, never silently dropped."""
    from pipeline.pose.annotations import AnnotationIndex

    index = AnnotationIndex(cfg.annotations, dataset)
    missing = sorted(set(index.rows) - names)
    return {"count": len(missing), "examples": missing[:10]}


class _Workers:
    """Where the tasks run: this process (``workers=0``, no ``scheduler``) or a Dask cluster (a LocalCluster of
    ``workers`` processes, or the one at ``scheduler``).

    Made while a child process lists the files: a thread starts the cluster and queues one ``warm_worker`` on each
    of its workers (this process: runs it), so that the listing, the model loads and the devices' first calls
    overlap. ``run`` waits for that thread, then runs the tasks; a task queued behind a worker's warm-up starts when
    it ends."""

    def __init__(self, cfg: ExtractConfig, workers: int, settings: dict):
        self.cfg, self.workers, self.settings = cfg, workers, settings
        self.local = _runs_here(cfg, workers)
        self.cluster = self.client = None
        self._warmed: list[dict] = []  # the warm-ups' results (in this process)
        self._warming: set = set()  # the warm-ups' futures still running on the cluster
        self._finished: list = []  # and those that finished
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self.start_wait = 0.0  # seconds ``run`` waited for the start (the cluster, or this process's warm-up)
        self._ahead: list[str] = []  # the first task's files (``plan``), for this process's source
        self._source = None  # this process's source, once made
        self._thread = threading.Thread(target=self._start, name="extract-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            if self.local:
                self._warmed.append(warm_worker(self.settings, self._made))
                return
            from distributed import Client

            from pipeline.local_cluster import local_cluster

            if self.cfg.scheduler is None:
                self.cluster = local_cluster(self.workers, self.cfg.threads, self.settings["torch_threads"])
            self.client = Client(self.cfg.scheduler or self.cluster)
            for address in self.client.scheduler_info()["workers"]:
                future = self.client.submit(warm_worker, self.settings, workers=[address], allow_other_workers=False,
                                            pure=False)
                with self._lock:
                    self._warming.add(future)
                future.add_done_callback(self._warm_done)
        except BaseException as exc:  # noqa: BLE001 - raised by run(), in the caller's thread
            self._error = exc

    def _warm_done(self, future) -> None:
        with self._lock:
            self._warming.discard(future)
            self._finished.append(future)

    def plan(self, tasks: list[PartitionTask]) -> None:
        """Give this process's source the first task's files (``look_ahead``) as soon as both exist, whichever
        comes first: the plan (after the listing) or the source (after the model's load)."""
        if not self.local or not tasks:
            return
        ahead = tasks[0].paths()
        with self._lock:
            self._ahead, source = ahead, self._source
        if source is not None:
            source.look_ahead(ahead)

    def _made(self, source) -> None:
        with self._lock:
            self._source, ahead = source, self._ahead
        if ahead:
            source.look_ahead(ahead)

    def _ready(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def run(self, tasks: list[PartitionTask], out: str, progress: bool, log) -> list[dict]:
        """The tasks' summaries, in completion order; a failed task raises a ``PipelineError`` naming its part."""
        summaries: list[dict] = []
        counts: Counter = Counter()
        bar = None

        def done(summary: dict) -> None:
            summaries.append(summary)
            counts.update(summary["statuses"])
            if bar is not None:
                bar.update(summary["rows"])
                bar.set_postfix(counts, refresh=False)

        waited = time.perf_counter()
        self._ready()
        self.start_wait = time.perf_counter() - waited
        if self.client is not None:
            log(f"dask: {len(self.client.scheduler_info()['workers'])} workers, dashboard {self.client.dashboard_link}")
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=sum(len(t.rows) for t in tasks), unit="img", desc="extract", dynamic_ncols=True)
        try:
            if self.client is None:
                for summary in _run_parts(tasks, out):
                    done(summary)
                return summaries
            from distributed import as_completed

            groups = task_groups(tasks, len(self.client.scheduler_info()["workers"]))
            futures = self.client.map(extract_parts, groups, out=out, pure=False)
            group_of = {f.key: g for f, g in zip(futures, groups, strict=True)}
            for future in as_completed(futures):
                try:
                    results = future.result()
                except (PipelineError, SchemaError):
                    raise  # named by the worker
                except Exception as exc:  # the worker was lost, or could not run it
                    raise _part_failed(group_of[future.key][0], exc) from exc
                for summary in results:
                    done(summary)
        finally:
            if bar is not None:
                bar.close()
        return summaries

    def warm_ups(self) -> list[dict]:
        """Each worker's ``warm_worker`` result (seconds, error): those that have finished, and whose worker still
        holds it. Their futures are released: a result that the client holds is computed again when its worker is
        lost, and a warm-up pinned to a lost worker would wait for it forever (and ``close`` with it)."""
        self._ready()
        with self._lock:
            finished, self._finished = self._finished, []
        results = list(self._warmed)
        for future in finished:
            if future.status == "finished":
                try:
                    results.append(future.result(timeout=10))
                except Exception:  # noqa: BLE001 - its worker went away meanwhile: the record goes without it
                    pass
            future.release()
        return results

    def close(self) -> None:
        """Stop the cluster this run started; an outside scheduler stays. Waits for the start and for warm-ups still
        running, as in this process (a run that stopped early, at a listing error, would otherwise leave each
        warming worker logging its cancelled task), at most a minute."""
        self._thread.join()
        if self.client is not None:
            from distributed import wait

            with self._lock:
                running = list(self._warming)
            try:
                wait(running, timeout=60)
            except TimeoutError:
                pass  # closing cancels it
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
