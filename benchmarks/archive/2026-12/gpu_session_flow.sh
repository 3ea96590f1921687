#!/usr/bin/env bash
# One GPU session (a host with 1 or 2 GPUs) for the fast extraction backend, GFLA and DPTN, and multi-GPU
# scaling, as recorded in benchmarks/results/{extract,train-models,train-ddp}-<card>.jsonl:
#   bash benchmarks/archive/2026-12/gpu_session_flow.sh OUT_DIR [PARTS]
# PARTS (default "tests extract train ddp"), each independent (one failing does not stop the next):
#   tests    pytest -m gpu on the fast backend
#   extract  extract_bench.py: the fast backend vs a plain YOLO.predict loop on 20,000 JPEGs (256x176), one GPU,
#            then two (one Dask worker per GPU) when there are two
#   train    train_bench.py for GFLA (both stages) and DPTN on both data sets, float32 vs bf16, channels-last
#   ddp      `pgpig train --gpus 1|2` of GFLA's flow estimator at one global batch: steps/s, the loss curves of
#            both, and the 2-GPU run resumed on 1 GPU
set -uo pipefail
out=${1:?output folder}
parts=${2:-extract tests train ddp}
mkdir -p "$out"
py=${PYTHON:-python3}
work=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpus.txt"
ngpu=$(nvidia-smi -L | wc -l)
card=$(head -1 "$out/gpus.txt" | cut -d, -f1)
has() { [[ " $parts " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*" | tee -a "$out/session.log"; }

if has tests; then
    stamp tests
    $py -m pytest -q -m gpu -p no:cacheprovider -s -rs tests/pipeline/test_fast_backend.py > "$out/gpu-tests.log" 2>&1
    tail -3 "$out/gpu-tests.log" | tee -a "$out/session.log"
fi

if has extract; then
    stamp extract 1 GPU
    CUDA_VISIBLE_DEVICES=0 $py benchmarks/extract_bench.py --backend fast --images 20000 --batch-size 256 --partition-size 5000 \
        --label "device, 1 GPU" 2> "$out/extract1.err" | tee -a "$out/extract.jsonl"
    if [ "$ngpu" -ge 2 ]; then
        stamp extract 2 GPUs
        $py benchmarks/extract_bench.py --backend fast --images 20000 --batch-size 256 --partition-size 2500 --label "device, 2 GPUs" \
            2> "$out/extract2.err" | tee -a "$out/extract.jsonl"
    fi
fi

if has train; then
    stamp train
    for recipe in deepfashion/gfla deepfashion/gfla-stage2 market1501/gfla market1501/gfla-stage2 \
                  deepfashion/dptn market1501/dptn; do
        for layout in "" "--channels-last"; do
            CUDA_VISIBLE_DEVICES=0 $py benchmarks/train_bench.py --recipe "workflows/$recipe.yaml" --amp none,bf16 \
                --steps 20 --warmup 5 $layout 2>> "$out/train.err" | tee -a "$out/train.jsonl"
        done
    done
fi

if has ddp && [ "$ngpu" -ge 2 ]; then
    stamp ddp
    $py -m pipeline.cli synth "$work/df" --layout deepfashion --identities 60 --poses-per-identity 6 > /dev/null 2>&1
    $py -m pipeline.cli extract "$work/df" --annotations "$work/df/fashion-annotation-train.csv" \
        --annotations "$work/df/fashion-annotation-test.csv" --out "$work/kp" --run-file "$work/x.json" \
        --quiet 2>&1 | tail -1
    $py -m pipeline.cli pair --split train --keypoints "$work/kp" --run-file "$work/x.json" --out "$work/shards" \
        | tail -1
    common=(--shards "$work/shards" --recipe deepfashion/gfla --batch-size 16 --set vgg_weights=null
            --set allow_random_vgg=true --set log_every=5 --set sample_every=100000 --set num_workers=4 --quiet)
    for gpus in 1 2; do
        start=$(date +%s.%N)
        $py -m pgpig.cli train --gpus $gpus "${common[@]}" --steps 200 --set checkpoint_every=100 \
            --set run_dir="$work/run$gpus" > "$out/ddp$gpus.log" 2>&1
        end=$(date +%s.%N)
        echo "gpus $gpus: $($py -c "print(round($end - $start, 1))") s for 200 steps (start-up included)" \
            | tee -a "$out/session.log"
        tail -1 "$out/ddp$gpus.log"
    done
    # the 2-GPU run, stopped at its step-100 checkpoint, resumed on one GPU to 200
    mkdir -p "$work/resume" && cp "$work/run2/config.yaml" "$work/resume/" \
        && cp -r "$work/run2/checkpoints" "$work/resume/" && rm -rf "$work/resume/checkpoints/step-00000200" \
        && cp "$work/resume/checkpoints/step-00000100/generator.safetensors" "$work/resume/"
    $py -m pgpig.cli train --resume "$work/resume" --gpus 1 --quiet > "$out/ddp-resume.log" 2>&1
    tail -1 "$out/ddp-resume.log"
    $py benchmarks/loss_curves.py "$work/run1" "$work/run2" "$work/resume" --label "$card" | tee -a "$out/ddp.jsonl"
fi
stamp done
