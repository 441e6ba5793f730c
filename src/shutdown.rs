//! Graceful shutdown: one trigger, two phases.
//!
//! 1. **drain** (SIGTERM/SIGINT): pollers send no new ReceiveMessage and let the receives in
//!    flight return; the batcher dispatches what it holds; in-flight batches run on.
//! 2. **abandon** (the grace period is nearly over): batches still running are given up and
//!    their messages released (visibility 0), so another consumer takes them at once.
//!
//! The margin between abandon and the end of the grace period leaves time for those release
//! calls, so the process exits 0 within `grace_period_secs`.

use std::sync::{Arc, Mutex};
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
    /// When the grace period ends (set by [`Shutdown::begin`], brought forward by
    /// [`Shutdown::abandon_now`]).
    deadline: Arc<Mutex<Option<Instant>>>,
    /// The deadline of the shutdown this one is part of ([`Shutdown::child`]).
    parent_deadline: Option<Arc<Mutex<Option<Instant>>>>,
}

impl Shutdown {
    /// Starts the drain now and schedules abandon before the grace period ends.
    pub fn begin(&self, grace: Duration) {
        if self.drain.is_cancelled() {
            return;
        }
        self.set_deadline(Instant::now() + grace);
        self.drain.cancel();
        let abandon = self.abandon.clone();
        let after = grace.saturating_sub(release_margin(grace));
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            abandon.cancel();
        });
    }
}

/// After a second signal, the releases of what was outstanding get this long.
pub const ABANDON_RELEASE_TIME: Duration = Duration::from_secs(3);

/// Settling calls stop retrying this long before the grace period ends, so the process exits in it.
const SETTLE_EXIT_MARGIN: Duration = Duration::from_millis(300);

impl Shutdown {
    /// A shutdown of one part (a pipeline): it drains and abandons with this one, and can also
    /// be begun alone (a reload that restarts or removes the pipeline).
    pub fn child(&self) -> Shutdown {
        Shutdown {
            drain: self.drain.child_token(),
            abandon: self.abandon.child_token(),
            deadline: Arc::default(),
            parent_deadline: Some(self.deadline.clone()),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let read = |d: &Mutex<Option<Instant>>| *d.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let own = read(&self.deadline);
        let parent = self.parent_deadline.as_deref().and_then(read);
        match (own, parent) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sets the end of the grace period, or brings it forward.
    fn set_deadline(&self, at: Instant) {
        let mut d = self.deadline.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *d = Some(d.map_or(at, |d| d.min(at)));
    }

    /// The operator said "now" (a second signal): give up what is running, and leave the
    /// releases [`ABANDON_RELEASE_TIME`] at most.
    pub fn abandon_now(&self) {
        self.set_deadline(Instant::now() + ABANDON_RELEASE_TIME);
        self.drain.cancel();
        self.abandon.cancel();
    }

    /// Until when acknowledgements and releases may be retried, once shutdown has begun.
    pub fn settle_deadline(&self) -> Option<Instant> {
        self.deadline().map(|d| d - SETTLE_EXIT_MARGIN)
    }

    /// Resolves when the settle deadline has passed (never before a shutdown has begun): what
    /// an SQS call that does not return is raced against.
    pub async fn settle_cutoff(&self) {
        self.drain.cancelled().await;
        loop {
            let now = Instant::now();
            match self.settle_deadline() {
                Some(d) if d <= now => return,
                // re-read: a second signal brings the deadline forward
                Some(d) => tokio::time::sleep((d - now).min(Duration::from_millis(100))).await,
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// How long an open receive may still answer once the drain has begun: `most`, or a quarter
    /// of what is left of the grace period when that is less (a short grace is for settling).
    pub fn receive_grace(&self, most: Duration) -> Duration {
        let left = self.deadline().map_or(most, |d| d.saturating_duration_since(Instant::now()));
        most.min(left / 4)
    }

    /// How long the worker processes of a drained pipeline get between SIGTERM and SIGKILL: what
    /// is left of the grace period (less half a second to exit), between half a second and
    /// [`WORKER_STOP_MAX`]; `WORKER_STOP_MAX` when no shutdown has begun (a fatal error).
    pub fn worker_stop_grace(&self) -> Duration {
        let left = self.deadline().map_or(WORKER_STOP_MAX, |d| d.saturating_duration_since(Instant::now()));
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

/// Handles the operator's signals for a running service: the first SIGTERM or SIGINT begins the
/// drain of `shutdown` within `grace`; a second gives up the batches in flight and releases
/// everything outstanding at once ([`Shutdown::abandon_now`]). A drain that outlives the grace
/// period (by 2 s, counted from the last signal) is a hang: `on_hang` runs (the worker processes
/// go) and the process exits with 1.
pub fn on_signals(shutdown: Shutdown, grace: Duration, on_hang: fn()) {
    let limit = grace + Duration::from_secs(2);
    tokio::spawn(async move {
        signal().await;
        shutdown.begin(grace);
        let second = tokio::select! {
            () = signal() => true,
            () = tokio::time::sleep(limit) => false,
        };
        if second {
            // receives in flight still return first (at most wait_time_secs), so that nothing
            // they took is left hidden
            tracing::warn!("second signal: releasing everything outstanding now");
            shutdown.abandon_now();
            tokio::time::sleep(limit).await;
        }
        tracing::error!("drain did not finish within the grace period; exiting");
        on_hang();
        std::process::exit(1);
    });
}

/// SIGHUP as requests to reload the configuration `file` (its default action would end the
/// process); on a platform without it, or when it cannot be handled, no request ever comes.
pub fn reload_requests(file: String) -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (requests, received) = tokio::sync::mpsc::unbounded_channel();
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!(%file, "SIGHUP: reloading the configuration");
                    if requests.send(()).is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP; configuration reloads are off"),
    }
    #[cfg(not(unix))]
    drop((requests, file));
    received
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
