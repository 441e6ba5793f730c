//! One budget for a whole fleet: concurrency shared by every instance of the service, through
//! Redis (or Valkey), `[fleet] redis_url`.
//!
//! A pipeline whose target names `fleet_max_concurrency` takes, for each batch, a fleet slot
//! after its local one: a member of a sorted set in Redis (`sqs-poller:{pipeline}:slots`) whose
//! score is its expiry, on Redis's own clock. A Lua script takes a slot atomically (dropping
//! expired ones first) when fewer than the limit are held; the instance renews the slots it holds
//! every third of their time to live, and gives each back when its batch ends. The slots of an
//! instance that is killed expire by themselves (`fleet.slot_ttl_secs`, 30 s by default).
//!
//! When Redis cannot be reached, the service goes on with a local share of the budget: the
//! limit divided by the instances last seen (each instance keeps a heartbeat in
//! `sqs-poller:instances`), at least one; `sqs_poller_fleet_shared` is 0 meanwhile and the log
//! says so once. New batches take shared slots again as soon as Redis answers; batches running on
//! the local share finish on it, and new ones wait for them before they take shared slots; the
//! other way round, shared slots still held when Redis goes away count against the local share.
//! An instance never holds more than its share across both, so the fleet runs at most its shared
//! limit plus the local shares of instances cut off from Redis while others reach it.
//!
//! One failed call is enough: from then on the instance does not wait on Redis (a Redis that
//! hangs would cost every batch the call's 2 s timeout) but asks again every second
//! ([`PROBE_EVERY`], the heartbeat) until it answers.
//!
//! The state lives behind [`store::FleetStore`]: Redis in the service ([`store::RedisStore`]),
//! memory in the simulation (`memory::MemoryStore`, built for tests: the same answers).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod idempotency;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod store;

use store::FleetStore;

/// While the store does not answer, the heartbeat asks again this often.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The fleet's shared state, used by every pipeline of the instance.
pub struct Fleet {
    store: Arc<dyn FleetStore>,
    /// This instance's name in the store (its slots' members start with it).
    instance: String,
    slot_ttl: Duration,
    /// Instances seen at the last heartbeat (1 until one answered).
    instances: AtomicUsize,
    /// The store answered the last call: while it does not, nothing waits on it.
    shared: AtomicBool,
    /// Slots held, by key and member: what the heartbeat renews.
    held: Mutex<HashSet<(String, String)>>,
    /// Each budget's count in this instance, shared by the pipelines that name its key.
    counts: Mutex<std::collections::HashMap<String, std::sync::Weak<KeyCount>>>,
    next_member: AtomicU64,
    metrics: crate::metrics::FleetMetrics,
}

/// Why Redis cannot be used at all (a bad URL).
#[derive(Debug, thiserror::Error)]
#[error("fleet.redis_url: {0}")]
pub struct FleetError(String);

impl Fleet {
    /// The fleet behind `redis_url` (`redis://` or `rediss://` with TLS; user and password in the
    /// URL for AUTH); connects lazily and reconnects by itself.
    ///
    /// # Errors
    /// [`FleetError`] when the URL cannot be used.
    pub fn new(redis_url: &str, slot_ttl: Duration) -> Result<Arc<Fleet>, FleetError> {
        let store = store::RedisStore::new(redis_url).map_err(|e| FleetError(e.0))?;
        let instance = format!("{}-{}-{:08x}", hostname(), std::process::id(), fastrand::u32(..));
        Ok(Fleet::with_store(Arc::new(store), &instance, slot_ttl))
    }

    /// The fleet on `store`, as the instance named `instance`.
    pub fn with_store(store: Arc<dyn FleetStore>, instance: &str, slot_ttl: Duration) -> Arc<Fleet> {
        Arc::new(Fleet {
            store,
            instance: instance.to_string(),
            slot_ttl,
            instances: AtomicUsize::new(1),
            shared: AtomicBool::new(true),
            held: Mutex::new(HashSet::new()),
            counts: Mutex::new(std::collections::HashMap::new()),
            next_member: AtomicU64::new(0),
            metrics: crate::metrics::FleetMetrics::register(),
        })
    }

