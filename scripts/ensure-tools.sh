#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine, only when missing.
set -euo pipefail

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)   # Pingora's zlib-ng build
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The leaderboard page test (proxy/tests/leaderboard.rs) renders it in headless Chromium.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  echo "installing: ${need_apt[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
