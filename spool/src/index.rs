//! The in-memory index of a spool: which run sits where, ordered by due time
//! and by request time, kept current by inotify.
//!
//! The index is a hint, never the truth: a claim still locks and reads the
//! file, and every inotify event is checked against the file system when it
//! is processed. It exists so that a claim and a snapshot cost the same with
//! 100 or 100,000 runs in the spool. It is built by one scan per host; after
//! that, this process's own moves update it directly and other processes'
//! moves arrive as inotify events (drained, without blocking, before every
//! query). A queue overflow falls back to a full rescan.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::id::{HostId, RunId};
use crate::local::Dir;
use crate::record::{RunRecord, RunState};

/// The buckets a snapshot counts; each run is in exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Bucket {
    /// Queued and never attempted.
    Queued,
    /// Queued after a failed attempt, waiting for `nextAttemptAt`.
    RetryScheduled,
    /// Waiting for an operator's approval.
    Held,
    /// Claimed by an executor (attempt started or about to).
    Running,
    Succeeded,
    Rejected,
    Expired,
    Canceled,
    Replayed,
    Dlq,
    Corrupt,
}

impl Bucket {
    pub const ALL: [Bucket; 11] = [
        Bucket::Queued,
        Bucket::RetryScheduled,
        Bucket::Held,
        Bucket::Running,
        Bucket::Succeeded,
        Bucket::Rejected,
        Bucket::Expired,
        Bucket::Canceled,
        Bucket::Replayed,
        Bucket::Dlq,
        Bucket::Corrupt,
    ];

    /// Runs waiting to run: the backlog the execute gates limit.
    pub const WAITING: [Bucket; 3] = [Bucket::Queued, Bucket::RetryScheduled, Bucket::Held];

    /// Runs not finished yet: waiting or running.
    pub const ACTIVE: [Bucket; 4] = [
        Bucket::Queued,
        Bucket::RetryScheduled,
        Bucket::Held,
        Bucket::Running,
    ];

    fn idx(self) -> usize {
        self as usize
    }

