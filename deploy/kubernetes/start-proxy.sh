#!/bin/sh
# The proxy container's entrypoint: renders the config (the ConfigMap's template with the
# tokens of the Secrets wes-tokens and wes-admin put in), validates it, and execs wes-proxy, which is then
# PID 1 and gets SIGTERM and SIGHUP directly.
#
#   start-proxy.sh          render, check, exec wes-proxy
#   start-proxy.sh render   render and check only: for an in-place reload after a token
#                           change, followed by `kill -HUP 1` (see deploy/README.md)
set -eu
# The paths the manifests mount; overridable to try the script outside a pod.
template=${WES_PROXY_TEMPLATE:-/etc/wes/config/proxy.toml}
tokens=${WES_TOKENS_DIR:-/etc/wes/tokens}
admin=${WES_ADMIN_DIR:-/etc/wes/admin}
out=${WES_PROXY_RENDERED:-/run/wes/proxy.toml}

render() {
  tmp=$out.tmp
  cp "$template" "$tmp"
  # Each replica is named after its pod ([cluster] replica_id), unless the template names it.
  if [ -n "${POD_NAME:-}" ] && ! grep -q '^\[cluster\]' "$tmp"; then
    printf '\n[cluster]\nreplica_id = "%s"\n' "$POD_NAME" >> "$tmp"
  fi
  for f in "$tokens"/* "$admin"/*; do
    [ -f "$f" ] || continue
    key=${f##*/}
    tok=$(cat "$f")
    # The token goes into a sed replacement and a TOML string: keep it to characters that
    # mean nothing to either (hex or base64 tokens qualify).
    case $tok in
      "" | *[!A-Za-z0-9._~+/=-]*)
        echo "start-proxy: token $key (Secret wes-tokens or wes-admin) is empty or has characters outside A-Z a-z 0-9 . _ ~ + / = -" >&2
        return 1
        ;;
    esac
    key_re=$(printf '%s' "$key" | sed 's/[.]/[.]/g')
    sed -i "s|\"@${key_re}@\"|\"${tok}\"|g" "$tmp"
  done
  if grep -n '^[^#]*"@[^"]*@"' "$tmp" >&2; then
    echo "start-proxy: the lines above name keys that the Secrets wes-tokens and wes-admin lack" >&2
    return 1
  fi
  wes-proxy check-config "$tmp" >&2
  mv "$tmp" "$out"
}

render
if [ "${1:-}" = render ]; then
  exit 0
fi
exec wes-proxy --config "$out"
