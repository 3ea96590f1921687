#!/usr/bin/env bash
# Where the fast extraction backend's time goes on one or more GPUs:
#   bash benchmarks/archive/2026-12/gpu_session_fast.sh OUT_DIR [PARTS]
# PARTS (default "tests profile spy bench"):
#   tests    pytest -m gpu on the fast backend
#   profile  extract_profile.py --variants: each stage alone, and the alternatives (threaded cv2 decode, other batch
#            sizes, channels-last, a CUDA graph of the network)
#   spy      py-spy (when installed) sampling every thread of one in-process extraction of 20,000 JPEGs, as raw
#            collapsed stacks (spy.txt), to see which Python lines hold the host
#   cli      `pgpig-data extract` of 20,000 JPEGs in one process (--workers 0), timed from the shell: start-up and
#            exit included (the reader processes must stop at once)
#   startup  extract_startup.py in fresh processes, with and without CUDA graphs: what a worker's first batch costs
#   bench    extract_bench.py --backend fast on 100,000 JPEGs against a YOLO.predict loop on the first 20,000
#   scale    extract_scaling.py on a machine with several GPUs: 200,000 JPEGs with 1 and 2 workers (a GPU each), not
#            in the default parts
#   e2e      extract_cli.py: `pgpig-data extract` of E2E_IMAGES (200,000) JPEGs in fresh processes, E2E_RUNS (default
#            old:1,new:0) twice over, where "old" is .bench-old/ (make it with `git archive COMMIT pipeline schemas
#            pgpig | tar -x -C .bench-old`, and carry it); not in the default parts
#   reader   reader_bench.py on 8,000 files of the mixed crawl, 8 reader processes of 4 threads, pinned: the readers
#            resizing what they decode to its letterbox size against sending whole images; not in the default parts
#   share    extract_cli.py on SHARE_IMAGES (100,000) JPEGs of 256x176, --cpu-decode-share 0 against SHARES
#            (0.15 0.3 0.45), twice over; not in the default parts
#   mixed    extract_cli.py on MIXED_IMAGES (40,000) files of the mixed crawl, E2E_RUNS (old:0,new:0) twice over with
#            "old" as for e2e, then extract_bench.py --sizes mixed on them against a YOLO.predict loop on 4,000;
#            not in the default parts
#   prepare  extract_cli.py on MIXED_IMAGES (40,000) files of the mixed crawl at each of PREPARE_IMGSZ (256 640):
#            PREPARE_RUNS, by default the default prepare threads (2 on a GPU) against --prepare-threads 1 and 3,
#            REPEAT (2) times over; not in the default parts. (A part `warm` measured the since removed
#            --warm-shapes the same way: 1.06x at imgsz 256, 0.95x at 640, extract-h100.jsonl.)
#   mshare   extract_cli.py on MIXED_IMAGES (40,000) files of the mixed crawl: E2E_RUNS (old:0,new:0, "old" as for
#            e2e) and new:0 with each --cpu-decode-share of MSHARES (0.3 0.5), twice over; not in the default parts
#   uthreads extract_cli.py on UTHREADS_IMAGES (150,000) JPEGs of 256x176: the default two prepare threads against
#            --prepare-threads 3 and 4 (a torch JPEG decode call holds its thread until the decode is done), twice
#            over; not in the default parts
#   timeline extract_timeline.py: where one in-process run's time goes, per thread and step, on MIXED_IMAGES files
#            of the mixed crawl (imgsz 256 and 640, with the default prepare threads and one) and TIMELINE_UNIFORM
#            (150,000) files of 256x176; not in the default parts
set -uo pipefail
out=${1:?output folder}
parts=${2:-tests profile spy bench}
mkdir -p "$out"
py=${PYTHON:-python3}
has() { [[ " $parts " == *" $1 "* ]]; }
stamp() { echo "[$(date +%T)] $*" | tee -a "$out/session.log"; }
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee -a "$out/session.log"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
if has tests; then
    stamp tests
    $py -m pytest -q -m gpu -p no:cacheprovider -s -rs tests/pipeline/test_fast_backend.py > "$out/gpu-tests.log" 2>&1
    tail -3 "$out/gpu-tests.log" | tee -a "$out/session.log"
