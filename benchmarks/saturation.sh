#!/usr/bin/env bash
# Saturation throughput only, wes-proxy beside Pingora alone and Pingora reading the body before
# it chooses (`bare-pingora --read-body`, what any model router must do), in back-to-back
# pairs: the quick A/B for a hot-path change. On a shared machine one run says little; the
# script repeats the comparison and prints each run's ratios.
# Usage: benchmarks/saturation.sh [RUNS] [SECONDS per target] > result.md
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
runs=${1:-3}
seconds=${2:-5}
scripts/ensure-tools.sh
cargo build --release --locked -p wes-proxy -p wes-reporter -p wes-bench -q
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
model=llama3.2:3b

start_bench_fleet
start_bare_pingora pingora
plain_port=$pingora_port
plain_pid=$pingora_pid
start_bare_pingora pingora-read-body --read-body

machine_header
echo
for run in $(seq "$runs"); do
  echo "## Run $run of $runs"
  echo
  "$bin/wes-bench" latency --model "$model" --target "direct=http://$node" \
    --target "wes-proxy=http://127.0.0.1:$api_port@$proxy_pid" \
    --target "pingora=http://127.0.0.1:$plain_port@$plain_pid" \
    --target "pingora-read-body=http://127.0.0.1:$pingora_port@$pingora_pid" \
    --rounds 0 --warmup 1s --saturation "${seconds}s" --streams 0 2>/dev/null |
    sed -n '/^### Throughput at saturation/,/^### Proxy process/p' | sed '$d'
done
load_footer
