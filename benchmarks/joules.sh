#!/usr/bin/env bash
# J/token by the second seed's protocol (`wes-reporter joules`: steady thermal state, idle
# baseline, a fixed workload run N times), on a simulated node (its energy counter, the
# command sensor) and on the real engine (llama.cpp's llama-server with SmolLM2, power modelled
# from the machine's CPU load by benchmarks/load-watts.sh: this machine has no power meter).
# Writes docs/benchmarks/joules.md. One command:
#
#   benchmarks/joules.sh            # 10 runs, 30 s idle baseline each (about 3 minutes)
#   RUNS=3 IDLE=5s benchmarks/joules.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/common.sh
runs=${RUNS:-10}
idle=${IDLE:-30s}
out=${OUT:-docs/benchmarks/joules.md}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked -p wes-reporter -p wes-sim-node >&2
bin=target/release
header=$(machine_header)

# 1. A simulated RTX 4090 holding llama3.2:3b; its /wes-sim/state carries an energy counter.
"$bin/wes-sim-node" --listen 127.0.0.1:0 --profile rtx-4090 --models llama3.2:3b \
  >"$work/sim.out" 2>"$work/sim.log" &
pids+=($!)
sim=$(address_from "$work/sim.out" "listening on")
"$bin/wes-reporter" joules --ollama "http://$sim" --sensor command \
  --sensor-command "curl -sf --max-time 1 http://$sim/wes-sim/state" \
  --model llama3.2:3b --runs "$runs" --tokens 256 --idle "$idle" >"$work/sim.json"

# 2. The real engine, alone on the machine, one request at a time.
eval "$(scripts/real-engine.sh | sed 's/^/export /')"
port=$(free_port)
"$LLAMA_SERVER" -m "$SMOLLM2" --host 127.0.0.1 --port "$port" -c 2048 -np 1 \
  >"$work/llama.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.2
done
"$bin/wes-reporter" joules --ollama "http://127.0.0.1:$port" --sensor command \
  --sensor-command "benchmarks/load-watts.sh" --interval 250ms \
  --model smollm2 --runs "$runs" --tokens 256 --idle "$idle" >"$work/engine.json"

python3 - "$work/sim.json" "$work/engine.json" "$header" "$(load_footer)" >"$out" <<'PY'
import json, sys
sim, engine = (json.load(open(p)) for p in sys.argv[1:3])
header, footer = sys.argv[3], sys.argv[4]
print("# J/token by the second seed's protocol (`wes-reporter joules`)\n")
print(header + "\n")
print("Command: `benchmarks/joules.sh` (`RUNS`, `IDLE` to change the protocol's 10 runs and 30 s")
print("idle baseline). Each run is one `/v1/completions` of 256 tokens at temperature 0 after a")
print("warm-up; energy over each run from the sensor; net subtracts the idle baseline's power")
print("over the run's time. The seed reports under 5% variance over 10 runs.\n")
def table(name, r, note):
    c = r["conditions"]
    g, n = r["joules_per_token"], r["joules_per_token_net"]
    print(f"## {name}\n")
    print(note + "\n")
    print(f"- model `{c['model']}`, engine `{c['engine']}`, sensor: {c['sensor']}")
    print(f"- thermal: {c['thermal']} (start {c['thermal_state_start']}, end {c['thermal_state_end']})")
    m = c["machine"]
    print(f"- machine: {m.get('cpu')}, {m.get('cores')} cores, kernel {m.get('kernel')}; {c['date']}")
    print(f"- idle baseline: {r['idle']['watts']:.2f} W over {r['idle']['seconds']:.1f} s ({r['idle']['source']})\n")
    print("| | J/token gross | J/token net | CV gross | CV net |")
    print("|---|---:|---:|---:|---:|")
    print(f"| mean of {len(r['runs'])} runs | {g['mean']:.4f} | {n['mean']:.4f} | {g['cv_pct']:.2f}% | {n['cv_pct']:.2f}% |\n")
    print("| run | tokens | seconds | joules | J/token | J/token net | thermal |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for x in r["runs"]:
        print(f"| {x['run']} | {x['tokens']} | {x['seconds']:.2f} | {x['joules']:.2f} | {x['joules_per_token']:.4f} | {x['joules_per_token_net']:.4f} | {x['thermal_state']} |")
    print()
table("Simulated node (RTX 4090 profile)", sim,
      "The simulator's energy counter is exact and its power follows its load model: the spread is the protocol's own (timing of the sensor reads around each run).")
table("Real engine (llama.cpp + SmolLM2-135M, CPU)", engine,
      "Power is modelled from CPU load (benchmarks/load-watts.sh, 20 W idle to 65 W busy): a relative figure for this machine, not a measurement of it. The spread is real: it is the engine's run-to-run time and load.")
print("Reading these: the CV is the run-to-run spread of J/token. On the simulated node it is")
print("the protocol's own floor (sensor reads around each run). On the real engine with modelled")
print("power, J/token follows each run's duration, so the CV is the engine's speed spread on this")
print("machine; on a machine with a power meter (NVML, RAPL) run the reporter's own sensor instead.\n")
print(footer)
PY
echo "wrote $out" >&2
