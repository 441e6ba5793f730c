//! Processes the service starts for its targets (`command` runs one per batch, `runtime-api`
//! keeps `workers` running), and how they end.
//!
//! - Each runs in a **process group of its own**: Ctrl-C in a terminal (SIGINT to the
//!   foreground group) reaches the service, which drains, and not its workers, which would die
//!   with their batches.
//! - The service ends a worker **in order**: SIGTERM to its whole group, then SIGKILL if it is
//!   still there after a grace time. Whatever the worker started itself goes with it.
//! - A [`WorkerProcess`] dropped while running (its batch timed out, or shutdown gave it up) gets
//!   the same treatment in the background, with [`KILL_AFTER`] as the grace time; groups still
//!   alive when the service exits are killed by [`kill_remaining`].
//! - What the service reads from a worker is capped ([`read_capped`]): a worker that writes
//!   without end cannot grow the service's memory.

use std::collections::BTreeSet;
use std::io;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// Largest answer read from a worker: Lambda's response limit.
pub const MAX_OUTPUT: usize = 6 * 1024 * 1024;

/// How long a dropped worker has between SIGTERM and SIGKILL.
pub const KILL_AFTER: Duration = Duration::from_secs(1);

/// Process groups started and not yet known to be gone.
static GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn groups() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    GROUPS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends `signal` to every process of group `pgid`; false when the group is gone.
fn signal_group(pgid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names a process group
    unsafe { libc::kill(-pgid, signal) == 0 }
}

/// SIGKILL to every worker group still alive: the last thing the service does before it exits.
pub fn kill_remaining() {
    let remaining = std::mem::take(&mut *groups());
    for pgid in remaining {
        signal_group(pgid, libc::SIGKILL);
    }
}

/// How a worker ended when it was asked to stop.
#[derive(Debug)]
pub enum Stopped {
    /// It exited within the grace time.
    Exited(io::Result<ExitStatus>),
    /// It was still running after the grace time and was killed.
    Killed,
}

/// A running worker process, leader of its own process group.
pub struct WorkerProcess {
    child: Child,
    /// The process group (the child's pid).
    pgid: Option<i32>,
}

impl WorkerProcess {
    /// Starts `command` in a new process group.
    ///
    /// # Errors
    /// When the program cannot be started (missing, not executable).
    pub fn spawn(command: &mut Command) -> io::Result<Self> {
        let child = command.process_group(0).kill_on_drop(false).spawn()?;
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        if let Some(pgid) = pgid {
            groups().insert(pgid);
        }
        Ok(WorkerProcess { child, pgid })
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the worker to exit by itself.
    ///
    /// # Errors
    /// When waiting fails.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM to the group; SIGKILL to it if the worker has not exited after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Stopped {
        let Some(pgid) = self.pgid.take() else { return Stopped::Exited(self.child.wait().await) };
        signal_group(pgid, libc::SIGTERM);
        let stopped = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Stopped::Exited(status),
            Err(_) => Stopped::Killed,
        };
        // the leader's children too, whether or not the leader left
        signal_group(pgid, libc::SIGKILL);
        let _ = self.child.wait().await;
        groups().remove(&pgid);
        stopped
    }
}

impl Drop for WorkerProcess {
    /// A worker dropped while its group may still run: SIGTERM now, SIGKILL [`KILL_AFTER`] later.
    fn drop(&mut self) {
        let Some(pgid) = self.pgid.take() else { return };
        if !signal_group(pgid, libc::SIGTERM) {
            groups().remove(&pgid);
            return;
        }
        let kill = move || {
            signal_group(pgid, libc::SIGKILL);
            groups().remove(&pgid);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(KILL_AFTER).await;
                    kill();
                });
            }
            Err(_) => kill(),
        }
    }
}

/// The error of [`read_capped`]: the output passed `limit`.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub limit: usize,
}

/// Reads `reader` to its end, but no more than `limit` bytes.
///
/// # Errors
/// [`TooLarge`] once more than `limit` bytes arrived (the rest is not read); a read error is
/// treated as the end of the output.
pub async fn read_capped<R: AsyncRead + Unpin>(reader: R, limit: usize) -> Result<Vec<u8>, TooLarge> {
    let mut out = Vec::new();
    let mut capped = reader.take(limit as u64 + 1);
    let _ = capped.read_to_end(&mut out).await;
    if out.len() > limit {
        return Err(TooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_up_to_the_limit_is_read_and_more_is_refused() {
        assert_eq!(read_capped(&b"abc"[..], 3).await, Ok(b"abc".to_vec()));
        assert_eq!(read_capped(&b"abcd"[..], 3).await, Err(TooLarge { limit: 3 }));
        assert_eq!(read_capped(&b""[..], 0).await, Ok(Vec::new()));
    }
}
