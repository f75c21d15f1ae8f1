#!/usr/bin/env python3
"""Proves that the template checks can fail, so they never pass vacuously.

Usage: selftest.py TEMPLATE CFN_LINT_COMMAND...

1. The template as it is passes cfn-lint (the given command, exactly as
   `make cfn-lint` runs it) and check_template.py.
2. cfn-lint fails on a copy with an invalid property (an error) and on a
   copy whose only problem is a redundant DependsOn (a warning).
3. check_template.py fails on each of a list of copies that each break one
   security property (public access block, TLS-only policy, the executor
   role's prefix and queue scope, ...), with the expected message.
Exits 1 when any of these does not hold. Runs with the cfn-lint venv's
Python.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Callable

from cfnlint.decode import decode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_template import check_file  # noqa: E402


def per_host(t: dict) -> dict:
    """The body of the per-host Fn::ForEach (resources for one host)."""
    return t["Resources"]["Fn::ForEach::HostQueues"][2]


def executor_statements(t: dict) -> list:
    return per_host(t)["ExecutorRole&{HostId}"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]


def sid(statements: list, name: str) -> dict:
    return next(s for s in statements if s.get("Sid") == name)


def bucket(t: dict) -> dict:
    return t["Resources"]["StoreBucket"]["Properties"]


def setp(path: list, value: Any) -> Callable[[dict], None]:
    def f(t: dict) -> None:
        node = t
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value

    return f


def delp(path: list) -> Callable[[dict], None]:
    def f(t: dict) -> None:
        node = t
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]

    return f


def m(fn: Callable[[dict], Any]) -> Callable[[dict], None]:
    """Wraps a mutation written as an expression with side effects."""
    return lambda t: (fn(t), None)[1]


TLS = ["Resources", "StoreBucketPolicy", "Properties", "PolicyDocument", "Statement", 0]

# (name, mutation, a piece of the expected failure message)
MUTATIONS: list[tuple[str, Callable[[dict], None], str]] = [
    ("no public access block", m(lambda t: bucket(t).pop("PublicAccessBlockConfiguration")),
     "PublicAccessBlockConfiguration.BlockPublicAcls"),
    ("public policies allowed", m(lambda t: bucket(t)["PublicAccessBlockConfiguration"].update(BlockPublicPolicy=False)),
     "BlockPublicPolicy is not true"),
    ("no bucket policy", delp(["Resources", "StoreBucketPolicy"]), "without TLS"),
    ("TLS condition inverted", setp(TLS + ["Condition"], {"Bool": {"aws:SecureTransport": "true"}}), "without TLS"),
    ("TLS deny only on the bucket, not its objects",
     setp(TLS + ["Resource"], [{"Fn::GetAtt": ["StoreBucket", "Arn"]}]), "without TLS"),
    ("TLS statement allows instead of denies", setp(TLS + ["Effect"], "Allow"), "without TLS"),
    ("versioning off", m(lambda t: bucket(t).pop("VersioningConfiguration")), "versioning"),
    ("no encryption", m(lambda t: bucket(t).pop("BucketEncryption")), "encryption"),
    ("ACLs enabled", m(lambda t: bucket(t).pop("OwnershipControls")), "BucketOwnerEnforced"),
    ("no noncurrent-version lifecycle", m(lambda t: bucket(t).pop("LifecycleConfiguration")), "noncurrent"),
    ("executor objects under all hosts",
     m(lambda t: sid(executor_statements(t), "OwnObjects").update(Resource={"Fn::Sub": "${StoreBucket.Arn}/hosts/*"})),
     "outside hosts/"),
    ("executor objects in the whole bucket",
     m(lambda t: sid(executor_statements(t), "OwnObjects").update(Resource={"Fn::Sub": "${StoreBucket.Arn}/*"})),
     "outside hosts/"),
    ("executor reads the audit log",
     m(lambda t: sid(executor_statements(t), "OwnObjects").update(
         Resource=[{"Fn::Sub": "${StoreBucket.Arn}/hosts/${HostId}/*"}, {"Fn::Sub": "${StoreBucket.Arn}/audit/*"}])),
     "outside hosts/"),
    ("executor lists without a prefix condition",
     m(lambda t: sid(executor_statements(t), "ListOwnPrefix").pop("Condition")), "without an s3:prefix"),
    ("executor lists every host",
     m(lambda t: sid(executor_statements(t), "ListOwnPrefix").update(
         Condition={"StringLike": {"s3:prefix": ["hosts/*"]}})), "prefix outside"),
    ("executor on every queue", m(lambda t: sid(executor_statements(t), "OwnQueue").update(Resource="*")),
     "beyond its own queue"),
    ("executor on its DLQ",
     m(lambda t: sid(executor_statements(t), "OwnQueue").update(
         Resource={"Fn::GetAtt": [{"Fn::Sub": "DeadLetterQueue&{HostId}"}, "Arn"]})), "beyond its own queue"),
    ("executor may send", m(lambda t: sid(executor_statements(t), "OwnQueue")["Action"].append("sqs:SendMessage")),
     "not allowed for an executor"),
    ("executor s3:*", m(lambda t: sid(executor_statements(t), "OwnObjects").update(Action="s3:*")), "wildcard action"),
    ("executor with a managed policy",
     setp(["Resources", "Fn::ForEach::HostQueues", 2, "ExecutorRole&{HostId}", "Properties", "ManagedPolicyArns"],
          ["arn:aws:iam::aws:policy/AdministratorAccess"]), "managed policies"),
    ("function sends to the DLQ",
     setp(["Resources", "Fn::ForEach::HostQueues", 2, "FunctionSendPolicy&{HostId}", "Properties", "PolicyDocument",
           "Statement", 0, "Resource"], {"Fn::GetAtt": [{"Fn::Sub": "DeadLetterQueue&{HostId}"}, "Arn"]}),
     "beyond the hosts' queues"),
    ("function sends anywhere",
     setp(["Resources", "Fn::ForEach::HostQueues", 2, "FunctionSendPolicy&{HostId}", "Properties", "PolicyDocument",
           "Statement", 0, "Resource"], "*"), "Resource *"),
    ("session key as a literal",
     setp(["Resources", "Function", "Properties", "Environment", "Variables", "VPS_REMEDIATE_SESSION_KEY"],
          "0123456789abcdef0123456789abcdef"), "dynamic reference"),
    ("queue token as a literal",
     setp(["Resources", "Function", "Properties", "Environment", "Variables", "VPS_REMEDIATE_QUEUE_TOKEN"],
          "a-queue-token-written-in-the-template"), "VPS_REMEDIATE_QUEUE_TOKEN is not a Secrets Manager"),
    ("redrive after 10 receives",
     setp(["Resources", "Fn::ForEach::HostQueues", 2, "Queue&{HostId}", "Properties", "RedrivePolicy",
           "maxReceiveCount"], 10), "maxReceiveCount is not 5"),
    ("queue not encrypted",
     delp(["Resources", "Fn::ForEach::HostQueues", 2, "Queue&{HostId}", "Properties", "SqsManagedSseEnabled"]),
     "not encrypted"),
    ("DLQ kept 4 days",
     setp(["Resources", "Fn::ForEach::HostQueues", 2, "DeadLetterQueue&{HostId}", "Properties",
           "MessageRetentionPeriod"], 345600), "14 days"),
]


def write(t: dict, d: str, name: str) -> str:
    path = os.path.join(d, name + ".json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(t, f, indent=1)
    return path


def lint(cmd: list[str], path: str) -> tuple[int, str]:
    p = subprocess.run(cmd + ["--", path], capture_output=True, text=True, check=False)
    return p.returncode, (p.stdout + p.stderr).strip()


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: selftest.py TEMPLATE CFN_LINT_COMMAND...", file=sys.stderr)
        return 2
    template_path, cfn_lint = argv[1], argv[2:]
    base, matches = decode(template_path)
    if matches or base is None:
        print(f"cannot parse {template_path}: {[str(x) for x in matches]}")
        return 1
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        # 1. the real template passes both (as JSON too: the copies below
        #    are JSON, so a difference would come from the mutation only).
        original = write(copy.deepcopy(base), d, "original")
        for path in (template_path, original):
            rc, out = lint(cfn_lint, path)
            if rc != 0:
                problems.append(f"cfn-lint fails on the unmodified template {path}: {out}")
            if check_file(path):
                problems.append(f"security checks fail on the unmodified template {path}")

        # 2. cfn-lint fails on an error and on a warning.
        bad = copy.deepcopy(base)
        bad["Resources"]["StoreBucket"]["Properties"]["VersioningConfig"] = {"Status": "Enabled"}
        rc, out = lint(cfn_lint, write(bad, d, "invalid-property"))
        if rc == 0 or "E3002" not in out:
            problems.append(f"cfn-lint passed a template with an invalid property (rc {rc}): {out}")
        else:
            print("ok   cfn-lint fails on an invalid property (E3002)")
        warn = copy.deepcopy(base)
        warn["Resources"]["Function"]["DependsOn"] = ["FunctionRole"]
        rc, out = lint(cfn_lint, write(warn, d, "redundant-dependency"))
        if rc == 0 or "W3005" not in out or re.search(r"^E\d{4}", out, re.M):
            problems.append(f"cfn-lint passed a template with only a warning (rc {rc}): {out}")
        else:
            print("ok   cfn-lint fails on a warning only (W3005 redundant DependsOn)")

        # 3. each broken security property is caught.
        for i, (name, mutate, expected) in enumerate(MUTATIONS):
            t = copy.deepcopy(base)
            mutate(t)
            failures = check_file(write(t, d, f"mutation-{i}"))
            if not failures:
                problems.append(f"security checks passed a template with: {name}")
            elif not any(expected in f for f in failures):
                problems.append(f"{name}: failed, but not with '{expected}': {failures}")
            else:
                print(f"ok   security checks catch: {name}")

    for p in problems:
        print(f"FAIL {p}")
    total = 2 + len(MUTATIONS)
    print(f"template-selftest: {total - len(problems)} passed, {len(problems)} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
