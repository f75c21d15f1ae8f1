#!/usr/bin/env bash
# make deploy / make undeploy (infra/deploy.mk): the CloudFormation stack,
# then the function with cargo lambda deploy. Settings come from the
# environment (see infra/aws/README.md); plan.py validates them first.
# Nothing is built, uploaded or changed before the AWS credentials check
# passes. Usage: deploy.sh package|deploy|undeploy
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

: "${STACK_NAME:=vps-remediate}"
: "${AWS_REGION:=us-east-1}"
: "${QUEUE_PREFIX:=vps-remediate}"
: "${FUNCTION_NAME:=vps-remediate-api}"
: "${LAMBDA_ARCH:=x86_64}"
: "${DEPLOY_FEATURES=aws}" # empty: no extra features
: "${PYTHON:=python3}"
: "${MAKE:=make}"
export STACK_NAME AWS_REGION QUEUE_PREFIX FUNCTION_NAME LAMBDA_ARCH DEPLOY_FEATURES
lambda_venv=${LAMBDA_VENV:-target/lambda-venv}
target_dir=${CARGO_TARGET_DIR:-$root/target}
stage=$root/target/deploy/stage

die() { echo "$(basename "$0" .sh): $*" >&2; exit 2; }

# Refuses, before anything else happens, when there is no aws CLI or no
# credentials it can use.
need_aws() {
    command -v aws >/dev/null 2>&1 ||
        die "the aws CLI is not installed (pip install awscli, or AWS CLI v2); nothing was changed"
    local who
    if ! who=$(aws sts get-caller-identity --region "$AWS_REGION" --query Arn --output text 2>&1); then
        die "no usable AWS credentials (aws sts get-caller-identity: ${who//$'\n'/ }).
Set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (see infra/aws/README.md); nothing was changed"
    fi
    echo "AWS identity: $who (region $AWS_REGION)"
}

output() { # output KEY: one output of the stack, empty when it is missing
    aws cloudformation describe-stacks --region "$AWS_REGION" --stack-name "$STACK_NAME" \
        --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text 2>/dev/null || true
}

stack_exists() {
    aws cloudformation describe-stacks --region "$AWS_REGION" --stack-name "$STACK_NAME" >/dev/null 2>&1
}

cleanup() { rm -rf "$stage"; }

bin=$target_dir/lambda/remediate-api/bootstrap

build() {
    echo "== build (LAMBDA_ARCH=$LAMBDA_ARCH, features: ${DEPLOY_FEATURES:-none})"
    "$MAKE" --no-print-directory lambda-build LAMBDA_ARCH="$LAMBDA_ARCH" LAMBDA_FEATURES="$DEPLOY_FEATURES"
    [ -x "$bin" ] || die "no binary at $bin after the build"
}

# stage_tokens SOURCE: writes the token file to pack into $stage/var. The
# function refuses to start without a token file, so one is always packed:
# the source's (a secret ARN, or a local file with "file:"), or an empty
# one (no token: every request but /healthz is refused) until an operator
# puts one in the stack's token secret.
stage_tokens() {
    local src=${1:-} err=""
    trap cleanup EXIT
    rm -rf "$stage" && mkdir -p "$stage/var" && chmod 700 "$stage" "$stage/var"
    : >"$stage/var/tokens.toml"
    if [[ $src == file:* ]]; then
        cp -- "${src#file:}" "$stage/var/tokens.toml" || die "cannot read ${src#file:}"
    elif [ -n "$src" ] && ! err=$( (umask 077 && aws secretsmanager get-secret-value --region "$AWS_REGION" \
        --secret-id "$src" --query SecretString --output text >"$stage/var/tokens.toml") 2>&1); then
        # A secret without a value yet is expected; any other failure would
        # ship an empty token file and lock everyone out.
        grep -q ResourceNotFoundException <<<"$err" ||
            die "cannot read the token file from $src: $err; nothing was changed"
        : >"$stage/var/tokens.toml"
    fi
    if [ -s "$stage/var/tokens.toml" ]; then
        "$PYTHON" infra/aws/plan.py tokens "$stage/var/tokens.toml" ||
            die "the token file from $src is not valid; nothing was changed"
        echo "packing the token file from $src"
    else
        printf '# No API token yet: put a token file in the stack secret TokensSecretArn.\n' >"$stage/var/tokens.toml"
        echo "no token file yet: the API will refuse every token until one is put in the stack's"
        echo "token secret (infra/aws/README.md, 'First token') and make deploy runs again"
    fi
}

