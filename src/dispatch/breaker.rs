//! The circuit breaker: stop spending receive counts while the target is down.
//!
//! After `failures` consecutive calls that found the target *unavailable* (no connection, a
//! timeout, an HTTP 5xx other than 503), the breaker opens: the pipeline's pollers stop
//! receiving (a pause reason beside the operator's and the health check's), and batches that
//! find it open wait under lease instead of failing again, so their receive counts stop growing.
//! After the cool-down one probe batch goes through (half-open): an answer closes the breaker,
//! another unavailable call re-opens it with twice the cool-down (up to `max_cooldown`). The
//! pollers receive again while half-open, so that a probe exists even when no batch was held;
//! the batches cut meanwhile wait under lease for the probe's answer.
//!
//! Any answer of the target closes it, whatever the answer says: a function error, an answer
//! naming `batchItemFailures`, an unreadable body — the worker is working. Throttles (429/503)
//! are neither: they are back-pressure, for the concurrency limit.
//!
//! [`BreakerState`] is the pure state machine (time is an argument); [`Breaker`] adds the clock,
//! the waiting, the pause switch and the metrics.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::config::BreakerConfig;

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open,
    HalfOpen,
}

impl Phase {
    /// The label of `sqs_poller_breaker_transitions_total` and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }

    /// The value of `sqs_poller_breaker_state`.
    pub fn gauge(self) -> f64 {
        match self {
            Phase::Closed => 0.0,
            Phase::Open => 1.0,
            Phase::HalfOpen => 2.0,
        }
    }
}

/// What a call may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go (closed).
    Go,
    /// Go as the one probe (half-open).
    Probe,
    /// Wait until this instant (open), or until the probe returns (`None`, half-open).
    Wait(Option<Instant>),
}

/// The breaker's state machine.
#[derive(Debug, Clone)]
pub struct BreakerState {
    config: BreakerConfig,
    phase: Phase,
    /// Closed: consecutive unavailable calls so far.
    consecutive: u32,
    /// Open: when it turns half-open.
    until: Instant,
    /// The cool-down of the next opening.
    cooldown: Duration,
    /// Half-open: the probe is out.
    probing: bool,
}

impl BreakerState {
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        let cooldown = config.cooldown;
        BreakerState { config, phase: Phase::Closed, consecutive: 0, until: now, cooldown, probing: false }
    }

    /// The phase at `now` (an open breaker whose cool-down is over is half-open).
    pub fn phase(&mut self, now: Instant) -> Phase {
        if self.phase == Phase::Open && now >= self.until {
            self.phase = Phase::HalfOpen;
            self.probing = false;
        }
        self.phase
    }

    /// Whether a call may go now; in half-open the first caller becomes the probe.
    pub fn admit(&mut self, now: Instant) -> Admit {
        if !self.config.enabled {
            return Admit::Go;
        }
        match self.phase(now) {
            Phase::Closed => Admit::Go,
            Phase::Open => Admit::Wait(Some(self.until)),
            Phase::HalfOpen if !self.probing => {
                self.probing = true;
                Admit::Probe
            }
            Phase::HalfOpen => Admit::Wait(None),
        }
    }

    /// The target answered: closed, the count starts again.
    pub fn answered(&mut self) {
        self.phase = Phase::Closed;
        self.consecutive = 0;
        self.probing = false;
        self.cooldown = self.config.cooldown;
    }

    /// The target was unavailable: counts toward opening, or re-opens after a failed probe.
    pub fn unavailable(&mut self, now: Instant) {
        if !self.config.enabled {
            return;
        }
        match self.phase(now) {
            Phase::Closed => {
                self.consecutive += 1;
                if self.consecutive >= self.config.failures {
                    self.open(now);
                }
            }
            // a batch that was in flight when it opened: no news
            Phase::Open => {}
            Phase::HalfOpen => {
                self.cooldown = (self.cooldown * 2).min(self.config.max_cooldown);
                self.open(now);
            }
        }
    }

    /// A probe that did not come back (shutdown took it): another caller may probe.
    pub fn probe_dropped(&mut self) {
        self.probing = false;
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open;
        self.until = now + self.cooldown;
        self.probing = false;
        self.consecutive = 0;
    }

    /// Whether unavailable calls are held (not failed) now: the breaker is not closed.
    pub fn holding(&mut self, now: Instant) -> bool {
        self.config.enabled && self.phase(now) != Phase::Closed
    }
}

