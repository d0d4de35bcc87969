#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (binaries the end-to-end tests run)"
cargo build --workspace --locked --bins
echo "== cargo test"
# Two tests at a time: the end-to-end tests start real processes on a 2-core machine.
cargo test --workspace --locked -- --test-threads=2

echo "== the demo fleet, as a new user starts it (six simulated nodes ranked, one request relayed)"
scripts/demo.sh --check
echo "== the demo served to the network: it makes an admin token, and the admin listener needs it"
WES_DEMO_HOST=0.0.0.0 scripts/demo.sh --check

echo "== real inference engine (llama.cpp llama-server + SmolLM2; built once, cached)"
eval "$(scripts/real-engine.sh | sed 's/^/export /')"

echo "== client tests (official ollama and openai Python packages, real engine)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/clients/requirements.txt
.venv/bin/python -m pytest -q tests/clients
