//! How many batches may be in flight to the target at once.
//!
//! `target.concurrency = "fixed"` (the default): `max_concurrency`, always.
//! `"adaptive"`: a limit between `min_concurrency` and `max_concurrency` that follows the
//! worker. Its latency half is [`tower_acc::Vegas`] (TCP Vegas as in Netflix's
//! concurrency-limits): the queue the worker builds is estimated from a window's mean batch time
//! against the shortest seen (`limit × (1 − shortest / this one)`); a short queue grows the
//! limit, a long one shrinks it by a tenth — once per window of about one batch time (see
//! `Window`). Its back-pressure half is ours: a throttle (429/503, a Lambda throttle), a
//! timeout or a refused connection sets a *ceiling* one below the calls in flight when it came
//! back (at most halving the limit; each refused call of a burst takes it one lower), and
//! shrinks the Vegas estimate by a tenth too (at the window's end). The
//! ceiling holds while pushback keeps coming and is lifted [`CEILING_HOLD`] after the last one,
//! so a worker whose capacity came back is found again (one probe past the old ceiling then).
//!
//! [`AdaptiveLimit`] is the pure decision (time is an argument); [`Slots`] is the semaphore
//! whose size follows it, and tells the lease keeper the room the pollers may fill.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tower_acc::Algorithm;

/// How long a pushback ceiling holds after the last pushback.
pub const CEILING_HOLD: Duration = Duration::from_secs(30);

/// What one call of the target said about its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// It answered after this long (whatever the answer: the worker worked).
    Answered(Duration),
    /// It pushed back: a throttle, a timeout, no connection, a 5xx.
    Pushback,
}

/// The adaptive limit's state.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    vegas: tower_acc::Vegas,
    floor: usize,
    max: usize,
    /// The pushback ceiling and when the last pushback came.
    ceiling: Option<(usize, Instant)>,
    /// The samples since Vegas was last told.
    window: Window,
}

/// The calls of one window: Vegas is told once per window, not once per call.
///
/// A batch's time is known only when it ends, one round trip after the limit it ran under was
/// set: told per call, Vegas adds (or takes) a step for every batch of that round trip before
/// the first batch run under the new limit comes back, and the limit swings from the floor to
/// several times the worker's capacity and back (seen against a real worker: 4 → 44 → 4 every
/// 1.7 s). As TCP Vegas adjusts once per round trip, and Netflix's `WindowedLimit` wraps its
/// limiters, the window closes once it has lasted its own mean batch time (at least
/// [`MIN_WINDOW`]) and Vegas gets its mean time and the most batches that were in flight.
#[derive(Debug, Clone)]
struct Window {
    started: Instant,
    answered: u32,
    took: Duration,
    in_flight: usize,
    pushback: bool,
}

/// The shortest window.
const MIN_WINDOW: Duration = Duration::from_millis(100);

impl Window {
    fn new(now: Instant) -> Self {
        Window { started: now, answered: 0, took: Duration::ZERO, in_flight: 0, pushback: false }
    }

    fn mean(&self) -> Option<Duration> {
        (self.answered > 0).then(|| self.took / self.answered)
    }
}

/// Vegas's queue thresholds, in batches: grow while fewer than `alpha` wait at the worker, shrink
/// past `beta` (it settles one to three batches past the worker's capacity). Vegas's defaults
/// (3 and 6 × log10 of the limit) suit limits in the hundreds; a worker of a few slots would carry
/// a queue of half its size before they react.
fn alpha(limit: usize) -> usize {
    log10(limit)
}
fn beta(limit: usize) -> usize {
    3 * log10(limit)
}
fn log10(limit: usize) -> usize {
    ((limit as f64).log10() as usize).max(1)
}
fn grow(limit: f64) -> f64 {
    limit + 1.0
}
fn shrink(limit: f64) -> f64 {
    limit * 0.9
}

impl AdaptiveLimit {
    /// Starts at the floor, as TCP does at one segment: the worker's capacity is found, not assumed.
    pub fn new(floor: usize, max: usize) -> Self {
        let floor = floor.clamp(1, max.max(1));
        let vegas = tower_acc::Vegas::builder()
            .initial_limit(floor)
            .max_limit(max)
            .alpha(alpha)
            .beta(beta)
            .increase(grow)
            .decrease(shrink)
            // the shortest time is learned again every ~100 × limit windows (Vegas's default of
            // 30 × limit re-learns it under load too often, and the limit creeps up each time)
            .probe_multiplier(100)
            .build();
        AdaptiveLimit { vegas, floor, max, ceiling: None, window: Window::new(Instant::now()) }
    }

