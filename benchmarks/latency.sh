#!/usr/bin/env bash
# Proxy overhead, side by side in one run against the same upstream (`wes-bench node`, a minimal
# fast Ollama- and OpenAI-shaped node): (a) direct, (b) through wes-proxy, (c) through Pingora
# with no hooks of ours, (d) through nginx as a plain HTTP/1.1 reverse proxy with upstream
# keepalive and proxy_buffering off, (e) through vllm-router and (f) sglang-router, the Rust
# inference routers from PyPI, each in front of the node as its one worker. Open-loop latency
# of a small non-streaming /api/generate and /v1/chat/completions and time to first byte of a
# streaming /api/chat and /v1/chat/completions at a fixed rate (interleaved rounds), closed-loop
# throughput at saturation, proxy CPU and peak RSS, and 5,000 slow streams held open through each
# proxy that relays /api/chat. A target that has no route for an endpoint is left out of it and
# the report says so. A real wes-reporter (command sensor) keeps the node's telemetry live in
# wes-proxy. Release builds; nginx (apt) and the two routers (pip, into benchmarks/.venv-bench)
# are installed if missing.
# Usage: benchmarks/latency.sh [wes-bench latency flags, e.g. --rate 500 --segment 8s] > result.md
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
scripts/ensure-tools.sh
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "installing: nginx" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq nginx >/dev/null
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
venv=benchmarks/.venv-bench
if [ ! -x "$venv/bin/vllm-router" ] || [ ! -x "$venv/bin/sglang-router" ]; then
  echo "installing: vllm-router sglang-router (pip, into $venv)" >&2
  if [ ! -x "$venv/bin/pip" ] && ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 has no venv module without this package.
    rm -rf "$venv"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check vllm-router sglang-router >&2
