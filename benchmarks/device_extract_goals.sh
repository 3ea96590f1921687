#!/usr/bin/env bash
# The fast-extraction goals in one GPU-machine call: the mixed crawl (40,000 files, imgsz 256) and 150,000 uniform
# files of 256x176, each timed from the shell against a YOLO.predict loop in the same run (extract_bench.py), then
# where each run's time goes (extract_timeline.py: the start-up's chain and the first task's slow calls; the crawl
# also with the made files' write-back left pending, --no-sync), and on a GPU what 15 input shapes cost with their
# set-up on 0, 4 and 8 threads (shape_cost.py, the backend's ShapeWarmer). About 6-7 minutes on an H100. Run from the checkout's root, with the wheels of benchmarks/device_wheels.sh in WHEELS:
#   bash benchmarks/device_extract_goals.sh [OUT_DIR]
# JSON lines go to OUT_DIR (default $OUT, else ./goals-out), one file per benchmark (8), the logs to LOGS
# (default /tmp/goals-logs); a summary goes to stdout.
# Smaller runs for a try on any machine: MIXED=200 UNIFORM=300 BASELINE=50 AGREEMENT=20 bash ...
# GOALS_ONLY=1 leaves out the --no-sync timeline and the shape costs (about 2 minutes less).
set -uo pipefail
out=${1:-${OUT:-goals-out}}
wheels=${WHEELS:-.whl}
mixed=${MIXED:-40000} uniform=${UNIFORM:-150000} baseline=${BASELINE:-6000} agreement=${AGREEMENT:-2000}
mkdir -p "$out"
if [ -d "$wheels" ] && ! python3 -c "import ultralytics, dask" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl >/dev/null 2>&1 || { echo "could not install the wheels of $wheels" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
fi
export YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
label="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(nproc) cores"
echo "machine: $label"
# pyarrow imports pandas on its first conversion where it is installed (docs/fast-backend.md, part files)
python3 -c "import pandas, sys; print('pandas', pandas.__version__)" 2>/dev/null || echo "pandas: not installed"
logs=${LOGS:-/tmp/goals-logs}  # the logs stay on the machine: the device sends back 8 files, the JSON lines' count
mkdir -p "$logs"
run() {  # NAME TIMEOUT COMMAND...: the command's JSON lines to OUT_DIR/NAME.jsonl, its log to LOGS/NAME.err
    local name=$1 limit=$2 code
    shift 2
    # past its time a command gets SIGABRT, on which Python's fault handler writes every thread's stack to the log
    PYTHONFAULTHANDLER=1 timeout -s ABRT -k 10 "$limit" "$@" --label "$label" >"$out/$name.jsonl" 2>"$logs/$name.err"
    code=$?
    echo "$name: exit $code"
    [ "$code" -eq 0 ] && return
    if [ "$code" -eq 124 ]; then  # where it was: the stacks without the thread pools' own frames, what still runs
        grep -v -e '/threading.py' -e '/concurrent/futures/' "$logs/$name.err" | tail -60
        ps -eo pid,etimes,pcpu,rss,args --sort=-pcpu | grep -e 'PID' -e python | grep -v grep | cut -c1-200 | head -12
    else
        tail -5 "$logs/$name.err"
    fi
}
run bench-mixed 240 python3 benchmarks/extract_bench.py --sizes mixed --images "$mixed" \
    --baseline-images "$baseline" --agreement-images "$agreement"
run bench-uniform 200 python3 benchmarks/extract_bench.py --sizes uniform --size 256x176 --images "$uniform" \
    --baseline-images "$baseline" --agreement-images "$((agreement / 4))"
run timeline-uniform 120 python3 benchmarks/extract_timeline.py --sizes uniform --size 256x176 --images "$uniform"
run timeline-mixed 120 python3 benchmarks/extract_timeline.py --sizes mixed --images "$mixed"
# the same with the made files' write-back left pending: does the run's first part-file fsync wait for it?
goals_only=${GOALS_ONLY:-0}
[ "$goals_only" = 1 ] ||
    run timeline-mixed-nosync 120 python3 benchmarks/extract_timeline.py --sizes mixed --images "$mixed" --no-sync
# what the crawl's 15 input shapes cost, their set-up on 0, 4, 8 threads
if [ "$goals_only" != 1 ] && command -v nvidia-smi >/dev/null; then
    for k in 0 4 8; do run "shape-cost-$k" 90 python3 benchmarks/shape_cost.py --shapes 15 --warm-threads "$k"; done
fi
python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
for name in ("bench-mixed", "bench-uniform"):
    for line in (out / f"{name}.jsonl").read_text().splitlines():
        d = json.loads(line)
        a = d.get("agreement") or {}
        print(f"{name}: {d.get('pipeline_images_per_s')} img/s from the shell, "
              f"{d.get('pipeline_images_per_s_after_first_task')} after the first tasks, predict "
              f"{d.get('predict_images_per_s')} ({d.get('ratio_pipeline_to_predict')}x); keypoints "
              f"{a.get('keypoint_diff_mean_px')} px mean, person found {a.get('person_found_agreement')}")
for k in (0, 4, 8):
    path = out / f"shape-cost-{k}.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        d = json.loads(line)
        print(f"shape-cost, {k} warm threads: parallel warm {d['parallel_warm_seconds']} s, then on this thread "
              f"first eager calls {sum(r['first_eager'] for r in d['shapes'] if 'first_eager' in r):.2f} s in all, "
              f"median after the first shape {d['median_after_first']}")
for name in ("timeline-uniform", "timeline-mixed", "timeline-mixed-nosync"):
    path = out / f"{name}.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        d = json.loads(line)
        print(f"{name}: {d['images_per_s_in_process']} img/s in the process; record {d['record']}")
        slow = [c for c in d["first_calls"] if c[3] >= 0.1]
        print("  first calls of 0.1 s or more (start s, thread, step, s):")
        for call in slow:
            print("   ", call)
        print("  longest calls of 0.3 s or more (thread, step, s, started at s):")
        for thread, steps in d["threads"].items():
            for step, v in steps.items():
                if v["ms_max"] >= 300:
                    print("   ", [thread, step, round(v["ms_max"] / 1e3, 3), v.get("longest_at_s")])
EOF
