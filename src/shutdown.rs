//! Graceful shutdown: one trigger, two phases.
//!
//! 1. **drain** (SIGTERM/SIGINT): pollers send no new ReceiveMessage and let the receives in
//!    flight return; the batcher dispatches what it holds; in-flight batches run on.
//! 2. **abandon** (the grace period is nearly over): batches still running are given up and
//!    their messages released (visibility 0), so another consumer takes them at once.
//!
//! The margin between abandon and the end of the grace period leaves time for those release
//! calls, so the process exits 0 within `grace_period_secs`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest a worker process gets between SIGTERM and SIGKILL when its pipeline has drained.
pub const WORKER_STOP_MAX: Duration = Duration::from_secs(5);

#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop receiving; finish what is in hand.
    pub drain: CancellationToken,
    /// Give up on unfinished batches and release their messages.
    pub abandon: CancellationToken,
    /// When the grace period ends (set by [`Shutdown::begin`]).
    deadline: Arc<OnceLock<Instant>>,
}

impl Shutdown {
    /// Starts the drain now and schedules abandon before the grace period ends.
    pub fn begin(&self, grace: Duration) {
        if self.drain.is_cancelled() {
            return;
        }
        let _ = self.deadline.set(Instant::now() + grace);
        self.drain.cancel();
        let abandon = self.abandon.clone();
        let after = grace.saturating_sub(release_margin(grace));
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            abandon.cancel();
        });
    }
}

/// Settling calls stop retrying this long before the grace period ends, so the process exits in it.
const SETTLE_EXIT_MARGIN: Duration = Duration::from_millis(300);

impl Shutdown {
    /// Until when acknowledgements and releases may be retried, once shutdown has begun.
    pub fn settle_deadline(&self) -> Option<Instant> {
        self.deadline.get().map(|d| *d - SETTLE_EXIT_MARGIN)
    }

    /// How long the worker processes of a drained pipeline get between SIGTERM and SIGKILL: what
    /// is left of the grace period (less half a second to exit), between half a second and
    /// [`WORKER_STOP_MAX`]; `WORKER_STOP_MAX` when no shutdown has begun (a fatal error).
    pub fn worker_stop_grace(&self) -> Duration {
        let left = self.deadline.get().map_or(WORKER_STOP_MAX, |d| d.saturating_duration_since(Instant::now()));
        left.saturating_sub(Duration::from_millis(500)).clamp(Duration::from_millis(500), WORKER_STOP_MAX)
    }
}

/// Time kept at the end of the grace period for releasing what is left: a fifth of it, between
/// 1 and 5 seconds.
pub fn release_margin(grace: Duration) -> Duration {
    (grace / 5).clamp(Duration::from_secs(1), Duration::from_secs(5)).min(grace)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_a_fifth_within_bounds() {
        assert_eq!(release_margin(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(release_margin(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(release_margin(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(release_margin(Duration::from_millis(500)), Duration::from_millis(500));
    }
}
