//! Shared helpers for the spool's integration tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use remediate_spool::io::DurableIo;
use remediate_spool::*;

pub fn host(s: &str) -> HostId {
    HostId::parse(s).expect("valid host id")
}

pub fn t0() -> Timestamp {
    chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("valid time")
}

/// A spool in a temporary directory with a manual clock.
#[derive(Debug)]
pub struct TempSpool {
    pub dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub spool: LocalSpool,
}

impl TempSpool {
    pub fn new() -> Self {
        Self::with_io(Arc::new(remediate_spool::io::RealIo))
    }

    pub fn with_io(io: Arc<dyn DurableIo>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(t0()));
        let spool = open(dir.path(), io, clock.clone());
        TempSpool { dir, clock, spool }
    }

    /// Drops the spool (as a dying process would: locks released) and opens
    /// it again with real I/O.
    pub fn reopen(&mut self) {
        self.reopen_with(Arc::new(remediate_spool::io::RealIo));
    }

    pub fn reopen_with(&mut self, io: Arc<dyn DurableIo>) {
        self.spool = open(self.dir.path(), io, self.clock.clone());
    }

    pub fn files(&self, h: &HostId, d: Dir) -> Vec<String> {
        self.spool
            .files_in(h, d)
            .into_iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    }

    /// Enqueues a plain run of `action` on `h`; its id.
    pub fn enqueue(&self, h: &HostId, action: &str) -> RunId {
        self.spool
            .enqueue_blocking(run(h, action))
            .expect("enqueue")
            .record
            .run_id
    }

    pub fn advance_secs(&self, s: i64) {
        self.clock.advance(chrono::Duration::seconds(s));
    }
}

pub fn open(root: &std::path::Path, io: Arc<dyn DurableIo>, clock: Arc<ManualClock>) -> LocalSpool {
    LocalSpool::open_with(
        root.join("spool"),
        SpoolOptions {
            io,
            clock,
            worker: "test".into(),
        },
    )
    .expect("open spool")
}

pub fn run(h: &HostId, action: &str) -> NewRun {
    NewRun::new(h.clone(), action, "tester")
}

pub fn ok_result() -> AttemptResult {
    AttemptResult {
        exit_status: Some(0),
        ..AttemptResult::default()
    }
}

pub fn fail_result() -> AttemptResult {
    AttemptResult {
        exit_status: Some(1),
        error: Some("exit 1".into()),
        ..AttemptResult::default()
    }
}

/// Every run id found in the state directories, with where it was found.
pub fn census(ts: &TempSpool, h: &HostId) -> BTreeMap<String, Vec<Dir>> {
    let mut m: BTreeMap<String, Vec<Dir>> = BTreeMap::new();
    for d in [
        Dir::Queued,
        Dir::Held,
        Dir::Running,
        Dir::Done,
        Dir::Dlq,
        Dir::Corrupt,
    ] {
        for f in ts.files(h, d) {
            m.entry(f).or_default().push(d);
        }
    }
    m
}