fi
py_version() { "$venv/bin/python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }
cargo build --release --locked -p wes-proxy -p wes-reporter -p wes-bench -q
bin=${CARGO_TARGET_DIR:-target}/release
# 5,000 streams through a proxy are 10,000 sockets in it.
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
model=llama3.2:3b

# Waits (bounded) until URL answers a small OpenAI chat; on failure shows LOG and stops the run.
wait_for_chat() { # name url log
  local body="{\"model\":\"$model\",\"stream\":false,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"
  for _ in $(seq 300); do
    curl -sf -o /dev/null -H 'content-type: application/json' -d "$body" "$2/v1/chat/completions" && return 0
    sleep 0.1
  done
  echo "$1 does not answer /v1/chat/completions after 30 s:" >&2
  tail -20 "$3" >&2
  exit 1
}

start_bench_fleet
# Pingora with no hooks of ours in front of the same node: the floor under wes-proxy's overhead.
start_bare_pingora pingora

nginx_port=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<NGINX
daemon off;
master_process on;
# As many workers as wes-proxy has threads (2).
worker_processes 2;
worker_rlimit_nofile 40000;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  upstream node {
    server $node;
    keepalive 512;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$nginx_port backlog=4096;
    location / {
      proxy_pass http://node;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
NGINX
"$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>"$work/nginx/stderr.log" &
nginx_pid=$!
pids+=("$nginx_pid")
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$nginx_port/api/tags" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$nginx_port/api/tags" || { echo "nginx did not start:" >&2; cat "$work/nginx/stderr.log" "$work/nginx/error.log" >&2; exit 1; }

# The routers from PyPI, each with the node as its one worker. With one worker every policy picks
# it, so round_robin: the default cache_aware would make vllm-router ask the worker to tokenize
# each chat first (`/v1/chat/completions/render`, a second round trip) and sglang-router grow a
# prefix tree of every prompt, costs of multi-worker routing that a one-worker run cannot show
# the use of. Neither has a thread setting; both run Tokio's scheduler, which reads
# TOKIO_WORKER_THREADS. Logs at warning: at info sglang-router writes two lines per request, and
# nginx runs with access_log off. Their metrics listeners default to one shared port (29000).
# sglang-router (0.3.2) leaves Nagle's algorithm on for its clients' connections, so its
# streams' first events wait for the client's delayed ACK (~40 ms): kept as users get it.
vllm_port=$(free_port)
TOKIO_WORKER_THREADS=2 "$venv/bin/vllm-router" --host 127.0.0.1 --port "$vllm_port" \
  --worker-urls "http://$node" --policy round_robin --log-level warning \
  --prometheus-host 127.0.0.1 --prometheus-port "$(free_port)" \
  --worker-startup-check-interval 1 --worker-startup-timeout-secs 60 \
  >"$work/vllm-router.log" 2>&1 &
vllm_pid=$!
pids+=("$vllm_pid")
sglang_port=$(free_port)
TOKIO_WORKER_THREADS=2 "$venv/bin/sglang-router" launch --host 127.0.0.1 --port "$sglang_port" \
  --worker-urls "http://$node" --policy round_robin --log-level warn \
  --prometheus-host 127.0.0.1 --prometheus-port "$(free_port)" \
  --worker-startup-check-interval 1 --worker-startup-timeout-secs 60 \
  >"$work/sglang-router.log" 2>&1 &
sglang_pid=$!
pids+=("$sglang_pid")
wait_for_chat vllm-router "http://127.0.0.1:$vllm_port" "$work/vllm-router.log"
wait_for_chat sglang-router "http://127.0.0.1:$sglang_port" "$work/sglang-router.log"

machine_header
echo
echo "wes-proxy: release build, \`[listen] threads\` at its default (one per CPU: $(nproc)), policy \`top\`, default log level."
echo "nginx: $("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //'), 2 workers, upstream keepalive 512, proxy_buffering off, access_log off."
pingora_version=$(awk '/^name = "pingora-core"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
echo "pingora: Pingora $pingora_version with no hooks of ours (\`wes-bench bare-pingora\`: one fixed upstream peer, 2 threads with work stealing like wes-proxy), the floor under wes-proxy's overhead."
for router in vllm-router sglang-router; do
  echo "$router: $router $(py_version "$router") (PyPI), the node as its one worker, policy \`round_robin\` (its default \`cache_aware\` does per-request work that only pays off with several workers), 2 Tokio worker threads (\`TOKIO_WORKER_THREADS=2\`: it has no thread setting), log level warning (no per-request log lines)."
done
echo "Node: \`wes-bench node\` (hyper, 2 threads). Client: \`wes-bench latency\` (one tokio thread plus a pacing thread)."
echo
"$bin/wes-bench" latency --model "$model" --node-pid "$node_pid" \
  --target "direct=http://$node" \
  --target "wes-proxy=http://127.0.0.1:$api_port@$proxy_pid" \
  --target "pingora=http://127.0.0.1:$pingora_port@$pingora_pid" \
  --target "nginx=http://127.0.0.1:$nginx_port@$nginx_pid" \
  --target "vllm-router=http://127.0.0.1:$vllm_port@$vllm_pid" \
  --target "sglang-router=http://127.0.0.1:$sglang_port@$sglang_pid" "$@"
# Where wes-proxy's time goes per request: a profile under the same closed-loop load.
if command -v perf >/dev/null 2>&1; then
  perf record -q -F 1999 -p "$proxy_pid" -o "$work/perf.data" -- sleep 7 2>"$work/perf.log" &
  perf_pid=$!
  sleep 0.5
  "$bin/wes-bench" latency --model "$model" --target "wes-proxy=http://127.0.0.1:$api_port@$proxy_pid" \
    --rounds 0 --warmup 1s --saturation 6s --streams 0 >/dev/null 2>&1 || true
  if wait "$perf_pid"; then
    echo "### Profile: wes-proxy under the saturation load, 6 s (\`perf record -p\`)"
    echo
    echo "Self time, symbols above 1%:"
    echo
    echo '```'
    perf report -i "$work/perf.data" --stdio --no-children -g none --sort dso,symbol --percent-limit 1 2>/dev/null |
      grep -v '^#' | grep -v '^$' | sed 's/ *-  *- *$//' | cut -c1-160 || true
    echo '```'
    echo
    echo "By binary or library:"
    echo
    echo '```'
    perf report -i "$work/perf.data" --stdio --no-children -g none --sort dso --percent-limit 1 2>/dev/null |
      grep -v '^#' | grep -v '^$' | sed 's/ *-  *- *$//' | cut -c1-160 || true
    echo '```'
    echo
  fi
fi
if grep -qE "WARN|ERROR" "$work/wes-proxy.log"; then
  echo "wes-proxy warnings and errors during the run (first 10):"
  echo
  echo '```'
  grep -E "WARN|ERROR" "$work/wes-proxy.log" | head -10 | cut -c1-200
  echo '```'
  echo
fi
# Their logs colour the level names, escapes that would garble the markdown. sglang-router's
# warning that the worker named no tokenizer is expected: the node leaves it out on purpose.
router_warnings() { sed 's/\x1b\[[0-9;]*m//g' "$work/$1.log" | grep -E "WARN|ERROR" | grep -v "No tokenizer_path or model_path"; }
for router in vllm-router sglang-router; do
  if router_warnings "$router" >/dev/null; then
    echo "$router warnings and errors during the run (first 10):"
    echo
    echo '```'
    router_warnings "$router" | head -10 | cut -c1-200
    echo '```'
    echo
  fi
done
load_footer
