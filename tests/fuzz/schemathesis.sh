#!/usr/bin/env bash
# Fuzzes the real API server from its own OpenAPI document with schemathesis:
# starts target/debug/remediate-api on a free loopback port with a temporary
# spool, an admin token and the demo catalog, registers a host, runs
# `st run` and fails on any 5xx, crash or dropped connection.
#
# Usage: tests/fuzz/schemathesis.sh  (`make fuzz` builds the binary first)
# Knobs: FUZZ_MAX_EXAMPLES (per operation, default 100), FUZZ_SEED,
#        REMEDIATE_API_BIN, FUZZ_VENV.
set -euo pipefail

cd "$(dirname "$0")/../.."
BIN=${REMEDIATE_API_BIN:-target/debug/remediate-api}
VENV=${FUZZ_VENV:-target/fuzz-venv}
SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-100}
SEED=${FUZZ_SEED:-$RANDOM}

if [ ! -x "$BIN" ]; then
    echo "fuzz: $BIN is missing; build it with: cargo build -p remediate-functions --bin remediate-api" >&2
    exit 2
fi
if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "fuzz: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

work=$(mktemp -d)
server=
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
hash=$(printf '%s\n' "$token" | "$BIN" hash-token)
cat > "$work/tokens.toml" <<EOF
[[token]]
name = "fuzz-admin"
role = "admin"
sha256 = "$hash"
EOF

# Port 0: the kernel picks a free port and the server prints its address.
# The files exist before the server starts: its shell opens them only once it
# runs, and the loop below may read first.
: > "$work/server.out"
: > "$work/server.err"
VPS_REMEDIATE_CATALOG=demo RUST_LOG=${RUST_LOG:-warn} "$BIN" serve \
    --listen 127.0.0.1:0 \
    --spool "$work/spool" \
    --tokens "$work/tokens.toml" \
    --session-key "$work/session.key" \
    --drain-wait-seconds 1 \
    > "$work/server.out" 2> "$work/server.err" &
server=$!

base=
for _ in $(seq 1 100); do
    base=$(sed -n 's/^remediate-api listening on \(http:[^ ]*\)$/\1/p' "$work/server.out")
    [ -n "$base" ] && break
    if ! kill -0 "$server" 2>/dev/null; then
        echo "fuzz: the server did not start:" >&2
        cat "$work/server.err" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$base" ]; then
    echo "fuzz: the server printed no address" >&2
    exit 1
fi
echo "fuzz: server at $base (seed $SEED, $MAX_EXAMPLES examples per operation)"

auth="Authorization: Bearer $token"
# The host the document's examples name, with autonomy on so signal reports
# reach the planner's gates.
curl -fsS -X PUT "$base/api/hosts/fuzz-host" -H "$auth" -H 'content-type: application/json' \
    -d '{"remediationPolicyOverrides":{"autonomousEnabled":true,"autonomousMaxQueuedPerCycle":3,"executeCooldownMinutes":0}}' \
    > /dev/null

status=0
st=$(cd "$VENV/bin" && pwd)/st
# One worker: CPython 3.11's ast.parse is not thread-safe (gh-106905,
# "AST constructor recursion depth mismatch"), and hypothesis parses sources
# while generating. Run from the temporary directory: st keeps a cache in its
# working directory.
(cd "$work" && "$st" run "$base/api/openapi.json" \
    --header "$auth" \
    --checks not_a_server_error \
    --phases examples,coverage,fuzzing \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --generation-with-security-parameters false \
    --generation-database none \
    --request-timeout 30 \
    --wait-for-schema 10 \
    --workers 1 \
    --no-color \
    --report junit --report-dir "$work/report") \
    || status=$?

# A crash or a hang shows here even when every answer looked fine.
if ! kill -0 "$server" 2>/dev/null; then
    echo "fuzz: FAILED: the server died during the run" >&2
    status=1
elif ! curl -fsS --max-time 5 "$base/healthz" > /dev/null; then
    echo "fuzz: FAILED: the server no longer answers /healthz" >&2
    status=1
fi
if grep -qiE 'panicked|internal_error|store failure' "$work/server.err"; then
    echo "fuzz: the server logged failures:" >&2
    grep -iE 'panicked|internal_error|store failure' "$work/server.err" | head -20 >&2
    status=1
fi
if [ "$status" -ne 0 ]; then
    echo "fuzz: FAILED (reproduce with FUZZ_SEED=$SEED)" >&2
    tail -50 "$work/server.err" >&2
else
    echo "fuzz: no 5xx, no crash, no dropped connection"
fi
exit "$status"
