#!/usr/bin/env bash
# Instructions per request, wes-proxy beside Pingora alone, counted by callgrind: the measure of
# a hot-path change that this 2-core machine's run-to-run noise (5-10% in throughput) cannot
# hide. Each proxy runs under `valgrind --tool=callgrind` with collection off; for each endpoint
# the script warms the connection, turns collection on, sends REQUESTS calls one after another
# on one keep-alive connection, turns it off and dumps. Counts include the proxy's background
# work during those calls (telemetry from a real reporter, timers), which grows with the wall
# time under valgrind (about 40x slower), not with requests: read differences under ~2k as noise.
# Usage: benchmarks/instructions.sh [REQUESTS per endpoint] > result.md
# WES_PROXY_B=/path/to/another/wes-proxy measures that build too, beside the first (copy the
# old binary aside before rebuilding).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
requests=${1:-2000}
scripts/ensure-tools.sh
command -v valgrind >/dev/null || apt-get install -y -q valgrind >/dev/null
cargo build --release --locked -p wes-proxy -p wes-reporter -p wes-bench -q
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
[ -n "${KEEP_WORK:-}" ] && echo "work: $work" >&2
model=llama3.2:3b

# A binary run under callgrind, instrumentation off until asked; exec keeps the pid the caller holds.
under_callgrind() { # name binary
  cat >"$work/$1-cg" <<SH
#!/bin/sh
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$work/$1.cg "$2" "\$@"
SH
  chmod +x "$work/$1-cg"
}

"$bin/wes-bench" node --listen 127.0.0.1:0 --model "$model" >"$work/node.out" 2>"$work/node.log" &
pids+=($!)
node=$(address_from "$work/node.out" "node listening on")
# name=port@pid of each proxy measured, wes-proxy's builds first.
targets=()
under_callgrind wes-proxy "$bin/wes-proxy"
start_bench_proxy wes-proxy "$work/wes-proxy-cg"
targets+=("wes-proxy=$api_port@$proxy_pid")
if [ -n "${WES_PROXY_B:-}" ]; then
  under_callgrind wes-proxy-b "$WES_PROXY_B"
  start_bench_proxy wes-proxy-b "$work/wes-proxy-b-cg"
  targets+=("wes-proxy-b=$api_port@$proxy_pid")
fi
# Pingora alone, and Pingora reading the body before it chooses (what any model router must do);
# Pingora alone goes last: it is the floor each row is divided by.
for floor in pingora-read-body pingora; do
  under_callgrind "$floor" "$bin/wes-bench"
  port=$(free_port)
  "$work/$floor-cg" bare-pingora --listen "127.0.0.1:$port" --upstream "$node" \
    $([ "$floor" = pingora-read-body ] && echo --read-body) >"$work/$floor.out" 2>"$work/$floor.log" &
  pids+=($!)
  address_from "$work/$floor.out" "bare-pingora listening on" 120 >/dev/null
  targets+=("$floor=$port@$!")
done

# COUNT calls of one endpoint on one keep-alive connection, each read to its end; fails on any
# status but 200, so a count never includes error answers.
calls() { # port path body count
  python3 - "$@" <<'PY'
import http.client, sys
port, path, body, count = sys.argv[1], sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
for _ in range(count):
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"{path}: status {r.status}")
PY
}

