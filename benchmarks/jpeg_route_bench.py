"""JPEG decode routes by image size: batched nvJPEG through torchvision, TorchCodec and nvImageCodec against OpenCV.

    python benchmarks/jpeg_route_bench.py [--megapixels 0.05,0.3,1,2,5,8,12] [--batch 32] [--rounds 3]
                                          [--budget-mp 128] [--label TEXT]

The files are crops of the photos that ship with ultralytics, rescaled to each size (4:3, landscape and portrait
alternating), JPEG quality 90, held in memory. Per size: images/s and MP/s of (a) ``torchvision.io.decode_jpeg`` on
lists of ``--batch`` tensors to CUDA, (b) ``torchcodec.decoders.decode_jpeg`` the same way, (c) nvImageCodec's
batched decoder (the optional ``nvidia-nvimgcodec-cu13`` package with ``nvidia-nvjpeg``) on the card's hardware JPEG
engines and on its CUDA decoder, (d) ``cv2.imdecode`` on a thread pool of ``os.cpu_count()`` threads, the baseline;
each the best of ``--rounds``. A route that cannot run here is named in ``skipped`` with the reason. Then the GPU
routes are checked against torchvision's for equal bytes, and its max abs difference to OpenCV's is given. Without
CUDA the GPU routes are skipped and the check compares the libraries' CPU decoders on a few files. Prints one JSON
line per size.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

CPU_CHECK_FILES = 4  # files per size whose CPU decodes are compared when there is no GPU


def make_jpegs(megapixels: float, n: int, seed: int = 0) -> tuple[list[bytes], list[tuple[int, int]]]:
    """``n`` JPEGs (quality 90) of about ``megapixels``, 4:3 alternating landscape and portrait: crops of the shipped
    photos resized (enlarged above their size), flipped at random. Returns the bytes and each (height, width)."""
    from extract_bench import shipped_photos

    photos = shipped_photos()[:2]
    rng = np.random.default_rng(seed)
    long_side = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    short_side = round(long_side * 3 / 4)
    jobs = []
    for i in range(n):
        h, w = (short_side, long_side) if i % 2 == 0 else (long_side, short_side)
        photo = photos[i % 2]
        ph, pw = photo.shape[:2]
        ch, cw = (ph, ph * w / h) if pw / ph > w / h else (pw * h / w, pw)
        scale = rng.uniform(0.6, 1.0)
        ch, cw = int(ch * scale), int(cw * scale)
        y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        jobs.append((photo[y0:y0 + ch, x0:x0 + cw], (h, w), bool(rng.random() < 0.5)))

    def encode(job) -> bytes:
        crop, (h, w), flip = job
        image = cv2.resize(crop[:, ::-1] if flip else crop, (w, h), interpolation=cv2.INTER_LINEAR)
        return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        blobs = list(pool.map(encode, jobs))
    return blobs, [size for _, size, _ in jobs]


def torchcodec_decoder():
    """TorchCodec's ``decode_jpeg`` in RGB, or None and the reason it cannot be imported."""
    try:
        from torchcodec.decoders import decode_jpeg
    except Exception as exc:  # noqa: BLE001 - a missing package, or a build that does not match this torch
        return None, f"torchcodec not importable: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return functools.partial(decode_jpeg, mode="RGB"), None