    /// The limit now.
    pub fn limit(&self, now: Instant) -> usize {
        let ceiling = match self.ceiling {
            Some((c, at)) if now.saturating_duration_since(at) < CEILING_HOLD => c,
            _ => self.max,
        };
        self.vegas.max_concurrency().min(ceiling).clamp(self.floor, self.max)
    }

    /// One call's signal; `in_flight`: the calls of the target in flight when it came back,
    /// itself included (calls, not slots: a slot is also held while its batch is acknowledged).
    pub fn observe(&mut self, signal: Signal, in_flight: usize, now: Instant) {
        if self.window.answered == 0 && !self.window.pushback {
            // the first call of a window starts it (an idle spell is not part of it)
            self.window = Window::new(now);
        }
        self.window.in_flight = self.window.in_flight.max(in_flight);
        match signal {
            Signal::Answered(took) => {
                self.window.answered += 1;
                self.window.took += took.max(Duration::from_micros(1));
            }
            Signal::Pushback => {
                // the ceiling acts at once; Vegas hears of it at the window's end
                let current = self.limit(now);
                // one pushback at most halves the limit: the count of calls at the worker is an
                // estimate, and a ceiling set too low would hold for CEILING_HOLD (a pushback
                // burst brings it down further, one refused call after another)
                let below = in_flight.saturating_sub(1).min(current).max(current / 2).max(self.floor);
                let ceiling = match self.ceiling {
                    Some((c, at)) if now.saturating_duration_since(at) < CEILING_HOLD => c.min(below),
                    _ => below,
                };
                self.ceiling = Some((ceiling, now));
                self.window.pushback = true;
            }
        }
        let Some(mean) = self.window.mean() else {
            // pushback alone: nothing timed to tell Vegas (the ceiling holds the limit)
            if now.saturating_duration_since(self.window.started) >= MIN_WINDOW {
                self.window = Window::new(now);
            }
            return;
        };
        if now.saturating_duration_since(self.window.started) >= mean.max(MIN_WINDOW) {
            // Vegas does not count batches queued behind our own limit: only ours in flight
            self.vegas.update(mean, self.window.in_flight, self.window.pushback, false);
            self.window = Window::new(now);
        }
    }
}

/// The concurrency slots of one pipeline: a permit per batch in flight, as many as the limit.
pub struct Slots {
    inner: Mutex<SlotsInner>,
    /// The limit is adaptive (fixed at construction).
    adaptive: bool,
    freed: tokio::sync::Notify,
    gauge: metrics::Gauge,
    status: std::sync::Arc<crate::metrics::Status>,
    /// Told the room for messages the limit leaves (batches × batch size).
    room: Option<Box<dyn Fn(usize) + Send + Sync>>,
    batch_size: usize,
}

struct SlotsInner {
    in_flight: usize,
    /// Calls of the target in flight ([`Slots::call`] to [`Slots::observe`]).
    calls_in_flight: usize,
    adaptive: Option<AdaptiveLimit>,
    fixed: usize,
    /// The limit last published.
    published: usize,
}

impl SlotsInner {
    fn end_call(&mut self, _call: Call) {
        self.calls_in_flight = self.calls_in_flight.saturating_sub(1);
    }

    fn limit(&self, now: Instant) -> usize {
        self.adaptive.as_ref().map_or(self.fixed, |a| a.limit(now))
    }
}

/// One call of the target in flight ([`Slots::call`]).
#[must_use]
pub struct Call {
    _counted: (),
}

/// One batch's slot; give it back with [`Slots::release`].
#[must_use]
pub struct Slot {
    _taken: (),
}

