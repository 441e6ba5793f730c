//! The burst autoscaler, pure: observations and time in, the desired number of pollers out.
//!
//! A receive is a *quick full* one when it returned 10 messages within the quick threshold (four
//! round trips to SQS, as the last depth sample or the window's shortest receive measured them,
//! [`QUICK_FLOOR`]..[`QUICK_CAP`]): the messages were there when it asked. A full receive that took longer was a long poll that a batch landed in — a
//! producer sending `SendMessageBatch` of 10 fills every receive it wakes, with no backlog at all.
//!
//! - **Up fast, on evidence of a backlog.** A quick full receive asks for a depth sample, and a
//!   sampled backlog jumps straight to what it needs (`visible / 10` pollers, at least double):
//!   from `min` to `max` in one sample round trip. Without a sample, a run of receives
//!   ([`GROWTH_RUN`], or half the fleet) that were nine in ten quick and full doubles the target,
//!   at most once per [`SCALE_UP_INTERVAL`]. A sample that found no backlog holds further burst
//!   samples for [`QUIET_SAMPLE_HOLD`] (a steady batched producer would otherwise ask for one on
//!   every lucky receive).
//! - **Down like a fleet, sized by the rate.** Each [`SCALE_DOWN_WINDOW`] of receives (from at
//!   least one poller in [`EVIDENCE_SHARE`]) gives the rate the fleet takes messages at; a window
//!   in which fewer than half the receives were quick and full, at least [`SCALE_DOWN_COOLDOWN`]
//!   after the last change, sizes the fleet to [`RATE_HEADROOM`] times what that rate needs
//!   (`rate × quick threshold ÷ 10`, rounded up), retiring at most a quarter of the fleet per
//!   cool-down ([`MAX_STEP_DOWN`], compounded after a quiet long poll, [`MAX_STEPS_AT_ONCE`]).
//!   An idle fleet goes 2,000 → 20 in about 80 s once its long polls come back; under a steady
//!   rate it settles at the headroom and stays there: growth needs quick full receives, which a
//!   fleet with four times the pollers it needs rarely sees (no flapping).
//! - **No growth that cannot help.** While `max_concurrency` batches are in flight, or for
//!   [`THROTTLE_HOLD`] after the target throttled, the target does not grow (pollers pause for
//!   room anyway; more of them would only hold messages longer). Nor does it shrink while
//!   saturated: the receives it would count are the ones waiting for room.
//! - Always `min ≤ desired ≤ max`; with `min = 0` a visible backlog wakes the first poller.

use std::time::Duration;

use tokio::time::Instant;

/// Shortest time between two doubling steps on quick full receives.
pub const SCALE_UP_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest run of receives that can double the fleet without a depth sample (the run is
/// half the fleet when that is longer).
pub const GROWTH_RUN: u64 = 8;
/// How long a depth sample that found no backlog holds the next burst sample back.
pub const QUIET_SAMPLE_HOLD: Duration = Duration::from_secs(1);
/// A receive within this many round trips to SQS is quick: its messages were waiting.
pub const QUICK_FACTOR: u32 = 4;
/// The quick threshold is never below this (a loopback emulator answers in a millisecond; the
/// scheduler's jitter is larger) ...
pub const QUICK_FLOOR: Duration = Duration::from_millis(20);
/// ... nor above this.
pub const QUICK_CAP: Duration = Duration::from_secs(1);
/// The quick threshold before any round trip was measured.
pub const QUICK_DEFAULT: Duration = Duration::from_millis(100);
/// Shortest time between a change and a scale-down step.
pub const SCALE_DOWN_COOLDOWN: Duration = Duration::from_secs(5);
/// The receives of this long decide one scale-down step.
pub const SCALE_DOWN_WINDOW: Duration = Duration::from_secs(5);
/// The fleet a scale-down leaves is this many times what the window's rate needs: each poller
/// sees a batch of 10 once per four quick thresholds, so that even batched arrivals rarely look
/// like a backlog.
pub const RATE_HEADROOM: f64 = 4.0;
/// The largest share of the fleet retired per cool-down.
pub const MAX_STEP_DOWN: f64 = 0.25;
/// A step waits until at least one poller in this many came back in its window.
pub const EVIDENCE_SHARE: u64 = 8;
/// A step after a long quiet retires up to this many cool-downs' share at once (a fleet whose
/// 20 s long polls come back together sees one window in four).
pub const MAX_STEPS_AT_ONCE: u32 = 4;
/// How long a throttle from the target holds growth back.
pub const THROTTLE_HOLD: Duration = Duration::from_secs(2);
/// Messages per receive that mean "there is more".
pub const FULL_RECEIVE: usize = 10;

#[derive(Debug, Clone)]
pub struct Autoscaler {
    min: usize,
    max: usize,
    desired: usize,
    /// The receives since `window_start`.
    window: Window,
    window_start: Instant,
    /// The receives of the current growth run.
    run: Run,
    /// How long the last two depth samples (a GetQueueAttributes each) took, the shorter: the
    /// round trip to SQS. The receives cannot tell it when every one of them waited for its batch.
    round_trip: Option<Duration>,
    last_sample: Option<Duration>,
    last_change: Instant,
    /// `max_concurrency` batches are in flight.
    saturated: bool,
    /// Growth is held until then after a throttle.
    hold_until: Option<Instant>,
    /// Burst samples are held until then after a sample found no backlog.
    quiet_until: Option<Instant>,
}

/// What the receives of one scale-down window showed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Window {
    receives: u64,
    messages: u64,
    quick_full: u64,
    /// The shortest receive that returned messages.
    shortest: Option<Duration>,
}

