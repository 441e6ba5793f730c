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

use super::store::Found;

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
        Arc::new(Idempotency { fleet: self.clone(), pipeline: pipeline.to_string(), key, ttl, skips, waits })
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
        if !self.fleet.is_shared() {
            // (the fleet said so once when Redis went away: not a line per batch)
            tracing::debug!(pipeline = %self.pipeline, messages = batch.len(), "Redis away: a batch dispatched without the idempotency window");
            return claims;
        }
        let entries: Vec<(String, String)> =
            keyed.iter().map(|&i| (keys[i].clone().expect("keyed"), owners[i].clone())).collect();
        match self.fleet.store.claim(&entries, self.fleet.slot_ttl).await {
            Ok(found) => {
                self.fleet.answered();
                for ((&i, (key, owner)), f) in keyed.iter().zip(entries).zip(found) {
                    claims[i] = match f {
                        Found::Claimed => Claim::Claimed { key, owner },
                        Found::Completed => Claim::Completed,
                        Found::Busy(d) => Claim::Busy(d),
                    };
                }
                let skipped = claims.iter().filter(|c| **c == Claim::Completed).count();
                let waiting = claims.iter().filter(|c| matches!(c, Claim::Busy(_))).count();
                self.skips.increment(skipped as u64);
                self.waits.increment(waiting as u64);
            }
            Err(e) => {
                self.fleet.failed(&e);
                tracing::warn!(pipeline = %self.pipeline, messages = batch.len(), "Redis cannot be used: a batch dispatched without the idempotency window");
            }
        }
        claims
    }

    /// Keeps the claims of a running batch alive (every third of their time to live) until the
    /// future is dropped.
    pub async fn keep_claimed(&self, claims: &[Claim]) {
        let held: Vec<(String, String)> = claims
            .iter()
            .filter_map(|c| match c {
                Claim::Claimed { key, owner } => Some((key.clone(), owner.clone())),
                _ => None,
            })
            .collect();
        if held.is_empty() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(self.fleet.slot_ttl / 3).await;
            if let Err(e) = self.fleet.store.renew_claims(&held, self.fleet.slot_ttl).await {
                self.fleet.failed(&e);
            }
        }
    }

    /// Ends the claims of a settled batch: `succeeded(i)` completes message `i`'s key, else it is
    /// given up (another copy may run).
    pub async fn finish(&self, claims: &[Claim], succeeded: impl Fn(usize) -> bool) {
        let entries: Vec<(String, String, bool)> = claims
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                Claim::Claimed { key, owner } => Some((key.clone(), owner.clone(), succeeded(i))),
                _ => None,
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        if let Err(e) = self.fleet.store.finish(&entries, self.ttl).await {
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
