#!/usr/bin/env bash
# nvImageCodec (CUDA 13) and the nvJPEG library it loads, for CPython 3.12 on x86-64, unpacked into a folder to
# carry to a GPU machine without package registries (default .wn, which git should ignore), trimmed to what JPEG
# decoding needs (about 20 MB instead of the wheels' 29 MB packed and 76 MB unpacked):
#   bash benchmarks/device_nvimgcodec.sh [DIR]
# There, before any command (after installing the wheels of device_wheels.sh into /tmp/site):
#   export PYTHONPATH=/tmp/site:$PWD/DIR:$PWD
# benchmarks/jpeg_route_bench.py then finds it.
set -euo pipefail
dir=${1:-.wn}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$tmp" nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg
mkdir -p "$dir"
for wheel in "$tmp"/*.whl; do
    python3 -m zipfile -e "$wheel" "$dir"
done
codec="$dir/nvidia/nvimgcodec"
# the extension modules of the other Python versions, the headers, and the codecs that decode no JPEG
find "$codec" -maxdepth 1 -name 'nvimgcodec_impl.cpython-*.so' ! -name '*cpython-312-*' -delete
rm -rf "$codec/include" "$codec/tools" "$dir/nvidia/cu13/include"
rm -f "$codec"/extensions/lib{opencv,tiff,nvtiff,nvjpeg2k}_ext.so.*
du -sh "$dir"
