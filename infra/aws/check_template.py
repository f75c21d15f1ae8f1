#!/usr/bin/env python3
"""Checks the security properties of the AWS template that cfn-lint does not.

Usage: check_template.py TEMPLATE [HOST ...]

Expands the per-host Fn::ForEach blocks for a few sample hosts, then checks:
the store bucket (public access blocked, TLS-only policy, versioned,
encrypted, ownership enforced, noncurrent versions expire), each host's
queue and DLQ (encrypted, redrive after 5 receives, DLQ kept 14 days), each
executor role (its own queue only, S3 objects only under hosts/<host>/,
listing only with an s3:prefix condition inside it, nothing else), the
function role (no wildcard actions, sends only to the hosts' queues) and
the function's secrets (resolved from Secrets Manager, never literals).
Prints every failure and exits 1 when there is one. Runs with the Python
of the cfn-lint venv (it uses cfn-lint's YAML decoder).
"""

from __future__ import annotations

import copy
import re
import sys
from typing import Any

from cfnlint.decode import decode

SAMPLE_HOSTS = ["web-1", "db_2", "edge"]

EXECUTOR_SQS = {
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
}
EXECUTOR_S3_OBJECT = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
FUNCTION_SQS = {"sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"}
WILDCARD_RESOURCE_OK = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def logical(host: str) -> str:
    """The logical-id form of a host id (what &{HostId} gives)."""
    return re.sub(r"[^0-9A-Za-z]+", "", host)


def substitute(node: Any, ident: str, value: str) -> Any:
    """Replaces ${ident} and &{ident} in every key and string of node."""

    def s(text: str) -> str:
        return text.replace("${%s}" % ident, value).replace(
            "&{%s}" % ident, logical(value)
        )

    if isinstance(node, dict):
        return {s(str(k)): substitute(v, ident, value) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, ident, value) for v in node]
    if isinstance(node, str):
        return s(node)
    return node


def expand(section: dict, hosts: list[str]) -> dict:
    out: dict = {}
    for key, val in section.items():
        if str(key).startswith("Fn::ForEach::"):
            ident, _collection, body = val
            for h in hosts:
                for k, v in substitute(copy.deepcopy(dict(body)), ident, h).items():
                    if k in out:
                        raise SystemExit(f"duplicate logical id {k} after expansion")
                    out[k] = v
        else:
            out[str(key)] = val
    return out


def as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, list) else [x]


def name_of(x: Any) -> Any:
    """A logical id written as a plain string or as a Fn::Sub without variables."""
    if isinstance(x, dict) and set(x) == {"Fn::Sub"} and isinstance(x["Fn::Sub"], str):
        return x["Fn::Sub"]
    return x


def getatt(x: Any) -> tuple | None:
    """(logical id, attribute) of a Fn::GetAtt, else None."""
    if isinstance(x, dict) and set(x) == {"Fn::GetAtt"}:
        v = x["Fn::GetAtt"]
        if isinstance(v, str):
            v = v.split(".", 1)
        if isinstance(v, list) and len(v) == 2:
            return (name_of(v[0]), v[1])
    return None


def ref(x: Any) -> Any:
    if isinstance(x, dict) and set(x) == {"Ref"}:
        return name_of(x["Ref"])
    return None


def sub_text(x: Any) -> str | None:
    if isinstance(x, dict) and set(x) == {"Fn::Sub"}:
        v = x["Fn::Sub"]
        if isinstance(v, list):
            v = v[0]
        return v if isinstance(v, str) else None
    return None


def is_true(x: Any) -> bool:
    return x is True or (isinstance(x, str) and x.lower() == "true")


def is_false(x: Any) -> bool:
    return x is False or (isinstance(x, str) and x.lower() == "false")


