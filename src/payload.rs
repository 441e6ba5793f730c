//! Large payloads through S3, as AWS's SQS Extended Client libraries (Java, Python) send them:
//! the message body is a pointer, `["software.amazon.payloadoffloading.PayloadS3Pointer",
//! {"s3BucketName": …, "s3Key": …}]`, and the message carries `ExtendedPayloadSize` (or the legacy
//! `SQSLargePayloadSize`). With `[pipelines.large_payloads]`, the intake fetches the object and
//! puts it in the record's `body` before the message is batched (so `max_bytes` applies to the
//! real payload): the worker sees the payload byte for byte, as if SQS had carried it.
//!
//! Objects are fetched through `aws-sdk-s3` ([`crate::aws::s3`]: S3's signing and addressing
//! rules, region redirects followed; path-style on an endpoint override such as moto or
//! LocalStack), at most `concurrency` at once, at most `max_bytes` each, each within
//! `fetch_timeout_secs` (default 60 s, waiting for a slot included: a stalled S3 connection
//! fails its message instead of holding a poller and a slot forever). The message is leased before its fetch
//! starts, so a slow fetch is covered by the lease's extensions. A pointer that cannot be resolved (no such object, too
//! large, S3 unreachable) fails only its own message, with the reason. With
//! `delete_after_success`, the object is deleted once its message was processed and deleted.
//!
//! Note: `md5OfBody` stays the digest SQS computed (of the pointer).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::aws::s3::S3;
use crate::aws::SqsMessage;
pub use crate::event::{Offloaded, S3Pointer, Unresolved};

/// The pointer classes the extended clients write.
const POINTER_CLASSES: [&str; 2] =
    ["software.amazon.payloadoffloading.PayloadS3Pointer", "com.amazon.sqs.javamessaging.MessageS3Pointer"];
/// The message attributes that mark a pointer.
pub const SIZE_ATTRIBUTES: [&str; 2] = ["ExtendedPayloadSize", "SQSLargePayloadSize"];

impl S3Pointer {
    /// Reads an extended client's pointer body; `None` when `body` is not one.
    /// Both forms: the Java and Python clients' `[class, {…}]` and the JavaScript ports' plain
    /// `{"s3BucketName": …, "s3Key": …}` (only with a size attribute, checked by the caller).
    pub fn parse(body: &str) -> Option<S3Pointer> {
        let t = body.trim_start();
        if !t.starts_with('[') && !t.starts_with('{') {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(t).ok()?;
        let location = match &v {
            serde_json::Value::Array(a) => {
                let [class, location] = a.as_slice() else { return None };
                if !POINTER_CLASSES.contains(&class.as_str()?) {
                    return None;
                }
                location
            }
            serde_json::Value::Object(o) if o.len() == 2 => &v,
            _ => return None,
        };
        Some(S3Pointer {
            bucket: location["s3BucketName"].as_str()?.to_string(),
            key: location["s3Key"].as_str()?.to_string(),
        })
    }
}

/// Fetches and deletes payload objects.
pub struct PayloadStore {
    s3: Arc<S3>,
    slots: Semaphore,
    /// `[pipelines.large_payloads]`: `max_bytes`, `fetch_timeout_secs`, `allowed_buckets`, ...
    config: crate::config::LargePayloadConfig,
    fetched: metrics::Counter,
    failed: metrics::Counter,
    refused: metrics::Counter,
}

impl PayloadStore {
    pub fn new(
        s3: Arc<S3>,
        config: &crate::config::LargePayloadConfig,
        counters: &crate::metrics::PayloadMetrics,
    ) -> Self {
        PayloadStore {
            s3,
            slots: Semaphore::new(config.concurrency.max(1)),
            config: config.clone(),
            fetched: counters.fetched.clone(),
            failed: counters.failed.clone(),
            refused: counters.refused.clone(),
        }
    }

    /// `delete_after_success`: objects go once their messages were processed and deleted.
    pub fn deletes_after_success(&self) -> bool {
        self.config.delete_after_success
    }

