#!/usr/bin/env bash
# Saturation throughput only, wes-proxy beside Pingora alone and Pingora reading the body before
# it chooses (`bare-pingora --read-body`, what any model router must do), in back-to-back
# pairs: the quick A/B for a hot-path change. On a shared machine the background load drifts
# by tens of percent within a minute, so the targets take turns in short slices and each ratio
# is the median of same-slice ratios; the script can also repeat the whole comparison.
# Usage: benchmarks/saturation.sh [RUNS] [SECONDS per target] [SLICES] > result.md
# WES_PROXY_B=/path/to/another/wes-proxy adds that build as a target `wes-proxy-b`, so that a
# change is measured against the build before it in the same run (copy the old binary aside
# before rebuilding).
# WES_BENCH_NODE_HOST=localhost configures wes-proxy's node by host name instead of its IP
# (Pingora alone always gets the IP).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
runs=${1:-1}
seconds=${2:-12}
slices=${3:-6}
scripts/ensure-tools.sh
cargo build --release --locked -p wes-proxy -p wes-reporter -p wes-bench -q
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
model=llama3.2:3b

start_bench_fleet
main_port=$api_port
main_pid=$proxy_pid
b_target=()
if [ -n "${WES_PROXY_B:-}" ]; then
  start_bench_proxy wes-proxy-b "$WES_PROXY_B"
  b_target=(--target "wes-proxy-b=http://127.0.0.1:$api_port@$proxy_pid")
fi
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
    --target "wes-proxy=http://127.0.0.1:$main_port@$main_pid" "${b_target[@]}" \
    --target "pingora=http://127.0.0.1:$plain_port@$plain_pid" \
    --target "pingora-read-body=http://127.0.0.1:$pingora_port@$pingora_pid" \
    --rounds 0 --warmup 1s --saturation "${seconds}s" --saturation-rounds "$slices" \
    --streams 0 2>/dev/null |
    awk '/^### Throughput at saturation/ { on = 1 } /^### Proxy process/ { on = 0 }
      /^Throughput at saturation:/ { peers = 1; print "### wes-proxy against each\n"; next }
      peers && /^\|/ { print; seen = 1; next } peers && seen { peers = 0; print "" }
      on { print }'
done
load_footer