/// A run of receives towards a doubling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Run {
    receives: u64,
    quick_full: u64,
}

/// Why the desired number changed, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleReason {
    FullReceive,
    Backlog,
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleChange {
    pub from: usize,
    pub to: usize,
    pub reason: ScaleReason,
}

/// What the autoscaler wants done after a receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    pub change: Option<ScaleChange>,
    /// Sample the queue depth now: a burst may be under way and its size decides the jump.
    pub sample_depth: bool,
}

impl Autoscaler {
    pub fn new(min: usize, max: usize, now: Instant) -> Self {
        Autoscaler {
            min,
            max,
            desired: min,
            window: Window::default(),
            window_start: now,
            run: Run::default(),
            round_trip: None,
            last_sample: None,
            last_change: now,
            saturated: false,
            hold_until: None,
            quiet_until: None,
        }
    }

    pub fn desired(&self) -> usize {
        self.desired
    }

    /// A receive that took `took` (from sending the request to its answer) returned `messages`
    /// messages.
    pub fn observe_receive(&mut self, messages: usize, took: Duration, now: Instant) -> Decision {
        let quick_full = messages >= FULL_RECEIVE && took <= self.quick_threshold();
        self.window.receives += 1;
        self.window.messages += messages as u64;
        self.window.quick_full += u64::from(quick_full);
        if messages > 0 {
            self.window.shortest = Some(self.window.shortest.map_or(took, |s| s.min(took)));
        }
        self.run.receives += 1;
        self.run.quick_full += u64::from(quick_full);
        let mut change = None;
        if self.run.receives >= GROWTH_RUN.max(self.desired as u64 / 2) {
            let run = std::mem::take(&mut self.run);
            let rate_limited = self.desired > 0 && now.duration_since(self.last_change) < SCALE_UP_INTERVAL;
            if run.quick_full * 10 >= run.receives * 9 && !rate_limited {
                change = self.grow(self.desired.saturating_mul(2), ScaleReason::FullReceive, now);
            }
        }
        if quick_full {
            let sample_depth =
                self.can_grow(now) && self.desired < self.max && self.quiet_until.is_none_or(|t| now >= t);
            return Decision { change, sample_depth };
        }
        Decision { change: change.or_else(|| self.step_down(now)), sample_depth: false }
    }

    /// A depth sample took `took`: the round trip to SQS.
    pub fn observe_round_trip(&mut self, took: Duration) {
        // the shorter of the last two: one slow answer (a new connection) does not make every
        // receive look quick until the next sample
        self.round_trip = Some(self.last_sample.map_or(took, |last| last.min(took)));
        self.last_sample = Some(took);
    }

    /// Four round trips (the last sample's, or the window's shortest receive that returned
    /// messages when that was shorter), within [`QUICK_FLOOR`]..[`QUICK_CAP`].
    pub fn quick_threshold(&self) -> Duration {
        // before any sample, a receive can only lower the default: the first ones may all have
        // waited (for their batch, or the whole long poll)
        let round_trip = self.round_trip.unwrap_or(QUICK_DEFAULT / QUICK_FACTOR);
        let shortest = self.window.shortest.map_or(round_trip, |s| s.min(round_trip));
        (shortest * QUICK_FACTOR).clamp(QUICK_FLOOR, QUICK_CAP)
    }

    /// At the end of a window: shrink to what the window's rate needs, if that is fewer.
    fn step_down(&mut self, now: Instant) -> Option<ScaleChange> {
        // each step waits for evidence from a share of the fleet: pollers whose long polls began
        // together come back together, and one receive is not the fleet's answer
        let span = now.duration_since(self.window_start);
        if span < SCALE_DOWN_WINDOW || self.window.receives.saturating_mul(EVIDENCE_SHARE) < self.desired as u64 {
            return None;
        }
        let quick = self.quick_threshold();
        let window = std::mem::take(&mut self.window);
        self.window_start = now;
        if window.quick_full * 2 >= window.receives
            || self.saturated
            || self.desired <= self.min
            || now.duration_since(self.last_change) < SCALE_DOWN_COOLDOWN
        {
            return None;
        }
        let steps = (now.duration_since(self.last_change).as_secs_f64() / SCALE_DOWN_COOLDOWN.as_secs_f64()) as u32;
        let rate = window.messages as f64 / span.as_secs_f64();
        let to = shrink_to(self.desired, steps.clamp(1, MAX_STEPS_AT_ONCE), rate, quick);
        if to < self.desired {
            self.set(to, ScaleReason::Idle, now)
        } else {
            None
        }
    }

