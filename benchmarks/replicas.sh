#!/usr/bin/env bash
# The same load through 1, 2 and 3 proxy replicas behind HAProxy: overshoot over
# max_concurrency per node (p99 and max), failures, traffic share per node, fleet tokens per
# joule on the simulated fleet. Writes docs/benchmarks/replicas.md. One command:
#
#   benchmarks/replicas.sh                    # 12 callers, 20 s per replica count (~2 min)
#   CALLERS=24 SECONDS=30 benchmarks/replicas.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/common.sh
out=${OUT:-docs/benchmarks/replicas.md}
scripts/ensure-tools.sh >&2
cargo build --release --locked -p wes-proxy -p wes-reporter -p wes-sim-node >&2
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/clients/requirements.txt
header=$(machine_header)
table=$(WES_BIN_DIR=target/release .venv/bin/python benchmarks/replicas.py)
{
  echo "# Several replicas: the same load through 1, 2 and 3"
  echo
  echo "$header"
  echo
  echo "Command: \`benchmarks/replicas.sh\` (release builds)."
  echo
  echo "$table"
  echo
  load_footer
} >"$out"
cat "$out"
