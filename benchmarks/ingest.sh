#!/usr/bin/env bash
# Telemetry ingest from 1,000 reporter streams into a real wes-proxy (release build): wes-bench
# opens one authenticated gRPC stream per node of a generated config, sends at 1 Hz each and
# checks every sample is acknowledged and counted, then steps the rate up to find the sustained
# accepted samples/s, with the proxy's CPU and RSS.
# Usage: benchmarks/ingest.sh [NODES] [wes-bench ingest flags] > result.md
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
nodes=${1:-1000}
shift || true
scripts/ensure-tools.sh
cargo build --release --locked -p wes-proxy -p wes-bench -q
bin=target/release
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/wes-bench" gen-config --nodes "$nodes" --api "127.0.0.1:$(free_port)" >"$work/proxy.toml"
"$bin/wes-proxy" --config "$work/proxy.toml" >"$work/proxy.out" 2>"$work/proxy.log" &
proxy_pid=$!
pids+=("$proxy_pid")
telemetry=$(address_from "$work/proxy.out" "telemetry listening on")
admin=$(address_from "$work/proxy.out" "admin listening on")

machine_header
echo
echo "wes-proxy: release build, generated config with $nodes nodes (one token each), default log level."
echo "Client: \`wes-bench ingest\` (tonic, one HTTP/2 connection and stream per node, one tokio thread)."
echo
status=0
"$bin/wes-bench" ingest --config "$work/proxy.toml" --telemetry "http://$telemetry" \
  --admin "http://$admin" --pid "$proxy_pid" "$@" || status=$?
count() { grep -c "$1" "$work/proxy.log" || true; }
echo "Proxy log: $(count "telemetry stream opened") streams opened, $(count "telemetry stream closed") closed cleanly, $(count "telemetry stream refused") refused, $(count "telemetry stream ended") ended by a refused sample."
grep -m3 -E "telemetry stream (refused|ended)" "$work/proxy.log" | cut -c1-200 | sed 's/^/    /' || true
echo
load_footer
exit "$status"
