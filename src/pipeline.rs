//! One pipeline end to end: discover the queue, wire the stages, and drain in order on shutdown
//! (pollers → batcher → in-flight batches → release the rest).
//!
//! The stages and what each is given:
//! - [`Fleet`] (pollers): the queue, the [`LeaseKeeper`] (room before each receive), the
//!   [`Intake`] and the autoscaler; it sends what passes to the batcher.
//! - [`Batcher`]: cuts batches, holds FIFO groups that have a batch running, and hands batches
//!   to [`BatchRunner`], which takes a concurrency slot and runs each in its own task.
//! - [`Dispatcher`]: calls the target; [`Acker`]: settles the outcome through the lease keeper.
//! - the lease keeper's heartbeat extends every outstanding message until it is settled.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::ack::Acker;
use crate::backoff::Backoff;
use crate::batch::{Batch, BatchBuffer, BatchSink, Batcher, CapStage, GroupCap, GroupGate, GroupsDone};
use crate::config::PipelineConfig;
use crate::dispatch::breaker::Breaker;
use crate::dispatch::concurrency::{Member, MemberSettings, Slots};
use crate::dispatch::{Dispatcher, Outcome, Target};
use crate::event::{arn_from_queue_url, EventSource, ReceivedMessage};
use crate::intake::Intake;
use crate::lease::LeaseKeeper;
use crate::metrics::PipelineMetrics;
use crate::poller::{sample_depth, DepthSampler, Fleet, PollerStage, Scaling};
use crate::shutdown::Shutdown;
use crate::sqs::{Queue, Reachability, SqsError};

/// What a pipeline is built from.
pub struct PipelineParts {
    pub config: PipelineConfig,
    /// The source queue (`config.queue_url`) and the dead-letter queue, if configured.
    pub queue: Arc<dyn Queue>,
    pub dead_letter: Option<Arc<dyn Queue>>,
    pub target: Target,
    pub metrics: PipelineMetrics,
    pub shutdown: Shutdown,
    /// Whether the pipeline reaches its queue; `/readyz` reads it. The queue's requests report
    /// to it when it is an [`crate::sqs::SqsQueue`] made `reporting_to` it.
    pub ready: Arc<Reachability>,
    /// Pause switches (admin API, health check).
    pub control: Arc<crate::control::Control>,
    /// `[pipelines.large_payloads]`: the S3 store payload pointers are resolved from.
    pub payloads: Option<Arc<crate::payload::PayloadStore>>,
    /// `target.pool`: the shared pool's slots (`None`: the pipeline has its own).
    pub pool: Option<Arc<Slots>>,
    /// `[telemetry]`: the pipeline's spans (`None`: off).
    pub telemetry: Option<crate::telemetry::PipelineTracer>,
}

/// How many messages over their group's cap may wait under lease: the room
/// (`lease.max_outstanding`) beyond what the batches in flight need and one receive (so that the
/// pollers can always receive the other groups' messages).
fn max_held(cfg: &PipelineConfig) -> usize {
    cfg.lease
        .max_outstanding
        .saturating_sub(cfg.target.max_concurrency.saturating_mul(cfg.batch.size))
        .saturating_sub(crate::limits::RECEIVE_MAX)
}

/// What discovery learns about the queue.
struct Discovered {
    source: EventSource,
    visibility: Duration,
    /// The queue's `MaximumMessageSize` (SQS refuses larger messages): what the byte budget
    /// reserves for each message a receive may bring.
    max_message_bytes: usize,
}