fi
if has profile; then
    stamp profile
    $py benchmarks/extract_profile.py --images 8192 --threads 4 --processes 4,8,12 --variants --label "$card" 2> "$out/profile.err" \
        | tee -a "$out/profile.jsonl"
fi
if has spy && command -v py-spy > /dev/null; then
    stamp spy
    work=$(mktemp -d)
    $py -c "import sys; sys.path[:0] = ['benchmarks', '.']; from extract_bench import make_images; from pathlib import Path
make_images(Path('$work/raw'), 20000, (256, 176))"
    py-spy record --threads --idle --nonblocking --rate 200 --format raw -o "$out/spy.txt" -- \
        $py -m pipeline.cli extract "$work/raw" --dataset folder --workers 0 --out "$work/kp" \
        --run-file "$work/x.json" --quiet >> "$out/session.log" 2>&1
    $py -c "import json; r = json.load(open('$work/x.json')); print('spy run', r['images_per_second'], 'img/s', r['task_seconds'], 's in tasks')" | tee -a "$out/session.log"
fi
if has cli; then
    stamp cli
    work=$(mktemp -d)
    $py -c "import sys; sys.path[:0] = ['benchmarks', '.']; from extract_bench import make_images; from pathlib import Path
make_images(Path('$work/raw'), 20000, (256, 176))"
    start=$(date +%s.%N)
    $py -m pipeline.cli extract "$work/raw" --dataset folder --workers 0 --out "$work/kp" --run-file "$work/x.json" \
        --quiet > "$out/cli.txt" 2>&1 &
    pid=$!
    # the run record says complete just before the command prints its summary and exits: time what follows, and
    # where py-spy is installed, dump every thread of a process still there 3 s later
    while kill -0 $pid 2> /dev/null && ! grep -q '"complete": true' "$work/x.json" 2> /dev/null; do sleep 0.1; done
    complete=$(date +%s.%N)
    sleep 3
    if kill -0 $pid 2> /dev/null && command -v py-spy > /dev/null; then
        py-spy dump --pid $pid > "$out/exit-dump.txt" 2>&1
    fi
    wait $pid
    end=$(date +%s.%N)
    tail -1 "$out/cli.txt" | tee -a "$out/session.log"
    $py -c "import json; r = json.load(open('$work/x.json')); print('cli', round($end - $start, 1), 's wall;', r['seconds'], 's in run_extract;', r['task_seconds'], 's in tasks', r['tasks'], '; exit', round($end - $complete, 2), 's after the record said complete')" | tee -a "$out/session.log"
fi
if has startup; then
    stamp startup
    for flags in "" "--no-graphs"; do
        $py benchmarks/extract_startup.py --images 4096 --processes 8 $flags --label "$card" 2>> "$out/startup.err" \
            | tee -a "$out/startup.jsonl"
    done
fi
if has bench; then
    stamp bench
    $py benchmarks/extract_bench.py --backend fast --images 100000 --baseline-images 20000 --batch-size 256 --partition-size 16384 \
        --label "$card, 1 GPU" 2> "$out/bench.err" | tee -a "$out/extract.jsonl"
fi
if has scale; then
    stamp scale
    $py benchmarks/extract_scaling.py --workers "${SCALE_WORKERS:-1,2}" --images "${SCALE_IMAGES:-200000}" \
        --label "$card, $(nvidia-smi -L | wc -l) GPUs visible" 2> "$out/scale.err" | tee -a "$out/extract.jsonl"
