"""Where the fast pose backend's time goes: each stage of ``pipeline.pose.fast`` timed alone, in one process.

    python benchmarks/extract_profile.py [--images 4096] [--batch-size 256] [--size 256x176] [--device cuda:0]

Stages, each over the same JPEG files (made as ``extract_bench.py`` makes them), synchronised before and after so
the figure is that stage's alone: reading the bytes (thread pool), the header walk + sha256 that decide the GPU
path, ``decode_jpeg`` on the device, letterbox + the network in fp16, post-processing + the copy back and the
per-image split; then ``predict_files`` end to end (the stages overlapped as extraction runs them) and one
``extract_partition`` task (rows, table, Parquet write). Prints one JSON line of microseconds per image per stage
and images/s; the end-to-end figure against the sum of the stages shows how much the overlap wins, and the largest
stage is what bounds it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def timed(fn, device: torch.device, repeat: int = 1):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", default="256x176")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    from extract_bench import make_images

    from pipeline.decode import read_image_bytes
    from pipeline.pose.fast import (
        FastBackend,
        letterbox,
        letterbox_geometry,
        postprocess,
        split_detections,
        to_image_pixels,
        torch_decodable,
    )
    from schemas.files import sha256_bytes

    device = torch.device(args.device)
    h, w = (int(v) for v in args.size.split("x"))
    n, bs = args.images, args.batch_size
    us = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "raw", n, (h, w))
        backend = FastBackend(device=str(device), batch_size=bs, read_threads=args.threads)
        pool = ThreadPoolExecutor(args.threads)
        blobs, t = timed(lambda: list(pool.map(read_image_bytes, paths)), device)
        us["read"] = t
        _, t = timed(lambda: [torch_decodable(b, 40_000_000) for b in blobs], device)
        us["header_walk"] = t
        _, t = timed(lambda: [sha256_bytes(b) for b in blobs], device)
        us["sha256"] = t
        batches = [blobs[i:i + bs] for i in range(0, n, bs)]
        if device.type == "cuda":
            backend._torch_decode(batches[0])  # nvJPEG handles
            images, t = timed(lambda: [torch.stack(backend._torch_decode(b)) for b in batches], device)
        else:
            from torchvision.io import decode_jpeg

            images, t = timed(lambda: [torch.stack([decode_jpeg(torch.frombuffer(x, dtype=torch.uint8))
                                                    for x in b]) for b in batches], device)
        us["decode_jpeg"] = t
        box = letterbox_geometry(h, w, backend.imgsz)
        x = [letterbox(im, box).to(backend.dtype) for im in images[:1]]
        with torch.inference_mode():
            backend.net(x[0])
            xs, t = timed(lambda: [letterbox(im, box).to(backend.dtype) for im in images], device)
            us["letterbox"] = t
            preds, t = timed(lambda: [backend.net(v) for v in xs], device)
            preds = [p[0] if isinstance(p, (list, tuple)) else p for p in preds]
            us["network"] = t
            frames = torch.tensor([[1.0, 1.0, 0.0, 0.0, w, h]] * bs, device=device)

            def post():
                out = []
                for p in preds:
                    det, index = postprocess(p, backend.conf, backend.iou, backend.max_det)
                    det = to_image_pixels(det, index, frames[:len(p)])
                    out.append((det.cpu().numpy(), index.cpu().numpy(), len(p)))
                return out

            host, t = timed(post, device)
            us["postprocess_and_copy"] = t
            _, t = timed(lambda: [split_detections(*item) for item in host], device)
            us["split"] = t
        _, t = timed(lambda: list(backend.predict_files(paths)), device)
        us["predict_files_end_to_end"] = t

        from pipeline.extract import ExtractConfig, run_extract

        cfg = ExtractConfig(raw=Path(tmp) / "raw", out=Path(tmp) / "kp", run_file=Path(tmp) / "x.json",
                            dataset="folder", pose_backend="fast", device=str(device), batch_size=bs,
                            partition_size=n, workers=0)
        _, t = timed(lambda: run_extract(cfg, progress=False, log=lambda *a: None), device)
        us["run_extract_one_task_no_dask"] = t
    stages = {k: round(v / n * 1e6, 2) for k, v in us.items()}
    summed = sum(v for k, v in stages.items() if k not in ("predict_files_end_to_end", "run_extract_one_task_no_dask"))
    print(json.dumps({"bench": "extract_profile", "images": n, "batch_size": bs, "size": [h, w],
                      "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "threads": args.threads, "us_per_image": stages, "sum_of_stages_us": round(summed, 2),
                      "images_per_s": {k: round(1e6 / v, 1) for k, v in stages.items() if v > 0},
                      "label": args.label, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