    /// The bucket of a record found in `dir`.
    pub fn of(record: &RunRecord, dir: Dir) -> Bucket {
        match dir {
            Dir::Running => return Bucket::Running,
            Dir::Corrupt => return Bucket::Corrupt,
            _ => {}
        }
        match record.state {
            RunState::Queued if record.attempts > 0 => Bucket::RetryScheduled,
            RunState::Queued => Bucket::Queued,
            RunState::Held => Bucket::Held,
            RunState::Running => Bucket::Running,
            RunState::Succeeded => Bucket::Succeeded,
            RunState::Rejected => Bucket::Rejected,
            RunState::Expired => Bucket::Expired,
            RunState::Canceled => Bucket::Canceled,
            RunState::Replayed => Bucket::Replayed,
            RunState::Dlq => Bucket::Dlq,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub dir: Dir,
    pub bucket: Bucket,
    pub requested_ms: i64,
    pub due_ms: i64,
    pub action: Arc<str>,
    /// Queued by the autonomous planner rather than by a person.
    pub auto: bool,
}

impl Meta {
    pub fn of(record: &RunRecord, dir: Dir) -> Meta {
        Meta {
            dir,
            bucket: Bucket::of(record, dir),
            requested_ms: record.requested_at.timestamp_millis(),
            due_ms: record.due_at().timestamp_millis(),
            action: Arc::from(record.action_key.as_str()),
            auto: record.auto_queued,
        }
    }

    /// A file that could not be read yet: claimable at once so that a claim
    /// reads it and quarantines it if it really is corrupt.
    fn unreadable(dir: Dir) -> Meta {
        Meta {
            dir,
            bucket: if dir == Dir::Queued {
                Bucket::Queued
            } else {
                Bucket::Corrupt
            },
            requested_ms: 0,
            due_ms: 0,
            action: Arc::from(""),
            auto: false,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    entries: HashMap<RunId, Meta>,
    /// Runs in `queued/`, by (due, requested, id).
    due: BTreeSet<(i64, i64, RunId)>,
    /// Runs by bucket, by (requested, id).
    buckets: [BTreeSet<(i64, RunId)>; 11],
}

impl HostIndex {
    fn insert(&mut self, id: RunId, meta: Meta) {
        self.remove(&id);
        if meta.dir == Dir::Queued {
            self.due
                .insert((meta.due_ms, meta.requested_ms, id.clone()));
        }
        self.buckets[meta.bucket.idx()].insert((meta.requested_ms, id.clone()));
        self.entries.insert(id, meta);
    }

    fn remove(&mut self, id: &RunId) -> Option<Meta> {
        let old = self.entries.remove(id)?;
        if old.dir == Dir::Queued {
            self.due.remove(&(old.due_ms, old.requested_ms, id.clone()));
        }
        self.buckets[old.bucket.idx()].remove(&(old.requested_ms, id.clone()));
        Some(old)
    }

    pub fn count(&self, b: Bucket) -> usize {
        self.buckets[b.idx()].len()
    }

    /// Runs waiting to run ([`Bucket::WAITING`]).
    fn waiting(&self) -> usize {
        Bucket::WAITING.into_iter().map(|b| self.count(b)).sum()
    }

    /// The runs not yet finished (queued, retry scheduled, held, running),
    /// with their actions (empty for a file not read yet).
    pub fn active(&self) -> impl Iterator<Item = (&RunId, &Meta)> {
        Bucket::ACTIVE
            .into_iter()
            .flat_map(|b| self.buckets[b.idx()].iter())
            .filter_map(|(_, id)| self.entries.get(id).map(|m| (id, m)))
    }

    /// Up to `n` queued runs due at or before `now_ms`, earliest first.
    pub fn due_before(&self, now_ms: i64, n: usize) -> Vec<(RunId, Arc<str>)> {
        self.due
            .iter()
            .take_while(|(due, _, _)| *due <= now_ms)
            .filter_map(|(_, _, id)| self.entries.get(id).map(|m| (id.clone(), m.action.clone())))
            .take(n)
            .collect()
    }

    /// The earliest due time of a queued run.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.due.iter().next().map(|(d, _, _)| *d)
    }

    pub fn oldest(&self, b: Bucket, n: usize) -> impl Iterator<Item = &(i64, RunId)> {
        self.buckets[b.idx()].iter().take(n)
    }

    /// Every run requested at or after `since_ms` (any state), unordered.
    /// The runs requested at or after `since_ms`: (requested at, action,
    /// queued by the planner), in no particular order.
    pub fn requested_since(&self, since_ms: i64) -> impl Iterator<Item = (i64, &str, bool)> + '_ {
        self.buckets.iter().flat_map(move |set| {
            set.range((since_ms, RunId::min())..)
                .filter_map(|(req, id)| self.entries.get(id).map(|m| (*req, &*m.action, m.auto)))
        })
    }

    pub fn get(&self, id: &RunId) -> Option<&Meta> {
        self.entries.get(id)
    }
}

#[derive(Debug, Clone)]
enum Watch {
    Runs,
    State(HostId, Dir),
}

#[derive(Debug)]
pub(crate) struct Index {
    runs_dir: PathBuf,
    ino: Option<Inotify>,
    watches: HashMap<WatchDescriptor, Watch>,
    /// Changed only through [`Index::with_host`], `scan_host` and
    /// `full_scan`, which keep `waiting` equal to the sum of the hosts'
    /// waiting runs.
    hosts: HashMap<HostId, HostIndex>,
    /// Waiting runs of all hosts: the global backlog an execute is gated on,
    /// known without summing thousands of hosts under the lock.
    waiting: usize,
    /// Hosts whose state directories are watched (and were scanned after).
    watched: std::collections::HashSet<HostId>,
    scanned: bool,
    /// Runs this process is renaming into a state directory right now: it
    /// enters them itself when the rename is done, so their inotify events
    /// need no read of the file.
    pub publishing: std::collections::HashSet<RunId>,
}

const STATE_DIRS: [Dir; 6] = [
    Dir::Queued,
    Dir::Held,
    Dir::Running,
    Dir::Done,
    Dir::Dlq,
    Dir::Corrupt,
];

impl Index {
    pub fn new(runs_dir: PathBuf) -> Index {
        let ino = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; the spool index rescans on every query");
                None
            }
        };
        Index {
            runs_dir,
            ino,
            watches: HashMap::new(),
            hosts: HashMap::new(),
            waiting: 0,
            watched: std::collections::HashSet::new(),
            scanned: false,
            publishing: std::collections::HashSet::new(),
        }
    }