/// The breaker of one pipeline.
pub struct Breaker {
    state: Mutex<BreakerState>,
    /// Woken on every transition.
    changed: tokio::sync::Notify,
    control: std::sync::Arc<crate::control::Control>,
    metrics: crate::metrics::DispatchMetrics,
    /// The phase last reported (metrics, pause switch, log).
    reported: Mutex<Phase>,
}

impl Breaker {
    pub fn new(
        config: BreakerConfig,
        control: std::sync::Arc<crate::control::Control>,
        metrics: crate::metrics::DispatchMetrics,
    ) -> Self {
        metrics.breaker_state.set(Phase::Closed.gauge());
        Breaker {
            state: Mutex::new(BreakerState::new(config, Instant::now())),
            changed: tokio::sync::Notify::new(),
            control,
            metrics,
            reported: Mutex::new(Phase::Closed),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        let phase = self.state().phase(Instant::now());
        self.report(phase);
        phase
    }

    /// Publishes a change of phase: metrics, the pollers' pause switch, one log line, waiters.
    fn report(&self, phase: Phase) {
        let mut reported = self.reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *reported == phase {
            return;
        }
        let from = *reported;
        *reported = phase;
        drop(reported);
        self.metrics.breaker_state.set(phase.gauge());
        *self.metrics.status.breaker.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = phase.name();
        metrics::counter!(crate::metrics::BREAKER_TRANSITIONS, "pipeline" => self.metrics.pipeline.clone(), "to" => phase.name())
            .increment(1);
        // half-open receives again: the probe may need a batch to be received, when no batch was
        // held (a failed probe is settled, so the held batches run out one per cool-down; paused
        // in half-open too, the queue would stop being consumed). What half-open receives waits
        // under lease behind the probe.
        self.control.set_breaker_open(phase == Phase::Open);
        match phase {
            Phase::Open => {
                tracing::warn!(pipeline = %self.metrics.pipeline, from = from.name(), "circuit breaker open: the target is unavailable; pollers stop receiving and held batches wait under lease")
            }
            Phase::HalfOpen => {
                tracing::info!(pipeline = %self.metrics.pipeline, "circuit breaker half-open: one probe batch goes to the target")
            }
            Phase::Closed => {
                tracing::info!(pipeline = %self.metrics.pipeline, "circuit breaker closed: the target answers again")
            }
        }
        self.changed.notify_waiters();
    }

    /// The state machine's answer now, its phase published.
    fn admit_now(&self) -> Admit {
        let (admit, phase) = {
            let mut s = self.state();
            let now = Instant::now();
            let admit = s.admit(now);
            (admit, s.phase(now))
        };
        self.report(phase);
        admit
    }

    /// Whether a call may go now, without waiting: `Some(true)` as the probe, `Some(false)`
    /// closed, `None` when it would wait.
    pub fn try_admit(&self) -> Option<bool> {
        match self.admit_now() {
            Admit::Go => Some(false),
            Admit::Probe => Some(true),
            Admit::Wait(_) => None,
        }
    }

    /// Waits until a call may go: `Some(true)` when it goes as the probe, `None` when `stop`
    /// fired first.
    pub async fn admit(&self, stop: &CancellationToken) -> Option<bool> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake = match self.admit_now() {
                Admit::Go => return Some(false),
                Admit::Probe => return Some(true),
                Admit::Wait(until) => until,
            };
            tokio::select! {
                () = stop.cancelled() => return None,
                () = &mut changed => {}
                () = async { match wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
            }
        }
    }