def nvimgcodec_decoder(backend: str):
    """nvImageCodec's batched ``Decoder.decode`` in RGB with one backend (``hw_gpu``: the card's JPEG engines,
    ``gpu``: nvJPEG's CUDA decoder, ``cpu``: libjpeg-turbo), called as the torch decoders are: a list of 1-D uint8
    tensors and ``device`` -> ``(3, H, W)`` uint8 tensors. None and the reason when it cannot run."""
    try:
        from nvidia import nvimgcodec
    except Exception as exc:  # noqa: BLE001 - an optional package
        return None, f"nvimgcodec not importable: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    kind = {"hw_gpu": nvimgcodec.HW_GPU_ONLY, "gpu": nvimgcodec.GPU_ONLY, "cpu": nvimgcodec.CPU_ONLY}[backend]
    try:
        decoder = nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY if backend == "cpu" else 0,
                                     backends=[nvimgcodec.Backend(kind)])
    except Exception as exc:  # noqa: BLE001 - e.g. no CUDA runtime
        return None, f"nvimgcodec ({backend}): {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    # planar RGB: (3, H, W) as the torch decoders give; EXIF orientation left alone, as theirs by default
    params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                     sample_format=nvimgcodec.SampleFormat.P_RGB)

    def decode(tensors: list[torch.Tensor], device: str) -> list[torch.Tensor]:
        images = decoder.decode([t.numpy() for t in tensors], params=params)
        if any(image is None for image in images):
            raise RuntimeError(f"nvimgcodec ({backend}) could not decode {sum(i is None for i in images)} files")
        if device == "cpu":
            return [torch.from_numpy(np.asarray(image.cpu())) for image in images]
        return [torch.as_tensor(image, device=device) for image in images]

    return decode, None


def torchvision_decoder():
    """torchvision's ``decode_jpeg`` in RGB."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders for TorchCodec's
        from torchvision.io import ImageReadMode, decode_jpeg

    return functools.partial(decode_jpeg, mode=ImageReadMode.RGB)


def decode_batches(decode, tensors: list[torch.Tensor], batch: int, device: str) -> list[torch.Tensor]:
    """``decode(list of 1-D uint8 CPU tensors, device=...)`` over ``batch``-sized lists: ``(3, H, W)`` uint8 RGB
    images on ``device``."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, len(tensors), batch):
            out += decode(tensors[start:start + batch], device=device)
    return out


def seconds_gpu(decode, tensors: list[torch.Tensor], batch: int, rounds: int) -> float:
    """Best wall time of ``rounds`` batched decodes of every tensor to CUDA, the GPU finished; the images of a
    batch are dropped as the next is decoded (as a pipeline consumes them)."""
    best = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(rounds):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(0, len(tensors), batch):
                decode(tensors[i:i + batch], device="cuda")
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return best


def seconds_cv2(blobs: list[bytes], pool: ThreadPoolExecutor, rounds: int) -> float:
    """Best wall time of ``rounds`` ``cv2.imdecode`` passes over ``blobs`` on ``pool`` (OpenCV releases the GIL)."""
    arrays = [np.frombuffer(b, np.uint8) for b in blobs]
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        failed = sum(image is None for image in pool.map(lambda a: cv2.imdecode(a, cv2.IMREAD_COLOR), arrays))
        if failed:
            raise SystemExit(f"cv2.imdecode failed on {failed} of {len(arrays)} files")
        best = min(best, time.perf_counter() - start)
    return best


def compare(blobs: list[bytes], tensors: list[torch.Tensor], decoders: dict, batch: int, device: str) -> dict:
    """The first decoder's output against the others' (equal bytes: files equal, max abs diff) and against
    ``cv2.imdecode`` flipped to RGB (max and mean abs diff), file by file."""
    outputs = {name: decode_batches(fn, tensors, batch, device) for name, fn in decoders.items()}
    (first, reference), others = next(iter(outputs.items())), list(outputs.items())[1:]
    result = {"device": device, "files": len(blobs)}
    for name, images in others:
        equal = sum(torch.equal(a, b) for a, b in zip(reference, images, strict=True))
        diff = max(int((a.int() - b.int()).abs().max()) for a, b in zip(reference, images, strict=True))
        result[f"{name}_equal_to_{first}"] = {"files_equal": equal, "max_abs_diff": diff}
    diffs = []
    for blob, image in zip(blobs, reference, strict=True):
        bgr = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
        rgb = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1))).to(image.device)
        d = (rgb.int() - image.int()).abs()
        diffs.append((int(d.max()), float(d.float().mean())))
    result[f"{first}_vs_cv2"] = {"max_abs_diff": max(d[0] for d in diffs),
                                 "mean_abs_diff": round(float(np.mean([d[1] for d in diffs])), 4),
                                 "files_equal": sum(d[0] == 0 for d in diffs)}
    return result