    /// Renews held slots and the heartbeat every third of the slots' time to live (every
    /// [`PROBE_EVERY`] while the store does not answer), until `stop`.
    pub async fn keep_alive(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            self.heartbeat().await;
            let every = if self.is_shared() { self.slot_ttl / 3 } else { PROBE_EVERY };
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn heartbeat(&self) {
        let held: Vec<(String, String)> = self.held.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        match self.store.heartbeat(&self.instance, &held, self.slot_ttl).await {
            Ok(n) => {
                self.instances.store(n.max(1), Ordering::Relaxed);
                self.answered();
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Whether the store answered the last call: while not, the fleet's parts do not call it
    /// (the heartbeat does, every [`PROBE_EVERY`]).
    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Relaxed)
    }

    fn answered(&self) {
        if !self.shared.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis answers again: back on the fleet's shared budget");
        }
        self.metrics.shared.set(1.0);
    }

    fn failed(&self, e: &store::StoreError) {
        self.metrics.errors.increment(1);
        if self.shared.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, instances = self.instances.load(Ordering::Relaxed), "Redis cannot be used (unreachable, timed out, or it refused the connection or its credentials): each pipeline goes on with its local share of the fleet budget (fleet_max_concurrency / instances last seen) and without the idempotency window; asking again every second");
        }
        self.metrics.shared.set(0.0);
    }

    /// The slots of `pipeline` in the budget `key`, at most `limit` held across the fleet.
    pub fn slots(self: &Arc<Self>, pipeline: &str, key: &str, limit: usize) -> Arc<FleetSlots> {
        let held = metrics::gauge!(crate::metrics::FLEET_SLOTS_HELD, "pipeline" => pipeline.to_string());
        held.set(0.0);
        let key = format!("sqs-poller:{key}:slots");
        let count = {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            counts.retain(|_, c| c.strong_count() > 0);
            match counts.get(&key).and_then(std::sync::Weak::upgrade) {
                Some(c) => c,
                None => {
                    let c = Arc::new(KeyCount::default());
                    counts.insert(key.clone(), Arc::downgrade(&c));
                    c
                }
            }
        };
        Arc::new(FleetSlots {
            held,
            wait: metrics::histogram!(crate::metrics::FLEET_SLOT_WAIT, "pipeline" => pipeline.to_string()),
            fleet: self.clone(),
            key,
            limit,
            count,
            pipeline: pipeline.to_string(),
        })
    }
}

impl Fleet {
    /// The fleet-wide rate of `pipeline` in the budget `key`: `per_sec` messages a second across the fleet, in
    /// bursts of at most `burst` (a whole batch).
    pub fn rate(self: &Arc<Self>, pipeline: &str, key: &str, per_sec: u32, burst: u32) -> Arc<FleetRate> {
        let rate_limited = metrics::counter!(crate::metrics::FLEET_RATE_LIMITED, "pipeline" => pipeline.to_string());
        rate_limited.increment(0);
        Arc::new(FleetRate {
            rate_limited,
            fleet: self.clone(),
            key: format!("sqs-poller:{key}:rate"),
            per_sec: per_sec.max(1),
            burst: burst.max(1),
            local: Mutex::new(None),
        })
    }
}

/// One pipeline's fleet-wide rate (`target.fleet_rate_per_sec`), in messages a second.
pub struct FleetRate {
    fleet: Arc<Fleet>,
    key: String,
    per_sec: u32,
    burst: u32,
    /// While the store is away: a limiter of the local share (the rate divided by the instances
    /// last seen), made again when the share changes.
    local: Mutex<Option<(u32, Arc<LocalLimiter>)>>,
    /// `sqs_poller_fleet_rate_limited_batches_total` of the pipeline.
    rate_limited: metrics::Counter,
}

/// governor's limiter on tokio's clock (which the simulation pauses and advances).
type LocalLimiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    TokioClock,
    governor::middleware::NoOpMiddleware<std::time::Instant>,
