#!/usr/bin/env bash
# Routing-quality suite: does efficiency routing save energy, and at what latency, in each of
# the scenarios a router must get right (benchmarks/routing_quality/scenarios.py)?
#
#   benchmarks/routing-quality.sh                     every scenario, each with its policies
#                                                     and the oracle (~50 min); writes
#                                                     docs/benchmarks/routing-quality.md (the
#                                                     summary) and routing-quality/<scenario>/
#   benchmarks/routing-quality.sh --scenario NAME     one scenario (thermal, high-load,
#                                                     multi-model, bursts)
#   benchmarks/routing-quality.sh --quick             top, least_connections and the oracle on
#                                                     30 s of traffic per scenario (~15 min);
#                                                     writes target/routing-quality/
#   benchmarks/routing-quality.sh --help              every option (policies, duration, extra
#                                                     [routing] lines, --report-only)
#
# Each run starts a fresh simulated fleet (a wes-sim-node per node, a wes-reporter per node, the
# wes-proxy with the policy under test), replays the scenario's seeded workload, and measures
# fleet tokens per joule from every node's energy counter, time to first token, failures, cold
# loads, and where traffic went. The harness is Python (benchmarks/routing_quality/, aiohttp
# and matplotlib, installed into the repository's .venv). Ctrl-C stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    ;;
esac

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r benchmarks/routing_quality/requirements.txt

bins=""
case " $* " in
  *" --report-only "* | *" -h "* | *" --help "*) ;;
  *)
    scripts/ensure-tools.sh
    echo "routing-quality: building release binaries" >&2
    cargo build --release --locked -q -p wes-proxy -p wes-reporter -p wes-sim-node --bins
    # Run from a copy, so that a rebuild in this tree during the runs cannot swap binaries
    # between one policy's run and the next.
    bins=$(mktemp -d "${TMPDIR:-/tmp}/wes-routing-quality-bin.XXXXXX")
    trap 'rm -rf "$bins"' EXIT
    cp target/release/wes-proxy target/release/wes-reporter target/release/wes-sim-node "$bins/"
    set -- --bin-dir "$bins" "$@"
    ;;
esac

# Not exec: the EXIT trap removes the copied binaries. A background job of a script ignores
# SIGINT, so Ctrl-C and SIGTERM are both passed on as SIGTERM, on which the harness stops its
# fleet and exits.
.venv/bin/python benchmarks/routing_quality/run.py "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM
rc=0
wait "$child" || rc=$?
# A trapped signal interrupts `wait` before the child has finished stopping its fleet.
while kill -0 "$child" 2>/dev/null; do wait "$child" || rc=$?; done
exit "$rc"
