#!/usr/bin/env bash
# The full training step of the four DeepFashion generators at batch 32 (the side-by-side bench's batch) under each
# arithmetic, to choose the recipes' GPU settings: train_bench.py with float32 without TF32 (fp32) as the baseline
# every cosine is taken against.
#   bash benchmarks/archive/2026-12/gpu_step_speed.sh OUT_DIR [PARTS]
# PARTS (default "eager"): eager (every recipe, eager modes), compile (COMPILE_RECIPES, each in its own process
# with COMPILE_MODES_<model>, under COMPILE_LIMIT seconds), official (official_bench.py, recipe mode against the
# official float32 step, OFFICIAL_MODELS, with OFFICIAL_SET_<model> --set overrides: the candidate settings the
# eager/compile parts picked; OFFICIAL_BATCH, default 32), graph-tests (pytest -m gpu: the cuda_graph tests), pidm (PIDM: official_bench full in PIDM_OFFICIAL_MODES and sample in
# PIDM_SAMPLE_MODES at batch 8, train_bench's PIDM_MODES with their gradient cosines), pidm-run (mannequin runs of PIDM_STEPS steps at batch 32 with eval, one per
# PIDM_PREDICTIONS; see the part), attention (attention_bench.py: XingGAN's cross attention alone, the model's bmm
# against fused SDPA kernels), graph (step_graph_bench.py: the whole step of GRAPH_RECIPES at their paper batch as one
# CUDA graph against eager), profile (step_profile.py with a Chrome trace in OUT/traces for each
# RECIPE[:KEY=VALUE,...] of PROFILE_RUNS at BATCH: the recipe's setting with those overrides), modes (train_bench.py
# for each RECIPE:MODES of MODES_RUNS at BATCH, in the checkout or, with TREE=PATH, in another package tree such as a
# `git archive` of an older commit; the line's "tree" says which). official and pidm need official/<model>
# (git-ignored exports of the official repositories, carried to the device).
set -uo pipefail
out=${1:?output folder}
parts=${2:-eager}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
has() { [[ " $parts " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*" | tee -a "$out/session.log"; }
bench() {  # RECIPE MODES [TIMEOUT]
    (cd "${TREE:-.}" && timeout "${3:-900}" $py benchmarks/train_bench.py --recipe "workflows/deepfashion/$1.yaml" \
        --batch-size "${BATCH:-32}" --modes "$2" --steps "${STEPS:-8}" --warmup 2 --min-seconds "${MIN_SECONDS:-2}") \
        2>> "$out/bench.err" | sed "s|^{|{\"tree\": \"${TREE:-.}\", |" | tee -a "$out/train.jsonl"
}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$out/session.log"
if has eager; then
    stamp eager
    bench patn fp32,none,none+tf32,fp16,fp16+tf32,bf16,bf16+fused,none+cl+tf32
    bench dptn fp32,none,bf16,bf16+fused,bf16+tf32,fp16,bf16+cl,fp16+cl
    bench gfla-stage2 fp32,none,none+fused,none+tf32,none+cl+tf32,fp16
    bench xinggan fp32,none,none+tf32,fp16,bf16,bf16+fused
fi
if has compile; then
    stamp compile
    # spectrally normalised discriminators (DPTN, GFLA) break the graph at every convolution: +compileg compiles
    # the generator alone
    : "${COMPILE_MODES_dptn:=bf16,bf16+compile,bf16+compileg}" "${COMPILE_MODES_gfla_stage2:=none,none+compile,none+compileg}"
    for r in ${COMPILE_RECIPES:-patn dptn}; do
        var="COMPILE_MODES_${r//-/_}"
        bench "$r" "${!var:-fp32,bf16+compile}" "${COMPILE_LIMIT:-330}" || stamp "compile $r: exit $?"
    done
fi
if has modes; then
    stamp "modes at batch ${BATCH:-32} in ${TREE:-.}"
    for run in ${MODES_RUNS:-patn:bf16,bf16+cl xinggan:bf16,bf16+cl dptn:bf16,bf16+cl gfla-stage2:none,none+cl,bf16,bf16+cl}; do
        bench "${run%%:*}" "${run#*:}" "${MODES_LIMIT:-300}" || stamp "modes $run: exit $?"
    done
fi
if has attention; then
    stamp attention
    timeout 300 $py benchmarks/attention_bench.py --label "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
        2>> "$out/attention.err" | tee -a "$out/train.jsonl"
fi
if has profile; then
    stamp "profile at batch ${BATCH:-32}"
    for run in ${PROFILE_RUNS:-deepfashion/dptn deepfashion/gfla-stage2:amp=bf16,compile=true}; do
        sets=()
        if [[ $run == *:* ]]; then
            IFS=, read -ra kvs <<< "${run#*:}"
            for kv in "${kvs[@]}"; do sets+=(--set "$kv"); done
        fi
        timeout "${PROFILE_LIMIT:-300}" $py benchmarks/step_profile.py --recipe "${run%%:*}" --batch "${BATCH:-32}" \
            "${sets[@]}" --trace "$out/traces" --label "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
            2>> "$out/profile.err" | tee -a "$out/train.jsonl" || stamp "profile $run: exit $?"
    done
fi
if has graph; then
    stamp graph
    recipes=()
    for r in ${GRAPH_RECIPES:-patn gfla-stage2 dptn xinggan}; do recipes+=(--recipe "workflows/deepfashion/$r.yaml"); done
    timeout "${GRAPH_LIMIT:-500}" $py benchmarks/step_graph_bench.py "${recipes[@]}" --label "$(nvidia-smi \
        --query-gpu=name --format=csv,noheader | head -1)" 2>> "$out/graph.err" | tee -a "$out/train.jsonl"
fi
if has graph-tests; then
    stamp graph-tests
    timeout "${GRAPH_TESTS_LIMIT:-300}" $py -m pytest -q -m gpu -k cuda_graph tests/pgpig/test_train_gpu.py -p no:cacheprovider \
        2>&1 | tail -30 | tee -a "$out/session.log"
fi
if has official; then
    stamp official
    for m in ${OFFICIAL_MODELS:-patn xinggan dptn gfla}; do
        var="OFFICIAL_SET_${m}"
        sets=()
        for kv in ${!var:-}; do sets+=(--set "$kv"); done
        timeout "${OFFICIAL_LIMIT:-420}" $py benchmarks/official_bench.py --official-repo "official/$m" --model "$m" \
            --device cuda --batch "${OFFICIAL_BATCH:-32}" --rounds 3 --steps 5 --warmup 3 --modes recipe --kinds full "${sets[@]}" \
            --out "$out/official.jsonl" 2>> "$out/official.err" | tail -1 || stamp "official $m: exit $?"
    done
fi
if has pidm; then
    stamp pidm
    $py benchmarks/official_bench.py --official-repo official/pidm --model pidm --device cuda --batch 8 \
        --kinds full --modes "${PIDM_OFFICIAL_MODES:-fp32,bf16}" --rounds 3 --steps 5 --warmup 2 \
        --out "$out/official.jsonl" 2>> "$out/pidm.err" | tail -1
    $py benchmarks/official_bench.py --official-repo official/pidm --model pidm --device cuda --batch 8 \
        --kinds sample --modes "${PIDM_SAMPLE_MODES:-fp32,strict}" --rounds 2 --steps 1 --warmup 1 \
        --out "$out/official.jsonl" 2>> "$out/pidm.err" | tail -1
    BATCH=8 bench pidm "${PIDM_MODES:-fp32,none,none+tf32,bf16,fp16}" "${PIDM_BENCH_LIMIT:-600}"
fi
if has pidm-run; then
    # mannequin runs at PIDM_SIZE with PIDM_SET's --set overrides, each stopped by Ctrl-C (a checkpoint) after
    # PIDM_TRAIN_LIMIT seconds if set, or for velocity with PIDM_KILL_AFTER killed (SIGKILL) after that many seconds
    # and resumed; then each run is evaluated on the test pairs. The progress bars (rates) go to pidm.err
    stamp pidm-run
    work=${PIDM_WORK:-/tmp/pidm-gpu}
    $py benchmarks/mannequin_shards.py "$work" deepfashion 40 6 "${PIDM_SIZE:-128x128}" > /dev/null
    sets=()
    for kv in ${PIDM_SET:-}; do sets+=(--set "$kv"); done
    for prediction in ${PIDM_PREDICTIONS:-velocity noise}; do
        run="$work/run-$prediction"
        t0=$(date +%s.%N)
        train=($py -m pgpig.cli train --shards "$work/shards" --recipe workflows/deepfashion/pidm.yaml --run "$run"
               --steps "${PIDM_STEPS:-3000}" --batch-size 32 --set prediction="$prediction" "${sets[@]}")
        if [[ $prediction == velocity && -n ${PIDM_KILL_AFTER:-} ]]; then
            timeout -s KILL "$PIDM_KILL_AFTER" "${train[@]}" 2>> "$out/pidm.err"
            stamp "killed after $PIDM_KILL_AFTER s (exit $?): $(ls "$run/checkpoints" | tr '\n' ' ')"
            $py -m pgpig.cli train --resume "$run" --quiet 2>> "$out/pidm.err" | tee -a "$out/session.log"
        else
            timeout -s INT "${PIDM_TRAIN_LIMIT:-0}" "${train[@]}" 2>> "$out/pidm.err" | tee -a "$out/session.log"
        fi
        stamp "train $prediction: $(python3 -c "import time; print(round(time.time() - $t0, 1))") s"
        t0=$(date +%s.%N)
        $py -m pgpig.cli eval --run "$run" --shards "$work/shards" --metrics ssim,mask_ssim,l1,pckh --quiet \
            2>> "$out/pidm.err" | tee "$out/pidm-eval-$prediction.md"
        stamp "eval $prediction: $(python3 -c "import time; print(round(time.time() - $t0, 1))") s"
        cp "$run/eval/test/eval.json" "$out/pidm-eval-$prediction.json" 2>/dev/null
    done
fi
stamp done
