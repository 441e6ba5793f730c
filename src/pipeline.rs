//! One pipeline end to end: discover the queue, run the fleet, the batcher and the dispatcher,
//! and drain in order on shutdown (pollers → batcher → in-flight batches → release the rest).

use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::{Message, QueueAttributeName};
use bytes::Bytes;
use futures_util::FutureExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::ack::{self, Acker};
use crate::batch::{Batch, BatchBuffer, BatchSink, Batcher};
use crate::config::{OnFiltered, PipelineConfig};
use crate::dispatch::response::{self, Verdict};
use crate::dispatch::{Invocation, Target};
use crate::event::{arn_from_queue_url, encode_event, EventSource, ReceivedMessage};
use crate::metrics::PipelineMetrics;
use crate::poller::{sample_depth, Backoff, Fleet, Scaling};
use crate::shutdown::Shutdown;
use crate::sqs::{SqsError, SqsQueue};

/// Everything the stages of one pipeline share.
pub struct PipelineContext {
    pub config: PipelineConfig,
    pub queue: SqsQueue,
    pub acker: Acker,
    pub target: Target,
    pub metrics: PipelineMetrics,
    pub shutdown: Shutdown,
    /// The autoscaler and its signals.
    pub scaling: Scaling,
    /// One permit per batch that may be in flight; pollers wait for a free one before receiving.
    pub room: Arc<Semaphore>,
    /// Set once the queue answered; `/readyz` reads it.
    pub ready: Arc<AtomicBool>,
    /// Filled in by discovery: what records name as their source.
    source: std::sync::OnceLock<EventSource>,
    /// The queue's visibility timeout (or the configured override), for keeping long batches invisible.
    visibility: std::sync::OnceLock<Duration>,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Age in ms of the oldest message received since the last depth sample (0: none).
    oldest_age_ms: AtomicU64,
}

