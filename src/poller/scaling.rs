//! The burst autoscaler, pure: observations and time in, the desired number of pollers out.
//!
//! - **Up fast.** A full receive (10 messages) doubles the target (at least +1), at most once
//!   per [`SCALE_UP_INTERVAL`], and asks for a depth sample; a sampled backlog jumps straight to
//!   what it needs (`visible / 10` pollers, at least double). From `min` to `max` takes one
//!   sample round trip when the depth is known, a handful of 100 ms steps otherwise.
//! - **Down like a fleet.** The receives of each [`SCALE_DOWN_WINDOW`] say how full the fleet's
//!   receives are (messages ÷ 10 per receive, empty ones included). A window without a full
//!   receive, at least [`SCALE_DOWN_COOLDOWN`] after the last change, sizes the fleet to what
//!   that fill needs at [`TARGET_FILL`] (`desired × fill ÷ TARGET_FILL`, rounded up), retiring
//!   at most a quarter of the fleet per step ([`MAX_STEP_DOWN`]). An idle fleet (every receive
//!   empty) goes 2,000 → 20 in about 80 s once its long polls come back; under a steady
//!   trickle the fill of a smaller fleet rises, so it settles where receives are about half full
//!   and stays there (between half full and full nothing changes: no flapping).
//! - **No growth that cannot help.** While `max_concurrency` batches are in flight, or for
//!   [`THROTTLE_HOLD`] after the target throttled, the target does not grow (pollers pause for
//!   room anyway; more of them would only hold messages longer). Nor does it shrink while
//!   saturated: the receives it would count are the ones waiting for room.
//! - Always `min ≤ desired ≤ max`; with `min = 0` a visible backlog wakes the first poller.

use std::time::Duration;

use tokio::time::Instant;

/// Shortest time between two doubling steps on full receives.
pub const SCALE_UP_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest time between a change and a scale-down step.
pub const SCALE_DOWN_COOLDOWN: Duration = Duration::from_secs(5);
/// The receives of this long decide one scale-down step.
pub const SCALE_DOWN_WINDOW: Duration = Duration::from_secs(5);
/// How full (messages ÷ 10 per receive) the fleet's receives are meant to be when it shrinks.
pub const TARGET_FILL: f64 = 0.5;
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
    last_change: Instant,
    /// `max_concurrency` batches are in flight.
    saturated: bool,
    /// Growth is held until then after a throttle.
    hold_until: Option<Instant>,
}

/// What the receives of one scale-down window showed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Window {
    receives: u64,
    messages: u64,
    full: bool,
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
        Autoscaler {
            min,
            max,
            desired: min,
            window: Window::default(),
            window_start: now,
            last_change: now,
            saturated: false,
            hold_until: None,
        }
    }

    pub fn desired(&self) -> usize {
        self.desired
    }

    /// A receive returned `messages` messages.
    pub fn observe_receive(&mut self, messages: usize, now: Instant) -> Decision {
        self.window.receives += 1;
        self.window.messages += messages as u64;
        if messages >= FULL_RECEIVE {
            self.window.full = true;
            let growable = self.can_grow(now);
            let change = if self.desired > 0 && now.duration_since(self.last_change) < SCALE_UP_INTERVAL {
                None
            } else {
                self.grow(self.desired.saturating_mul(2), ScaleReason::FullReceive, now)
            };
            return Decision { change, sample_depth: growable && self.desired < self.max };
        }
        Decision { change: self.step_down(now), sample_depth: false }
    }

    /// At the end of a window: shrink to what the window's fill needs, if that is fewer.
    fn step_down(&mut self, now: Instant) -> Option<ScaleChange> {
        // each step waits for evidence from a share of the fleet: pollers whose long polls began
        // together come back together, and one receive is not the fleet's answer
        if now.duration_since(self.window_start) < SCALE_DOWN_WINDOW
            || self.window.receives.saturating_mul(EVIDENCE_SHARE) < self.desired as u64
        {
            return None;
        }
        let window = std::mem::take(&mut self.window);
        self.window_start = now;
        if window.full
            || self.saturated
            || self.desired <= self.min
            || now.duration_since(self.last_change) < SCALE_DOWN_COOLDOWN
        {
            return None;
        }
        let steps = (now.duration_since(self.last_change).as_secs_f64() / SCALE_DOWN_COOLDOWN.as_secs_f64()) as u32;
        let to = shrink_to(self.desired, steps.clamp(1, MAX_STEPS_AT_ONCE), window.receives, window.messages);
        if to < self.desired {
            self.set(to, ScaleReason::Idle, now)
        } else {
            None
        }
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
        self.last_change = now;
        // the next window counts the receives of the new fleet only
        self.window = Window::default();
        self.window_start = now;
        Some(change)
    }
}

