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

"$bin/wes-bench" node --listen 127.0.0.1:0 --model "$model" >"$work/node.out" 2>"$work/node.log" &
pids+=($!)
node=$(address_from "$work/node.out" "node listening on")
api_port=$(free_port)
cat >"$work/proxy.toml" <<TOML
[listen]
api = "127.0.0.1:$api_port"
telemetry = "127.0.0.1:0"
admin = "127.0.0.1:0"
[routing]
policy = "top"
# The reporter may lag while the machine is saturated; the node must stay routable.
stale_after = "1h"
[[nodes]]
id = "bench-node"
url = "http://$node"
token = "bench-token"
max_concurrency = 100000
TOML
"$bin/wes-proxy" --config "$work/proxy.toml" >"$work/proxy.out" 2>"$work/proxy.log" &
proxy_pid=$!
pids+=("$proxy_pid")
telemetry=$(address_from "$work/proxy.out" "telemetry listening on")
admin=$(address_from "$work/proxy.out" "admin listening on")
address_from "$work/proxy.out" "api listening on" >/dev/null
"$bin/wes-reporter" --node-id bench-node --proxy "http://$telemetry" --token bench-token \
  --ollama "http://$node" --interval 1s --sensor command \
  --sensor-command 'echo {"watts":100,"thermal_state":"Normal"}' 2>"$work/reporter.log" &
pids+=($!)
"$bin/wes-bench" wait-healthy --admin "http://$admin" --node bench-node --model "$model" --timeout 60s >&2

start_pingora() { # name, extra flags... ; prints "PORT PID"
  local name=$1 port
  shift
  port=$(free_port)
  "$bin/wes-bench" bare-pingora --listen "127.0.0.1:$port" --upstream "$node" "$@" \
    >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/api/tags" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:$port/api/tags" || { echo "$name did not start" >&2; cat "$work/$name.log" >&2; exit 1; }
  echo "$port $!"
}
read -r pingora_port pingora_pid < <(start_pingora pingora)
read -r reading_port reading_pid < <(start_pingora pingora-read-body --read-body)

machine_header
echo
for run in $(seq "$runs"); do
  echo "## Run $run of $runs"
  echo
  "$bin/wes-bench" latency --model "$model" --target "direct=http://$node" \
    --target "wes-proxy=http://127.0.0.1:$api_port@$proxy_pid" \
    --target "pingora=http://127.0.0.1:$pingora_port@$pingora_pid" \
    --target "pingora-read-body=http://127.0.0.1:$reading_port@$reading_pid" \
    --rounds 0 --warmup 1s --saturation "${seconds}s" --streams 0 2>/dev/null |
    sed -n '/^### Throughput at saturation/,/^### Proxy process/p' | sed '$d'
done
load_footer
