//! The burst autoscaler, pure: observations and time in, the desired number of pollers out.
//!
//! - **Up fast.** A full receive (10 messages) doubles the target (at least +1), at most once
//!   per [`SCALE_UP_INTERVAL`], and asks for a depth sample; a sampled backlog jumps straight to
//!   what it needs (`visible / 10` pollers, at least double). From `min` to `max` takes one
//!   sample round trip when the depth is known, a handful of 100 ms steps otherwise.
//! - **Down slow.** Once every poller has come back empty since the last change and
//!   [`SCALE_DOWN_COOLDOWN`] has passed, one poller is retired.
//! - **No growth that cannot help.** While `max_concurrency` batches are in flight, or for
//!   [`THROTTLE_HOLD`] after the target throttled, the target does not grow (pollers pause for
//!   room anyway; more of them would only hold messages longer).
//! - Always `min ≤ desired ≤ max`; with `min = 0` a visible backlog wakes the first poller.

use std::time::Duration;

use tokio::time::Instant;

/// Shortest time between two doubling steps on full receives.
pub const SCALE_UP_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest time between a change and a scale-down step.
pub const SCALE_DOWN_COOLDOWN: Duration = Duration::from_secs(5);
/// How long a throttle from the target holds growth back.
pub const THROTTLE_HOLD: Duration = Duration::from_secs(2);
/// Messages per receive that mean "there is more".
pub const FULL_RECEIVE: usize = 10;

#[derive(Debug, Clone)]
pub struct Autoscaler {
    min: usize,
    max: usize,
    desired: usize,
    /// Empty receives since the last change or non-empty receive.
    empty_streak: usize,
    last_change: Instant,
    /// `max_concurrency` batches are in flight.
    saturated: bool,
    /// Growth is held until then after a throttle.
    hold_until: Option<Instant>,
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
    /// Sample the queue depth now: a burst is under way and its size decides the jump.
    pub sample_depth: bool,
}

impl Autoscaler {
    pub fn new(min: usize, max: usize, now: Instant) -> Self {
        Autoscaler { min, max, desired: min, empty_streak: 0, last_change: now, saturated: false, hold_until: None }
    }

    pub fn desired(&self) -> usize {
        self.desired
    }

    /// A receive returned `messages` messages.
    pub fn observe_receive(&mut self, messages: usize, now: Instant) -> Decision {
        if messages >= FULL_RECEIVE {
            self.empty_streak = 0;
            let growable = self.can_grow(now);
            let change = if self.desired > 0 && now.duration_since(self.last_change) < SCALE_UP_INTERVAL {
                None
            } else {
                self.grow(self.desired.saturating_mul(2), ScaleReason::FullReceive, now)
            };
            return Decision { change, sample_depth: growable && self.desired < self.max };
        }
        if messages > 0 {
            self.empty_streak = 0;
            return Decision::default();
        }
        self.empty_streak += 1;
        let change = if self.desired > self.min
            && self.empty_streak >= self.desired
            && now.duration_since(self.last_change) >= SCALE_DOWN_COOLDOWN
        {
            self.set(self.desired - 1, ScaleReason::Idle, now)
        } else {
            None
        };
        Decision { change, sample_depth: false }
    }