    /// The depth sample a quick full receive asked for: the queue holds about `visible`
    /// messages ready to receive. One that finds no backlog was a false alarm (a batch that
    /// happened to be waiting): the next burst sample waits [`QUIET_SAMPLE_HOLD`].
    pub fn observe_burst_sample(&mut self, visible: u64, now: Instant) -> Option<ScaleChange> {
        self.quiet_until = (!self.has_backlog(visible)).then(|| now + QUIET_SAMPLE_HOLD);
        self.observe_backlog(visible, now)
    }

    fn has_backlog(&self, visible: u64) -> bool {
        visible > 0 && (self.desired == 0 || visible > self.desired as u64 * FULL_RECEIVE as u64)
    }

    /// The queue holds about `visible` messages ready to receive.
    pub fn observe_backlog(&mut self, visible: u64, now: Instant) -> Option<ScaleChange> {
        if !self.has_backlog(visible) {
            return None;
        }
        let needed = usize::try_from(visible.div_ceil(FULL_RECEIVE as u64)).unwrap_or(usize::MAX);
        self.grow(needed.max(self.desired.saturating_mul(2)), ScaleReason::Backlog, now)
    }

    /// `in_flight` of `max_concurrency` batches are being dispatched.
    pub fn observe_saturation(&mut self, in_flight: usize, max_concurrency: usize) {
        self.saturated = in_flight >= max_concurrency;
    }

    /// The target asked to slow down.
    pub fn observe_throttle(&mut self, now: Instant) {
        self.hold_until = Some(now + THROTTLE_HOLD);
    }

    fn can_grow(&self, now: Instant) -> bool {
        // a fleet at zero always gets its first poller: nothing else would notice the backlog
        self.desired == 0 || (!self.saturated && self.hold_until.is_none_or(|t| now >= t))
    }

    fn grow(&mut self, to: usize, reason: ScaleReason, now: Instant) -> Option<ScaleChange> {
        if !self.can_grow(now) {
            return None;
        }
        self.set(to.max(self.desired + 1), reason, now)
    }

    fn set(&mut self, to: usize, reason: ScaleReason, now: Instant) -> Option<ScaleChange> {
        let to = to.clamp(self.min, self.max);
        if to == self.desired {
            return None;
        }
        let change = ScaleChange { from: self.desired, to, reason };
        self.desired = to;
        self.last_change = now;
        // the next window and run count the receives of the new fleet only
        self.window = Window::default();
        self.window_start = now;
        self.run = Run::default();
        Some(change)
    }
}

