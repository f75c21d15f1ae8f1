#!/usr/bin/env bash
# Self-test of the deploy targets, run by make cfn-lint-selftest (CI). No
# AWS is reached: every case must stop before any AWS API call, build or
# upload. Checks that
#  - make deploy-check prints the plan for good settings and refuses bad ones;
#  - make deploy and make undeploy refuse clearly without AWS credentials,
#    after validating the settings and before building anything;
#  - make undeploy refuses without CONFIRM=<stack name>.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

pass=0 fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A shell with no AWS credentials anywhere: no keys, no profile, no shared
# files (HOME stays: cargo and rustup live there), no instance metadata.
noaws() {
    env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE \
        -u AWS_WEB_IDENTITY_TOKEN_FILE -u AWS_CONTAINER_CREDENTIALS_FULL_URI \
        -u AWS_CONTAINER_CREDENTIALS_RELATIVE_URI -u AWS_ROLE_ARN \
        AWS_SHARED_CREDENTIALS_FILE="$tmp/none" AWS_CONFIG_FILE="$tmp/none" \
        AWS_EC2_METADATA_DISABLED=true "$@"
}

# expect NAME WANT_RC PATTERN COMMAND...: runs COMMAND, checks its exit code
# (any non-zero when WANT_RC is "fail") and that its output matches PATTERN.
expect() {
    local name=$1 want=$2 pattern=$3 out rc
    shift 3
    out=$("$@" 2>&1)
    rc=$?
    local ok=1
    if [ "$want" = fail ]; then [ "$rc" -ne 0 ] || ok=0; else [ "$rc" -eq "$want" ] || ok=0; fi
    grep -Eq -- "$pattern" <<<"$out" || ok=0
    if grep -q '^== build' <<<"$out"; then ok=0; fi
    if [ $ok = 1 ]; then
        echo "ok   $name"
        pass=$((pass + 1))
    else
        echo "FAIL $name (exit $rc, wanted $want and /$pattern/):"
        printf '     %s\n' "${out//$'\n'/$'\n'     }"
        fail=$((fail + 1))
    fi
}

if command -v aws >/dev/null 2>&1; then
    nocreds='no usable AWS credentials'
else
    nocreds='aws CLI is not installed'
fi

expect "deploy-check prints the plan" 0 'queue vps-remediate-web-1, DLQ vps-remediate-web-1-dlq' \
    noaws make --no-print-directory deploy-check HOST_IDS=web-1,db_2
expect "deploy-check refuses a host id SQS cannot name" 2 "HOST_IDS: 'a.b'" \
    noaws make --no-print-directory deploy-check HOST_IDS=web-1,a.b
expect "deploy-check refuses an empty host list" 2 'HOST_IDS is empty' \
    noaws make --no-print-directory deploy-check HOST_IDS=
expect "deploy-check refuses colliding host ids" 2 'differ only in' \
    noaws make --no-print-directory deploy-check HOST_IDS=web-1,web_1
expect "deploy refuses bad settings before asking AWS" fail 'QUEUE_PREFIX=.*1 to 40' \
    noaws make --no-print-directory deploy HOST_IDS=web-1 QUEUE_PREFIX=bad.prefix
expect "deploy refuses without AWS credentials" fail "$nocreds" \
    noaws make --no-print-directory deploy HOST_IDS=web-1 ARTIFACT_BUCKET=some-bucket
expect "undeploy refuses without CONFIRM" fail 'CONFIRM=vps-remediate' \
    noaws make --no-print-directory undeploy
expect "undeploy refuses without AWS credentials" fail "$nocreds" \
    noaws make --no-print-directory undeploy CONFIRM=vps-remediate

if [ -e target/deploy/stage ]; then
    echo "FAIL a refused deploy left target/deploy/stage behind"
    fail=$((fail + 1))
fi
echo "deploy-selftest: $pass passed, $fail failed"
[ "$fail" = 0 ]
