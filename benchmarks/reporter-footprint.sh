#!/usr/bin/env bash
# Measures wes-reporter's own footprint at a 1 s interval: CPU share of one core and peak RSS.
# Runs the release reporter against a real wes-proxy for DURATION seconds (default 60) with each
# sensor that works without hardware, polling a static stand-in for Ollama's /api/tags.
# Usage: benchmarks/reporter-footprint.sh [DURATION] > result.md
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60}
scripts/ensure-tools.sh
cargo build --release --locked --bins -q
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ollama_port=$(free_port)
mkdir -p "$work/www/api"
echo '{"models":[{"name":"llama3.2:3b","size":2019393189,"digest":"a80c4f17acd5"}]}' >"$work/www/api/tags"
python3 -m http.server "$ollama_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)

cat >"$work/proxy.toml" <<TOML
[listen]
api = "127.0.0.1:$(free_port)"
telemetry = "127.0.0.1:0"
admin = "127.0.0.1:0"
[[nodes]]
id = "bench"
url = "http://127.0.0.1:$ollama_port"
token = "bench-token"
TOML
"$bin/wes-proxy" --config "$work/proxy.toml" >"$work/proxy.out" 2>"$work/proxy.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "admin listening" "$work/proxy.out" 2>/dev/null && break; sleep 0.1; done
telemetry=$(sed -n 's/.*telemetry listening on //p' "$work/proxy.out")
admin=$(sed -n 's/.*admin listening on //p' "$work/proxy.out")
ticks=$(getconf CLK_TCK)

measure() { # sensor, extra args...
  local sensor=$1; shift
  "$bin/wes-reporter" --node-id bench --proxy "http://$telemetry" --token bench-token \
    --ollama "http://127.0.0.1:$ollama_port" --interval 1s --sensor "$sensor" "$@" 2>"$work/reporter-$sensor.log" &
  local pid=$!
  sleep 3 # connect and settle; the measured window starts after
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  local t0; t0=$(date +%s.%N)
  sleep "$duration"
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  local t1; t1=$(date +%s.%N)
  local hwm; hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local samples; samples=$(curl -s "http://$admin/metrics" | awk '/^wes_telemetry_samples_accepted_total/ {print $2}')
  python3 - "$sensor" "$u0" "$s0" "$u1" "$s1" "$t0" "$t1" "$ticks" "$hwm" "$samples" <<'PY'
import sys
sensor, u0, s0, u1, s1, t0, t1, ticks, hwm, samples = sys.argv[1:]
cpu_s = (int(u1) + int(s1) - int(u0) - int(s0)) / int(ticks)
wall = float(t1) - float(t0)
print(f"| {sensor} | {wall:.0f} s | {100 * cpu_s / wall:.3f}% | {int(hwm) / 1024:.1f} MiB | {samples} |")
PY
}

echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); date: $(date -u +%Y-%m-%d)"
echo
echo "| sensor | window | CPU (share of one core) | peak RSS (VmHWM) | samples accepted by proxy (cumulative) |"
echo "|---|---|---|---|---|"
measure sim
measure linux
