"""``pgpig-data extract``: 18-keypoint skeletons for every raw image, as a Dask graph over partitions.

The raw tree is listed (``pipeline.datasets``), images already present in finished parts are dropped
(resume), and the rest is cut into partitions. Each partition is one small, pure task: it reads and
decodes its files (``pipeline.decode``), runs the pose backend in batches on its worker's device (the
model loaded once per worker), picks the dominant person, converts COCO-17 to OpenPose-18 and writes one
``keypoints/part-NNNNN.parquet`` atomically, returning only a small summary. With the ``fast`` backend
(``pipeline.pose.fast``, the default when a GPU is visible) the backend itself reads the partition's files,
decodes JPEGs on the GPU and overlaps reading with the model; other files still go through ``pipeline.decode``.
Every listed file gets exactly one row with a status and, when not ``ok``, a reason; a bad file never stops the run.

By default a ``distributed.LocalCluster`` runs one single-threaded worker process per visible GPU, each
pinned to its GPU, or CPU workers when there is none; ``scheduler=ADDRESS`` uses an existing cluster;
``workers=0`` runs the same tasks in this process, where the fast backend's parts are one stream
(``extract_stream``: its reading runs on from part to part); on a cluster each Dask task streams a group of up to
8 of them (``task_groups``, ``extract_parts``). The workers start, load their model and warm it
up (``warm_worker``) on a thread while this process lists the files. ``extract.json`` records the run: it is
written at the start (``complete: false``, so a resume can check it continues the same settings) and again at
the end with counts and speed, and with where the time went (listing, warm-ups, tasks, part writes).
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.versions import library_versions
from schemas.errors import SchemaError
from schemas.files import atomic_write, sha256_file
from schemas.tables import (
    SCHEMA_VERSION,
    empty_keypoints,
    read_table,
    table_from_pydict,
    write_table,
)

BACKENDS = ("auto", "fast", "ultralytics")
PART_PATTERN = re.compile(r"^part-(\d{5,})\.parquet$")
RUN_FILE_VERSION = 1
# settings that change the keypoints: a resume must not mix parts made with other values
_RESULT_SETTINGS = ("backend", "model_sha256", "imgsz", "conf", "kpt_threshold", "annotations_sha256",
                    "dataset", "max_pixels")


@dataclass
class ExtractConfig:
    """Everything ``pgpig-data extract`` can be told; defaults are the CLI's."""

    raw: Path
    """Root of the raw data set (Market-1501, DeepFashion In-shop, or ``<identity>/<image>`` folders)."""
    out: Path = Path("keypoints")
    """Folder of the keypoint parts."""
    run_file: Path = Path("extract.json")
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
    """``fast`` (``pipeline.pose.fast``), ``ultralytics`` (``YOLO.predict``) or ``auto``: fast when a GPU is
    visible and ``device`` is not ``cpu``. Unused with ``annotations``."""
    annotations: tuple[Path, ...] = ()
    """PATN annotation CSVs: keypoints come from them and no model runs."""
    imgsz: int = 256
    conf: float = 0.25
    """Person detection confidence threshold."""
    kpt_threshold: float = 0.5
    """A keypoint is visible when its score is at least this."""
    device: str = "auto"
    batch_size: int | None = None
    """Images per model call; None → 256 with the ``fast`` backend (batched decode and post-processing want large
    batches), 32 with ``ultralytics``."""
    partition_size: int | None = None
    """Images per task and per part file; None → 4096 with ``fast`` (its reading and the model overlap within a
    task), 512 otherwise."""

    def sizes(self) -> tuple[int, int]:
        """``(batch_size, partition_size)`` with the backend's defaults filled in."""
        fast = self.backend == "fast"
        return (self.batch_size or (256 if fast else 32), self.partition_size or (4096 if fast else 512))
    workers: int | None = None
    """Worker processes of the local cluster; None → one per GPU, or CPU workers; 0 → in this process."""
    threads: int = 1
    """Threads per worker (Dask threads; torch gets the CPU cores divided between workers)."""
    read_processes: int | None = None
    """Fast backend: processes reading and hashing the files of each worker (``pipeline.pose.reading``); None →
    with a GPU the worker's cores less 2 (the GPU feeding threads), at most 8; without one 0 (threads)."""
    scheduler: str | None = None
    overwrite: bool = False
    max_pixels: int = 40_000_000
    """Larger images are decoded reduced (keypoints still in full-resolution pixels)."""

    @property
    def backend(self) -> str:
        """The backend this run uses, as recorded in extract.json: ``annotations``, ``fast`` or ``ultralytics``."""
        if self.annotations:
            return "annotations"
        if self.pose_backend not in BACKENDS:
            raise PipelineError(f"unknown pose backend {self.pose_backend!r}; choose one of: {', '.join(BACKENDS)}")
        if self.pose_backend != "auto":
            return self.pose_backend
        return "fast" if _gpu_visible(self) else "ultralytics"


