//! The SQS edge: the [`Queue`] trait every stage talks through, and [`SqsQueue`], its
//! implementation over the real `aws-sdk-sqs` client (one per queue URL). The other
//! implementation is the in-memory `sim::SimQueue` of the simulation tests.
//!
//! Contract of the calls the stages rely on:
//! - `receive` returns at most 10 messages, after at most the long-poll wait; it is not retried
//!   here — the poller owns its backoff.
//! - `delete` and `change_visibility` take any number of entries, send them in chunks of 10
//!   (concurrently), read the `Failed` list of every answer and retry the entries that failed for
//!   a retryable reason a few times; they return the entries that still failed, each with its
//!   code and whether trying again could help ([`EntryFailure`]). A delete that finally fails is
//!   not fatal: the message is delivered again (at-least-once).
//! - Every request is counted in `sqs_poller_sqs_requests_total{operation,outcome}`.
//!
//! The SDK's own retries are off so that each request is counted and each operation has its
//! own policy (the poller backs off, batch calls retry a few times).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use aws_sdk_sqs::Client;

pub use crate::aws::errors::{is_permanent_code, SqsError, SqsErrorKind, PERMANENT_CODES};
use crate::aws::SqsMessage;
use crate::backoff::Backoff;
pub use crate::limits::SQS_ATTEMPT_TIMEOUT as ATTEMPT_TIMEOUT;
use crate::metrics::SqsMetrics;

/// Whether SQS allows `c` in a message body or attribute value: `#x9 | #xA | #xD | #x20–#xD7FF |
/// #xE000–#xFFFD | #x10000–#x10FFFF` (the SendMessage reference).
pub fn sqs_allows(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// An entry of a delete or visibility change that SQS did not carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFailure {
    /// Index into the entries asked for.
    pub index: usize,
    /// SQS's code (`ReceiptHandleIsInvalid`, …), or the kind of failure when SQS gave none.
    pub code: String,
    /// Trying again cannot succeed: the receipt handle is no longer valid, the message is no
    /// longer in flight, or SQS rejects the parameters (a sender fault).
    pub permanent: bool,
}

impl EntryFailure {
    /// A retryable failure without a code of its own (the request failed as a whole).
    pub fn retryable(index: usize, code: impl Into<String>) -> Self {
        EntryFailure { index, code: code.into(), permanent: false }
    }

    /// The code as a bounded metric label: one of [`PERMANENT_CODES`] or `other`.
    pub fn code_label(&self) -> &'static str {
        let code = self.code.rsplit('.').next().unwrap_or("");
        PERMANENT_CODES.iter().find(|c| **c == code).copied().unwrap_or("other")
    }
}

/// One SQS queue as the pipeline's stages use it. Object-safe (boxed futures), so stages hold an
/// `Arc<dyn Queue>` and the simulation can stand in for SQS.
pub trait Queue: Send + Sync {
    /// The queue URL.
    fn url(&self) -> &str;
    /// The region records name as `awsRegion`.
    fn region(&self) -> String;
    /// One ReceiveMessage for up to 10 messages with every attribute.
    fn receive(&self, wait: Duration, visibility: Option<Duration>)
        -> BoxFuture<'_, Result<Vec<SqsMessage>, SqsError>>;
    /// As [`Queue::receive`], with a FIFO queue's `ReceiveRequestAttemptId`: a retry with the
    /// same id (within five minutes, nothing of it settled) gets the same messages and receipt
    /// handles instead of leaving them hidden. Implementations that cannot send it ignore it.
    fn receive_attempt<'a>(
        &'a self,
        wait: Duration,
        visibility: Option<Duration>,
        attempt_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<SqsMessage>, SqsError>> {
        let _ = attempt_id;
        self.receive(wait, visibility)
    }
    /// Queue attributes by name.
    fn attributes<'a>(
        &'a self,
        names: &'a [QueueAttributeName],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, SqsError>>;
    /// Deletes by receipt handle; the entries that could not be deleted.
    fn delete<'a>(&'a self, receipts: &'a [&'a str]) -> BoxFuture<'a, Vec<EntryFailure>>;
    /// Sets visibility timeouts; the entries that could not be changed.
    fn change_visibility<'a>(&'a self, entries: &'a [(&'a str, i32)]) -> BoxFuture<'a, Vec<EntryFailure>>;
    /// Sends one message (a dead-letter copy, a redrive, a delay's hop).
    fn send<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<(), SqsError>>;
}

