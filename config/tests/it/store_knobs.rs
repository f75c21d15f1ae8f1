//! The store and Lambda knobs: `VPS_REMEDIATE_STORE`, `VPS_REMEDIATE_S3_BUCKET`,
//! `VPS_REMEDIATE_SQS_QUEUE_PREFIX`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `VPS_REMEDIATE_SESSION_KEY`.

use remediate_config::knobs::{SQS_HOST_ID_MAX, SQS_QUEUE_NAME_MAX, SQS_QUEUE_PREFIX_MAX};
use remediate_config::{Layer, Loader, StoreKind};
use serde_json::json;

use crate::util::jail;

const KEY: &str = "0123456789abcdef0123456789abcdef-session";

#[test]
fn defaults_are_the_local_store_and_no_session_key() {
    jail(|_| {
        let loaded = Loader::new().load().expect("defaults");
        let st = &loaded.settings.store;
        assert_eq!(st.kind, StoreKind::Local);
        assert_eq!(st.s3_bucket, None);
        assert_eq!(st.sqs_queue_prefix, "vps-remediate");
        assert_eq!(st.aws_region, "us-east-1");
        assert_eq!(st.aws_endpoint_url, None);
        assert_eq!(loaded.settings.session_key, None);
        Ok(())
    });
}

#[test]
fn the_aws_store_takes_every_knob_from_the_environment() {
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_STORE", "AWS");
        jail.set_env("VPS_REMEDIATE_S3_BUCKET", "ops-runs.example-1");
        jail.set_env("VPS_REMEDIATE_SQS_QUEUE_PREFIX", "vr_prod-1");
        jail.set_env("AWS_REGION", "eu-central-1");
        jail.set_env("AWS_ENDPOINT_URL", "http://127.0.0.1:5000");
        jail.set_env("VPS_REMEDIATE_SESSION_KEY", KEY);
        // The SDK's other variables are not ours: no warning.
        jail.set_env("AWS_ACCESS_KEY_ID", "test");
        jail.set_env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001");
        let loaded = Loader::new().load().expect("loads");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let st = &loaded.settings.store;
        assert_eq!(st.kind, StoreKind::Aws);
        assert_eq!(st.s3_bucket.as_deref(), Some("ops-runs.example-1"));
        assert_eq!(st.sqs_queue_prefix, "vr_prod-1");
        assert_eq!(st.aws_region, "eu-central-1");
        assert_eq!(
            st.aws_endpoint_url.as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(
            loaded.settings.session_key.as_ref().map(|k| k.expose()),
            Some(KEY)
        );
        for env in [
            "VPS_REMEDIATE_STORE",
            "VPS_REMEDIATE_S3_BUCKET",
            "AWS_REGION",
            "AWS_ENDPOINT_URL",
            "VPS_REMEDIATE_SESSION_KEY",
        ] {
            assert_eq!(loaded.layer_of(env), Some(Layer::Env), "{env}");
        }
        Ok(())
    });
}

#[test]
fn the_store_knobs_can_come_from_the_config_file() {
    jail(|jail| {
        jail.create_file(
            "c.toml",
            "store = \"aws\"\ns3_bucket = \"file-bucket\"\naws_region = \"us-west-2\"\n",
        )?;
        jail.set_env("AWS_REGION", "ap-south-1");
        let loaded = Loader::new()
            .config_file(Some("c.toml".into()))
            .load()
            .expect("loads");
        let st = &loaded.settings.store;
        assert_eq!(st.kind, StoreKind::Aws);
        assert_eq!(st.s3_bucket.as_deref(), Some("file-bucket"));
        assert_eq!(st.aws_region, "ap-south-1", "env wins over the file");
        assert_eq!(
            loaded.layer_of("VPS_REMEDIATE_S3_BUCKET"),
            Some(Layer::File)
        );
        Ok(())
    });
}