fi
if has e2e; then
    stamp e2e
    $py benchmarks/extract_cli.py --images "${E2E_IMAGES:-200000}" --runs "${E2E_RUNS:-old:1,new:0}" \
        --tree old=.bench-old --repeat 2 --label "$card, $(nvidia-smi -L | wc -l) GPUs visible" 2> "$out/e2e.err" \
        | tee -a "$out/extract.jsonl"
fi
if has reader; then
    stamp reader
    $py benchmarks/reader_bench.py --images 8000 --processes 8 --threads 4 --label "$card" 2> "$out/reader.err" \
        | tee -a "$out/extract.jsonl"
fi
if has share; then
    stamp share
    runs=new:0 variants=()
    for s in ${SHARES:-0.15 0.3 0.45}; do
        runs+=",new:0:s$s"
        variants+=(--variant "s$s=--cpu-decode-share $s")
    done
    $py benchmarks/extract_cli.py --images "${SHARE_IMAGES:-100000}" --runs "$runs" "${variants[@]}" --repeat 2 \
        --label "$card" 2> "$out/share.err" | tee -a "$out/extract.jsonl"
fi
if has mixed; then
    stamp mixed
    $py benchmarks/extract_cli.py --sizes mixed --images "${MIXED_IMAGES:-40000}" --runs "${E2E_RUNS:-old:0,new:0}" \
        --tree old=.bench-old --repeat 2 --label "$card" 2> "$out/mixed.err" | tee -a "$out/extract.jsonl"
    $py benchmarks/extract_bench.py --sizes mixed --images "${MIXED_IMAGES:-40000}" --baseline-images 4000 \
        --agreement-images 1000 --label "$card" 2>> "$out/mixed.err" | tee -a "$out/extract.jsonl"
fi
if has mshare; then
    stamp mshare
    runs=${E2E_RUNS:-old:0,new:0} variants=()
    for s in ${MSHARES:-0.3 0.5}; do
        runs+=",new:0:s$s"
        variants+=(--variant "s$s=--cpu-decode-share $s")
    done
    $py benchmarks/extract_cli.py --sizes mixed --images "${MIXED_IMAGES:-40000}" --runs "$runs" "${variants[@]}" \
        --tree old=.bench-old --repeat 2 --label "$card" 2> "$out/mshare.err" | tee -a "$out/extract.jsonl"
fi
if has uthreads; then
    stamp uthreads
    $py benchmarks/extract_cli.py --images "${UTHREADS_IMAGES:-150000}" --runs new:0,new:0:three,new:0:four \
        --variant three="--prepare-threads 3" --variant four="--prepare-threads 4" --repeat 2 --label "$card" \
        2> "$out/uthreads.err" | tee -a "$out/extract.jsonl"
fi
if has prepare; then
    stamp prepare
    for imgsz in ${PREPARE_IMGSZ:-256 640}; do
        $py benchmarks/extract_cli.py --sizes mixed --images "${MIXED_IMAGES:-40000}" \
            --runs "${PREPARE_RUNS:-new:0,new:0:one,new:0:three}" --variant one="--prepare-threads 1" \
            --variant three="--prepare-threads 3" \
            --extract-args "--imgsz $imgsz" --repeat "${REPEAT:-2}" --label "$card imgsz $imgsz" \
            2>> "$out/prepare.err" | tee -a "$out/extract.jsonl"
    done
fi
if has timeline; then
    stamp timeline
    for run in "256 " "256 --prepare-threads=1" "640 " "640 --prepare-threads=1"; do
        set -- $run
        $py benchmarks/extract_timeline.py --sizes mixed --images "${MIXED_IMAGES:-40000}" --imgsz "$1" \
            --extract-args="${2:-}" --label "$card" 2>> "$out/timeline.err" | tee -a "$out/extract.jsonl"
    done
    $py benchmarks/extract_timeline.py --sizes uniform --images "${TIMELINE_UNIFORM:-150000}" --label "$card" \
        2>> "$out/timeline.err" | tee -a "$out/extract.jsonl"
fi
stamp done