/// The fleet that takes `rate` messages a second with [`RATE_HEADROOM`]: a poller whose
/// receives return within `quick` takes at most 10 per `quick`. At least what `steps`
/// cool-downs of [`MAX_STEP_DOWN`] leave (and at least one poller fewer), never more than now.
fn shrink_to(desired: usize, steps: u32, rate: f64, quick: Duration) -> usize {
    let needed = (rate * quick.as_secs_f64() * RATE_HEADROOM / FULL_RECEIVE as f64).ceil() as usize;
    let kept = (desired as f64 * (1.0 - MAX_STEP_DOWN).powi(steps as i32)).round() as usize;
    needed.max(kept.min(desired.saturating_sub(1))).min(desired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn to(d: Decision) -> Option<usize> {
        d.change.map(|c| c.to)
    }

    /// A receive whose messages were waiting: it took one round trip.
    const QUICK: Duration = Duration::from_millis(5);
    /// A long poll that a batch landed in after a while.
    const WAITED: Duration = Duration::from_secs(3);
    /// A long poll that came back empty.
    const LONG_POLL: Duration = Duration::from_secs(20);

    /// The whole fleet's receives over `span`, one round trip of 20 ms apart: `messages` each.
    fn fleet_round(a: &mut Autoscaler, messages: usize, took: Duration, t: Instant) -> Vec<Decision> {
        (0..a.desired().max(1)).map(|_| a.observe_receive(messages, took, t)).collect()
    }

    #[test]
    fn starts_at_min() {
        assert_eq!(Autoscaler::new(2, 10, Instant::now()).desired(), 2);
    }

    #[test]
    fn quick_full_receives_alone_double_up_to_max_within_a_second() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 32, t0);
        let mut t = t0;
        let mut steps = vec![];
        while a.desired() < 32 {
            t += ms(20);
            steps.extend(fleet_round(&mut a, 10, QUICK, t).into_iter().filter_map(to));
            assert!(t - t0 <= Duration::from_secs(1), "took too long: {steps:?}");
        }
        assert_eq!(steps, vec![2, 4, 8, 16, 32]);
        assert_eq!(fleet_round(&mut a, 10, QUICK, t + ms(500)).into_iter().find_map(to), None, "never above max");
    }

    #[test]
    fn full_receives_that_waited_for_their_batch_are_no_backlog() {
        // a producer sending batches of 10 into long polls: every receive full, none quick
        let t0 = Instant::now();
        let mut a = Autoscaler::new(20, 2000, t0);
        for i in 1..=600 {
            let d = a.observe_receive(10, WAITED, t0 + ms(10 * i));
            assert!(!d.sample_depth, "a receive that waited is no burst");
            assert!(d.change.is_none_or(|c| c.to < c.from), "{:?}", d.change);
        }
        assert_eq!(a.desired(), 20);
    }

    #[test]
    fn a_run_with_a_few_slow_receives_still_doubles_but_not_one_with_many() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(20, 100, t0);
        // the run is half the fleet: 10 receives, 9 of them quick and full
        let mut grew = None;
        for i in 0..10 {
            let took = if i == 3 { WAITED } else { QUICK };
            grew = grew.or(to(a.observe_receive(10, took, t0 + ms(200))));
        }
        assert_eq!(grew, Some(40));
        // runs of 20, 16 of them quick and full: no doubling
        let mut grew = None;
        for i in 0..100 {
            let took = if i % 5 == 0 { WAITED } else { QUICK };
            grew = grew.or(to(a.observe_receive(10, took, t0 + ms(400))));
        }
        assert_eq!(grew, None);
    }

    #[test]
    fn the_quick_threshold_follows_the_round_trip() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 100, t0);
        assert_eq!(a.quick_threshold(), QUICK_DEFAULT, "before any round trip was measured");
        a.observe_round_trip(ms(30));
        assert_eq!(a.quick_threshold(), ms(120), "four round trips of the depth sample");
        a.observe_receive(1, ms(1), t0);
        assert_eq!(a.quick_threshold(), QUICK_FLOOR, "or of a receive, when that was shorter");
        a.observe_receive(0, LONG_POLL, t0 + SCALE_DOWN_WINDOW);
        assert_eq!(a.quick_threshold(), ms(120), "the receive's was its window's");
        // every receive waited half a second for its batch: that says nothing of the round trip
        for i in 0..100 {
            a.observe_receive(10, ms(500), t0 + SCALE_DOWN_WINDOW + ms(i));
        }
        assert_eq!(a.quick_threshold(), ms(120));
        let mut b = Autoscaler::new(1, 100, t0);
        b.observe_round_trip(ms(900));
        assert_eq!(b.quick_threshold(), QUICK_CAP);
        b.observe_round_trip(ms(10));
        b.observe_round_trip(ms(300));
        assert_eq!(b.quick_threshold(), ms(40), "the shorter of the last two samples");
        b.observe_round_trip(ms(300));
        assert_eq!(b.quick_threshold(), ms(1000));
        // a cross-region round trip of 200 ms: its receives of waiting messages are quick
        let mut c = Autoscaler::new(1, 100, t0);
        c.observe_round_trip(ms(200));
        assert!(c.observe_receive(10, ms(250), t0 + ms(100)).sample_depth);
    }

    #[test]
    fn a_quick_full_receive_asks_for_a_depth_sample_until_max() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 4, t0);
        assert!(a.observe_receive(10, QUICK, t0 + ms(100)).sample_depth);
        assert!(!a.observe_receive(9, QUICK, t0 + ms(200)).sample_depth);
        assert!(!a.observe_receive(10, WAITED, t0 + ms(200)).sample_depth);
        a.observe_backlog(1000, t0 + ms(200));
        assert_eq!(a.desired(), 4);
        assert!(!a.observe_receive(10, QUICK, t0 + ms(300)).sample_depth, "at max there is nothing to learn");
    }

    #[test]
    fn a_burst_sample_without_a_backlog_holds_the_next_one_for_a_while() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(20, 2000, t0);
        assert!(a.observe_receive(10, QUICK, t0).sample_depth);
        assert_eq!(a.observe_burst_sample(30, t0 + ms(10)), None, "20 pollers take 200 in a round");
        assert!(!a.observe_receive(10, QUICK, t0 + ms(500)).sample_depth);
        assert!(a.observe_receive(10, QUICK, t0 + ms(10) + QUIET_SAMPLE_HOLD).sample_depth);
        assert!(a.observe_burst_sample(5000, t0 + ms(1100)).is_some());
        assert!(a.observe_receive(10, QUICK, t0 + ms(1200)).sample_depth, "a burst under way is sampled on");
        // a periodic sample of an empty queue is no false alarm
        let mut b = Autoscaler::new(20, 2000, t0);
        assert_eq!(b.observe_backlog(0, t0), None);
        assert!(b.observe_receive(10, QUICK, t0 + ms(10)).sample_depth);
    }

    #[test]
    fn a_sampled_burst_jumps_straight_to_what_it_needs() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 200, t0);
        let c = a.observe_backlog(5000, t0 + ms(1)).unwrap();
        assert_eq!((c.from, c.to, c.reason), (1, 200, ScaleReason::Backlog));
        let mut a = Autoscaler::new(1, 200, t0);
        assert_eq!(a.observe_backlog(450, t0).unwrap().to, 45);
    }

    #[test]
    fn backlog_jumps_are_at_least_a_doubling() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(10, 100, t0);
        assert_eq!(a.observe_backlog(100, t0), None, "ten pollers take 100 in one round");
        assert_eq!(a.observe_backlog(110, t0).unwrap().to, 20);
    }

    #[test]
    fn scale_up_on_quick_full_receives_is_rate_limited() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 100, t0);
        assert_eq!(fleet_round_n(&mut a, GROWTH_RUN, t0 + ms(100)), Some(2));
        assert_eq!(fleet_round_n(&mut a, GROWTH_RUN, t0 + ms(150)), None);
        assert_eq!(fleet_round_n(&mut a, GROWTH_RUN, t0 + ms(200)), Some(4));
    }

    /// `n` quick full receives at `t`: the change they made.
    fn fleet_round_n(a: &mut Autoscaler, n: u64, t: Instant) -> Option<usize> {
        (0..n).filter_map(|_| to(a.observe_receive(10, QUICK, t))).last()
    }

    #[test]
    fn a_saturated_target_holds_growth() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 100, t0);
        a.observe_saturation(10, 10);
        assert_eq!(fleet_round_n(&mut a, GROWTH_RUN, t0 + ms(100)), None);
        assert_eq!(a.observe_backlog(10_000, t0 + ms(100)), None);
        assert!(!a.observe_receive(10, QUICK, t0 + ms(300)).sample_depth);
        a.observe_saturation(9, 10);
        assert_eq!(fleet_round_n(&mut a, GROWTH_RUN, t0 + ms(400)), Some(2));
    }

    #[test]
    fn a_throttle_holds_growth_for_a_while() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 100, t0);
        a.observe_throttle(t0);
        assert_eq!(a.observe_backlog(10_000, t0 + ms(500)), None);
        assert_eq!(a.observe_backlog(10_000, t0 + THROTTLE_HOLD).unwrap().to, 100);
    }

    #[test]
    fn receives_that_keep_up_with_the_rate_hold_steady() {
        // 10 pollers, each returning 5 messages in a round trip of 20 ms: 2,500 a second, which
        // needs 2,500 × 20 ms (the quick threshold) × 4 ÷ 10 = 20 pollers: no shrinking
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 100, t0);
        a.observe_backlog(100, t0);
        assert_eq!(a.desired(), 10);
        let mut t = t0;
        for _ in 0..5000 {
            t += ms(20);
            assert!(fleet_round(&mut a, 5, ms(5), t).into_iter().all(|d| d.change.is_none()));
        }
        assert_eq!(a.desired(), 10);
    }

    #[test]
    fn an_idle_window_retires_a_quarter_of_the_fleet_per_cooldown() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 8, t0);
        a.observe_backlog(80, t0);
        assert_eq!(a.desired(), 8);
        for _ in 0..20 {
            assert_eq!(to(a.observe_receive(0, LONG_POLL, t0 + ms(4000))), None, "not before the window ends");
        }
        let t2 = t0 + SCALE_DOWN_WINDOW;
        let c = a.observe_receive(0, LONG_POLL, t2).change.unwrap();
        assert_eq!((c.from, c.to, c.reason), (8, 6, ScaleReason::Idle));
        for _ in 0..20 {
            assert_eq!(to(a.observe_receive(0, LONG_POLL, t2 + ms(10))), None, "and another window for the next step");
        }
        assert_eq!(to(a.observe_receive(0, LONG_POLL, t2 + SCALE_DOWN_WINDOW)), Some(5));
    }

    #[test]
    fn a_window_of_quick_full_receives_does_not_shrink() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 4, t0);
        a.observe_backlog(40, t0);
        assert_eq!(a.desired(), 4);
        let t1 = t0 + SCALE_DOWN_WINDOW;
        // half the window's receives quick and full (the fleet at max: nothing grows)
        for _ in 0..5 {
            a.observe_receive(10, QUICK, t1 - ms(100));
        }
        for _ in 0..4 {
            a.observe_receive(0, LONG_POLL, t1 - ms(100));
        }
        assert_eq!(to(a.observe_receive(0, LONG_POLL, t1)), None);
        // the next window is idle; two cool-downs since the last change: 4 × 0.75², rounded
        assert_eq!(to(a.observe_receive(0, LONG_POLL, t1 + SCALE_DOWN_WINDOW)), Some(2));
    }

    #[test]
    fn a_window_of_batches_landing_in_waiting_long_polls_shrinks_to_what_its_rate_needs() {
        // 2,000 pollers, 833 messages a second in batches of 10, each landing whole in a waiting
        // long poll (full receives that waited 60 ms), round trips of 5 ms (the depth sample's):
        // 833 × 20 ms (the quick floor) × 4 ÷ 10 = 7
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 2000, t0);
        a.observe_backlog(20_000, t0);
        a.observe_round_trip(ms(5));
        let mut t = t0;
        let mut sizes = vec![];
        while t - t0 < Duration::from_secs(300) {
            t += ms(12); // 83 batches a second
            a.observe_receive(10, ms(60), t);
            for _ in 0..(a.desired() / 20) {
                a.observe_receive(0, LONG_POLL, t); // the rest of the fleet's long polls
            }
            if sizes.last() != Some(&a.desired()) {
                sizes.push(a.desired());
            }
        }
        println!("833/s batched from 2000: {sizes:?}");
        assert_eq!(a.desired(), 7, "{sizes:?}");
    }

    #[test]
    fn no_shrinking_while_saturated() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 4, t0);
        a.observe_backlog(1000, t0);
        a.observe_saturation(4, 4);
        assert_eq!(to(a.observe_receive(0, LONG_POLL, t0 + SCALE_DOWN_WINDOW * 3)), None);
    }

    #[test]
    fn the_step_is_sized_by_the_rate_of_the_window() {
        // (desired, cool-downs, messages a second, quick threshold) -> new size
        let q = ms(20);
        assert_eq!(shrink_to(100, 1, 0.0, q), 75, "idle: a quarter at most");
        assert_eq!(shrink_to(100, 1, 500.0, q), 75, "500/s needs 4: a quarter at most");
        assert_eq!(shrink_to(100, 2, 500.0, q), 56, "two cool-downs since the last change: 0.75²");
        assert_eq!(shrink_to(100, 4, 500.0, q), 32, "four");
        assert_eq!(shrink_to(100, 1, 11_250.0, q), 90, "11,250/s needs 90");
        assert_eq!(shrink_to(100, 1, 12_500.0, q), 100, "12,500/s needs all");
        assert_eq!(shrink_to(100, 1, 50_000.0, q), 100, "more: never grows here");
        assert_eq!(shrink_to(100, 1, 11_250.0, ms(40)), 100, "a slower round trip needs more pollers");
        assert_eq!(shrink_to(3, 1, 0.0, q), 2, "at least one");
        assert_eq!(shrink_to(1, 1, 0.0, q), 0, "down to 0 (the caller clamps to min)");
        assert_eq!(shrink_to(0, 1, 0.0, q), 0);
    }

    #[test]
    fn never_below_min_nor_above_max() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(3, 8, t0);
        for i in 0..1000 {
            a.observe_receive(0, LONG_POLL, t0 + Duration::from_secs(i * 11));
        }
        assert_eq!(a.desired(), 3);
        a.observe_backlog(u64::MAX, t0 + Duration::from_secs(20_000));
        assert_eq!(a.desired(), 8);
    }

    #[test]
    fn a_backlog_wakes_a_fleet_at_zero_even_when_saturated() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(0, 4, t0);
        assert_eq!(a.desired(), 0);
        assert_eq!(a.observe_backlog(0, t0), None);
        a.observe_saturation(5, 5);
        let c = a.observe_backlog(3, t0).unwrap();
        assert_eq!((c.from, c.to, c.reason), (0, 1, ScaleReason::Backlog));
    }

    /// Exhaustive over small fleets: whatever happens, the bounds hold and every change is
    /// in the direction its reason says.
    #[test]
    fn bounds_and_directions_hold_for_every_sequence() {
        let t0 = Instant::now();
        for min in 0..3 {
            for max in (min.max(1))..6 {
                // every sequence of 6 observations from 6 kinds
                for code in 0..6u32.pow(6) {
                    let mut a = Autoscaler::new(min, max, t0);
                    let mut t = t0;
                    let mut c = code;
                    for _ in 0..6 {
                        t += ms(2600);
                        let before = a.desired();
                        let change = match c % 6 {
                            0 => (0..GROWTH_RUN).filter_map(|_| a.observe_receive(10, QUICK, t).change).last(),
                            1 => a.observe_receive(0, LONG_POLL, t).change,
                            2 => a.observe_backlog(1000, t),
                            3 => {
                                a.observe_throttle(t);
                                None
                            }
                            4 => a.observe_receive(10, WAITED, t).change,
                            _ => {
                                a.observe_saturation((c % 3) as usize, 2);
                                None
                            }
                        };
                        c /= 6;
                        assert!(a.desired() >= min && a.desired() <= max);
                        if let Some(ch) = change {
                            assert_eq!(ch.from, before);
                            assert_eq!(ch.to, a.desired());
                            match ch.reason {
                                ScaleReason::Idle => assert!(ch.to < ch.from),
                                _ => assert!(ch.to > ch.from),
                            }
                        }
                    }
                }
            }
        }
    }

    /// A fleet long polling a queue, stepped every receive round trip: messages arrive at
    /// `rate(t)` per second, `batch` at a time (1: one by one; 10: `SendMessageBatch` of 10);
    /// arrivals wake waiting pollers (as SQS answers a long poll as soon as a message is there),
    /// a batch one poller, which returns one round trip later with its share (at most 10); a
    /// poller that gets nothing returns empty after the long poll. A receive took from its
    /// start to its return. Retired pollers are the newest; one in a receive finishes it first.
    /// A depth sample is answered at once.
    struct FleetModel {
        scaler: Autoscaler,
        t0: Instant,
        batch: usize,
        /// Arrivals not yet a whole batch.
        arriving: f64,
        queue: f64,
        /// Start times of the waiting long polls.
        waiting: std::collections::VecDeque<f64>,
        /// (start, messages) of the receives returning at the next step.
        in_flight: Vec<(f64, usize)>,
        retiring: usize,
        changes: Vec<(f64, ScaleChange)>,
        /// The largest backlog seen, with its time.
        backlog: Vec<(f64, f64)>,
        samples: usize,
        peak: usize,
    }

    const RTT: f64 = 0.02;
    const WAIT: f64 = 20.0;
    /// The depth sampler's interval (`depth_interval_secs`).
    const DEPTH_INTERVAL: f64 = 10.0;

    impl FleetModel {
        fn new(min: usize, max: usize, start_at: usize) -> Self {
            Self::batched(min, max, start_at, 1)
        }

        fn batched(min: usize, max: usize, start_at: usize, batch: usize) -> Self {
            let t0 = Instant::now();
            let mut scaler = Autoscaler::new(min, max, t0);
            if start_at > min {
                scaler.observe_backlog(start_at as u64 * 10, t0);
            }
            // a fleet that has been polling a while: its long polls began at different times
            let n = scaler.desired();
            let waiting = (0..n).map(|i| -WAIT * (n - i) as f64 / n as f64).collect();
            FleetModel {
                peak: scaler.desired(),
                scaler,
                t0,
                batch,
                arriving: 0.0,
                queue: 0.0,
                waiting,
                in_flight: vec![],
                retiring: 0,
                changes: vec![],
                backlog: vec![],
                samples: 0,
            }
        }

        fn alive(&self) -> usize {
            self.waiting.len() + self.in_flight.len() - self.retiring
        }

        fn at(&self, t: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(t)
        }

        fn returned(&mut self, messages: usize, started: f64, t: f64) {
            let took = Duration::from_secs_f64(t - started);
            let d = self.scaler.observe_receive(messages, took, self.at(t));
            if let Some(c) = d.change {
                self.changes.push((t, c));
            }
            if d.sample_depth {
                self.samples += 1;
                if let Some(c) = self.scaler.observe_burst_sample(self.queue as u64, self.at(t)) {
                    self.changes.push((t, c));
                }
            }
            if self.retiring > 0 {
                self.retiring -= 1;
            } else {
                self.waiting.push_back(t);
            }
        }

        fn sample(&mut self, t: f64) {
            self.scaler.observe_round_trip(Duration::from_secs_f64(RTT));
            if let Some(c) = self.scaler.observe_backlog(self.queue as u64, self.at(t)) {
                self.changes.push((t, c));
            }
        }

        fn run(&mut self, from: f64, to: f64, rate: impl Fn(f64) -> f64) {
            let mut t = from;
            if t == 0.0 {
                self.sample(t); // the depth sampler's first tick is at start
            }
            while t < to {
                t += RTT;
                if (t / DEPTH_INTERVAL).floor() > ((t - RTT) / DEPTH_INTERVAL).floor() {
                    self.sample(t);
                }
                self.arriving += rate(t) * RTT;
                let batches = (self.arriving / self.batch as f64).floor();
                self.arriving -= batches * self.batch as f64;
                self.queue += batches * self.batch as f64;
                for (started, messages) in std::mem::take(&mut self.in_flight) {
                    self.returned(messages, started, t);
                }
                while self.waiting.front().is_some_and(|&s| s + WAIT <= t) {
                    let started = self.waiting.pop_front().unwrap_or(t);
                    self.returned(0, started, t);
                }
                let ready = self.queue.floor() as usize;
                let woken = ready.div_ceil(self.batch).min(self.waiting.len());
                for i in 0..woken {
                    let started = self.waiting.pop_front().unwrap_or(t);
                    let share = (ready / woken + usize::from(i < ready % woken)).min(10);
                    self.queue -= share as f64;
                    self.in_flight.push((started, share));
                }
                let desired = self.scaler.desired();
                self.peak = self.peak.max(desired);
                while self.alive() < desired {
                    if self.retiring > 0 {
                        self.retiring -= 1;
                    } else {
                        self.waiting.push_back(t);
                    }
                }
                while self.alive() > desired {
                    if self.waiting.pop_back().is_none() {
                        self.retiring += 1;
                    }
                }
                if self.backlog.last().is_none_or(|&(_, b)| self.queue > b) {
                    self.backlog.push((t, self.queue));
                }
            }
        }

        /// When the fleet first reached `n` pollers.
        fn reached(&self, n: usize) -> Option<f64> {
            self.changes.iter().find(|(_, c)| c.to == n).map(|&(t, _)| t)
        }
    }

    #[test]
    fn an_idle_fleet_is_back_at_min_within_two_minutes() {
        for (min, max) in [(20, 2000), (200, 10_000), (1, 1000), (0, 64)] {
            let mut m = FleetModel::new(min, max, max);
            assert_eq!(m.scaler.desired(), max);
            m.run(0.0, 300.0, |_| 0.0);
            let at = m.reached(min).unwrap_or_else(|| panic!("{max} -> {min} never reached: {:?}", m.changes));
            let steps: Vec<usize> = m.changes.iter().map(|(_, c)| c.to).collect();
            let times: Vec<String> = m.changes.iter().map(|(t, _)| format!("{t:.1}")).collect();
            println!("{max} -> {min} idle: {at:.0} s, through {steps:?} at {times:?}");
            // the first step waits for the long polls (20 s) to come back; the last few pollers'
            // long polls come back together, one window in four (1,000 -> 1 is three orders of
            // magnitude: one such window more)
            let bound = if max / min.max(1) > 100 { 141.0 } else { 121.0 };
            assert!(at <= bound, "{max} -> {min} took {at:.0} s");
            assert!(m.changes.iter().all(|(_, c)| c.reason == ScaleReason::Idle));
        }
    }

    #[test]
    fn a_steady_rate_settles_without_flapping_and_keeps_up() {
        // messages a second: a trickle, the seed's 50,000 a minute, and one poller's worth several
        // times over; sent one by one and in batches of 10
        for batch in [1, 10] {
            for rate in [1.0, 50.0, 833.0, 3000.0] {
                let mut m = FleetModel::batched(1, 2000, 2000, batch);
                m.run(0.0, 600.0, |_| rate);
                let late: Vec<_> = m.changes.iter().filter(|(t, _)| *t > 300.0).collect();
                let settled = m.scaler.desired();
                println!(
                    "{rate}/s in batches of {batch} from 2000: settled at {settled}, last change at {:.0} s, {} depth samples",
                    m.changes.last().map_or(0.0, |c| c.0),
                    m.samples
                );
                assert!(late.len() <= 2, "{rate}/s by {batch}: still changing after 5 minutes: {late:?}");
                let worst = m.backlog.iter().filter(|(t, _)| *t > 60.0).map(|&(_, b)| b).fold(0.0, f64::max);
                assert!(
                    worst <= (rate * 0.2).max(10.0),
                    "{rate}/s by {batch}: fell behind, backlog {worst} at {settled} pollers"
                );
                assert!(settled < 200, "{rate}/s by {batch}: {settled} pollers kept");
            }
        }
    }

    /// The seed's workload as a producer sends it: 50,000 a minute in batches of 10 into a
    /// fleet at `min` 20. Every batch lands whole in a waiting long poll — a full receive each
    /// time — and the fleet stays at 20: nothing there is a backlog.
    #[test]
    fn the_seed_rate_in_batches_of_ten_keeps_the_fleet_at_min() {
        let mut m = FleetModel::batched(20, 2000, 20, 10);
        m.run(0.0, 600.0, |_| 833.3);
        let steps: Vec<usize> = m.changes.iter().map(|(_, c)| c.to).collect();
        println!(
            "833/s in batches of 10 from 20: peak {}, changes {:?}, {} depth samples",
            m.peak, m.changes, m.samples
        );
        assert_eq!(m.peak, 20, "{steps:?}");
        let worst = m.backlog.iter().map(|&(_, b)| b).fold(0.0, f64::max);
        assert!(worst <= 20.0, "backlog {worst}");
        assert!(m.samples <= 600, "{} burst samples in 10 minutes", m.samples);
    }

    #[test]
    fn a_burst_after_the_descent_still_takes_the_fleet_to_max_in_a_second() {
        let mut m = FleetModel::new(1, 500, 500);
        m.run(0.0, 200.0, |_| 0.0);
        assert_eq!(m.scaler.desired(), 1);
        m.queue = 20_000.0;
        m.run(200.0, 210.0, |_| 0.0);
        let at = m.reached(500).expect("back to max");
        assert!(at - 200.0 <= 1.0, "took {:.2} s", at - 200.0);
    }
}