#[test]
fn the_aws_store_without_a_bucket_is_a_startup_error() {
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_STORE", "aws");
        let err = Loader::new().load().expect_err("no bucket");
        assert_eq!(err.errors().len(), 1, "{err}");
        assert_eq!(err.errors()[0].code(), "required");
        let line = err.to_string();
        assert!(
            line.starts_with(
                "VPS_REMEDIATE_S3_BUCKET=(unset): required when VPS_REMEDIATE_STORE=aws; allowed: an S3 bucket name"
            ),
            "{line}"
        );
        assert!(
            line.ends_with("(set by VPS_REMEDIATE_STORE from environment)"),
            "{line}"
        );
        Ok(())
    });
    // An empty bucket is unset, so the same error.
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_STORE", "aws");
        jail.set_env("VPS_REMEDIATE_S3_BUCKET", " ");
        let err = Loader::new().load().expect_err("empty bucket");
        assert_eq!(err.errors()[0].code(), "required");
        Ok(())
    });
    // The local store does not need one.
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_STORE", "local");
        assert!(Loader::new().load().is_ok());
        Ok(())
    });
}

#[test]
fn bad_store_values_are_all_reported_at_once_with_secrets_redacted() {
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_STORE", "dynamo");
        jail.set_env("VPS_REMEDIATE_S3_BUCKET", "My_Bucket");
        jail.set_env("VPS_REMEDIATE_SQS_QUEUE_PREFIX", "vps.remediate");
        jail.set_env("AWS_REGION", "US East 1");
        jail.set_env("AWS_ENDPOINT_URL", "localhost:5000");
        jail.set_env("VPS_REMEDIATE_SESSION_KEY", "short-but-secret-key");
        let err = Loader::new().load().expect_err("invalid");
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        for expected in [
            "VPS_REMEDIATE_STORE=\"dynamo\": not an allowed value; allowed: one of local, aws (set by environment)",
            "VPS_REMEDIATE_S3_BUCKET=\"My_Bucket\": may only hold a-z 0-9 . -; allowed: an S3 bucket name: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit, not an IP address (set by environment)",
            "VPS_REMEDIATE_SQS_QUEUE_PREFIX=\"vps.remediate\": has characters SQS queue names do not allow; allowed: 1-27 of A-Z a-z 0-9 _ - (so <prefix>-<host>-dlq fits 80 characters with a 48-character host id) (set by environment)",
            "AWS_REGION=\"US East 1\": not a region name; allowed: an AWS region such as us-east-1 (a-z 0-9 -) (set by environment)",
            "AWS_ENDPOINT_URL=\"localhost:5000\": not an http:// or https:// URL; allowed: an http:// or https:// URL (set by environment)",
            "VPS_REMEDIATE_SESSION_KEY=<redacted>: too short; allowed: at least 32 printable ASCII characters, no spaces (set by environment)",
        ] {
            assert!(
                lines.contains(&expected),
                "missing line {expected:?} in:\n{text}"
            );
        }
        assert!(
            !text.contains("short-but-secret-key"),
            "secret leaked: {text}"
        );
        Ok(())
    });
}

#[test]
fn bucket_names_follow_the_s3_rules() {
    for good in ["abc", "my-bucket.v2", "0runs", &"a".repeat(63)] {
        jail(|jail| {
            jail.set_env("VPS_REMEDIATE_S3_BUCKET", good);
            let loaded = Loader::new().load().expect(good);
            assert_eq!(loaded.settings.store.s3_bucket.as_deref(), Some(good));
            Ok(())
        });
    }
    for (bad, why) in [
        ("ab", "must be 3-63 characters long"),
        (&*"a".repeat(64), "must be 3-63 characters long"),
        ("-bucket", "must start and end with a letter or digit"),
        ("bucket.", "must start and end with a letter or digit"),
        ("my..bucket", "has adjacent dots or a dot next to a hyphen"),
        ("my.-bucket", "has adjacent dots or a dot next to a hyphen"),
        ("192.168.5.4", "is formatted as an IP address"),
        ("xn--bucket", "starts with the reserved prefix xn--"),
        ("sthree-x", "starts with the reserved prefix sthree-"),
        ("bucket-s3alias", "ends with the reserved suffix -s3alias"),
        ("bucket--ol-s3", "ends with the reserved suffix --ol-s3"),
        ("Bucket", "may only hold a-z 0-9 . -"),
        ("bu/cket", "may only hold a-z 0-9 . -"),
    ] {
        jail(|jail| {
            jail.set_env("VPS_REMEDIATE_S3_BUCKET", bad);
            let err = Loader::new().load().expect_err(bad);
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("VPS_REMEDIATE_S3_BUCKET=\"{bad}\": {why};")),
                "{bad}: {text}"
            );
            Ok(())
        });
    }
}