/// A message to send: a dead-letter copy, a redriven message, a long delay's next hop.
#[derive(Debug, Clone, Default)]
pub struct Outgoing<'a> {
    pub body: std::borrow::Cow<'a, str>,
    pub attributes: HashMap<String, MessageAttributeValue>,
    /// FIFO queues (and fair standard queues): the message group.
    pub group_id: Option<&'a str>,
    /// FIFO queues only.
    pub deduplication_id: Option<&'a str>,
    /// `DelaySeconds`, 0 to 900 (standard queues; a FIFO queue delays per queue).
    pub delay_secs: u32,
    /// The `AWSTraceHeader` system attribute (X-Ray) to carry.
    pub trace_header: Option<&'a str>,
}

impl<'a> Outgoing<'a> {
    /// `body` with these message attributes; no group, no delay.
    pub fn new(body: impl Into<std::borrow::Cow<'a, str>>, attributes: HashMap<String, MessageAttributeValue>) -> Self {
        Outgoing { body: body.into(), attributes, ..Outgoing::default() }
    }

    /// In message group `group_id`, deduplicated by `deduplication_id` (FIFO).
    #[must_use]
    pub fn grouped(mut self, group_id: Option<&'a str>, deduplication_id: Option<&'a str>) -> Self {
        self.group_id = group_id;
        self.deduplication_id = deduplication_id;
        self
    }
}

/// A boxed future of the [`Queue`] trait.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Queue for SqsQueue {
    fn url(&self) -> &str {
        &self.url
    }
    fn region(&self) -> String {
        self.region.clone()
    }
    fn receive(
        &self,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> BoxFuture<'_, Result<Vec<SqsMessage>, SqsError>> {
        Box::pin(SqsQueue::receive(self, wait, visibility, None))
    }
    fn receive_attempt<'a>(
        &'a self,
        wait: Duration,
        visibility: Option<Duration>,
        attempt_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<SqsMessage>, SqsError>> {
        Box::pin(SqsQueue::receive(self, wait, visibility, attempt_id))
    }
    fn attributes<'a>(
        &'a self,
        names: &'a [QueueAttributeName],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, SqsError>> {
        Box::pin(SqsQueue::attributes(self, names))
    }
    fn delete<'a>(&'a self, receipts: &'a [&'a str]) -> BoxFuture<'a, Vec<EntryFailure>> {
        Box::pin(SqsQueue::delete(self, receipts))
    }
    fn change_visibility<'a>(&'a self, entries: &'a [(&'a str, i32)]) -> BoxFuture<'a, Vec<EntryFailure>> {
        Box::pin(SqsQueue::change_visibility(self, entries))
    }
    fn send<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<(), SqsError>> {
        Box::pin(SqsQueue::send(self, message))
    }
}

/// Requests of one batch operation in flight at once. A heartbeat round over 10,000 leases is
/// 1,000 ChangeMessageVisibilityBatch requests: all at once they opened 1,000 connections (TLS
/// handshakes on real SQS) and held a request's state each; 32 at a time send them in a few round
/// trips.
pub const BATCH_CALLS_AT_ONCE: usize = 32;

/// Attempts for each chunk of a batch call (first try included).
const BATCH_ATTEMPTS: u32 = 3;

/// Requests in a row that failed to reach SQS after which a pipeline is reported not ready.
pub const NOT_READY_AFTER: u32 = 3;

/// Whether a pipeline reaches its queue, for `/readyz`: ready once the pipeline found its queue;
/// not ready after [`NOT_READY_AFTER`] requests in a row failed to reach SQS (timeouts, refused
/// or broken connections, 5xx, throttling); ready again with the next answer.
pub struct Reachability {
    pipeline: String,
    ready: Arc<AtomicBool>,
    /// Set once the queue was found; before that, requests do not change readiness.
    found: AtomicBool,
    failures_in_a_row: AtomicU32,
}

