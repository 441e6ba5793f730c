//! Large payloads through S3, as AWS's SQS Extended Client libraries (Java, Python) send them:
//! the message body is a pointer, `["software.amazon.payloadoffloading.PayloadS3Pointer",
//! {"s3BucketName": …, "s3Key": …}]`, and the message carries `ExtendedPayloadSize` (or the legacy
//! `SQSLargePayloadSize`). With `[pipelines.large_payloads]`, the intake fetches the object and
//! puts it in the record's `body` before the message is batched (so `max_bytes` applies to the
//! real payload): the worker sees the payload byte for byte, as if SQS had carried it.
//!
//! Objects are fetched with a SigV4-signed `GET` (the same credential chain as SQS; path-style on
//! an endpoint override such as moto or LocalStack, virtual-hosted on AWS), at most `concurrency`
//! at once and at most `max_bytes` each. A pointer that cannot be resolved (no such object, too
//! large, S3 unreachable) fails only its own message, with the reason. With
//! `delete_after_success`, the object is deleted once its message was processed and deleted.
//!
//! Note: `md5OfBody` stays the digest SQS computed (of the pointer).

use aws_credential_types::provider::SharedCredentialsProvider;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::Semaphore;

/// The pointer classes the extended clients write.
const POINTER_CLASSES: [&str; 2] =
    ["software.amazon.payloadoffloading.PayloadS3Pointer", "com.amazon.sqs.javamessaging.MessageS3Pointer"];
/// The message attributes that mark a pointer.
pub const SIZE_ATTRIBUTES: [&str; 2] = ["ExtendedPayloadSize", "SQSLargePayloadSize"];

/// Where a payload lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Pointer {
    pub bucket: String,
    pub key: String,
}

impl S3Pointer {
    /// Reads an extended client's pointer body; `None` when `body` is not one.
    pub fn parse(body: &str) -> Option<S3Pointer> {
        let t = body.trim_start();
        if !t.starts_with('[') {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(t).ok()?;
        let [class, location] = v.as_array()?.as_slice() else { return None };
        if !POINTER_CLASSES.contains(&class.as_str()?) {
            return None;
        }
        Some(S3Pointer {
            bucket: location["s3BucketName"].as_str()?.to_string(),
            key: location["s3Key"].as_str()?.to_string(),
        })
    }
}

/// Fetches and deletes payload objects.
pub struct PayloadStore {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// An endpoint override (path-style addressing), else AWS's virtual-hosted URLs.
    endpoint: Option<String>,
    region: String,
    credentials: Option<SharedCredentialsProvider>,
    slots: Semaphore,
    max_bytes: usize,
    pub delete_after_success: bool,
    fetched: metrics::Counter,
    failed: metrics::Counter,
}

/// `%`-encodes a key for a URL path (SigV4 expects S3 keys encoded once, `/` kept).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl PayloadStore {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        endpoint: Option<String>,
        region: String,
        credentials: Option<SharedCredentialsProvider>,
        concurrency: usize,
        max_bytes: usize,
        delete_after_success: bool,
        fetched: metrics::Counter,
        failed: metrics::Counter,
    ) -> Self {
        // the system's roots; with none, plain-HTTP endpoints (emulators) still work
        let https = crate::dispatch::http::https_connector(&crate::config::HttpOptions::default())
            .expect("no TLS files to read");
        PayloadStore {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(https),
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            region,
            credentials,
            slots: Semaphore::new(concurrency.max(1)),
            max_bytes,
            delete_after_success,
            fetched,
            failed,
        }
    }

    fn url(&self, p: &S3Pointer) -> String {
        match &self.endpoint {
            Some(e) => format!("{e}/{}/{}", p.bucket, encode_key(&p.key)),
            None => format!("https://{}.s3.{}.amazonaws.com/{}", p.bucket, self.region, encode_key(&p.key)),
        }
    }

    async fn request(&self, method: Method, p: &S3Pointer) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(self.url(p))
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("s3://{}/{}: {e}", p.bucket, p.key))?;
        if let Some(credentials) = &self.credentials {
            crate::dispatch::http::sign_request(credentials, &self.region, "s3", &mut request, &[])
                .await
                .map_err(|e| format!("s3://{}/{}: {e}", p.bucket, p.key))?;
        }
        self.client.request(request).await.map_err(|e| format!("s3://{}/{}: {e}", p.bucket, p.key))
    }

    /// The payload at `p`, at most `max_bytes`.
    ///
    /// # Errors
    /// Why it could not be fetched (no such object, too large, S3 unreachable), for the
    /// message's failure reason.
    pub async fn fetch(&self, p: &S3Pointer) -> Result<Bytes, String> {
        let _slot = self.slots.acquire().await.map_err(|_| "the payload store is closed".to_string())?;
        let result = async {
            let response = self.request(Method::GET, p).await?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!(
                    "s3://{}/{}: HTTP {status} (the large payload could not be fetched)",
                    p.bucket, p.key
                ));
            }
            Limited::new(response.into_body(), self.max_bytes).collect().await.map(|b| b.to_bytes()).map_err(|e| {
                format!("s3://{}/{}: {e} (large_payloads.max_bytes is {})", p.bucket, p.key, self.max_bytes)
            })
        }
        .await;
        match &result {
            Ok(_) => self.fetched.increment(1),
            Err(_) => self.failed.increment(1),
        }
        result
    }

    /// Deletes the object at `p` (its message was processed); failures are logged.
    pub async fn delete(&self, p: &S3Pointer) {
        match self.request(Method::DELETE, p).await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                tracing::warn!(bucket = %p.bucket, key = %p.key, status = %r.status(), "could not delete a large payload's object")
            }
            Err(e) => tracing::warn!(error = %e, "could not delete a large payload's object"),
        }
    }
}

/// A received message after [`resolve`]: the message (its body the payload when fetched), the
/// object it came from, and why it could not be fetched.
pub type Resolved = (aws_sdk_sqs::types::Message, Option<S3Pointer>, Option<String>);

/// Fetches the payloads of the messages that are extended-client pointers (a pointer body and
/// a size attribute), concurrently within the store's limits.
pub async fn resolve(store: &PayloadStore, messages: Vec<aws_sdk_sqs::types::Message>) -> Vec<Resolved> {
    futures_util::future::join_all(messages.into_iter().map(|mut m| async move {
        let marked = m.message_attributes.as_ref().is_some_and(|a| SIZE_ATTRIBUTES.iter().any(|k| a.contains_key(*k)));
        let Some(pointer) = marked.then(|| m.body.as_deref().and_then(S3Pointer::parse)).flatten() else {
            return (m, None, None);
        };
        match store.fetch(&pointer).await.and_then(|bytes| {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| format!("s3://{}/{}: the payload is not UTF-8 text", pointer.bucket, pointer.key))
        }) {
            Ok(body) => {
                m.body = Some(body);
                (m, Some(pointer), None)
            }
            Err(reason) => (m, Some(pointer), Some(reason)),
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for not in
            [r#"["other", {"s3BucketName": "b", "s3Key": "k"}]"#, r#"{"s3BucketName": "b"}"#, "[1, 2, 3]", "hello", "["]
        {
            assert_eq!(S3Pointer::parse(not), None, "{not}");
        }
        assert_eq!(encode_key("a b/ü"), "a%20b/%C3%BC");
    }
}
