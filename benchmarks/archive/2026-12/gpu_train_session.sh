#!/usr/bin/env bash
# The trainer's GPU measurements (benchmarks/results/train-*.jsonl), as run on one GPU:
#   bash benchmarks/archive/2026-12/gpu_train_session.sh OUT_DIR
# 1. train_bench.py at both PATN paper recipes (Market-1501 128x64 batch 32, DeepFashion 256x176 batch 7), AMP off/bf16/fp16,
#    and bf16 with channels-last;
# 2. the DeepFashion-recipe data loader on a 256x256 mannequin shard set (benchmarks/mannequin_shards.py:
#    synth -> extract --annotations -> pair, by the helper the tests use);
# 3. `pgpig train` end to end on the GPU (Market mannequins, demo sizes, bf16) and `pgpig generate` from its run.
set -euo pipefail
out=${1:?output folder}
mkdir -p "$out"
work=$(mktemp -d)
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt" || true

$py benchmarks/train_bench.py --recipe workflows/market1501/patn.yaml --amp none,bf16,fp16 --steps 40 | tee -a "$out/train.jsonl"
$py benchmarks/train_bench.py --recipe workflows/market1501/patn.yaml --amp none,bf16 --channels-last --steps 40 | tee -a "$out/train.jsonl"

$py benchmarks/mannequin_shards.py "$work/df" deepfashion 150 8 > /dev/null
$py benchmarks/train_bench.py --recipe workflows/deepfashion/patn.yaml --amp none,bf16,fp16 --steps 40 \
    --shards "$work/df/shards" | tee -a "$out/train.jsonl"
$py benchmarks/train_bench.py --recipe workflows/deepfashion/patn.yaml --amp none,bf16 --channels-last --steps 40 | tee -a "$out/train.jsonl"

# end to end on the GPU
$py benchmarks/mannequin_shards.py "$work/mk" market 20 8 > /dev/null
$py -m pgpig.cli train --shards "$work/mk/shards" --recipe workflows/demo.yaml --run "$work/run" --amp bf16 \
    --set vgg_weights=null --set allow_random_vgg=true --set steps=300 --quiet 2>&1 | tail -2 | tee "$out/e2e.txt"
src=$(find "$work/mk/raw" -name '*.jpg' | sort | sed -n 1p)
tgt=$(find "$work/mk/raw" -name '*.jpg' | sort | sed -n '$p')
$py -m pgpig.cli generate --run "$work/run" --source "$src" --target-pose "$tgt" --out "$out/generated.png" --grid \
    2>&1 | tail -3 | tee -a "$out/e2e.txt"
cp "$work"/run/samples/*.png "$out/" 2>/dev/null || true