def _gpu_visible(cfg: ExtractConfig) -> bool:
    """A GPU is visible and ``--device`` does not rule it out: ``auto`` picks the fast backend, which reads on
    processes."""
    import torch

    return cfg.device != "cpu" and torch.cuda.is_available()


@dataclass
class PartitionTask:
    """One task: a part number and the listed files it owns (small, picklable)."""

    part: int
    rows: list[dict]
    raw: str
    settings: dict = field(default_factory=dict)


def run_settings(cfg: ExtractConfig, dataset: str) -> dict:
    """The settings recorded in extract.json, including the fingerprints that resume compares."""
    backend = cfg.backend
    batch_size, partition_size = cfg.sizes()
    settings = {
        "backend": backend,
        "dataset": dataset,
        "imgsz": cfg.imgsz,
        "conf": cfg.conf,
        "kpt_threshold": cfg.kpt_threshold,
        "batch_size": batch_size,
        "device": cfg.device,
        "partition_size": partition_size,
        "max_pixels": cfg.max_pixels,
        "model": None,
        "model_sha256": None,
        "annotations": [str(p) for p in cfg.annotations],
        "annotations_sha256": [sha256_file(p) for p in cfg.annotations] if cfg.annotations else None,
    }
    if backend in ("fast", "ultralytics"):
        from pipeline.pose import default_model_path

        model = Path(cfg.model) if cfg.model else default_model_path()
        if not model.is_file():
            raise PipelineError(f"{model}: pose model weights not found (--model)")
        settings["model"] = str(model.resolve())
        settings["model_sha256"] = sha256_file(model)
    else:
        settings.update(imgsz=None, conf=None, kpt_threshold=None)
    return settings


# ---------------------------------------------------------------- the task (runs on a worker)


def _worker_device(device: str) -> str:
    """Pin each Dask worker to its own GPU: a worker whose name ends in ``k`` gets ``cuda:k % n``.

    LocalCluster names its workers 0, 1, ...; dask-jobqueue with several processes per job names them
    ``<job>-<k>``; a worker started by hand under ``CUDA_VISIBLE_DEVICES=i`` sees one GPU, so any name maps it to
    that GPU (``workflows/cluster/``). A name without a trailing number, or no worker at all, gets ``cuda:0``."""
    if device != "auto":
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    try:
        from distributed import get_worker

        match = re.search(r"(\d+)$", str(get_worker().name))
        index = int(match.group(1)) if match else 0
    except (ImportError, ValueError):
        index = 0
    return f"cuda:{index % torch.cuda.device_count()}"