def measure_size(megapixels: float, args: argparse.Namespace, pool: ThreadPoolExecutor, cuda: bool) -> dict:
    """One size's line: rates of each route, ratios to OpenCV's, the equality check."""
    n = int(min(256, max(32, args.budget_mp // megapixels)))
    blobs, sizes = make_jpegs(megapixels, n)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    pixels = sum(h * w for h, w in sizes)
    rates = {"cv2_threads": n / seconds_cv2(blobs, pool, args.rounds)}
    skipped = {}
    decoders = {"torchvision": torchvision_decoder()}
    routes = {"torchcodec": torchcodec_decoder}
    routes.update({f"nvimgcodec_{kind}": functools.partial(nvimgcodec_decoder, kind)
                   for kind in (("hw_gpu", "gpu") if cuda else ("cpu",))})
    for name, make in routes.items():
        fn, why = make()
        if fn is not None:
            try:  # a backend the machine lacks (no JPEG engines) fails at its first decode
                decode_batches(fn, tensors[:2], 2, "cuda" if cuda else "cpu")
            except Exception as exc:  # noqa: BLE001 - reported in the line
                fn, why = None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
        if fn is not None:
            decoders[name] = fn
        else:
            skipped[name] = why
    if cuda:
        for name, fn in decoders.items():
            decode_batches(fn, tensors[:args.batch], args.batch, "cuda")  # nvJPEG's handles and buffers
            rates[f"{name}_cuda"] = n / seconds_gpu(fn, tensors, args.batch, args.rounds)
        check = compare(blobs, tensors, decoders, args.batch, "cuda")
    else:
        skipped["cuda"] = "no CUDA device: GPU decodes skipped; the check compares the CPU decoders"
        check = compare(blobs[:CPU_CHECK_FILES], tensors[:CPU_CHECK_FILES], decoders, args.batch, "cpu")
    base = rates["cv2_threads"]
    return {"bench": "jpeg_route", "megapixels": megapixels, "size": list(sizes[0]), "files": n,
            "mean_kb": round(float(np.mean([len(b) for b in blobs])) / 1024, 1), "batch": args.batch,
            "images_per_s": {k: round(v, 1) for k, v in rates.items()},
            "megapixels_per_s": {k: round(v * pixels / n / 1e6, 1) for k, v in rates.items()},
            "ratio_to_cv2_threads": {k: round(v / base, 3) for k, v in rates.items() if k != "cv2_threads"},
            "check": check, "skipped": skipped or None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", default="0.05,0.3,1,2,5,8,12", help="image sizes, comma-separated")
    parser.add_argument("--batch", type=int, default=32, help="files per batched GPU decode call")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per route; the best counts")
    parser.add_argument("--budget-mp", type=float, default=128,
                        help="megapixels of files per size (between 32 and 256 files)")
    parser.add_argument("--label", default="", help="free text naming the machine")
    args = parser.parse_args()
    import torchvision

    cuda = torch.cuda.is_available()
    threads = os.cpu_count() or 1
    common = {"cv2_threads": threads, "gpu": torch.cuda.get_device_name(0) if cuda else None,
              "machine": f"{platform.machine()} {threads} cpu", "label": args.label, "python": sys.version.split()[0],
              "torch": torch.__version__, "torchvision": torchvision.__version__, "opencv": cv2.__version__}
    try:
        import torchcodec

        common["torchcodec"] = torchcodec.__version__
    except Exception:  # noqa: BLE001 - reported per size by torchcodec_decoder
        common["torchcodec"] = None
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for megapixels in (float(v) for v in args.megapixels.split(",")):
            line = measure_size(megapixels, args, pool, cuda)
            print(json.dumps({**line, **common, "elapsed_s": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
