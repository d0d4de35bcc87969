#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine, only when missing.
#   scripts/ensure-tools.sh           build and test (the test suite also needs Chromium)
#   scripts/ensure-tools.sh --build   build only (the demo, the benchmarks)
set -euo pipefail
for_tests=1
[ "${1:-}" = "--build" ] && for_tests=0

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)   # Pingora's zlib-ng build
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The leaderboard page test (proxy/tests/leaderboard.rs) renders it in headless Chromium.
if ((for_tests)); then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  # The replicas test (tests/clients/test_replicas.py) runs three proxies behind HAProxy.
  command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
fi
if ((${#need_apt[@]})); then
  echo "installing: ${need_apt[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
