//! The live figures of one pipeline that the admin API shows (`GET /pipelines`): pollers, leases,
//! the byte budget, the concurrency limit, the breaker, the last error, the busiest groups.
//!
//! The admin API only reads them; the stages write them as they go, through the handles of
//! [`crate::metrics::PipelineMetrics`] that hold an `Arc<Status>`. It is its own module at the
//! bottom of the layers (`tests/offline/structure.rs`) because every stage writes it and no stage
//! may import `admin`, which comes last.

/// Live figures of one pipeline for the admin API.
#[derive(Default)]
pub struct Status {
    pub pollers: std::sync::atomic::AtomicUsize,
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// Bytes of the byte budget taken, and the budget (0: none).
    pub in_flight_bytes: std::sync::atomic::AtomicUsize,
    pub max_outstanding_bytes: std::sync::atomic::AtomicUsize,
    /// Batches allowed in flight now, and whether the limit is adaptive.
    pub concurrency_limit: std::sync::atomic::AtomicUsize,
    pub adaptive: std::sync::atomic::AtomicBool,
    /// The breaker's phase name (`closed`, `open`, `half_open`); empty: none yet.
    pub breaker: std::sync::Mutex<&'static str>,
    last_error: std::sync::Mutex<Option<(std::time::SystemTime, String)>>,
    /// The busiest message groups: (group, messages in batches, messages waiting behind the cap).
    noisiest_groups: std::sync::Mutex<Vec<(String, usize, usize)>>,
    /// The shared pool the pipeline takes its slots from, if any.
    pub pool: std::sync::Mutex<Option<String>>,
}

impl Status {
    pub fn set_noisiest_groups(&self, groups: Vec<(String, usize, usize)>) {
        *self.noisiest_groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = groups;
    }

    pub fn noisiest_groups(&self) -> Vec<(String, usize, usize)> {
        self.noisiest_groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn set_last_error(&self, error: impl Into<String>) {
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((std::time::SystemTime::now(), error.into()));
    }

    /// The last error and when it happened (seconds since the epoch).
    pub fn last_error(&self) -> Option<(u64, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(at, e)| (at.duration_since(std::time::SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()), e.clone()))
    }

    pub fn pollers(&self) -> usize {
        self.pollers.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn breaker(&self) -> &'static str {
        let b = *self.breaker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if b.is_empty() {
            "closed"
        } else {
            b
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }
}
