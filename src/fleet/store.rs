//! Where the fleet's shared state lives: the atomic operations the fleet needs, behind a trait
//! so that the simulation runs them in memory (`memory::MemoryStore`, built for tests, under paused
//! time) while the service runs them in Redis ([`RedisStore`], one Lua script each).
//!
//! Times are on the store's own clock (Redis's `TIME`), so instances whose clocks differ agree
//! on every expiry.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::sqs::BoxFuture;

/// The store could not be used (unreachable, timed out, refused).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What a claim of an idempotency key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Free (or already this owner's): claimed now.
    Claimed,
    /// Completed already.
    Completed,
    /// Held by another owner for about this long.
    Busy(Duration),
}

/// The fleet's atomic operations.
pub trait FleetStore: Send + Sync + 'static {
    /// Takes a slot of `key` for `member`, expiring after `ttl`, if fewer than `limit`
    /// unexpired ones are held. Whether it was taken.
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        limit: usize,
        ttl: Duration,
        member: &'a str,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// Gives a slot back.
    fn release<'a>(&'a self, key: &'a str, member: &'a str) -> BoxFuture<'a, StoreResult<()>>;
    /// Renews the slots held (`(key, member)`, only those still there) and `instance`'s
    /// heartbeat for `ttl`; the instances with a live heartbeat.
    fn heartbeat<'a>(
        &'a self,
        instance: &'a str,
        held: &'a [(String, String)],
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<usize>>;
    /// GCRA on `key`: `cost` messages at one per `interval_ms`, bursts of `burst`. `None`:
    /// admitted; else how long to wait before asking again.
    fn rate<'a>(
        &'a self,
        key: &'a str,
        interval_ms: f64,
        burst: u32,
        cost: u32,
    ) -> BoxFuture<'a, StoreResult<Option<Duration>>>;
    /// Claims each `(key, owner)` for `ttl` when it is free or the owner's already.
    fn claim<'a>(&'a self, entries: &'a [(String, String)], ttl: Duration) -> BoxFuture<'a, StoreResult<Vec<Found>>>;
    /// Renews the claims still held by their owners.
    fn renew_claims<'a>(&'a self, entries: &'a [(String, String)], ttl: Duration) -> BoxFuture<'a, StoreResult<()>>;
    /// Ends the claims still held by their owners: `true` completes the key for `completed_ttl`,
    /// `false` frees it.
    fn finish<'a>(
        &'a self,
        entries: &'a [(String, String, bool)],
        completed_ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>>;
}

/// The instances' heartbeats.
pub const INSTANCES_KEY: &str = "sqs-poller:instances";

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
const HEARTBEAT: &str = r"
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

/// Claims keys: `KEYS` the keys, `ARGV[1]` the claim's time to live (ms), then one owner per key.
/// Per key: 1 claimed, 2 completed already, or -ms: held by another message for that long.
const CLAIM: &str = r"
local out = {}
for i = 1, #KEYS do
  local owner = 'p:' .. ARGV[i + 1]
  local v = redis.call('GET', KEYS[i])
  if not v then
    redis.call('SET', KEYS[i], owner, 'PX', tonumber(ARGV[1]))
    out[i] = 1
  elseif v == 'c' then
    out[i] = 2
  elseif v == owner then
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]))
    out[i] = 1
  else
    out[i] = -math.max(redis.call('PTTL', KEYS[i]), 1)
  end
end
return out
";

/// Ends claims: `KEYS` the keys, `ARGV[1]` the completed keys' time to live (ms), then per key its
/// owner and `c` (completed) or `r` (given up). Only a claim still held by its owner is changed.
const FINISH: &str = r"
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == 'p:' .. ARGV[2 * i] then
    if ARGV[2 * i + 1] == 'c' then
      redis.call('SET', KEYS[i], 'c', 'PX', tonumber(ARGV[1]))
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
return 0
";

/// Renews claims while their batch runs: `KEYS` the keys, `ARGV[1]` ttl (ms), then the owners.
const RENEW_CLAIMS: &str = r"
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == 'p:' .. ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]))
  end
end
return 0
";