>;

/// tokio's clock for governor: under paused time a wait is simulated, as every other wait.
#[derive(Debug, Clone, Default)]
struct TokioClock;

impl governor::clock::Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

impl FleetRate {
    /// Waits until `n` messages may go, by the fleet's rate while the store answers, else by
    /// the local share. Whether it had to wait.
    pub async fn until_ready(&self, n: u32) -> bool {
        let n = n.clamp(1, self.burst);
        let interval_ms = 1000.0 / f64::from(self.per_sec);
        let mut waited = false;
        while self.fleet.is_shared() {
            match self.fleet.store.rate(&self.key, interval_ms, self.burst, n).await {
                Ok(None) => {
                    self.fleet.answered();
                    if waited {
                        self.rate_limited.increment(1);
                    }
                    return waited;
                }
                Ok(Some(wait)) => {
                    self.fleet.answered();
                    waited = true;
                    tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                }
                Err(e) => self.fleet.failed(&e),
            }
        }
        self.until_local(n).await;
        self.rate_limited.increment(1);
        true
    }

    /// Waits for `n` messages of the local share (one at a time when the share's burst is
    /// smaller than a batch).
    async fn until_local(&self, n: u32) {
        let (limiter, burst) = self.local_limiter();
        let (step, times) = if n <= burst { (n, 1) } else { (1, n) };
        let step = std::num::NonZeroU32::new(step).expect("at least 1");
        for _ in 0..times {
            // (a step is never above the burst: the limiter always has room for it in time)
            while let Ok(Err(not_until)) = limiter.check_n(step) {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&TokioClock));
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            }
        }
    }

    /// The local share's limiter and its burst.
    fn local_limiter(&self) -> (Arc<LocalLimiter>, u32) {
        let instances = u32::try_from(self.fleet.instances.load(Ordering::Relaxed)).unwrap_or(u32::MAX).max(1);
        let share = (self.per_sec / instances).max(1);
        let burst = share.min(self.burst);
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        match &*local {
            Some((s, l)) if *s == share => (l.clone(), burst),
            _ => {
                let quota = governor::Quota::per_second(std::num::NonZeroU32::new(share).expect("at least 1"))
                    .allow_burst(std::num::NonZeroU32::new(burst).expect("at least 1"));
                let limiter = Arc::new(governor::RateLimiter::direct_with_clock(quota, TokioClock));
                *local = Some((share, limiter.clone()));
                (limiter, burst)
            }
        }
    }
}

/// A pipeline's parts of the fleet: each `None` when its key is not set (or `[fleet]` is off).
#[derive(Default, Clone)]
pub struct PipelineFleet {
    /// `target.fleet_max_concurrency`.
    pub slots: Option<Arc<FleetSlots>>,
    /// `target.fleet_rate_per_sec`.
    pub rate: Option<Arc<FleetRate>>,
    /// `[pipelines.idempotency]`.
    pub idempotency: Option<Arc<idempotency::Idempotency>>,
}

