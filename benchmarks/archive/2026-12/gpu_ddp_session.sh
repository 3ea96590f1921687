#!/usr/bin/env bash
# Data-parallel training on the GPUs of one host (a machine with 2 GPUs), as recorded in
# benchmarks/results/train-ddp-<card>.jsonl:
#   bash benchmarks/archive/2026-12/gpu_ddp_session.sh OUT_DIR
# `pgpig train --gpus N` (torchrun, NCCL) with the Market-1501 PATN recipe (batch norm, GAN, pool 50)
# in bf16 on a mannequin shard set, for N = 1 and N = 2, at the recipe's global batch 32 and at 32 per GPU.
# RECIPE, EXTRA (more train options) and SETTINGS ("gpus global_batch;gpus global_batch") change what is run.
# Steady-state steps/s come from the wall-time difference of a short and a long run (start-up cancels out).
set -euo pipefail
out=${1:?output folder}
mkdir -p "$out"
work=$(mktemp -d)
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/gpus.txt" || true
card=$(head -1 "$out/gpus.txt" 2>/dev/null || echo unknown)

$py -m pipeline.cli synth "$work/mk" --identities 300 > /dev/null 2>&1
$py -m pipeline.cli extract "$work/mk" --annotations "$work/mk/market-annotation-train.csv" \
    --annotations "$work/mk/market-annotation-test.csv" --out "$work/kp" --run-file "$work/x.json" --quiet 2>&1 | tail -1
$py -m pipeline.cli pair --split train --keypoints "$work/kp" --run-file "$work/x.json" --out "$work/shards" | tail -1

recipe=${RECIPE:-workflows/market1501/patn.yaml}
extra=${EXTRA:-}
run() {  # gpus global_batch steps -> seconds
    local start end
    start=$(date +%s.%N)
    $py -m pgpig.cli train --gpus "$1" --shards "$work/shards" --recipe "$recipe" $extra \
        --set run_dir="$work/run-$1-$2-$3" --batch-size "$2" --steps "$3" --amp bf16 --set channels_last=true \
        --set vgg_weights=null --set allow_random_vgg=true --set sample_every=100000 --set checkpoint_every=100000 \
        --quiet > "$work/log-$1-$2-$3.txt" 2>&1 || { cat "$work/log-$1-$2-$3.txt"; exit 1; }
    end=$(date +%s.%N)
    $py -c "print($end - $start)"
}
if [ -n "${SETTINGS:-}" ]; then IFS=';' read -ra settings <<< "$SETTINGS"; else settings=("1 32" "2 32" "2 64"); fi
for setting in "${settings[@]}"; do
    set -- $setting
    short=$(run "$1" "$2" 50)
    long=$(run "$1" "$2" 250)
    tail -1 "$work/log-$1-$2-250.txt"
    $py - "$1" "$2" "$short" "$long" "$card" "$recipe" "$extra" <<'PY' | tee -a "$out/ddp.jsonl"
import json, sys
gpus, batch, short, long, card = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
recipe, extra = sys.argv[6], sys.argv[7]
steps_per_s = 200 / (long - short)
print(json.dumps({"bench": "train_ddp", "recipe": recipe, "extra": extra, "amp": "bf16",
                  "channels_last": True, "gpus": gpus, "global_batch": batch, "per_gpu_batch": batch // gpus,
                  "steps_per_s": round(steps_per_s, 2), "pairs_per_s": round(steps_per_s * batch, 1),
                  "startup_s": round(short - 50 / steps_per_s, 1), "device": card}))
PY
done