    pub fn upsert(&mut self, host: &HostId, id: RunId, meta: Meta) {
        // A host this index has not watched yet (its directory was just
        // made): watch and scan it first, or later moves would go unseen.
        if self.scanned && !self.watched.contains(host) {
            self.scan_host(host);
        }
        self.with_host(host, |h| h.insert(id, meta));
    }

    pub fn remove(&mut self, host: &HostId, id: &RunId) {
        if self.hosts.contains_key(host) {
            self.with_host(host, |h| h.remove(id));
        }
    }

    /// Every host's index, to read.
    pub fn hosts(&self) -> &HashMap<HostId, HostIndex> {
        &self.hosts
    }

    /// Runs waiting to run on all hosts (queued, retry scheduled, held).
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Changes one host's index (made if missing) and keeps the global
    /// count of waiting runs in step.
    fn with_host<R>(&mut self, host: &HostId, f: impl FnOnce(&mut HostIndex) -> R) -> R {
        let hi = self.hosts.entry(host.clone()).or_default();
        let before = hi.waiting();
        let r = f(hi);
        let after = hi.waiting();
        self.waiting = (self.waiting + after).saturating_sub(before);
        r
    }

    /// Which host and directory the index believes a run is in.
    pub fn locate(&self, id: &RunId) -> Option<(HostId, Dir)> {
        self.hosts
            .iter()
            .find_map(|(h, hi)| hi.get(id).map(|m| (h.clone(), m.dir)))
    }

    /// Brings the index up to date: a full scan the first time (or after an
    /// inotify overflow), then the pending events.
    pub fn sync(&mut self) {
        if self.ino.is_none() {
            self.full_scan();
            return;
        }
        if !self.scanned {
            self.full_scan();
            return;
        }
        self.drain_events();
    }

    fn full_scan(&mut self) {
        self.hosts.clear();
        self.waiting = 0;
        self.watches.clear();
        self.watched.clear();
        if let Some(ino) = &self.ino {
            // Re-create the instance so old watch descriptors go away.
            let _ = ino;
            self.ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok();
            if let Some(ino) = &self.ino {
                let flags = AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_ONLYDIR;
                if let Ok(wd) = ino.add_watch(&self.runs_dir, flags) {
                    self.watches.insert(wd, Watch::Runs);
                }
            }
        }
        let hosts: Vec<HostId> = match std::fs::read_dir(&self.runs_dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|s| HostId::parse(s).ok()))
                .collect(),
            Err(_) => Vec::new(),
        };
        for h in hosts {
            self.scan_host(&h);
        }
        self.scanned = true;
    }

    /// Watches and scans one host's state directories.
    pub fn scan_host(&mut self, host: &HostId) {
        let base = self.runs_dir.join(host.as_str());
        if let Some(ino) = &self.ino {
            for d in STATE_DIRS {
                let flags = AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_ONLYDIR;
                if let Ok(wd) = ino.add_watch(&base.join(d.name()), flags) {
                    self.watches.insert(wd, Watch::State(host.clone(), d));
                }
            }
        }
        self.watched.insert(host.clone());
        let mut hi = HostIndex::default();
        for d in STATE_DIRS {
            let Ok(rd) = std::fs::read_dir(base.join(d.name())) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let Some(id) = e.file_name().to_str().and_then(|s| RunId::parse(s).ok()) else {
                    continue;
                };
                let meta = read_meta(&e.path(), d);
                hi.insert(id, meta);
            }
        }
        let added = hi.waiting();
        let gone = self
            .hosts
            .insert(host.clone(), hi)
            .map_or(0, |old| old.waiting());
        self.waiting = (self.waiting + added).saturating_sub(gone);
    }

    fn drain_events(&mut self) {
        loop {
            let Some(ino) = &self.ino else { return };
            let events = match ino.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "inotify read failed; rescanning the spool");
                    self.full_scan();
                    return;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    self.full_scan();
                    return;
                }
                let Some(watch) = self.watches.get(&ev.wd).cloned() else {
                    continue;
                };
                let Some(name) = ev.name else { continue };
                match watch {
                    Watch::Runs => {
                        if let Ok(h) = HostId::parse(&String::from_utf8_lossy(name.as_bytes()))
                            && !self.watched.contains(&h)
                        {
                            self.scan_host(&h);
                        }
                    }
                    Watch::State(host, dir) => {
                        let Ok(id) = RunId::parse(&String::from_utf8_lossy(name.as_bytes())) else {
                            continue;
                        };
                        let arrived = ev
                            .mask
                            .intersects(AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE);
                        self.apply_seen(&host, dir, id, arrived);
                    }
                }
            }
        }
    }

    /// Applies one change seen in `dir` of `host`: run `id` arrived there
    /// (`arrived`) or left. Checked against the file system, so the same
    /// change seen twice (by this index's watch and by a caller's own) is
    /// applied once.
    fn apply_seen(&mut self, host: &HostId, dir: Dir, id: RunId, arrived: bool) {
        if self.publishing.contains(&id) {
            return;
        }
        // Only an arrival of a run not known here, or a departure of one
        // known here, can change the index; the rest (this process's own
        // publishes, seen again by the watch) need no look at the disk.
        let known_here = self
            .hosts
            .get(host)
            .and_then(|hi| hi.get(&id))
            .is_some_and(|m| m.dir == dir);
        if arrived == known_here {
            return;
        }
        let path = self
            .runs_dir
            .join(host.as_str())
            .join(dir.name())
            .join(id.as_str());
        let exists = path.exists();
        self.with_host(host, |hi| {
            if arrived {
                if exists {
                    let meta = read_meta(&path, dir);
                    hi.insert(id, meta);
                }
            } else if !exists {
                hi.remove(&id);
            }
        });
    }

    /// Runs another process put into `dir` of `host`, as a caller's own
    /// inotify watch named them. Every inotify instance gets its events on
    /// its own: a caller woken by its watch can query the index before the
    /// index's instance has the event, find nothing, and sleep until its
    /// next rescan. Applying the names it saw first closes that window.
    /// Nothing happens before the host's first scan (which sees them).
    pub fn arrived(&mut self, host: &HostId, dir: Dir, ids: Vec<RunId>) {
        if !self.watched.contains(host) {
            return;
        }
        for id in ids {
            self.apply_seen(host, dir, id, true);
        }
    }
}

