//! One credentials cache for the whole process, in front of the SDK's provider chain (which has
//! no cache of its own: the SDK clients wrap it in their identity cache, and everything else
//! would call it per request — on EKS with IRSA an STS call per S3 fetch).
//!
//! It behaves as the SDK's lazy identity cache does, and better where the brief asks:
//! - credentials are refreshed **ahead** of their expiry by a buffer proportional to their life
//!   (a quarter of it, at most 5 minutes), never per request: 40-second keys are fetched about
//!   every 30 s, hour-long role keys every 55 minutes;
//! - the refresh runs in the background while the valid credentials keep signing; only when
//!   there are none, or they are about to expire, do requests wait — for one load, shared;
//! - a failed refresh keeps the valid credentials and is retried with backoff (1 s doubling to
//!   60 s); requests fail only once the credentials have expired;
//! - credentials without an expiry (static keys, a profile file) are read again every 15
//!   minutes (the SDK's `default_expiration`), so a rotated file is picked up.
//!
//! Expiry is judged by [`Clock::now`], AWS's time, not the host's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{self, error::CredentialsError, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;

use super::clock::Clock;

/// The most credentials are refreshed ahead of their expiry.
const MAX_BUFFER: Duration = Duration::from_secs(300);
/// How long credentials without an expiry are used before they are read again.
pub const NO_EXPIRY_REFRESH: Duration = Duration::from_secs(15 * 60);
/// Credentials with less life than this left are not used to sign (a request must arrive
/// before they expire).
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// How long one load of the provider chain may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Backoff of failed refreshes.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What a request does with the cache's state at `now` (the pure part of the cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sign with the cached credentials.
    Use,
    /// Sign with the cached credentials and start a refresh in the background.
    UseAndRefresh,
    /// No usable credentials: wait for a load.
    Load,
}

/// The cached credentials and when to refresh them.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub current: Option<Credentials>,
    /// When to start refreshing `current`.
    pub refresh_at: Option<SystemTime>,
    /// No refresh is tried before this (backoff after a failure).
    pub retry_at: Option<SystemTime>,
    /// Failed refreshes in a row (a load whose credentials looked expired counts as failed).
    pub failures: u32,
    /// `current` looked expired on AWS's clock when it was loaded: it is used anyway until
    /// `retry_at` (AWS judges; the host's and AWS's clocks may disagree), not loaded per request.
    pub stale: bool,
}

/// The refresh buffer for credentials living `life`: a quarter of it, at most `MAX_BUFFER`.
pub fn buffer(life: Duration) -> Duration {
    (life / 4).min(MAX_BUFFER)
}

/// When to refresh credentials loaded at `loaded`.
pub fn refresh_time(creds: &Credentials, loaded: SystemTime) -> SystemTime {
    match creds.expiry() {
        Some(expiry) => {
            let life = expiry.duration_since(loaded).unwrap_or_default();
            expiry.checked_sub(buffer(life)).unwrap_or(expiry)
        }
        None => loaded + NO_EXPIRY_REFRESH,
    }
}

/// Whether `creds` can still sign a request at `now`.
pub fn usable(creds: &Credentials, now: SystemTime) -> bool {
    creds.expiry().is_none_or(|e| e > now + EXPIRY_MARGIN)
}

/// Whether the next load waits: the last one failed, or brought credentials that looked expired,
/// moments ago.
fn backing_off(state: &State, now: SystemTime) -> bool {
    state.retry_at.is_some_and(|t| now < t)
}

/// The decision for a request at `now`.
pub fn decide(state: &State, now: SystemTime) -> Decision {
    let Some(creds) = &state.current else { return Decision::Load };
    if !usable(creds, now) {
        // freshly loaded yet expired on AWS's clock: used until the next load is due
        if state.stale && backing_off(state, now) {
            return Decision::Use;
        }
        return Decision::Load;
    }
    let due = state.refresh_at.is_some_and(|t| now >= t);
    let may_retry = state.retry_at.is_none_or(|t| now >= t);
    if due && may_retry {
        Decision::UseAndRefresh
    } else {
        Decision::Use
    }
}

