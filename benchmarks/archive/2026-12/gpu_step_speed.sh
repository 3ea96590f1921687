#!/usr/bin/env bash
# The full training step of the four DeepFashion generators at batch 32 (the side-by-side bench's batch) under each
# arithmetic, to choose the recipes' GPU settings: train_bench.py with float32 without TF32 (fp32) as the baseline
# every cosine is taken against.
#   bash benchmarks/archive/2026-12/gpu_step_speed.sh OUT_DIR [PARTS]
# PARTS (default "eager"): eager (every recipe, eager modes), compile (COMPILE_RECIPES, each in its own process
# with COMPILE_MODES_<model>, under COMPILE_LIMIT seconds)
set -uo pipefail
out=${1:?output folder}
parts=${2:-eager}
mkdir -p "$out"
py=${PYTHON:-python3}
has() { [[ " $parts " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*" | tee -a "$out/session.log"; }
bench() {  # RECIPE MODES [TIMEOUT]
    timeout "${3:-900}" $py benchmarks/train_bench.py --recipe "workflows/deepfashion/$1.yaml" --batch-size 32 \
        --modes "$2" --steps "${STEPS:-8}" --warmup 2 --min-seconds "${MIN_SECONDS:-2}" 2>> "$out/bench.err" \
        | tee -a "$out/train.jsonl"
}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$out/session.log"
if has eager; then
    stamp eager
    bench patn fp32,none,none+tf32,fp16,fp16+tf32,bf16,none+cl+tf32
    bench dptn fp32,none,bf16,bf16+tf32,fp16,bf16+cl,fp16+cl
    bench gfla-stage2 fp32,none,none+tf32,none+cl+tf32,fp16
    bench xinggan fp32,none,none+tf32,fp16,bf16
fi
if has compile; then
    stamp compile
    for r in ${COMPILE_RECIPES:-patn dptn}; do
        var="COMPILE_MODES_${r//-/_}"
        bench "$r" "${!var:-fp32,bf16+compile}" "${COMPILE_LIMIT:-330}" || stamp "compile $r: exit $?"
    done
fi
stamp done
