//! The few syscalls that make durability, behind one small trait.
//!
//! Everything that must reach the disk before the spool may say "done" goes
//! through [`DurableIo`]: exclusive create + write + fsync, append + fsync,
//! truncate + fsync, no-replace rename, directory fsync and unlink. Reads,
//! locks and directory listings do not change the disk and stay direct.
//! [`FaultIo`] counts these steps and can inject an I/O error or a crash at
//! step N, so tests can walk every step of every operation.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub trait DurableIo: Send + Sync + std::fmt::Debug {
    /// Creates `path` with O_EXCL and mode 0600, writes `data`, fsyncs it,
    /// and returns the file open for reading and appending.
    fn create_new(&self, path: &Path, data: &[u8]) -> io::Result<File>;
    /// Appends `data` at the end of `file` and fdatasyncs it.
    fn append(&self, file: &File, data: &[u8]) -> io::Result<()>;
    /// Cuts `file` to `len` bytes and fdatasyncs it (drops a torn tail).
    fn truncate(&self, file: &File, len: u64) -> io::Result<()>;
    /// rename(2) that fails with EEXIST instead of replacing `to`.
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// rename(2) that replaces `to` (host documents only).
    fn rename_replace(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// fsyncs a directory so the names in it are durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The real thing.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealIo;

impl DurableIo for RealIo {
    fn create_new(&self, path: &Path, data: &[u8]) -> io::Result<File> {
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_o_cloexec())
            .open(path)?;
        f.write_all(data)?;
        f.sync_all()?;
        Ok(f)
    }

    fn append(&self, file: &File, data: &[u8]) -> io::Result<()> {
        let mut f = file;
        f.write_all(data)?;
        file.sync_data()
    }

    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)?;
        file.sync_data()
    }

    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            from,
            nix::fcntl::AT_FDCWD,
            to,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(io::Error::from)
    }

    fn rename_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

fn libc_o_cloexec() -> i32 {
    nix::fcntl::OFlag::O_CLOEXEC.bits()
}

/// What [`FaultIo`] does at the chosen step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The step fails with EIO; later steps work (a transient disk error).
    Error,
    /// The step half-happens (a partial write, no sync) and every later step
    /// fails: the process is as good as dead. Drop the spool and reopen it.
    Crash,
}

/// A [`DurableIo`] that counts steps and injects one fault.
#[derive(Debug)]
pub struct FaultIo {
    steps: AtomicU64,
    plan: Mutex<Option<(u64, Fault)>>,
    crashed: std::sync::atomic::AtomicBool,
}

impl FaultIo {
    /// Counts steps without injecting anything.
    pub fn counting() -> Self {
        FaultIo {
            steps: AtomicU64::new(0),
            plan: Mutex::new(None),
            crashed: false.into(),
        }
    }

    /// Injects `fault` at step `n` (0-based, counted from now).
    pub fn arm(&self, n: u64, fault: Fault) {
        let base = self.steps.load(Ordering::SeqCst);
        if let Ok(mut p) = self.plan.lock() {
            *p = Some((base + n, fault));
        }
    }

    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::SeqCst)
    }

    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Decides the fate of the next step.
    fn step(&self) -> Option<Fault> {
        if self.crashed() {
            return Some(Fault::Crash);
        }
        let n = self.steps.fetch_add(1, Ordering::SeqCst);
        let plan = self.plan.lock().ok().and_then(|p| *p);
        match plan {
            Some((at, f)) if at == n => {
                if f == Fault::Crash {
                    self.crashed.store(true, Ordering::SeqCst);
                }
                Some(f)
            }
            _ => None,
        }
    }

    fn dead(&self) -> bool {
        self.crashed()
    }
}

fn injected() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::EIO)
}

impl DurableIo for FaultIo {
    fn create_new(&self, path: &Path, data: &[u8]) -> io::Result<File> {
        let dead = self.dead();
        match self.step() {
            None => RealIo.create_new(path, data),
            Some(Fault::Crash) if !dead => {
                // A crash mid-write: a partial, unsynced file in tmp/.
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(&data[..data.len() / 2])?;
                Err(injected())
            }
            Some(_) => Err(injected()),
        }
    }

    fn append(&self, file: &File, data: &[u8]) -> io::Result<()> {
        let dead = self.dead();
        match self.step() {
            None => RealIo.append(file, data),
            Some(f) if !dead => {
                // Both a crash and a failing disk may leave part of the line.
                let mut w = file;
                w.write_all(&data[..data.len() / 2])?;
                let _ = f;
                Err(injected())
            }
            Some(_) => Err(injected()),
        }
    }

    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        match self.step() {
            None => RealIo.truncate(file, len),
            Some(_) => Err(injected()),
        }
    }

    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self.step() {
            None => RealIo.rename_noreplace(from, to),
            Some(_) => Err(injected()),
        }
    }

    fn rename_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self.step() {
            None => RealIo.rename_replace(from, to),
            Some(_) => Err(injected()),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self.step() {
            None => RealIo.sync_dir(dir),
            Some(_) => Err(injected()),
        }
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match self.step() {
            None => RealIo.remove(path),
            Some(_) => Err(injected()),
        }
    }
}
