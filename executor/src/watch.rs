//! Wakes the daemon when a run lands in its host's `queued/` directory
//! (enqueue, retry, approval and recovery all publish there with rename(2)),
//! so pickup is event-driven rather than a poll.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent};
use tokio::io::unix::AsyncFd;

use crate::error::{ExecError, Result};

#[derive(Debug)]
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// An inotify watch on one directory, readable from tokio.
#[derive(Debug)]
pub struct DirWatch {
    fd: AsyncFd<Fd>,
}

impl DirWatch {
    /// Watches `dir` for files renamed or created into it.
    pub fn new(dir: &Path) -> Result<DirWatch> {
        Self::on(&[dir], false)
    }

    /// Watches several directories on one descriptor: files renamed or
    /// created into them and, with `modified`, writes to the files in them
    /// (the S3 mirror wants every event of a record, not only its moves; the
    /// daemon wants every change of its drain file).
    pub fn on(dirs: &[&Path], modified: bool) -> Result<DirWatch> {
        let first = dirs.first().copied().unwrap_or(Path::new("."));
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| {
            ExecError::Watch {
                path: first.to_path_buf(),
                source: std::io::Error::from(e),
            }
        })?;
        let mut flags =
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ONLYDIR;
        if modified {
            flags |= AddWatchFlags::IN_MODIFY;
        }
        for dir in dirs {
            ino.add_watch(*dir, flags).map_err(|e| ExecError::Watch {
                path: dir.to_path_buf(),
                source: std::io::Error::from(e),
            })?;
        }
        let dir = first;
        // `AsyncFd::new` is deprecated in favour of the `unsafe` `register`
        // (the workspace forbids unsafe). Its soundness condition holds
        // here: `Fd` owns the inotify descriptor for the AsyncFd's whole life
        // and always returns that same descriptor.
        #[allow(deprecated)]
        let fd = AsyncFd::new(Fd(ino)).map_err(|source| ExecError::Watch {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(DirWatch { fd })
    }

    /// Waits until something arrived in the directory since the last call,
    /// and returns how many events were read (an overflow counts as one).
    pub async fn changed(&self) -> std::io::Result<usize> {
        Ok(self.events().await?.len())
    }

    /// Like [`DirWatch::changed`], returning the names of the files the
    /// events were about (an overflow has none: the caller still looks).
    pub async fn arrivals(&self) -> std::io::Result<Vec<String>> {
        Ok(self
            .events()
            .await?
            .into_iter()
            .filter_map(|e| e.name)
            .map(|n| n.to_string_lossy().into_owned())
            .collect())
    }

    async fn events(&self) -> std::io::Result<Vec<InotifyEvent>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => return Ok(events),
                Ok(_) | Err(nix::Error::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