    /// The target answered.
    pub fn answered(&self) {
        let phase = {
            let mut s = self.state();
            s.answered();
            s.phase(Instant::now())
        };
        self.report(phase);
    }

    /// The target was unavailable; returns whether the call is to be held (the breaker is not
    /// closed now) rather than failed.
    pub fn unavailable(&self) -> bool {
        let (holding, phase) = {
            let mut s = self.state();
            let now = Instant::now();
            s.unavailable(now);
            (s.holding(now), s.phase(now))
        };
        self.report(phase);
        holding
    }

    /// Turns an open breaker half-open when its cool-down ends even while no batch waits on it
    /// (the pollers are paused until then); until `stop`.
    pub async fn keep_time(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            self.phase();
        }
    }

    /// A probe that shutdown took: another caller may probe.
    pub fn probe_dropped(&self) {
        self.state().probe_dropped();
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_is_a_label_of_the_transitions_metric() {
        let names = [Phase::Closed, Phase::Open, Phase::HalfOpen].map(Phase::name);
        assert_eq!(names, crate::metrics::BREAKER_PHASES);
    }

    fn state() -> (BreakerState, Instant) {
        let now = Instant::now();
        (BreakerState::new(BreakerConfig::default(), now), now)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_of_consecutive_unavailable_calls() {
        let (mut s, now) = state();
        for _ in 0..4 {
            s.unavailable(now);
            assert_eq!(s.phase(now), Phase::Closed);
        }
        s.unavailable(now);
        assert_eq!(s.phase(now), Phase::Open);
        assert_eq!(s.admit(now), Admit::Wait(Some(now + Duration::from_secs(10))));
        assert!(s.holding(now));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_between_starts_the_count_again() {
        let (mut s, now) = state();
        for _ in 0..4 {
            s.unavailable(now);
        }
        s.answered();
        for _ in 0..4 {
            s.unavailable(now);
        }
        assert_eq!(s.phase(now), Phase::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through_and_its_answer_closes() {
        let (mut s, now) = state();
        for _ in 0..5 {
            s.unavailable(now);
        }
        let later = now + Duration::from_secs(10);
        assert_eq!(s.phase(later), Phase::HalfOpen);
        assert_eq!(s.admit(later), Admit::Probe, "the probe");
        assert_eq!(s.admit(later), Admit::Wait(None), "only one probe");
        s.answered();
        assert_eq!(s.admit(later), Admit::Go);
        assert_eq!(s.phase(later), Phase::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_with_twice_the_cooldown_up_to_the_cap() {
        let (mut s, now) = state();
        for _ in 0..5 {
            s.unavailable(now);
        }
        let mut t = now;
        let mut cooldowns = Vec::new();
        for _ in 0..7 {
            let Admit::Wait(Some(until)) = s.admit(t) else { panic!("open") };
            cooldowns.push((until - t).as_secs());
            t = until;
            assert_eq!(s.admit(t), Admit::Probe);
            s.unavailable(t);
        }
        assert_eq!(cooldowns, [10, 20, 40, 80, 160, 300, 300]);
        // an answer resets the cool-down
        s.phase(t + Duration::from_secs(300));
        s.answered();
        for _ in 0..5 {
            s.unavailable(t);
        }
        assert_eq!(s.admit(t), Admit::Wait(Some(t + Duration::from_secs(10))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_lets_another_caller_probe() {
        let (mut s, now) = state();
        for _ in 0..5 {
            s.unavailable(now);
        }
        let later = now + Duration::from_secs(10);
        assert_eq!(s.admit(later), Admit::Probe);
        s.probe_dropped();
        assert_eq!(s.admit(later), Admit::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_never_opens_nor_holds() {
        let now = Instant::now();
        let mut s = BreakerState::new(BreakerConfig { enabled: false, ..BreakerConfig::default() }, now);
        for _ in 0..50 {
            s.unavailable(now);
        }
        assert_eq!(s.admit(now), Admit::Go);
        assert!(!s.holding(now));
    }
}
