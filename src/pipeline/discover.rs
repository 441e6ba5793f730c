//! Queue discovery: what a pipeline learns of its queue before it starts (its ARN, visibility
//! timeout and largest message), retried while the queue is unreachable.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::PipelineConfig;
use crate::event::{arn_from_queue_url, EventSource};
use crate::sqs::{Queue, SqsError};

/// What discovery learns about the queue.
pub(super) struct Discovered {
    pub source: EventSource,
    pub visibility: Duration,
    /// The queue's `MaximumMessageSize` (SQS refuses larger messages): what the byte budget
    /// reserves for each message a receive may bring.
    pub max_message_bytes: usize,
}

/// Asks the queue for its ARN and visibility timeout, retrying while it is unreachable; `None`
/// when shutdown came first.
///
/// # Errors
/// A non-retryable error (the queue does not exist, access denied): the pipeline cannot run.
pub(super) async fn discover(
    cfg: &PipelineConfig,
    queue: &dyn Queue,
    drain: &CancellationToken,
) -> Result<Option<Discovered>, SqsError> {
    let mut backoff = Backoff::default();
    let attrs = loop {
        match queue
            .attributes(&[
                QueueAttributeName::QueueArn,
                QueueAttributeName::VisibilityTimeout,
                QueueAttributeName::MaximumMessageSize,
            ])
            .await
        {
            Ok(a) => break a,
            Err(e) if e.is_retryable() => {
                let delay = backoff.next_delay();
                tracing::warn!(pipeline = %cfg.name, error = %e, retry_in_ms = delay.as_millis() as u64, "queue not reachable yet");
                tokio::select! {
                    () = drain.cancelled() => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    let region = queue.region();
    let queue_arn = attrs.get("QueueArn").cloned().unwrap_or_else(|| arn_from_queue_url(&cfg.queue_url, &region));
    let queue_visibility = attrs.get("VisibilityTimeout").and_then(|v| v.parse().ok()).unwrap_or(30);
    let visibility = cfg.pollers.visibility_timeout.unwrap_or(Duration::from_secs(queue_visibility));
    // (an emulator that does not say: SQS's own upper bound)
    let max_message_bytes = attrs
        .get("MaximumMessageSize")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .map_or(crate::limits::MAX_MESSAGE_BYTES, |n| n.min(crate::limits::MAX_MESSAGE_BYTES));
    tracing::info!(pipeline = %cfg.name, queue = %cfg.queue_url, visibility_timeout_secs = visibility.as_secs(), max_outstanding = cfg.lease.max_outstanding, max_outstanding_bytes = cfg.lease.max_outstanding_bytes, max_message_bytes, "queue found");
    if let Some(warning) = crate::config::kept_fifo_warning(cfg) {
        tracing::warn!(pipeline = %cfg.name, "{warning}");
    }
    if visibility < Duration::from_secs(2) {
        tracing::warn!(pipeline = %cfg.name, visibility_timeout_secs = visibility.as_secs(), "a visibility timeout under 2 s leaves the lease keeper no time to extend it: messages may be delivered again while they wait or run");
    }
    Ok(Some(Discovered { source: EventSource { queue_arn, region }, visibility, max_message_bytes }))
}