impl Reachability {
    pub fn new(pipeline: &str, ready: Arc<AtomicBool>) -> Self {
        Reachability {
            pipeline: pipeline.to_string(),
            ready,
            found: AtomicBool::new(false),
            failures_in_a_row: AtomicU32::new(0),
        }
    }

    /// The pipeline found its queue: ready.
    pub fn found(&self) {
        self.found.store(true, Ordering::Relaxed);
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// One request's outcome: `None` when it succeeded. An error counts against readiness when
    /// SQS could not be reached or answered that nothing can be received (a KMS key denied or
    /// disabled, access denied: [`SqsError::stops_receiving`]); any other answer resets it.
    pub fn record(&self, error: Option<&SqsError>) {
        if !self.found.load(Ordering::Relaxed) {
            return;
        }
        match error.filter(|e| e.stops_receiving()) {
            None => {
                self.failures_in_a_row.store(0, Ordering::Relaxed);
                if !self.ready.swap(true, Ordering::Relaxed) {
                    tracing::info!(pipeline = %self.pipeline, "SQS answers again; /readyz reports this pipeline ready");
                }
            }
            Some(e) => {
                let n = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= NOT_READY_AFTER && self.ready.swap(false, Ordering::Relaxed) {
                    tracing::error!(
                        pipeline = %self.pipeline,
                        failures = n,
                        kind = e.kind.as_str(),
                        code = e.code.as_deref().unwrap_or("-"),
                        error = %e,
                        "this pipeline cannot consume its queue; /readyz reports it not ready until SQS answers"
                    );
                }
            }
        }
    }
}

/// The two clients every queue is reached through: the hot calls (receive, delete, visibility)
/// go through `json` ([`crate::aws::sqs_json`]), the others through the SDK; both from the one
/// AWS edge ([`crate::aws::Aws`]).
#[derive(Clone)]
pub struct SqsClients {
    pub sdk: Client,
    pub json: Arc<crate::aws::sqs_json::JsonClient>,
    /// The process clock: the skew it measured decides whether a signature error is a skew error.
    pub clock: crate::aws::Clock,
    pub region: String,
}

impl SqsClients {
    /// Both clients from the AWS edge.
    ///
    /// # Errors
    /// When the SQS endpoint cannot be resolved or TLS cannot be set up.
    pub async fn new(aws: &crate::aws::Aws) -> anyhow::Result<Self> {
        let json = crate::aws::sqs_json::JsonClient::new(aws).await?;
        Ok(SqsClients { sdk: aws.sqs_client(), json, clock: aws.clock.clone(), region: aws.region.clone() })
    }
}

/// One queue, with the pipeline's request counters.
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    json: Arc<crate::aws::sqs_json::JsonClient>,
    clock: crate::aws::Clock,
    region: String,
    pub url: String,
    metrics: SqsMetrics,
    /// The source queue's requests decide the pipeline's readiness.
    reachability: Option<Arc<Reachability>>,
}

impl SqsQueue {
    pub fn new(clients: &SqsClients, url: impl Into<String>, metrics: SqsMetrics) -> Self {
        SqsQueue {
            client: clients.sdk.clone(),
            json: clients.json.clone(),
            clock: clients.clock.clone(),
            region: clients.region.clone(),
            url: url.into(),
            metrics,
            reachability: None,
        }
    }

    /// This queue's requests tell `reachability` whether SQS can be reached.
    #[must_use]
    pub fn reporting_to(mut self, reachability: Arc<Reachability>) -> Self {
        self.reachability = Some(reachability);
        self
    }

    fn count<T>(&self, operation: &'static str, r: &Result<T, SqsError>) {
        let error = r.as_ref().err();
        if let Some(e) = error {
            self.metrics.status.set_last_error(e.to_string());
        }
        self.metrics.request(operation, error.map(|e| e.kind));
        if let Some(reachability) = &self.reachability {
            reachability.record(error);
        }
    }

    /// One ReceiveMessage call for up to 10 messages with all their attributes.
    ///
    /// # Errors
    /// [`SqsError`]; the caller backs off when it is retryable.
    pub async fn receive(
        &self,
        wait: Duration,
        visibility: Option<Duration>,
        attempt_id: Option<&str>,
    ) -> Result<Vec<SqsMessage>, SqsError> {
        let r = self.json.receive(&self.url, wait, visibility, attempt_id, wait + ATTEMPT_TIMEOUT).await;
        self.count("ReceiveMessage", &r);
        r
    }

