#!/usr/bin/env bash
# A local demo fleet, no hardware needed: the real wes-proxy; one simulated node (wes-sim-node)
# per [[nodes]] table of config/demo-proxy.toml; a real wes-reporter per node streaming that
# node's simulated power and temperature over gRPC (its `command` sensor reads the node's
# /wes-sim/state); and a little background traffic (wes-sim-load). Ctrl-C stops everything.
#
#   scripts/demo.sh           run until Ctrl-C
#   scripts/demo.sh --check   start, wait (bounded) until every node is ranked, send one
#                             generate through the API, stop; exit 0 when all of that worked
#
# Environment (defaults in brackets):
#   WES_DEMO_API_PORT [11434]       Ollama-compatible API (--check: a free port)
#   WES_DEMO_ADMIN_PORT [9090]      leaderboard, /ranking, /metrics (--check: a free port)
#   WES_DEMO_TELEMETRY_PORT [free]  gRPC ingest; only the demo's own reporters use it
#   WES_DEMO_HOST [127.0.0.1]       address the proxy binds; 0.0.0.0 shows it to the network,
#                                   and then the admin listener gets a fresh token, printed
#   WES_DEMO_ADMIN_TOKEN [made]     that token, off loopback (set it to choose your own)
#   WES_DEMO_TIME_SCALE [8]         the simulated thermal clock runs this much faster
#   WES_DEMO_RATE [1.5]             background requests per second; 0 for none
#   WES_DEMO_CONFIG [config/demo-proxy.toml]
#   WES_DEMO_RELEASE [0]            1 builds and runs the optimised binaries
#   WES_DEMO_CHECK_TIMEOUT [120]    seconds --check waits for every node to be ranked
#   WES_DEMO_KEEP_LOGS [0]          1 keeps the logs directory after stopping
set -euo pipefail
cd "$(dirname "$0")/.."

mode=run
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: scripts/demo.sh [--check]" >&2
    exit 2
    ;;
esac

config=${WES_DEMO_CONFIG:-config/demo-proxy.toml}
host=${WES_DEMO_HOST:-127.0.0.1}
time_scale=${WES_DEMO_TIME_SCALE:-8}
rate=${WES_DEMO_RATE:-1.5}
check_timeout=${WES_DEMO_CHECK_TIMEOUT:-120}
# The address clients use: a wildcard bind is still reached on loopback.
case "$host" in 0.0.0.0 | "::" | "[::]") reach=127.0.0.1 ;; *) reach=$host ;; esac

say() { printf '%s\n' "$*" >&2; }
die() {
  say "demo: $*"
  exit 1
}

# True when something accepts connections on the port (bash's /dev/tcp; no extra tools).
port_in_use() { (exec 3<>"/dev/tcp/$reach/$1") 2>/dev/null; }

# A port nothing listens on, for --check, so that it can run beside a running demo. It is
# drawn from below the kernel's ephemeral range: the simulated nodes bind port 0 and every
# outgoing connection takes a port from that range, so a pick inside it could be taken
# between this check and the proxy's bind (CI once lost the admin port that way).
free_port() {
  local p low=32768 high
  read -r low high </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  [ "$low" -gt 11000 ] || die "the ephemeral port range starts at $low; set WES_DEMO_API_PORT and WES_DEMO_ADMIN_PORT"
  for _ in $(seq 50); do
    p=$((10000 + RANDOM % (low - 10000)))
    port_in_use "$p" || {
      echo "$p"
      return
    }
  done
  die "found no free port"
}

if [ "$mode" = check ]; then
  api_port=${WES_DEMO_API_PORT:-$(free_port)}
  admin_port=${WES_DEMO_ADMIN_PORT:-$(free_port)}
  # Two random picks can coincide; draw again rather than fail on it.
  while [ -z "${WES_DEMO_ADMIN_PORT:-}" ] && [ "$admin_port" = "$api_port" ]; do
    admin_port=$(free_port)
  done
else
  api_port=${WES_DEMO_API_PORT:-11434}
  admin_port=${WES_DEMO_ADMIN_PORT:-9090}
fi
telemetry_port=${WES_DEMO_TELEMETRY_PORT:-0}
for var in api_port admin_port telemetry_port; do
  if ! [[ ${!var} =~ ^[0-9]+$ ]] || ((${!var} > 65535)); then
    die "$var: not a port number: ${!var}"
  fi
done
[ "$api_port" != "$admin_port" ] || die "the API and admin ports must differ (both $api_port)"
# Fail before building anything, with the fix in the message: a busy 11434 is usually a local
# Ollama, a busy 9090 often Prometheus.
if port_in_use "$api_port"; then
  die "port $api_port (the API) is busy: is Ollama or another demo running? Stop it, or choose another port: WES_DEMO_API_PORT=11500 scripts/demo.sh"
