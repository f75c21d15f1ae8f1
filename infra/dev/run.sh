#!/usr/bin/env bash
# `make dev`: the whole system on this machine, safe on a laptop. Builds the
# API and the executor, makes a spool under ./var, a fresh admin token and a
# queue token, registers this machine as host "local" (balanced profile,
# demo catalog: read-only or printing commands only), starts the API on
# 127.0.0.1:3035 and the executor, prints the URL and token, and stops both
# cleanly on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."

LISTEN="${VPS_REMEDIATE_LISTEN_ADDR:-127.0.0.1:3035}"
HOST_ID="${DEV_HOST_ID:-local}"
VAR="./var"

cargo build --locked -p remediate-functions -p remediate-executor

mkdir -p "$VAR"
chmod 700 "$VAR"
new_secret() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40; }
ADMIN_TOKEN="vr_$(new_secret)"
QUEUE_TOKEN="${VPS_REMEDIATE_QUEUE_TOKEN:-q_$(new_secret)}"
HASH="$(printf '%s' "$ADMIN_TOKEN" | sha256sum | cut -d' ' -f1)"
umask 077
cat > "$VAR/tokens.toml" <<TOML
# Written by make dev: one admin token, hashed. Add viewer/ops tokens the same way
# (sha256 = \`printf %s TOKEN | sha256sum\`); \`hosts = ["a"]\` limits a token to hosts.
[[token]]
name = "dev-admin"
role = "admin"
sha256 = "$HASH"
TOML

export VPS_REMEDIATE_CATALOG="${VPS_REMEDIATE_CATALOG:-demo}"
export VPS_REMEDIATE_SPOOL_DIR="$VAR/spool"
export VPS_REMEDIATE_QUEUE_TOKEN="$QUEUE_TOKEN"
export VPS_REMEDIATE_LISTEN_ADDR="$LISTEN"

pids=()
stop() {
    trap - INT TERM EXIT
    echo
    echo "stopping..."
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    echo "stopped."
}
trap stop INT TERM EXIT

target/debug/remediate-api serve --tokens "$VAR/tokens.toml" --session-key "$VAR/session.key" &
pids+=($!)
target/debug/remediate-executor run --host-id "$HOST_ID" --spool "$VAR/spool" &
pids+=($!)

for _ in $(seq 1 100); do
    if curl -fsS "http://$LISTEN/healthz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fsS -X PUT -H "authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
    "http://$LISTEN/api/hosts/$HOST_ID" -d '{"remediationPolicyProfile":"balanced","enabled":true}' >/dev/null

cat <<MSG

vps-remediate is running (demo catalog, host "$HOST_ID", spool $VAR/spool)
  URL:          http://$LISTEN
  admin token:  $ADMIN_TOKEN
  queue token:  $QUEUE_TOKEN

Try:
  export TOKEN=$ADMIN_TOKEN
  curl -sS -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' http://$LISTEN/api/remediate -d '{"mode":"dry-run","hostId":"$HOST_ID","actionId":"demo-system-info"}'
  curl -sS -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' http://$LISTEN/api/remediate -d '{"mode":"execute","hostId":"$HOST_ID","actionId":"demo-system-info","confirmPhrase":"EXECUTE demo-system-info"}'
  curl -sS -H "authorization: Bearer \$TOKEN" "http://$LISTEN/api/ops/remediate-queue?limit=30"

Ctrl-C stops both.
MSG
wait -n "${pids[@]}" || true
