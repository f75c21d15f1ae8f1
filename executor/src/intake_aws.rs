//! The S3 + SQS store as the intake's [`RemoteRuns`] (feature `aws`), and
//! the connection from [`AwsSettings`].

use std::time::Duration;

use async_trait::async_trait;
use remediate_spool::aws::{HostMessage, MirrorOutcome, S3SqsConfig, S3SqsStore};
use remediate_spool::{HostId, Result as SpoolResult, RunId, RunRecord};

use crate::intake::{AwsSettings, Mirrored, Received, RemoteMessage, RemoteRuns};

impl From<&AwsSettings> for S3SqsConfig {
    fn from(s: &AwsSettings) -> Self {
        S3SqsConfig {
            bucket: s.bucket.clone(),
            queue_prefix: s.queue_prefix.clone(),
            region: s.region.clone(),
            endpoint_url: s.endpoint_url.clone(),
        }
    }
}

/// Connects the store of AWS mode.
pub async fn connect(s: &AwsSettings) -> SpoolResult<S3SqsStore> {
    S3SqsStore::connect(S3SqsConfig::from(s)).await
}

#[async_trait]
impl RemoteRuns for S3SqsStore {
    async fn receive(&self, host: &HostId, max: u32, wait: Duration) -> SpoolResult<Vec<Received>> {
        let msgs = S3SqsStore::receive(self, host, max, wait).await?;
        Ok(msgs
            .into_iter()
            .map(|m| Received {
                message: m.message.map(|hm| match hm {
                    HostMessage::Run { run_id, host_id } => RemoteMessage::Run { run_id, host_id },
                    HostMessage::Drain { host_id, limit } => {
                        RemoteMessage::Drain { host_id, limit }
                    }
                    HostMessage::Policy { host_id } => RemoteMessage::Policy { host_id },
                }),
                receipt_handle: m.receipt_handle,
                message_id: m.message_id,
                receive_count: m.receive_count,
            })
            .collect())
    }

    async fn delete_message(&self, host: &HostId, receipt_handle: &str) -> SpoolResult<()> {
        S3SqsStore::delete_message(self, host, receipt_handle).await
    }

    async fn ready_runs(&self, host: &HostId, limit: usize) -> SpoolResult<Vec<RunId>> {
        S3SqsStore::ready_runs(self, host, limit).await
    }

    async fn fetch(&self, host: &HostId, id: &RunId) -> SpoolResult<Option<RunRecord>> {
        Ok(S3SqsStore::fetch(self, host, id).await?.map(|f| f.record))
    }

    async fn mirror(&self, record: &RunRecord) -> SpoolResult<Mirrored> {
        Ok(match S3SqsStore::mirror(self, record).await? {
            MirrorOutcome::Applied => Mirrored::Applied,
            MirrorOutcome::AlreadyCurrent => Mirrored::AlreadyCurrent,
            MirrorOutcome::Stale => Mirrored::Stale,
        })
    }

    async fn host_doc(&self, host: &HostId) -> SpoolResult<Option<serde_json::Value>> {
        remediate_spool::Store::get_host_doc(self, host).await
    }
}
