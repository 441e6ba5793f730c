//! The batch task: one per cut batch, holding a concurrency slot while it dispatches the batch
//! and settles the outcome (or releases the batch when shutdown abandons it).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::ack::Acker;
use crate::batch::{Batch, BatchSink, GroupsDone};
use crate::dispatch::concurrency::Member;
use crate::dispatch::{Dispatcher, Outcome};
use crate::event::ReceivedMessage;
use crate::poller::Scaling;

/// What every batch task uses.
pub(super) struct BatchWork {
    pub dispatcher: Dispatcher,
    pub acker: Acker,
    /// The slot waits and the batches in flight.
    pub metrics: crate::metrics::BatchMetrics,
    pub abandon: CancellationToken,
    /// FIFO: tells the batcher which groups a finished batch ran.
    pub done: mpsc::UnboundedSender<GroupsDone>,
    /// `[telemetry]`: the batch spans, and the lease keeper's view of them.
    pub tracer: Option<crate::telemetry::PipelineTracer>,
    pub lease_spans: Option<Arc<crate::telemetry::LeaseSpans>>,
    /// `[pipelines.idempotency]`: keys claimed before dispatch, completed after success.
    pub idempotency: Option<Arc<crate::fleet::idempotency::Idempotency>>,
}

/// Runs cut batches in their own tasks, at most the concurrency limit at once.
pub(super) struct BatchRunner {
    pub work: Arc<BatchWork>,
    pub slots: Arc<Member>,
    /// `target.fleet_max_concurrency`: a batch takes a fleet slot after its local one.
    pub fleet: Option<Arc<crate::fleet::FleetSlots>>,
    pub scaling: Arc<Scaling>,
    /// The batch tasks: the drain waits for them all once the batcher has stopped.
    pub tasks: TaskTracker,
}

impl BatchRunner {
    pub(super) fn new(
        work: &Arc<BatchWork>,
        slots: Arc<Member>,
        fleet: Option<Arc<crate::fleet::FleetSlots>>,
        scaling: &Arc<Scaling>,
        tasks: &TaskTracker,
    ) -> Self {
        BatchRunner { work: work.clone(), slots, fleet, scaling: scaling.clone(), tasks: tasks.clone() }
    }