def _set_torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _decode_ahead(rows: list[dict], raw: str, max_pixels: int, threads: int, window: int):
    """Decoded files of ``rows`` in order (None for skipped rows), read by a thread pool up to ``window``
    files ahead, so decoding overlaps the model (OpenCV and hashlib release the GIL)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.decode import decode_image

    def decode(row: dict):
        if row["skip_reason"] is not None:
            return None
        return decode_image(Path(raw) / row["image"], max_pixels=max_pixels)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        ahead: deque = deque()
        upcoming = iter(rows)
        for row in upcoming:
            ahead.append(pool.submit(decode, row))
            if len(ahead) >= window:
                break
        while ahead:
            result = ahead.popleft().result()
            for row in upcoming:
                ahead.append(pool.submit(decode, row))
                break
            yield result


def _task_backend(s: dict):
    """This process's pose backend for the settings ``s`` of a task, loaded on first use (``cached_backend``): the
    tasks and the warm-up get the same one."""
    from pipeline.pose import cached_backend

    # ultralytics sets torch's threads to cores - 1 when it picks the CPU (at its first predict): each caller sets
    # this worker's share again after such a call
    _set_torch_threads(s.get("torch_threads"))
    options = {"model": s["model"], "imgsz": s["imgsz"], "conf": s["conf"], "device": _worker_device(s["device"]),
               "batch_size": s["batch_size"]}
    if s["backend"] == "fast":
        options.update(read_threads=s.get("decode_threads", 4), read_processes=s.get("read_processes", 0))
    return cached_backend(s["backend"], **options)


def warm_worker(settings: dict) -> dict:
    """Load this process's backend for ``settings`` and make its first calls (``PoseBackend.warm_up``), so that the
    first partition does not wait for them: run on every worker while the driver lists the files.

    Returns ``{"seconds", "error"}`` and never raises: a backend that cannot load fails the first task that needs
    it, which names its part (the run's error), and a warm-up that fails otherwise costs only its time."""
    start = time.perf_counter()
    error = None
    if settings["backend"] in ("fast", "ultralytics"):
        try:
            _task_backend(settings).warm_up()
            _set_torch_threads(settings.get("torch_threads"))
        except Exception as exc:  # noqa: BLE001 - reported in the run record; the tasks raise what matters
            error = f"{type(exc).__name__}: {exc}"
    return {"seconds": round(time.perf_counter() - start, 3), "error": error}


class _Part:
    """The rows of one part as they are filled: every listed file of its task, a skipped one already final."""

    def __init__(self, task: PartitionTask):
        self.task, n = task, len(task.rows)
        self.status = ["skipped"] * n
        self.reason = [row["skip_reason"] for row in task.rows]
        self.width: list[int | None] = [None] * n
        self.height: list[int | None] = [None] * n
        self.digest: list[str | None] = [None] * n
        self.persons = np.zeros(n, np.int16)
        self.keypoints, self.scores = empty_keypoints(n)
        self.boxes = np.full((n, 5), np.nan, np.float32)
        self.source = "yolo"
        self.todo = np.asarray([i for i, row in enumerate(task.rows) if row["skip_reason"] is None], dtype=np.int64)
        """The rows a model reads, in order."""

    def paths(self) -> list[str]:
        """The files of ``todo``: plain strings, which are all the reader needs (a ``Path`` each costs 10x more)."""
        raw, rows = self.task.raw, self.task.rows
        return [os.path.join(raw, rows[i]["image"]) for i in self.todo.tolist()]

    def take(self, batch, lo: int, hi: int, rows: np.ndarray) -> None:
        """Files ``lo:hi`` of a fast backend's ``PersonBatch`` are this part's ``rows``."""
        from schemas.keypoints import coco17_to_openpose18

        r = batch.read
        for j, i in zip(range(lo, hi), rows.tolist(), strict=True):
            self.width[i], self.height[i], self.digest[i] = r.width[j], r.height[j], r.digest[j]
            self.status[i], self.reason[i] = ("ok", None) if r.status[j] == "ok" else ("unreadable", r.reason[j])
        ok = np.asarray(r.status[lo:hi]) == "ok"
        persons = batch.persons[lo:hi]
        found = ok & (persons > 0)
        self.persons[rows[ok]] = persons[ok]
        for i in rows[ok & ~found].tolist():
            self.status[i], self.reason[i] = "no_person", "no person detected"
        self.keypoints[rows[found]], self.scores[rows[found]] = coco17_to_openpose18(
            batch.keypoints[lo:hi][found], batch.scores[lo:hi][found], self.task.settings["kpt_threshold"])
        self.boxes[rows[found]] = batch.boxes[lo:hi][found]

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
        write_table(table, Path(out) / f"part-{self.task.part:05d}.parquet", "keypoints")
        return dict(Counter(self.status)), time.perf_counter() - start


def extract_partition(task: PartitionTask, out: str) -> dict:
    """Process one partition and write its part file; returns ``{"part", "rows", "statuses", "seconds",
    "backend_seconds", "write_seconds"}`` (the last two: getting the backend, which loads the model unless a
    warm-up or an earlier task did, and building and writing the part file). The fast backend's partition is a
    stream of one (``extract_stream``)."""
    from pipeline.pose import to_openpose
    from pipeline.pose.annotations import annotation_row

    if task.settings["backend"] == "fast":
        (summary,) = extract_stream([task], out)
        return summary
    start = time.perf_counter()
    s = task.settings
    part = _Part(task)
    annotations = None
    backend = None
    backend_seconds = 0.0
    if s["backend"] == "annotations":
        annotations = _cached_annotations(tuple(s["annotations"]), s["dataset"])
        part.source = "annotations"
    pending: list[tuple[int, np.ndarray, float]] = []  # (row, image, scale) waiting for the model

    def record(i: int, det, scale: float) -> None:
        det = det.scaled(scale)
        chosen, box, part.keypoints[i], part.scores[i] = to_openpose(det, s["kpt_threshold"])
        part.persons[i] = len(det)
        if chosen < 0:
            part.status[i], part.reason[i] = "no_person", "no person detected"
        else:
            part.boxes[i] = box

    def get_backend():
        nonlocal backend, backend_seconds
        if backend is None:
            mark = time.perf_counter()
            backend = _task_backend(s)
            backend_seconds = time.perf_counter() - mark
        return backend

    def run_model() -> None:
        model = get_backend()
        _set_torch_threads(s.get("torch_threads"))  # see _task_backend
        detections = model.predict([image for _, image, _ in pending])
        for (i, _, scale), det in zip(pending, detections, strict=True):
            record(i, det, scale)
        pending.clear()

    decoded_rows = _decode_ahead(task.rows, task.raw, s["max_pixels"], s.get("decode_threads", 4),
                                 window=2 * s["batch_size"])
    for i, (row, decoded) in enumerate(zip(task.rows, decoded_rows, strict=True)):
        if decoded is None:
            continue  # skipped by the listing, reason already set
        part.width[i], part.height[i], part.digest[i] = decoded.width, decoded.height, decoded.content_hash
        if decoded.status != "ok":
            part.status[i], part.reason[i] = "unreadable", decoded.reason
        elif annotations is not None:
            xy = annotations.lookup(row["patn_name"], decoded.width)
            if xy is None:
                part.reason[i] = "not in the annotation CSV(s)"
                continue
            box, part.keypoints[i], part.scores[i] = annotation_row(xy, decoded.width, decoded.height)
            part.persons[i] = int(box is not None)
            if box is None:
                part.status[i], part.reason[i] = "no_person", "annotation has no visible keypoint"
            else:
                part.status[i], part.reason[i] = "ok", None
                part.boxes[i] = box
        else:
            part.status[i], part.reason[i] = "ok", None  # until the model finds nobody
            pending.append((i, decoded.image, decoded.scale))
            if len(pending) >= s["batch_size"]:
                run_model()
    if pending:
        run_model()
    statuses, write_seconds = part.write(out)
    return {"part": task.part, "rows": len(task.rows), "statuses": statuses, "seconds": time.perf_counter() - start,
            "backend_seconds": backend_seconds, "write_seconds": write_seconds}


def extract_stream(tasks: list[PartitionTask], out: str) -> Iterator[dict]:
    """The fast backend's partitions in this process as one stream: a single ``extract_files`` over the files of
    every task, each part written as soon as its last file is back; yields ``extract_partition``'s summaries, in
    order (a part's seconds: from the previous part's end to its own; the first part's also has
    ``first_batch_seconds``). The backend reads, decodes and batches the files itself (reader processes, GPU decode,
    the network and the person choice as CUDA graphs) and hands back whole batches, and its reading runs on from one
    part into the next, where a call per part would empty and refill that pipeline at every part. However the parts
    are grouped into streams, the files and rows are the same; only the batches differ where a part's size is no
    multiple of the batch size, which with CUDA graphs moves keypoints by fp16 noise (``PersonGraphs``)."""
    parts = [_Part(task) for task in tasks]
    start = time.perf_counter()
    backend = _task_backend(tasks[0].settings)
    backend_seconds = time.perf_counter() - start
    ends = np.cumsum([len(p.todo) for p in parts])  # files read when each part is complete
    rows = np.concatenate([p.todo for p in parts])
    done = read = 0  # parts written, files handed back
    first_batch = None

    def finish_complete() -> Iterator[dict]:
        nonlocal done, start
        while done < len(parts) and read >= ends[done]:
            statuses, write_seconds = parts[done].write(out)
            now = time.perf_counter()
            yield {"part": parts[done].task.part, "rows": len(parts[done].task.rows), "statuses": statuses,
                   "seconds": now - start, "backend_seconds": backend_seconds if done == 0 else 0.0,
                   "write_seconds": write_seconds, "first_batch_seconds": first_batch if done == 0 else None}
            done, start = done + 1, now

    yield from finish_complete()  # leading parts with no file to read
    paths = [path for p in parts for path in p.paths()]
    for batch in backend.extract_files(paths, tasks[0].settings["max_pixels"]):
        if first_batch is None:
            first_batch = time.perf_counter() - start
        n, lo = len(batch.read), 0
        while lo < n:  # this batch's files, part by part
            k = int(np.searchsorted(ends, read + lo, side="right"))
            hi = min(n, int(ends[k]) - read)
            parts[k].take(batch, lo, hi, rows[read + lo:read + hi])
            lo = hi
        read += n
        yield from finish_complete()
    if read != len(rows):
        raise PipelineError(f"the fast backend returned {read} of {len(rows)} files")


def _part_failed(task: PartitionTask, exc: BaseException) -> PipelineError:
    # finished parts stay valid: the next run resumes after fixing the cause
    first = task.rows[0]["image"] if task.rows else "?"
    return PipelineError(f"part {task.part} (from {first}) failed: {type(exc).__name__}: {exc}; "
                         "parts written so far are kept, run again to resume")


def _run_parts(tasks: list[PartitionTask], out: str) -> Iterator[dict]:
    """The summaries of ``tasks`` run in this process, in order: the fast backend's parts as one stream
    (``extract_stream``), the others one ``extract_partition`` at a time. A failure raises a ``PipelineError`` that
    names the first part not written."""
    if tasks[0].settings["backend"] == "fast":
        stream = extract_stream(tasks, out)
    else:
        stream = (extract_partition(task, out) for task in tasks)
    written = 0
    try:
        for summary in stream:
            written += 1
            yield summary
    except (PipelineError, SchemaError):
        raise
    except Exception as exc:
        raise _part_failed(tasks[written], exc) from exc


def extract_parts(tasks: list[PartitionTask], out: str) -> list[dict]:
    """Several partitions as one Dask task: with the fast backend a worker streams a group of parts, as this process
    does with all of them (``_run_parts``), instead of refilling its pipeline at every part."""
    return list(_run_parts(tasks, out))


def task_groups(tasks: list[PartitionTask], workers: int) -> list[list[PartitionTask]]:
    """The Dask tasks of a run: the fast backend's parts in groups of up to 8, at least 4 groups per worker where
    there are enough parts (so that the last ones still spread over the workers); other backends' one by one."""
    if not tasks or tasks[0].settings["backend"] != "fast":
        return [[task] for task in tasks]
    size = max(1, min(8, len(tasks) // (4 * max(1, workers))))
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


_ANNOTATIONS: dict[tuple, object] = {}


def _cached_annotations(paths: tuple[str, ...], dataset: str):
    from pipeline.pose.annotations import AnnotationIndex

    key = (paths, dataset)
    if key not in _ANNOTATIONS:
        _ANNOTATIONS[key] = AnnotationIndex(list(paths), dataset)
    return _ANNOTATIONS[key]


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


def read_keypoints(out: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """The keypoints table of a run folder (all parts, in part order; only ``columns`` when given)."""
    out = Path(out)
    paths = sorted(p for p in out.glob("part-*.parquet") if PART_PATTERN.match(p.name))
    if not paths:
        raise PipelineError(f"{out}: no keypoint parts; run `pgpig-data extract RAW` first")
    return pa.concat_tables([read_table(p, "keypoints", columns=columns) for p in paths])


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
    old = previous.get("settings", {})
    changed = [k for k in _RESULT_SETTINGS if k in old and k not in unknown and old[k] != settings[k]]
    if changed:
        hint = f" (it was made with --backend {old['backend']})" if changed == ["backend"] else ""
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


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _row_dict(row) -> dict:
    """A listed ``RawImage`` as a task's row: its fields, shallow (``dataclasses.asdict`` deep-copies every value:
    seconds of the driver's time for 200,000 files)."""
    return {name: getattr(row, name) for name in _field_names(type(row))}


def default_workers() -> tuple[int, int]:
    """(workers, torch threads per worker): one per GPU when there are several, else one CPU worker per 4 cores.

    With one GPU, or below 8 cores without one, the work runs in this process (0 workers): a single worker
    process only adds its start-up and the hand-over of every task. On one H200 this process ran 200,000 JPEGs
    1.3x faster end to end than one worker (``benchmarks/results/extract-h200.jsonl``, extract_cli lines), its
    parts streaming at 13-15k img/s against 8-10k; on 2 CPU cores one worker ran at half the in-process speed
    (``extract-cpu-2core.jsonl``).
    """
    import torch

    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        return (gpus if gpus > 1 else 0), max(1, cores // gpus)
    workers = cores // 4
    if workers <= 1:
        return 0, cores
    return workers, max(1, cores // workers)


def run_extract(cfg: ExtractConfig, progress: bool = False, log=print) -> dict:
    """Run (or resume) an extraction; returns the record written to ``extract.json``.

    The workers start, and each loads its model and warms it up (``warm_worker``), on a thread while this one
    lists the files and plans the partitions: a worker's start-up (seconds: torch, the model, the device's first
    calls) no longer comes after the listing."""
    from pipeline.datasets import list_images

    started = time.perf_counter()
    raw = Path(cfg.raw).resolve()
    if not raw.is_dir():
        raise PipelineError(f"{cfg.raw}: raw data folder not found")
    batch_size, partition_size = cfg.sizes()
    if partition_size < 1 or batch_size < 1:
        raise PipelineError("--partition-size and --batch-size must be at least 1")
    settings = run_settings(cfg, cfg.dataset)  # a detected dataset's name is filled in after the listing
    if not cfg.overwrite:  # before anything starts: a resume with other settings fails at once
        _check_resume(cfg, settings, raw, unknown=() if cfg.dataset else ("dataset",))
    workers, torch_threads = default_workers()
    if cfg.workers is not None:
        workers = cfg.workers
        torch_threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    # decoding threads per worker: the cores left to each worker, at least 2 so reading overlaps the model
    cores = (os.cpu_count() or 1) // max(1, workers)
    decode_threads = max(2, min(8, cores))
    read_processes = cfg.read_processes
    if read_processes is None:
        read_processes = min(8, max(0, cores - 2)) if settings["backend"] == "fast" and _gpu_visible(cfg) else 0
    worker_settings = {"torch_threads": torch_threads, "decode_threads": decode_threads,
                       "read_processes": read_processes}
    pool = _Workers(cfg, workers, {**settings, **worker_settings})
    try:
        listed = list_images(raw, cfg.dataset, split_lists=cfg.split_lists, seed=cfg.seed, highres=cfg.highres)
        dataset = listed[0].dataset if listed else (cfg.dataset or "folder")
        settings["dataset"] = dataset
        if cfg.overwrite:
            _clear(cfg)
        else:
            _check_resume(cfg, settings, raw)
        cfg.out.mkdir(parents=True, exist_ok=True)
        parts, done = finished_parts(cfg.out)
        todo = [r for r in listed if r.image not in done]
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
        log(f"{raw}: {len(listed)} files ({dataset}); {record['already_done']} already extracted, "
            f"{len(todo)} to do")
        task_settings = {**settings, **worker_settings}
        first = max(parts, default=-1) + 1
        tasks = [
            PartitionTask(first + k, [_row_dict(r) for r in todo[i:i + partition_size]], str(raw), task_settings)
            for k, i in enumerate(range(0, len(todo), partition_size))
        ]
        listing_seconds = time.perf_counter() - started
        summaries = pool.run(tasks, str(Path(cfg.out).resolve()), progress, log) if tasks else []
        warm_ups = pool.warm_ups()
        for warm in warm_ups:
            if warm["error"]:
                log(f"warning: a worker's warm-up failed ({warm['error']}); its first task loaded the model instead")
    finally:
        pool.close()
    seconds = time.perf_counter() - started
    processed = sum(s["rows"] for s in summaries)
    # one read of the finished table, two small columns, for the counts and the unmatched annotations
    table = read_keypoints(cfg.out, ["status", "patn_name"]) if listed else None
    statuses = dict(sorted(Counter(table["status"].to_pylist()).items())) if table is not None else {}
    rows = table.num_rows if table is not None else 0
    record.update(
        complete=True,
        processed=processed,
        rows=rows,
        statuses=statuses,
        seconds=round(seconds, 3),
        # listing the files, checking the finished parts and planning the tasks (the workers start meanwhile)
        listing_seconds=round(listing_seconds, 3),
        task_seconds=round(sum(s["seconds"] for s in summaries), 3),  # inside tasks: no start-up, no listing
        # [rows, seconds] of every task, in completion order: a worker's first task also loads the model unless
        # its warm-up had
        tasks=[[s["rows"], round(s["seconds"], 3)] for s in summaries],
        # of task_seconds: getting the backend (a model load when not warmed up) and writing the part files
        task_backend_seconds=round(sum(s.get("backend_seconds", 0.0) for s in summaries), 3),
        task_write_seconds=round(sum(s.get("write_seconds", 0.0) for s in summaries), 3),
        # the fast backend: from the first task's start to its first batch back (reader and device pipeline filled)
        first_batch_seconds=summaries[0].get("first_batch_seconds") if summaries else None,
        warm_ups=warm_ups,
        images_per_second=round(processed / seconds, 2) if seconds > 0 else None,
        workers=workers if cfg.scheduler is None else None,
        read_processes=read_processes if settings["backend"] == "fast" else None,
        scheduler=cfg.scheduler,
    )
    if cfg.annotations:
        names = set(table["patn_name"].to_pylist()) if table is not None else set()
        record["unmatched_annotations"] = _unmatched_annotations(cfg, dataset, names)
    _write_run(cfg, record)
    return record


def _unmatched_annotations(cfg: ExtractConfig, dataset: str, names: set[str]) -> dict:
    """Annotated names that match none of ``names`` (the table's): counted and sampled, never silently dropped."""
    index = _cached_annotations(tuple(str(p) for p in cfg.annotations), dataset)
    missing = sorted(set(index.rows) - names)
    return {"count": len(missing), "examples": missing[:10]}


def _local_cluster(workers: int, threads_per_worker: int, torch_threads: int):
    """A LocalCluster of single-process workers with an environment fit for running a model."""
    import dask
    from distributed import LocalCluster

    # Dask starts workers with OMP_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_=65536; for a model the first
    # starves torch and the second hands every large buffer back to the OS after each call: together they
    # halved CPU inference in a worker. Give each worker its share of the cores and glibc's default trimming.
    threads = str(torch_threads)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    # non-daemonic workers, so that the fast backend's reader processes (pipeline.pose.reading) can start
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}, "distributed.worker.daemon": False}):
        return LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                            dashboard_address=":0", env=env)


class _Workers:
    """Where the tasks run: this process (``workers=0``, no ``scheduler``) or a Dask cluster (a LocalCluster of
    ``workers`` processes, or the one at ``scheduler``).

    Made before the listing: a thread starts the cluster and queues one ``warm_worker`` on each of its workers
    (this process: runs it), so that the listing, the model loads and the devices' first calls overlap. ``run``
    waits for that thread, then runs the tasks; a task queued behind a worker's warm-up starts when it ends."""

    def __init__(self, cfg: ExtractConfig, workers: int, settings: dict):
        self.cfg, self.workers, self.settings = cfg, workers, settings
        self.local = cfg.scheduler is None and workers == 0
        self.cluster = self.client = None
        self._warmed: list[dict] = []  # the warm-ups' results (in this process)
        self._warming: set = set()  # the warm-ups' futures still running on the cluster
        self._finished: list = []  # and those that finished
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name="extract-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            if self.local:
                self._warmed.append(warm_worker(self.settings))
                return
            from distributed import Client

            if self.cfg.scheduler is None:
                self.cluster = _local_cluster(self.workers, self.cfg.threads, self.settings["torch_threads"])
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

        self._ready()
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


def export_annotations(keypoints_dir: str | os.PathLike, out_csv: str | os.PathLike, split: str | None = None,
                       patn_crop: bool = False) -> int:
    """Write the ``ok`` rows of a keypoints table as a PATN annotation CSV; returns the rows written.

    Names are the PATN flat names (the file name when none). With ``patn_crop`` DeepFashion keypoints
    move into PATN's 256×176 crop frame, hiding those outside it.
    """
    from schemas.patn import deepfashion_margin, to_patn_frame, write_annotations
    from schemas.tables import keypoints_to_numpy

    table = read_keypoints(keypoints_dir)
    status = np.asarray(table["status"].to_pylist())
    keep = status == "ok"
    if split is not None:
        keep &= np.asarray(table["split"].to_pylist(), dtype=object) == split
    idx = np.flatnonzero(keep)
    xy = keypoints_to_numpy(table["keypoints"])[idx]
    patn_names, images = table["patn_name"].to_pylist(), table["image"].to_pylist()
    names = [patn_names[i] or Path(images[i]).name for i in idx]
    if patn_crop:
        widths = table["width"].to_numpy(zero_copy_only=False)[idx]
        datasets = table["dataset"].to_pylist()
        for k, i in enumerate(idx):
            if datasets[i] == "deepfashion":
                margin = deepfashion_margin(int(widths[k]))
                xy[k] = to_patn_frame(xy[k], margin, width=int(widths[k]) - 2 * margin)
    write_annotations(out_csv, names, xy)
    return len(names)