    /// Queue attributes by name (`QueueArn`, `VisibilityTimeout`, `ApproximateNumberOfMessages`, …).
    ///
    /// # Errors
    /// [`SqsError`].
    pub async fn attributes(&self, names: &[QueueAttributeName]) -> Result<HashMap<String, String>, SqsError> {
        let r = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map(|out| {
                out.attributes.unwrap_or_default().into_iter().map(|(k, v)| (k.as_str().to_string(), v)).collect()
            })
            .map_err(|e| SqsError::from_sdk("GetQueueAttributes", e, self.clock.skew_ms()));
        self.count("GetQueueAttributes", &r);
        r
    }

    /// Deletes by receipt handle; returns the entries that could not be deleted.
    pub async fn delete(&self, receipts: &[&str]) -> Vec<EntryFailure> {
        self.batched("DeleteMessageBatch", receipts.len(), |idx| async move {
            let entries: Vec<(String, &str)> = idx.iter().map(|&i| (i.to_string(), receipts[i])).collect();
            self.json.delete_batch(&self.url, &entries, ATTEMPT_TIMEOUT).await
        })
        .await
    }

    /// Makes the messages of `receipts` visible at once (for tools that hold no lease: `redrive`,
    /// `dlq stats`); returns how many could not be.
    pub async fn make_visible(&self, receipts: &[&str]) -> usize {
        let entries: Vec<(&str, i32)> = receipts.iter().map(|r| (*r, 0)).collect();
        self.change_visibility(&entries).await.len()
    }

    /// Sets the visibility timeout of each `(receipt handle, seconds)`; returns the entries that
    /// could not be changed.
    pub async fn change_visibility(&self, entries: &[(&str, i32)]) -> Vec<EntryFailure> {
        self.batched("ChangeMessageVisibilityBatch", entries.len(), |idx| async move {
            let batch: Vec<(String, &str, i32)> =
                idx.iter().map(|&i| (i.to_string(), entries[i].0, entries[i].1)).collect();
            self.json.change_visibility_batch(&self.url, &batch, ATTEMPT_TIMEOUT).await
        })
        .await
    }

