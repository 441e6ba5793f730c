//! The idempotency window (`[pipelines.idempotency]`), Powertools' model across the fleet: a
//! message's key (its message id, or a JSON pointer into its body) is *in progress* in Redis
//! while one instance holds the message — an expiry of `fleet.slot_ttl_secs`, renewed while the
//! batch runs, so a killed instance's keys come back by themselves — and *completed* for
//! `ttl_secs` after the worker succeeded with it.
//!
//! Before a batch is dispatched its keys are claimed in one call: a message whose key is
//! completed is deleted without reaching the worker (`sqs_poller_idempotent_skips_total`); one
//! whose key another message holds is retried once that one's claim would expire
//! (`sqs_poller_idempotent_waits_total`) — on a FIFO queue with the rest of its group behind it,
//! in order. After the batch is settled the keys of the messages that succeeded are completed and
//! the others' given up. With Redis unreachable the batch goes on without the window (duplicates
//! may reach the worker then), and the log says so.

use std::sync::Arc;
use std::time::Duration;

use crate::config::IdempotencyKey;
use crate::event::ReceivedMessage;

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
const RENEW: &str = r"
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == 'p:' .. ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]))
  end
end
return 0
";

/// What a message's claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Claimed (this Redis key, this owner): dispatch it.
    Claimed { key: String, owner: String },
    /// Completed already: delete it without dispatching it.
    Completed,
    /// Held by another message for about this long: retry it then.
    Busy(Duration),
    /// No key (not in the body) or no Redis: dispatch it without the window.
    Unkeyed,
}

/// One pipeline's idempotency window.
pub struct Idempotency {
    fleet: Arc<super::Fleet>,
    pipeline: String,
    key: IdempotencyKey,
    ttl: Duration,
    claim: redis::Script,
    finish: redis::Script,
    renew: redis::Script,
    skips: metrics::Counter,
    waits: metrics::Counter,
}

impl super::Fleet {
    /// The idempotency window of `pipeline`: `key` names a message's key, completed keys are kept
    /// for `ttl`.
    pub fn idempotency(self: &Arc<Self>, pipeline: &str, key: IdempotencyKey, ttl: Duration) -> Arc<Idempotency> {
        let skips = metrics::counter!(crate::metrics::IDEMPOTENT_SKIPS, "pipeline" => pipeline.to_string());
        let waits = metrics::counter!(crate::metrics::IDEMPOTENT_WAITS, "pipeline" => pipeline.to_string());
        skips.increment(0);
        waits.increment(0);
        Arc::new(Idempotency {
            fleet: self.clone(),
            pipeline: pipeline.to_string(),
            key,
            ttl,
            claim: redis::Script::new(CLAIM),
            finish: redis::Script::new(FINISH),
            renew: redis::Script::new(RENEW),
            skips,
            waits,
        })
    }
}

