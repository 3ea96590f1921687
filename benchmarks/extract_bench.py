"""Extraction speed and keypoint agreement: `pgpig-data extract` timed from the shell vs a `YOLO.predict` loop.

    python benchmarks/extract_bench.py [--backend fast] [--images 2000] [--sizes uniform --size 256x176 | --sizes mixed]
        [--imgsz 256] [--device auto] [--predict-batch 64] [--agreement-images 2000] [--extract-args "--threads 2"]

The files are crops, flips and rescales of the photos that ship with ultralytics, as JPEGs in ``<identity>/<image>``
folders: all at ``--size`` (``uniform``) or a crawl of many sizes, qualities and a few large and person-free photos
(``mixed``). The pipeline runs as ``python -m pipeline.cli extract`` in a fresh process; the baseline in the same run
is a plain `YOLO.predict` loop on lists of ``--predict-batch`` paths (the first ``--baseline-images``). Keypoints are
compared with `YOLO.predict` called on one image at a time (a batch of mixed shapes is letterboxed to one square).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# (height, width) of the mixed crawl: portrait and landscape, odd sizes among them
MIXED_SIZES = [(128, 64), (256, 176), (256, 256), (240, 320), (320, 240), (333, 500), (480, 360), (512, 384),
               (480, 640), (575, 431), (640, 480), (768, 1024), (720, 1280), (1280, 720)]
LARGE_SIZES = [(1080, 1920), (1920, 1080), (1800, 2400), (3000, 4000), (4000, 3000)]  # 2 to 12 MP
LARGE_FRACTION, PERSON_FREE_FRACTION, PROGRESSIVE_FRACTION = 0.03, 0.05, 0.1
QUALITIES = [60, 75, 85, 90, 95]
SKY_BAND = 220  # rows of bus.jpg above the bus and the people: building facade only
FOLDERS = 100


class JpegJob(NamedTuple):
    """One file to write: a crop ``box`` (y0, x0, height, width) of a source (0 bus, 1 zidane, 2 bus's facade band,
    -1 a gradient texture of ``seed``) resized to ``size`` (height, width)."""

    index: int
    source: int
    box: tuple[int, int, int, int]
    flip: bool
    size: tuple[int, int]
    quality: int = 90
    progressive: bool = False
    seed: int = 0


def shipped_photos() -> list[np.ndarray]:
    """bus.jpg (1080x810), zidane.jpg (720x1280) and bus.jpg's facade band, BGR; found without importing ultralytics
    (seconds), so that extract_startup.py counts that import where the backend pays it."""
    import importlib.util

    assets = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0]) / "assets"
    bus, zidane = (cv2.imread(str(assets / name)) for name in ("bus.jpg", "zidane.jpg"))
    return [bus, zidane, bus[:SKY_BAND]]


def pyramid(image: np.ndarray, levels: int = 4) -> list[np.ndarray]:
    """``image`` at scales 1, 1/2, 1/4, ...: a crop is shrunk from the smallest level still larger than its output,
    so that the resize reads a few times the output's pixels instead of the whole photo."""
    out = [image]
    for _ in range(levels - 1):
        out.append(cv2.resize(out[-1], (out[-1].shape[1] // 2, out[-1].shape[0] // 2), interpolation=cv2.INTER_AREA))
    return out


def render(job: JpegJob, pyramids: list[list[np.ndarray]]) -> np.ndarray:
    """The job's image, (H, W, 3) uint8 BGR."""
    h, w = job.size
    if job.source < 0:
        return gradient_texture(job.size, job.seed)
    y0, x0, ch, cw = job.box
    level = 0
    while level + 1 < len(pyramids[job.source]) and ch >> (level + 1) >= h and cw >> (level + 1) >= w:
        level += 1
    crop = pyramids[job.source][level][y0 >> level:(y0 + ch) >> level, x0 >> level:(x0 + cw) >> level]
    if job.flip:
        crop = crop[:, ::-1]
    # the level leaves less than a halving, where bilinear is 3x faster than INTER_AREA and barely aliases
    halved = crop.shape[0] >= 2 * h and crop.shape[1] >= 2 * w
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if halved else cv2.INTER_LINEAR)


def gradient_texture(size: tuple[int, int], seed: int) -> np.ndarray:
    """A person-free image: a two-colour linear gradient under smooth noise, (H, W, 3) uint8 BGR."""
    rng = np.random.default_rng(seed)
    h, w = size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, np.pi)
    ramp = np.cos(angle) * np.linspace(0, 1, w)[None, :] + np.sin(angle) * np.linspace(0, 1, h)[:, None]
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    noise = cv2.resize(rng.normal(0, 25, (8, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(c0 + (c1 - c0) * ramp[..., None] + noise, 0, 255).astype(np.uint8)


def write_jobs(root: Path, jobs: list[JpegJob], photos: list[np.ndarray]) -> list[Path]:
    """Each job as ``root/<index % 100>/<index>.jpg``, on a thread pool (OpenCV and file writes release the GIL);
    the files depend on the jobs only, not on the thread count. The paths in the jobs' order."""
    pyramids = [pyramid(p) for p in photos]
    paths = [root / f"{job.index % FOLDERS:04d}" / f"{job.index:07d}.jpg" for job in jobs]
    for folder in sorted({p.parent for p in paths}):
        folder.mkdir(parents=True, exist_ok=True)

    def write(chunk: list[int]) -> None:
        for i in chunk:
            job = jobs[i]
            params = [cv2.IMWRITE_JPEG_QUALITY, job.quality, cv2.IMWRITE_JPEG_PROGRESSIVE, int(job.progressive)]
            _, data = cv2.imencode(".jpg", render(job, pyramids), params)
            paths[i].write_bytes(data.tobytes())

    # the large photos first, so that no thread is left with one at the end
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].size[0] * jobs[i].size[1])
    chunks = [order[s:s + 64] for s in range(0, len(jobs), 64)]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the pool's threads are the parallelism; OpenCV's own would oversubscribe the cores
    try:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(write, chunks))
    finally:
        cv2.setNumThreads(threads)
    return paths


def crop_box(rng: np.random.Generator, photo: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A random crop of ``photo`` near the aspect ratio of ``size``: 50-100% of the largest that fits."""
    ph, pw = photo.shape[:2]
    aspect = size[1] / size[0] * rng.uniform(0.9, 1.1)
    ch, cw = (ph, ph * aspect) if pw / ph > aspect else (pw / aspect, pw)
    scale = rng.uniform(0.5, 1.0)
    ch, cw = max(8, int(ch * scale)), max(8, int(cw * scale))
    return int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1)), ch, cw


def make_images(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` JPEGs (quality 90) at ``size``: crops, flips and rescales of the shipped photos, in file order."""
    photos = shipped_photos()
    rng = np.random.default_rng(seed)
    jobs = [JpegJob(i, i % 2, crop_box(rng, photos[i % 2], size), bool(rng.random() < 0.5), size) for i in range(n)]
    return write_jobs(root, jobs, photos)


def mixed_jobs(n: int, seed: int, photos: list[np.ndarray]) -> list[JpegJob]:
    """A crawl of ``n`` files: sizes drawn from ``MIXED_SIZES`` (``LARGE_SIZES`` for a few), qualities from
    ``QUALITIES``, some progressive; ``PERSON_FREE_FRACTION`` of them crops of bus.jpg's facade or gradients."""
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(n):
        large, person_free = rng.random() < LARGE_FRACTION, rng.random() < PERSON_FREE_FRACTION
        sizes = LARGE_SIZES if large else MIXED_SIZES
        size = sizes[int(rng.integers(len(sizes)))]
        source = (2 if rng.random() < 0.5 else -1) if person_free else int(rng.integers(2))
        box = crop_box(rng, photos[source], size) if source >= 0 else (0, 0, 0, 0)
        flip, quality = bool(rng.random() < 0.5), QUALITIES[int(rng.integers(len(QUALITIES)))]
        jobs.append(JpegJob(i, source, box, flip, size, quality, bool(rng.random() < PROGRESSIVE_FRACTION),
                            int(rng.integers(2**31))))
    return jobs


def make_files(root: Path, sizes: str, n: int, size: tuple[int, int], seed: int = 0, sync: bool = True
               ) -> tuple[list[Path], dict | None, set[Path]]:
    """The bench's ``n`` files under ``root``: JPEGs at ``size`` (``sizes`` "uniform") or the crawl of many sizes
    ("mixed"). Returns the paths in file order, the crawl's summary (None when uniform) and the person-free paths.

    The files are flushed to disk before this returns (``os.sync``; not with ``sync=False``), as a user's raw
    folder, written long before, is: otherwise a run's first fsync (its first part file) may wait for the
    write-back of all of them."""
    if sizes == "uniform":
        paths, summary, person_free = make_images(root, n, size, seed), None, set()
    else:
        photos = shipped_photos()
        jobs = mixed_jobs(n, seed, photos)
        paths = write_jobs(root, jobs, photos)
        summary = crawl_summary(jobs)
        person_free = {paths[k] for k, j in enumerate(jobs) if j.source not in (0, 1)}
    if sync:
        os.sync()
    return paths, summary, person_free


def crawl_summary(jobs: list[JpegJob]) -> dict:
    """Which sizes (``HxW``: files, by pixels), qualities and kinds of file the crawl holds."""
    sizes = Counter(j.size for j in jobs)
    return {"sizes": {f"{h}x{w}": sizes[h, w] for h, w in sorted(sizes, key=lambda s: (s[0] * s[1], s))},
            "megapixels_mean": round(float(np.mean([h * w / 1e6 for h, w in (j.size for j in jobs)])), 3),
            "qualities": dict(sorted(Counter(j.quality for j in jobs).items())),
            "progressive": sum(j.progressive for j in jobs),
            "person_free": sum(j.source not in (0, 1) for j in jobs)}


def shell_extract(raw: Path, work: Path, options: list[str], tree: Path = ROOT) -> tuple[float, dict]:
    """``python -m pipeline.cli extract RAW --dataset folder OPTIONS`` with the package of ``tree``, in a fresh process
    run from ``work``: (seconds from its start to its exit, its run record)."""
    out, run_file = work / "kp", work / "extract.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pipeline.cli", "extract", str(raw), "--dataset", "folder", "--out", str(out),
               "--run-file", str(run_file), "--overwrite", "--quiet", *options]
    # run from the work folder: `python -m`/`-c` put the current folder first on sys.path, before PYTHONPATH; and
    # an editable install's import hook would win over PYTHONPATH too: check which package the process gets
    where = subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree):
        raise SystemExit(f"PYTHONPATH={tree} imports pipeline from {where}: uninstall the editable pgpig first")
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return wall, json.loads(run_file.read_text())


