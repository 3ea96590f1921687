"""Extraction speed: `pgpig-data extract` (``--backend fast`` or ``ultralytics``) vs a plain `YOLO.predict` loop
on the same files, weights, device.

    python benchmarks/extract_bench.py [--backend fast] [--images 2000] [--size 256x176] [--device auto]
        [--workers N] [--batch-size 32] [--partition-size N]

The files are crops, flips and rescales of the photos that ship with ultralytics (real people), written
as JPEGs at ``--size`` in a ``<identity>/<image>`` folder. Both sides read those JPEG files from disk.
Prints one JSON line: images/s of each, their ratio, the person-count agreement per image (the table's
``n_persons`` against ``predict``'s boxes), and the keypoint difference (px) between the pipeline's table and
``predict``'s chosen person on the images where both found one: per image the mean over the joints visible in
both, then the mean, percentiles and max of those over the images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def make_images(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` JPEGs at ``size``: crops, flips and rescales of the shipped photos (the random draws are made in order,
    the encoding on a thread pool: the same files at any thread count)."""
    import importlib.util

    # found without importing ultralytics (seconds), so that extract_startup.py counts that import where the
    # backend pays it
    assets = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0]) / "assets"
    photos = [cv2.imread(str(assets / name)) for name in ("bus.jpg", "zidane.jpg")]
    rng = np.random.default_rng(seed)
    h, w = size
    jobs = []
    for i in range(n):
        ph, pw = photos[i % 2].shape[:2]
        ch = int(ph * rng.uniform(0.5, 1.0))
        cw = min(pw, int(ch * w / h * rng.uniform(0.8, 1.2)))
        y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        jobs.append((i, y0, x0, ch, cw, rng.random() < 0.5))
    for d in range(min(n, 100)):
        (root / f"{d:04d}").mkdir(parents=True, exist_ok=True)

    def write(job) -> Path:
        i, y0, x0, ch, cw, flip = job
        crop = photos[i % 2][y0:y0 + ch, x0:x0 + cw]
        if flip:
            crop = crop[:, ::-1]
        image = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)
        path = root / f"{i % 100:04d}" / f"{i:07d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        return path

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(write, jobs))


