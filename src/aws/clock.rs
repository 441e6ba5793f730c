//! The service's clock as AWS sees it: the host clock corrected by the skew learned from the
//! `Date` header of every AWS answer, as the SDK's `ServiceClockSkewInterceptor` does
//! (aws-runtime: the skew is `Date − the request's midpoint`, refreshed by every answer that did
//! not come from a cache and took under 15 minutes; a clock-skew error is worth a retry once the
//! measured skew is over 4 minutes). One clock per process: the SQS JSON client, the SDK clients
//! (through [`SkewInterceptor`] and [`Clock::time_source`]), S3 fetches and SigV4-signed targets
//! all sign with [`Clock::now`].

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Below this measured skew, a clock-skew error code is a genuine signature error.
pub const SKEW_DETECTION_THRESHOLD: Duration = Duration::from_secs(4 * 60);
/// A round trip longer than this says nothing reliable about the skew.
const MAX_TRUSTED_REQUEST_DURATION: Duration = Duration::from_secs(15 * 60);
/// A measured skew this large (or a change of this much) is logged.
const LOG_SKEW_OVER: Duration = Duration::from_secs(60);

/// Error codes that may mean "your clock is off" (the SDK's list).
pub const CLOCK_SKEW_ERROR_CODES: &[&str] = &[
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "RequestTimeTooSkewed",
    "AccessDeniedException",
];

/// The host clock plus the skew the services measured, shared by every client of the process.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Service time minus host time, in milliseconds.
    skew_ms: AtomicI64,
    /// Set once a skew over [`LOG_SKEW_OVER`] was logged, so it is logged once per episode.
    logged: AtomicBool,
}

impl Clock {
    /// The time to sign with: the host clock corrected by the learned skew.
    pub fn now(&self) -> SystemTime {
        apply(SystemTime::now(), self.skew_ms())
    }

    /// The learned skew in milliseconds (positive: the service's clock is ahead of ours).
    pub fn skew_ms(&self) -> i64 {
        self.inner.skew_ms.load(Ordering::Relaxed)
    }

    /// Learns from one answer: `sent` and `received` by the host clock, `date` its `Date`
    /// header, `cached` whether it carried an `Age` header. Returns the measured skew when the
    /// answer was usable.
    pub fn observe(&self, sent: SystemTime, received: SystemTime, date: Option<&str>, cached: bool) -> Option<i64> {
        let skew = measure(sent, received, date?, cached)?;
        let before = self.inner.skew_ms.swap(skew, Ordering::Relaxed);
        let over = skew.unsigned_abs() >= LOG_SKEW_OVER.as_millis() as u64;
        if over && (!self.inner.logged.swap(true, Ordering::Relaxed) || (skew - before).unsigned_abs() >= 60_000) {
            tracing::warn!(
                skew_secs = skew / 1000,
                host_clock = %crate::aws::http_date(SystemTime::now()),
                "the host clock differs from AWS's by {} s; requests are signed with AWS's time (fix the host's NTP)",
                skew / 1000
            );
        } else if !over && self.inner.logged.swap(false, Ordering::Relaxed) {
            tracing::info!(skew_ms = skew, "the host clock agrees with AWS's again");
        }
        Some(skew)
    }

    /// Whether an error `code` answered while the measured skew was `skew_ms` is a clock-skew
    /// error: worth a retry, signed with the corrected clock.
    pub fn is_skew_error(code: &str, skew_ms: i64) -> bool {
        skew_ms.unsigned_abs() > SKEW_DETECTION_THRESHOLD.as_millis() as u64 && CLOCK_SKEW_ERROR_CODES.contains(&code)
    }

    /// Moves this clock forward (tests of what depends on it).
    #[doc(hidden)]
    pub fn advance_for_test(&self, by: Duration) {
        self.inner.skew_ms.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }

    /// This clock as the SDK's time source: the SDK clients sign with it.
    pub fn time_source(&self) -> aws_smithy_async::time::SharedTimeSource {
        aws_smithy_async::time::SharedTimeSource::new(self.clone())
    }
}

impl aws_smithy_async::time::TimeSource for Clock {
    fn now(&self) -> SystemTime {
        Clock::now(self)
    }
}

