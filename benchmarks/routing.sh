#!/usr/bin/env bash
# Routing-decision and ranking-rebuild microbenchmarks, in process against the wes-proxy library
# (release build): every policy `PolicyName::ALL` names, at 10, 100 and 1,000 nodes, timed call
# by call, and the ranking rebuild; then, when `perf` is installed, profiles of the slowest
# decision (`least_connections`) and of the rebuild at 1,000 nodes.
# Usage: benchmarks/routing.sh [ITERATIONS] > result.md
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
iterations=${1:-100000}
scripts/ensure-tools.sh
cargo build --release --locked -p wes-bench -q
bench=target/release/wes-bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

machine_header
echo
"$bench" routing --iterations "$iterations"
# Where the time goes in the slowest paths: perf's self time per symbol, and inclusive time of the
# proxy's own functions.
profile() { # title, wes-bench routing flags...
  local title=$1
  shift
  echo "### Profile: $title, 5 s (\`perf record -g\`)"
  echo
  if ! command -v perf >/dev/null 2>&1 ||
    ! perf record -q -F 4999 -g -o "$work/perf.data" -- "$bench" routing --nodes 1000 --seconds 5 "$@" >/dev/null 2>"$work/perf.log"; then
    echo "(no profile: perf is missing or not permitted here; $(head -c 300 "$work/perf.log" 2>/dev/null))"
    echo
    return
  fi
  echo "Self time, symbols above 1.5%:"
  echo
  echo '```'
  perf report -i "$work/perf.data" --stdio --no-children -g none --sort symbol --percent-limit 1.5 2>/dev/null |
    grep -v '^#' | grep -v '^$' | sed 's/ *-  *- *$//' | cut -c1-150 || true
  echo '```'
  echo
  echo "Inclusive time of the proxy's own functions, above 3%:"
  echo
  echo '```'
  perf report -i "$work/perf.data" --stdio --children -g none --sort symbol --percent-limit 3 2>/dev/null |
    grep -v '^#' | grep -v '^$' | grep 'wes_proxy' | sed 's/ *-  *- *$//' | cut -c1-150 || true
  echo '```'
  echo
}
profile "\`least_connections\` decisions at 1,000 nodes" --loop-policy least_connections
profile "ranking and routing-table rebuilds at 1,000 nodes" --loop-policy top --loop-rebuild
load_footer
