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
