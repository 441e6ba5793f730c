//! The one backoff of every retry loop that waits on something failing (an unreachable SQS
//! endpoint, a failed batch call, a throttling target, a crashing worker): a first step doubling
//! up to a cap (by default 100 ms to 10 s), with "equal jitter" (between half and all of the
//! step), reset by a success. (A failed *message* waits by another rule, in whole seconds:
//! `ack::backoff_secs`.)

use std::time::Duration;

/// Default first step.
const BASE_MS: u64 = 100;
/// Default largest step.
const CAP_MS: u64 = 10_000;

#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    base_ms: u64,
    cap_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { failures: 0, base_ms: BASE_MS, cap_ms: CAP_MS }
    }
}

impl Backoff {
    /// A backoff from `first` doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff { failures: 0, base_ms: first.as_millis() as u64, cap_ms: cap.as_millis() as u64 }
    }

    /// Counts a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(step_with_jitter(self.failures, fastrand::f64(), self.base_ms, self.cap_ms))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The wait after `failures` failures with `jitter` in `[0, 1]`, in ms.
fn step_with_jitter(failures: u32, jitter: f64, base_ms: u64, cap_ms: u64) -> u64 {
    let step = base_ms.saturating_mul(1 << failures.clamp(1, 20).saturating_sub(1)).min(cap_ms);
    step / 2 + ((step / 2) as f64 * jitter.clamp(0.0, 1.0)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100_ms_to_a_10_s_cap() {
        let full: Vec<u64> = (1..=10).map(|f| step_with_jitter(f, 1.0, BASE_MS, CAP_MS)).collect();
        assert_eq!(full, vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        assert_eq!(step_with_jitter(u32::MAX, 1.0, BASE_MS, CAP_MS), 10_000);
    }

    #[test]
    fn jitter_keeps_between_half_and_all() {
        for f in 1..12 {
            let lo = step_with_jitter(f, 0.0, BASE_MS, CAP_MS);
            let hi = step_with_jitter(f, 1.0, BASE_MS, CAP_MS);
            assert_eq!(lo * 2, hi, "after {f} failures");
        }
    }

    #[test]
    fn first_step_and_cap_are_settings() {
        let steps: Vec<u64> = (1..=6).map(|f| step_with_jitter(f, 1.0, 200, 5_000)).collect();
        assert_eq!(steps, vec![200, 400, 800, 1600, 3200, 5000]);
    }

    #[test]
    fn a_success_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.failures(), 5);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
