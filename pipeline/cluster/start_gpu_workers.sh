#!/usr/bin/env bash
# One Dask worker per GPU of this host, each pinned to its GPU, all joining the scheduler at $1:
#   bash start_gpu_workers.sh tcp://scheduler-host:8786 [LOCAL_DIR]
# Run it on every GPU host (ssh, your job system, or the SLURM example beside it). Each worker is one process
# with one thread: a worker runs one partition at a time, decoding with its own thread pool and the model on its GPU.
set -euo pipefail
scheduler=${1:?scheduler address, e.g. tcp://10.0.0.1:8786}
local_dir=${2:-${TMPDIR:-/tmp}/dask-$USER}
# Dask's nanny starts workers with OMP_NUM_THREADS=1 (and aggressive malloc trimming), which halves torch on the
# CPU; an empty pre-spawn environment keeps the host's settings.
export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{}'
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
if [ "$gpus" -eq 0 ]; then
    echo "no GPU on $(hostname); start CPU workers with: dask worker $scheduler --nworkers 4 --nthreads 1" >&2
    exit 1
fi
for ((i = 0; i < gpus; i++)); do
    # the worker sees one GPU, as cuda:0; extract's device "auto" then uses it
    CUDA_VISIBLE_DEVICES=$i dask worker "$scheduler" --nworkers 1 --nthreads 1 \
        --name "$(hostname)-gpu$i" --local-directory "$local_dir" &
done
wait
