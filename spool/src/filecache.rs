//! Small files (host documents, activity logs) parsed once and kept in
//! memory while the file is provably the one that was parsed.
//!
//! Every read still asks the file system: one `stat` of the path. A cached
//! value is used only when the file's identity and change stamps (device,
//! inode, size, modification and change times) are exactly those seen when
//! it was parsed. The spool changes these files only by appending (the size
//! grows) or by renaming a new file over them (a new inode, a new change
//! time), and every change, by any process, sets the change time.
//!
//! A change time has the kernel's coarse clock granularity (a few ms): a
//! file changed twice within one tick could show the same stamps for two
//! contents. So a file is only cached once its change time is
//! [`SETTLED`] in the past (the "racily clean" rule of git's index): a
//! later change then carries a later change time. A file changed within
//! the last moments is read every time until it settles. (A wall clock set
//! back by more than that could defeat the rule; the cost is a stale read
//! of a document that was changed within the same tick twice, with the same
//! size.)

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long ago a file's last change must be before its contents are kept.
pub(crate) const SETTLED: Duration = Duration::from_secs(2);

/// At most this many files are kept; a full cache starts over.
pub(crate) const MAX_ENTRIES: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(md: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }

    /// The change time lies at least `settle` before `now`.
    fn settled(&self, settle: Duration, now: SystemTime) -> bool {
        let Ok(now) = now.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let (s, ns) = self.ctime;
        let (Ok(s), Ok(ns)) = (u64::try_from(s), u32::try_from(ns)) else {
            return false;
        };
        Duration::new(s, ns.min(999_999_999)) + settle <= now
    }
}

/// Parsed contents of files, by path.
#[derive(Debug)]
pub(crate) struct FileCache<T> {
    entries: Mutex<HashMap<PathBuf, (Stamp, T)>>,
    settle: Duration,
}

impl<T> FileCache<T> {
    /// A cache that keeps a file once its last change is `settle` old.
    pub(crate) fn with_settle(settle: Duration) -> Self {
        FileCache {
            entries: Mutex::new(HashMap::new()),
            settle,
        }
    }
}

impl<T> Default for FileCache<T> {
    fn default() -> Self {
        FileCache::with_settle(SETTLED)
    }
}

impl<T: Clone> FileCache<T> {
    /// The contents of `path` as `parse` makes them, `None` when there is
    /// no such file. `parse` runs only when the file is not cached as it is
    /// now; its errors are returned and not cached.
    pub(crate) fn read<E>(
        &self,
        path: &Path,
        parse: impl FnOnce(&[u8]) -> Result<T, E>,
    ) -> io::Result<Option<Result<T, E>>> {
        let md = match std::fs::metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.lock().remove(path);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let now = Stamp::of(&md);
        if let Some((seen, v)) = self.lock().get(path)
            && *seen == now
        {
            return Ok(Some(Ok(v.clone())));
        }
        // Read through the open file and stamp what was opened: if the
        // path is replaced meanwhile, the stamp is the old file's and the
        // next read sees a different one.
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let stamp = Stamp::of(&f.metadata()?);
        let mut bytes = Vec::with_capacity(usize::try_from(stamp.size).unwrap_or(0) + 1);
        f.read_to_end(&mut bytes)?;
        let parsed = parse(&bytes);
        // The stamp must describe exactly the bytes read: an append between
        // the stat and the read changes the size, so compare it too.
        if let Ok(v) = &parsed
            && stamp.size == bytes.len() as u64
            && stamp.settled(self.settle, SystemTime::now())
        {
            let mut entries = self.lock();
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(path.to_path_buf(), (stamp, v.clone()));
        }
        Ok(Some(parsed))
    }

    /// How many files are kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Stamp, T)>> {
        // The map only saves reads; after a panic elsewhere it is still a
        // set of (stamp, contents) pairs that each held when inserted.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::io::Write;

    /// A file holding `contents` in a directory of its own, and a cache
    /// that counts its parses.
    struct Fixture {
        dir: tempfile::TempDir,
        path: PathBuf,
        cache: FileCache<String>,
        parses: Cell<u32>,
    }

    impl Fixture {
        fn new(contents: &[u8], settle: Duration) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("doc");
            std::fs::write(&path, contents).unwrap();
            Fixture {
                dir,
                path,
                cache: FileCache::with_settle(settle),
                parses: Cell::new(0),
            }
        }

        /// Reads the file through the cache.
        fn read(&self) -> Option<String> {
            self.cache
                .read(&self.path, |b| {
                    self.parses.set(self.parses.get() + 1);
                    String::from_utf8(b.to_vec())
                })
                .unwrap()
                .map(|r| r.unwrap())
        }
    }

    #[test]
    fn an_unchanged_settled_file_is_parsed_once() {
        let f = Fixture::new(b"one", Duration::ZERO);
        assert_eq!(f.read().as_deref(), Some("one"));
        assert_eq!(f.read().as_deref(), Some("one"));
        assert_eq!(f.parses.get(), 1);
        assert_eq!(f.cache.len(), 1);
    }

    // With no settling time at all, the changes below happen within the
    // clock tick of the cached read: the stamps alone must tell them apart.
    #[test]
    fn an_append_within_the_same_tick_is_seen() {
        let f = Fixture::new(b"a\n", Duration::ZERO);
        assert_eq!(f.read().as_deref(), Some("a\n"));
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&f.path)
            .unwrap();
        log.write_all(b"b\n").unwrap();
        assert_eq!(f.read().as_deref(), Some("a\nb\n"));
        assert_eq!(f.parses.get(), 2);
    }

    #[test]
    fn a_file_renamed_over_the_cached_one_is_seen() {
        let f = Fixture::new(b"old", Duration::ZERO);
        assert_eq!(f.read().as_deref(), Some("old"));
        // Same length, same tick: only the inode differs.
        let tmp = f.dir.path().join("tmp");
        std::fs::write(&tmp, "new").unwrap();
        std::fs::rename(&tmp, &f.path).unwrap();
        assert_eq!(f.read().as_deref(), Some("new"));
    }

    #[test]
    fn a_deleted_file_is_none_and_forgotten() {
        let f = Fixture::new(b"x", Duration::ZERO);
        assert_eq!(f.read().as_deref(), Some("x"));
        std::fs::remove_file(&f.path).unwrap();
        assert_eq!(f.read(), None);
        assert_eq!(f.cache.len(), 0);
        std::fs::write(&f.path, "y").unwrap();
        assert_eq!(f.read().as_deref(), Some("y"));
    }

    #[test]
    fn a_file_changed_moments_ago_is_read_every_time() {
        let f = Fixture::new(b"x", SETTLED);
        for _ in 0..3 {
            assert_eq!(f.read().as_deref(), Some("x"));
        }
        assert_eq!(f.parses.get(), 3);
        assert_eq!(f.cache.len(), 0);
    }

    #[test]
    fn a_parse_error_is_returned_and_not_kept() {
        let f = Fixture::new(&[0xff, 0xfe], Duration::ZERO);
        for _ in 0..2 {
            let r = f
                .cache
                .read(&f.path, |b| String::from_utf8(b.to_vec()))
                .unwrap();
            assert!(matches!(r, Some(Err(_))));
        }
        assert_eq!(f.cache.len(), 0);
    }
}