    /// Sends one message to this queue.
    ///
    /// # Errors
    /// [`SqsError`] after `BATCH_ATTEMPTS` tries of a retryable failure, or at once otherwise.
    pub async fn send(&self, message: Outgoing<'_>) -> Result<(), SqsError> {
        let mut attempt = 0;
        let mut backoff = Backoff::default();
        let trace = message.trace_header.map(|t| {
            let value = aws_sdk_sqs::types::MessageSystemAttributeValue::builder().data_type("String").string_value(t);
            HashMap::from([(
                aws_sdk_sqs::types::MessageSystemAttributeNameForSends::AwsTraceHeader,
                value.build().expect("data type set"),
            )])
        });
        loop {
            attempt += 1;
            let r = self
                .client
                .send_message()
                .queue_url(&self.url)
                .message_body(message.body.as_ref())
                .set_message_attributes(Some(message.attributes.clone()))
                .set_message_system_attributes(trace.clone())
                .set_message_group_id(message.group_id.map(str::to_string))
                .set_message_deduplication_id(message.deduplication_id.map(str::to_string))
                .set_delay_seconds((message.delay_secs > 0).then_some(message.delay_secs as i32))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| SqsError::from_sdk("SendMessage", e, self.clock.skew_ms()));
            self.count("SendMessage", &r);
            match r {
                Err(e) if e.is_retryable() && attempt < BATCH_ATTEMPTS => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => return other,
            }
        }
    }

    /// Runs a batch operation over `n` entries in chunks of 10, at most
    /// [`BATCH_CALLS_AT_ONCE`] chunks at a time, retrying the entries SQS reported as failed (or
    /// whole chunks whose request failed) when retryable.
    async fn batched<F, Fut>(&self, operation: &'static str, n: usize, call: F) -> Vec<EntryFailure>
    where
        F: Fn(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Vec<aws_sdk_sqs::types::BatchResultErrorEntry>, SqsError>>,
    {
        use futures_util::StreamExt as _;
        let chunks = (0..n).step_by(10).map(|start| (start..n.min(start + 10)).collect::<Vec<usize>>());
        let results = futures_util::stream::iter(chunks.map(|chunk| {
            let call = &call;
            async move {
                let mut pending = chunk;
                let mut given_up = Vec::new();
                let mut backoff = Backoff::default();
                for attempt in 1..=BATCH_ATTEMPTS {
                    let r = call(pending.clone()).await;
                    self.count(operation, &r);
                    match r {
                        Ok(failed) if failed.is_empty() => return given_up,
                        Ok(failed) => {
                            let mut retry = Vec::new();
                            for f in failed {
                                let Ok(i) = f.id.parse::<usize>() else { continue };
                                // sender faults (an expired receipt handle, say) will not get better
                                let permanent = f.sender_fault || is_permanent_code(&f.code);
                                if permanent || attempt == BATCH_ATTEMPTS {
                                    tracing::debug!(operation, code = %f.code, message = f.message.as_deref().unwrap_or(""), "batch entry failed");
                                    given_up.push(EntryFailure { index: i, code: f.code, permanent });
                                } else {
                                    retry.push(i);
                                }
                            }
                            if retry.is_empty() {
                                return given_up;
                            }
                            pending = retry;
                        }
                        Err(e) if e.is_retryable() && attempt < BATCH_ATTEMPTS => {
                            tracing::warn!(operation, error = %e, attempt, "batch request failed, retrying");
                        }
                        Err(e) => {
                            tracing::warn!(operation, error = %e, "batch request failed, giving up");
                            let permanent = !e.is_retryable() && e.code.as_deref().is_some_and(is_permanent_code);
                            let code = e.code.clone().unwrap_or_else(|| e.kind.as_str().to_string());
                            given_up.extend(pending.into_iter().map(|index| EntryFailure { index, code: code.clone(), permanent }));
                            return given_up;
                        }
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                given_up.extend(pending.into_iter().map(|i| EntryFailure::retryable(i, "retries exhausted")));
                given_up
            }
        }))
        .buffer_unordered(BATCH_CALLS_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_whether_sqs_answers() {
        let flag = Arc::new(AtomicBool::new(false));
        let r = Reachability::new("p", flag.clone());
        let kind = |k| SqsError::new("ReceiveMessage", None, "x".into(), k, true);
        let code = |c: &str| SqsError::answered("ReceiveMessage", Some(c.into()), "x", 400, 0);
        r.record(None);
        assert!(!r.is_ready(), "not ready before the queue is found");
        r.found();
        assert!(r.is_ready());
        r.record(Some(&kind(SqsErrorKind::Connection)));
        r.record(Some(&kind(SqsErrorKind::Timeout)));
        assert!(r.is_ready(), "two failures in a row are not an outage");
        r.record(Some(&kind(SqsErrorKind::ServerError)));
        assert!(!r.is_ready() && !flag.load(Ordering::Relaxed), "the third is");
        r.record(Some(&code("InvalidParameterValue")));
        assert!(r.is_ready(), "an error SQS answered with is an answer");
        r.record(Some(&kind(SqsErrorKind::Throttled)));
        r.record(Some(&kind(SqsErrorKind::Throttled)));
        r.record(None);
        r.record(Some(&kind(SqsErrorKind::Throttled)));
        assert!(r.is_ready(), "an answer resets the count");
        r.record(None);
        for _ in 0..3 {
            r.record(Some(&code("KMS.AccessDeniedException")));
        }
        assert!(!r.is_ready(), "a KMS key it may not use stops the pipeline as surely as an outage");
    }

    #[test]
    fn error_kinds_from_codes() {
        assert_eq!(SqsError::coded("X", "ThrottlingException", "", true).kind, SqsErrorKind::Throttled);
        assert_eq!(SqsError::coded("X", "InternalError", "", true).kind, SqsErrorKind::ServerError);
        assert_eq!(SqsError::coded("X", "QueueDoesNotExist", "", false).kind, SqsErrorKind::Rejected);
    }
}