/// The store in Redis (or Valkey): each operation one Lua script, one round trip.
pub struct RedisStore {
    redis: ConnectionManager,
    acquire: redis::Script,
    heartbeat: redis::Script,
    rate: redis::Script,
    claim: redis::Script,
    finish: redis::Script,
    renew_claims: redis::Script,
}

/// Each call to Redis, connecting included, gives up after this long.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisStore {
    /// The store behind `redis_url` (`redis://` or `rediss://` with TLS; user and password in
    /// the URL for AUTH); connects lazily and reconnects by itself.
    ///
    /// # Errors
    /// When the URL cannot be used.
    pub fn new(redis_url: &str) -> StoreResult<RedisStore> {
        let client = redis::Client::open(redis_url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let redis = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisStore {
            redis,
            acquire: redis::Script::new(ACQUIRE),
            heartbeat: redis::Script::new(HEARTBEAT),
            rate: redis::Script::new(RATE),
            claim: redis::Script::new(CLAIM),
            finish: redis::Script::new(FINISH),
            renew_claims: redis::Script::new(RENEW_CLAIMS),
        })
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl FleetStore for RedisStore {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        limit: usize,
        ttl: Duration,
        member: &'a str,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let mut call = self.acquire.key(key);
            call.arg(limit).arg(ms(ttl)).arg(member);
            Ok(call.invoke_async::<i64>(&mut self.redis.clone()).await? == 1)
        })
    }

    fn release<'a>(&'a self, key: &'a str, member: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            redis::cmd("ZREM").arg(key).arg(member).query_async::<i64>(&mut self.redis.clone()).await?;
            Ok(())
        })
    }

    fn heartbeat<'a>(
        &'a self,
        instance: &'a str,
        held: &'a [(String, String)],
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<usize>> {
        Box::pin(async move {
            let mut call = self.heartbeat.key(INSTANCES_KEY);
            for (key, _) in held {
                call.key(key);
            }
            call.arg(ms(ttl)).arg(instance);
            for (_, member) in held {
                call.arg(member);
            }
            Ok(call.invoke_async::<usize>(&mut self.redis.clone()).await?)
        })
    }

    fn rate<'a>(
        &'a self,
        key: &'a str,
        interval_ms: f64,
        burst: u32,
        cost: u32,
    ) -> BoxFuture<'a, StoreResult<Option<Duration>>> {
        Box::pin(async move {
            let mut call = self.rate.key(key);
            call.arg(interval_ms).arg(burst).arg(cost);
            let wait: u64 = call.invoke_async(&mut self.redis.clone()).await?;
            Ok((wait > 0).then(|| Duration::from_millis(wait)))
        })
    }

    fn claim<'a>(&'a self, entries: &'a [(String, String)], ttl: Duration) -> BoxFuture<'a, StoreResult<Vec<Found>>> {
        Box::pin(async move {
            let mut call = self.claim.prepare_invoke();
            call.arg(ms(ttl));
            for (key, owner) in entries {
                call.key(key).arg(owner);
            }
            let found: Vec<i64> = call.invoke_async(&mut self.redis.clone()).await?;
            Ok(found
                .into_iter()
                .map(|r| match r {
                    1 => Found::Claimed,
                    2 => Found::Completed,
                    ms => Found::Busy(Duration::from_millis(ms.unsigned_abs())),
                })
                .collect())
        })
    }

    fn renew_claims<'a>(&'a self, entries: &'a [(String, String)], ttl: Duration) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let mut call = self.renew_claims.prepare_invoke();
            call.arg(ms(ttl));
            for (key, owner) in entries {
                call.key(key).arg(owner);
            }
            call.invoke_async::<i64>(&mut self.redis.clone()).await?;
            Ok(())
        })
    }

    fn finish<'a>(
        &'a self,
        entries: &'a [(String, String, bool)],
        completed_ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let mut call = self.finish.prepare_invoke();
            call.arg(ms(completed_ttl));
            for (key, owner, completed) in entries {
                call.key(key).arg(owner).arg(if *completed { "c" } else { "r" });
            }
            call.invoke_async::<i64>(&mut self.redis.clone()).await?;
            Ok(())
        })
    }
}
