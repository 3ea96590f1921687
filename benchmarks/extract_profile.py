"""Where the fast pose backend's time goes: each stage of ``pipeline.pose.fast`` timed alone, in one process.

    python benchmarks/extract_profile.py [--images 4096] [--batch-size 256] [--size 256x176] [--device cuda:0]

Stages, each over the same JPEG files (made as ``extract_bench.py`` makes them), synchronised before and after so
the figure is that stage's alone: reading the batches (``pipeline.pose.reading``: bytes, sha256, the header walk) on
threads and on reader processes; the header walk and sha256 alone on one thread; ``decode_jpeg`` on the device;
letterbox; the network eager; the exact post-processing with its copy back; the network + person choice as CUDA
graphs with the copy back (what ``extract_files`` runs); on CUDA nvJPEG and the graphs alone and at once from two
threads (``overlap_*``: whether they overlap as ``extract_files`` needs them to); then ``predict_files`` and
``extract_files`` end to end (the stages overlapped as extraction runs them) and ``run_extract`` of one task without
Dask, first with the model load and then again (rows, table, Parquet write). Prints one JSON line of microseconds
per image per stage and images/s; the largest stage of the hot path bounds the end-to-end figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
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


def overlap(backend, reads, xs: list[torch.Tensor], frames: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Seconds of nvJPEG decoding every batch (on a producer's stream, as ``extract_files`` does) and of the graphs'
    replays of as many batches, each alone and then at once from two threads, as ``extract_files`` runs them. At
    once near the sum of the two alone: they take turns (the GPU, or the interpreter lock); near the larger of the
    two: they overlap. The decodes run on one long-lived thread, as a producer's do."""
    stream = backend._streams[0]

    def decode_all() -> None:
        with torch.cuda.stream(stream):
            for r in reads:
                backend._torch_decode(r.jpeg_blobs(), stream)
        stream.synchronize()

    def graphs_all() -> None:
        with torch.inference_mode():
            for v in xs:
                backend.graphs.run(v, frames[:len(v)])
        torch.cuda.synchronize(device)

    with ThreadPoolExecutor(max_workers=1) as producer:
        def both() -> None:
            done = producer.submit(decode_all)
            graphs_all()
            done.result()

        return {"overlap_decode_alone": timed(lambda: producer.submit(decode_all).result(), device)[1],
                "overlap_graphs_alone": timed(graphs_all, device)[1],
                "overlap_decode_and_graphs_at_once": timed(both, device)[1]}