#[test]
fn the_queue_prefix_leaves_room_for_the_longest_host_id() {
    assert_eq!(
        SQS_QUEUE_PREFIX_MAX + "-".len() + SQS_HOST_ID_MAX + "-dlq".len(),
        SQS_QUEUE_NAME_MAX
    );
    let longest = "p".repeat(SQS_QUEUE_PREFIX_MAX);
    let host = "h".repeat(SQS_HOST_ID_MAX);
    assert_eq!(format!("{longest}-{host}-dlq").len(), 80);
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_SQS_QUEUE_PREFIX", &longest);
        let loaded = Loader::new().load().expect("longest prefix");
        assert_eq!(loaded.settings.store.sqs_queue_prefix, longest);
        Ok(())
    });
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_SQS_QUEUE_PREFIX", format!("{longest}p"));
        let err = Loader::new().load().expect_err("one too long");
        assert!(
            err.to_string().starts_with(&format!(
                "VPS_REMEDIATE_SQS_QUEUE_PREFIX=\"{longest}p\": too long;"
            )),
            "{err}"
        );
        Ok(())
    });
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_SQS_QUEUE_PREFIX", "a b");
        assert!(Loader::new().load().is_err());
        Ok(())
    });
}

#[test]
fn the_session_key_is_redacted_in_the_explain_view_and_debug_output() {
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_SESSION_KEY", KEY);
        let loaded = Loader::new().load().expect("loads");
        let entry = loaded
            .explain()
            .into_iter()
            .find(|e| e.variable == "VPS_REMEDIATE_SESSION_KEY")
            .expect("explain entry");
        assert_eq!(entry.value, json!("<redacted>"));
        assert_eq!(entry.layer, Layer::Env);
        assert!(!format!("{loaded:?}").contains(KEY), "debug leaks the key");
        let explain = serde_json::to_string(&loaded.explain()).expect("json");
        assert!(!explain.contains(KEY), "explain leaks the key");
        Ok(())
    });
    // Unset: shown as null, not as a redaction.
    jail(|_| {
        let loaded = Loader::new().load().expect("loads");
        let entry = loaded
            .explain()
            .into_iter()
            .find(|e| e.variable == "VPS_REMEDIATE_SESSION_KEY")
            .expect("explain entry");
        assert_eq!(entry.value, json!(null));
        Ok(())
    });
}

#[test]
fn aws_names_are_read_only_unprefixed_and_prefixed_look_alikes_are_warned_about() {
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_AWS_REGION", "eu-west-1");
        let loaded = Loader::new().load().expect("loads");
        assert_eq!(loaded.settings.store.aws_region, "us-east-1", "not applied");
        let lines: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("VPS_REMEDIATE_AWS_REGION: unknown setting, ignored"),
            "{lines:?}"
        );
        Ok(())
    });
}

#[test]
fn the_tokens_file_defaults_to_var_and_follows_the_environment() {
    jail(|jail| {
        let loaded = Loader::new().load().expect("defaults");
        assert_eq!(
            loaded.settings.tokens_file,
            std::path::PathBuf::from("./var/tokens.toml")
        );
        jail.set_env(
            "VPS_REMEDIATE_TOKENS_FILE",
            "/etc/vps-remediate/tokens.toml",
        );
        let loaded = Loader::new().load().expect("env");
        assert_eq!(
            loaded.settings.tokens_file,
            std::path::PathBuf::from("/etc/vps-remediate/tokens.toml")
        );
        Ok(())
    });
}

#[test]
fn an_endpoint_url_with_credentials_is_refused() {
    jail(|jail| {
        jail.set_env("AWS_ENDPOINT_URL", "http://key:secret@127.0.0.1:5000");
        let err = Loader::new().load().expect_err("credentials in URL");
        let text = err.to_string();
        assert!(
            text.starts_with("AWS_ENDPOINT_URL=\"http://<redacted>@127.0.0.1:5000\": URL has no host, or has credentials in it;"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
        Ok(())
    });
}