/// The key of `m` by `key`: its message id, or the JSON value at a pointer into its body (a
/// string as it is, another value as JSON); `None` when the body has none.
pub fn key_of(m: &ReceivedMessage, key: &IdempotencyKey) -> Option<String> {
    match key {
        IdempotencyKey::MessageId => Some(m.message_id.clone()),
        IdempotencyKey::Pointer(pointer) => {
            let body: serde_json::Value = serde_json::from_str(&m.record().body).ok()?;
            match body.pointer(pointer)? {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        }
    }
}

impl Idempotency {
    fn redis_key(&self, key: &str) -> String {
        // a key from a body may be long or odd: past 200 bytes it is hashed
        if key.len() <= 200 {
            format!("sqs-poller:{}:idem:{key}", self.pipeline)
        } else {
            format!("sqs-poller:{}:idem:#{:016x}", self.pipeline, crate::config::fnv1a(key.as_bytes()))
        }
    }

    /// Claims the keys of `batch`, one claim per message.
    pub async fn claim(&self, batch: &[ReceivedMessage]) -> Vec<Claim> {
        let keys: Vec<Option<String>> =
            batch.iter().map(|m| key_of(m, &self.key).map(|k| self.redis_key(&k))).collect();
        let owners: Vec<String> = batch.iter().map(|m| format!("{}:{}", self.fleet.instance, m.message_id)).collect();
        let keyed: Vec<usize> = (0..batch.len()).filter(|&i| keys[i].is_some()).collect();
        let unkeyed = batch.len() - keyed.len();
        if unkeyed > 0 {
            tracing::warn!(pipeline = %self.pipeline, messages = unkeyed, "messages without an idempotency key (idempotency.key not in the body): dispatched without the idempotency window");
        }
        let mut claims = vec![Claim::Unkeyed; batch.len()];
        if keyed.is_empty() {
            return claims;
        }
        let mut call = self.claim.prepare_invoke();
        call.arg(self.fleet.slot_ttl.as_millis() as u64);
        for &i in &keyed {
            call.key(keys[i].as_deref().expect("keyed")).arg(&owners[i]);
        }
        let mut redis = self.fleet.redis.clone();
        match call.invoke_async::<Vec<i64>>(&mut redis).await {
            Ok(found) => {
                self.fleet.answered();
                for (&i, r) in keyed.iter().zip(found) {
                    claims[i] = match r {
                        1 => Claim::Claimed { key: keys[i].clone().expect("keyed"), owner: owners[i].clone() },
                        2 => Claim::Completed,
                        ms => Claim::Busy(Duration::from_millis(ms.unsigned_abs())),
                    };
                }
                let skipped = claims.iter().filter(|c| **c == Claim::Completed).count();
                let waiting = claims.iter().filter(|c| matches!(c, Claim::Busy(_))).count();
                self.skips.increment(skipped as u64);
                self.waits.increment(waiting as u64);
            }
            Err(e) => {
                self.fleet.failed(&e);
                tracing::warn!(pipeline = %self.pipeline, messages = batch.len(), "Redis cannot be reached: a batch dispatched without the idempotency window");
            }
        }
        claims
    }

    /// Keeps the claims of a running batch alive (every third of their time to live) until the
    /// future is dropped.
    pub async fn keep_claimed(&self, claims: &[Claim]) {
        let held: Vec<(&str, &str)> = claims
            .iter()
            .filter_map(|c| match c {
                Claim::Claimed { key, owner } => Some((key.as_str(), owner.as_str())),
                _ => None,
            })
            .collect();
        if held.is_empty() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(self.fleet.slot_ttl / 3).await;
            let mut call = self.renew.prepare_invoke();
            call.arg(self.fleet.slot_ttl.as_millis() as u64);
            for (key, owner) in &held {
                call.key(*key).arg(*owner);
            }
            let mut redis = self.fleet.redis.clone();
            if let Err(e) = call.invoke_async::<i64>(&mut redis).await {
                self.fleet.failed(&e);
            }
        }
    }

    /// Ends the claims of a settled batch: `succeeded(i)` completes message `i`'s key, else it is
    /// given up (another copy may run).
    pub async fn finish(&self, claims: &[Claim], succeeded: impl Fn(usize) -> bool) {
        let mut call = self.finish.prepare_invoke();
        call.arg(self.ttl.as_millis() as u64);
        let mut any = false;
        for (i, c) in claims.iter().enumerate() {
            if let Claim::Claimed { key, owner } = c {
                call.key(key).arg(owner).arg(if succeeded(i) { "c" } else { "r" });
                any = true;
            }
        }
        if !any {
            return;
        }
        let mut redis = self.fleet.redis.clone();
        if let Err(e) = call.invoke_async::<i64>(&mut redis).await {
            // the claims expire by themselves; a completed key is lost, so a later copy may run
            self.fleet.failed(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_body(body: &str) -> ReceivedMessage {
        let record = serde_json::json!({"messageId": "m-1", "receiptHandle": "h", "body": body, "attributes": {},
            "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": "arn", "awsRegion": "r"});
        ReceivedMessage { record_json: record.to_string().into(), ..ReceivedMessage::for_test("m-1") }
    }

    #[test]
    fn a_key_is_the_message_id_or_the_value_at_a_pointer() {
        let m = with_body(r#"{"order": {"id": "o-42", "n": 7}}"#);
        assert_eq!(key_of(&m, &IdempotencyKey::MessageId).as_deref(), Some("m-1"));
        assert_eq!(key_of(&m, &IdempotencyKey::Pointer("/order/id".into())).as_deref(), Some("o-42"));
        assert_eq!(key_of(&m, &IdempotencyKey::Pointer("/order/n".into())).as_deref(), Some("7"));
        assert_eq!(key_of(&m, &IdempotencyKey::Pointer("/order/missing".into())), None);
        assert_eq!(key_of(&with_body("not json"), &IdempotencyKey::Pointer("/order/id".into())), None);
        assert_eq!(key_of(&with_body(r#"{"order": null}"#), &IdempotencyKey::Pointer("/order".into())), None);
    }
}