/// The fleet a window of `receives` receives that took `messages` needs: sized to its fill at
/// [`TARGET_FILL`], rounded up; at least what `steps` cool-downs of [`MAX_STEP_DOWN`] leave
/// (and at least one poller fewer).
fn shrink_to(desired: usize, steps: u32, receives: u64, messages: u64) -> usize {
    if receives == 0 {
        return desired;
    }
    let fill = messages as f64 / (receives as f64 * FULL_RECEIVE as f64);
    let needed = (desired as f64 * fill / TARGET_FILL).ceil() as usize;
    let kept = (desired as f64 * (1.0 - MAX_STEP_DOWN).powi(steps as i32)).round() as usize;
    needed.max(kept.min(desired - 1)).min(desired)
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
    fn an_idle_window_retires_a_quarter_of_the_fleet_per_cooldown() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 8, t0);
        for i in 1..=3 {
            a.observe_receive(10, t0 + ms(100 * i));
        }
        assert_eq!(a.desired(), 8);
        let t1 = t0 + ms(300);
        for _ in 0..20 {
            assert_eq!(to(a.observe_receive(0, t1 + ms(4000))), None, "not before the window ends");
        }
        let t2 = t1 + SCALE_DOWN_WINDOW;
        let c = a.observe_receive(0, t2).change.unwrap();
        assert_eq!((c.from, c.to, c.reason), (8, 6, ScaleReason::Idle));
        for _ in 0..20 {
            assert_eq!(to(a.observe_receive(0, t2 + ms(10))), None, "and another window for the next step");
        }
        assert_eq!(to(a.observe_receive(0, t2 + SCALE_DOWN_WINDOW)), Some(5));
    }

    #[test]
    fn a_window_with_a_full_receive_does_not_shrink() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 4, t0);
        a.observe_receive(10, t0 + ms(100));
        a.observe_receive(10, t0 + ms(200));
        assert_eq!(a.desired(), 4);
        a.observe_saturation(1, 1); // growth held: the full receive below changes nothing
        a.observe_receive(10, t0 + ms(300));
        a.observe_saturation(0, 1);
        assert_eq!(to(a.observe_receive(0, t0 + ms(200) + SCALE_DOWN_WINDOW)), None);
        // two cool-downs since the last change: 4 × 0.75², rounded
        assert_eq!(to(a.observe_receive(0, t0 + ms(200) + SCALE_DOWN_WINDOW * 2)), Some(2));
    }

    #[test]
    fn no_shrinking_while_saturated() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(1, 4, t0);
        a.observe_backlog(1000, t0);
        a.observe_saturation(4, 4);
        assert_eq!(to(a.observe_receive(0, t0 + SCALE_DOWN_WINDOW * 3)), None);
    }

    #[test]
    fn the_step_is_sized_by_the_fill_of_the_window() {
        // (desired, receives, messages) -> new size
        assert_eq!(shrink_to(100, 1, 100, 0), 75, "idle: a quarter at most");
        assert_eq!(shrink_to(100, 1, 100, 100), 75, "fill 0.1 needs 20: a quarter at most");
        assert_eq!(shrink_to(100, 2, 100, 100), 56, "two cool-downs since the last change: 0.75²");
        assert_eq!(shrink_to(100, 4, 100, 100), 32, "four");
        assert_eq!(shrink_to(100, 1, 100, 450), 90, "fill 0.45 needs 90");
        assert_eq!(shrink_to(100, 1, 100, 500), 100, "half full: as it is");
        assert_eq!(shrink_to(100, 1, 100, 900), 100, "fuller: never shrinks");
        assert_eq!(shrink_to(3, 1, 10, 0), 2, "at least one");
        assert_eq!(shrink_to(1, 1, 10, 0), 0, "down to 0 (the caller clamps to min)");
        assert_eq!(shrink_to(7, 1, 0, 0), 7, "no receive, no evidence");
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

    /// A fleet long polling a queue, stepped every receive round trip: messages arrive at
    /// `rate(t)` per second; each arrival wakes a waiting poller (as SQS answers a long poll as
    /// soon as a message is there), which returns one round trip later with its share (at most
    /// 10); a poller that gets nothing returns empty after the long poll. Retired pollers are the
    /// newest; one in a receive finishes it first. A full receive's depth sample is answered at once.
    struct FleetModel {
        scaler: Autoscaler,
        t0: Instant,
        queue: f64,
        waiting: std::collections::VecDeque<f64>,
        in_flight: Vec<usize>,
        retiring: usize,
        changes: Vec<(f64, ScaleChange)>,
        /// The largest backlog seen, with its time.
        backlog: Vec<(f64, f64)>,
    }

    const RTT: f64 = 0.02;
    const WAIT: f64 = 20.0;

    impl FleetModel {
        fn new(min: usize, max: usize, start_at: usize) -> Self {
            let t0 = Instant::now();
            let mut scaler = Autoscaler::new(min, max, t0);
            if start_at > min {
                scaler.observe_backlog(start_at as u64 * 10, t0);
            }
            let waiting = (0..scaler.desired()).map(|_| 0.0).collect();
            FleetModel {
                scaler,
                t0,
                queue: 0.0,
                waiting,
                in_flight: vec![],
                retiring: 0,
                changes: vec![],
                backlog: vec![],
            }
        }

        fn alive(&self) -> usize {
            self.waiting.len() + self.in_flight.len() - self.retiring
        }

        fn at(&self, t: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(t)
        }

        fn returned(&mut self, messages: usize, t: f64) {
            let d = self.scaler.observe_receive(messages, self.at(t));
            if let Some(c) = d.change {
                self.changes.push((t, c));
            }
            if d.sample_depth {
                if let Some(c) = self.scaler.observe_backlog(self.queue as u64, self.at(t)) {
                    self.changes.push((t, c));
                }
            }
            if self.retiring > 0 {
                self.retiring -= 1;
            } else {
                self.waiting.push_back(t);
            }
        }

        fn run(&mut self, from: f64, to: f64, rate: impl Fn(f64) -> f64) {
            let mut t = from;
            while t < to {
                t += RTT;
                self.queue += rate(t) * RTT;
                for messages in std::mem::take(&mut self.in_flight) {
                    self.returned(messages, t);
                }
                while self.waiting.front().is_some_and(|&s| s + WAIT <= t) {
                    self.waiting.pop_front();
                    self.returned(0, t);
                }
                let ready = self.queue.floor() as usize;
                let woken = ready.min(self.waiting.len());
                for i in 0..woken {
                    self.waiting.pop_front();
                    let share = (ready / woken + usize::from(i < ready % woken)).min(10);
                    self.queue -= share as f64;
                    self.in_flight.push(share);
                }
                let desired = self.scaler.desired();
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
            // the first step waits for the long polls (20 s) to come back
            assert!(at <= 121.0, "{max} -> {min} took {at:.0} s");
            assert!(m.changes.iter().all(|(_, c)| c.reason == ScaleReason::Idle));
        }
    }

    #[test]
    fn a_steady_rate_settles_without_flapping_and_keeps_up() {
        // messages a second: a trickle, the seed's 50,000 a minute, and one poller's worth several times over
        for rate in [1.0, 50.0, 833.0, 3000.0] {
            let mut m = FleetModel::new(1, 2000, 2000);
            m.run(0.0, 600.0, |_| rate);
            let late: Vec<_> = m.changes.iter().filter(|(t, _)| *t > 300.0).collect();
            let settled = m.scaler.desired();
            println!(
                "{rate}/s from 2000: settled at {settled}, last change at {:.0} s",
                m.changes.last().map_or(0.0, |c| c.0)
            );
            assert!(late.len() <= 2, "{rate}/s: still changing after 5 minutes: {late:?}");
            let worst = m.backlog.iter().filter(|(t, _)| *t > 60.0).map(|&(_, b)| b).fold(0.0, f64::max);
            assert!(worst <= (rate * 0.2).max(10.0), "{rate}/s: fell behind, backlog {worst} at {settled} pollers");
        }
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