    /// The payload at `p`, at most `max_bytes`, within the fetch timeout.
    ///
    /// # Errors
    /// Why it could not be fetched (no such object, too large, S3 unreachable or too slow), for
    /// the message's failure reason.
    pub async fn fetch(&self, p: &S3Pointer) -> Result<Bytes, String> {
        let result = tokio::time::timeout(self.config.fetch_timeout, async {
            let _slot = self.slots.acquire().await.map_err(|_| "the payload store is closed".to_string())?;
            self.s3.get(&p.bucket, &p.key, self.config.max_bytes).await.map_err(|e| match e {
                crate::aws::s3::FetchError::TooLarge { max_bytes } => {
                    format!("s3://{}/{}: {e} (large_payloads.max_bytes is {max_bytes})", p.bucket, p.key)
                }
                e => format!("s3://{}/{}: {e} (the large payload could not be fetched)", p.bucket, p.key),
            })
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "s3://{}/{}: not fetched within {} s (large_payloads.fetch_timeout_secs)",
                p.bucket,
                p.key,
                self.config.fetch_timeout.as_secs()
            ))
        });
        match &result {
            Ok(_) => self.fetched.increment(1),
            Err(_) => self.failed.increment(1),
        }
        result
    }

    /// Deletes the object at `p` (its message was processed); failures are logged. Bounded by
    /// `fetch_timeout_secs` as a fetch is: the batch's task (its slot, its FIFO or capped groups,
    /// the drain) waits for it (issue 30: a stalled S3 held them for good).
    pub async fn delete(&self, p: &S3Pointer) {
        match tokio::time::timeout(self.config.fetch_timeout, self.s3.delete(&p.bucket, &p.key)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(bucket = %p.bucket, key = %p.key, error = %e, "could not delete a large payload's object")
            }
            Err(_) => tracing::warn!(
                bucket = %p.bucket,
                key = %p.key,
                "a large payload's object was not deleted within {} s (large_payloads.fetch_timeout_secs); it stays in the bucket",
                self.config.fetch_timeout.as_secs()
            ),
        }
    }
}

/// A received message with its payload in `body` when it was offloaded: the pointer, and why
/// the payload could not be fetched, if it could not.
pub type Resolved = (SqsMessage, Option<Offloaded>, Option<Unresolved>);

/// Fetches the payloads of the messages that are extended-client pointers (a pointer body and
/// a size attribute), concurrently within the store's limits.
pub async fn resolve(store: &PayloadStore, messages: Vec<SqsMessage>) -> Vec<Resolved> {
    futures_util::future::join_all(messages.into_iter().map(|mut m| async move {
        let marked = m.message_attributes.as_ref().is_some_and(|a| SIZE_ATTRIBUTES.iter().any(|k| a.contains_key(*k)));
        let Some(pointer) = marked.then(|| m.body.as_deref().and_then(S3Pointer::parse)).flatten() else {
            return (m, None, None);
        };
        let pointer_body: Box<str> = m.body.as_deref().unwrap_or_default().into();
        // a producer names the object: only the buckets the operator listed are read
        if !store.config.allows(&pointer.bucket, &pointer.key) {
            store.refused.increment(1);
            let reason = format!(
                "s3://{}/{}: bucket `{}` (or this key) is not in large_payloads.allowed_buckets; not fetched",
                pointer.bucket, pointer.key, pointer.bucket
            );
            return (m, Some(Offloaded { pointer, pointer_body }), Some(Unresolved { reason, refused: true }));
        }
        match store.fetch(&pointer).await.and_then(|bytes| {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| format!("s3://{}/{}: the payload is not UTF-8 text", pointer.bucket, pointer.key))
        }) {
            Ok(body) => {
                m.body = Some(body);
                (m, Some(Offloaded { pointer, pointer_body }), None)
            }
            Err(reason) => (m, Some(Offloaded { pointer, pointer_body }), Some(Unresolved { reason, refused: false })),
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 34: a body of any bytes is a pointer or not, never a panic.
    #[test]
    fn hostile_pointer_bodies_are_read_or_ignored() {
        let sample =
            br#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b", "s3Key": "k/1"}]"#;
        crate::fuzz::run("pointer_bodies", 3000, |rng| {
            let body = crate::fuzz::mutate(rng, sample);
            if let Some(p) = S3Pointer::parse(&String::from_utf8_lossy(&body)) {
                assert!(p.bucket.len() + p.key.len() <= body.len(), "a pointer longer than its body");
            }
        });
    }

    #[test]
    fn extended_client_pointers_are_recognised() {
        let p = S3Pointer::parse(
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b", "s3Key": "k/1"}]"#,
        );
        assert_eq!(p, Some(S3Pointer { bucket: "b".into(), key: "k/1".into() }));
        assert!(S3Pointer::parse(
            r#"["com.amazon.sqs.javamessaging.MessageS3Pointer", {"s3BucketName": "b", "s3Key": "k"}]"#
        )
        .is_some());
        // the JavaScript ports' plain object
        assert_eq!(
            S3Pointer::parse(r#"{"s3BucketName": "b.with.dots", "s3Key": "a b+c"}"#),
            Some(S3Pointer { bucket: "b.with.dots".into(), key: "a b+c".into() })
        );
        for not in [
            r#"["other", {"s3BucketName": "b", "s3Key": "k"}]"#,
            r#"{"s3BucketName": "b"}"#,
            r#"{"s3BucketName": "b", "s3Key": "k", "more": 1}"#,
            "[1, 2, 3]",
            "hello",
            "[",
        ] {
            assert_eq!(S3Pointer::parse(not), None, "{not}");
        }
    }
}