def predict_loop(paths: list[Path], device: str, imgsz: int, conf: float, batch: int, threshold: float) -> tuple:
    """The baseline: `YOLO.predict` on lists of file paths, batch by batch, keypoints converted the same way."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    from pipeline.devices import resolve_device
    from pipeline.pose import choose_person, default_model_path
    from pipeline.pose.reference import precision_options
    from schemas.keypoints import coco17_to_openpose18

    device = str(resolve_device(device))
    model = YOLO(str(default_model_path()), task="pose")
    model.predict([str(paths[0])], imgsz=imgsz, device=device, verbose=False)  # warm-up, as the pipeline's
    out, persons = {}, {}
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        chunk = paths[i:i + batch]
        results = model.predict([str(p) for p in chunk], imgsz=imgsz, conf=conf, device=device,
                                verbose=False, batch=len(chunk), **precision_options(device.startswith("cuda")))
        for path, r in zip(chunk, results, strict=True):
            persons[path] = 0 if r.boxes is None else len(r.boxes)
            if r.boxes is None or len(r.boxes) == 0:
                continue
            boxes = np.concatenate([r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy()[:, None]], axis=1)
            kp = r.keypoints.data.cpu().numpy()[choose_person(boxes)]
            out[path] = coco17_to_openpose18(kp[:, :2], kp[:, 2], threshold)[0]
    return out, persons, time.perf_counter() - start


def rate_after_first_tasks(record: dict) -> float | None:
    """Images/s of a run's tasks after each worker's first (the one that pays its start-up): the tasks but the
    first ``workers`` to finish, their rows over their seconds shared by the workers; None when none is left."""
    workers = max(1, record.get("workers") or 1)
    later = (record.get("tasks") or [])[workers:]
    rows, seconds = sum(t[0] for t in later), sum(t[1] for t in later)
    return round(rows * workers / seconds, 1) if seconds > 0 else None


def steady_rate(record: dict) -> float | None:
    """Images/s of a one-worker run's tasks after its first one; None with several workers or one task."""
    if (record.get("workers") or 0) > 1:
        return None
    return rate_after_first_tasks(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["fast", "ultralytics"], default="fast",
                        help="the pipeline's pose backend (the baseline is always a plain YOLO.predict loop)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", default="256x176")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--partition-size", type=int, default=None,
                        help="images per extraction task [default: max(batch size, 256)]")
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--baseline-images", type=int, default=None,
                        help="run the YOLO.predict baseline (and the agreement) on the first N files only "
                             "[default: all]; its images/s is still per image")
    parser.add_argument("--label", default="", help="free text naming the machine (e.g. the GPU card)")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    # ultralytics prints a notice on stdout the first time it runs on a machine; stdout is for the JSON line
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        import ultralytics  # noqa: F401

    from pipeline.extract import ExtractConfig, run_extract
    from pipeline.keypoints import read_keypoints
    from schemas.keypoints import visible_mask
    from schemas.tables import keypoints_to_numpy

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "raw"
        paths = make_images(root, args.images, (h, w))
        cfg = ExtractConfig(raw=root, out=Path(tmp) / "keypoints", run_file=Path(tmp) / "extract.json",
                            dataset="folder", device=args.device, workers=args.workers, imgsz=args.imgsz,
                            batch_size=args.batch_size, pose_backend=args.backend,
                            partition_size=args.partition_size or max(args.batch_size, 256))
        t0 = time.perf_counter()
        record = run_extract(cfg, log=lambda *a, **k: None)
        pipeline_seconds = time.perf_counter() - t0  # listing, cluster start and model load included
        subset = paths[:args.baseline_images or len(paths)]
        baseline, persons, predict_seconds = predict_loop(subset, args.device, args.imgsz, cfg.conf,
                                                          args.batch_size, cfg.kpt_threshold)
        table = read_keypoints(cfg.out)
        xy = keypoints_to_numpy(table["keypoints"])
        compared = [i for i, rel in enumerate(table["image"].to_pylist()) if root / rel in persons]
        images, counts = table["image"].to_pylist(), table["n_persons"].to_pylist()
        statuses = table["status"].to_pylist()
        counts_equal = sum(persons[root / images[i]] == counts[i] for i in compared)
        diffs, person_mismatch = [], 0
        for i in compared:
            rel, status, kp = images[i], statuses[i], xy[i]
            ref = baseline.get(root / rel)
            if (ref is None) != (status != "ok"):
                person_mismatch += 1
                continue
            if ref is not None:
                both = visible_mask(ref) & visible_mask(kp)
                if both.any():
                    diffs.append(np.abs(ref[both] - kp[both]).mean())
    import torch

    predict_rate = len(subset) / predict_seconds  # images/s of the baseline
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    diffs = np.asarray(diffs)
    percentiles = None
    if len(diffs):
        percentiles = {f"p{q}": round(float(np.percentile(diffs, q)), 4) for q in (50, 90, 95, 99, 99.9)}
    print(json.dumps({
        "bench": "extract", "backend": record["settings"]["backend"], "images": args.images, "size": [h, w],
        "imgsz": args.imgsz, "batch_size": args.batch_size, "partition_size": cfg.partition_size,
        "device": args.device, "gpu": gpu, "gpus": torch.cuda.device_count(),
        "workers": record["workers"],
        "pipeline_images_per_s": round(args.images / pipeline_seconds, 1),
        # the tasks' own time, per worker: what a long run approaches once start-up is paid
        "pipeline_images_per_s_in_tasks": round(args.images * max(1, record["workers"]) / record["task_seconds"], 1),
        "baseline_images": len(subset),
        # one worker: its tasks after the first (which imports torch and loads the model): the steady rate
        "pipeline_images_per_s_after_first_task": steady_rate(record),
        "predict_images_per_s": round(predict_rate, 1),
        "ratio_pipeline_to_predict": round(args.images / pipeline_seconds / predict_rate, 3),
        "ratio_in_tasks_to_predict": round(args.images * max(1, record["workers"]) / record["task_seconds"]
                                           / predict_rate, 3),
        "keypoint_mean_abs_diff_px": round(float(np.mean(diffs)), 4) if len(diffs) else None,
        "keypoint_max_image_diff_px": round(float(np.max(diffs)), 4) if len(diffs) else None,
        "keypoint_image_diff_percentiles_px": percentiles, "keypoint_images_compared": len(diffs),
        "person_count_agreement": round(counts_equal / len(compared), 5),
        "person_count_mismatch": len(compared) - counts_equal,
        "person_found_mismatch": person_mismatch, "statuses": record["statuses"],
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "label": args.label,
        "python": sys.version.split()[0], "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
