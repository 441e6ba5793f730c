//! The scaling rule, pure: observations and time in, the desired number of pollers out.
//!
//! - **Up fast**: a full receive (10 messages) or a sampled backlog of at least 10 messages per
//!   poller doubles the target (at least +1), at most once per [`SCALE_UP_INTERVAL`], so that
//!   `min` → `max` takes a handful of intervals.
//! - **Down slow**: once every poller has come back empty since the last change and
//!   [`SCALE_DOWN_COOLDOWN`] has passed, one poller is retired.
//! - Always `min ≤ desired ≤ max`; with `min = 0` a visible backlog wakes the first poller.
//!
//! A later, faster autoscaler can replace this type without touching the fleet's IO.

use std::time::Duration;

use tokio::time::Instant;

/// Shortest time between two scale-up steps.
pub const SCALE_UP_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest time between a change and a scale-down step.
pub const SCALE_DOWN_COOLDOWN: Duration = Duration::from_secs(10);

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

impl Autoscaler {
    pub fn new(min: usize, max: usize, now: Instant) -> Self {
        Autoscaler {
            min,
            max,
            desired: min,
            empty_streak: 0,
            last_change: now,
        }
    }

    pub fn desired(&self) -> usize {
        self.desired
    }

    /// A receive returned `messages` messages.
    pub fn observe_receive(&mut self, messages: usize, now: Instant) -> Option<ScaleChange> {
        if messages >= FULL_RECEIVE {
            self.empty_streak = 0;
            return self.grow(self.desired.saturating_mul(2), ScaleReason::FullReceive, now);
        }
        if messages > 0 {
            self.empty_streak = 0;
            return None;
        }
        self.empty_streak += 1;
        if self.desired > self.min
            && self.empty_streak >= self.desired
            && now.duration_since(self.last_change) >= SCALE_DOWN_COOLDOWN
        {
            return self.set(self.desired - 1, ScaleReason::Idle, now);
        }
        None
    }

    /// The queue holds about `visible` messages ready to receive.
    pub fn observe_backlog(&mut self, visible: u64, now: Instant) -> Option<ScaleChange> {
        let per_poller = visible / self.desired.max(1) as u64;
        if visible > 0 && (self.desired == 0 || per_poller >= FULL_RECEIVE as u64) {
            let needed = usize::try_from(visible.div_ceil(FULL_RECEIVE as u64)).unwrap_or(usize::MAX);
            return self.grow(needed.min(self.desired.saturating_mul(2)).max(1), ScaleReason::Backlog, now);
        }
        None
    }

    fn grow(&mut self, to: usize, reason: ScaleReason, now: Instant) -> Option<ScaleChange> {
        if self.desired > 0 && now.duration_since(self.last_change) < SCALE_UP_INTERVAL {
            return None;
        }
        self.set(to.max(self.desired + 1), reason, now)
    }

    fn set(&mut self, to: usize, reason: ScaleReason, now: Instant) -> Option<ScaleChange> {
        let to = to.clamp(self.min, self.max);
        if to == self.desired {
            return None;
        }
        let change = ScaleChange {
            from: self.desired,
            to,
            reason,
        };
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

    #[test]
    fn starts_at_min() {
        assert_eq!(Autoscaler::new(2, 10, Instant::now()).desired(), 2);
    }

    #[test]
    fn full_receives_double_up_to_max_within_a_second() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 32, t0);
        let mut t = t0;
        let mut steps = vec![];
        while a.desired() < 32 {
            t += ms(100);
            if let Some(c) = a.observe_receive(10, t) {
                steps.push(c.to);
            }
            assert!(t - t0 <= Duration::from_secs(1), "took too long: {steps:?}");
        }
        assert_eq!(steps, vec![2, 4, 8, 16, 32]);
        assert_eq!(a.observe_receive(10, t + ms(500)), None, "never above max");
    }

    #[test]
    fn scale_up_is_rate_limited() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 100, t0);
        assert!(a.observe_receive(10, t0 + ms(100)).is_some());
        assert_eq!(a.observe_receive(10, t0 + ms(150)), None);
        assert!(a.observe_receive(10, t0 + ms(200)).is_some());
    }

    #[test]
    fn partial_receives_hold_steady() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 10, t0);
        a.observe_receive(10, t0 + ms(100));
        for i in 0..100 {
            assert_eq!(a.observe_receive(5, t0 + Duration::from_secs(20 + i)), None);
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
        // empty receives before the cool-down change nothing
        for _ in 0..20 {
            assert_eq!(a.observe_receive(0, t1 + Duration::from_secs(5)), None);
        }
        let t2 = t1 + SCALE_DOWN_COOLDOWN;
        let c = a.observe_receive(0, t2).unwrap();
        assert_eq!((c.from, c.to, c.reason), (8, 7, ScaleReason::Idle));
        // and another cool-down for the next step
        for _ in 0..20 {
            assert_eq!(a.observe_receive(0, t2 + ms(10)), None);
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
            assert_eq!(a.observe_receive(0, t1), None);
        }
        assert_eq!(a.observe_receive(0, t1).unwrap().to, 3);
    }

    #[test]
    fn never_below_min() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(3, 8, t0);
        for i in 0..1000 {
            a.observe_receive(0, t0 + Duration::from_secs(i * 11));
        }
        assert_eq!(a.desired(), 3);
    }

    #[test]
    fn a_backlog_wakes_a_fleet_at_zero() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(0, 4, t0);
        assert_eq!(a.desired(), 0);
        assert_eq!(a.observe_backlog(0, t0), None);
        let c = a.observe_backlog(3, t0).unwrap();
        assert_eq!((c.from, c.to, c.reason), (0, 1, ScaleReason::Backlog));
    }

    #[test]
    fn a_large_backlog_doubles_and_a_small_one_does_not() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(2, 50, t0);
        assert_eq!(a.observe_backlog(15, t0 + ms(200)), None, "7 per poller is covered");
        assert_eq!(a.observe_backlog(10_000, t0 + ms(200)).unwrap().to, 4);
        assert_eq!(a.observe_backlog(10_000, t0 + ms(400)).unwrap().to, 8);
    }
}
