#!/usr/bin/env bash
# The trainer's speed settings per generator on one GPU, from which the recipes'
# GPU defaults (amp/channels_last/compile: auto) were chosen:
#   bash benchmarks/archive/2026-12/gpu_train_defaults.sh OUT_DIR [PARTS] [SHARDS_ROOT]
# PARTS (default "eager compile loader"):
#   eager    train_bench.py over every shipped recipe at its paper batch size: float32, bf16, bf16 + channels-last,
#            float32 + channels-last (the first is the baseline; each recipe ends with its train_pick line)
#   compile  the same with torch.compile, per recipe: COMPILE_MODES (default "bf16,bf16+compile"), each recipe in
#            its own process under a time limit, COMPILE_LIMIT seconds (default 330: XingGAN DeepFashion's two
#            compiles took 163 s on an H200; a compile that does not finish is a result too)
#   loader   the data loader against the recipe's default training mode (train_bench --shards) on Market-1501 and
#            DeepFashion mannequin shard sets (SHARDS_ROOT/mk-shards, SHARDS_ROOT/df-shards), and `pgpig train`
#            itself on the Market set for 60 and 360 steps: the difference of the two wall times is the real
#            loop's steps/s, with the GPU's utilisation sampled by nvidia-smi during the long run
#   profile  loop_profile.py (needs py-spy): where `pgpig train`'s main thread spends 600 steps of that recipe
#            (the step itself, the batch's preparation, waiting for the loader, logging), not in the default parts
#   sync     sync_points.py: where `pgpig train` makes the host wait for the GPU, for the Market-1501 recipes of
#            stage 1 (SYNC_RECIPES) on SHARDS_ROOT/mk-shards, not in the default parts
# SHARDS_ROOT (default .bench-data) gets mk-shards (160 Market mannequin images) and df-shards (48 DeepFashion ones,
# 256x256) where they are missing, made on the CPU in seconds by benchmarks/mannequin_shards.py (pipeline.synthetic's
# helper: synth, extract from the annotations, pair); made once, they can be copied to the GPU machine.
set -uo pipefail
out=${1:?output folder}
parts=${2:-eager compile loader}
shards=${3:-.bench-data}
mkdir -p "$out"
py=${PYTHON:-python3}
has() { [[ " $parts " == *" $1 "* ]]; }
make_shards() {  # NAME LAYOUT IDENTITIES POSES: SHARDS_ROOT/NAME-shards (train, test), unless it is there
    local work="$shards/$1-work"
    [[ -f "$shards/$1-shards/train/manifest.json" ]] && return
    if ! $py benchmarks/mannequin_shards.py "$work" "$2" "$3" "$4" > /dev/null; then
        echo "could not make $shards/$1-shards" >&2
        exit 1
    fi
    rm -rf "$shards/$1-shards" && mv "$work/shards" "$shards/$1-shards" && rm -rf "$work"
}
make_shards mk market 20 8
make_shards df deepfashion 8 6
stamp() { echo "[$(date +%T)] $*" | tee -a "$out/session.log"; }
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$out/session.log"
recipes=${RECIPES:-"market1501/pg2 market1501/pg2-stage2 market1501/patn market1501/xinggan market1501/gfla
    market1501/gfla-stage2 market1501/dptn deepfashion/pg2 deepfashion/pg2-stage2 deepfashion/patn
    deepfashion/xinggan deepfashion/gfla deepfashion/gfla-stage2 deepfashion/dptn"}
if has eager; then
    stamp eager
    args=()
    for r in $recipes; do args+=(--recipe "workflows/$r.yaml"); done
    $py benchmarks/train_bench.py "${args[@]}" --modes none,bf16,bf16+cl,none+cl --steps "${STEPS:-15}" \
        --warmup 3 --min-seconds "${MIN_SECONDS:-3}" 2>> "$out/eager.err" | tee -a "$out/train.jsonl"
fi
if has compile; then
    stamp compile
    for r in $recipes; do
        timeout "${COMPILE_LIMIT:-330}" $py benchmarks/train_bench.py --recipe "workflows/$r.yaml" \
            --modes "${COMPILE_MODES:-bf16,bf16+compile}" --steps "${STEPS:-15}" --warmup 3 \
            2>> "$out/compile.err" | tee -a "$out/train.jsonl" || stamp "compile $r: exit $?"
    done
fi
if has loader; then
    stamp loader
    # each at its recipe's GPU default (the eager part's pick)
    $py benchmarks/train_bench.py --recipe workflows/market1501/pg2.yaml --modes bf16+cl \
        --shards "$shards/mk-shards" 2>> "$out/loader.err" | tee -a "$out/train.jsonl"
    $py benchmarks/train_bench.py --recipe workflows/deepfashion/patn.yaml --modes none \
        --shards "$shards/df-shards" 2>> "$out/loader.err" | tee -a "$out/train.jsonl"
    for steps in 60 360; do
        [[ $steps == 360 ]] && { nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 \
            > "$out/util.txt" & smi=$!; }
        start=$(date +%s.%N)
        $py -m pgpig.cli train --shards "$shards/mk-shards" --recipe market1501/pg2 --run "$(mktemp -d)/run" \
            --steps $steps --set vgg_weights=null --set allow_random_vgg=true --set sample_every=100000 \
            --set checkpoint_every=100000 --quiet 2>&1 | tail -1 | tee -a "$out/session.log"
        end=$(date +%s.%N)
        echo "$steps $start $end" >> "$out/loop.txt"
        [[ $steps == 360 ]] && kill $smi
    done
    $py - "$out" <<'PY' | tee -a "$out/train.jsonl"
import json, sys
out = sys.argv[1]
(s1, a1, b1), (s2, a2, b2) = [line.split() for line in open(f"{out}/loop.txt")][-2:]
util = [float(v) for v in open(f"{out}/util.txt").read().split() if v.replace(".", "").isdigit()]
steps, seconds = int(s2) - int(s1), (float(b2) - float(a2)) - (float(b1) - float(a1))
print(json.dumps({"bench": "train_loop", "recipe": "workflows/market1501/pg2.yaml", "shards": "mannequin market",
                  "steps_per_s": round(steps / seconds, 2), "pairs_per_s": round(16 * steps / seconds, 1),
                  "wall_seconds": [round(float(b1) - float(a1), 1), round(float(b2) - float(a2), 1)],
                  "gpu_util_mean": round(sum(util) / len(util), 1) if util else None,
                  "gpu_util_samples": len(util), "method": "pgpig train --steps 360 minus --steps 60, wall clock"}))
PY
fi
if has profile; then
    stamp profile
    $py benchmarks/loop_profile.py --label "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" -- \
        --shards "$shards/mk-shards" --recipe market1501/pg2 --run "$(mktemp -d)/run" --steps 600 \
        --set vgg_weights=null --set allow_random_vgg=true --set sample_every=100000 --set checkpoint_every=100000 \
        --quiet 2>> "$out/profile.err" | tee -a "$out/train.jsonl"
fi
if has sync; then
    stamp sync
    args=()
    for r in ${SYNC_RECIPES:-market1501/pg2 market1501/patn market1501/xinggan market1501/gfla market1501/dptn}; do
        args+=(--recipe "$r")
    done
    $py benchmarks/sync_points.py --shards "$shards/mk-shards" "${args[@]}" --steps "${SYNC_STEPS:-30}" \
        --set vgg_weights=null --set allow_random_vgg=true --label "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
        2>> "$out/sync.err" | tee -a "$out/train.jsonl"
fi
stamp done
