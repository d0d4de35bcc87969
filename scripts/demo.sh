#!/usr/bin/env bash
# A local demo fleet: the real proxy and real reporters with the simulated sensor, no hardware.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh
cargo build --release --locked --bins -q
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$bin/wes-proxy" --config config/demo-proxy.toml >"$work/proxy.out" 2>"$work/proxy.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "admin listening" "$work/proxy.out" 2>/dev/null && break; sleep 0.1; done
grep -q "admin listening" "$work/proxy.out" || { cat "$work/proxy.log"; exit 1; }

for node in edge-1 edge-2 edge-3; do
  "$bin/wes-reporter" --node-id "$node" --proxy http://127.0.0.1:50051 --token "demo-$node" \
    --sensor sim --interval 1s 2>"$work/$node.log" &
  pids+=($!)
done

admin=$(sed -n 's/.*admin listening on //p' "$work/proxy.out")
echo "WES demo fleet running."
echo "  Ollama base URL : http://127.0.0.1:11434"
echo "  Ranking (JSON)  : http://$admin/ranking"
echo "  Metrics         : http://$admin/metrics"
echo "Logs in $work. Ctrl-C to stop."
wait -n "${pids[@]}"
