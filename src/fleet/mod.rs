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
//! the local share finish on it, so for a while after Redis comes back the fleet may run up to
//! its shared limit plus the local shares.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod idempotency;

use redis::aio::ConnectionManager;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Takes a slot: `KEYS[1]` the slots, `ARGV` limit, time to live (ms), member. 1: taken.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
";

/// Renews held slots and the instance's heartbeat: `KEYS[1]` the instances, `KEYS[2..]` the slot
/// sets, `ARGV[1]` time to live (ms), `ARGV[2]` the instance, then `ARGV[3..]` one member per
/// slot set. Returns the live instances.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
";

/// GCRA over the fleet: `KEYS[1]` the theoretical arrival time (ms, Redis's clock), `ARGV` the
/// emission interval (ms per message), the burst (messages), the cost (messages). 0: admitted;
/// else the ms to wait before trying again.
const RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
-- relative to now: milliseconds since the epoch are too large for the sums to stay exact
local ahead = math.max(tonumber(redis.call('GET', KEYS[1]) or now) - now, 0)
local new_ahead = ahead + interval * tonumber(ARGV[3])
local wait = new_ahead - interval * tonumber(ARGV[2])
if wait > 0.001 then
  return math.ceil(wait)
end
redis.call('SET', KEYS[1], string.format('%.3f', now + new_ahead), 'PX', math.ceil(new_ahead) + 1000)
return 0
";

const INSTANCES_KEY: &str = "sqs-poller:instances";

/// The fleet's connection to Redis, shared by every pipeline of the instance.
pub struct Fleet {
    redis: ConnectionManager,
    /// This instance's name in Redis (its slots' members start with it).
    instance: String,
    slot_ttl: Duration,
    /// Instances seen at the last heartbeat (1 until one answered).
    instances: AtomicUsize,
    /// Redis answered the last call.
    shared: AtomicBool,
    /// Slots held, by key and member: what the renewals renew.
    held: Mutex<HashSet<(String, String)>>,
    next_member: AtomicU64,
    acquire: redis::Script,
    renew: redis::Script,
    rate: redis::Script,
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
        let client = redis::Client::open(redis_url).map_err(|e| FleetError(e.to_string()))?;
        let timeout = Some(Duration::from_secs(2));
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let redis = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| FleetError(e.to_string()))?;
        let instance = format!("{}-{}-{:08x}", hostname(), std::process::id(), fastrand::u32(..));
        Ok(Arc::new(Fleet {
            redis,
            instance,
            slot_ttl,
            instances: AtomicUsize::new(1),
            shared: AtomicBool::new(true),
            held: Mutex::new(HashSet::new()),
            next_member: AtomicU64::new(0),
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
            rate: redis::Script::new(RATE),
            metrics: crate::metrics::FleetMetrics::register(),
        }))
    }

    /// Renews held slots and the heartbeat every third of the slots' time to live, until
    /// `stop`.
    pub async fn keep_alive(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let every = self.slot_ttl / 3;
        loop {
            self.renew_now().await;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn renew_now(&self) {
        let held: Vec<(String, String)> = self.held.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let mut call = self.renew.key(INSTANCES_KEY);
        for (key, _) in &held {
            call.key(key);
        }
        call.arg(self.slot_ttl.as_millis() as u64).arg(&self.instance);
        for (_, member) in &held {
            call.arg(member);
        }
        let mut redis = self.redis.clone();
        match call.invoke_async::<usize>(&mut redis).await {
            Ok(n) => {
                self.instances.store(n.max(1), Ordering::Relaxed);
                self.answered();
            }
            Err(e) => self.failed(&e),
        }
    }

    fn answered(&self) {
        if !self.shared.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis answers again: back on the fleet's shared budget");
        }
        self.metrics.shared.set(1.0);
    }

    fn failed(&self, e: &redis::RedisError) {
        self.metrics.errors.increment(1);
        if self.shared.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, instances = self.instances.load(Ordering::Relaxed), "Redis cannot be reached: each pipeline goes on with its local share of the fleet budget (fleet_max_concurrency / instances last seen)");
        }
        self.metrics.shared.set(0.0);
    }

    /// The slots of `pipeline`, at most `limit` held across the fleet.
    pub fn slots(self: &Arc<Self>, pipeline: &str, limit: usize) -> Arc<FleetSlots> {
        let held = metrics::gauge!(crate::metrics::FLEET_SLOTS_HELD, "pipeline" => pipeline.to_string());
        held.set(0.0);
        Arc::new(FleetSlots {
            held,
            wait: metrics::histogram!(crate::metrics::FLEET_SLOT_WAIT, "pipeline" => pipeline.to_string()),
            fleet: self.clone(),
            key: format!("sqs-poller:{pipeline}:slots"),
            limit,
            local: Arc::new(Semaphore::new(limit)),
            local_taken: AtomicUsize::new(0),
            pipeline: pipeline.to_string(),
        })
    }
}