cargo_lambda_deploy() { # the settings of [package.metadata.lambda.deploy], plus these
    (cd "$stage" && PATH="$root/$lambda_venv/bin:$PATH" cargo lambda deploy \
        --manifest-path "$root/functions/Cargo.toml" --binary-path "$bin" --region "$AWS_REGION" \
        --include var "$@" "$FUNCTION_NAME")
}

# make deploy-package: build and pack the zip as make deploy would, with no
# AWS call (TOKENS_FILE=path packs a local token file, checked first).
package() {
    build
    stage_tokens "${TOKENS_FILE:+file:$TOKENS_FILE}"
    cargo_lambda_deploy --dry -o json >/dev/null
    echo "packed ${bin}.zip:"
    # Lambda runs ./bootstrap from the zip's root; the API reads
    # var/tokens.toml beside it.
    "$PYTHON" -c 'import sys, zipfile
files = {i.filename: i for i in zipfile.ZipFile(sys.argv[1]).infolist()}
for i in files.values():
    print(f"  {i.filename}  {i.file_size} bytes  mode {i.external_attr >> 16 & 0o777:o}")
boot, tok = files.get("bootstrap"), files.get("var/tokens.toml")
if not boot or not (boot.external_attr >> 16) & 0o100 or not tok:
    sys.exit("the zip lacks an executable bootstrap or var/tokens.toml")' "${bin}.zip" ||
        die "bad package ${bin}.zip"
}

deploy() {
    "$PYTHON" infra/aws/plan.py plan >/dev/null # validates the settings
    need_aws
    [ -n "${ARTIFACT_BUCKET:-}" ] ||
        die "ARTIFACT_BUCKET is not set: an existing S3 bucket for the function's zip (aws s3 mb s3://NAME); nothing was changed"
    local overrides
    overrides=$("$PYTHON" infra/aws/plan.py params)

    build
    echo "== token file"
    local secret=""
    if stack_exists; then secret=$(output TokensSecretArn); fi
    stage_tokens "$secret"

    echo "== package and upload"
    cargo_lambda_deploy --dry -o json >/dev/null
    local zip=${bin}.zip sha key
    sha=$(sha256sum "$zip" | cut -d' ' -f1)
    key="vps-remediate/remediate-api-$sha.zip"
    aws s3 cp --region "$AWS_REGION" --only-show-errors "$zip" "s3://$ARTIFACT_BUCKET/$key"

    echo "== stack $STACK_NAME"
    # shellcheck disable=SC2086 # one Key=Value a word
    aws cloudformation deploy --region "$AWS_REGION" --stack-name "$STACK_NAME" \
        --template-file infra/aws/template.yaml \
        --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset \
        --tags app=vps-remediate \
        --parameter-overrides $overrides CodeS3Bucket="$ARTIFACT_BUCKET" CodeS3Key="$key"

    echo "== function $FUNCTION_NAME (cargo lambda deploy, settings from functions/Cargo.toml)"
    local role
    role=$(output FunctionRoleArn)
    [ -n "$role" ] || die "the stack has no FunctionRoleArn output"
    cargo_lambda_deploy --iam-role "$role" --merge-env

    echo
    echo "API: $(output FunctionUrl)"
    echo "bucket: $(output BucketName)   queue prefix: $(output QueuePrefix)"
    aws cloudformation describe-stacks --region "$AWS_REGION" --stack-name "$STACK_NAME" \
        --query "Stacks[0].Outputs[?starts_with(OutputKey, 'ExecutorRoleArn')].[OutputKey,OutputValue]" --output text
}

undeploy() {
    [ "${CONFIRM:-}" = "$STACK_NAME" ] ||
        die "undeploy deletes stack $STACK_NAME (queues, function, roles, secrets); run it with CONFIRM=$STACK_NAME; nothing was changed"
    need_aws
    stack_exists || die "stack $STACK_NAME does not exist in $AWS_REGION; nothing to do"
    local bucket
    bucket=$(output BucketName)
    aws cloudformation delete-stack --region "$AWS_REGION" --stack-name "$STACK_NAME"
    echo "waiting for stack $STACK_NAME to be deleted..."
    aws cloudformation wait stack-delete-complete --region "$AWS_REGION" --stack-name "$STACK_NAME"
    echo "deleted. The run bucket $bucket is kept (DeletionPolicy Retain): it holds the history of what ran."
    echo "To remove it too: empty every version of it, then aws s3api delete-bucket --bucket $bucket"
}

case "${1:-}" in
package) package ;;
deploy) deploy ;;
undeploy) undeploy ;;
*) die "usage: deploy.sh package|deploy|undeploy" ;;
esac