def pose_model(device: str):
    """The embedded YOLO-pose weights as ``YOLO`` on ``device``, and the ``predict`` precision keywords."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    from pipeline.pose import default_model_path
    from pipeline.pose.reference import precision_options

    return YOLO(str(default_model_path()), task="pose"), precision_options(device.startswith("cuda"))


def chosen_keypoints(result, threshold: float) -> tuple[int, np.ndarray | None]:
    """(persons found, OpenPose-18 ``(18, 2)`` keypoints of the chosen one or None) of a ``Results``."""
    from pipeline.pose import choose_person
    from schemas.keypoints import coco17_to_openpose18

    if result.boxes is None or len(result.boxes) == 0:
        return 0, None
    boxes = np.concatenate([result.boxes.xyxy.cpu().numpy(), result.boxes.conf.cpu().numpy()[:, None]], axis=1)
    kp = result.keypoints.data.cpu().numpy()[choose_person(boxes)]
    return len(boxes), coco17_to_openpose18(kp[:, :2], kp[:, 2], threshold)[0]


def predict_loop(paths: list[Path], device: str, imgsz: int, conf: float, batch: int, threshold: float) -> tuple:
    """The baseline: `YOLO.predict` on lists of ``batch`` file paths, keypoints converted as the pipeline does:
    (keypoints by path where a person was found, persons by path, seconds)."""
    from pipeline.devices import resolve_device

    device = str(resolve_device(device))
    model, precision = pose_model(device)
    model.predict([str(paths[0])], imgsz=imgsz, device=device, verbose=False)  # warm-up, as the pipeline's
    out, persons = {}, {}
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        chunk = paths[i:i + batch]
        results = model.predict([str(p) for p in chunk], imgsz=imgsz, conf=conf, device=device, verbose=False,
                                batch=len(chunk), **precision)
        for path, r in zip(chunk, results, strict=True):
            persons[path], kp = chosen_keypoints(r, threshold)
            if kp is not None:
                out[path] = kp
    return out, persons, time.perf_counter() - start


def predict_each(paths: list[Path], device: str, imgsz: int, conf: float, threshold: float) -> tuple:
    """The keypoint reference: `YOLO.predict` on one path per call (its own letterbox for every image), same
    returns as ``predict_loop``."""
    from pipeline.devices import resolve_device

    device = str(resolve_device(device))
    model, precision = pose_model(device)
    out, persons = {}, {}
    start = time.perf_counter()
    for path in paths:
        (r,) = model.predict(str(path), imgsz=imgsz, conf=conf, device=device, verbose=False, **precision)
        persons[path], kp = chosen_keypoints(r, threshold)
        if kp is not None:
            out[path] = kp
    return out, persons, time.perf_counter() - start


def pipeline_table(out: Path, root: Path) -> tuple[dict, dict, dict]:
    """The run's table by path: (keypoints of the ``ok`` rows, persons, status)."""
    from pipeline.keypoints import read_keypoints
    from schemas.tables import keypoints_to_numpy

    table = read_keypoints(out, ["image", "status", "n_persons", "keypoints"])
    paths = [root / rel for rel in table["image"].to_pylist()]
    xy = keypoints_to_numpy(table["keypoints"])
    statuses = dict(zip(paths, table["status"].to_pylist(), strict=True))
    keypoints = {p: xy[i] for i, p in enumerate(paths) if statuses[p] == "ok"}
    return keypoints, dict(zip(paths, table["n_persons"].to_pylist(), strict=True)), statuses