impl PipelineFleet {
    /// The parts of `fleet` pipeline `p` names: its fleet slots, rate and idempotency window.
    /// Its slots and rate are keyed by `target.fleet_key` (by default its name): pipelines that
    /// name one key share one budget.
    pub fn of(fleet: &Arc<Fleet>, p: &crate::config::PipelineConfig) -> Self {
        let key = p.target.fleet_key.as_deref().unwrap_or(&p.name);
        PipelineFleet {
            slots: p.target.fleet_max_concurrency.map(|n| fleet.slots(&p.name, key, n)),
            rate: p.target.fleet_rate_per_sec.map(|r| fleet.rate(&p.name, key, r.get(), p.batch.size as u32)),
            idempotency: p.idempotency.as_ref().map(|i| fleet.idempotency(&p.name, i.key.clone(), i.ttl)),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "host".to_string(), |h| h.trim().to_string())
}

/// One pipeline's share of the fleet's concurrency.
pub struct FleetSlots {
    fleet: Arc<Fleet>,
    key: String,
    limit: usize,
    /// What this instance holds of the budget, with every pipeline of it that names the key.
    count: Arc<KeyCount>,
    pipeline: String,
    /// `sqs_poller_fleet_slots_held`, `sqs_poller_fleet_slot_wait_seconds` of the pipeline.
    held: metrics::Gauge,
    wait: metrics::Histogram,
}

/// A fleet slot, given back when dropped.
pub struct FleetSlot {
    slots: Arc<FleetSlots>,
    held: Held,
}

enum Held {
    Shared(String),
    Local,
}

/// What one instance holds of one budget (a `fleet_key`), across its pipelines that name it.
#[derive(Default)]
struct KeyCount {
    /// Slots of the local share, taken while the store is away.
    local: AtomicUsize,
    /// Shared slots: while the store is away they count against the local share (never more
    /// than the share across both).
    shared: AtomicUsize,
}

impl FleetSlots {
    /// The local share: the limit divided by the instances last seen, at least one.
    pub fn local_share(&self) -> usize {
        (self.limit / self.fleet.instances.load(Ordering::Relaxed).max(1)).max(1)
    }

    /// Waits for a fleet slot: a shared one while Redis answers, else one of the local share.
    pub async fn acquire(self: &Arc<Self>) -> FleetSlot {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(slot) = self.try_acquire().await {
                self.wait.record(started.elapsed().as_secs_f64());
                return slot;
            }
            tokio::time::sleep(pause + Duration::from_millis(fastrand::u64(..10))).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn try_acquire(self: &Arc<Self>) -> Option<FleetSlot> {
        let fleet = &self.fleet;
        if !fleet.is_shared() {
            return self.try_local();
        }
        // back on the store: the local share's batches end first (never both at once)
        if self.count.local.load(Ordering::Acquire) > 0 {
            return None;
        }
        let member = format!("{}:{}", fleet.instance, fleet.next_member.fetch_add(1, Ordering::Relaxed));
        match fleet.store.acquire(&self.key, self.limit, fleet.slot_ttl, &member).await {
            Ok(taken) => {
                fleet.answered();
                taken.then(|| {
                    fleet.held.lock().unwrap_or_else(|e| e.into_inner()).insert((self.key.clone(), member.clone()));
                    self.count.shared.fetch_add(1, Ordering::AcqRel);
                    self.held.increment(1.0);
                    FleetSlot { slots: self.clone(), held: Held::Shared(member) }
                })
            }
            Err(e) => {
                fleet.failed(&e);
                self.try_local()
            }
        }
    }

    /// A slot of the local share, if one is free: the shared slots still held count against
    /// it.
    fn try_local(self: &Arc<Self>) -> Option<FleetSlot> {
        let share = self.local_share();
        let count = &self.count;
        let taken = count.local.fetch_update(Ordering::AcqRel, Ordering::Acquire, |local| {
            (local + count.shared.load(Ordering::Acquire) < share).then_some(local + 1)
        });
        if taken.is_err() {
            return None;
        }
        self.held.increment(1.0);
        tracing::debug!(pipeline = %self.pipeline, share, "a batch runs on the local share of the fleet budget");
        Some(FleetSlot { slots: self.clone(), held: Held::Local })
    }
}

impl Drop for FleetSlot {
    fn drop(&mut self) {
        let slots = self.slots.clone();
        slots.held.decrement(1.0);
        match std::mem::replace(&mut self.held, Held::Shared(String::new())) {
            Held::Local => {
                slots.count.local.fetch_sub(1, Ordering::AcqRel);
            }
            Held::Shared(member) if !member.is_empty() => {
                slots.count.shared.fetch_sub(1, Ordering::AcqRel);
                slots.fleet.held.lock().unwrap_or_else(|e| e.into_inner()).remove(&(slots.key.clone(), member.clone()));
                // given back in the background; were the store away, it expires by itself
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Err(e) = slots.fleet.store.release(&slots.key, &member).await {
                            slots.fleet.failed(&e);
                        }
                    });
                }
            }
            Held::Shared(_) => {}
        }
    }
}