class Checker:
    def __init__(self, template: dict, hosts: list[str]):
        self.t = template
        self.hosts = hosts
        self.res = expand(template.get("Resources", {}), hosts)
        self.failures: list[str] = []

    def fail(self, msg: str) -> None:
        self.failures.append(msg)

    def of_type(self, typ: str) -> dict:
        return {k: v for k, v in self.res.items() if v.get("Type") == typ}

    def props(self, lid: str) -> dict:
        return dict(self.res.get(lid, {}).get("Properties", {}) or {})

    # ------------------------------------------------------------ bucket
    def bucket(self) -> str | None:
        buckets = self.of_type("AWS::S3::Bucket")
        if len(buckets) != 1:
            self.fail(f"expected exactly one S3 bucket, found {len(buckets)}")
            return None
        lid = next(iter(buckets))
        p = self.props(lid)
        pab = p.get("PublicAccessBlockConfiguration") or {}
        for flag in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
            if not is_true(pab.get(flag)):
                self.fail(f"bucket {lid}: PublicAccessBlockConfiguration.{flag} is not true")
        if (p.get("VersioningConfiguration") or {}).get("Status") != "Enabled":
            self.fail(f"bucket {lid}: versioning is not enabled")
        rules = ((p.get("BucketEncryption") or {}).get("ServerSideEncryptionConfiguration")) or []
        algos = [((r or {}).get("ServerSideEncryptionByDefault") or {}).get("SSEAlgorithm") for r in rules]
        if not any(a in ("AES256", "aws:kms", "aws:kms:dsse") for a in algos):
            self.fail(f"bucket {lid}: no default server-side encryption")
        owners = [r.get("ObjectOwnership") for r in ((p.get("OwnershipControls") or {}).get("Rules") or [])]
        if "BucketOwnerEnforced" not in owners:
            self.fail(f"bucket {lid}: object ownership is not BucketOwnerEnforced (ACLs enabled)")
        lc = ((p.get("LifecycleConfiguration") or {}).get("Rules")) or []
        if not any(r.get("Status") == "Enabled" and r.get("NoncurrentVersionExpiration") for r in lc):
            self.fail(f"bucket {lid}: no enabled lifecycle rule expiring noncurrent versions")
        self.tls_only(lid)
        return lid

    def tls_only(self, bucket: str) -> None:
        ok = False
        for pid, pol in self.of_type("AWS::S3::BucketPolicy").items():
            p = pol.get("Properties", {})
            if ref(p.get("Bucket")) != bucket:
                continue
            for st in as_list((p.get("PolicyDocument") or {}).get("Statement")):
                cond = ((st.get("Condition") or {}).get("Bool") or {}).get("aws:SecureTransport")
                res = as_list(st.get("Resource"))
                covers_bucket = any(getatt(r) == (bucket, "Arn") for r in res)
                covers_objects = any(sub_text(r) == "${%s.Arn}/*" % bucket for r in res)
                if (
                    st.get("Effect") == "Deny"
                    and st.get("Principal") in ("*", {"AWS": "*"})
                    and set(as_list(st.get("Action"))) & {"s3:*", "*"}
                    and is_false(cond)
                    and covers_bucket
                    and covers_objects
                ):
                    ok = True
        if not ok:
            self.fail(
                f"bucket {bucket}: no bucket policy denying s3:* to everyone without TLS "
                "(aws:SecureTransport false) on the bucket and its objects"
            )

    # ------------------------------------------------------------ queues
    def queues(self) -> None:
        for h in self.hosts:
            q, d = f"Queue{logical(h)}", f"DeadLetterQueue{logical(h)}"
            if q not in self.res or d not in self.res:
                self.fail(f"host {h}: queue {q} or DLQ {d} missing")
                continue
            qp, dp = self.props(q), self.props(d)
            if sub_text(qp.get("QueueName")) != "${QueuePrefix}-%s" % h:
                self.fail(f"host {h}: queue name is not <prefix>-{h}")
            if sub_text(dp.get("QueueName")) != "${QueuePrefix}-%s-dlq" % h:
                self.fail(f"host {h}: DLQ name is not <prefix>-{h}-dlq")
            for lid, p in ((q, qp), (d, dp)):
                if not (is_true(p.get("SqsManagedSseEnabled")) or p.get("KmsMasterKeyId")):
                    self.fail(f"host {h}: {lid} is not encrypted")
            rp = qp.get("RedrivePolicy") or {}
            if getatt(rp.get("deadLetterTargetArn")) != (d, "Arn"):
                self.fail(f"host {h}: redrive policy does not target its own DLQ")
            if str(rp.get("maxReceiveCount")) != "5":
                self.fail(f"host {h}: redrive maxReceiveCount is not 5")
            if str(dp.get("MessageRetentionPeriod")) != "1209600":
                self.fail(f"host {h}: DLQ retention is not 14 days")
            if qp.get("VisibilityTimeout") is None:
                self.fail(f"host {h}: queue has no explicit visibility timeout")

    # ------------------------------------------------------------ IAM
    def statements(self, role: str) -> list[dict]:
        """Every policy statement attached to a role, inline or separate."""
        p = self.props(role)
        out = []
        for pol in as_list(p.get("Policies")):
            out += as_list((pol.get("PolicyDocument") or {}).get("Statement"))
        for typ in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"):
            for pol in self.of_type(typ).values():
                pp = pol.get("Properties", {})
                roles = [ref(r) for r in as_list(pp.get("Roles"))] + [ref(pp.get("RoleName"))]
                if role in roles:
                    out += as_list((pp.get("PolicyDocument") or {}).get("Statement"))
        return out

    def no_managed(self, role: str) -> None:
        if self.props(role).get("ManagedPolicyArns"):
            self.fail(f"role {role}: has managed policies attached (grants not checked here)")

    def executors(self, bucket: str) -> None:
        for h in self.hosts:
            role = f"ExecutorRole{logical(h)}"
            if role not in self.res:
                self.fail(f"host {h}: executor role {role} missing")
                continue
            self.no_managed(role)
            prefix = "hosts/%s/" % h
            for st in self.statements(role):
                if st.get("Effect") != "Allow":
                    continue
                where = f"executor role of {h}, statement {st.get('Sid', '?')}"
                if "NotAction" in st or "NotResource" in st:
                    self.fail(f"{where}: NotAction/NotResource")
                    continue
                actions = set(as_list(st.get("Action")))
                resources = as_list(st.get("Resource"))
                for a in actions:
                    if not isinstance(a, str) or "*" in a:
                        self.fail(f"{where}: wildcard action {a}")
                if actions <= EXECUTOR_SQS:
                    for r in resources:
                        if getatt(r) != (f"Queue{logical(h)}", "Arn"):
                            self.fail(f"{where}: SQS access beyond its own queue: {r}")
                elif actions <= EXECUTOR_S3_OBJECT:
                    for r in resources:
                        txt = sub_text(r)
                        head = "${%s.Arn}/" % bucket
                        rest = txt[len(head):] if txt and txt.startswith(head) else None
                        if rest is None or not rest.startswith(prefix) or "*" in rest[: len(prefix)]:
                            self.fail(f"{where}: S3 object access outside {prefix}: {r}")
                elif actions == {"s3:ListBucket"}:
                    for r in resources:
                        if getatt(r) != (bucket, "Arn"):
                            self.fail(f"{where}: ListBucket on something else than the store: {r}")
                    cond = st.get("Condition") or {}
                    values = []
                    for op in ("StringLike", "StringEquals"):
                        values += as_list((cond.get(op) or {}).get("s3:prefix"))
                    if not values or set(cond) - {"StringLike", "StringEquals"}:
                        self.fail(f"{where}: ListBucket without an s3:prefix condition")
                    for v in values:
                        txt = sub_text(v) if isinstance(v, dict) else v
                        if not isinstance(txt, str) or not txt.startswith(prefix):
                            self.fail(f"{where}: ListBucket prefix outside {prefix}: {v}")
                else:
                    self.fail(f"{where}: actions not allowed for an executor: {sorted(map(str, actions))}")

    def function(self, bucket: str) -> None:
        fns = self.of_type("AWS::Lambda::Function")
        if len(fns) != 1:
            self.fail(f"expected exactly one Lambda function, found {len(fns)}")
            return
        fid, fn = next(iter(fns.items()))
        p = fn.get("Properties", {})
        if p.get("Runtime") != "provided.al2023":
            self.fail(f"function {fid}: runtime is not provided.al2023")
        env = (p.get("Environment") or {}).get("Variables") or {}
        if env.get("VPS_REMEDIATE_STORE") != "aws":
            self.fail(f"function {fid}: VPS_REMEDIATE_STORE is not aws")
        if ref(env.get("VPS_REMEDIATE_S3_BUCKET")) != bucket:
            self.fail(f"function {fid}: VPS_REMEDIATE_S3_BUCKET is not the store bucket")
        if "VPS_REMEDIATE_SESSION_KEY" not in env:
            self.fail(f"function {fid}: VPS_REMEDIATE_SESSION_KEY is not set")
        for k, v in env.items():
            if re.search(r"KEY|TOKEN|SECRET|PASSWORD", k):
                txt = sub_text(v) if isinstance(v, dict) else v
                if not (isinstance(txt, str) and re.fullmatch(r"\{\{resolve:(secretsmanager|ssm-secure):.+\}\}", txt)):
                    self.fail(f"function {fid}: {k} is not a Secrets Manager/SSM dynamic reference")
        role = getatt(p.get("Role"))
        if not role or role[0] not in self.res:
            self.fail(f"function {fid}: role is not a role of this template")
            return
        rid = role[0]
        self.no_managed(rid)
        queues = {(f"Queue{logical(h)}", "Arn") for h in self.hosts}
        for st in self.statements(rid):
            if st.get("Effect") != "Allow":
                continue
            where = f"function role, statement {st.get('Sid', '?')}"
            if "NotAction" in st or "NotResource" in st:
                self.fail(f"{where}: NotAction/NotResource")
                continue
            actions = set(as_list(st.get("Action")))
            resources = as_list(st.get("Resource"))
            for a in actions:
                if not isinstance(a, str) or "*" in a:
                    self.fail(f"{where}: wildcard action {a}")
            if "*" in resources and not actions <= WILDCARD_RESOURCE_OK:
                self.fail(f"{where}: Resource * for {sorted(map(str, actions))}")
            sqs = {a for a in actions if isinstance(a, str) and a.startswith("sqs:")}
            if sqs:
                if not sqs <= FUNCTION_SQS:
                    self.fail(f"{where}: SQS actions beyond sending: {sorted(sqs)}")
                for r in resources:
                    if getatt(r) not in queues:
                        self.fail(f"{where}: SQS access beyond the hosts' queues: {r}")
            if {a for a in actions if isinstance(a, str) and a.startswith("secretsmanager:")}:
                self.fail(f"{where}: the function reads no secret at run time (resolved at deploy)")
        sent = set()
        for st in self.statements(rid):
            if "sqs:SendMessage" in as_list(st.get("Action")):
                sent |= {getatt(r) for r in as_list(st.get("Resource"))}
        for h in self.hosts:
            if (f"Queue{logical(h)}", "Arn") not in sent:
                self.fail(f"function role cannot send to the queue of {h}")

    def run(self) -> list[str]:
        bucket = self.bucket()
        self.queues()
        if bucket:
            self.executors(bucket)
            self.function(bucket)
        return self.failures


def check_file(path: str, hosts: list[str] | None = None) -> list[str]:
    template, matches = decode(path)
    if matches or template is None:
        return [f"cannot parse {path}: {[str(m) for m in matches]}"]
    return Checker(template, hosts or SAMPLE_HOSTS).run()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    failures = check_file(argv[1], argv[2:] or None)
    for f in failures:
        print(f"FAIL {f}")
    if failures:
        print(f"{argv[1]}: {len(failures)} security check(s) failed")
        return 1
    print(f"{argv[1]}: security checks passed (hosts {', '.join(argv[2:] or SAMPLE_HOSTS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
