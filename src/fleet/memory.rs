//! The fleet's store in memory, on tokio's clock: what the simulation runs the fleet on (paused
//! time, fault windows where it is away). Its answers are Redis's on the same calls
//! (`tests/e2e/fleet.rs` runs one sequence of calls against both).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::store::{FleetStore, Found, StoreError, StoreResult, INSTANCES_KEY};
use crate::sqs::BoxFuture;

/// A key's value: an idempotency claim (its owner) or a completed key.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    InProgress(String),
    Completed,
}

#[derive(Default)]
struct State {
    /// Sorted sets of slots (and the instances' heartbeats): member → expiry.
    sets: HashMap<String, HashMap<String, Instant>>,
    /// GCRA: the theoretical arrival time of each rate key.
    tats: HashMap<String, Instant>,
    keys: HashMap<String, (Value, Instant)>,
}

/// The store in memory. While [`MemoryStore::set_away`] holds it, every call fails, as calls to
/// a Redis that cannot be reached do.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    away: AtomicBool,
    calls: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Makes every call fail (`true`) or answer again (`false`).
    pub fn set_away(&self, away: bool) {
        self.away.store(away, Ordering::SeqCst);
    }

    /// Calls made so far (answered or not): the round trips a Redis would have had.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The unexpired members of `key`'s set now.
    pub fn held(&self, key: &str) -> usize {
        let now = Instant::now();
        self.lock().sets.get(key).map_or(0, |s| s.values().filter(|e| **e > now).count())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state, unless the store is away.
    fn reach(&self) -> StoreResult<std::sync::MutexGuard<'_, State>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.away.load(Ordering::SeqCst) {
            return Err(StoreError("the store cannot be reached (simulated)".into()));
        }
        Ok(self.lock())
    }
}

impl State {
    /// The set `key` without its expired members.
    fn live_set(&mut self, key: &str, now: Instant) -> &mut HashMap<String, Instant> {
        let set = self.sets.entry(key.to_string()).or_default();
        set.retain(|_, expiry| *expiry > now);
        set
    }

    /// `key`'s value unless it expired.
    fn live_key(&mut self, key: &str, now: Instant) -> Option<(Value, Instant)> {
        match self.keys.get(key) {
            Some((_, expiry)) if *expiry <= now => {
                self.keys.remove(key);
                None
            }
            other => other.cloned(),
        }
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl FleetStore for MemoryStore {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        limit: usize,
        ttl: Duration,
        member: &'a str,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        ready(self.reach().map(|mut s| {
            let now = Instant::now();
            let set = s.live_set(key, now);
            let taken = set.len() < limit;
            if taken {
                set.insert(member.to_string(), now + ttl);
            }
            taken
        }))
    }

    fn release<'a>(&'a self, key: &'a str, member: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        ready(self.reach().map(|mut s| {
            if let Some(set) = s.sets.get_mut(key) {
                set.remove(member);
            }
        }))
    }

    fn heartbeat<'a>(
        &'a self,
        instance: &'a str,
        held: &'a [(String, String)],
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<usize>> {
        ready(self.reach().map(|mut s| {
            let now = Instant::now();
            for (key, member) in held {
                // only members still there (ZADD XX)
                if let Some(expiry) = s.sets.get_mut(key).and_then(|set| set.get_mut(member)) {
                    *expiry = now + ttl;
                }
            }
            s.sets.entry(INSTANCES_KEY.to_string()).or_default().insert(instance.to_string(), now + ttl);
            s.live_set(INSTANCES_KEY, now).len()
        }))
    }

    fn rate<'a>(
        &'a self,
        key: &'a str,
        interval_ms: f64,
        burst: u32,
        cost: u32,
    ) -> BoxFuture<'a, StoreResult<Option<Duration>>> {
        ready(self.reach().map(|mut s| {
            let now = Instant::now();
            let tat = s.tats.get(key).copied().unwrap_or(now).max(now);
            let ahead_ms = tat.duration_since(now).as_secs_f64() * 1000.0;
            let new_ahead = ahead_ms + interval_ms * f64::from(cost);
            let wait = new_ahead - interval_ms * f64::from(burst);
            if wait > 0.001 {
                return Some(Duration::from_millis(wait.ceil() as u64));
            }
            s.tats.insert(key.to_string(), now + Duration::from_secs_f64(new_ahead / 1000.0));
            None
        }))
    }

    fn claim<'a>(&'a self, entries: &'a [(String, String)], ttl: Duration) -> BoxFuture<'a, StoreResult<Vec<Found>>> {
        ready(self.reach().map(|mut s| {
            let now = Instant::now();
            entries
                .iter()
                .map(|(key, owner)| match s.live_key(key, now) {
                    None => {
                        s.keys.insert(key.clone(), (Value::InProgress(owner.clone()), now + ttl));
                        Found::Claimed
                    }
                    Some((Value::Completed, _)) => Found::Completed,
                    Some((Value::InProgress(o), _)) if o == *owner => {
                        s.keys.insert(key.clone(), (Value::InProgress(o), now + ttl));
                        Found::Claimed
                    }
                    Some((Value::InProgress(_), expiry)) => {
                        Found::Busy(expiry.duration_since(now).max(Duration::from_millis(1)))
                    }
                })
                .collect()
        }))
    }

    fn renew_claims<'a>(&'a self, entries: &'a [(String, String)], ttl: Duration) -> BoxFuture<'a, StoreResult<()>> {
        ready(self.reach().map(|mut s| {
            let now = Instant::now();
            for (key, owner) in entries {
                if let Some((Value::InProgress(o), _)) = s.live_key(key, now) {
                    if o == *owner {
                        s.keys.insert(key.clone(), (Value::InProgress(o), now + ttl));
                    }
                }
            }
        }))
    }

    fn finish<'a>(
        &'a self,
        entries: &'a [(String, String, bool)],
        completed_ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        ready(self.reach().map(|mut s| {
            let now = Instant::now();
            for (key, owner, completed) in entries {
                if let Some((Value::InProgress(o), _)) = s.live_key(key, now) {
                    if o == *owner {
                        if *completed {
                            s.keys.insert(key.clone(), (Value::Completed, now + completed_ttl));
                        } else {
                            s.keys.remove(key);
                        }
                    }
                }
            }
        }))
    }
}