/// `date − midpoint(sent, received)` in milliseconds, when the answer can be trusted for it.
fn measure(sent: SystemTime, received: SystemTime, date: &str, cached: bool) -> Option<i64> {
    if cached {
        return None;
    }
    let server: SystemTime = aws_smithy_types::DateTime::from_str(date, aws_smithy_types::date_time::Format::HttpDate)
        .ok()?
        .try_into()
        .ok()?;
    let elapsed = received.duration_since(sent).unwrap_or_default();
    if elapsed > MAX_TRUSTED_REQUEST_DURATION {
        return None;
    }
    let midpoint = sent + elapsed / 2;
    Some(match server.duration_since(midpoint) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    })
}

fn apply(t: SystemTime, skew_ms: i64) -> SystemTime {
    let d = Duration::from_millis(skew_ms.unsigned_abs());
    if skew_ms >= 0 { t.checked_add(d) } else { t.checked_sub(d) }.unwrap_or(t)
}

/// Teaches the process clock from every answer an SDK client gets (the SDK's own interceptor
/// keeps its skew per client, and the SQS client signs with [`crate::aws::sigv4`], which reads
/// [`Clock::now`]).
#[derive(Debug)]
pub struct SkewInterceptor {
    clock: Clock,
}

impl SkewInterceptor {
    pub fn new(clock: Clock) -> Self {
        SkewInterceptor { clock }
    }
}

/// When the request was sent, by the host clock.
#[derive(Debug, Clone, Copy)]
struct SentAt(SystemTime);
impl aws_smithy_types::config_bag::Storable for SentAt {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for SkewInterceptor {
    fn name(&self) -> &'static str {
        "sqs-poller clock skew"
    }

    fn read_before_transmit(
        &self,
        _ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        cfg.interceptor_state().store_put(SentAt(SystemTime::now()));
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if let Some(SentAt(sent)) = cfg.load::<SentAt>().copied() {
            let headers = ctx.response().headers();
            self.clock.observe(sent, SystemTime::now(), headers.get("date"), headers.get("age").is_some());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_skew_is_the_date_against_the_midpoint_of_the_round_trip() {
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(measure(at(784_111_777 - 600), at(784_111_777 - 598), date, false), Some(599_000));
        assert_eq!(measure(at(784_111_777 + 300), at(784_111_777 + 300), date, false), Some(-300_000));
        assert_eq!(measure(at(784_111_777), at(784_111_777), date, true), None, "a cached answer");
        assert_eq!(measure(at(784_111_777 - 2000), at(784_111_777), date, false), None, "a 33-minute round trip");
        assert_eq!(measure(at(0), at(0), "yesterday", false), None);
    }

    #[test]
    fn the_clock_signs_with_the_learned_skew_and_every_answer_refreshes_it() {
        let clock = Clock::default();
        let now = SystemTime::now();
        let ahead = aws_smithy_types::DateTime::from(now + Duration::from_secs(600))
            .fmt(aws_smithy_types::date_time::Format::HttpDate)
            .unwrap();
        let skew = clock.observe(now, now, Some(&ahead), false).unwrap();
        assert!((599_000..=600_000).contains(&skew), "{skew}");
        let signed = clock.now().duration_since(SystemTime::now()).unwrap();
        assert!(signed > Duration::from_secs(598), "{signed:?}");
        let same = aws_smithy_types::DateTime::from(SystemTime::now())
            .fmt(aws_smithy_types::date_time::Format::HttpDate)
            .unwrap();
        clock.observe(SystemTime::now(), SystemTime::now(), Some(&same), false);
        assert!(clock.skew_ms().abs() < 1500, "healed: {}", clock.skew_ms());
        assert_eq!(clock.observe(now, now, None, false), None);
    }

    #[test]
    fn skew_errors_need_a_skew_past_the_threshold() {
        assert!(Clock::is_skew_error("SignatureDoesNotMatch", 600_000));
        assert!(Clock::is_skew_error("InvalidSignatureException", -300_000));
        assert!(!Clock::is_skew_error("SignatureDoesNotMatch", 1_000), "a genuine signature error");
        assert!(!Clock::is_skew_error("QueueDoesNotExist", 600_000));
    }
}
