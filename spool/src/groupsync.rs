//! Group commit for directory fsyncs.
//!
//! Concurrent writers that renamed into the same directory can share one
//! fsync of it: an fsync that *starts* after a writer's rename returned covers
//! that rename. Each caller takes a ticket after its rename; a leader syncs up
//! to the newest ticket it saw, and callers whose ticket it covered return
//! without a syscall of their own. A failed fsync fails every caller it
//! covered; none of them is acknowledged, and later callers get a fresh fsync.

use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use crate::io::DurableIo;

#[derive(Debug, Default)]
struct State {
    next_ticket: u64,
    /// Every ticket up to here has been covered by a finished round.
    covered_upto: u64,
    /// Rounds whose fsync failed, as `(from, upto]` ranges (rare, so a list).
    failed: Vec<(u64, u64)>,
    leader_active: bool,
}

#[derive(Debug, Default)]
pub struct GroupSync {
    state: Mutex<State>,
    cv: Condvar,
}

impl GroupSync {
    /// Makes every rename into `dir` that returned before this call durable.
    pub fn sync(&self, io: &dyn DurableIo, dir: &Path) -> io::Result<()> {
        let poisoned = || io::Error::other("group sync lock poisoned");
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        s.next_ticket += 1;
        let mine = s.next_ticket;
        loop {
            if s.covered_upto >= mine {
                if s.failed
                    .iter()
                    .any(|&(from, upto)| mine > from && mine <= upto)
                {
                    return Err(io::Error::other(format!(
                        "fsync of {} failed in a shared commit",
                        dir.display()
                    )));
                }
                return Ok(());
            }
            if !s.leader_active {
                s.leader_active = true;
                let target = s.next_ticket;
                let from = s.covered_upto;
                drop(s);
                let res = io.sync_dir(dir);
                s = self.state.lock().map_err(|_| poisoned())?;
                s.leader_active = false;
                s.covered_upto = target;
                if res.is_err() {
                    s.failed.push((from, target));
                }
                self.cv.notify_all();
                res?;
            } else {
                s = self.cv.wait(s).map_err(|_| poisoned())?;
            }
        }
    }
}
