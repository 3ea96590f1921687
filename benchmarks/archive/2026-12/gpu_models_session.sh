#!/usr/bin/env bash
# The generators' GPU measurements (benchmarks/results/train-models-*.jsonl), as run on one GPU:
#   bash benchmarks/archive/2026-12/gpu_models_session.sh OUT_DIR
# 1. train_bench.py for every generator recipe (full step: G + D + all losses), AMP off/bf16, and bf16 with
#    channels-last;
# 2. the generator-only step (forward, L1, backward, Adam; no D, no VGG) at the DeepFashion size and batch 32, to
#    compare with the official code's images/s on one H100;
# 3. `pgpig eval` on the GPU after a short GPU run on mannequins (timings only: LPIPS/FID weights are offline).
set -euo pipefail
out=${1:?output folder}
mkdir -p "$out"
work=$(mktemp -d)
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt" || true
bench() { $py benchmarks/train_bench.py --steps 30 --warmup 5 "$@" | tee -a "$out/train.jsonl"; }

for recipe in market1501/xinggan deepfashion/xinggan market1501/pg2 deepfashion/pg2 market1501/pg2-stage2 \
              deepfashion/pg2-stage2; do
    bench --recipe "workflows/$recipe.yaml" --amp none,bf16
    bench --recipe "workflows/$recipe.yaml" --amp none,bf16 --channels-last
done
# generator step only, DeepFashion 256x176, batch 32 (official PATN 160 -> 261, XingGAN 56 -> 89 img/s)
for model in patn xinggan; do
    bench --recipe "workflows/deepfashion/$model.yaml" --amp none,bf16 --batch-size 32 \
        --set use_gan=false --set lambda_perceptual=0
    bench --recipe "workflows/deepfashion/$model.yaml" --amp none,bf16 --batch-size 32 --channels-last \
        --set use_gan=false --set lambda_perceptual=0
done

# eval on the GPU: a short demo-recipe run on Market mannequins, then every test pair scored
$py -m pipeline.cli synth "$work/mk" --identities 60 > /dev/null
$py -m pipeline.cli extract "$work/mk" --annotations "$work/mk/market-annotation-train.csv" \
    --annotations "$work/mk/market-annotation-test.csv" --out "$work/mk-kp" --run-file "$work/mk.json" --quiet 2>&1 | tail -1
for split in train test; do
    $py -m pipeline.cli pair --split $split --keypoints "$work/mk-kp" --run-file "$work/mk.json" --out "$work/shards" > /dev/null
done
$py -m pgpig.cli train --shards "$work/shards" --recipe demo --run "$work/run" --amp bf16 --steps 300 --quiet 2>&1 \
    | tail -1 | tee "$out/eval-run.txt"
start=$(date +%s%N)
$py -m pgpig.cli eval --run "$work/run" --shards "$work/shards" --split test --quiet > "$out/eval.md" 2> "$out/eval.err"
echo "eval ms: $(( ($(date +%s%N) - start) / 1000000 ))" | tee -a "$out/eval-run.txt"
cp "$work/run/eval/test/eval.json" "$out/" 2>/dev/null || true
