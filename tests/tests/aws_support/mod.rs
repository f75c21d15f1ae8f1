//! Shared by the AWS-mode tests: moto, the real S3 + SQS store on it, runs.

#![allow(dead_code)]

use remediate_spool::aws::{S3SqsConfig, S3SqsStore};
use remediate_spool::{HostId, NewRun};
use remediate_tests::moto::Moto;

pub const BUCKET: &str = "vps-remediate-test";

/// moto with a bucket, and the store connected to it.
pub struct Aws {
    pub store: S3SqsStore,
    pub cfg: S3SqsConfig,
    pub moto: Moto,
}

/// Starts moto and connects the store (queue names `<prefix>-<host>`); None
/// when moto is missing and the AWS tests are skipped.
pub async fn aws(test: &str, prefix: &str) -> Option<Aws> {
    let moto = Moto::start_or_skip(test)?;
    let cfg = S3SqsConfig {
        bucket: BUCKET.into(),
        queue_prefix: prefix.into(),
        region: "us-east-1".into(),
        endpoint_url: Some(moto.endpoint()),
    };
    let store = S3SqsStore::connect_with_static_credentials(cfg.clone(), "test", "test")
        .await
        .expect("connect the store to moto");
    store
        .s3_client()
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket: {e:?}\nmoto log:\n{}", moto.log()));
    Some(Aws { store, cfg, moto })
}

pub fn host(s: &str) -> HostId {
    HostId::parse(s).expect("host id")
}

pub fn new_run(h: &HostId, action: &str, idempotent: bool) -> NewRun {
    NewRun {
        idempotent,
        ..NewRun::new(h.clone(), action, "tester")
    }
}
