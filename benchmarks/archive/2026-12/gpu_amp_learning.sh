#!/usr/bin/env bash
# Does bf16 train like float32? `pgpig train` runs of a DeepFashion recipe on a mannequin shard set, from the same
# weights and data order, compared as training goes (benchmarks/loss_curves.py) and evaluated at the end:
#   bash benchmarks/archive/2026-12/gpu_amp_learning.sh OUT_DIR [RECIPES]
# For each recipe of RECIPES (default "patn xinggan"), the runs of RUNS (default "a b bf16 seed1"): "a" and "b" in the
# recipe's float32 with seed 0 (run to run, the same settings differ only by cuDNN's non-deterministic kernels: the
# noise float32 training already has), "bf16" with seed 0, "seed1" in float32 with seed 1 (another start: the spread a
# change of seed gives), "bf16c", bf16 with torch.compile and seed 0, and "graph", float32 with seed 0 replayed from
# a CUDA graph (cuda_graph: true), and "bf16cg", bf16 with compile, TF32, channels-last and the CUDA graph (the
# fastest setting measured). Each runs STEPS (default 500) at
# BATCH_<recipe> (default the recipe's), eagerly but for bf16c, bf16cg and graph (the arithmetic, not its speed, is compared), logging
# the losses every LOG_EVERY (5) steps; loss_curves.py compares the other runs with the first of RUNS, and
# `pgpig eval` scores every run's generator on the test pairs (SSIM, mask-SSIM, L1, PCKh). A second-stage recipe
# starts every run from INIT_WEIGHTS_<recipe> (a stage-1 run folder; with STAGE1_<recipe> set to the stage-1 recipe
# and no such folder, one is trained first: STAGE1_STEPS steps in float32).
set -uo pipefail
out=${1:?output folder}
recipes=${2:-patn xinggan}
mkdir -p "$out"
py=${PYTHON:-python3}
work=${AMP_WORK:-/tmp/amp-learning}
stamp() { echo "[$(date +%T)] $*" | tee -a "$out/session.log"; }
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
stamp "card ${card:-none}"
[[ -d $work/shards ]] || $py benchmarks/mannequin_shards.py "$work" deepfashion "${IDENTITIES:-40}" "${POSES:-6}" \
    > /dev/null 2>> "$out/amp.err"
for recipe in $recipes; do
    var="BATCH_${recipe//-/_}"
    batch=()
    [[ -n ${!var:-} ]] && batch=(--batch-size "${!var}")
    var="INIT_WEIGHTS_${recipe//-/_}" stage1="STAGE1_${recipe//-/_}"
    init=()
    if [[ -n ${!var:-} ]]; then
        init=(--init-weights "${!var}")
        if [[ -n ${!stage1:-} && ! -d ${!var} ]]; then
            $py -m pgpig.cli train --shards "$work/shards" --recipe "deepfashion/${!stage1}" --run "${!var}" \
                --steps "${STAGE1_STEPS:-200}" --set compile=false --set amp=none --set seed=0 --set vgg_weights=null \
                --set allow_random_vgg=true --set sample_every=1000000 --set checkpoint_every=1000000 \
                --set num_workers=4 --set skip_memory_check=true --quiet >> "$out/amp.err" 2>&1 || stamp "stage 1 $recipe: exit $?"
            stamp "stage 1 ${!stage1} for $recipe: ${STAGE1_STEPS:-200} steps"
        fi
    fi
    read -ra runs <<< "${RUNS:-a b bf16 seed1}"
    for run in "${runs[@]}"; do
        case $run in
            a | b) sets=(--set compile=false --set amp=none --set seed=0) ;;
            bf16) sets=(--set compile=false --set amp=bf16 --set seed=0) ;;
            bf16c) sets=(--set compile=true --set amp=bf16 --set seed=0) ;;
            bf16cg) sets=(--set compile=true --set amp=bf16 --set tf32=true --set channels_last=true
                          --set cuda_graph=true --set seed=0) ;;
            seed1) sets=(--set compile=false --set amp=none --set seed=1) ;;
            graph) sets=(--set compile=false --set amp=none --set seed=0 --set cuda_graph=true) ;;
            *) stamp "unknown run $run (RUNS takes a, b, bf16, bf16c, bf16cg, seed1, graph)"; exit 2 ;;
        esac
        dir="$work/$recipe-$run"
        rm -rf "$dir"
        t0=$(date +%s.%N)
        $py -m pgpig.cli train --shards "$work/shards" --recipe "deepfashion/$recipe" --run "$dir" \
            --steps "${STEPS:-500}" "${batch[@]}" "${init[@]}" "${sets[@]}" --set vgg_weights=null --set allow_random_vgg=true \
            --set log_every="${LOG_EVERY:-5}" --set sample_every=1000000 --set checkpoint_every=1000000 \
            --set num_workers=4 --set skip_memory_check=true --quiet >> "$out/amp.err" 2>&1 || stamp "train $recipe $run: exit $?"
        stamp "train $recipe $run: $($py -c "import time; print(round(time.time() - $t0, 1))") s"
        $py -m pgpig.cli eval --run "$dir" --shards "$work/shards" --metrics ssim,mask_ssim,l1,pckh --quiet \
            >> "$out/amp.err" 2>&1 || stamp "eval $recipe $run: exit $?"
        $py -c "import json, sys; rows = json.load(open(sys.argv[1]))['rows']; print(json.dumps({'bench': \
'amp_learning_eval', 'recipe': sys.argv[2], 'run': sys.argv[3], 'card': sys.argv[4], 'steps': int(sys.argv[5]), \
**{row: {k: round(v[k], 4) for k in ('ssim', 'mask_ssim', 'l1', 'pckh')} for row, v in rows.items()}}))" \
            "$dir/eval/test/eval.json" "$recipe" "$run" "$card" "${STEPS:-500}" 2>> "$out/amp.err" | tee -a "$out/amp.jsonl"
    done
    $py benchmarks/loss_curves.py "${runs[@]/#/"$work/$recipe-"}" \
        --label "$card $recipe" 2>> "$out/amp.err" | tee -a "$out/amp.jsonl"
done
stamp done