impl PipelineContext {
    pub fn new(
        config: PipelineConfig,
        client: aws_sdk_sqs::Client,
        target: Target,
        metrics: PipelineMetrics,
        shutdown: Shutdown,
        ready: Arc<AtomicBool>,
    ) -> Self {
        let queue = SqsQueue::new(client.clone(), config.queue_url.clone(), metrics.clone());
        let acker = Acker {
            queue: queue.clone(),
            dead_letter: config
                .dead_letter
                .as_ref()
                .map(|d| SqsQueue::new(client.clone(), d.queue_url.clone(), metrics.clone())),
            pipeline: config.name.clone(),
            retry: config.retry.clone(),
            metrics: metrics.clone(),
        };
        let limiter = config.target.rate_limit_per_sec.map(|rate| {
            // a whole batch must fit in the bucket at once
            let burst = NonZeroU32::new(rate.get().max(config.batch.size as u32)).expect("non-zero");
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        PipelineContext {
            target,
            scaling: Scaling::new(
                &config.name,
                config.pollers.min,
                config.pollers.max,
                metrics.pollers_desired.clone(),
            ),
            room: Arc::new(Semaphore::new(config.target.max_concurrency)),
            config,
            queue,
            acker,
            metrics,
            shutdown,
            ready,
            source: std::sync::OnceLock::new(),
            visibility: std::sync::OnceLock::new(),
            limiter,
            oldest_age_ms: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Turns SQS messages into pipeline messages, counts them in, and applies the filter:
    /// returns the messages that pass and those it rejected.
    pub fn accept(&self, messages: Vec<Message>) -> (Vec<ReceivedMessage>, Vec<ReceivedMessage>) {
        let source = self.source.get().expect("discovery runs before the pollers");
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let mut pass = Vec::with_capacity(messages.len());
        let mut rejected = Vec::new();
        let mut oldest_ms = 0;
        for m in messages {
            match ReceivedMessage::from_sqs(m, source) {
                Ok(m) => {
                    if let Some(sent) = m.sent_timestamp_ms {
                        let age_ms = now_ms.saturating_sub(sent);
                        oldest_ms = oldest_ms.max(age_ms);
                        self.metrics.message_age.record(age_ms as f64 / 1000.0);
                    }
                    if self.passes_filter(&m) {
                        pass.push(m);
                    } else {
                        rejected.push(m);
                    }
                }
                Err(e) => tracing::error!(pipeline = %self.name(), error = %e, "skipping a message"),
            }
        }
        self.oldest_age_ms.fetch_max(oldest_ms.max(1), Ordering::Relaxed);
        self.metrics.received.increment((pass.len() + rejected.len()) as u64);
        self.metrics.in_flight_messages.increment(pass.len() as f64);
        (pass, rejected)
    }

    fn passes_filter(&self, m: &ReceivedMessage) -> bool {
        let Some(f) = &self.config.filter else { return true };
        // record_json is serde_json's own output; were it ever unreadable, deliver rather than drop
        crate::filter::match_value(&m.record_json).map_or(true, |record| f.filter.matches(&record))
    }

    /// Deletes (Lambda's semantics) or releases (`on_filtered = "keep"`) rejected messages.
    pub async fn dispose_filtered(&self, rejected: &[ReceivedMessage]) {
        if rejected.is_empty() {
            return;
        }
        self.metrics.filtered.increment(rejected.len() as u64);
        let on_filtered = self.config.filter.as_ref().map_or(OnFiltered::Delete, |f| f.on_filtered);
        match on_filtered {
            OnFiltered::Delete => {
                let receipts: Vec<&str> = rejected.iter().map(|m| m.receipt_handle.as_str()).collect();
                let failed = self.queue.delete(&receipts).await;
                self.metrics.deleted.increment((receipts.len() - failed.len()) as u64);
            }
            OnFiltered::Keep => {
                let receipts: Vec<&str> = rejected.iter().map(|m| m.receipt_handle.as_str()).collect();
                self.queue.release(&receipts).await;
            }
        }
    }

    /// Asks the queue for its ARN and visibility timeout, retrying while it is unreachable.
    ///
    /// # Errors
    /// A non-retryable error (the queue does not exist, access denied): the pipeline cannot run.
    async fn discover(&self) -> Result<(), SqsError> {
        let mut backoff = Backoff::default();
        let attrs = loop {
            match self.queue.attributes(&[QueueAttributeName::QueueArn, QueueAttributeName::VisibilityTimeout]).await {
                Ok(a) => break a,
                Err(e) if e.is_retryable() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(pipeline = %self.name(), error = %e, retry_in_ms = delay.as_millis() as u64, "queue not reachable yet");
                    tokio::select! {
                        () = self.shutdown.drain.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let region = crate::sqs::region_of(self.queue_client());
        let queue_arn =
            attrs.get("QueueArn").cloned().unwrap_or_else(|| arn_from_queue_url(&self.config.queue_url, &region));
        let queue_visibility = attrs.get("VisibilityTimeout").and_then(|v| v.parse().ok()).unwrap_or(30);
        let visibility = self.config.pollers.visibility_timeout.unwrap_or(Duration::from_secs(queue_visibility));
        let _ = self.source.set(EventSource { queue_arn, region });
        let _ = self.visibility.set(visibility);
        self.mark_ready();
        tracing::info!(pipeline = %self.name(), queue = %self.config.queue_url, visibility_timeout_secs = visibility.as_secs(), "queue found");
        if self.config.batch.window * 2 > visibility {
            tracing::warn!(
                pipeline = %self.name(),
                window_ms = self.config.batch.window.as_millis() as u64,
                visibility_timeout_secs = visibility.as_secs(),
                "batch.window_ms is longer than half the visibility timeout: messages may become visible again while a batch fills; raise the queue's visibility timeout or pollers.visibility_timeout_secs"
            );
        }
        Ok(())
    }

    /// The oldest age seen since the last call, if anything was received.
    pub fn take_oldest_age_ms(&self) -> Option<u64> {
        Some(self.oldest_age_ms.swap(0, Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// Tells the autoscaler how many batches are in flight.
    fn report_saturation(&self) {
        let max = self.config.target.max_concurrency;
        self.scaling.saturation(max - self.room.available_permits(), max);
    }

    fn queue_client(&self) -> &aws_sdk_sqs::Client {
        self.queue.client()
    }
}

/// Runs one pipeline until shutdown has drained it.
///
/// # Errors
/// When the queue cannot be used at all (it does not exist, access is denied).
pub async fn run(ctx: Arc<PipelineContext>) -> Result<(), SqsError> {
    ctx.discover().await?;
    if ctx.shutdown.drain.is_cancelled() {
        return Ok(());
    }
    let cfg = &ctx.config;
    let (tx, rx) = mpsc::channel(cfg.pollers.max.max(2));
    let sampler = tokio::spawn(sample_depth(ctx.clone()));
    let fleet = tokio::spawn(Fleet { ctx: ctx.clone(), receives: tx }.run());
    let batches = TaskTracker::new();
    Batcher {
        buffer: BatchBuffer::new(&cfg.batch),
        receives: rx,
        sink: Dispatcher { ctx: ctx.clone(), batches: batches.clone() },
    }
    .run()
    .await;
    batches.close();
    batches.wait().await;
    let _ = fleet.await;
    let _ = sampler.await;
    tracing::info!(pipeline = %ctx.name(), "pipeline drained");
    Ok(())
}

/// Hands cut batches to their own task, at most `max_concurrency` at once.
struct Dispatcher {
    ctx: Arc<PipelineContext>,
    batches: TaskTracker,
}

impl BatchSink for Dispatcher {
    async fn submit(&mut self, batch: Batch) {
        let permit = tokio::select! {
            p = self.ctx.room.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = self.ctx.shutdown.abandon.cancelled() => {
                self.ctx.acker.release(&batch).await;
                self.ctx.metrics.in_flight_messages.decrement(batch.len() as f64);
                return;
            }
        };
        self.ctx.report_saturation();
        self.batches.spawn(process_batch(self.ctx.clone(), batch, permit));
    }
}

/// Dispatches one batch and acknowledges the outcome; releases it if the grace period runs out.
async fn process_batch(ctx: Arc<PipelineContext>, batch: Batch, permit: OwnedSemaphorePermit) {
    let n = batch.len();
    ctx.metrics.in_flight_batches.increment(1.0);
    let outcome = AssertUnwindSafe(async {
        match dispatch(&ctx, &batch).await {
            Some(verdict) => acknowledge(&ctx, &batch, verdict).await,
            None => {
                tracing::info!(pipeline = %ctx.name(), messages = n, "grace period over: releasing an unfinished batch");
                ctx.acker.release(&batch).await;
            }
        }
    })
    .catch_unwind()
    .await;
    if outcome.is_err() {
        // a bug, not a message problem: give the messages back rather than let them wait out
        // their visibility timeout
        tracing::error!(pipeline = %ctx.name(), messages = n, "batch task panicked; releasing its messages");
        ctx.acker.release(&batch).await;
    }
    ctx.metrics.in_flight_messages.decrement(n as f64);
    ctx.metrics.in_flight_batches.decrement(1.0);
    drop(permit);
    ctx.report_saturation();
}

/// Calls the target until it answers (throttles are retried); `None` when shutdown abandoned it.
async fn dispatch(ctx: &PipelineContext, batch: &[ReceivedMessage]) -> Option<Verdict> {
    let abandon = &ctx.shutdown.abandon;
    let mut heartbeat = pin!(keep_invisible(ctx, batch));
    if let Some(limiter) = &ctx.limiter {
        let n = NonZeroU32::new(batch.len() as u32).expect("batches are never empty");
        tokio::select! {
            r = limiter.until_n_ready(n) => { r.expect("the burst fits a whole batch"); }
            () = abandon.cancelled() => return None,
            () = &mut heartbeat => unreachable!("keep_invisible never returns"),
        }
    }
    ctx.metrics.dispatched.increment(batch.len() as u64);
    ctx.metrics.batch_size.record(batch.len() as f64);
    let event = Bytes::from(encode_event(batch));
    let timeout = ctx.config.target.timeout;
    let mut throttles = Backoff::default();
    loop {
        let started = Instant::now();
        let invocation = tokio::select! {
            r = tokio::time::timeout(timeout, ctx.target.invoke(event.clone())) => {
                r.unwrap_or_else(|_| Invocation::FunctionError(format!("timed out after {} s", timeout.as_secs())))
            }
            () = abandon.cancelled() => return None,
            () = &mut heartbeat => unreachable!("keep_invisible never returns"),
        };
        ctx.metrics.dispatch_duration.record(started.elapsed().as_secs_f64());
        match invocation {
            Invocation::Response(body) => return Some(response::interpret(&body, batch, ctx.config.fifo)),
            Invocation::FunctionError(reason) => return Some(Verdict::AllFailed(reason)),
            Invocation::Throttled(reason) => {
                ctx.metrics.batches_throttled.increment(1);
                ctx.scaling.throttle();
                let delay = throttles.next_delay();
                tracing::warn!(pipeline = %ctx.name(), reason, retry_in_ms = delay.as_millis() as u64, "target throttled");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = abandon.cancelled() => return None,
                    () = &mut heartbeat => unreachable!("keep_invisible never returns"),
                }
            }
        }
    }
}

/// Counts the outcome and carries out the acknowledgement plan.
async fn acknowledge(ctx: &PipelineContext, batch: &[ReceivedMessage], verdict: Verdict) {
    let plan = ack::plan(
        batch,
        &verdict,
        &ctx.config.retry,
        ctx.config.dead_letter.as_ref().map(|d| d.max_receive_count),
        &mut fastrand::f64,
    );
    let failed = plan.failed();
    ctx.metrics.succeeded.increment(plan.delete.len() as u64);
    ctx.metrics.failed.increment(failed as u64);
    let reason = match &verdict {
        Verdict::AllSucceeded => {
            ctx.metrics.batches_success.increment(1);
            String::new()
        }
        Verdict::Partial(_) => {
            ctx.metrics.batches_partial.increment(1);
            response::ITEM_FAILURE_REASON.to_string()
        }
        Verdict::AllFailed(reason) => {
            ctx.metrics.batches_failure.increment(1);
            reason.clone()
        }
    };
    if failed > 0 {
        tracing::warn!(pipeline = %ctx.name(), messages = batch.len(), failed, dead_lettered = plan.dead_letter.len(), reason = %reason, "batch failed");
    }
    ctx.acker.execute(batch, &plan, &reason).await;
}

/// Extends the visibility of a batch's messages while it runs: first half a visibility timeout
/// after the oldest of them was received (time in the batcher counts), then every half timeout.
/// Never returns; dropped when the batch is done.
async fn keep_invisible(ctx: &PipelineContext, batch: &[ReceivedMessage]) {
    let visibility = ctx.visibility.get().copied().unwrap_or(Duration::from_secs(30));
    if visibility < Duration::from_secs(2) {
        return std::future::pending().await;
    }
    let secs = visibility.as_secs() as i32;
    let oldest = batch.iter().map(|m| m.received_at).min().unwrap_or_else(Instant::now);
    let mut next = oldest + visibility / 2;
    loop {
        tokio::time::sleep_until(next).await;
        next = Instant::now() + visibility / 2;
        let entries: Vec<(&str, i32)> = batch.iter().map(|m| (m.receipt_handle.as_str(), secs)).collect();
        let failed = ctx.queue.change_visibility(&entries).await;
        tracing::debug!(pipeline = %ctx.name(), messages = entries.len(), failed = failed.len(), "extended visibility");
    }
}
