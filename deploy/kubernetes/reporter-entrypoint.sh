#!/bin/sh
# The reporter container's entrypoint: runs wes-reporter with one --proxy per proxy replica and
# restarts it when the set of replicas changes.
#
# Why a wrapper: the reporter streams to exactly the URLs it is given and resolves each name
# only when that stream (re)connects. The headless Service's name resolves to every replica's
# pod IP, but as a single URL it would make one stream, to one replica. So this resolves the
# name itself every WES_RESOLVE_EVERY seconds and passes one URL per address. A change (scale
# up or down, a rolled or rescheduled pod) restarts the reporter: its streams drop for about a
# second, and a new replica gets telemetry within WES_RESOLVE_EVERY seconds.
#
# Environment: NODE_NAME (the Kubernetes node: the reporter's node id and the token's key),
# WES_PROXY_TELEMETRY (host:port of the headless Service), WES_RESOLVE_EVERY (default 10),
# WES_TELEMETRY_CA (optional: a PEM CA file; the streams then use TLS, and since they dial pod
# IPs, each replica's certificate is checked against the Service's host name).
set -u
: "${NODE_NAME:?set NODE_NAME from spec.nodeName}"
: "${WES_PROXY_TELEMETRY:?set WES_PROXY_TELEMETRY to the headless Service host:port}"
host=${WES_PROXY_TELEMETRY%:*}
port=${WES_PROXY_TELEMETRY##*:}
every=${WES_RESOLVE_EVERY:-10}
# The paths the manifests mount; overridable to try the script outside a pod.
config=${WES_REPORTER_CONFIG:-/etc/wes/reporter/reporter.toml}
token_file=${WES_TOKENS_DIR:-/etc/wes/tokens}/$NODE_NAME

if [ ! -r "$token_file" ]; then
  echo "reporter-entrypoint: the Secret wes-tokens has no key $NODE_NAME; add this node's token there and a [[nodes]] table with id \"$NODE_NAME\" to the proxy config" >&2
  # Slow the restart loop down; the pod stays visibly failing until the token exists.
  sleep 30
  exit 1
fi
WES_REPORTER_TOKEN=$(cat "$token_file")
export WES_REPORTER_TOKEN

scheme=http
if [ -n "${WES_TELEMETRY_CA:-}" ]; then
  if [ ! -r "$WES_TELEMETRY_CA" ]; then
    echo "reporter-entrypoint: WES_TELEMETRY_CA=$WES_TELEMETRY_CA is not readable; mount the CA there" >&2
    sleep 30
    exit 1
  fi
  scheme=https
fi

# Every address of the Service, sorted, space-separated ("" when it resolves to nothing).
resolve() {
  getent ahosts "$host" 2>/dev/null | awk '$2 == "STREAM" { print $1 }' | sort -u | tr '\n' ' '
}

child=""
stop() {
  if [ -n "$child" ]; then
    kill -TERM "$child" 2>/dev/null
    wait "$child" 2>/dev/null
  fi
  exit 0
}
trap stop TERM INT

current=""
while :; do
  ips=$(resolve)
  if [ -n "$ips" ] && [ "$ips" != "$current" ]; then
    if [ -n "$child" ]; then
      echo "reporter-entrypoint: proxy replicas changed to: $ips" >&2
      kill -TERM "$child" 2>/dev/null
      wait "$child" 2>/dev/null
    else
      echo "reporter-entrypoint: proxy replicas: $ips" >&2
    fi
    set --
    for ip in $ips; do
      case $ip in
        *:*) set -- "$@" --proxy "$scheme://[$ip]:$port" ;;
        *) set -- "$@" --proxy "$scheme://$ip:$port" ;;
      esac
    done
    if [ "$scheme" = https ]; then
      set -- "$@" --ca-cert "$WES_TELEMETRY_CA" --tls-server-name "$host"
    fi
    wes-reporter --config "$config" --node-id "$NODE_NAME" "$@" &
    child=$!
    current=$ips
  elif [ -z "$ips" ] && [ -z "$child" ]; then
    echo "reporter-entrypoint: $host resolves to no proxy replica yet; retrying" >&2
  fi
  # An empty answer (DNS hiccup, every replica gone at once) keeps the running reporter: its
  # streams reconnect on their own if the same pods come back.
  sleep "$every" &
  wait $!
  if [ -n "$child" ] && ! kill -0 "$child" 2>/dev/null; then
    wait "$child"
    rc=$?
    echo "reporter-entrypoint: wes-reporter exited with status $rc" >&2
    exit "$rc"
  fi
done
