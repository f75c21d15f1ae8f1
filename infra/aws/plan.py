#!/usr/bin/env python3
"""Validates the deploy settings and prints the plan (no AWS call).

Usage: plan.py plan|params|tokens FILE

Reads the settings from the environment (make deploy-check and make deploy
set them): STACK_NAME, AWS_REGION, HOST_IDS, QUEUE_PREFIX, FUNCTION_NAME,
LAMBDA_ARCH, ARTIFACT_BUCKET (optional for the plan), and the function's
[package.metadata.lambda.deploy] from `cargo metadata`.

`plan` prints what make deploy would create and run; `params` prints the
stack's parameter overrides, one Key=Value a line; `tokens FILE` checks a
token file before make deploy packs it. Every bad setting is
reported (one line each, naming it) and the exit code is 2.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

SQS_NAME_MAX = 80
HOST_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def lambda_metadata(problems: list[str]) -> dict:
    cargo = env("CARGO", "cargo")
    try:
        out = subprocess.run(
            [cargo, "metadata", "--no-deps", "--format-version", "1", "--offline"],
            capture_output=True, text=True, check=True,
        ).stdout
    except subprocess.CalledProcessError as e:
        problems.append(f"cannot read the package metadata with `cargo metadata`: {e.stderr.strip()}")
        return {}
    except OSError as e:
        problems.append(f"cannot run `{cargo} metadata`: {e}")
        return {}
    for pkg in json.loads(out).get("packages", []):
        if pkg.get("name") == "remediate-functions":
            meta = ((pkg.get("metadata") or {}).get("lambda") or {}).get("deploy")
            if not meta:
                problems.append("functions/Cargo.toml has no [package.metadata.lambda.deploy]")
                return {}
            return meta
    problems.append("package remediate-functions not found by cargo metadata")
    return {}


def settings() -> tuple[dict, list[str]]:
    problems: list[str] = []
    s = {
        "stack": env("STACK_NAME", "vps-remediate"),
        "region": env("AWS_REGION", "us-east-1"),
        "hosts": [h.strip() for h in env("HOST_IDS").split(",") if h.strip()],
        "prefix": env("QUEUE_PREFIX", "vps-remediate"),
        "function": env("FUNCTION_NAME", "vps-remediate-api"),
        "arch": env("LAMBDA_ARCH", "x86_64"),
        "artifact_bucket": env("ARTIFACT_BUCKET"),
    }
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,127}", s["stack"]):
        problems.append(f"STACK_NAME={s['stack']!r}: letters, digits and -, starting with a letter, at most 128")
    if not re.fullmatch(r"[a-z]{2}(-gov)?-[a-z]+-\d", s["region"]):
        problems.append(f"AWS_REGION={s['region']!r}: not a region name (like us-east-1)")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", s["prefix"]):
        problems.append(f"QUEUE_PREFIX={s['prefix']!r}: 1 to 40 of letters, digits, - and _")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", s["function"]):
        problems.append(f"FUNCTION_NAME={s['function']!r}: 1 to 64 of letters, digits, - and _")
    if s["arch"] not in ("x86_64", "arm64"):
        problems.append(f"LAMBDA_ARCH={s['arch']!r}: x86_64 or arm64")
    if s["artifact_bucket"] and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", s["artifact_bucket"]):
        problems.append(f"ARTIFACT_BUCKET={s['artifact_bucket']!r}: not an S3 bucket name")
    if not s["hosts"]:
        problems.append("HOST_IDS is empty: give the executor hosts, comma separated (HOST_IDS=web-1,db-1)")
    seen: dict[str, str] = {}
    for h in s["hosts"]:
        if not HOST_RE.match(h):
            problems.append(f"HOST_IDS: {h!r}: in AWS mode a host id may hold only letters, digits, - and _ (SQS names)")
            continue
        dlq = f"{s['prefix']}-{h}-dlq"
        if len(dlq) > SQS_NAME_MAX:
            problems.append(f"HOST_IDS: {h!r}: queue name {dlq} is longer than {SQS_NAME_MAX} characters")
        lid = re.sub(r"[^A-Za-z0-9]", "", h)
        if lid in seen:
            problems.append(f"HOST_IDS: {h!r} and {seen[lid]!r} differ only in - or _ (same logical ids in the template)")
        seen[lid] = h
    meta = lambda_metadata(problems)
    s["memory"], s["timeout"] = meta.get("memory"), meta.get("timeout")
    if not isinstance(s["memory"], int) or not 128 <= s["memory"] <= 10240:
        problems.append(f"package metadata memory={s['memory']!r}: 128..10240 MB")
    if not isinstance(s["timeout"], int) or not 1 <= s["timeout"] <= 900:
        problems.append(f"package metadata timeout={s['timeout']!r}: 1..900 s")
    s["env"] = meta.get("env") or {}
    if s["env"].get("VPS_REMEDIATE_STORE") != "aws":
        problems.append("package metadata env must set VPS_REMEDIATE_STORE=aws")
    if "VPS_REMEDIATE_SPOOL_DIR" in s["env"]:
        problems.append("package metadata env must not set VPS_REMEDIATE_SPOOL_DIR (AWS mode keeps no spool)")
    return s, problems


def params(s: dict) -> list[str]:
    return [
        f"HostIds={','.join(s['hosts'])}",
        f"QueuePrefix={s['prefix']}",
        f"FunctionName={s['function']}",
        f"LambdaArchitecture={s['arch']}",
        f"FunctionMemory={s['memory']}",
        f"FunctionTimeout={s['timeout']}",
    ]


def plan(s: dict) -> None:
    p = s["prefix"]
    print(f"Plan for stack {s['stack']} in {s['region']} (nothing here calls AWS)")
    print()
    print("Stack resources (infra/aws/template.yaml):")
    print("  - S3 bucket for runs (versioned, SSE-S3, public access blocked, TLS only, ACLs off; kept on undeploy)")
    print("  - Secrets Manager: a generated session key and queue token, and an empty token-file secret")
    print(f"  - Lambda function {s['function']} (provided.al2023, {s['arch']}, {s['memory']} MB, {s['timeout']} s) "
          "with a public function URL (the API authenticates every request)")
    print(f"  - log group /aws/lambda/{s['function']}, the function's role")
    for h in s["hosts"]:
        print(f"  - host {h}: queue {p}-{h}, DLQ {p}-{h}-dlq (after 5 receives, kept 14 days), "
              f"executor role + instance profile scoped to queue {p}-{h} and s3 prefix hosts/{h}/")
    print()
    print("Stack parameters:")
    for kv in params(s):
        print(f"  {kv}")
    print("  CodeS3Bucket=<ARTIFACT_BUCKET>  CodeS3Key=vps-remediate/remediate-api-<sha256>.zip")
    print()
    features = env("DEPLOY_FEATURES", "aws")
    print("make deploy would run, in order:")
    print("  1. check AWS credentials (aws sts get-caller-identity); refuse without them")
    print(f"  2. make lambda-build LAMBDA_ARCH={s['arch']} LAMBDA_FEATURES={features}")
    print("  3. fetch the token file from the stack's token secret (when the stack and a value exist)")
    print("  4. package bootstrap (+ var/tokens.toml) with cargo lambda deploy --dry; upload it to "
          f"s3://{s['artifact_bucket'] or '<ARTIFACT_BUCKET>'}/vps-remediate/")
    print(f"  5. aws cloudformation deploy --stack-name {s['stack']} --template-file infra/aws/template.yaml "
          "--capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --parameter-overrides ...")
    print(f"  6. cargo lambda deploy {s['function']} --iam-role <stack FunctionRoleArn> --merge-env "
          f"--include var (memory, timeout, tracing, env {sorted(s['env'])} from functions/Cargo.toml)")
    print("  7. print the function URL and each executor's role ARN")
    if not s["artifact_bucket"]:
        print()
        print("Note: make deploy also needs ARTIFACT_BUCKET, an existing bucket for the function's zip.")


def check_tokens(path: str) -> list[str]:
    """Problems of a token file (TOML [[token]] with name, role, sha256)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        return [f"token file: {e}"]
    problems = []
    for i, t in enumerate(doc.get("token", [])):
        name = t.get("name", f"#{i + 1}")
        if not isinstance(t.get("name"), str):
            problems.append(f"token {name}: needs a name")
        if t.get("role") not in ("viewer", "ops", "admin"):
            problems.append(f"token {name}: role must be viewer, ops or admin")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", str(t.get("sha256", ""))):
            problems.append(f"token {name}: sha256 must be 64 hex digits (the hash, never the token)")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "tokens":
        problems = check_tokens(argv[2])
        for p in problems:
            print(p, file=sys.stderr)
        return 2 if problems else 0
    if len(argv) != 2 or argv[1] not in ("plan", "params"):
        print("usage: plan.py plan|params|tokens FILE", file=sys.stderr)
        return 2
    s, problems = settings()
    if problems:
        for p in problems:
            print(f"deploy settings: {p}", file=sys.stderr)
        print("nothing was deployed or changed", file=sys.stderr)
        return 2
    if argv[1] == "params":
        print("\n".join(params(s)))
    else:
        plan(s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
