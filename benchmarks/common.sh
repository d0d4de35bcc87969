# Shared by the benchmark scripts (sourced, not run): the machine header every result file
# starts with, free ports, and reading the ports a process prints.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (bounded) until FILE has a line containing NEEDLE, then prints the last word of it.
address_from() { # file needle [seconds]
  local file=$1 needle=$2 limit=${3:-30}
  for _ in $(seq $((limit * 10))); do
    if grep -q "$needle" "$file" 2>/dev/null; then
      grep "$needle" "$file" | head -1 | awk '{print $NF}'
      return 0
    fi
    sleep 0.1
  done
  echo "no '$needle' in $file after ${limit}s" >&2
  return 1
}

machine_header() {
  local commit dirty=""
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "$(git status --porcelain 2>/dev/null | grep -v '^??')" ] && dirty=" (working tree had uncommitted changes)"
  echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); date: $(date -u +%Y-%m-%dT%H:%MZ); commit: ${commit}${dirty}"
  echo
  echo "Load before the run (\`uptime\`): $(uptime | sed 's/^ *//')"
}

load_footer() {
  echo "Load after the run (\`uptime\`): $(uptime | sed 's/^ *//')"
}

# The benchmark fleet of one: `wes-bench node` holding $model, wes-proxy in front of it, and a
# real reporter streaming the node's telemetry; returns once the proxy ranks the node healthy.
# Needs $bin, $work, $model and the pids array; sets node, node_pid, api_port, proxy_pid,
# admin, and appends every pid to pids so the caller's cleanup stops them.
start_bench_fleet() {
  "$bin/wes-bench" node --listen 127.0.0.1:0 --model "$model" >"$work/node.out" 2>"$work/node.log" &
  node_pid=$!
  pids+=("$node_pid")
  node=$(address_from "$work/node.out" "node listening on")
  start_bench_proxy wes-proxy "$bin/wes-proxy"
}

# One more wes-proxy (NAME, BINARY) in front of $node, with its own reporter: a second build
# measured beside the first in the same run. Sets api_port, proxy_pid and admin.
# WES_BENCH_NODE_HOST=NAME configures the node by that host name (e.g. localhost) instead
# of its IP, to measure the cost of name resolution on the request path.
start_bench_proxy() { # name binary
  local name=$1 binary=$2 telemetry node_url="http://$node"
  if [ -n "${WES_BENCH_NODE_HOST:-}" ]; then node_url="http://$WES_BENCH_NODE_HOST:${node##*:}"; fi
  api_port=$(free_port)
  cat >"$work/$name.toml" <<TOML
[listen]
api = "127.0.0.1:$api_port"
telemetry = "127.0.0.1:0"
admin = "127.0.0.1:0"
[routing]
policy = "top"
# The reporter may lag while the machine is saturated; the node must stay routable.
stale_after = "1h"
[[nodes]]
id = "bench-node"
url = "$node_url"
token = "bench-token"
max_concurrency = 100000
TOML
  "$binary" --config "$work/$name.toml" >"$work/$name.out" 2>"$work/$name.log" &
  proxy_pid=$!
  pids+=("$proxy_pid")
  telemetry=$(address_from "$work/$name.out" "telemetry listening on")
  admin=$(address_from "$work/$name.out" "admin listening on")
  address_from "$work/$name.out" "api listening on" >/dev/null
  "$bin/wes-reporter" --node-id bench-node --proxy "http://$telemetry" --token bench-token \
    --ollama "http://$node" --interval 1s --sensor command \
    --sensor-command 'echo {"watts":100,"thermal_state":"Normal"}' 2>"$work/$name-reporter.log" &
  pids+=($!)
  "$bin/wes-bench" wait-healthy --admin "http://$admin" --node bench-node --model "$model" --timeout 60s >&2
}

# Pingora alone in front of $node (`wes-bench bare-pingora`, extra flags passed on), once it
# answers. Sets pingora_port and pingora_pid (overwritten by the next call) and appends to pids.
start_bare_pingora() { # name, flags...
  local name=$1
  shift
  pingora_port=$(free_port)
  "$bin/wes-bench" bare-pingora --listen "127.0.0.1:$pingora_port" --upstream "$node" "$@" \
    >"$work/$name.out" 2>"$work/$name.log" &
  pingora_pid=$!
  pids+=("$pingora_pid")
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$pingora_port/api/tags" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:$pingora_port/api/tags" || { echo "$name did not start:" >&2; cat "$work/$name.log" >&2; exit 1; }
}