fn read_meta(path: &Path, dir: Dir) -> Meta {
    match std::fs::read(path)
        .ok()
        .and_then(|b| codec::decode(&b).ok())
    {
        Some(d) => Meta::of(&d.record, dir),
        None => Meta::unreadable(dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalSpool;
    use crate::record::NewRun;

    /// A run another process published, named by a caller's watch before
    /// this index's own watch is read: `arrived` enters it at once; the
    /// index's event for it, read later, changes nothing; a name that is not
    /// there, or a host not scanned yet, is ignored.
    #[test]
    fn arrivals_named_by_another_watch_are_entered_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let other = LocalSpool::open(dir.path().join("spool")).unwrap_or_else(|e| panic!("{e}"));
        let h = HostId::parse("web-1").unwrap_or_else(|e| panic!("{e}"));
        other.ensure_host(&h).unwrap_or_else(|e| panic!("{e}"));
        let mut idx = Index::new(dir.path().join("spool").join("runs"));
        idx.sync();
        let run = |action: &str| {
            other
                .enqueue_blocking(NewRun::new(h.clone(), action, "test"))
                .unwrap_or_else(|e| panic!("{e}"))
                .record
                .run_id
        };
        let id = run("restart");
        let missing = RunId::generate();
        idx.arrived(&h, Dir::Queued, vec![id.clone(), missing.clone()]);
        let hi = &idx.hosts()[&h];
        assert_eq!(hi.get(&id).map(|m| m.dir), Some(Dir::Queued));
        assert!(hi.get(&missing).is_none(), "no file, no entry");
        assert_eq!(idx.waiting(), 1);
        idx.sync();
        assert_eq!(
            idx.waiting(),
            1,
            "its own event for the run changes nothing"
        );

        let unscanned = HostId::parse("web-2").unwrap_or_else(|e| panic!("{e}"));
        other
            .ensure_host(&unscanned)
            .unwrap_or_else(|e| panic!("{e}"));
        idx.arrived(&unscanned, Dir::Queued, vec![RunId::generate()]);
        assert!(
            !idx.hosts().contains_key(&unscanned),
            "left to its first scan"
        );
    }
}