    /// The queue holds about `visible` messages ready to receive.
    pub fn observe_backlog(&mut self, visible: u64, now: Instant) -> Option<ScaleChange> {
        let capacity = self.desired as u64 * FULL_RECEIVE as u64;
        if visible == 0 || (self.desired > 0 && visible <= capacity) {
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
        self.empty_streak = 0;
        self.last_change = now;
        Some(change)
    }
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

    #[test]
    fn starts_at_min() {
        assert_eq!(Autoscaler::new(2, 10, Instant::now()).desired(), 2);
    }

    #[test]
    fn full_receives_alone_double_up_to_max_within_a_second() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 32, t0);
        let mut t = t0;
        let mut steps = vec![];
        while a.desired() < 32 {
            t += ms(100);
            steps.extend(to(a.observe_receive(10, t)));
            assert!(t - t0 <= Duration::from_secs(1), "took too long: {steps:?}");
        }
        assert_eq!(steps, vec![2, 4, 8, 16, 32]);
        assert_eq!(to(a.observe_receive(10, t + ms(500))), None, "never above max");
    }

    #[test]
    fn a_full_receive_asks_for_a_depth_sample_until_max() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 4, t0);
        assert!(a.observe_receive(10, t0 + ms(100)).sample_depth);
        assert!(!a.observe_receive(9, t0 + ms(200)).sample_depth);
        a.observe_backlog(1000, t0 + ms(200));
        assert_eq!(a.desired(), 4);
        assert!(!a.observe_receive(10, t0 + ms(300)).sample_depth, "at max there is nothing to learn");
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
    fn scale_up_on_full_receives_is_rate_limited() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 100, t0);
        assert_eq!(to(a.observe_receive(10, t0 + ms(100))), Some(2));
        assert_eq!(to(a.observe_receive(10, t0 + ms(150))), None);
        assert_eq!(to(a.observe_receive(10, t0 + ms(200))), Some(4));
    }

    #[test]
    fn a_saturated_target_holds_growth() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 100, t0);
        a.observe_saturation(10, 10);
        assert_eq!(to(a.observe_receive(10, t0 + ms(100))), None);
        assert_eq!(a.observe_backlog(10_000, t0 + ms(100)), None);
        assert!(!a.observe_receive(10, t0 + ms(300)).sample_depth);
        a.observe_saturation(9, 10);
        assert_eq!(to(a.observe_receive(10, t0 + ms(400))), Some(2));
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
    fn partial_receives_hold_steady() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 10, t0);
        a.observe_receive(10, t0 + ms(100));
        for i in 0..100 {
            assert_eq!(to(a.observe_receive(5, t0 + Duration::from_secs(20 + i))), None);
        }
        assert_eq!(a.desired(), 2);
    }

    #[test]
    fn shrinks_one_step_per_cooldown_when_every_poller_comes_back_empty() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 8, t0);
        for i in 1..=3 {
            a.observe_receive(10, t0 + ms(100 * i));
        }
        assert_eq!(a.desired(), 8);
        let t1 = t0 + ms(300);
        for _ in 0..20 {
            assert_eq!(to(a.observe_receive(0, t1 + ms(4000))), None, "not before the cool-down");
        }
        let t2 = t1 + SCALE_DOWN_COOLDOWN;
        let c = a.observe_receive(0, t2).change.unwrap();
        assert_eq!((c.from, c.to, c.reason), (8, 7, ScaleReason::Idle));
        for _ in 0..20 {
            assert_eq!(to(a.observe_receive(0, t2 + ms(10))), None, "and another cool-down for the next step");
        }
    }

    #[test]
    fn shrinking_needs_one_empty_receive_per_poller() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 4, t0);
        a.observe_receive(10, t0 + ms(100));
        a.observe_receive(10, t0 + ms(200));
        assert_eq!(a.desired(), 4);
        let t1 = t0 + ms(200) + SCALE_DOWN_COOLDOWN;
        for _ in 0..3 {
            assert_eq!(to(a.observe_receive(0, t1)), None);
        }
        assert_eq!(to(a.observe_receive(0, t1)), Some(3));
    }

    #[test]
    fn never_below_min_nor_above_max() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(3, 8, t0);
        for i in 0..1000 {
            a.observe_receive(0, t0 + Duration::from_secs(i * 11));
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
                // every sequence of 6 observations from 5 kinds
                for code in 0..5u32.pow(6) {
                    let mut a = Autoscaler::new(min, max, t0);
                    let mut t = t0;
                    let mut c = code;
                    for _ in 0..6 {
                        t += ms(2600);
                        let before = a.desired();
                        let change = match c % 5 {
                            0 => a.observe_receive(10, t).change,
                            1 => a.observe_receive(0, t).change,
                            2 => a.observe_backlog(1000, t),
                            3 => {
                                a.observe_throttle(t);
                                None
                            }
                            _ => {
                                a.observe_saturation((c % 3) as usize, 2);
                                None
                            }
                        };
                        c /= 5;
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
}