/// The state after a load at `now`: the new credentials, or the old ones kept with a backoff.
pub fn after_load(state: &State, now: SystemTime, loaded: Result<Credentials, ()>) -> State {
    let failures = state.failures.saturating_add(1);
    let delay = RETRY_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(6)).min(RETRY_MAX);
    match loaded {
        // expired on arrival, by AWS's clock (issue 30: a load per request): used, and the next
        // load backs off as after a failure
        Ok(creds) if !usable(&creds, now) => {
            State { refresh_at: Some(now), current: Some(creds), retry_at: Some(now + delay), failures, stale: true }
        }
        Ok(creds) => State {
            refresh_at: Some(refresh_time(&creds, now)),
            current: Some(creds),
            retry_at: None,
            failures: 0,
            stale: false,
        },
        Err(()) => State { retry_at: Some(now + delay), failures, ..state.clone() },
    }
}

/// The process's credentials: cheap to clone, one cache behind every clone.
#[derive(Clone)]
pub struct CredentialsCache {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Option<SharedCredentialsProvider>,
    clock: Clock,
    state: RwLock<State>,
    /// Held while the provider chain is being called: one load at a time.
    loading: Arc<tokio::sync::Mutex<()>>,
    loads: AtomicU64,
    load_failures: AtomicU64,
}

impl std::fmt::Debug for CredentialsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsCache").field("loads", &self.loads()).finish_non_exhaustive()
    }
}

impl CredentialsCache {
    /// A cache in front of `provider` (`None`: no credentials are configured, every request
    /// fails saying so).
    pub fn new(provider: Option<SharedCredentialsProvider>, clock: Clock) -> Self {
        CredentialsCache {
            inner: Arc::new(Inner {
                provider,
                clock,
                state: RwLock::new(State::default()),
                loading: Arc::new(tokio::sync::Mutex::new(())),
                loads: AtomicU64::new(0),
                load_failures: AtomicU64::new(0),
            }),
        }
    }

    /// How many times the provider chain was called (successfully or not).
    pub fn loads(&self) -> u64 {
        self.inner.loads.load(Ordering::Relaxed)
    }

    /// How many of those calls failed.
    pub fn load_failures(&self) -> u64 {
        self.inner.load_failures.load(Ordering::Relaxed)
    }

    /// Credentials to sign a request with.
    ///
    /// # Errors
    /// When there are no usable credentials and loading them failed.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        let now = self.inner.clock.now();
        let (decision, current) = {
            let state = self.inner.state.read().expect("credentials state");
            (decide(&state, now), state.current.clone())
        };
        match (decision, current) {
            (Decision::Use, Some(c)) => Ok(c),
            (Decision::UseAndRefresh, Some(c)) => {
                // one refresh at a time; the others sign with what is cached
                if let Ok(guard) = self.inner.loading.clone().try_lock_owned() {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        let _ = this.load_now().await;
                    });
                }
                Ok(c)
            }
            _ => {
                let _guard = self.inner.loading.lock().await;
                // another request may have loaded them while this one waited
                let now = self.inner.clock.now();
                {
                    let state = self.inner.state.read().expect("credentials state");
                    if let Some(c) =
                        state.current.as_ref().filter(|c| usable(c, now) || (state.stale && backing_off(&state, now)))
                    {
                        return Ok(c.clone());
                    }
                    // the last load failed moments ago: fail fast instead of a load per request
                    if let Some(wait) = state.retry_at.and_then(|t| t.duration_since(now).ok()) {
                        return Err(CredentialsError::not_loaded(format!(
                            "no valid AWS credentials: the last {} load(s) failed, next attempt in {} s (see the log)",
                            state.failures,
                            wait.as_secs() + 1
                        )));
                    }
                }
                self.load_now().await
            }
        }
    }

    /// Calls the provider chain (the caller holds `loading`) and records the outcome.
    async fn load_now(&self) -> Result<Credentials, CredentialsError> {
        let Some(provider) = &self.inner.provider else {
            return Err(CredentialsError::not_loaded(
                "no AWS credentials are configured (environment, profile, web identity, ECS or EC2)",
            ));
        };
        self.inner.loads.fetch_add(1, Ordering::Relaxed);
        let loaded = match tokio::time::timeout(LOAD_TIMEOUT, provider.provide_credentials()).await {
            Ok(r) => r,
            Err(_) => Err(CredentialsError::provider_timed_out(LOAD_TIMEOUT)),
        };
        let now = self.inner.clock.now();
        let mut state = self.inner.state.write().expect("credentials state");
        match loaded {
            Ok(creds) => {
                let next = after_load(&state, now, Ok(creds.clone()));
                if next.stale {
                    tracing::warn!(
                        expires = ?creds.expiry(),
                        aws_clock_skew_ms = self.inner.clock.skew_ms(),
                        next_load_in_secs = next.retry_at.and_then(|t| t.duration_since(now).ok()).map(|d| d.as_secs()),
                        "the AWS credentials just loaded have expired by AWS's clock; they are used anyway, and loaded again with backoff (is the host's clock right?)"
                    );
                } else {
                    tracing::debug!(expires = ?creds.expiry(), refresh_at = ?next.refresh_at, "AWS credentials loaded");
                }
                *state = next;
                Ok(creds)
            }
            Err(e) => {
                self.inner.load_failures.fetch_add(1, Ordering::Relaxed);
                let next = after_load(&state, now, Err(()));
                let kept = state.current.as_ref().filter(|c| usable(c, now)).cloned();
                let error = crate::net::error_chain(&e);
                match &kept {
                    Some(c) => tracing::warn!(
                        error = %error,
                        failures = next.failures,
                        expires_in_secs = c.expiry().and_then(|x| x.duration_since(now).ok()).map(|d| d.as_secs()),
                        "cannot refresh the AWS credentials; the current ones are used until they expire, retrying"
                    ),
                    None => tracing::error!(error = %error, failures = next.failures, "cannot load AWS credentials"),
                }
                *state = next;
                kept.ok_or(e)
            }
        }
    }
}

