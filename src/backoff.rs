//! The one backoff of every retry loop that waits on something failing (an unreachable SQS
//! endpoint, a throttling target): 100 ms doubling to 10 s, with "equal jitter" (between half
//! and all of the step), reset by a success.

use std::time::Duration;

/// First step.
const BASE_MS: u64 = 100;
/// Largest step.
const CAP_MS: u64 = 10_000;

#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Counts a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(step_with_jitter(self.failures, fastrand::f64()))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The wait after `failures` failures with `jitter` in `[0, 1]`, in ms.
fn step_with_jitter(failures: u32, jitter: f64) -> u64 {
    let step = (BASE_MS << failures.clamp(1, 8).saturating_sub(1)).min(CAP_MS);
    step / 2 + ((step / 2) as f64 * jitter.clamp(0.0, 1.0)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100_ms_to_a_10_s_cap() {
        let full: Vec<u64> = (1..=10).map(|f| step_with_jitter(f, 1.0)).collect();
        assert_eq!(full, vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        assert_eq!(step_with_jitter(u32::MAX, 1.0), 10_000);
    }

    #[test]
    fn jitter_keeps_between_half_and_all() {
        for f in 1..12 {
            let lo = step_with_jitter(f, 0.0);
            let hi = step_with_jitter(f, 1.0);
            assert_eq!(lo * 2, hi, "after {f} failures");
        }
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