# Collects one endpoint's calls into their own dump, then prints the dump's file.
measure() { # pid port path body
  local pid=$1 before
  calls "$2" "$3" "$4" 200
  before=$(ls "$work" | grep -c '\.cg\.' || true)
  callgrind_control -z "$pid" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  calls "$2" "$3" "$4" "$requests"
  callgrind_control -i off "$pid" >/dev/null
  callgrind_control -d "$pid" >/dev/null
  for _ in $(seq 300); do
    [ "$(ls "$work" | grep -c '\.cg\.' || true)" -gt "$before" ] && break
    sleep 0.1
  done
  ls -t "$work"/*.cg.* | head -1
}

# Self cost per call by where the code comes from; inlined code counts under its own source
# file (callgrind reads the line tables), so a hook inlined into Pingora's code is still ours.
by_origin() { # dump
  callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null | python3 -c '
import re, sys
n = int(sys.argv[1])
groups = {"json": 0, "ours": 0, "alloc": 0, "memcpy": 0, "rest": 0}
on = False
for line in sys.stdin:
    if "file:function" in line:
        on = True
        continue
    m = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line) if on else None
    if not m:
        continue
    ir = int(m.group(1).replace(",", ""))
    where, _, function = m.group(2).partition(":")
    function = re.sub(r" \[[^\]]*\]$", "", function)
    # rustc records the files of a workspace crate relative to the workspace root.
    if re.search(r"(^|/)proxy/src/(meter/|json\.rs$)", where):
        groups["json"] += ir
    elif re.search(r"(^|/)proxy/src/", where) and not where.endswith("proxy/src/allocator.rs"):
        groups["ours"] += ir
    elif "mimalloc" in where or where.endswith("proxy/src/allocator.rs") or re.match(r"^(mi_|_mi_|malloc|free|realloc|calloc|_int_|__libc_|cfree|unlink_chunk|malloc_consolidate|tcache|__posix_memalign|_int_memalign|aligned_alloc)", function):
        groups["alloc"] += ir
    elif "memcpy" in function or "memmove" in function:
        groups["memcpy"] += ir
    else:
        groups["rest"] += ir
print(" | ".join(f"{groups[k] / n / 1000:.1f}k" for k in ("json", "ours", "alloc", "memcpy", "rest")))
' "$requests"
}

per_request() { # dump [function pattern]: instructions per request, total or inclusive
  local dump=$1 pattern=${2:-}
  if [ -z "$pattern" ]; then
    callgrind_annotate "$dump" 2>/dev/null | awk -v n="$requests" '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); printf "%.1fk", $1 / n / 1000; done = 1 }'
  else
    callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null |
      awk -v n="$requests" -v p="$pattern" 'index($0, p) { gsub(",", "", $1); if ($1 + 0 > best) best = $1 + 0 }
        END { if (!best) printf "–"; else if (best / n < 100) printf "%d", best / n; else printf "%.1fk", best / n / 1000 }'
  fi
}

generate='{"model":"'$model'","prompt":"Say hello.","stream":false}'
chat='{"model":"'$model'","stream":false,"messages":[{"role":"user","content":"Say hello."}]}'
streamed='{"model":"'$model'","stream":true,"messages":[{"role":"user","content":"Say hello."}]}'
hooks=(request_filter upstream_peer upstream_request_filter upstream_response_filter
  upstream_response_body_filter response_filter logging)

machine_header
echo
echo "Callgrind, $requests calls per endpoint on one keep-alive connection, instructions per call."
echo "Whole process: everything the proxy ran meanwhile. Request path: Pingora's \`process_new\`,"
echo "inclusive. Hooks: wes-proxy's, inclusive (async hooks: the poll of the future each returns)."
echo "pingora: Pingora with no hooks of ours; pingora-read-body: the same, reading the request body"
echo "before it chooses the peer, as any router on the body's model must."
[ -n "${WES_PROXY_B:-}" ] && echo "wes-proxy-b: \`$WES_PROXY_B\`."
echo
echo "| endpoint | proxy | whole process | against Pingora alone | request path | $(printf '%s | ' "${hooks[@]}")"
echo "|---|---|---|---|---|$(printf -- '---|%.0s' "${hooks[@]}")"
origins=()
for endpoint in "/api/generate:$generate" "/v1/chat/completions:$chat" "/v1/chat/completions (streamed):$streamed"; do
  label=${endpoint%%:*}
  body=${endpoint#*:}
  path=${label%% *}
  rows=()
  for target in "${targets[@]}"; do
    name=${target%%=*}
    where=${target#*=}
    dump=$(measure "${where#*@}" "${where%@*}" "$path" "$body")
    rows+=("$name=$dump")
  done
  floor=$(per_request "${rows[-1]#*=}")
  for row in "${rows[@]}"; do
    name=${row%%=*}
    dump=${row#*=}
    total=$(per_request "$dump")
    line="| \`$label\` | $name | $total | $(awk -v w="${total%k}" -v b="${floor%k}" 'BEGIN { printf "%.3f×", w / b }') | $(per_request "$dump" process_new) |"
    for hook in "${hooks[@]}"; do
      if [[ $name = pingora* ]]; then line+=" – |"; else line+=" $(per_request "$dump" "ProxyHttp>::$hook") |"; fi
    done
    echo "$line"
    origins+=("| \`$label\` | $name | $total | $(by_origin "$dump") |")
  done
done
echo
echo "The same calls by where the instructions run (self cost; inlined code under its own source"
echo "file): wes-proxy's JSON reading (\`proxy/src/json.rs\`, \`proxy/src/meter/\`: the request's"
echo "fields and the response meter), the rest of wes-proxy's own code, the allocator (mimalloc and"
echo "\`proxy/src/allocator.rs\` in wes-proxy, glibc's malloc in Pingora alone), \`memcpy\`, and"
echo "everything else (Pingora, Tokio, http, std, the syscall stubs)."
echo
echo "| endpoint | proxy | whole process | JSON reading | other wes-proxy code | allocator | memcpy | the rest |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${origins[@]}"
echo
load_footer
