//! The built-in and demo catalogs: content, rendering, loading, and the demo
//! commands' real exit statuses.

use std::process::Command;

use remediate_config::{
    Catalog, CatalogSource, ParamKind, RenderContext, Risk, Tier, approval_required,
};
use serde_json::json;

use crate::util::{jail, obj};

#[test]
fn builtin_has_the_five_actions_of_the_seed() {
    let c = Catalog::builtin();
    let ids: Vec<&str> = c.actions().iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "lockdown-access-surface",
            "quarantine-unexpected-listener",
            "harden-ssh-auth",
            "verify-system-drift",
            "collect-forensics-first",
        ]
    );
    // id, triggers, risk, tier, has canary checks, has rollback
    type Row = (
        &'static str,
        &'static [&'static str],
        Risk,
        Tier,
        bool,
        bool,
    );
    let table: [Row; 5] = [
        (
            "lockdown-access-surface",
            &["config_tamper", "firewall_drift"],
            Risk::Medium,
            Tier::GuardedAuto,
            true,
            true,
        ),
        (
            "quarantine-unexpected-listener",
            &["unexpected_public_ports"],
            Risk::High,
            Tier::RiskyManual,
            true,
            true,
        ),
        (
            "harden-ssh-auth",
            &["ssh_failed_password", "ssh_invalid_user"],
            Risk::Medium,
            Tier::GuardedAuto,
            true,
            true,
        ),
        (
            "verify-system-drift",
            &["package_drift", "account_drift"],
            Risk::Low,
            Tier::SafeAuto,
            false,
            false,
        ),
        (
            "collect-forensics-first",
            &[],
            Risk::Low,
            Tier::Observe,
            false,
            false,
        ),
    ];
    for (id, triggers, risk, tier, canary, rollback) in table {
        let a = c.get(id).expect(id);
        assert_eq!(a.triggers, triggers, "{id}");
        assert_eq!((a.risk, a.tier), (risk, tier), "{id}");
        assert_eq!(!a.canary_checks.is_empty(), canary, "{id}");
        assert_eq!(!a.rollback.is_empty(), rollback, "{id}");
        assert!(a.idempotent && a.sudo, "{id}");
        assert!(
            a.commands.iter().flatten().all(|w| !w.contains(' ')),
            "{id}: no shell strings"
        );
    }
    assert_eq!(
        c.fallback().map(|a| a.id.as_str()),
        Some("collect-forensics-first")
    );
    assert_eq!(
        c.for_trigger("firewall_drift").map(|a| a.id.as_str()),
        Some("lockdown-access-surface")
    );
    assert_eq!(
        c.for_trigger("never_heard_of_it").map(|a| a.id.as_str()),
        Some("collect-forensics-first")
    );
}

#[test]
fn quarantine_has_typed_parameters_and_a_check_that_can_match() {
    let c = Catalog::builtin();
    let a = c.get("quarantine-unexpected-listener").expect("action");
    let port = a.params.iter().find(|p| p.name == "port").expect("port");
    assert_eq!(
        port.kind,
        ParamKind::Int {
            min: 1,
            max: 65535,
            exclude: vec![22]
        }
    );
    let proto = a
        .params
        .iter()
        .find(|p| p.name == "protocol")
        .expect("protocol");
    assert_eq!(
        proto.kind,
        ParamKind::Enum {
            values: vec!["tcp".into(), "udp".into()]
        }
    );

    let r = a
        .render(
            &obj(json!({"port": 8080, "protocol": "udp"})),
            &RenderContext::new("r", 1),
        )
        .expect("renders");
    assert_eq!(
        r.commands,
        [["/usr/sbin/ufw", "prepend", "deny", "8080/udp"]]
    );
    // The check asks the kernel, by exit status, whether the very rule the
    // command adds is installed: `iptables -C` exits 0 if it is.
    assert_eq!(
        r.canary_checks,
        [[
            "/usr/sbin/iptables",
            "-w",
            "-C",
            "ufw-user-input",
            "-p",
            "udp",
            "--dport",
            "8080",
            "-j",
            "DROP"
        ]]
    );
    assert_eq!(
        r.rollback,
        [["/usr/sbin/ufw", "delete", "deny", "8080/udp"]]
    );
    assert!(approval_required(
        a.risk,
        a.tier,
        remediate_config::RiskThreshold::None
    ));
}

#[test]
fn forensics_archive_is_named_after_the_run() {
    let c = Catalog::builtin();
    let r = c
        .get("collect-forensics-first")
        .expect("action")
        .render(&serde_json::Map::new(), &RenderContext::new("run-42", 1))
        .expect("renders");
    assert!(
        r.commands
            .iter()
            .flatten()
            .any(|w| w == "--file=/var/lib/vps-remediate/forensics/run-42.tar.gz")
    );
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["actionId"], "collect-forensics-first");
    assert_eq!(json["sudo"], true);
}