fi
if port_in_use "$admin_port"; then
  die "port $admin_port (the admin listener) is busy; choose another: WES_DEMO_ADMIN_PORT=9091 scripts/demo.sh"
fi
if [ "$telemetry_port" != 0 ] && port_in_use "$telemetry_port"; then
  die "port $telemetry_port (telemetry) is busy; unset WES_DEMO_TELEMETRY_PORT to use a free one"
fi
[ -r "$config" ] || die "cannot read $config"

# One line per [[nodes]] table: id, token, profile, models (from the url line's `# sim:` note).
nodes=$(awk '
  function flush() {
    if (inb) print (id == "" ? "-" : id), (token == "" ? "-" : token), (prof == "" ? "-" : prof), (models == "" ? "-" : models)
    inb = 0
  }
  function quoted(line) { sub(/^[^"]*"/, "", line); sub(/".*/, "", line); return line }
  /^[[:space:]]*\[\[nodes\]\]/ { flush(); inb = 1; id = token = prof = models = ""; next }
  /^[[:space:]]*\[/ { flush(); next }
  inb && /^[[:space:]]*id[[:space:]]*=/ { id = quoted($0) }
  inb && /^[[:space:]]*token[[:space:]]*=/ { token = quoted($0) }
  inb && /^[[:space:]]*url[[:space:]]*=/ && match($0, /#[[:space:]]*sim:[[:space:]]*/) {
    n = split(substr($0, RSTART + RLENGTH), a, /[[:space:]]+/); prof = a[1]; models = a[2]
  }
  END { flush() }
' "$config")
[ -n "$nodes" ] || die "$config has no [[nodes]] tables"
while read -r id token prof _; do
  [ "$id" != - ] && [ "$token" != - ] || die "$config: a [[nodes]] table lacks its id or token"
  [ "$prof" != - ] || die "$config: node $id has no '# sim: PROFILE [MODELS]' note on its url line"
done <<<"$nodes"
node_count=$(wc -l <<<"$nodes")

scripts/ensure-tools.sh --build
# A debug build by default: after scripts/test.sh it is already there (the tests build the same
# binaries), and from a cold target dir it takes half as long as a release build (measured on
# 2 cores: about 5 min against 10). The demo relays a few requests a second with simulated
# token pacing, so optimisation changes nothing anyone sees.
if [ "${WES_DEMO_RELEASE:-0}" = 1 ]; then
  profile_flag=(--release)
  bin=target/release
else
  profile_flag=()
  bin=target/debug
fi
say "demo: building ($bin; the first build takes a few minutes)"
cargo build "${profile_flag[@]}" --locked -q -p wes-proxy -p wes-reporter -p wes-sim-node --bins

work=$(mktemp -d "${TMPDIR:-/tmp}/wes-demo.XXXXXX")
pids=()  # simulated nodes and the proxy
front=() # reporters and the load generator, stopped first so their streams close cleanly
stopping=0
sleeper=""

# Waits up to $1 seconds for the given pids to exit; kills what is left.
reap() {
  local limit=$1 p alive
  shift
  for _ in $(seq $((limit * 10))); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "$@"; do
    if kill -0 "$p" 2>/dev/null; then
      say "demo: pid $p ($(ps -o args= -p "$p" 2>/dev/null | cut -c1-60)) did not stop in ${limit}s; killing it"
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

cleanup() {
  local rc=$?
  ((stopping)) && return
  stopping=1
  trap '' INT TERM
  if ((${#front[@]} + ${#pids[@]})); then say "demo: stopping"; fi
  if ((${#front[@]})); then
    kill -TERM "${front[@]}" 2>/dev/null || true
    reap 5 "${front[@]}"
  fi
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    reap 8 "${pids[@]}"
  fi
  [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null || true
  # A failed --check keeps its logs: the tails printed above may not be enough.
  if [ "${WES_DEMO_KEEP_LOGS:-0}" = 1 ] || { [ "$mode" = check ] && ((rc != 0)); }; then
    say "demo: logs kept in $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints the tail of each log, for a start that failed.
show_logs() {
  local f
  for f in "$work"/*.log; do
    [ -s "$f" ] || continue
    say "---- ${f##*/} (last lines)"
    tail -n 15 "$f" >&2
  done
}

# Waits up to $3 seconds for a line starting with $2 in file $1 and prints the rest of it.
wait_line() {
  local file=$1 prefix=$2 limit=$3 line
  for _ in $(seq $((limit * 10))); do
    line=$(grep -m1 "^$prefix" "$file" 2>/dev/null || true)
    if [ -n "$line" ]; then
      echo "${line#"$prefix"}"
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# 1. The simulated nodes, each on a free port. Their thermal clocks run time_scale× faster so
#    that throttling shows within a minute or two; token pacing stays real time.
i=0
while read -r id _ prof models; do
  i=$((i + 1))
  model_args=()
  [ "$models" = - ] || model_args=(--models "$models")
  "$bin/wes-sim-node" --listen 127.0.0.1:0 --profile "$prof" "${model_args[@]}" --seed "$i" \
    --time-scale "$time_scale" >"$work/sim-$id.out" 2>"$work/sim-$id.log" &
  pids+=($!)
done <<<"$nodes"
node_urls=()
while read -r id _; do
  addr=$(wait_line "$work/sim-$id.out" "wes-sim-node listening on " 20) || {
    show_logs
    die "simulated node $id did not start"
  }
  node_urls+=("http://$addr")
done <<<"$nodes"

# 2. The proxy, on a copy of the config with the demo's ports and the simulated nodes' URLs.
#    The copy keeps every line in place, so an error's line number points into $config.
#    Served to the network, the admin listener (drain, reload) needs a token: one is made.
admin_token=
case "$host" in
  127.* | localhost | ::1 | "[::1]") ;;
  *) admin_token=${WES_DEMO_ADMIN_TOKEN:-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')} ;;
esac
awk -v api="$host:$api_port" -v tel="$host:$telemetry_port" -v admin="$host:$admin_port" \
  -v urls="${node_urls[*]}" -v admin_token="$admin_token" '
  BEGIN { split(urls, U, " "); k = 0 }
  /^[[:space:]]*\[admin\]/ && admin_token != "" { print; print "token = \"" admin_token "\""; seen_admin = 1; sec = "[admin]"; next }
  END { if (admin_token != "" && !seen_admin) { print ""; print "[admin]"; print "token = \"" admin_token "\"" } }
  /^[[:space:]]*\[\[nodes\]\]/ { sec = "nodes"; k++; print; next }
  /^[[:space:]]*\[/ { sec = $0; gsub(/[[:space:]]/, "", sec); print; next }
  sec == "[listen]" && /^[[:space:]]*api[[:space:]]*=/ { print "api = \"" api "\""; next }
  sec == "[listen]" && /^[[:space:]]*telemetry[[:space:]]*=/ { print "telemetry = \"" tel "\""; next }
  sec == "[listen]" && /^[[:space:]]*admin[[:space:]]*=/ { print "admin = \"" admin "\""; next }
  sec == "nodes" && /^[[:space:]]*url[[:space:]]*=/ { print "url = \"" U[k] "\""; next }
  { print }
' "$config" >"$work/proxy.toml"
"$bin/wes-proxy" check-config "$work/proxy.toml" >/dev/null 2>"$work/check-config.err" || {
  sed "s|$work/proxy.toml|$config (demo copy)|" "$work/check-config.err" >&2
  die "the demo config is invalid"
}
"$bin/wes-proxy" --config "$work/proxy.toml" >"$work/proxy.out" 2>"$work/proxy.log" &
proxy_pid=$!
pids+=("$proxy_pid")
if ! telemetry=$(wait_line "$work/proxy.out" "wes-proxy telemetry listening on " 30) ||
  ! wait_line "$work/proxy.out" "wes-proxy api listening on " 30 >/dev/null; then
  show_logs
  die "wes-proxy did not start"
fi
api=http://$reach:$api_port
admin=http://$reach:$admin_port
telemetry_url=http://${telemetry/#0.0.0.0:/127.0.0.1:}
# The API listener is Pingora's: it binds after the line above and, on a busy port, retries
# instead of exiting, so the port is only known to work once it answers.
up=0
for _ in $(seq 150); do
  kill -0 "$proxy_pid" 2>/dev/null || break
  if curl -sf -o /dev/null "$admin/healthz" && curl -s -o /dev/null "$api/api/version"; then
    up=1
    break
  fi
  sleep 0.1
done
if ((!up)); then
  if grep -q "$api_port is in use" "$work/proxy.log"; then
    die "port $api_port (the API) is taken; choose another: WES_DEMO_API_PORT=11500 scripts/demo.sh"
  fi
  show_logs
  die "wes-proxy did not come up within 15s"
fi

# 3. One reporter per node, as on a real node but with the `command` sensor reading the
#    simulated node's power and temperature. The probe gives every node a measured tok/s at
#    once, before any traffic reaches it; the proxy's own metering of relayed responses
#    then takes over where traffic flows.
i=0
while read -r id token _; do
  url=${node_urls[$i]}
  i=$((i + 1))
  WES_REPORTER_TOKEN=$token "$bin/wes-reporter" --node-id "$id" --proxy "$telemetry_url" \
    --ollama "$url" --sensor command \
    --sensor-command "curl -sf --max-time 1 $url/wes-sim/state" \
    --interval 1s --probe-model llama3.2:3b --probe-interval 2m \
    >"$work/reporter-$id.out" 2>"$work/reporter-$id.log" &
  front+=($!)
done <<<"$nodes"

# 4. Background traffic over the models the fleet holds, llama3.2:3b the most asked for.
if [ "$rate" != 0 ]; then
  "$bin/wes-sim-load" --api "$api" --rate "$rate" \
    --models llama3.2:3b,llama3.2:3b,llama3.2:3b,llama3.1:8b,smollm2:135m \
    --endpoints generate,chat,openai-chat --num-predict 96 --report-every 20s \
    >"$work/load.out" 2>"$work/load.log" &
  front+=($!)
fi

# Counts the ranked and the healthy nodes in /ranking. The JSON is compact (one line), so
# grep suffices and the demo needs no jq.
count_in_ranking() {
  local body
  body=$(curl -sf --max-time 5 "$admin/ranking") || body=""
  { grep -o "$1" <<<"$body" || true; } | wc -l
}
ranked() { count_in_ranking '"rank":[0-9]'; }
healthy() { count_in_ranking '"healthy":true'; }

if [ "$mode" = check ]; then
  say "demo --check: waiting up to ${check_timeout}s for $node_count ranked nodes"
  deadline=$((SECONDS + check_timeout))
  n=0
  while ((SECONDS < deadline)); do
    n=$(ranked)
    ((n >= node_count)) && break
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 1
  done
  if ((n < node_count)); then
    show_logs
    say "ranking: $(curl -s "$admin/ranking" || true)"
    die "only $n of $node_count nodes ranked after ${check_timeout}s"
  fi
  say "demo --check: $n ranked, $(healthy) healthy"
  code=$(curl -sS -o "$work/generate.json" -D "$work/generate.headers" -w '%{http_code}' \
    --max-time 60 "$api/api/generate" \
    -d '{"model":"llama3.2:3b","prompt":"Why is the sky blue?","stream":false,"options":{"num_predict":16}}') || code=000
  node=$(tr -d '\r' <"$work/generate.headers" 2>/dev/null | sed -n 's/^[Xx]-[Ww][Ee][Ss]-[Nn]ode: *//p')
  if [ "$code" != 200 ] || ! grep -q '"done":true' "$work/generate.json" || [ -z "$node" ]; then
    show_logs
    die "generate through the API failed: HTTP $code, node '${node}', body: $(head -c 400 "$work/generate.json" 2>/dev/null)"
  fi
  say "demo --check: /api/generate answered by $node"
  if [ -n "$admin_token" ]; then
    [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$admin/reload")" = 401 ] ||
      die "the admin listener took a reload without its token"
    [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $admin_token" "$admin/reload")" = 200 ] ||
      die "the admin listener refused its own token"
    say "demo --check: the admin listener needs its token"
  fi
  say "demo --check: ok"
  exit 0
fi

cat <<EOF

WES demo fleet: $node_count simulated nodes, each with a real wes-reporter, behind wes-proxy.
Background traffic: ${rate} requests/s. Thermal clock ${time_scale}x: the fanless nodes throttle
within a minute or two, and the ranking reorders.

  Ollama base URL   $api
  Leaderboard       $admin/
  Ranking (JSON)    $admin/ranking
  Metrics           $admin/metrics${admin_token:+
  Admin token       $admin_token
                    (POST /reload, drain: curl -H "Authorization: Bearer $admin_token" ...)}

Try:
  curl $api/api/generate -d '{"model":"llama3.2:3b","prompt":"Why is the sky blue?"}'
  OLLAMA_HOST=$api ollama run llama3.2:3b "Why is the sky blue?"
  curl -s $admin/ranking

Logs: $work (removed on exit; WES_DEMO_KEEP_LOGS=1 keeps them). Ctrl-C stops everything.
EOF

# Progress: where the traffic went, and the ranking once every node is ranked.
announced=0
while :; do
  for p in "${pids[@]}" "${front[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      show_logs
      die "a demo process (pid $p) exited unexpectedly; stopping the rest"
    fi
  done
  if ((!announced)) && (($(ranked) >= node_count)); then
    announced=1
    say "demo: all $node_count nodes ranked; see $admin/"
  fi
  # `sleep` in the background and `wait` on it: Ctrl-C then interrupts at once.
  sleep 2 &
  sleeper=$!
  wait "$sleeper" || true
  sleeper=""
done
