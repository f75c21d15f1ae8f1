//! The local directory spool: DESIGN.md rules 1-8, one function per move.
//!
//! Every move follows the same commit protocol: lock the record file
//! (`flock(LOCK_EX|LOCK_NB)`), check that its path still names the locked
//! inode, read and validate the log, check the move against the state
//! machine, append the event and fdatasync it (**the commit point**), then
//! rename the file into the directory of its new state and fsync that
//! directory. A crash before the append leaves the old state; a crash after
//! it leaves a file whose directory disagrees with its log, which recovery
//! moves where the log says. The only exception is enqueue, whose commit point
//! is the directory fsync after publishing (rule 1).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::codec::{self, Decoded};
use crate::error::{Result, SpoolError};
use crate::filecache::FileCache;
use crate::groupsync::GroupSync;
use crate::id::{HostId, RunId};
use crate::index::{Bucket, Index, Meta};
use crate::io::{DurableIo, RealIo};
use crate::record::{
    AttemptResult, Event, EventKind, NewRun, Next, RunRecord, RunState, Timestamp,
};
use crate::state::{self, Move};
use crate::{Clock, SystemClock};

/// How long a claim waits for a queued record someone else has locked
/// before it passes the record (and its action) over for this pass.
const CLAIM_BUSY_WAIT: Duration = Duration::from_millis(50);

/// Whether a move fsyncs the directory its file was renamed into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncDir {
    /// Moves someone else waits on (an operator's approval, a cancel): the
    /// new directory is durable before the answer.
    Yes,
    /// The end of an attempt, written by the executor: the fsynced log line
    /// already says where the run belongs, and recovery (at the executor's
    /// start, and on every pass) moves a file whose directory disagrees
    /// with its log (rule 4). A power loss can only leave the run in
    /// `running/`, unlocked, with a finished log, where recovery finds it.
    /// Skipping the directory fsync keeps the disk free for the next run's
    /// "attempt started" fsync, which the next command waits on.
    LogIsEnough,
}

/// The directories of one host's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    Tmp,
    Queued,
    Held,
    Running,
    Done,
    Dlq,
    Corrupt,
}

impl Dir {
    pub const ALL: [Dir; 7] = [
        Dir::Tmp,
        Dir::Queued,
        Dir::Held,
        Dir::Running,
        Dir::Done,
        Dir::Dlq,
        Dir::Corrupt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dir::Tmp => "tmp",
            Dir::Queued => "queued",
            Dir::Held => "held",
            Dir::Running => "running",
            Dir::Done => "done",
            Dir::Dlq => "dlq",
            Dir::Corrupt => "corrupt",
        }
    }

    /// The directory a run in `state` belongs in.
    pub fn for_state(state: RunState) -> Dir {
        match state {
            RunState::Queued => Dir::Queued,
            RunState::Held => Dir::Held,
            RunState::Running => Dir::Running,
            RunState::Dlq => Dir::Dlq,
            _ => Dir::Done,
        }
    }
}

/// How long `done/` and `dlq/` keep runs.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub done_max_age: Duration,
    pub done_max_count: usize,
    pub dlq_max_age: Duration,
    pub dlq_max_count: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            done_max_age: Duration::from_secs(7 * 86_400),
            done_max_count: 10_000,
            dlq_max_age: Duration::from_secs(30 * 86_400),
            dlq_max_count: 10_000,
        }
    }
}

/// What one recovery pass did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryReport {
    /// Claimed but never started: back to queued.
    pub orphans_requeued: Vec<String>,
    /// Interrupted attempts of idempotent actions, scheduled again.
    pub interrupted_retried: Vec<String>,
    /// Interrupted attempts dead-lettered (`interrupted`, or no attempts left).
    pub interrupted_dead_lettered: Vec<String>,
    /// Files moved to the directory their log names.
    pub relocated: Vec<String>,
    /// Replays whose child existed and whose source is now marked.
    pub replays_finished: Vec<String>,
    /// Files moved to corrupt/, with the reason.
    pub quarantined: Vec<(String, String)>,
    /// Leftovers removed from tmp/.
    pub tmp_removed: usize,
    /// Files skipped because a live process holds their lock.
    pub busy: usize,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    pub done_removed: usize,
    pub dlq_removed: usize,
}

/// The result of an enqueue: the run, and whether this call created it
/// (false when an idempotency key named an existing run).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enqueued {
    pub record: RunRecord,
    pub created: bool,
}

/// A record file this process has locked, with its decoded log.
#[derive(Debug)]
struct Locked {
    file: Flock<File>,
    host: HostId,
    id: RunId,
    dir: Dir,
    record: RunRecord,
    next_seq: u64,
    valid_len: u64,
    torn_tail: bool,
    events: Vec<Event>,
}

/// Options for [`LocalSpool::open_with`].
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub io: Arc<dyn DurableIo>,
    pub clock: Arc<dyn Clock>,
    /// Written into attempt records ("who ran it").
    pub worker: String,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            io: Arc::new(RealIo),
            clock: Arc::new(SystemClock),
            worker: format!("pid-{}", std::process::id()),
        }
    }
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    runs: PathBuf,
    /// `<root>/hosts`: host documents and activity logs.
    hosts: PathBuf,
    io: Arc<dyn DurableIo>,
    clock: Arc<dyn Clock>,
    worker: String,
    /// Runs this process has claimed: their locks live as long as the claim.
    claims: Mutex<HashMap<RunId, Locked>>,
    syncs: Mutex<HashMap<PathBuf, Arc<GroupSync>>>,
    index: Mutex<Index>,
    known_hosts: Mutex<std::collections::HashSet<HostId>>,
    /// Host documents and activity logs as last parsed (see [`FileCache`]).
    host_docs: FileCache<serde_json::Value>,
    activity: FileCache<HostActivity>,
    /// The audit log last appended to.
    audit_file: Mutex<Option<Arc<AuditLog>>>,
}

/// One day's audit log, open for appending.
#[derive(Debug)]
struct AuditLog {
    day: chrono::NaiveDate,
    path: PathBuf,
    /// The inode the file was opened as: the path names it still, or the
    /// log was moved away.
    ino: u64,
    file: File,
}

/// A spool directory. Cheap to clone; clones share one index and one set of
/// claims.
#[derive(Debug, Clone)]
pub struct LocalSpool {
    inner: Arc<Inner>,
}

/// `base/name1/name2.../nameN` + `suffix`, built in one allocation (these
/// paths are made several times per request). The names are ids and
/// directory names: plain file names, never absolute or with a separator,
/// so this is what `Path::join` would make.
fn join_names(base: &Path, names: &[&str], suffix: &str) -> PathBuf {
    let len =
        base.as_os_str().len() + names.iter().map(|n| n.len() + 1).sum::<usize>() + suffix.len();
    let mut s = std::ffi::OsString::with_capacity(len);
    s.push(base.as_os_str());
    for n in names {
        debug_assert!(!n.is_empty() && !n.contains('/'));
        s.push("/");
        s.push(n);
    }
    s.push(suffix);
    PathBuf::from(s)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (a
    // map or an index that is only a hint), so the poison flag carries no
    // meaning here.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ensure_dir(path: &Path) -> Result<bool> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| SpoolError::io("chmod", path, e))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(SpoolError::io("mkdir", path, e)),
    }
}

/// The limit a drain file holds (`None` when it is empty) and how many
/// bytes were read (at most 32: a file that long may be longer). One read:
/// a drain file holds a number and a newline; contents that are not one (a
/// write torn by a crash, a file filled by hand) still ask for a drain, of
/// one run.
fn read_drain_limit(f: &File) -> io::Result<(Option<u32>, usize)> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 32];
    let n = f.read_at(&mut buf, 0)?;
    let pending = (n > 0).then(|| {
        std::str::from_utf8(&buf[..n])
            .ok()
            .filter(|_| n < buf.len())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1)
    });
    Ok((pending, n))
}

/// The pauses between attempts at something another process holds for a
/// moment (a record's or a drain file's lock): 0.2 ms, doubling up to 5 ms,
/// until `wait` has passed. A holder that keeps it longer is stopped or
/// stuck, and the caller stops waiting.
struct BusyWait {
    deadline: std::time::Instant,
    pause: Duration,
}

impl BusyWait {
    fn new(wait: Duration) -> BusyWait {
        BusyWait {
            deadline: std::time::Instant::now() + wait,
            pause: Duration::from_micros(200),
        }
    }

    /// Sleeps before the next attempt; `false` (without sleeping) once the
    /// wait is over.
    fn pause(&mut self) -> bool {
        if std::time::Instant::now() >= self.deadline {
            return false;
        }
        std::thread::sleep(self.pause);
        self.pause = (self.pause * 2).min(Duration::from_millis(5));
        true
    }
}

/// How long a drain file's lock is waited for: it is held for a read and a
/// write, so a longer wait means its holder is stopped (a debugger,
/// SIGSTOP), and neither an execute nor the executor's loop should hang on
/// that.
const DRAIN_BUSY_WAIT: Duration = Duration::from_millis(50);

/// Opens `path` (never through a symbolic link: a drain file is written in
/// place; with `create`, made if missing) and locks it, waiting
/// [`DRAIN_BUSY_WAIT`] at most. `Ok(None)`: it stayed locked.
fn lock_drain_file(path: &Path, create: bool) -> io::Result<Option<Flock<File>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    let mut wait = BusyWait::new(DRAIN_BUSY_WAIT);
    loop {
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(Some(locked)),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) if wait.pause() => f = back,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(e.into()),
        }
    }
}