impl Fleet {
    /// The fleet-wide rate of `pipeline`: `per_sec` messages a second across the fleet, in
    /// bursts of at most `burst` (a whole batch).
    pub fn rate(self: &Arc<Self>, pipeline: &str, per_sec: u32, burst: u32) -> Arc<FleetRate> {
        let rate_limited = metrics::counter!(crate::metrics::FLEET_RATE_LIMITED, "pipeline" => pipeline.to_string());
        rate_limited.increment(0);
        Arc::new(FleetRate {
            rate_limited,
            fleet: self.clone(),
            key: format!("sqs-poller:{pipeline}:rate"),
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
    /// While Redis is away: a limiter of the local share (the rate divided by the instances
    /// last seen), made again when the share changes.
    local: Mutex<Option<(u32, Arc<governor::DefaultDirectRateLimiter>)>>,
    /// `sqs_poller_fleet_rate_limited_batches_total` of the pipeline.
    rate_limited: metrics::Counter,
}

impl FleetRate {
    /// Waits until `n` messages may go, by the fleet's rate while Redis answers, else by the
    /// local share. Whether it had to wait.
    pub async fn until_ready(&self, n: u32) -> bool {
        let n = n.clamp(1, self.burst);
        let interval_ms = 1000.0 / f64::from(self.per_sec);
        let mut waited = false;
        loop {
            let mut redis = self.fleet.redis.clone();
            let mut call = self.fleet.rate.key(&self.key);
            call.arg(interval_ms).arg(self.burst).arg(n);
            match call.invoke_async::<u64>(&mut redis).await {
                Ok(0) => {
                    self.fleet.answered();
                    if waited {
                        self.rate_limited.increment(1);
                    }
                    return waited;
                }
                Ok(wait_ms) => {
                    self.fleet.answered();
                    waited = true;
                    tokio::time::sleep(Duration::from_millis(wait_ms.min(5_000))).await;
                }
                Err(e) => {
                    self.fleet.failed(&e);
                    let limiter = self.local_limiter();
                    let n = std::num::NonZeroU32::new(n).expect("at least 1");
                    // the share's burst may be smaller than a batch: then one message at a time
                    if limiter.until_n_ready(n).await.is_err() {
                        for _ in 0..n.get() {
                            limiter.until_ready().await;
                        }
                    }
                    self.rate_limited.increment(1);
                    return true;
                }
            }
        }
    }

    fn local_limiter(&self) -> Arc<governor::DefaultDirectRateLimiter> {
        let instances = u32::try_from(self.fleet.instances.load(Ordering::Relaxed)).unwrap_or(u32::MAX).max(1);
        let share = (self.per_sec / instances).max(1);
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        match &*local {
            Some((s, l)) if *s == share => l.clone(),
            _ => {
                let quota = governor::Quota::per_second(std::num::NonZeroU32::new(share).expect("at least 1"))
                    .allow_burst(std::num::NonZeroU32::new(share.min(self.burst)).expect("at least 1"));
                let limiter = Arc::new(governor::RateLimiter::direct(quota));
                *local = Some((share, limiter.clone()));
                limiter
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "host".to_string(), |h| h.trim().to_string())
}

/// One pipeline's share of the fleet's concurrency.
pub struct FleetSlots {
    fleet: Arc<Fleet>,
    key: String,
    limit: usize,
    /// The local share while Redis is away: `limit` permits, of which only the share is used.
    local: Arc<Semaphore>,
    local_taken: AtomicUsize,
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
    Local(#[allow(dead_code)] OwnedSemaphorePermit),
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
        let member = format!("{}:{}", fleet.instance, fleet.next_member.fetch_add(1, Ordering::Relaxed));
        let mut redis = fleet.redis.clone();
        let mut call = fleet.acquire.key(&self.key);
        call.arg(self.limit).arg(fleet.slot_ttl.as_millis() as u64).arg(&member);
        match call.invoke_async::<i64>(&mut redis).await {
            Ok(taken) => {
                fleet.answered();
                (taken == 1).then(|| {
                    fleet.held.lock().unwrap_or_else(|e| e.into_inner()).insert((self.key.clone(), member.clone()));
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

    /// A permit of the local share, if one is free.
    fn try_local(self: &Arc<Self>) -> Option<FleetSlot> {
        let share = self.local_share();
        if self.local_taken.load(Ordering::Relaxed) >= share {
            return None;
        }
        let permit = self.local.clone().try_acquire_owned().ok()?;
        self.local_taken.fetch_add(1, Ordering::Relaxed);
        self.held.increment(1.0);
        tracing::debug!(pipeline = %self.pipeline, share, "a batch runs on the local share of the fleet budget");
        Some(FleetSlot { slots: self.clone(), held: Held::Local(permit) })
    }
}

impl Drop for FleetSlot {
    fn drop(&mut self) {
        let slots = self.slots.clone();
        slots.held.decrement(1.0);
        match std::mem::replace(&mut self.held, Held::Shared(String::new())) {
            Held::Local(permit) => {
                slots.local_taken.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            }
            Held::Shared(member) if !member.is_empty() => {
                slots.fleet.held.lock().unwrap_or_else(|e| e.into_inner()).remove(&(slots.key.clone(), member.clone()));
                let mut redis = slots.fleet.redis.clone();
                // given back in the background; were Redis away, it expires by itself
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let r: redis::RedisResult<i64> =
                            redis::cmd("ZREM").arg(&slots.key).arg(&member).query_async(&mut redis).await;
                        if let Err(e) = r {
                            slots.fleet.failed(&e);
                        }
                    });
                }
            }
            Held::Shared(_) => {}
        }
    }
}