def variants(args, backend, blobs: list[bytes], box, device: torch.device) -> dict[str, float]:
    """Seconds (for all ``len(blobs)`` images) of the alternatives to the stages above."""
    import cv2
    import numpy as np

    from pipeline.pose.fast import letterbox

    n = len(blobs)
    out = {}
    for threads in sorted({args.threads, os.cpu_count() or 1}):
        with ThreadPoolExecutor(threads) as pool:
            decode = lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)  # noqa: E731
            list(pool.map(decode, blobs[:64]))
            _, out[f"decode_cv2_{threads}_threads"] = timed(lambda d=decode, p=pool: list(p.map(d, blobs)), device)
    if device.type != "cuda":
        return out
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    for bs in (64, 1024):
        batches = [tensors[i:i + bs] for i in range(0, n, bs)]
        backend._torch_decode(batches[0])
        _, out[f"decode_jpeg_batch_{bs}"] = timed(lambda bb=batches: [backend._torch_decode(b) for b in bb], device)
    image = torch.stack(backend._torch_decode(tensors[:args.batch_size]))
    with torch.inference_mode():
        x = letterbox(image, box).to(backend.dtype)
        for bs in (128, 512):
            xb = x.repeat((bs + len(x) - 1) // len(x), 1, 1, 1)[:bs]
            backend.net(xb)
            _, t = timed(lambda v=xb, k=n // bs: [backend.net(v) for _ in range(k)], device)
            out[f"network_batch_{bs}"] = t * n / (n // bs * bs)
        reps = n // len(x)
        net_cl = copy.deepcopy(backend.net).to(memory_format=torch.channels_last)  # the graphs keep the original
        xc = x.contiguous(memory_format=torch.channels_last)
        net_cl(xc)
        _, t = timed(lambda: [net_cl(xc) for _ in range(reps)], device)
        out["network_channels_last"] = t * n / (reps * len(x))
        static = x.clone()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                backend.net(static)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            backend.net(static)
        graph.replay()
        _, t = timed(lambda: [graph.replay() for _ in range(reps)], device)
        out["network_cuda_graph"] = t * n / (reps * len(x))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", default="256x176")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--processes", default="4,8", help="reader process counts to time (comma-separated); "
                        "the last one is used end to end")
    parser.add_argument("--label", default="")
    parser.add_argument("--variants", action="store_true",
                        help="also time alternatives: a threaded cv2 decode, other decode and network batch sizes, "
                             "channels-last, a CUDA graph of the network")
    args = parser.parse_args()
    from extract_bench import make_images

    from pipeline.pose.fast import FastBackend, letterbox, letterbox_geometry, postprocess, to_image_pixels
    from pipeline.pose.reading import BatchReader
    from schemas.files import sha256_bytes

    device = torch.device(args.device)
    h, w = (int(v) for v in args.size.split("x"))
    n, bs = args.images, args.batch_size
    processes = [int(v) for v in args.processes.split(",") if v]
    us = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "raw", n, (h, w))
        path_batches = [paths[i:i + bs] for i in range(0, n, bs)]
        backend = FastBackend(device=str(device), batch_size=bs, read_threads=args.threads, torch_decode=True,
                              read_processes=processes[-1] if processes else 0)
        decodable = backend.reader.decodable
        reads, t = timed(lambda: list(BatchReader(decodable, 0, args.threads).read(path_batches, 40_000_000)), device)
        us[f"read_{args.threads}_threads"] = t
        for p in processes:
            reader = BatchReader(decodable, p, args.threads, pin_memory=device.type == "cuda")
            list(reader.read(path_batches[:p], 40_000_000))  # the workers start
            _, t = timed(lambda r=reader: list(r.read(path_batches, 40_000_000)), device)
            us[f"read_{p}_processes_{args.threads}_threads"] = t
            reader.close()
        blobs = [bytes(b.numpy()) for r in reads for b in r.jpeg_blobs()]
        assert len(blobs) == n, "every bench file takes the GPU route"
        _, t = timed(lambda: [decodable(b, 40_000_000) for b in blobs], device)
        us["header_walk_1_thread"] = t
        _, t = timed(lambda: [sha256_bytes(b) for b in blobs], device)
        us["sha256_1_thread"] = t
        if device.type == "cuda":
            backend._torch_decode(reads[0].jpeg_blobs())  # nvJPEG handles
            images, t = timed(lambda: [torch.stack(backend._torch_decode(r.jpeg_blobs())) for r in reads], device)
        else:
            from torchvision.io import decode_jpeg

            images, t = timed(lambda: [torch.stack([decode_jpeg(x) for x in r.jpeg_blobs()]) for r in reads], device)
        us["decode_jpeg"] = t
        box = letterbox_geometry(h, w, backend.imgsz)
        frames = torch.tensor([[1.0, 1.0, 0.0, 0.0, w, h, 1.0]] * bs, device=device)
        with torch.inference_mode():
            backend.net(letterbox(images[0], box).to(backend.dtype))
            xs, t = timed(lambda: [letterbox(im, box).to(backend.dtype) for im in images], device)
            us["letterbox"] = t
            preds, t = timed(lambda: [backend.net(v) for v in xs], device)
            preds = [p[0] if isinstance(p, (list, tuple)) else p for p in preds]
            us["network_eager"] = t

            def post():
                out = []
                for p in preds:
                    det, index = postprocess(p, backend.conf, backend.iou, backend.max_det)
                    det = to_image_pixels(det, index, frames[:len(p), :6])
                    out.append((det.cpu().numpy(), index.cpu().numpy(), len(p)))
                return out

            _, t = timed(post, device)
            us["exact_postprocess_and_copy"] = t
            backend.graphs.run(xs[0], frames[:len(xs[0])])  # capture
            backend.graphs.run(xs[-1], frames[:len(xs[-1])])
            _, t = timed(lambda: [backend.graphs.run(v, frames[:len(v)])[0].cpu() for v in xs], device)
            us["graph_network_and_choice_and_copy"] = t
            if device.type == "cuda":
                us.update(overlap(backend, reads, xs, frames, device))
        if args.variants:
            us.update(variants(args, backend, blobs, box, device))
        _, t = timed(lambda: list(backend.predict_files(paths)), device)
        us["predict_files_end_to_end"] = t
        list(backend.extract_files(paths[:bs]))
        _, t = timed(lambda: list(backend.extract_files(paths)), device)
        us["extract_files_end_to_end"] = t

        from pipeline.extract import ExtractConfig, run_extract

        cfg = ExtractConfig(raw=Path(tmp) / "raw", out=Path(tmp) / "kp", run_file=Path(tmp) / "x.json",
                            dataset="folder", pose_backend="fast", device=str(device), batch_size=bs,
                            partition_size=n, workers=0, read_processes=processes[-1] if processes else 0,
                            overwrite=True)
        _, t = timed(lambda: run_extract(cfg, progress=False, log=lambda *a: None), device)
        us["run_extract_one_task_no_dask_first"] = t
        _, t = timed(lambda: run_extract(cfg, progress=False, log=lambda *a: None), device)
        us["run_extract_one_task_no_dask_again"] = t
    stages = {k: round(v / n * 1e6, 2) for k, v in us.items()}
    print(json.dumps({"bench": "extract_profile", "images": n, "batch_size": bs, "size": [h, w],
                      "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "threads": args.threads, "processes": processes,
                      "us_per_image": stages,
                      "images_per_s": {k: round(1e6 / v, 1) for k, v in stages.items() if v > 0},
                      "label": args.label, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