#[test]
fn demo_has_the_actions_the_readme_and_tests_need() {
    let c = Catalog::demo();
    for id in [
        "demo-system-info",
        "demo-disk-usage",
        "demo-always-fails",
        "demo-flaky",
        "demo-slow",
        "demo-approval",
        "demo-canary-fails",
        "demo-echo",
        "demo-list-dir",
    ] {
        let a = c.get(id).expect(id);
        assert!(!a.sudo, "{id}: the demo never needs root");
    }
    let approval = c.get("demo-approval").expect("approval");
    assert_eq!(
        (approval.risk, approval.tier),
        (Risk::High, Tier::RiskyManual)
    );
    let flaky = c.get("demo-flaky").expect("flaky");
    let r = flaky
        .render(&serde_json::Map::new(), &RenderContext::new("r", 2))
        .expect("renders");
    assert_eq!(r.commands, [["/usr/bin/test", "2", "-ge", "3"]]);
}

/// Run an argv the way the executor does: no shell, a cleared environment
/// with only PATH and LANG=C. Returns the exit code.
fn run(argv: &[String]) -> i32 {
    let (exe, args) = argv.split_first().expect("non-empty argv");
    Command::new(exe)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C")
        .output()
        .map(|o| o.status.code().unwrap_or(-1))
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

#[cfg(target_os = "linux")]
#[test]
fn demo_commands_have_the_exit_statuses_they_promise() {
    let c = Catalog::demo();
    let render = |id: &str, attempt: u32, params: serde_json::Value| {
        c.get(id)
            .expect(id)
            .render(&obj(params), &RenderContext::new("demo-run", attempt))
            .expect(id)
    };
    for (id, params) in [
        ("demo-system-info", json!({})),
        ("demo-disk-usage", json!({})),
        ("demo-echo", json!({"message": "hello"})),
        ("demo-list-dir", json!({})),
    ] {
        let r = render(id, 1, params);
        for cmd in r.commands.iter().chain(&r.canary_checks) {
            assert_eq!(run(cmd), 0, "{id}: {cmd:?}");
        }
    }
    let fails = render("demo-always-fails", 1, json!({}));
    assert_ne!(run(&fails.commands[0]), 0);
    for (attempt, expect_ok) in [(1, false), (2, false), (3, true), (4, true)] {
        let r = render("demo-flaky", attempt, json!({}));
        assert_eq!(run(&r.commands[0]) == 0, expect_ok, "attempt {attempt}");
    }
    let slow = render("demo-slow", 1, json!({"seconds": 1}));
    assert_eq!(run(&slow.commands[0]), 0);
    let canary = render("demo-canary-fails", 1, json!({}));
    assert_eq!(run(&canary.commands[0]), 0);
    assert_ne!(run(&canary.canary_checks[0]), 0);
    assert_eq!(run(&canary.rollback[0]), 0);
    let approval = render("demo-approval", 1, json!({"port": 8080}));
    for cmd in approval
        .commands
        .iter()
        .chain(&approval.canary_checks)
        .chain(&approval.rollback)
    {
        assert_eq!(run(cmd), 0, "{cmd:?}");
    }
}

#[test]
fn catalogs_load_from_files_and_settings() {
    jail(|jail| {
        jail.create_file("mine.toml", remediate_config::DEMO_TOML)?;
        let c = Catalog::load("mine.toml").expect("loads");
        assert_eq!(c.origin(), "mine.toml");
        assert_eq!(c.actions(), Catalog::demo().actions());
        assert_eq!(
            CatalogSource::File("mine.toml".into())
                .load()
                .expect("file"),
            c
        );
        assert_eq!(CatalogSource::Demo.load().expect("demo").origin(), "demo");
        let err = Catalog::load("missing.toml").expect_err("missing");
        assert_eq!(err.code(), "catalog_io");
        jail.create_file("bad.toml", "[[action]]\nid = 1\n")?;
        let err = Catalog::load("bad.toml").expect_err("syntax");
        assert_eq!(err.code(), "catalog_syntax");
        assert!(err.to_string().starts_with("catalog bad.toml: "), "{err}");
        Ok(())
    });
}

#[test]
fn catalogs_serialize_for_the_console() {
    let json = serde_json::to_value(Catalog::builtin().get("quarantine-unexpected-listener"))
        .expect("json");
    assert_eq!(json["timeoutSecs"], 60);
    assert_eq!(json["canaryChecks"][0][0], "/usr/sbin/iptables");
    assert_eq!(json["params"][0]["name"], "port");
    assert_eq!(json["params"][0]["type"], "int");
    assert_eq!(json["params"][0]["exclude"], json!([22]));
}

#[test]
fn readme_knob_table_is_generated_from_the_code() {
    let readme = include_str!("../../README.md");
    let table = remediate_config::knobs::markdown_table();
    assert!(
        readme.contains(&table),
        "config/README.md's knob table is out of date; replace it with:\n{table}"
    );
}