/// Asks the queue for its ARN and visibility timeout, retrying while it is unreachable; `None`
/// when shutdown came first.
///
/// # Errors
/// A non-retryable error (the queue does not exist, access denied): the pipeline cannot run.
async fn discover(
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

/// Runs one pipeline until shutdown has drained it.
///
/// # Errors
/// When the queue cannot be used at all (it does not exist, access is denied).
pub async fn run(parts: PipelineParts) -> Result<(), SqsError> {
    let PipelineParts {
        config: cfg,
        queue,
        dead_letter,
        target,
        metrics,
        shutdown,
        ready,
        control,
        payloads,
        pool,
        telemetry,
    } = parts;
    let lease_spans = telemetry.as_ref().map(|_| Arc::new(crate::telemetry::LeaseSpans::default()));
    let Some(found) = discover(&cfg, queue.as_ref(), &shutdown.drain).await? else { return Ok(()) };
    ready.found();

    let leases = Arc::new(
        LeaseKeeper::new(
            queue.clone(),
            found.visibility,
            cfg.lease.max_lease,
            cfg.lease.max_outstanding,
            metrics.clone(),
        )
        .with_byte_budget(cfg.lease.max_outstanding_bytes, found.max_message_bytes)
        .stopping_with(shutdown.clone())
        .tracing_to(lease_spans.clone().map(|s| s as Arc<dyn crate::lease::ExtensionWatcher>)),
    );
    // a poller the byte budget cannot cover only waits for room: the fleet stops at what it covers
    let receives = leases.receives_in_budget().unwrap_or(usize::MAX);
    if receives < cfg.pollers.max {
        tracing::warn!(pipeline = %cfg.name, pollers_max = cfg.pollers.max, receives_at_once = receives, max_message_bytes = found.max_message_bytes, max_outstanding_bytes = cfg.lease.max_outstanding_bytes, "the byte budget covers fewer receives at once than pollers.max: the fleet stops there; raise lease.max_outstanding_bytes, or lower the queue's MaximumMessageSize to what producers send, for more");
    }
    let fleet_max = cfg.pollers.max.min(receives.max(cfg.pollers.min));
    let scaling = Arc::new(Scaling::new(&cfg.name, cfg.pollers.min, fleet_max, metrics.pollers_desired.clone()));
    let mut intake = Intake::new(found.source, cfg.filter.clone(), leases.clone(), metrics.clone());
    intake.payloads = payloads.clone();
    let intake = Arc::new(intake);
    let acker = Acker {
        payloads: payloads.clone(),
        leases: leases.clone(),
        dead_letter: dead_letter.clone(),
        max_receive_count: cfg.dead_letter.as_ref().map(|d| d.max_receive_count),
        fifo: cfg.fifo,
        pipeline: cfg.name.clone(),
        retry: cfg.retry.clone(),
        metrics: metrics.clone(),
    };
    // the batches in flight, at most the (adaptive) limit of the pipeline or of its pool; the
    // pollers' room follows its share (the batches it may run, one being cut, and what the group
    // cap may hold)
    let configured_room = cfg.lease.max_outstanding;
    let cap_room = cfg.batch.max_in_flight_per_group.map_or(0, |_| max_held(&cfg));
    let slots = pool.unwrap_or_else(|| Arc::new(Slots::new(cfg.target.max_concurrency, cfg.target.adaptive)));
    let follow_room = slots.is_adaptive() || cfg.target.pool.is_some();
    let slots = Arc::new(slots.join(MemberSettings {
        priority: cfg.target.pool.as_ref().map_or(0, |p| p.priority),
        weight: cfg.target.pool.as_ref().map_or(1, |p| p.weight),
        max: cfg.target.max_concurrency,
        batch_size: cfg.batch.size,
        gauge: metrics.concurrency_limit.clone(),
        status: metrics.status.clone(),
        room: follow_room.then(|| {
            let leases = leases.clone();
            Arc::new(move |messages: usize| leases.set_room((messages + cap_room).min(configured_room)))
                as Arc<dyn Fn(usize) + Send + Sync>
        }),
    }));
    *metrics.status.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
        cfg.target.pool.as_ref().map(|p| p.name.clone());
    let breaker = Arc::new(Breaker::new(cfg.target.breaker.clone(), control.clone(), metrics.clone()));
    let mut dispatcher =
        Dispatcher::new(&cfg.target, cfg.batch.size, cfg.fifo, target, scaling.clone(), metrics.clone());
    dispatcher.bisect = cfg.retry.bisect;
    dispatcher.slots = Some(slots.clone());
    dispatcher.breaker = cfg.target.breaker.enabled.then(|| breaker.clone());
    dispatcher.drain = shutdown.drain.clone();
    let breaker_clock = tokio::spawn({
        let breaker = breaker.clone();
        let stop = shutdown.drain.clone();
        async move { breaker.keep_time(stop).await }
    });

    // the heartbeat outlives every other stage: it stops once every lease is settled
    let stop_heartbeat = CancellationToken::new();
    let heartbeat = tokio::spawn({
        let leases = leases.clone();
        let stop = stop_heartbeat.clone();
        async move { leases.heartbeat(stop).await }
    });
    let sampler = tokio::spawn(sample_depth(DepthSampler {
        interval: cfg.depth_interval,
        queue: queue.clone(),
        follow_visibility: cfg.pollers.visibility_timeout.is_none().then(|| leases.clone()),
        dead_letter,
        intake: intake.clone(),
        scaling: scaling.clone(),
        metrics: metrics.clone(),
        drain: shutdown.drain.clone(),
    }));
    let health = cfg.target.health_url.clone().map(|url| {
        tokio::spawn(crate::control::watch_health(url, control.clone(), cfg.name.clone(), shutdown.drain.clone()))
    });
    let (tx, rx) = mpsc::channel(cfg.pollers.max.max(2));
    let fleet = tokio::spawn(
        Fleet {
            stage: Arc::new(PollerStage {
                // (every receive asks for the lease keeper's visibility timeout, not this one's)
                config: cfg.pollers.clone(),
                queue: queue.clone(),
                leases: leases.clone(),
                intake,
                scaling: scaling.clone(),
                metrics: metrics.clone(),
                abandon: shutdown.abandon.clone(),
                control: control.clone(),
                tracer: telemetry.clone(),
            }),
            receives: tx,
            drain: shutdown.drain.clone(),
        }
        .run(),
    );
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let runner = BatchRunner {
        work: Arc::new(BatchWork {
            dispatcher,
            acker,
            abandon: shutdown.abandon.clone(),
            done: done_tx,
            tracer: telemetry,
            lease_spans,
        }),
        slots,
        scaling,
        tasks: TaskTracker::new(),
    };
    let tasks = runner.tasks.clone();
    let work = runner.work.clone();
    Batcher {
        buffer: BatchBuffer::new(&cfg.batch),
        receives: rx,
        gate: cfg.fifo.then(GroupGate::default),
        cap: cfg
            .batch
            .max_in_flight_per_group
            .map(|cap| CapStage::new(GroupCap::new(cap, max_held(&cfg)), metrics.clone())),
        done: done_rx,
        sink: runner,
    }
    .run()
    .await;
    tasks.close();
    tasks.wait().await;
    if let Some(h) = health {
        let _ = h.await;
    }
    let _ = breaker_clock.await;
    for (what, r) in [("pollers", fleet.await), ("depth sampler", sampler.await)] {
        if let Err(e) = r {
            tracing::error!(pipeline = %cfg.name, error = %e, "the {what} task failed");
        }
    }
    // every stage is done: anything still leased would stay hidden for its visibility timeout
    let leftover = leases.outstanding_ids();
    if !leftover.is_empty() {
        tracing::error!(pipeline = %cfg.name, messages = leftover.len(), "messages were still leased after the drain; releasing them");
        let ids: Vec<&str> = leftover.iter().map(String::as_str).collect();
        leases.release(&ids).await;
    }
    stop_heartbeat.cancel();
    if let Err(e) = heartbeat.await {
        tracing::error!(pipeline = %cfg.name, error = %e, "the lease keeper's heartbeat failed");
    }
    // no batch runs any more: the target's own processes (runtime-api workers) can go
    work.dispatcher.target.stop(shutdown.worker_stop_grace()).await;
    tracing::info!(pipeline = %cfg.name, "pipeline drained");
    Ok(())
}

/// What every batch task uses.
struct BatchWork {
    dispatcher: Dispatcher,
    acker: Acker,
    abandon: CancellationToken,
    /// FIFO: tells the batcher which groups a finished batch ran.
    done: mpsc::UnboundedSender<GroupsDone>,
    /// `[telemetry]`: the batch spans, and the lease keeper's view of them.
    tracer: Option<crate::telemetry::PipelineTracer>,
    lease_spans: Option<Arc<crate::telemetry::LeaseSpans>>,
}

/// Runs cut batches in their own tasks, at most the concurrency limit at once.
struct BatchRunner {
    work: Arc<BatchWork>,
    slots: Arc<Member>,
    scaling: Arc<Scaling>,
    tasks: TaskTracker,
}

impl BatchRunner {
    /// Tells the autoscaler how many batches are in flight, of how many the limit allows.
    fn report_saturation(slots: &Member, scaling: &Scaling) {
        let (in_flight, limit) = slots.saturation();
        scaling.saturation(in_flight, limit);
    }
}

impl BatchSink for BatchRunner {
    async fn submit(&mut self, batch: Batch, groups: GroupsDone) {
        let waiting = std::time::Instant::now();
        let cut = std::time::SystemTime::now();
        let slot = tokio::select! {
            p = self.slots.acquire() => p,
            () = self.work.abandon.cancelled() => {
                self.work.acker.release(&batch).await;
                let _ = self.work.done.send(groups);
                return;
            }
        };
        let slot_wait = waiting.elapsed();
        self.work.acker.metrics.slot_wait.record(slot_wait.as_secs_f64());
        Self::report_saturation(&self.slots, &self.scaling);
        let (slots, scaling) = (self.slots.clone(), self.scaling.clone());
        let work = self.work.clone();
        // the batch's log lines carry its trace id, when a message brought one
        let span = match crate::trace::Trace::of_batch(&batch) {
            Some(t) => tracing::info_span!("batch", trace_id = %t.trace_id),
            None => tracing::Span::none(),
        };
        self.tasks.spawn(
            async move {
                let mut hold = Some(crate::dispatch::concurrency::SlotHold::new(&slots, slot));
                process_batch(&work, batch, groups, cut, slot_wait, &mut hold).await;
                if let Some(hold) = hold {
                    hold.release();
                }
                Self::report_saturation(&slots, &scaling);
            }
            .instrument(span),
        );
    }

    async fn release_after(&mut self, messages: Vec<ReceivedMessage>, secs: i32) {
        if secs == 0 {
            self.work.acker.release(&messages).await;
        } else {
            self.work.acker.release_after(&messages, secs).await;
        }
    }

    async fn release_in_background(&mut self, messages: Vec<ReceivedMessage>, secs: i32) {
        // in its own task: the batcher goes on cutting while SQS answers (the drain waits for it)
        let work = self.work.clone();
        self.tasks.spawn(async move { work.acker.release_after(&messages, secs).await });
    }
}

/// Dispatches one batch and settles the outcome; releases it if shutdown abandons it.
/// `cut`: when the batch was handed over; `slot_wait`: how long it waited for its slot.
async fn process_batch(
    work: &BatchWork,
    batch: Batch,
    mut groups: GroupsDone,
    cut: std::time::SystemTime,
    slot_wait: Duration,
    slot: &mut Option<crate::dispatch::concurrency::SlotHold<'_>>,
) {
    let n = batch.len();
    let metrics = &work.acker.metrics;
    metrics.in_flight_batches.increment(1.0);
    // [telemetry]: the batch's span, when it is sampled; its extensions are told to it
    let span = work.tracer.as_ref().and_then(|t| t.batch(&batch, cut, slot_wait));
    if let (Some(spans), Some(s)) = (&work.lease_spans, &span) {
        spans.attach(&batch, s);
    }
    // FIFO: which groups failed, and how long their messages stay back
    let outcome = AssertUnwindSafe(async {
        let traceparent = span.as_ref().map(crate::telemetry::BatchSpan::traceparent);
        let dispatching = span.as_ref().map(|s| s.child("dispatch", None));
        let outcome = work.dispatcher.dispatch(&batch, &work.abandon, traceparent.as_deref(), slot).await;
        if let Some(child) = dispatching {
            let (name, error) = outcome_of(&outcome);
            child.dispatched(name, error);
        }
        let settling = span.as_ref().map(|s| s.child("settle", Some("settle")));
        // the settling futures are boxed: a batch task waits on its worker with the dispatch's
        // state only, not room for the largest settlement beside it (issue 32: 1,000 batches
        // waiting at the worker held ~3.5 KiB each)
        let (plan, failed) = match outcome {
            Outcome::Answered(ref verdict) => {
                let plan = Box::pin(work.acker.settle(&batch, verdict)).await;
                let failed = plan.failed_groups(&batch);
                (Some(plan), failed)
            }
            Outcome::Throttled => {
                let plan = Box::pin(work.acker.release_throttled(&batch)).await;
                let failed = plan.failed_groups(&batch);
                (Some(plan), failed)
            }
            Outcome::Abandoned => {
                tracing::info!(pipeline = %metrics.pipeline, messages = n, "shutdown: releasing an unfinished batch (the grace period is over, or the open circuit breaker held it)");
                Box::pin(work.acker.release(&batch)).await;
                (None, groups.groups.iter().map(|g| (g.clone(), 0)).collect())
            }
        };
        if let Some(child) = settling {
            child.end();
        }
        if let Some(s) = &span {
            let (name, error) = outcome_of(&outcome);
            let settled = plan.as_ref().map(|p| (&p.delete[..], &p.retry[..], &p.dead_letter[..]));
            s.settled(&batch, name, error, settled);
        }
        failed
    })
    .catch_unwind()
    .await;
    if let Some(s) = &span {
        if let Some(spans) = &work.lease_spans {
            spans.detach(&batch);
        }
        if outcome.is_err() {
            s.error("the batch task panicked; its messages were released");
        }
        s.end();
    }
    groups.failed = match &outcome {
        Ok(failed) => failed.clone(),
        Err(_) => groups.groups.iter().map(|g| (g.clone(), 0)).collect(),
    };
    if outcome.is_err() {
        // a bug, not a message problem: give the messages back rather than let them wait out
        // their visibility timeout
        tracing::error!(pipeline = %metrics.pipeline, messages = n, "batch task panicked; releasing its messages");
        Box::pin(work.acker.release(&batch)).await;
    }
    // the batcher is gone once shutdown has flushed it; nothing is held then
    let _ = work.done.send(groups);
    metrics.in_flight_batches.decrement(1.0);
}

/// The `sqs_poller.outcome` of a batch, and its error description when it failed.
fn outcome_of(outcome: &Outcome) -> (&'static str, Option<String>) {
    match outcome {
        Outcome::Answered(crate::dispatch::response::Verdict::AllSucceeded) => ("success", None),
        Outcome::Answered(crate::dispatch::response::Verdict::Partial(f)) => {
            ("partial", Some(format!("{} messages failed", f.len())))
        }
        Outcome::Answered(crate::dispatch::response::Verdict::AllFailed(reason)) => ("failure", Some(reason.clone())),
        Outcome::Throttled => ("throttled", Some("the target throttled the batch past max_throttled_secs".into())),
        Outcome::Abandoned => ("abandoned", Some("released at shutdown".into())),
    }
}