impl ProvideCredentials for CredentialsCache {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn creds(expiry: Option<SystemTime>) -> Credentials {
        Credentials::new("AKID", "secret", None, expiry, "test")
    }

    #[test]
    fn the_buffer_is_a_quarter_of_the_life_at_most_five_minutes() {
        assert_eq!(buffer(Duration::from_secs(40)), Duration::from_secs(10));
        assert_eq!(buffer(Duration::from_secs(3600)), Duration::from_secs(300));
        assert_eq!(buffer(Duration::from_secs(15 * 60)), Duration::from_secs(225));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(refresh_time(&creds(Some(t0 + Duration::from_secs(40))), t0), t0 + Duration::from_secs(30));
        assert_eq!(refresh_time(&creds(None), t0), t0 + NO_EXPIRY_REFRESH);
        // credentials with under 5 minutes left (the old cache fetched these per request)
        assert_eq!(refresh_time(&creds(Some(t0 + Duration::from_secs(120))), t0), t0 + Duration::from_secs(90));
    }

    #[test]
    fn requests_use_refresh_ahead_or_wait_by_the_state() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(decide(&State::default(), t0), Decision::Load);
        let fresh = after_load(&State::default(), t0, Ok(creds(Some(s(40)))));
        assert_eq!(decide(&fresh, s(1)), Decision::Use);
        assert_eq!(decide(&fresh, s(29)), Decision::Use);
        assert_eq!(decide(&fresh, s(30)), Decision::UseAndRefresh);
        assert_eq!(decide(&fresh, s(35)), Decision::Load, "within the expiry margin");
        // a failed refresh keeps the credentials and backs off: 1 s, 2 s, 4 s … at most 60 s
        let failed = after_load(&fresh, s(30), Err(()));
        assert_eq!(failed.current, fresh.current);
        assert_eq!(decide(&failed, s(30)), Decision::Use);
        assert_eq!(decide(&failed, s(31)), Decision::UseAndRefresh);
        let failed = after_load(&failed, s(31), Err(()));
        assert_eq!(failed.retry_at, Some(s(33)));
        let mut many = failed.clone();
        for _ in 0..20 {
            many = after_load(&many, s(31), Err(()));
        }
        assert_eq!(many.retry_at, Some(s(91)));
        let healed = after_load(&many, s(32), Ok(creds(Some(s(72)))));
        assert_eq!((healed.failures, healed.retry_at, decide(&healed, s(33))), (0, None, Decision::Use));
        // without an expiry: used for 15 minutes, then read again in the background
        let forever = after_load(&State::default(), t0, Ok(creds(None)));
        assert_eq!(decide(&forever, s(899)), Decision::Use);
        assert_eq!(decide(&forever, s(900)), Decision::UseAndRefresh);
    }

    /// A provider whose every call returns a key living `life`, or fails while `failing`.
    #[derive(Debug, Clone)]
    struct Rotating {
        calls: Arc<AtomicU32>,
        failing: Arc<std::sync::atomic::AtomicBool>,
        clock: Clock,
        life: Duration,
    }

    impl ProvideCredentials for Rotating {
        fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let out = if self.failing.load(Ordering::SeqCst) {
                Err(CredentialsError::provider_error("the STS endpoint is throttling"))
            } else {
                Ok(Credentials::new(format!("AKID{n}"), "s", None, Some(self.clock.now() + self.life), "test"))
            };
            provider::future::ProvideCredentials::ready(out)
        }
    }

    fn rotating(life: Duration) -> (CredentialsCache, Rotating) {
        let clock = Clock::default();
        let p = Rotating { calls: Arc::default(), failing: Arc::default(), clock: clock.clone(), life };
        (CredentialsCache::new(Some(SharedCredentialsProvider::new(p.clone())), clock), p)
    }

    #[tokio::test]
    async fn many_requests_share_one_load() {
        let (cache, p) = rotating(Duration::from_secs(40));
        let all = futures_util::future::join_all((0..200).map(|_| cache.get())).await;
        assert!(all.iter().all(|c| c.as_ref().unwrap().access_key_id() == "AKID0"));
        for _ in 0..1000 {
            cache.get().await.unwrap();
        }
        assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn keys_are_refreshed_ahead_of_expiry_in_the_background() {
        let (cache, p) = rotating(Duration::from_secs(40));
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID0");
        p.clock.advance_for_test(Duration::from_secs(31));
        // due: this request still signs with the current key, the refresh runs beside it
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID0");
        tokio::task::yield_now().await;
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID1");
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_valid_key_until_it_expires() {
        let (cache, p) = rotating(Duration::from_secs(40));
        cache.get().await.unwrap();
        p.failing.store(true, Ordering::SeqCst);
        p.clock.advance_for_test(Duration::from_secs(31));
        for _ in 0..100 {
            assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID0");
            tokio::task::yield_now().await;
        }
        assert_eq!(p.calls.load(Ordering::SeqCst), 2, "one refresh, then the backoff");
        // expired and still failing: an error that says so, without a load per request
        p.clock.advance_for_test(Duration::from_secs(10));
        assert!(cache.get().await.is_err());
        let calls = p.calls.load(Ordering::SeqCst);
        for _ in 0..100 {
            assert!(cache.get().await.is_err());
        }
        assert_eq!(p.calls.load(Ordering::SeqCst), calls, "failing fast during the backoff");
        p.failing.store(false, Ordering::SeqCst);
        p.clock.advance_for_test(Duration::from_secs(61));
        assert!(cache.get().await.is_ok());
        assert_eq!((cache.loads(), cache.load_failures()), (4, 2));
    }

    #[tokio::test]
    async fn no_provider_is_a_clear_error() {
        let cache = CredentialsCache::new(None, Clock::default());
        let e = cache.get().await.unwrap_err();
        assert!(
            e.to_string().contains("no AWS credentials") || crate::net::error_chain(&e).contains("no AWS credentials")
        );
    }

    /// Issue 30: keys living 40 s by the host's clock while AWS's clock is 10 minutes ahead look
    /// expired the moment they arrive; they were loaded again for every request (128 loads for
    /// 128 requests). Now they are used, and the next load waits with backoff.
    #[tokio::test]
    async fn keys_expired_on_arrival_by_aws_clock_are_used_and_loaded_again_with_backoff() {
        let host = Clock::default();
        let p = Rotating { calls: Arc::default(), failing: Arc::default(), clock: host, life: Duration::from_secs(40) };
        let aws = Clock::default();
        aws.advance_for_test(Duration::from_secs(600));
        let cache = CredentialsCache::new(Some(SharedCredentialsProvider::new(p.clone())), aws.clone());
        for _ in 0..128 {
            assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID0");
        }
        assert_eq!(p.calls.load(Ordering::SeqCst), 1, "one load, not one per request");
        // the backoff over: one load again (its keys look expired too), then 2 s of backoff
        aws.advance_for_test(Duration::from_secs(1));
        for _ in 0..128 {
            cache.get().await.unwrap();
        }
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn keys_expired_on_arrival_back_off_as_a_failed_load_does() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = |secs| t0 + Duration::from_secs(secs);
        let stale = after_load(&State::default(), s(600), Ok(creds(Some(s(40)))));
        assert_eq!((stale.stale, stale.failures, stale.retry_at), (true, 1, Some(s(601))));
        assert_eq!(decide(&stale, s(600)), Decision::Use);
        assert_eq!(decide(&stale, s(601)), Decision::Load);
        let again = after_load(&stale, s(601), Ok(creds(Some(s(41)))));
        assert_eq!(again.retry_at, Some(s(603)), "doubling");
        let healed = after_load(&again, s(603), Ok(creds(Some(s(1000)))));
        assert_eq!((healed.stale, healed.failures, decide(&healed, s(604))), (false, 0, Decision::Use));
    }
}
