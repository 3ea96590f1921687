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
``workers=0`` runs the same tasks in this process (debugging, tiny sets). ``extract.json`` records the
run: it is written at the start (``complete: false``, so a resume can check it continues the same
settings) and again at the end with counts and speed.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.errors import PipelineError
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


def _library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("pgpig", "torch", "ultralytics", "dask", "distributed", "numpy", "opencv-python", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


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


def extract_partition(task: PartitionTask, out: str) -> dict:
    """Process one partition and write its part file; returns ``{"part", "rows", "statuses", "seconds"}``."""
    from pipeline.pose import cached_backend, to_openpose
    from pipeline.pose.annotations import annotation_row
    from schemas.keypoints import coco17_to_openpose18

    start = time.perf_counter()
    s = task.settings
    n = len(task.rows)
    status = ["skipped"] * n
    reason = [row["skip_reason"] for row in task.rows]
    width: list[int | None] = [None] * n
    height: list[int | None] = [None] * n
    digest: list[str | None] = [None] * n
    persons = np.zeros(n, np.int16)
    keypoints, scores = empty_keypoints(n)
    boxes = np.full((n, 5), np.nan, np.float32)
    annotations = None
    backend = None
    if s["backend"] == "annotations":
        annotations = _cached_annotations(tuple(s["annotations"]), s["dataset"])
    pending: list[tuple[int, np.ndarray, float]] = []  # (row, image, scale) waiting for the model

    def record(i: int, det, scale: float) -> None:
        det = det.scaled(scale)
        chosen, box, keypoints[i], scores[i] = to_openpose(det, s["kpt_threshold"])
        persons[i] = len(det)
        if chosen < 0:
            status[i], reason[i] = "no_person", "no person detected"
        else:
            boxes[i] = box

    def run_model() -> None:
        nonlocal backend
        if backend is None:
            backend = cached_backend("ultralytics", model=s["model"], imgsz=s["imgsz"], conf=s["conf"],
                                     device=_worker_device(s["device"]), batch_size=s["batch_size"])
        # ultralytics sets torch's threads to cores - 1 when it picks the CPU; restore this worker's share
        _set_torch_threads(s.get("torch_threads"))
        detections = backend.predict([image for _, image, _ in pending])
        for (i, _, scale), det in zip(pending, detections, strict=True):
            record(i, det, scale)
        pending.clear()

    if s["backend"] == "fast":
        # the backend reads, decodes and batches the files itself (reader processes, GPU decode, the network and the
        # person choice as CUDA graphs) and hands back whole batches: no per-image Python work on the model's side
        _set_torch_threads(s.get("torch_threads"))
        backend = cached_backend("fast", model=s["model"], imgsz=s["imgsz"], conf=s["conf"],
                                 device=_worker_device(s["device"]), batch_size=s["batch_size"],
                                 read_threads=s.get("decode_threads", 4), read_processes=s.get("read_processes", 0))
        todo = np.asarray([i for i, row in enumerate(task.rows) if row["skip_reason"] is None], dtype=np.int64)
        given = 0
        for batch in backend.extract_files([Path(task.raw) / task.rows[i]["image"] for i in todo], s["max_pixels"]):
            r = batch.read
            rows = todo[given:given + len(r)]
            given += len(r)
            for j, i in enumerate(rows.tolist()):
                width[i], height[i], digest[i] = r.width[j], r.height[j], r.digest[j]
                status[i], reason[i] = ("ok", None) if r.status[j] == "ok" else ("unreadable", r.reason[j])
            ok = np.asarray(r.status) == "ok"
            found = ok & (batch.persons > 0)
            persons[rows[ok]] = batch.persons[ok]
            for i in rows[ok & ~found].tolist():
                status[i], reason[i] = "no_person", "no person detected"
            keypoints[rows[found]], scores[rows[found]] = coco17_to_openpose18(
                batch.keypoints[found], batch.scores[found], s["kpt_threshold"])
            boxes[rows[found]] = batch.boxes[found]
        if given != len(todo):
            raise PipelineError(f"the fast backend returned {given} of {len(todo)} files")
    else:
        decoded_rows = _decode_ahead(task.rows, task.raw, s["max_pixels"], s.get("decode_threads", 4),
                                     window=2 * s["batch_size"])
        for i, (row, decoded) in enumerate(zip(task.rows, decoded_rows, strict=True)):
            if decoded is None:
                continue  # skipped by the listing, reason already set
            width[i], height[i], digest[i] = decoded.width, decoded.height, decoded.content_hash
            if decoded.status != "ok":
                status[i], reason[i] = "unreadable", decoded.reason
            elif annotations is not None:
                xy = annotations.lookup(row["patn_name"], decoded.width)
                if xy is None:
                    reason[i] = "not in the annotation CSV(s)"
                    continue
                box, keypoints[i], scores[i] = annotation_row(xy, decoded.width, decoded.height)
                persons[i] = int(box is not None)
                if box is None:
                    status[i], reason[i] = "no_person", "annotation has no visible keypoint"
                else:
                    status[i], reason[i] = "ok", None
                    boxes[i] = box
            else:
                status[i], reason[i] = "ok", None  # until the model finds nobody
                pending.append((i, decoded.image, decoded.scale))
                if len(pending) >= s["batch_size"]:
                    run_model()
        if pending:
            run_model()

    vis = (keypoints != -1).any(axis=-1)
    table = table_from_pydict("keypoints", {
        "image": [r["image"] for r in task.rows],
        "patn_name": [r["patn_name"] for r in task.rows],
        "dataset": [r["dataset"] for r in task.rows],
        "split": [r["split"] for r in task.rows],
        "identity": [r["identity"] for r in task.rows],
        "camera": [r["camera"] for r in task.rows],
        "view": [r["view"] for r in task.rows],
        "width": width,
        "height": height,
        "content_hash": digest,
        "status": status,
        "reason": reason,
        "n_persons": persons,
        "box": boxes,
        "keypoints": keypoints,
        "scores": scores,
        "n_visible": vis.sum(axis=1).astype(np.int8),
        "source": ["annotations" if annotations is not None else "yolo"] * n,
    })
    write_table(table, Path(out) / f"part-{task.part:05d}.parquet", "keypoints")
    return {"part": task.part, "rows": n, "statuses": dict(Counter(status)), "seconds": time.perf_counter() - start}


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


def _check_resume(cfg: ExtractConfig, settings: dict, raw: Path) -> None:
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
    changed = [k for k in _RESULT_SETTINGS if k in old and old[k] != settings[k]]
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


def default_workers() -> tuple[int, int]:
    """(workers, torch threads per worker): one per GPU, else one CPU worker per 4 cores.

    Below 8 cores the work runs in this process (0 workers): a single worker process only adds its start-up
    and, on 2 cores, ran at half the in-process speed (benchmarks/results/extract-cpu-2core.jsonl).
    """
    import torch

    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        return gpus, max(1, cores // gpus)
    workers = cores // 4
    if workers <= 1:
        return 0, cores
    return workers, max(1, cores // workers)


def run_extract(cfg: ExtractConfig, progress: bool = False, log=print) -> dict:
    """Run (or resume) an extraction; returns the record written to ``extract.json``."""
    from pipeline.datasets import list_images

    started = time.perf_counter()
    raw = Path(cfg.raw).resolve()
    if not raw.is_dir():
        raise PipelineError(f"{cfg.raw}: raw data folder not found")
    batch_size, partition_size = cfg.sizes()
    if partition_size < 1 or batch_size < 1:
        raise PipelineError("--partition-size and --batch-size must be at least 1")
    listed = list_images(raw, cfg.dataset, split_lists=cfg.split_lists, seed=cfg.seed, highres=cfg.highres)
    dataset = listed[0].dataset if listed else (cfg.dataset or "folder")
    settings = run_settings(cfg, dataset)
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
        "versions": _library_versions(),
        "listed": len(listed),
        "already_done": len(listed) - len(todo),
        "complete": False,
    }
    _write_run(cfg, record)
    log(f"{raw}: {len(listed)} files ({dataset}); {record['already_done']} already extracted, {len(todo)} to do")

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
    settings = {**settings, "torch_threads": torch_threads, "decode_threads": decode_threads,
                "read_processes": read_processes}
    first = max(parts, default=-1) + 1
    tasks = [
        PartitionTask(first + k, [asdict(r) for r in todo[i:i + partition_size]], str(raw), settings)
        for k, i in enumerate(range(0, len(todo), partition_size))
    ]
    summaries = _execute(tasks, cfg, workers, progress, log) if tasks else []
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
        task_seconds=round(sum(s["seconds"] for s in summaries), 3),  # inside tasks: no start-up, no listing
        # [rows, seconds] of every task, in completion order: a worker's first task also loads the model
        tasks=[[s["rows"], round(s["seconds"], 3)] for s in summaries],
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


def _execute(tasks: list[PartitionTask], cfg: ExtractConfig, workers: int, progress: bool, log) -> list[dict]:
    out = str(Path(cfg.out).resolve())
    summaries: list[dict] = []
    counts: Counter = Counter()
    bar = None

    def start_bar() -> None:
        nonlocal bar
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=sum(len(t.rows) for t in tasks), unit="img", desc="extract", dynamic_ncols=True)

    def done(summary: dict) -> None:
        summaries.append(summary)
        counts.update(summary["statuses"])
        if bar is not None:
            bar.update(summary["rows"])
            bar.set_postfix(counts, refresh=False)

    def failed(task: PartitionTask, exc: BaseException) -> PipelineError:
        # finished parts stay valid: the next run resumes after fixing the cause
        first = task.rows[0]["image"] if task.rows else "?"
        return PipelineError(f"part {task.part} (from {first}) failed: {type(exc).__name__}: {exc}; "
                             "parts written so far are kept, run again to resume")

    try:
        # one partition, or --workers 0: a cluster would only add its start-up
        if cfg.scheduler is None and (workers == 0 or len(tasks) == 1):
            start_bar()
            for task in tasks:
                try:
                    done(extract_partition(task, out))
                except (PipelineError, SchemaError):
                    raise
                except Exception as exc:
                    raise failed(task, exc) from exc
            return summaries
        from distributed import Client, as_completed

        cluster = None if cfg.scheduler else _local_cluster(workers, cfg.threads, tasks[0].settings["torch_threads"])
        client = Client(cfg.scheduler or cluster)
        try:
            log(f"dask: {len(client.scheduler_info()['workers'])} workers, dashboard {client.dashboard_link}")
            start_bar()
            futures = client.map(extract_partition, tasks, out=out, pure=False)
            task_of = {f.key: t for f, t in zip(futures, tasks, strict=True)}
            for future in as_completed(futures):
                try:
                    done(future.result())
                except Exception as exc:
                    raise failed(task_of[future.key], exc) from exc
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    finally:
        if bar is not None:
            bar.close()
    return summaries


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
