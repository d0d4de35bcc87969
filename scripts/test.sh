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
# Two test binaries at a time: the end-to-end tests start real processes on a 2-core machine.
cargo test --workspace --locked -- --test-threads=2
