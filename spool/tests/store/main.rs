//! The store contract, run against the local spool and (with feature `aws`)
//! against the S3 + SQS store on a moto server this process starts; plus the
//! S3/SQS store's own tests (pointer messages, redrive, the approve race).
//!
//! `cargo test -p remediate-spool --features aws --test store`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "aws")]
mod aws;
mod contract;
#[cfg(feature = "aws")]
mod moto;

/// One test per contract case and store: `local::<case>` and `s3sqs::<case>`.
macro_rules! contract_tests {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let spool = remediate_spool::LocalSpool::open(dir.path().join("spool"))
                        .expect("open spool");
                    crate::contract::$case(&spool).await;
                }
            )*
        }

        #[cfg(feature = "aws")]
        mod s3sqs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(store) = crate::moto::fresh_store().await else { return };
                    crate::contract::$case(&store).await;
                }
            )*
        }
    };
}

contract_tests!(
    enqueue_and_idempotency,
    held_approve_reject,
    claim_start_complete,
    retry_dead_letter_replay,
    hold_expire_cancel,
    counts_and_list,
    host_docs_activity_audit,
    prune_finished,
    concurrent_same_key_creates_one,
    enqueue_checked_gates,
);
