//! How many batches may be in flight to the target at once.
//!
//! `target.concurrency = "fixed"` (the default): `max_concurrency`, always.
//! `"adaptive"`: a limit between `min_concurrency` and `max_concurrency` that follows the
//! worker. Its latency half is [`tower_acc::Vegas`] (TCP Vegas as in Netflix's
//! concurrency-limits): the queue the worker builds is estimated from each batch's time against
//! the shortest seen (`limit × (1 − shortest / this one)`); a short queue grows the limit, a long
//! one shrinks it by a tenth. Its back-pressure half is ours: a throttle (429/503, a Lambda
//! throttle), a timeout or a refused connection sets a *ceiling* one below the batches that were
//! in flight when the worker pushed back, and shrinks the Vegas estimate by a tenth too. The
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
}

/// Vegas's queue thresholds, in batches: grow while fewer than `alpha` wait at the worker, shrink
/// past `beta`. Vegas's defaults (3 and 6 × log10 of the limit) suit limits in the hundreds; a
/// worker of a few slots would carry a queue of half its size before they react.
fn alpha(limit: usize) -> usize {
    2 * log10(limit)
}
fn beta(limit: usize) -> usize {
    4 * log10(limit)
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
            // the shortest time is learned again every ~1,000 × limit batches (Vegas's default
            // of 30 × limit re-learns it under load, and the limit then creeps up each time)
            .probe_multiplier(1000)
            .build();
        AdaptiveLimit { vegas, floor, max, ceiling: None }
    }

    /// The limit now.
    pub fn limit(&self, now: Instant) -> usize {
        let ceiling = match self.ceiling {
            Some((c, at)) if now.saturating_duration_since(at) < CEILING_HOLD => c,
            _ => self.max,
        };
        self.vegas.max_concurrency().min(ceiling).clamp(self.floor, self.max)
    }

    /// One call's signal; `in_flight`: the batches in flight when it came back, itself included.
    pub fn observe(&mut self, signal: Signal, in_flight: usize, now: Instant) {
        match signal {
            Signal::Answered(took) => {
                // Vegas does not count batches queued behind our own limit: only ours in flight
                self.vegas.update(took.max(Duration::from_micros(1)), in_flight, false, false);
            }
            Signal::Pushback => {
                let current = self.limit(now);
                let below = in_flight.saturating_sub(1).min(current).max(self.floor);
                let ceiling = match self.ceiling {
                    Some((c, at)) if now.saturating_duration_since(at) < CEILING_HOLD => c.min(below),
                    _ => below,
                };
                self.ceiling = Some((ceiling, now));
                // rtt is not looked at on an error
                self.vegas.update(Duration::from_secs(1), in_flight, true, false);
            }
        }
    }
}

/// The concurrency slots of one pipeline: a permit per batch in flight, as many as the limit.
pub struct Slots {
    inner: Mutex<SlotsInner>,
    freed: tokio::sync::Notify,
    gauge: metrics::Gauge,
    status: std::sync::Arc<crate::metrics::Status>,
    /// Told the room for messages the limit leaves (batches × batch size).
    room: Option<Box<dyn Fn(usize) + Send + Sync>>,
    batch_size: usize,
}

struct SlotsInner {
    in_flight: usize,
    adaptive: Option<AdaptiveLimit>,
    fixed: usize,
    /// The limit last published.
    published: usize,
}

impl SlotsInner {
    fn limit(&self, now: Instant) -> usize {
        self.adaptive.as_ref().map_or(self.fixed, |a| a.limit(now))
    }
}

/// One batch's slot; give it back with [`Slots::release`].
#[must_use]
pub struct Slot {
    taken: Instant,
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
        let inner = SlotsInner { in_flight: 0, adaptive, fixed: max, published: 0 };
        let published = inner.limit(Instant::now());
        gauge.set(published as f64);
        status.concurrency_limit.store(published, Relaxed);
        Slots {
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
        self.inner().adaptive.is_some()
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
                    return Slot { taken: now };
                }
            }
            // a ceiling lifts with time, not with a release: look again now and then
            tokio::select! {
                () = &mut freed => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Reports what the batch's calls said; each call of the target reports once.
    pub fn observe(&self, signal: Signal) {
        let mut s = self.inner();
        let in_flight = s.in_flight;
        if let Some(a) = s.adaptive.as_mut() {
            a.observe(signal, in_flight, Instant::now());
        }
        self.publish(s);
    }

    /// Gives a slot back.
    pub fn release(&self, slot: Slot) {
        let _ = slot.taken;
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

    /// A worker that serves `capacity` batches at once in `base`, and slower in proportion past
    /// that; the limit's batches are all in flight (a backlog).
    fn settle(capacity: usize, max: usize, rounds: usize) -> Vec<usize> {
        let now = Instant::now();
        let mut a = AdaptiveLimit::new(1, max);
        let base = Duration::from_millis(100);
        let mut seen = Vec::new();
        for _ in 0..rounds {
            let n = a.limit(now);
            let took = if n <= capacity { base } else { base.mul_f64(n as f64 / capacity as f64) };
            for _ in 0..n {
                a.observe(Signal::Answered(took), n, now);
            }
            seen.push(a.limit(now));
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn settles_near_a_slowing_workers_capacity() {
        let seen = settle(8, 64, 300);
        let tail = &seen[200..];
        assert!(tail.iter().all(|&l| (6..=12).contains(&l)), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn grows_to_the_max_when_the_worker_does_not_slow_down() {
        let seen = settle(1000, 40, 200);
        assert_eq!(*seen.last().unwrap(), 40, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn pushback_caps_one_below_what_was_in_flight_until_it_stops_for_the_hold() {
        let now = Instant::now();
        let mut a = AdaptiveLimit::new(1, 64);
        for _ in 0..200 {
            let n = a.limit(now);
            a.observe(Signal::Answered(Duration::from_millis(50)), n, now);
        }
        assert!(a.limit(now) > 5);
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
        slots.observe(Signal::Answered(Duration::from_millis(5)));
        slots.release(a);
        slots.release(b);
        let fixed = Slots::new(8, None, 10, metrics::Gauge::noop(), std::sync::Arc::default());
        assert_eq!(fixed.limit(), 8);
    }
}
