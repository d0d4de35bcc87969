#!/usr/bin/env bash
# Takes docs/leaderboard.png: the real proxy and reporters over simulated nodes (wes-sim-node,
# one hardware profile each), whose sensors report scripted watts and thermal states so that the
# picture shows every state, and a history in which two nodes throttle and recover (a 2-minute
# window with 1 s steps, so that the picture takes about a minute, not fifteen). tok/s comes
# from each reporter's probe on its node and from the requests relayed meanwhile.
#   scripts/leaderboard-screenshot.sh [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/leaderboard.png}
scripts/ensure-tools.sh
cargo build --locked --bins -q -p wes-proxy -p wes-reporter -p wes-sim-node
bin=target/debug
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Waits for "... listening on ADDR" in FILE and prints ADDR.
listening() {
  local file=$1 what=$2
  for _ in $(seq 200); do
    if grep -q "$what listening on" "$file" 2>/dev/null; then
      sed -n "s/.*$what listening on //p" "$file" | head -1
      return
    fi
    sleep 0.1
  done
  echo "no '$what listening on' in $file" >&2
  exit 1
}

# id | sim profile | PUE | sensor JSON ("" = no reporter: the node never reports)
fleet=(
  "m2-studio|apple-m2|1.0|{\"watts\": 30.2, \"thermal_state\": \"Normal\", \"temperature_c\": 61}"
  "rtx4090-lab|rtx-4090|1.2|{\"watts\": 236.0, \"thermal_state\": \"Normal\", \"temperature_c\": 66}"
  "jetson-edge|fanless-edge|1.0|{\"watts\": 12.4, \"thermal_state\": \"Serious\", \"temperature_c\": 93}"
  "ryzen-rack|ryzen-cpu|1.3|{\"watts\": 118.0, \"thermal_state\": \"Normal\", \"temperature_c\": 72}"
  "h100-sxm|h100|1.4|{\"watts\": 512.0, \"thermal_state\": \"Critical\", \"temperature_c\": 97}"
  "mac-mini-2|apple-m2|1.0|"
)

# Below the ephemeral range (32768 up), where no port-0 bind or outgoing connection lands.
api_port=$((20000 + RANDOM % 12000))
config="$work/proxy.toml"
cat >"$config" <<EOF
[listen]
api = "127.0.0.1:$api_port"
telemetry = "127.0.0.1:0"
admin = "127.0.0.1:0"

[routing]
policy = "top"
stale_after = "5s"
exclude_thermal = ["Critical"]

[admin]
history_step = "1s"
history_window = "2m"
EOF

declare -A sim_addr
for entry in "${fleet[@]}"; do
  IFS='|' read -r id profile pue sensor <<<"$entry"
  "$bin/wes-sim-node" --listen 127.0.0.1:0 --profile "$profile" >"$work/$id.sim.out" 2>"$work/$id.sim.log" &
  pids+=($!)
  sim_addr[$id]=$(listening "$work/$id.sim.out" wes-sim-node)
  printf '\n[[nodes]]\nid = "%s"\nurl = "http://%s"\ntoken = "tok-%s"\npue = %s\n' \
    "$id" "${sim_addr[$id]}" "$id" "$pue" >>"$config"
done

"$bin/wes-proxy" --config "$config" >"$work/proxy.out" 2>"$work/proxy.log" &
pids+=($!)
admin=$(listening "$work/proxy.out" admin)
telemetry=$(listening "$work/proxy.out" telemetry)

reporting=0
for entry in "${fleet[@]}"; do
  IFS='|' read -r id profile pue sensor <<<"$entry"
  [ -n "$sensor" ] || continue
  printf '%s\n' "$sensor" >"$work/$id.json"
  "$bin/wes-reporter" --node-id "$id" --proxy "http://$telemetry" --token "tok-$id" \
    --interval 1s --sensor command --sensor-command "cat $work/$id.json" \
    --ollama "http://${sim_addr[$id]}" --probe-model llama3.2:3b --probe-interval 1h \
    2>"$work/$id.reporter.log" &
  pids+=($!)
  reporting=$((reporting + 1))
done

echo "waiting for $reporting probes to reach the ranking (http://$admin/ranking)" >&2
for _ in $(seq 120); do
  measured=$(curl -sf "http://$admin/ranking" | grep -o '"tok_s":[0-9]' | wc -l || true)
  [ "$measured" -ge "$reporting" ] && break
  sleep 1
done
[ "$measured" -ge "$reporting" ] || { echo "only $measured of $reporting nodes measured" >&2; exit 1; }

sensor() { printf '%s\n' "$2" >"$work/$1.json.new" && mv "$work/$1.json.new" "$work/$1.json"; }
generate() {
  curl -sf "http://127.0.0.1:$api_port/api/generate" \
    -d "{\"model\": \"llama3.2:3b\", \"prompt\": \"hello\", \"options\": {\"num_predict\": $1}}" >/dev/null &
  pids+=($!)
}
# The history: 20 s as configured; the 4090 throttles to Serious and the Ryzen to Fair, with
# traffic; the 4090 recovers and the Ryzen stays hot. Then two long generations stay in flight,
# so that column is not all zeros.
echo "recording about a minute of history" >&2
sleep 20
sensor rtx4090-lab '{"watts": 288.0, "thermal_state": "Serious", "temperature_c": 88}'
sensor ryzen-rack '{"watts": 131.5, "thermal_state": "Fair", "temperature_c": 84}'
for _ in 1 2 3; do generate 600; done
sleep 20
sensor rtx4090-lab '{"watts": 236.0, "thermal_state": "Normal", "temperature_c": 66}'
sleep 18
for _ in 1 2; do generate 2000; done
sleep 3

mkdir -p "$(dirname "$out")"
case $out in /*) ;; *) out="$PWD/$out" ;; esac
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$work/chromium" --window-size=1440,720 \
  --virtual-time-budget=3000 --screenshot="$out" "http://$admin/" 2>"$work/chromium.log" ||
  { cat "$work/chromium.log" >&2; exit 1; }
echo "wrote $out" >&2