def agreement(paths: list[Path], reference: tuple[dict, dict], other: tuple[dict, dict]) -> dict | None:
    """How ``other`` (keypoints, persons by path) agrees with ``reference`` on ``paths``: a person found by both or
    neither, the same person count, and per image the mean abs difference (px) over the joints visible in both."""
    from schemas.keypoints import visible_mask

    if not paths:
        return None
    (ref_kp, ref_n), (kp, n) = reference, other
    diffs = []
    for p in paths:
        if p in ref_kp and p in kp:
            both = visible_mask(ref_kp[p]) & visible_mask(kp[p])
            if both.any():
                diffs.append(float(np.abs(ref_kp[p][both] - kp[p][both]).mean()))
    stats = {f"keypoint_diff_{k}_px": None for k in ("mean", "p50", "p99", "max")}
    if diffs:
        stats = {"keypoint_diff_mean_px": round(float(np.mean(diffs)), 4),
                 "keypoint_diff_p50_px": round(float(np.percentile(diffs, 50)), 4),
                 "keypoint_diff_p99_px": round(float(np.percentile(diffs, 99)), 4),
                 "keypoint_diff_max_px": round(float(np.max(diffs)), 4)}
    found = sum((p in ref_kp) == (p in kp) for p in paths)
    counts = sum(ref_n[p] == n[p] for p in paths)
    return {"images": len(paths), "keypoint_images_compared": len(diffs), **stats,
            "person_found_agreement": round(found / len(paths), 5), "person_found_mismatch": len(paths) - found,
            "person_count_agreement": round(counts / len(paths), 5), "person_count_mismatch": len(paths) - counts}