impl Slots {
    /// `adaptive`: `Some((floor, max))`; else fixed at `max`.
    pub fn new(
        max: usize,
        adaptive: Option<usize>,
        batch_size: usize,
        gauge: metrics::Gauge,
        status: std::sync::Arc<crate::metrics::Status>,
    ) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let adaptive = adaptive.map(|floor| AdaptiveLimit::new(floor, max));
        status.adaptive.store(adaptive.is_some(), Relaxed);
        let inner = SlotsInner { in_flight: 0, calls_in_flight: 0, adaptive, fixed: max, published: 0 };
        let published = inner.limit(Instant::now());
        gauge.set(published as f64);
        status.concurrency_limit.store(published, Relaxed);
        Slots {
            adaptive: inner.adaptive.is_some(),
            inner: Mutex::new(SlotsInner { published, ..inner }),
            freed: tokio::sync::Notify::new(),
            gauge,
            status,
            room: None,
            batch_size,
        }
    }

    /// Tells `room` the number of messages the limit leaves room for, now and at each change.
    #[must_use]
    pub fn with_room(mut self, room: impl Fn(usize) + Send + Sync + 'static) -> Self {
        let limit = self.inner().published;
        room(self.room_for(limit));
        self.room = Some(Box::new(room));
        self
    }

    /// Room for every batch the limit lets run and one being cut.
    fn room_for(&self, limit: usize) -> usize {
        (limit + 1).saturating_mul(self.batch_size)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.inner().limit(Instant::now())
    }

    /// Batches in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner().in_flight
    }

    pub fn is_adaptive(&self) -> bool {
        self.adaptive
    }

    /// Waits for a slot.
    pub async fn acquire(&self) -> Slot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = self.inner();
                let now = Instant::now();
                if s.in_flight < s.limit(now) {
                    s.in_flight += 1;
                    return Slot { _taken: () };
                }
            }
            // a ceiling lifts with time, not with a release: look again now and then
            tokio::select! {
                () = &mut freed => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// A call of the target is sent now; report what it said with [`Slots::observe`].
    pub fn call(&self) -> Call {
        // a fixed limit listens to nothing: no bookkeeping on its hot path
        if self.adaptive {
            self.inner().calls_in_flight += 1;
        }
        Call { _counted: () }
    }

    /// A call that shutdown took before it answered.
    pub fn abandoned(&self, call: Call) {
        self.inner().end_call(call);
    }

    /// Reports what a call said; each call of the target reports once.
    pub fn observe(&self, call: Call, signal: Signal) {
        if !self.adaptive {
            return;
        }
        let mut s = self.inner();
        let in_flight = s.calls_in_flight;
        s.end_call(call);
        if let Some(a) = s.adaptive.as_mut() {
            a.observe(signal, in_flight, Instant::now());
        }
        self.publish(s);
    }

    /// Gives a slot back.
    pub fn release(&self, slot: Slot) {
        let Slot { _taken: () } = slot;
        let mut s = self.inner();
        s.in_flight -= 1;
        self.publish(s);
        self.freed.notify_waiters();
    }

    fn publish(&self, mut s: std::sync::MutexGuard<'_, SlotsInner>) {
        let limit = s.limit(Instant::now());
        if limit == s.published {
            return;
        }
        let grew = limit > s.published;
        s.published = limit;
        drop(s);
        self.gauge.set(limit as f64);
        self.status.concurrency_limit.store(limit, std::sync::atomic::Ordering::Relaxed);
        if let Some(room) = &self.room {
            room(self.room_for(limit));
        }
        if grew {
            self.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backlog against a worker that serves `capacity` batches at once in 100 ms, and slower in
    /// proportion past that (a batch's time is set by the load it started under, and known only
    /// when it ends, as with a real worker). Returns (seconds, limit) after each batch, for
    /// `secs` of simulated time.
    fn settle(capacity: usize, max: usize, secs: u64) -> Vec<(f64, usize)> {
        let start = Instant::now();
        let mut a = AdaptiveLimit::new(1, max);
        let base = Duration::from_millis(100);
        let mut now = start;
        // (end, took) of the batches in flight
        let mut running: Vec<(Instant, Duration)> = Vec::new();
        let mut seen = Vec::new();
        while now < start + Duration::from_secs(secs) {
            while running.len() < a.limit(now) {
                let n = running.len() + 1;
                let took = if n <= capacity { base } else { base.mul_f64(n as f64 / capacity as f64) };
                running.push((now + took, took));
            }
            running.sort_by_key(|r| r.0);
            let (end, took) = running.remove(0);
            now = end;
            a.observe(Signal::Answered(took), running.len() + 1, now);
            seen.push(((now - start).as_secs_f64(), a.limit(now)));
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn settles_near_a_slowing_workers_capacity() {
        let seen = settle(8, 64, 60);
        let tail: Vec<usize> = seen.iter().filter(|s| s.0 >= 20.0).map(|s| s.1).collect();
        assert!(tail.iter().all(|l| (6..=12).contains(l)), "{seen:?}");
        let early = seen.iter().find(|s| s.1 >= 6).expect("grew");
        assert!(early.0 < 5.0, "found the capacity only after {} s", early.0);
    }

    #[tokio::test(start_paused = true)]
    async fn grows_to_the_max_when_the_worker_does_not_slow_down() {
        let seen = settle(1000, 40, 30);
        assert_eq!(seen.last().unwrap().1, 40, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn pushback_caps_one_below_what_was_in_flight_until_it_stops_for_the_hold() {
        let start = Instant::now();
        let mut a = AdaptiveLimit::new(1, 64);
        let ms = |i: u64| start + Duration::from_millis(i);
        for i in 0..200 {
            let n = a.limit(ms(i * 20));
            a.observe(Signal::Answered(Duration::from_millis(50)), n, ms(i * 20));
        }
        let now = ms(4000);
        let before = a.limit(now);
        assert!(before > 10, "{before}");
        // the first pushback at most halves the limit; the next ones of the burst take it to one
        // below the calls at the worker
        a.observe(Signal::Pushback, 5, now);
        assert_eq!(a.limit(now), (before / 2).max(4));
        a.observe(Signal::Pushback, 5, now);
        a.observe(Signal::Pushback, 5, now);
        a.observe(Signal::Pushback, 5, now);
        a.observe(Signal::Pushback, 5, now);
        a.observe(Signal::Pushback, 5, now);
        assert_eq!(a.limit(now), 4);
        // answers keep coming: the ceiling holds
        for i in 0..1000 {
            a.observe(Signal::Answered(Duration::from_millis(50)), 4, now + Duration::from_millis(i * 20));
        }
        assert_eq!(a.limit(now + Duration::from_secs(20)), 4);
        // a later pushback never raises it
        a.observe(Signal::Pushback, 9, now + Duration::from_secs(20));
        assert_eq!(a.limit(now + Duration::from_secs(49)), 4);
        // quiet for the hold: lifted
        assert!(a.limit(now + Duration::from_secs(51)) > 4);
    }

    #[tokio::test(start_paused = true)]
    async fn never_below_the_floor() {
        let now = Instant::now();
        let mut a = AdaptiveLimit::new(3, 10);
        for _ in 0..50 {
            a.observe(Signal::Pushback, 1, now);
        }
        assert_eq!(a.limit(now), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pushback_burst_takes_the_limit_to_one_below_the_calls_still_at_the_worker() {
        let slots = Slots::new(8, Some(1), 10, metrics::Gauge::noop(), std::sync::Arc::default());
        // grow the limit: answers at a steady time, windows of 100 ms
        for _ in 0..40 {
            let calls: Vec<Call> = (0..slots.limit()).map(|_| slots.call()).collect();
            tokio::time::advance(Duration::from_millis(100)).await;
            for call in calls {
                slots.observe(call, Signal::Answered(Duration::from_millis(100)));
            }
        }
        assert_eq!(slots.limit(), 8);
        // 8 calls to a worker that takes 5: 3 come back refused, one after another
        let mut calls: Vec<Call> = (0..8).map(|_| slots.call()).collect();
        slots.observe(calls.pop().unwrap(), Signal::Pushback);
        assert_eq!(slots.limit(), 7, "one below the 8 in flight");
        slots.observe(calls.pop().unwrap(), Signal::Pushback);
        slots.observe(calls.pop().unwrap(), Signal::Pushback);
        assert_eq!(slots.limit(), 5, "one below the 5 accepted and the last refused");
        for call in calls {
            slots.observe(call, Signal::Answered(Duration::from_millis(100)));
        }
        assert_eq!(slots.inner().calls_in_flight, 0);
        assert_eq!(slots.limit(), 5, "the ceiling holds");
    }

    #[tokio::test(start_paused = true)]
    async fn slots_follow_the_limit_and_report_room() {
        let room = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = room.clone();
        let slots = Slots::new(8, Some(2), 10, metrics::Gauge::noop(), std::sync::Arc::default())
            .with_room(move |n| r.store(n, std::sync::atomic::Ordering::Relaxed));
        assert_eq!(slots.limit(), 2);
        assert_eq!(room.load(std::sync::atomic::Ordering::Relaxed), 30);
        let a = slots.acquire().await;
        let b = slots.acquire().await;
        assert!(tokio::time::timeout(Duration::from_millis(10), slots.acquire()).await.is_err(), "full at 2");
        slots.observe(slots.call(), Signal::Answered(Duration::from_millis(5)));
        slots.release(a);
        slots.release(b);
        let fixed = Slots::new(8, None, 10, metrics::Gauge::noop(), std::sync::Arc::default());
        assert_eq!(fixed.limit(), 8);
    }
}