/// Rule 8: whoever can write the spool can make the executor run commands.
fn check_dir_safe(path: &Path) -> Result<()> {
    let md = std::fs::symlink_metadata(path).map_err(|e| SpoolError::io("stat", path, e))?;
    let mode = md.mode() & 0o7777;
    if !md.is_dir() {
        return Err(SpoolError::UnsafeDir {
            path: path.into(),
            mode,
            reason: "is not a directory (symlinks are refused)",
        });
    }
    if md.uid() != nix::unistd::geteuid().as_raw() {
        return Err(SpoolError::UnsafeDir {
            path: path.into(),
            mode,
            reason: "is owned by another user than the one running the spool",
        });
    }
    if mode & 0o022 != 0 {
        return Err(SpoolError::UnsafeDir {
            path: path.into(),
            mode,
            reason: "is writable by group or others; run `chmod 700` on it",
        });
    }
    Ok(())
}

impl LocalSpool {
    /// Opens (creating if needed) the spool at `root` with real I/O.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(root, SpoolOptions::default())
    }

    /// Opens the spool with the given I/O layer and clock. Refuses a spool
    /// whose directories others can write.
    pub fn open_with(root: impl Into<PathBuf>, opts: SpoolOptions) -> Result<Self> {
        let root: PathBuf = root.into();
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| SpoolError::io("mkdir", parent, e))?;
        }
        ensure_dir(&root)?;
        let runs = root.join("runs");
        for d in [
            root.join("hosts"),
            runs.clone(),
            root.join("audit"),
            root.join("control"),
        ] {
            ensure_dir(&d)?;
        }
        check_dir_safe(&root)?;
        for d in ["hosts", "runs", "audit", "control"] {
            check_dir_safe(&root.join(d))?;
        }
        let mut known = std::collections::HashSet::new();
        if let Ok(rd) = std::fs::read_dir(&runs) {
            for e in rd.filter_map(|e| e.ok()) {
                let path = e.path();
                check_dir_safe(&path)?;
                for d in Dir::ALL {
                    let p = path.join(d.name());
                    if p.exists() {
                        check_dir_safe(&p)?;
                    }
                }
                if let Some(h) = e.file_name().to_str().and_then(|s| HostId::parse(s).ok()) {
                    known.insert(h);
                }
            }
        }
        let spool = LocalSpool {
            inner: Arc::new(Inner {
                index: Mutex::new(Index::new(runs.clone())),
                hosts: root.join("hosts"),
                root,
                runs,
                io: opts.io,
                clock: opts.clock,
                worker: opts.worker,
                claims: Mutex::new(HashMap::new()),
                syncs: Mutex::new(HashMap::new()),
                known_hosts: Mutex::new(known),
                host_docs: FileCache::default(),
                activity: FileCache::default(),
                audit_file: Mutex::new(None),
            }),
        };
        let hosts: Vec<HostId> = lock(&spool.inner.known_hosts).iter().cloned().collect();
        for h in hosts {
            spool.ensure_host(&h)?;
        }
        Ok(spool)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn dir_path(&self, host: &HostId, dir: Dir) -> PathBuf {
        join_names(&self.inner.runs, &[host.as_str(), dir.name()], "")
    }

    fn file_path(&self, host: &HostId, dir: Dir, id: &RunId) -> PathBuf {
        join_names(
            &self.inner.runs,
            &[host.as_str(), dir.name(), id.as_str()],
            "",
        )
    }

    /// Creates a host's directories (0700) and makes them durable.
    pub fn ensure_host(&self, host: &HostId) -> Result<()> {
        if lock(&self.inner.known_hosts).contains(host)
            && self.dir_path(host, Dir::Corrupt).is_dir()
        {
            return Ok(());
        }
        let base = self.inner.runs.join(host.as_str());
        let created = ensure_dir(&base)?;
        let mut any = false;
        for d in Dir::ALL {
            any |= ensure_dir(&base.join(d.name()))?;
        }
        if any {
            // The host's lock file, made now rather than by its first
            // execute.
            use std::os::unix::fs::OpenOptionsExt;
            let lock_path = base.join("keys.lock");
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&lock_path)
                .map_err(|e| SpoolError::io("create", &lock_path, e))?;
            self.inner
                .io
                .sync_dir(&base)
                .map_err(|e| SpoolError::io("fsync", &base, e))?;
        }
        if created {
            self.inner
                .io
                .sync_dir(&self.inner.runs)
                .map_err(|e| SpoolError::io("fsync", &self.inner.runs, e))?;
        }
        lock(&self.inner.known_hosts).insert(host.clone());
        Ok(())
    }

    /// The hosts that have a run directory.
    pub fn hosts(&self) -> Result<Vec<HostId>> {
        let rd = std::fs::read_dir(&self.inner.runs)
            .map_err(|e| SpoolError::io("readdir", &self.inner.runs, e))?;
        let mut v: Vec<HostId> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|s| HostId::parse(s).ok()))
            .collect();
        v.sort();
        Ok(v)
    }

    /// fsyncs `dir`, sharing the fsync with concurrent callers (group commit).
    fn sync_dir(&self, dir: &Path) -> Result<()> {
        let gs = {
            let mut syncs = lock(&self.inner.syncs);
            match syncs.get(dir) {
                Some(gs) => gs.clone(),
                None => syncs.entry(dir.to_path_buf()).or_default().clone(),
            }
        };
        gs.sync(&*self.inner.io, dir)
            .map_err(|e| SpoolError::io("fsync", dir, e))
    }

    // ----- reading and locking -----

    /// Opens, locks and validates the record at `host/dir/id`.
    /// `Ok(None)`: the file is not there (any more).
    fn lock_at(&self, host: &HostId, dir: Dir, id: &RunId) -> Result<Option<Locked>> {
        let path = self.file_path(host, dir, id);
        let file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SpoolError::io("open", &path, e)),
        };
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(SpoolError::Busy {
                    run_id: id.to_string(),
                });
            }
            Err((_, e)) => return Err(SpoolError::io("flock", &path, e.into())),
        };
        // The lock is on the inode we opened; make sure the path still names
        // it (someone may have moved it between our open and our lock).
        let ours = file
            .metadata()
            .map_err(|e| SpoolError::io("fstat", &path, e))?;
        match std::fs::metadata(&path) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SpoolError::io("stat", &path, e)),
        }
        let mut bytes = Vec::with_capacity(ours.len() as usize);
        (*file)
            .read_to_end(&mut bytes)
            .map_err(|e| SpoolError::io("read", &path, e))?;
        let d = codec::decode(&bytes).map_err(|reason| SpoolError::Corrupt {
            path: path.clone(),
            reason,
        })?;
        if d.record.run_id != *id || d.record.host_id != *host {
            return Err(SpoolError::Corrupt {
                path,
                reason: format!(
                    "foreign record: it says run {} of host {}",
                    d.record.run_id, d.record.host_id
                ),
            });
        }
        let Decoded {
            record,
            events,
            valid_len,
            torn_tail,
        } = d;
        Ok(Some(Locked {
            file,
            host: host.clone(),
            id: id.clone(),
            dir,
            next_seq: events.len() as u64,
            record,
            valid_len,
            torn_tail,
            events,
        }))
    }

    /// Finds which host and directory hold `id`.
    fn locate(&self, id: &RunId) -> Result<Option<(HostId, Dir)>> {
        let hint = {
            let mut idx = lock(&self.inner.index);
            idx.sync();
            idx.locate(id)
        };
        if let Some((h, d)) = hint
            && self.file_path(&h, d, id).exists()
        {
            return Ok(Some((h, d)));
        }
        for h in self.hosts()? {
            for d in [
                Dir::Queued,
                Dir::Held,
                Dir::Running,
                Dir::Done,
                Dir::Dlq,
                Dir::Corrupt,
            ] {
                if self.file_path(&h, d, id).exists() {
                    return Ok(Some((h, d)));
                }
            }
        }
        Ok(None)
    }

    fn locate_in_host(&self, host: &HostId, id: &RunId) -> Option<Dir> {
        [
            Dir::Queued,
            Dir::Held,
            Dir::Running,
            Dir::Done,
            Dir::Dlq,
            Dir::Corrupt,
        ]
        .into_iter()
        .find(|d| self.file_path(host, *d, id).exists())
    }

    /// Locks a run for a move: this process's claim if it holds one, else a
    /// fresh lock wherever the run is.
    fn acquire(&self, id: &RunId) -> Result<(Locked, bool)> {
        if let Some(l) = lock(&self.inner.claims).remove(id) {
            return Ok((l, true));
        }
        for _ in 0..3 {
            let Some((host, dir)) = self.locate(id)? else {
                break;
            };
            if dir == Dir::Corrupt {
                return Err(SpoolError::Corrupt {
                    path: self.file_path(&host, dir, id),
                    reason: "the record is in corrupt/".into(),
                });
            }
            match self.lock_at(&host, dir, id) {
                Ok(Some(l)) => return Ok((l, false)),
                // Moved between locate and lock: look again.
                Ok(None) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(SpoolError::NotFound {
            run_id: id.to_string(),
        })
    }

    /// Reads a run without locking it (a view for operators).
    pub fn get_blocking(&self, id: &RunId) -> Result<Option<RunRecord>> {
        for _ in 0..3 {
            let Some((host, dir)) = self.locate(id)? else {
                return Ok(None);
            };
            if dir == Dir::Corrupt {
                return Err(SpoolError::Corrupt {
                    path: self.file_path(&host, dir, id),
                    reason: "the record is in corrupt/".into(),
                });
            }
            match std::fs::read(self.file_path(&host, dir, id)) {
                Ok(bytes) => {
                    return codec::decode(&bytes)
                        .map(|d| Some(d.record))
                        .map_err(|reason| SpoolError::Corrupt {
                            path: self.file_path(&host, dir, id),
                            reason,
                        });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SpoolError::io("read", self.file_path(&host, dir, id), e)),
            }
        }
        Ok(None)
    }

    // ----- writing -----

    /// Appends one event under the lock: the commit point of every move.
    /// Cuts a torn tail first so the new line starts on a line boundary.
    fn commit(&self, l: &mut Locked, kind: EventKind) -> Result<()> {
        let ev = Event {
            seq: l.next_seq,
            at: self.now(),
            kind,
        };
        let mut next = l.record.clone();
        state::apply(&mut next, &ev)?;
        let path = self.file_path(&l.host, l.dir, &l.id);
        if l.torn_tail {
            self.inner
                .io
                .truncate(&l.file, l.valid_len)
                .map_err(|e| SpoolError::io("truncate", &path, e))?;
            l.torn_tail = false;
        }
        let line = codec::encode(&ev);
        self.inner
            .io
            .append(&l.file, &line)
            .map_err(|e| SpoolError::io("append", &path, e))?;
        l.valid_len += line.len() as u64;
        l.next_seq += 1;
        l.record = next;
        l.events.push(ev);
        Ok(())
    }

    /// Renames a locked file into `to`, and fsyncs `to` when `sync`. The
    /// lock moves with the inode.
    fn relocate(&self, l: &mut Locked, to: Dir, sync: bool) -> Result<()> {
        if l.dir == to {
            return Ok(());
        }
        let from_path = self.file_path(&l.host, l.dir, &l.id);
        let to_path = self.file_path(&l.host, to, &l.id);
        self.inner
            .io
            .rename_noreplace(&from_path, &to_path)
            .map_err(|e| SpoolError::io("rename", &to_path, e))?;
        l.dir = to;
        self.index_update(l);
        if sync {
            self.sync_dir(&self.dir_path(&l.host, to))?;
        }
        Ok(())
    }

    fn index_update(&self, l: &Locked) {
        lock(&self.inner.index).upsert(&l.host, l.id.clone(), Meta::of(&l.record, l.dir));
    }

    /// Runs one move: lock, check, commit, relocate, release. A claim of
    /// this process survives an illegal move, and is released by any other
    /// error (recovery then finds the file unlocked and settles it).
    /// `sync_dir` says whether the rename is fsynced too, or left to the
    /// log (see [`SyncDir`]).
    fn do_move(
        &self,
        id: &RunId,
        mv: Move,
        make: impl FnOnce(&RunRecord) -> Result<EventKind>,
        keep_claim: bool,
        sync_dir: SyncDir,
    ) -> Result<RunRecord> {
        let (mut l, was_claimed) = self.acquire(id)?;
        let kind = match state::check(&l.record, mv).and_then(|_| make(&l.record)) {
            Ok(k) => k,
            Err(e) => {
                if was_claimed {
                    lock(&self.inner.claims).insert(id.clone(), l);
                }
                return Err(e);
            }
        };
        self.commit(&mut l, kind)?;
        let target = Dir::for_state(l.record.state);
        self.relocate(&mut l, target, sync_dir == SyncDir::Yes)?;
        self.index_update(&l);
        let rec = l.record.clone();
        if keep_claim {
            lock(&self.inner.claims).insert(id.clone(), l);
        }
        Ok(rec)
    }

    /// Enqueues a run.
    ///
    /// Steps: (1) create `tmp/<id>.<nonce>` with O_EXCL, write the
    /// `enqueued` event, fsync it; (2) rename it (no-replace) into `queued/`
    /// or `held/`; (3) fsync that directory (shared with concurrent enqueues).
    /// Only then is the run acknowledged. A crash before (2) leaves a tmp
    /// leftover that recovery removes after 24 h; a crash between (2) and
    /// (3) may or may not keep the run, and the caller was not told either
    /// way. If (3) fails, the run is taken back out of its directory when
    /// nobody has claimed it yet, so a failed request leaves nothing behind.
    ///
    /// With an idempotency key, the run id is derived from (host, key) and a
    /// per-host key lock makes check-and-publish atomic across processes:
    /// the same key twice returns the first run (`created: false`).
    pub fn enqueue_blocking(&self, new: NewRun) -> Result<Enqueued> {
        let host = new.host_id.clone();
        self.ensure_host(&host)?;
        let _key_lock = match &new.idempotency_key {
            Some(_) => Some(self.key_lock(&host)?),
            None => None,
        };
        self.enqueue_locked(new)
    }

    /// [`Store::enqueue_checked`](crate::Store::enqueue_checked) in one step:
    /// under the host's lock (the one keyed enqueues take, so executes of one
    /// host are serialised across processes too) it reads the gate facts from
    /// the index and the host's activity log, asks `check`, and publishes
    /// the run only if it allows. Nothing is written on a refusal.
    ///
    /// Two executes of one host and action that race each other: the second
    /// sees the first's run as active, as if they had come one after the
    /// other. (The global backlog counts other hosts' runs without their
    /// locks: a limit over all hosts may be passed by the few runs enqueued
    /// at the same moment.)
    pub fn enqueue_checked_blocking(
        &self,
        new: NewRun,
        since: Timestamp,
        check: crate::store::EnqueueCheck,
    ) -> Result<crate::store::Checked> {
        use crate::store::Checked;
        let host = new.host_id.clone();
        self.ensure_host(&host)?;
        let _host_lock = self.key_lock(&host)?;
        let facts = self.gate_facts(&host, &new.action_key, since)?;
        match check(&facts) {
            Ok(()) => self.enqueue_locked(new).map(Checked::Enqueued),
            Err(refusal) => Ok(Checked::Refused(refusal)),
        }
    }

    /// The facts an execute of `action` on `host` is gated on.
    fn gate_facts(
        &self,
        host: &HostId,
        action: &str,
        since: Timestamp,
    ) -> Result<crate::store::GateFacts> {
        let mut facts = crate::store::GateFacts::default();
        let mut unread = Vec::new();
        {
            let mut idx = lock(&self.inner.index);
            idx.sync();
            if let Some(hi) = idx.hosts().get(host) {
                for (id, m) in hi.active() {
                    if m.bucket != Bucket::Running {
                        facts.host_backlog += 1;
                    }
                    if &*m.action == action {
                        facts.active_run.get_or_insert_with(|| id.clone());
                    } else if m.action.is_empty() {
                        unread.push(id.clone());
                    }
                }
            }
            facts.global_backlog = idx.waiting();
            facts.recent = recent_in(&idx, host, since);
        }
        // A file the index could not read yet (being written by another
        // process): read it now rather than miss an active run.
        if facts.active_run.is_none() {
            for id in unread {
                if let Some(r) = self.get_blocking(&id)?
                    && r.action_key == action
                    && !r.state.is_terminal()
                {
                    facts.active_run = Some(id);
                    break;
                }
            }
        }
        facts.activity = self.host_activity_blocking(host)?;
        Ok(facts)
    }

    /// Enqueue with the host's key lock held when the run has a key.
    fn enqueue_locked(&self, new: NewRun) -> Result<Enqueued> {
        let host = new.host_id.clone();
        let now = self.now();
        let keyed = new.idempotency_key.clone();
        let id = match &keyed {
            Some(k) => RunId::for_key(&host, k),
            None => RunId::generate(),
        };
        if keyed.is_some()
            && let Some(dir) = self.locate_in_host(&host, &id)
        {
            return self.existing_for_key(&host, dir, &id);
        }
        let record = RunRecord::new(id.clone(), new, now, None);
        self.publish(record).map(|record| Enqueued {
            record,
            created: true,
        })
    }

    fn existing_for_key(&self, host: &HostId, dir: Dir, id: &RunId) -> Result<Enqueued> {
        // Make sure what we hand back is durable: the first caller may still
        // be waiting on its directory fsync.
        self.sync_dir(&self.dir_path(host, dir))?;
        let path = self.file_path(host, dir, id);
        let bytes = std::fs::read(&path).map_err(|e| SpoolError::io("read", &path, e))?;
        let d = codec::decode(&bytes).map_err(|reason| SpoolError::Corrupt { path, reason })?;
        Ok(Enqueued {
            record: d.record,
            created: false,
        })
    }

    /// Imports a run that was created elsewhere (AWS mode: the executor
    /// fetched it from S3 after an SQS message) into this spool, in the state
    /// the record says (queued, usually), so the executor runs it exactly as
    /// a local one.
    ///
    /// Deduplicated by run id: when the id exists on this host in any state
    /// (queued, held, running, done, dlq or corrupt), nothing is written and
    /// the answer is [`ImportOutcome::AlreadyPresent`]; the directory holding
    /// it is fsynced first, so a caller that acknowledges the source (deletes
    /// the SQS message) on that answer never loses the run.
    ///
    /// Durability is the same as enqueue: create `tmp/<id>.<nonce>` with
    /// O_EXCL, write the record as its `enqueued` event, fsync, rename
    /// (no-replace) into the state directory and fsync that directory before
    /// returning. A crash at any step leaves either no run (the import can
    /// simply be repeated) or a published one (the repeat says
    /// `AlreadyPresent`). Imports of one host are serialised with the host's
    /// key lock, and the no-replace rename catches a twin that moved into the
    /// target directory meanwhile.
    ///
    /// Refused with [`SpoolError::Invalid`] (nothing written): a record of
    /// another host than `host`, or one whose attempt history does not add
    /// up (a record from outside is validated like a log line is).
    pub fn import_blocking(&self, host: &HostId, record: RunRecord) -> Result<ImportOutcome> {
        if record.host_id != *host {
            return Err(SpoolError::Invalid(format!(
                "run {} belongs to host {}, not to {host}: not imported",
                record.run_id, record.host_id
            )));
        }
        check_importable(&record)?;
        self.ensure_host(host)?;
        let _key_lock = self.key_lock(host)?;
        let id = record.run_id.clone();
        if let Some(dir) = self.present_in_host(host, &id)? {
            self.sync_dir(&self.dir_path(host, dir))?;
            return Ok(ImportOutcome::AlreadyPresent(dir));
        }
        let target = Dir::for_state(record.state);
        match self.publish(record) {
            Ok(_) => Ok(ImportOutcome::Imported(target)),
            Err(SpoolError::Io { source, .. })
                if source.raw_os_error() == Some(nix::libc::EEXIST) =>
            {
                self.sync_dir(&self.dir_path(host, target))?;
                Ok(ImportOutcome::AlreadyPresent(target))
            }
            Err(e) => Err(e),
        }
    }

    /// Tells the index about runs another process just put into `dir` of
    /// `host`, named by the caller's own inotify watch on that directory (the
    /// executor's wake-up watch on `queued/`): the index's own watch may get
    /// the same events a moment later, and a claim in between would miss the
    /// run until the next rescan. Names that are not run ids are ignored;
    /// each run is read from its file, as the index's watch would.
    pub fn note_arrivals(&self, host: &HostId, dir: Dir, names: &[String]) {
        let ids: Vec<RunId> = names.iter().filter_map(|n| RunId::parse(n).ok()).collect();
        if !ids.is_empty() {
            lock(&self.inner.index).arrived(host, dir, ids);
        }
    }

    /// Async form of [`LocalSpool::import_blocking`] (runs on the blocking
    /// pool).
    pub async fn import(&self, host: &HostId, record: RunRecord) -> Result<ImportOutcome> {
        let (s, host) = (self.clone(), host.clone());
        tokio::task::spawn_blocking(move || s.import_blocking(&host, record))
            .await
            .map_err(|e| SpoolError::Backend(format!("spool worker thread failed: {e}")))?
    }

    /// Where `id` is on `host`, counting quarantined copies (`corrupt/<id>`
    /// and `corrupt/<id>.<n>`).
    fn present_in_host(&self, host: &HostId, id: &RunId) -> Result<Option<Dir>> {
        if let Some(d) = self.locate_in_host(host, id) {
            return Ok(Some(d));
        }
        let prefix = format!("{}.", id.as_str());
        let quarantined = self
            .names_in(host, Dir::Corrupt)?
            .iter()
            .any(|n| n.starts_with(&prefix));
        Ok(quarantined.then_some(Dir::Corrupt))
    }

    fn key_lock(&self, host: &HostId) -> Result<Flock<File>> {
        let path = self.inner.runs.join(host.as_str()).join("keys.lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| SpoolError::io("open", &path, e))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| SpoolError::io("flock", &path, e.into()))
    }

    /// Writes a new record into tmp/ and publishes it (see enqueue).
    fn publish(&self, record: RunRecord) -> Result<RunRecord> {
        let host = record.host_id.clone();
        let id = record.run_id.clone();
        let target = Dir::for_state(record.state);
        // The record goes into its event to be encoded and comes back out:
        // no copy of it is made.
        let ev = Event {
            seq: 0,
            at: record.requested_at,
            kind: EventKind::Enqueued {
                record: Box::new(record),
            },
        };
        let bytes = codec::encode(&ev);
        let EventKind::Enqueued { record } = ev.kind else {
            unreachable!("the event was made as an enqueue just above")
        };
        let record = *record;
        let nonce: u64 = rand::random();
        let tmp = join_names(
            &self.inner.runs,
            &[host.as_str(), Dir::Tmp.name(), id.as_str()],
            &format!(".{nonce:016x}"),
        );
        let file = self
            .inner
            .io
            .create_new(&tmp, &bytes)
            .map_err(|e| SpoolError::io("create", &tmp, e))?;
        let dest = self.file_path(&host, target, &id);
        // This process enters the run into its index itself: an index sync
        // meanwhile need not stop to read the file for the rename's inotify
        // event.
        lock(&self.inner.index).publishing.insert(id.clone());
        if let Err(e) = self.inner.io.rename_noreplace(&tmp, &dest) {
            lock(&self.inner.index).publishing.remove(&id);
            let _ = std::fs::remove_file(&tmp);
            return Err(SpoolError::io("rename", &dest, e));
        }
        {
            let mut idx = lock(&self.inner.index);
            idx.publishing.remove(&id);
            idx.upsert(&host, id.clone(), Meta::of(&record, target));
        }
        if let Err(e) = self.sync_dir(&self.dir_path(&host, target)) {
            self.unpublish(file, &host, target, &id, &tmp);
            return Err(e);
        }
        Ok(record)
    }

    /// After a failed directory fsync: take a just-published run back into
    /// tmp/ unless someone already claimed it (then it runs, and the failed
    /// request is reported as failed, as with any lost answer).
    fn unpublish(&self, file: File, host: &HostId, dir: Dir, id: &RunId, tmp: &Path) {
        if let Ok(locked) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            let dest = self.file_path(host, dir, id);
            let same = match (locked.metadata(), std::fs::metadata(&dest)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if same && self.inner.io.rename_noreplace(&dest, tmp).is_ok() {
                lock(&self.inner.index).remove(host, id);
            }
        }
    }

    /// Claims the earliest due run of `host` whose action `skip` does not
    /// exclude: a locked rename from `queued/` to `running/` (rule 3).
    ///
    /// Steps: open `queued/<id>`, `flock(LOCK_EX|LOCK_NB)`, check the path
    /// still names the locked inode, validate the log (a corrupt file goes to
    /// `corrupt/`), check it is queued and due, rename it into `running/`.
    /// Nothing is appended and nothing fsynced: the claim is the lock. If the
    /// process dies, the kernel drops the lock and recovery finds an unlocked
    /// file in `running/` whose log says queued, and moves it back. The run
    /// stays claimed (locked) by this process until a move releases it.
    pub fn claim_next_blocking(
        &self,
        host: &HostId,
        skip: &dyn Fn(&str) -> bool,
    ) -> Result<Option<RunRecord>> {
        let now_ms = self.now().timestamp_millis();
        let mut tried = std::collections::HashSet::new();
        // Actions whose earliest due run is locked by someone else right
        // now: their later runs wait too, or they would overtake it.
        let mut held_back: std::collections::HashSet<String> = std::collections::HashSet::new();
        loop {
            let candidates = {
                let mut idx = lock(&self.inner.index);
                idx.sync();
                match idx.hosts().get(host) {
                    Some(hi) => hi.due_before(now_ms, tried.len() + 16),
                    None => return Ok(None),
                }
            };
            let fresh: Vec<_> = candidates
                .into_iter()
                .filter(|(id, _)| !tried.contains(id))
                .collect();
            if fresh.is_empty() {
                return Ok(None);
            }
            for (id, action) in fresh {
                tried.insert(id.clone());
                if !action.is_empty() && (skip(&action) || held_back.contains(&*action)) {
                    continue;
                }
                let mut l = match self.lock_queued_waiting(host, &id) {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        lock(&self.inner.index).remove(host, &id);
                        continue;
                    }
                    Err(SpoolError::Busy { .. }) => {
                        // Still locked after the short wait: not claimable in
                        // this pass. Keep its action's order all the same.
                        if !action.is_empty() {
                            held_back.insert(action.to_string());
                        }
                        continue;
                    }
                    Err(SpoolError::Corrupt { path, reason }) => {
                        self.quarantine(host, Dir::Queued, &id, &reason)?;
                        tracing::error!(path = %path.display(), %reason, "corrupt run record quarantined");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if l.record.state != RunState::Queued {
                    // The log disagrees with the directory: settle it now.
                    let to = Dir::for_state(l.record.state);
                    self.relocate(&mut l, to, true)?;
                    continue;
                }
                if l.record.due_at().timestamp_millis() > now_ms {
                    self.index_update(&l);
                    continue;
                }
                if skip(&l.record.action_key) || held_back.contains(&l.record.action_key) {
                    continue;
                }
                if l.torn_tail {
                    let path = self.file_path(host, l.dir, &id);
                    self.inner
                        .io
                        .truncate(&l.file, l.valid_len)
                        .map_err(|e| SpoolError::io("truncate", &path, e))?;
                    l.torn_tail = false;
                }
                match self.relocate(&mut l, Dir::Running, false) {
                    Ok(()) => {}
                    Err(SpoolError::Io { source, .. })
                        if source.raw_os_error() == Some(nix::libc::EEXIST) =>
                    {
                        // A twin in running/: recovery sorts it out.
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                let rec = l.record.clone();
                lock(&self.inner.claims).insert(id, l);
                return Ok(Some(rec));
            }
        }
    }

    /// Locks a queued record for a claim. Others hold a queued record's lock
    /// only for a moment (a recovery pass reading it, an approval or a
    /// cancel committing to it, another claimer renaming it away), so a busy
    /// lock is tried again for up to [`CLAIM_BUSY_WAIT`] instead of passing
    /// the run over for a later one: a claim that skipped it would break the
    /// queue's order (and let a second run of the same action start first).
    /// A record moved away meanwhile is `Ok(None)`.
    fn lock_queued_waiting(&self, host: &HostId, id: &RunId) -> Result<Option<Locked>> {
        let mut wait = BusyWait::new(CLAIM_BUSY_WAIT);
        loop {
            match self.lock_at(host, Dir::Queued, id) {
                Err(SpoolError::Busy { .. }) if wait.pause() => {}
                other => return other,
            }
        }
    }

    /// Moves an unreadable file to `corrupt/`, never deleting it (rule 2).
    fn quarantine(&self, host: &HostId, dir: Dir, name: &RunId, reason: &str) -> Result<()> {
        let from = self.file_path(host, dir, name);
        let mut to = self.file_path(host, Dir::Corrupt, name);
        let mut n = 0;
        while to.exists() {
            n += 1;
            to = self
                .dir_path(host, Dir::Corrupt)
                .join(format!("{}.{n}", name.as_str()));
        }
        match self.inner.io.rename_noreplace(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SpoolError::io("rename", &to, e)),
        }
        tracing::error!(run_id = %name, host_id = %host, %reason, "run record moved to corrupt/");
        lock(&self.inner.index).remove(host, name);
        self.sync_dir(&self.dir_path(host, Dir::Corrupt))
    }

    /// Rule 5: records "attempt started" durably. Only after this returns
    /// may a command of the run execute. The run must be claimed by this
    /// process and stays claimed.
    pub fn start_attempt_blocking(&self, id: &RunId) -> Result<RunRecord> {
        self.require_claim(id)?;
        let worker = self.inner.worker.clone();
        self.do_move(
            id,
            Move::StartAttempt,
            |r| {
                Ok(EventKind::AttemptStarted {
                    attempt: r.attempts + 1,
                    worker,
                })
            },
            true,
            SyncDir::Yes,
        )
    }

    fn require_claim(&self, id: &RunId) -> Result<()> {
        if lock(&self.inner.claims).contains_key(id) {
            Ok(())
        } else {
            Err(SpoolError::NotClaimed {
                run_id: id.to_string(),
            })
        }
    }

    /// Ends the open attempt of a claimed run: commits `attempt-finished`
    /// with the outcome (fsynced), moves the file (`done/`, `queued/` or
    /// `dlq/`) without a directory fsync ([`SyncDir::LogIsEnough`]) and
    /// releases the claim.
    fn finish(&self, id: &RunId, mv: Move, result: AttemptResult, next: Next) -> Result<RunRecord> {
        self.require_claim(id)?;
        self.do_move(
            id,
            mv,
            |r| Ok(EventKind::attempt_finished(r, result, next)),
            false,
            SyncDir::LogIsEnough,
        )
    }

    /// running -> done(succeeded).
    pub fn complete_blocking(&self, id: &RunId, result: AttemptResult) -> Result<RunRecord> {
        self.finish(id, Move::Complete, result, Next::Succeeded)
    }

    /// running -> queued, due at `at`. Illegal when no attempts are left.
    pub fn retry_at_blocking(
        &self,
        id: &RunId,
        at: Timestamp,
        result: AttemptResult,
    ) -> Result<RunRecord> {
        self.finish(id, Move::RetryAt, result, Next::RetryAt { at })
    }

    /// running -> dlq after an attempt, or claimed queued -> dlq without one
    /// (`result` is then only used for its error text).
    pub fn dead_letter_blocking(
        &self,
        id: &RunId,
        reason: &str,
        result: Option<AttemptResult>,
    ) -> Result<RunRecord> {
        let reason = reason.to_string();
        self.do_move(
            id,
            Move::DeadLetter,
            move |r| Ok(EventKind::dead_letter(r, reason, result)),
            false,
            SyncDir::LogIsEnough,
        )
    }

    /// queued (claimed or not) -> held: approval is (again) required.
    pub fn hold_blocking(&self, id: &RunId, reason: &str) -> Result<RunRecord> {
        let reason = reason.to_string();
        self.do_move(
            id,
            Move::Hold,
            |_| Ok(EventKind::Held { reason }),
            false,
            SyncDir::Yes,
        )
    }

    /// held -> queued.
    pub fn approve_blocking(
        &self,
        id: &RunId,
        by: &str,
        reason: Option<String>,
    ) -> Result<RunRecord> {
        let by = by.to_string();
        self.do_move(
            id,
            Move::Approve,
            |_| Ok(EventKind::Approved { by, reason }),
            false,
            SyncDir::Yes,
        )
    }

    /// held -> done(rejected).
    pub fn reject_blocking(
        &self,
        id: &RunId,
        by: &str,
        reason: Option<String>,
    ) -> Result<RunRecord> {
        let by = by.to_string();
        self.do_move(
            id,
            Move::Reject,
            |_| Ok(EventKind::Rejected { by, reason }),
            false,
            SyncDir::Yes,
        )
    }

    /// queued/held -> done(expired).
    pub fn expire_blocking(&self, id: &RunId) -> Result<RunRecord> {
        self.do_move(
            id,
            Move::Expire,
            |_| Ok(EventKind::Expired),
            false,
            SyncDir::Yes,
        )
    }

    /// queued/held -> done(canceled).
    pub fn cancel_blocking(&self, id: &RunId, reason: &str) -> Result<RunRecord> {
        let reason = reason.to_string();
        self.do_move(
            id,
            Move::Cancel,
            |_| Ok(EventKind::Canceled { reason }),
            false,
            SyncDir::Yes,
        )
    }

    /// Appends a note (no state change). Works on claimed runs too.
    pub fn append_note_blocking(
        &self,
        id: &RunId,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<RunRecord> {
        let (mut l, was_claimed) = self.acquire(id)?;
        let res = self.commit(
            &mut l,
            EventKind::Note {
                kind: kind.to_string(),
                data,
            },
        );
        let rec = l.record.clone();
        if was_claimed && res.is_ok() {
            lock(&self.inner.claims).insert(id.clone(), l);
        }
        res.map(|_| rec)
    }

    /// Replays a terminal run as a new run with a fresh attempt budget and
    /// fresh approval, canary and rollback state, linked by `replayOfRunId`.
    ///
    /// Steps, all under the source's lock: (1) commit `replay-requested`
    /// naming the child id on the source; (2) create and publish the child
    /// (as enqueue: tmp, fsync, rename, fsync); (3) commit `replayed` on the
    /// source and, for a DLQ source, move it to `done/` (state `replayed`).
    /// A crash after (2) leaves a child and a source still in `dlq/`:
    /// recovery sees the intent, finds the child and finishes (3), so the
    /// source is never replayed twice. A crash before (2) leaves an intent
    /// without a child, which is ignored.
    pub fn replay_blocking(&self, id: &RunId, by: &str) -> Result<RunRecord> {
        let (mut l, was_claimed) = self.acquire(id)?;
        if let Err(e) = state::check(&l.record, Move::Replay) {
            if was_claimed {
                lock(&self.inner.claims).insert(id.clone(), l);
            }
            return Err(e);
        }
        let child_id = RunId::generate();
        self.commit(
            &mut l,
            EventKind::ReplayRequested {
                child: child_id.clone(),
                by: by.to_string(),
            },
        )?;
        let now = self.now();
        let child = fresh_child(&l.record, child_id.clone(), by, now);
        let child = self.publish(child)?;
        self.commit(&mut l, EventKind::Replayed { child: child_id })?;
        let to = Dir::for_state(l.record.state);
        self.relocate(&mut l, to, true)?;
        self.index_update(&l);
        Ok(child)
    }

    /// queued (retry scheduled) -> queued, due now: `queue flush`. Returns
    /// how many runs were made due; runs that are busy are skipped.
    pub fn flush_retries_blocking(&self, host: &HostId) -> Result<usize> {
        let now = self.now();
        let ids: Vec<RunId> = {
            let mut idx = lock(&self.inner.index);
            idx.sync();
            match idx.hosts().get(host) {
                Some(hi) => hi
                    .oldest(Bucket::RetryScheduled, usize::MAX)
                    .map(|(_, id)| id.clone())
                    .collect(),
                None => Vec::new(),
            }
        };
        let mut n = 0;
        for id in ids {
            match self.do_move(
                &id,
                Move::Reschedule,
                |r| {
                    if r.due_at() <= now {
                        Err(SpoolError::Invalid("already due".into()))
                    } else {
                        Ok(EventKind::Rescheduled { at: now })
                    }
                },
                false,
                SyncDir::Yes,
            ) {
                Ok(_) => n += 1,
                Err(
                    SpoolError::Busy { .. } | SpoolError::Invalid(_) | SpoolError::NotFound { .. },
                ) => {}
                Err(SpoolError::IllegalMove { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    // ----- host documents, audit log, control requests -----

    fn host_doc_path(&self, host: &HostId) -> PathBuf {
        join_names(&self.inner.hosts, &[host.as_str()], ".json")
    }

    /// A host's policy document (`hosts/<hostId>.json`), if one was stored.
    pub fn get_host_doc_blocking(&self, host: &HostId) -> Result<Option<serde_json::Value>> {
        let p = self.host_doc_path(host);
        match self.inner.host_docs.read(&p, |b| serde_json::from_slice(b)) {
            Ok(Some(Ok(doc))) => Ok(Some(doc)),
            Ok(Some(Err(e))) => Err(SpoolError::Corrupt {
                path: p,
                reason: format!("host document is not JSON: {e}"),
            }),
            Ok(None) => Ok(None),
            Err(e) => Err(SpoolError::io("read", p, e)),
        }
    }

    /// Replaces a host's policy document atomically and durably (write a
    /// unique temporary file, fsync, rename over, fsync the directory).
    /// Registering a host also makes its run directories, so its first run
    /// does not pay for them.
    pub fn put_host_doc_blocking(&self, host: &HostId, doc: &serde_json::Value) -> Result<()> {
        self.ensure_host(host)?;
        let dir = self.inner.root.join("hosts");
        let nonce: u64 = rand::random();
        let tmp = dir.join(format!(".{}.{nonce:016x}.tmp", host.as_str()));
        let bytes =
            serde_json::to_vec_pretty(doc).map_err(|e| SpoolError::Invalid(e.to_string()))?;
        drop(
            self.inner
                .io
                .create_new(&tmp, &bytes)
                .map_err(|e| SpoolError::io("create", &tmp, e))?,
        );
        let dest = self.host_doc_path(host);
        if let Err(e) = self.inner.io.rename_replace(&tmp, &dest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(SpoolError::io("rename", dest, e));
        }
        self.sync_dir(&dir)
    }

    /// Appends one JSON line to today's audit log; with `durable`,
    /// fdatasyncs it before returning.
    pub fn audit_blocking(&self, entry: crate::store::AuditLine, durable: bool) -> Result<()> {
        let mut line = entry.into_bytes();
        line.push(b'\n');
        let log = self.audit_file(self.now().date_naive())?;
        // One write(2) per line on an O_APPEND file: lines from several
        // processes do not interleave.
        if durable {
            self.inner
                .io
                .append(&log.file, &line)
                .map_err(|e| SpoolError::io("append", &log.path, e))
        } else {
            use std::io::Write;
            (&log.file)
                .write_all(&line)
                .map_err(|e| SpoolError::io("append", &log.path, e))
        }
    }

    /// The audit log of `day`, kept open for appending while the path still
    /// names it (a `stat` per line instead of an open and a close; a log
    /// moved or deleted by hand is opened anew, not written to unseen).
    fn audit_file(&self, day: chrono::NaiveDate) -> Result<Arc<AuditLog>> {
        // The stat runs outside the lock: every state-changing request of
        // every connection thread comes through here.
        let held = lock(&self.inner.audit_file)
            .as_ref()
            .filter(|log| log.day == day)
            .cloned();
        if let Some(log) = held
            && std::fs::metadata(&log.path).is_ok_and(|md| md.ino() == log.ino)
        {
            return Ok(log);
        }
        let path = self
            .inner
            .root
            .join("audit")
            .join(format!("audit-{}.jsonl", day.format("%Y-%m-%d")));
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| SpoolError::io("open", &path, e))?;
        let ino = file
            .metadata()
            .map_err(|e| SpoolError::io("stat", &path, e))?
            .ino();
        let log = Arc::new(AuditLog {
            day,
            path,
            ino,
            file,
        });
        // Two threads that both reopened store one of their files; both
        // append to the same log.
        *lock(&self.inner.audit_file) = Some(log.clone());
        Ok(log)
    }

    fn host_activity_path(&self, host: &HostId) -> PathBuf {
        join_names(&self.inner.hosts, &[host.as_str()], ".activity.log")
    }

    /// What operators did on a host recently (the latest dry-run of each
    /// action, the executes of the last day), for the fresh-dry-run gate,
    /// the cooldown and the hourly limits. Read from the host's activity log
    /// (see [`LocalSpool::record_activity_blocking`]); a line that does not
    /// parse (a torn append) is skipped.
    pub fn host_activity_blocking(&self, host: &HostId) -> Result<HostActivity> {
        let p = self.host_activity_path(host);
        let now = self.now();
        let read = self.inner.activity.read(&p, |b| {
            Ok::<_, std::convert::Infallible>(fold_activity(b, now))
        });
        match read {
            Ok(Some(Ok(mut a))) => {
                // Folded at an earlier read, perhaps: drop what has aged out.
                let day_ago = now - chrono::Duration::days(1);
                a.executes.retain(|e| e.at > day_ago);
                Ok(a)
            }
            Ok(None) => Ok(HostActivity::default()),
            Ok(Some(Err(never))) => match never {},
            Err(e) => Err(SpoolError::io("read", p, e)),
        }
    }

    /// Records a dry-run or an execute of `action` on `host`: one line
    /// appended to the host's activity log and fdatasynced, under the
    /// spool's activity lock. Appending allocates no inode: replacing a
    /// file per dry-run freed one each time, and ext4 without a journal
    /// skips inodes freed in the last minutes whenever it places a new file
    /// in that block group, which made every later enqueue near it scan
    /// past them (in a profile of `make bench-http` after 5,800 dry-runs,
    /// a quarter of the server's CPU with the bench's own cleanup also
    /// freeing inodes, 9% once the activity was appended). A log over [`ACTIVITY_COMPACT_AT`]
    /// bytes is rewritten (temporary file, fsync, rename over, directory
    /// fsync) with what is still in force, once in a few hundred appends.
    /// A torn last line (a crash mid-append) is ended before the next line
    /// is written, so it costs only itself.
    pub fn record_activity_blocking(
        &self,
        host: &HostId,
        kind: ActivityKind,
        action: &str,
    ) -> Result<()> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let lock_path = self.inner.root.join("hosts").join(".activity.lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| SpoolError::io("open", &lock_path, e))?;
        let _guard = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| SpoolError::io("flock", &lock_path, e.into()))?;
        let now = self.now();
        let dir = self.inner.root.join("hosts");
        let path = self.host_activity_path(host);
        let line = ActivityLine::bytes(kind, action, now);
        let log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| SpoolError::io("open", &path, e))?;
        let len = log
            .metadata()
            .map_err(|e| SpoolError::io("stat", &path, e))?
            .len();
        if len >= ACTIVITY_COMPACT_AT {
            let mut all = Vec::new();
            (&log)
                .read_to_end(&mut all)
                .map_err(|e| SpoolError::io("read", &path, e))?;
            let mut bytes = activity_lines(&fold_activity(&all, now));
            bytes.extend_from_slice(&line);
            let nonce: u64 = rand::random();
            let tmp = dir.join(format!(".{}.activity.{nonce:016x}.tmp", host.as_str()));
            drop(
                self.inner
                    .io
                    .create_new(&tmp, &bytes)
                    .map_err(|e| SpoolError::io("create", &tmp, e))?,
            );
            if let Err(e) = self.inner.io.rename_replace(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(SpoolError::io("rename", path, e));
            }
            return self.sync_dir(&dir);
        }
        let mut bytes = Vec::with_capacity(line.len() + 1);
        let mut last = [0u8; 1];
        if len > 0 && log.read_exact_at(&mut last, len - 1).is_ok() && last[0] != b'\n' {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(&line);
        self.inner
            .io
            .append(&log, &bytes)
            .map_err(|e| SpoolError::io("append", &path, e))?;
        // A new (or still empty) log: make its name durable too.
        if len == 0 {
            self.sync_dir(&dir)
        } else {
            Ok(())
        }
    }

    fn control_dir(&self) -> PathBuf {
        self.inner.root.join("control")
    }

    /// The file through which `host`'s executor is asked to drain:
    /// `control/drain.<host>`, one per host, holding the largest limit asked
    /// for and not yet taken (empty when none is pending).
    fn drain_path(&self, host: &HostId) -> PathBuf {
        self.control_dir().join(format!("drain.{}", host.as_str()))
    }

    /// Asks the executor of `host` to drain up to `limit` due runs now: the
    /// host's drain file in `control/` (which the executor watches) is made
    /// to hold at least `limit`, under an flock that the executor's take
    /// also holds, so a request is either taken whole or still pending.
    ///
    /// The file is written in place, never replaced or removed: under the
    /// default `queueAutodrain` every execute asks for a drain, and a file
    /// per request (created by the API, removed by the executor) freed an
    /// inode per execute, which an ext4 without a journal makes every later
    /// file creation near it scan past for minutes. A limit already pending
    /// that is at least `limit` covers the request: nothing is written.
    ///
    /// Not fsynced: a drain request is a wake-up, not a record. The runs it
    /// is about are durable already, and an executor that (re)starts after
    /// a crash drains its due runs anyway; a request lost with the page
    /// cache loses nothing. (Until 2026-11-29 it was fsynced, which cost
    /// every execute under the default `queueAutodrain` about 1 ms: in
    /// `make bench-http` with autodrain on, 0.39x of the spool's enqueue
    /// at 1 client instead of 0.6-0.7x.)
    pub fn request_drain_blocking(&self, host: &HostId, limit: u32) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let path = self.drain_path(host);
        let locked = match lock_drain_file(&path, true) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                ensure_dir(&self.control_dir())?;
                lock_drain_file(&path, true)
            }
            r => r,
        }
        .map_err(|e| SpoolError::io("lock", &path, e))?;
        let Some(f) = locked else {
            tracing::warn!(
                host_id = %host,
                path = %path.display(),
                "drain file locked for too long (its holder stopped?): this drain request is dropped; the executor still sees new runs through its queued/ watch"
            );
            return Ok(());
        };
        let (pending, read) = read_drain_limit(&f).map_err(|e| SpoolError::io("read", &path, e))?;
        if pending.is_some_and(|p| p >= limit) {
            return Ok(());
        }
        let body = format!("{limit}\n");
        f.write_all_at(body.as_bytes(), 0)
            .and_then(|()| {
                // Whatever the file held beyond the new limit goes.
                if read > body.len() {
                    f.set_len(body.len() as u64)
                } else {
                    Ok(())
                }
            })
            .map_err(|e| SpoolError::io("write", &path, e))
    }

    /// Takes the pending drain request of `host`, if any: the largest limit
    /// asked for since the last take (at most 50). The host's drain file is
    /// emptied, not removed. A file locked for too long is an error that
    /// leaves its request for the next take.
    pub fn take_drain_requests(&self, host: &HostId) -> Result<Option<u32>> {
        let path = self.drain_path(host);
        let f = match lock_drain_file(&path, false) {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(SpoolError::io(
                    "lock",
                    &path,
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "locked by another process for over 50 ms (stopped?)",
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SpoolError::io("lock", &path, e)),
        };
        let (pending, read) = read_drain_limit(&f).map_err(|e| SpoolError::io("read", &path, e))?;
        if read > 0 {
            f.set_len(0)
                .map_err(|e| SpoolError::io("truncate", &path, e))?;
        }
        Ok(pending.map(|l| l.min(50)))
    }

    /// The directory the executor watches for control requests.
    pub fn control_path(&self) -> PathBuf {
        self.control_dir()
    }

    // ----- listing -----

    /// Counts by bucket, for one host or all.
    pub fn counts_blocking(&self, host: Option<&HostId>) -> Result<Counts> {
        let mut idx = lock(&self.inner.index);
        idx.sync();
        let mut c = Counts::default();
        for (h, hi) in idx.hosts() {
            if host.is_some_and(|x| x != h) {
                continue;
            }
            for b in Bucket::ALL {
                c.add(b, hi.count(b));
            }
        }
        Ok(c)
    }

    /// The oldest runs (by request time) in the given buckets, for one host
    /// or all, at most `limit`.
    pub fn list_blocking(&self, q: &ListQuery) -> Result<Vec<RunRecord>> {
        let picks: Vec<(i64, HostId, RunId, Dir)> = {
            let mut idx = lock(&self.inner.index);
            idx.sync();
            let mut all = Vec::new();
            for (h, hi) in idx.hosts() {
                if q.host.as_ref().is_some_and(|x| x != h) {
                    continue;
                }
                for b in &q.buckets {
                    for (req, id) in hi.oldest(*b, q.limit) {
                        if let Some(m) = hi.get(id) {
                            all.push((*req, h.clone(), id.clone(), m.dir));
                        }
                    }
                }
            }
            all.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
            all.truncate(q.limit);
            all
        };
        let mut out = Vec::with_capacity(picks.len());
        for (_, h, id, dir) in picks {
            let path = self.file_path(&h, dir, &id);
            match std::fs::read(&path)
                .ok()
                .and_then(|b| codec::decode(&b).ok())
            {
                Some(d) => out.push(d.record),
                None => {
                    // Moved since the index saw it: read it where it is now.
                    if let Ok(Some(r)) = self.get_blocking(&id) {
                        out.push(r);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Runs of `host` requested at or after `since`, in any state, newest
    /// first: what the execute gates count (hourly limits, cooldown).
    pub fn recent_requests_blocking(&self, host: &HostId, since: Timestamp) -> Vec<RecentRequest> {
        let mut idx = lock(&self.inner.index);
        idx.sync();
        recent_in(&idx, host, since)
    }

    /// When the earliest queued run of `host` is due (for the executor's
    /// timer).
    pub fn next_due_blocking(&self, host: &HostId) -> Option<Timestamp> {
        let mut idx = lock(&self.inner.index);
        idx.sync();
        idx.hosts()
            .get(host)
            .and_then(|h| h.next_due_ms())
            .and_then(chrono::DateTime::from_timestamp_millis)
    }

    /// Runs this process has claimed and not yet released.
    pub fn claimed(&self) -> Vec<RunId> {
        lock(&self.inner.claims).keys().cloned().collect()
    }

    /// Drops this process's claim on a run without a move (its file stays in
    /// `running/`, unlocked, for recovery). For shutdown paths and tests.
    pub fn release_claim(&self, id: &RunId) {
        lock(&self.inner.claims).remove(id);
    }

    // ----- recovery and retention -----

    /// Recovery (rules 2, 3, 5, 7): idempotent, safe to run at any time and
    /// after a crash during recovery. Files locked by a live process are
    /// skipped. For each host:
    /// - `tmp/` files older than 24 h are removed;
    /// - unreadable, foreign or hand-edited records go to `corrupt/`;
    /// - an unlocked run whose attempt started and never finished was
    ///   interrupted: retried now if its action is idempotent and attempts
    ///   remain, dead-lettered otherwise (`interrupted`, or
    ///   `max_attempts_exceeded`);
    /// - an unlocked file in `running/` whose log says queued is an orphan
    ///   claim and goes back to `queued/`;
    /// - a replay intent whose child exists is finished;
    /// - any other file whose directory disagrees with its log is moved where
    ///   the log says.
    pub fn recover_blocking(&self) -> Result<RecoveryReport> {
        let mut rep = RecoveryReport::default();
        let now = self.now();
        for host in self.hosts()? {
            self.ensure_host(&host)?;
            self.clean_tmp(&host, &mut rep)?;
            for dir in [Dir::Running, Dir::Queued, Dir::Held, Dir::Dlq, Dir::Done] {
                let names = self.names_in(&host, dir)?;
                for name in names {
                    self.recover_one(&host, dir, &name, now, &mut rep)?;
                }
            }
        }
        lock(&self.inner.index).sync();
        Ok(rep)
    }

    fn names_in(&self, host: &HostId, dir: Dir) -> Result<Vec<String>> {
        let p = self.dir_path(host, dir);
        let rd = match std::fs::read_dir(&p) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SpoolError::io("readdir", &p, e)),
        };
        Ok(rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    fn clean_tmp(&self, host: &HostId, rep: &mut RecoveryReport) -> Result<()> {
        let dir = self.dir_path(host, Dir::Tmp);
        for name in self.names_in(host, Dir::Tmp)? {
            let p = dir.join(&name);
            let old = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(86_400));
            if old {
                self.inner
                    .io
                    .remove(&p)
                    .map_err(|e| SpoolError::io("unlink", &p, e))?;
                rep.tmp_removed += 1;
            }
        }
        Ok(())
    }

    fn recover_one(
        &self,
        host: &HostId,
        dir: Dir,
        name: &str,
        now: Timestamp,
        rep: &mut RecoveryReport,
    ) -> Result<()> {
        let Ok(id) = RunId::parse(name) else {
            // Not a name the spool writes: a foreign file. Quarantine it
            // under a safe name.
            let from = self.dir_path(host, dir).join(name);
            let safe = format!("foreign-{:08x}", crc32fast::hash(name.as_bytes()));
            let to = self.dir_path(host, Dir::Corrupt).join(&safe);
            if !to.exists() {
                self.inner
                    .io
                    .rename_noreplace(&from, &to)
                    .map_err(|e| SpoolError::io("rename", &to, e))?;
                self.sync_dir(&self.dir_path(host, Dir::Corrupt))?;
            }
            rep.quarantined
                .push((from.display().to_string(), "foreign file name".into()));
            return Ok(());
        };
        if lock(&self.inner.claims).contains_key(&id) {
            return Ok(());
        }
        let mut l = match self.lock_at(host, dir, &id) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(SpoolError::Busy { .. }) => {
                rep.busy += 1;
                return Ok(());
            }
            Err(SpoolError::Corrupt { path, reason }) => {
                self.quarantine(host, dir, &id, &reason)?;
                rep.quarantined.push((path.display().to_string(), reason));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if l.record.state == RunState::Running {
            let interrupted = AttemptResult {
                interrupted: true,
                error: Some("interrupted: the executor stopped during this attempt".into()),
                ..AttemptResult::default()
            };
            let retry = l.record.idempotent && l.record.attempts < l.record.max_attempts;
            let next = if retry {
                Next::RetryAt { at: now }
            } else if l.record.idempotent {
                Next::DeadLetter {
                    reason: "max_attempts_exceeded".into(),
                }
            } else {
                Next::DeadLetter {
                    reason: "interrupted".into(),
                }
            };
            let attempt = l.record.attempts;
            self.commit(
                &mut l,
                EventKind::AttemptFinished {
                    attempt,
                    result: interrupted,
                    next,
                },
            )?;
            if retry {
                rep.interrupted_retried.push(id.to_string());
            } else {
                rep.interrupted_dead_lettered.push(id.to_string());
            }
        } else if dir == Dir::Running && l.record.state == RunState::Queued {
            rep.orphans_requeued.push(id.to_string());
        } else if Dir::for_state(l.record.state) != dir {
            rep.relocated.push(id.to_string());
        }
        // A replay whose child was published but whose source was not marked.
        let pending_child = pending_replay(&l.events);
        if let Some(child) = pending_child
            && self.locate_in_host(host, &child).is_some()
            && state::check(&l.record, Move::Replay).is_ok()
        {
            self.commit(&mut l, EventKind::Replayed { child })?;
            rep.replays_finished.push(id.to_string());
        }
        if l.torn_tail {
            let path = self.file_path(host, l.dir, &id);
            self.inner
                .io
                .truncate(&l.file, l.valid_len)
                .map_err(|e| SpoolError::io("truncate", &path, e))?;
            l.torn_tail = false;
        }
        let target = Dir::for_state(l.record.state);
        if target != l.dir {
            match self.relocate(&mut l, target, true) {
                Ok(()) => {}
                Err(SpoolError::Io { source, .. })
                    if source.raw_os_error() == Some(nix::libc::EEXIST) =>
                {
                    // The same run under two names: keep the copy whose log
                    // is longer where it belongs, and set the other aside.
                    let reason = format!("duplicate of {}/{}", target.name(), id);
                    drop(l);
                    self.quarantine(host, dir, &id, &reason)?;
                    rep.quarantined.push((id.to_string(), reason));
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        } else {
            self.index_update(&l);
        }
        Ok(())
    }

    /// Removes old runs from `done/` and `dlq/` by age (finish time, else
    /// file time) and keeps at most the newest `*_max_count`.
    pub fn prune_blocking(&self, r: Retention) -> Result<PruneReport> {
        let mut rep = PruneReport::default();
        let now = std::time::SystemTime::now();
        for host in self.hosts()? {
            for (dir, max_age, max_count) in [
                (Dir::Done, r.done_max_age, r.done_max_count),
                (Dir::Dlq, r.dlq_max_age, r.dlq_max_count),
            ] {
                let base = self.dir_path(&host, dir);
                let mut files: Vec<(std::time::SystemTime, String)> = self
                    .names_in(&host, dir)?
                    .into_iter()
                    .filter_map(|n| {
                        let t = std::fs::metadata(base.join(&n))
                            .and_then(|m| m.modified())
                            .ok()?;
                        Some((t, n))
                    })
                    .collect();
                files.sort();
                let excess = files.len().saturating_sub(max_count);
                let mut removed = 0;
                for (i, (t, n)) in files.iter().enumerate() {
                    let too_old = now.duration_since(*t).is_ok_and(|a| a > max_age);
                    if i >= excess && !too_old {
                        continue;
                    }
                    let Ok(id) = RunId::parse(n) else { continue };
                    // Lock before unlinking so a reader in the middle of a
                    // replay keeps its source.
                    let Ok(Some(l)) = self.lock_at(&host, dir, &id) else {
                        continue;
                    };
                    let p = base.join(n);
                    self.inner
                        .io
                        .remove(&p)
                        .map_err(|e| SpoolError::io("unlink", &p, e))?;
                    drop(l);
                    lock(&self.inner.index).remove(&host, &id);
                    removed += 1;
                }
                if removed > 0 {
                    self.sync_dir(&base)?;
                }
                match dir {
                    Dir::Done => rep.done_removed += removed,
                    _ => rep.dlq_removed += removed,
                }
            }
        }
        Ok(rep)
    }

    /// Paths of the files in one host's directory (for tests and tools).
    pub fn files_in(&self, host: &HostId, dir: Dir) -> Vec<PathBuf> {
        let base = self.dir_path(host, dir);
        let mut v: Vec<PathBuf> = self
            .names_in(host, dir)
            .unwrap_or_default()
            .into_iter()
            .map(|n| base.join(n))
            .collect();
        v.sort();
        v
    }

    /// Where a host's directory is.
    pub fn host_dir(&self, host: &HostId, dir: Dir) -> PathBuf {
        self.dir_path(host, dir)
    }
}

/// What [`LocalSpool::import_blocking`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The run was written, durably, into this directory.
    Imported(Dir),
    /// The run id was already in this directory; nothing was written.
    AlreadyPresent(Dir),
}

/// A record from outside must describe a history the state machine could
/// have produced: one history entry per attempt, an open attempt exactly
/// when running, and no more attempts than allowed.
fn check_importable(r: &RunRecord) -> Result<()> {
    let bad = |why: &str| {
        Err(SpoolError::Invalid(format!(
            "run {}: {why}: not imported",
            r.run_id
        )))
    };
    if r.max_attempts == 0 {
        return bad("maxAttempts is 0");
    }
    if r.attempts > r.max_attempts {
        return bad("more attempts than maxAttempts");
    }
    if r.history.len() != r.attempts as usize {
        return bad("the attempt history does not match the attempt count");
    }
    if r.history
        .iter()
        .enumerate()
        .any(|(i, a)| a.attempt as usize != i + 1)
    {
        return bad("the attempt history is not numbered 1, 2, ...");
    }
    let open = r.history.iter().filter(|a| a.finished_at.is_none()).count();
    let expect_open = usize::from(r.state == RunState::Running);
    if open != expect_open || (open == 1 && r.open_attempt().is_none()) {
        return bad("an attempt is open but the run is not running, or the reverse");
    }
    Ok(())
}

fn pending_replay(events: &[Event]) -> Option<RunId> {
    let mut pending = None;
    for e in events {
        match &e.kind {
            EventKind::ReplayRequested { child, .. } => pending = Some(child.clone()),
            EventKind::Replayed { child } if Some(child) == pending.as_ref() => pending = None,
            _ => {}
        }
    }
    pending
}

/// The child of a replay: same host, action and parameters; a fresh attempt
/// budget; approval required again if the source required it; canary and
/// rollback settings kept but their results cleared.
fn fresh_child(src: &RunRecord, id: RunId, by: &str, now: Timestamp) -> RunRecord {
    let ttl = src.expires_at.map(|e| e - src.requested_at);
    let mut canary = src.canary.clone();
    canary.passed = None;
    let mut rollback = src.rollback.clone();
    rollback.attempted = false;
    rollback.succeeded = None;
    let new = NewRun {
        host_id: src.host_id.clone(),
        action_key: src.action_key.clone(),
        params: src.params.clone(),
        requested_by: by.to_string(),
        idempotency_key: None,
        max_attempts: src.max_attempts,
        expires_at: ttl.map(|t| now + t),
        idempotent: src.idempotent,
        approval_required: src.approval.required,
        canary,
        rollback,
        auto_queued: false,
        auto_reason: None,
        auto_tier: src.auto_tier.clone(),
        risk: src.risk.clone(),
        tier: src.tier.clone(),
    };
    RunRecord::new(id, new, now, Some(src.run_id.clone()))
}

/// Run counts by bucket.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub queued: usize,
    pub retry_scheduled: usize,
    pub held: usize,
    pub running: usize,
    pub succeeded: usize,
    pub rejected: usize,
    pub expired: usize,
    pub canceled: usize,
    pub replayed: usize,
    pub dlq: usize,
    pub corrupt: usize,
}

impl Counts {
    fn add(&mut self, b: Bucket, n: usize) {
        let f = match b {
            Bucket::Queued => &mut self.queued,
            Bucket::RetryScheduled => &mut self.retry_scheduled,
            Bucket::Held => &mut self.held,
            Bucket::Running => &mut self.running,
            Bucket::Succeeded => &mut self.succeeded,
            Bucket::Rejected => &mut self.rejected,
            Bucket::Expired => &mut self.expired,
            Bucket::Canceled => &mut self.canceled,
            Bucket::Replayed => &mut self.replayed,
            Bucket::Dlq => &mut self.dlq,
            Bucket::Corrupt => &mut self.corrupt,
        };
        *f += n;
    }

    pub fn get(&self, b: Bucket) -> usize {
        match b {
            Bucket::Queued => self.queued,
            Bucket::RetryScheduled => self.retry_scheduled,
            Bucket::Held => self.held,
            Bucket::Running => self.running,
            Bucket::Succeeded => self.succeeded,
            Bucket::Rejected => self.rejected,
            Bucket::Expired => self.expired,
            Bucket::Canceled => self.canceled,
            Bucket::Replayed => self.replayed,
            Bucket::Dlq => self.dlq,
            Bucket::Corrupt => self.corrupt,
        }
    }

    pub fn total(&self) -> usize {
        Bucket::ALL.iter().map(|b| self.get(*b)).sum()
    }
}

/// Which runs to list.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub host: Option<HostId>,
    pub buckets: Vec<Bucket>,
    pub limit: usize,
}

/// A host's activity log is compacted when it reaches this size (about 700
/// lines).
pub const ACTIVITY_COMPACT_AT: u64 = 64 * 1024;

/// One line of a host's activity log.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum ActivityLine {
    DryRun { action: String, at: Timestamp },
    Execute { action: String, at: Timestamp },
}

impl ActivityLine {
    /// The line's bytes, newline included.
    fn bytes(kind: ActivityKind, action: &str, at: Timestamp) -> Vec<u8> {
        let action = action.to_string();
        let l = match kind {
            ActivityKind::DryRun => ActivityLine::DryRun { action, at },
            ActivityKind::Execute => ActivityLine::Execute { action, at },
        };
        // A struct of strings and a timestamp always serialises.
        let mut v = serde_json::to_vec(&l).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// What a host's activity log says at `now`: the latest dry-run of each
/// action and the executes of the last day. Lines that do not parse are
/// skipped.
fn fold_activity(log: &[u8], now: Timestamp) -> HostActivity {
    let day_ago = now - chrono::Duration::days(1);
    let mut a = HostActivity::default();
    for line in log.split(|b| *b == b'\n') {
        match serde_json::from_slice::<ActivityLine>(line) {
            Ok(ActivityLine::DryRun { action, at }) => {
                let e = a.dry_runs.entry(action).or_insert(at);
                if at > *e {
                    *e = at;
                }
            }
            Ok(ActivityLine::Execute { action, at }) if at > day_ago => {
                a.executes.push(ActivityEntry { action, at });
            }
            _ => {}
        }
    }
    a
}

/// `a` as activity log lines (what a compaction keeps).
fn activity_lines(a: &HostActivity) -> Vec<u8> {
    let mut out = Vec::new();
    for (action, at) in &a.dry_runs {
        out.extend(ActivityLine::bytes(ActivityKind::DryRun, action, *at));
    }
    for e in &a.executes {
        out.extend(ActivityLine::bytes(ActivityKind::Execute, &e.action, e.at));
    }
    out
}

/// Recent operator activity on one host.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostActivity {
    /// The latest dry-run of each action.
    #[serde(default)]
    pub dry_runs: std::collections::BTreeMap<String, Timestamp>,
    /// Executes of the last day.
    #[serde(default)]
    pub executes: Vec<ActivityEntry>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ActivityEntry {
    pub action: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityKind {
    DryRun,
    Execute,
}

/// One recent run request, as the execute gates see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecentRequest {
    pub action_key: String,
    pub requested_at: Timestamp,
    pub auto_queued: bool,
}

/// Runs of `host` requested at or after `since`, newest first.
fn recent_in(idx: &Index, host: &HostId, since: Timestamp) -> Vec<RecentRequest> {
    let Some(h) = idx.hosts().get(host) else {
        return Vec::new();
    };
    let mut v: Vec<RecentRequest> = h
        .requested_since(since.timestamp_millis())
        .filter_map(|(ms, action, auto)| {
            Some(RecentRequest {
                action_key: action.to_string(),
                requested_at: chrono::DateTime::from_timestamp_millis(ms)?,
                auto_queued: auto,
            })
        })
        .collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.requested_at));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_names_makes_what_join_makes() {
        for base in ["spool/runs", "/var/spool/runs", "runs"] {
            let base = Path::new(base);
            assert_eq!(
                join_names(base, &["web-1", "queued", "r01"], ""),
                base.join("web-1").join("queued").join("r01")
            );
            assert_eq!(
                join_names(base, &["web-1"], ".activity.log"),
                base.join("web-1.activity.log")
            );
            assert_eq!(
                join_names(base, &["web-1"], ".json").as_os_str(),
                base.join("web-1.json").as_os_str()
            );
        }
    }
}
