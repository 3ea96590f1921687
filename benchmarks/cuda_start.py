"""What a fresh process's first CUDA steps cost, one by one: the part of ``pgpig-data extract``'s start-up that is
the device's, not pgpig's.

    python benchmarks/cuda_start.py [--device cuda:0] [--repeat 2] [--label TEXT]

Each measurement runs in a fresh interpreter (the costs are once per process). In order: ``import torch``;
``torch.cuda.is_available()`` as torch checks it by default (the CUDA driver's initialisation) and with
``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (NVML only, the driver left for later); the first allocation (the context);
the first fp16 convolution (cuDNN's load); importing TorchCodec; its first ``decode_jpeg`` on the device (nvJPEG's
set-up), a second one on the same thread and a first one on another thread (is the set-up per thread?). The
``parallel`` row runs, after the context, the convolution on the main thread and TorchCodec's import and first
decode on another, the time until both are done (``conv_and_decode``): what ``prime_device`` would save by doing
them on two threads. The ``overlap`` row starts those device steps on a thread right after ``import torch`` while
the main thread imports what the settings and the model's load import (torchvision, OpenCV, ultralytics' model
classes), as ``pgpig-data extract`` could: the main thread's time to its imports' end and the thread's time to its
end. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CHILD = r"""
import json, os, sys, threading, time
mark = start = time.perf_counter()
laps = {}
def lap(name):
    global mark
    now = time.perf_counter()
    laps[name] = round(now - mark, 4)
    mark = now
mode, device = sys.argv[1], sys.argv[2]
if mode == "nvml":
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
os.environ.setdefault("TORCH_CUDNN_V8_API_DISABLED", "1")
import numpy as np, cv2
ok, jpeg = cv2.imencode(".jpg", np.full((64, 48, 3), 114, np.uint8))
blob = None
lap("numpy_cv2_imports")
import torch
lap("import_torch")

def device_steps(laps_out):
    t = time.perf_counter()
    def step(name):
        nonlocal t
        now = time.perf_counter()
        laps_out[name] = round(now - t, 4)
        t = now
    torch.zeros(1, device=device)
    torch.cuda.synchronize(device)
    step("context")
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float16, device=device)
    torch.nn.functional.conv2d(x, torch.zeros(4, 3, 3, 3, dtype=torch.float16, device=device))
    torch.cuda.synchronize(device)
    step("first_conv")
    from torchcodec.decoders import decode_jpeg
    step("import_torchcodec")
    data = torch.frombuffer(bytearray(jpeg.tobytes()), dtype=torch.uint8)
    decode_jpeg([data], mode="RGB", device=device)
    torch.cuda.synchronize(device)
    step("first_decode")
    decode_jpeg([data], mode="RGB", device=device)
    torch.cuda.synchronize(device)
    step("second_decode")
    other = {}
    def decode_there():
        s = time.perf_counter()
        decode_jpeg([data], mode="RGB", device=device)
        torch.cuda.synchronize(device)
        other["s"] = round(time.perf_counter() - s, 4)
    th = threading.Thread(target=decode_there)
    th.start(); th.join()
    laps_out["first_decode_other_thread"] = other["s"]

if mode in ("default", "nvml"):
    torch.cuda.is_available()
    lap("is_available")
    device_steps(laps)
elif mode == "parallel":  # the context, then the convolution here and the decode on a thread
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    torch.cuda.is_available()
    lap("is_available")
    torch.zeros(1, device=device)
    torch.cuda.synchronize(device)
    lap("context")
    def decode_first():
        from torchcodec.decoders import decode_jpeg
        data = torch.frombuffer(bytearray(jpeg.tobytes()), dtype=torch.uint8)
        decode_jpeg([data], mode="RGB", device=device)
        torch.cuda.synchronize(device)
        laps["decode_thread_done"] = round(time.perf_counter() - mark, 4)
    th = threading.Thread(target=decode_first)
    th.start()
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float16, device=device)
    torch.nn.functional.conv2d(x, torch.zeros(4, 3, 3, 3, dtype=torch.float16, device=device))
    torch.cuda.synchronize(device)
    laps["conv_done"] = round(time.perf_counter() - mark, 4)
    th.join()
    lap("conv_and_decode")
else:  # overlap
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    torch.cuda.is_available()
    lap("is_available")
    thread_laps = {}
    th = threading.Thread(target=device_steps, args=(thread_laps,))
    th.start()
    import torchvision  # noqa
    from ultralytics.nn.tasks import torch_safe_load  # noqa
    lap("main_imports")
    th.join()
    lap("join_device_thread")
    laps["device_thread"] = thread_laps
laps["total"] = round(time.perf_counter() - start, 4)
print(json.dumps(laps))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each mode, alternated")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    env.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    rows: dict[str, list] = {"default": [], "nvml": [], "parallel": [], "overlap": []}
    for _ in range(args.repeat):
        for mode in rows:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CHILD, mode, args.device], env=env, capture_output=True,
                                  text=True)
            wall = round(time.perf_counter() - started, 3)
            if done.returncode != 0:
                rows[mode].append({"error": done.stderr.strip().splitlines()[-1:], "wall": wall})
                continue
            rows[mode].append({**json.loads(done.stdout.strip().splitlines()[-1]), "wall": wall})
    import torch

    print(json.dumps({
        "bench": "cuda_start", "device": torch.cuda.get_device_name(args.device) if torch.cuda.is_available()
        else "cpu", "runs": rows, "label": args.label, "torch": torch.__version__,
        "python": platform.python_version(),
    }), flush=True)


if __name__ == "__main__":
    main()