def rate_after_first_tasks(record: dict) -> float | None:
    """Images/s of a run's tasks after each worker's first (the one that pays its start-up): the tasks but the
    first ``workers`` to finish, their rows over their seconds shared by the workers; None when none is left."""
    workers = max(1, record.get("workers") or 1)
    later = (record.get("tasks") or [])[workers:]
    rows, seconds = sum(t[0] for t in later), sum(t[1] for t in later)
    return round(rows * workers / seconds, 1) if seconds > 0 else None


def rate_after_first_batch(record: dict, images: int) -> float | None:
    """Images/s of a single stream (one process, every part in one ``extract_files`` stream) from its first batch's
    arrival to its last part's write: the rows after the first batch over ``task_seconds`` less
    ``first_batch_seconds`` (which holds the source's start and the first batch's wait). Unlike the rate after the
    first task, parts held back by the shape queues do not move time between tasks here. None for several workers.
    """
    first, batch = record.get("first_batch_seconds"), record["settings"].get("batch_size")
    if (record.get("workers") or 0) > 1 or first is None or not batch:
        return None
    seconds = record["task_seconds"] - first
    return round((images - batch) / seconds, 1) if seconds > 0 and images > batch else None


def default_partition(args: argparse.Namespace) -> int:
    """The CLI's partition size for the backend, smaller where that leaves fewer than 4 tasks (the rate after the
    first task needs later ones)."""
    from pipeline.extract import ExtractConfig

    batch, partition, _ = ExtractConfig(raw=Path(), pose_backend=args.backend, device=args.device,
                                        batch_size=args.batch_size).sizes()
    return min(partition, max(batch, math.ceil(args.images / 4)))


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    """Make the files, run the pipeline from the shell, the predict loop and the per-image reference."""
    raw = tmp / "raw"
    made = time.perf_counter()
    paths, crawl, person_free = make_files(raw, args.sizes, args.images, args.size, args.seed)
    print(f"{args.images} files made in {time.perf_counter() - made:.1f} s", file=sys.stderr)

    options = ["--backend", args.backend, "--imgsz", str(args.imgsz), "--device", args.device,
               "--partition-size", str(args.partition_size or default_partition(args))]
    options += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    options += ["--workers", str(args.workers)] if args.workers is not None else []
    wall, record = shell_extract(raw, tmp, options + shlex.split(args.extract_args))
    if record["processed"] != args.images:
        raise SystemExit(f"the pipeline processed {record['processed']} of {args.images} files")
    settings = record["settings"]  # the conf and threshold the run used, whatever --extract-args said
    conf, threshold, imgsz = settings["conf"], settings["kpt_threshold"], settings["imgsz"]
    kp, persons, statuses = pipeline_table(tmp / "kp", raw)

    subset = paths[:args.baseline_images or len(paths)]
    batched_kp, batched_n, predict_seconds = predict_loop(subset, args.device, imgsz, conf, args.predict_batch,
                                                          threshold)
    checked = paths[:args.agreement_images]
    ref_kp, ref_n, ref_seconds = predict_each(checked, args.device, imgsz, conf, threshold)
    in_batched = [p for p in checked if p in batched_n]
    return {"wall": wall, "record": record, "crawl": crawl, "subset": len(subset),
            "predict_rate": len(subset) / predict_seconds,
            "reference_rate": len(checked) / ref_seconds if checked else None,
            "agreement": agreement(checked, (ref_kp, ref_n), (kp, persons)),
            "batched_agreement": agreement(in_batched, (ref_kp, ref_n), (batched_kp, batched_n)),
            "person_free": {"files": len(person_free), "pipeline_found_person": sum(statuses[p] == "ok"
                                                                                    for p in person_free),
                            "checked": sum(p in ref_n for p in person_free),
                            "reference_found_person": sum(p in ref_kp for p in person_free)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["fast", "ultralytics"], default="fast",
                        help="the pipeline's pose backend (the baseline is always a plain YOLO.predict loop)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sizes", choices=["uniform", "mixed"], default="uniform",
                        help="uniform: every file at --size; mixed: a crawl of many sizes (MIXED_SIZES, LARGE_SIZES)")
    parser.add_argument("--size", default="256x176", help="HxW of the uniform files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the files' crops, sizes and qualities")
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None, help="[default: the CLI's]")
    parser.add_argument("--batch-size", type=int, default=None, help="the pipeline's [default: the CLI's]")
    parser.add_argument("--partition-size", type=int, default=None,
                        help="images per extraction task [default: the CLI's, at most a quarter of the images]")
    parser.add_argument("--extract-args", default="", help='more CLI options, e.g. "--read-processes 4"')
    parser.add_argument("--predict-batch", type=int, default=64, help="paths per call of the predict loop")
    parser.add_argument("--baseline-images", type=int, default=None,
                        help="run the YOLO.predict loop on the first N files only [default: all]")
    parser.add_argument("--agreement-images", type=int, default=2000,
                        help="compare keypoints with one-image predict calls on the first N files")
    parser.add_argument("--label", default="", help="free text naming the machine (e.g. the GPU card)")
    args = parser.parse_args()
    args.size = tuple(int(v) for v in args.size.split("x"))
    # ultralytics prints a notice on stdout the first time it runs on a machine; stdout is for the JSON line
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as tmp:
        m = measure(args, Path(tmp))
    import torch
    import ultralytics

    record, wall = m["record"], m["wall"]
    workers = max(1, record["workers"] or 1)
    rate, in_tasks = args.images / wall, args.images * workers / record["task_seconds"]
    steady = rate_after_first_tasks(record)
    after_batch = rate_after_first_batch(record, args.images)
    print(json.dumps({
        "bench": "extract", "backend": record["settings"]["backend"], "images": args.images, "sizes": args.sizes,
        "size": list(args.size) if args.sizes == "uniform" else None, "seed": args.seed, "crawl": m["crawl"],
        "imgsz": record["settings"]["imgsz"], "batch_size": record["settings"]["batch_size"],
        "partition_size": record["settings"]["partition_size"], "device": args.device,
        "extract_args": args.extract_args, "workers": record["workers"], "tasks": len(record["tasks"]),
        # from the shell: the process's start (imports, model load, listing) to its exit
        "pipeline_images_per_s": round(rate, 1), "pipeline_wall_seconds": round(wall, 2),
        "pipeline_images_per_s_after_first_task": steady,  # once running: start-up paid
        "pipeline_images_per_s_in_tasks": round(in_tasks, 1),
        "pipeline_images_per_s_after_first_batch": after_batch,  # one stream, from its first batch to its end
        "first_batch_seconds": record.get("first_batch_seconds"),
        "predict_images_per_s": round(m["predict_rate"], 1), "predict_batch": args.predict_batch,
        "baseline_images": m["subset"],
        "ratio_pipeline_to_predict": round(rate / m["predict_rate"], 3),
        "ratio_after_first_task_to_predict": round(steady / m["predict_rate"], 3) if steady else None,
        "ratio_in_tasks_to_predict": round(in_tasks / m["predict_rate"], 3),
        "ratio_after_first_batch_to_predict": round(after_batch / m["predict_rate"], 3) if after_batch else None,
        # against predict one image per call; the batched loop's own agreement with it beside
        "agreement": m["agreement"], "predict_loop_agreement": m["batched_agreement"],
        "reference_images_per_s": m["reference_rate"] and round(m["reference_rate"], 1),
        "person_free": m["person_free"],
        "statuses": {"ok": 0, "no_person": 0, "unreadable": 0, **record["statuses"]},
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpus": torch.cuda.device_count(), "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "label": args.label, "python": sys.version.split()[0], "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
    }))


if __name__ == "__main__":
    main()