    /// Tells the autoscaler how many batches are in flight, of how many the limit allows; the
    /// limit.
    fn report_saturation(slots: &Member, scaling: &Scaling) -> usize {
        let (in_flight, limit) = slots.saturation();
        scaling.saturation(in_flight, limit);
        limit
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
        // the fleet's slot, under the messages' leases as the local one
        let fleet_slot = match &self.fleet {
            None => None,
            Some(fleet) => tokio::select! {
                s = fleet.acquire() => Some((fleet.clone(), s)),
                () = self.work.abandon.cancelled() => {
                    self.slots.release(slot);
                    self.work.acker.release(&batch).await;
                    let _ = self.work.done.send(groups);
                    return;
                }
            },
        };
        let slot_wait = waiting.elapsed();
        self.work.metrics.slot_wait.record(slot_wait.as_secs_f64());
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
                let (started, messages) = (std::time::Instant::now(), batch.len());
                let hold = crate::dispatch::concurrency::SlotHold::new(&slots, slot).with_fleet(fleet_slot);
                let mut hold = Some(hold);
                process_batch(&work, batch, groups, cut, slot_wait, &mut hold).await;
                if let Some(hold) = hold {
                    hold.release();
                }
                let limit = Self::report_saturation(&slots, &scaling);
                scaling.tasks.batch_done(messages, started.elapsed(), limit);
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
    let metrics = &work.metrics;
    metrics.in_flight_batches.increment(1.0);
    // [telemetry]: the batch's span, when it is sampled; its extensions are told to it
    let span = work.tracer.as_ref().and_then(|t| t.batch(&batch, cut, slot_wait));
    if let (Some(spans), Some(s)) = (&work.lease_spans, &span) {
        spans.attach(&batch, s);
    }
    // FIFO: which groups failed, and how long their messages stay back
    let outcome =
        AssertUnwindSafe(dispatch_and_settle(work, &batch, &groups, span.as_ref(), slot)).catch_unwind().await;
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

/// Dispatches the batch and settles its outcome, telling the batch's span (when it is sampled)
/// of both; the groups that failed (FIFO), each with how long its messages stay back.
async fn dispatch_and_settle(
    work: &BatchWork,
    batch: &Batch,
    groups: &GroupsDone,
    span: Option<&crate::telemetry::BatchSpan>,
    slot: &mut Option<crate::dispatch::concurrency::SlotHold<'_>>,
) -> Vec<(String, i32)> {
    let traceparent = span.map(crate::telemetry::BatchSpan::traceparent);
    let dispatching = span.map(|s| s.child("dispatch", None));
    let (outcome, claims) = match &work.idempotency {
        None => (work.dispatcher.dispatch(batch, &work.abandon, traceparent.as_deref(), slot).await, Vec::new()),
        Some(idem) => {
            let claims = idem.claim(batch).await;
            let dispatching = dispatch_claimed(work, batch, &claims, traceparent.as_deref(), slot);
            let outcome = tokio::select! {
                o = dispatching => o,
                () = idem.keep_claimed(&claims) => unreachable!("keep_claimed runs until dropped"),
            };
            (outcome, claims)
        }
    };
    if let Some(child) = dispatching {
        let (name, error) = outcome_of(&outcome);
        child.dispatched(name, error);
    }
    let settling = span.map(|s| s.child("settle", Some("settle")));
    let (plan, failed) = settle(work, batch, groups, &outcome).await;
    if let (Some(idem), false) = (&work.idempotency, claims.is_empty()) {
        let deleted = plan.as_ref().map(|p| p.delete.clone()).unwrap_or_default();
        idem.finish(&claims, |i| deleted.contains(&i)).await;
    }
    if let Some(child) = settling {
        child.end();
    }
    if let Some(s) = span {
        let (name, error) = outcome_of(&outcome);
        let settled = plan.as_ref().map(|p| (&p.delete[..], &p.retry[..], &p.dead_letter[..]));
        s.settled(batch, name, error, settled);
    }
    failed
}

/// Dispatches the messages of `batch` whose claims allow it (claimed, or without a key) and
/// answers for the whole batch: a completed key's message succeeded (deleted, never dispatched),
/// a busy key's failed asking to come back when the other claim would expire — on a FIFO queue
/// with the rest of its group behind it, never dispatched ahead of it.
async fn dispatch_claimed(
    work: &BatchWork,
    batch: &Batch,
    claims: &[crate::fleet::idempotency::Claim],
    traceparent: Option<&str>,
    slot: &mut Option<crate::dispatch::concurrency::SlotHold<'_>>,
) -> Outcome {
    use crate::dispatch::response::{Ask, Failed, Verdict};
    use crate::fleet::idempotency::Claim;
    let mut go = Vec::new();
    let mut held = Vec::new();
    let mut stopped: Vec<&str> = Vec::new();
    for (i, (m, claim)) in batch.iter().zip(claims).enumerate() {
        let group = m.group_id.as_deref();
        if group.is_some_and(|g| stopped.contains(&g)) {
            held.push(Failed::at(i));
            continue;
        }
        match claim {
            Claim::Completed => {}
            Claim::Busy(d) => {
                held.push(Failed {
                    index: i,
                    ask: Ask::RetryAfter(d.as_secs().max(1) + u64::from(d.subsec_nanos() > 0)),
                });
                stopped.extend(group);
            }
            Claim::Claimed { .. } | Claim::Unkeyed => go.push(i),
        }
    }
    if go.len() == batch.len() {
        return work.dispatcher.dispatch(batch, &work.abandon, traceparent, slot).await;
    }
    let mut failed = held;
    let mut reason = crate::dispatch::response::ITEM_FAILURE_REASON.to_string();
    if !go.is_empty() {
        let part: Batch = go.iter().map(|&i| batch[i].clone()).collect();
        match work.dispatcher.dispatch(&part, &work.abandon, traceparent, slot).await {
            Outcome::Answered(v) => match v {
                Verdict::AllSucceeded => {}
                Verdict::Partial(f) => failed.extend(f.into_iter().map(|f| f.moved_to(&go))),
                Verdict::AllFailed(why) => {
                    failed.extend(go.iter().map(|&i| Failed::at(i)));
                    reason = why;
                }
            },
            other => return other,
        }
    }
    failed.sort_by_key(|f| f.index);
    Outcome::Answered(Verdict::of_failures(failed, batch.len(), reason))
}

/// Settles a dispatch's outcome: the plan carried out (none when the batch was abandoned and
/// released) and the groups that failed. The settling futures are boxed: a batch task waits on
/// its worker with the dispatch's state only, not room for the largest settlement beside it
/// (issue 32: 1,000 batches waiting at the worker held ~3.5 KiB each).
async fn settle(
    work: &BatchWork,
    batch: &Batch,
    groups: &GroupsDone,
    outcome: &Outcome,
) -> (Option<crate::ack::AckPlan>, Vec<(String, i32)>) {
    match outcome {
        Outcome::Answered(verdict) => {
            let plan = Box::pin(work.acker.settle(batch, verdict)).await;
            let failed = plan.failed_groups(batch);
            (Some(plan), failed)
        }
        Outcome::Throttled => {
            let plan = Box::pin(work.acker.release_throttled(batch)).await;
            let failed = plan.failed_groups(batch);
            (Some(plan), failed)
        }
        Outcome::Abandoned => {
            tracing::info!(pipeline = %work.metrics.pipeline, messages = batch.len(), "shutdown: releasing an unfinished batch (the grace period is over, or the open circuit breaker held it)");
            Box::pin(work.acker.release(batch)).await;
            (None, groups.groups.iter().map(|g| (g.clone(), 0)).collect())
        }
    }
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
