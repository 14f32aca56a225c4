#!/usr/bin/env bash
# The whole bench suite with the sizes recorded in BENCHMARKS.md, one script after another
# (each starts and stops its own local Ray). Logs go to ${BENCH_LOGS:-/tmp/whisperx-bench}/.
#   bash bench/run_all.sh            (about an hour on a 2-core CPU box)
set -u
cd "$(dirname "$0")/.."
export PYANNOTE_METRICS_ENABLED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
logs=${BENCH_LOGS:-/tmp/whisperx-bench}
mkdir -p "$logs"
py=.venv/bin/python
run() {
  local name=$1
  shift
  echo "== $name: $* ($(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$py" "$@" >"$logs/$name.log" 2>&1
  echo "   exit $? ($(date -u +%T))"
}
run e2e bench/e2e_vs_whisperx.py --runs 3
run concurrency bench/concurrency.py --tasks 8 --runs 2
run reload bench/reload.py --tasks 8
run progress_latency bench/progress_latency.py --tasks 4 --watchers 1,10 --redis redis://127.0.0.1:6379/0
run polling bench/polling.py --clients 1,50 --duration 20
run cold_start bench/cold_start.py --runs 3
run memory bench/memory.py --seconds 300
run serve_batch bench/serve_batch.py --seconds 30 --concurrency 8 --rounds 3
run autoscaling bench/autoscaling.py --tasks 16 --seconds 60
