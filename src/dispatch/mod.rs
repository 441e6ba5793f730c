//! Dispatch: one call of the target per batch, and what its answer means.
//!
//! A target receives Lambda's SQS event and answers the way a Lambda function does. The
//! transport differs per target (one file each); the reading of the answer
//! ([`response::interpret`]) is shared. [`Dispatcher::call`] is the loop around one batch: the
//! rate limit, the timeout of the target's work, and the throttle policy (a throttled batch is
//! tried again with backoff, held at most `max_throttled_secs`, then released).
//!
//! `timeout_secs` counts the target's work, not a wait for it: [`Target::invoke`] starts the
//! clock when the target starts the batch (for `runtime-api`, when a worker takes it). Targets
//! only need to be cancel-safe (a dropped command is killed).

pub mod breaker;
pub mod command;
pub mod concurrency;
pub mod http;
pub mod lambda;
pub mod response;
pub mod runtime_api;
pub mod worker_process;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{TargetConfig, TargetKind};
use crate::event::{Event, ReceivedMessage};
use crate::metrics::DispatchMetrics;
use crate::trace::TraceContext;
use response::{Failed, Verdict};

/// What a target did with an event, before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// The function ran; this is what it returned (read with the `batchItemFailures` rules).
    Response(Bytes),
    /// The function failed as a whole (error status, non-zero exit, unreachable): every message
    /// of the batch failed.
    FunctionError(String),
    /// The target asked to slow down (HTTP 429/503): the batch is tried again later and its
    /// messages are not counted as failed.
    Throttled(String),
    /// The target could not do the work: a timeout, a request that failed, an HTTP 5xx other
    /// than 503, no connection at all (`connect`). Counts toward the circuit breaker and pushes
    /// the adaptive limit down. Every message of the batch failed — unless the breaker is open,
    /// which holds the batch under lease; a refused connection (nothing reached the worker) is
    /// retried as a throttle is.
    Unavailable { reason: String, connect: bool },
}

impl Invocation {
    /// The target was unavailable (not a refused connection).
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Invocation::Unavailable { reason: reason.into(), connect: false }
    }
}

/// A configured target. One per pipeline, so the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Target {
    Http(http::HttpTarget),
    Command(command::CommandTarget),
    Lambda(lambda::LambdaTarget),
    RuntimeApi(runtime_api::RuntimeApiTarget),
    /// A function in this process: for embedding the pipeline, and for the simulation tests.
    Function(Function),
}

/// The handler of a [`Target::Function`]: the event in, what the function did out.
pub type Function = Arc<dyn Fn(Bytes) -> crate::sqs::BoxFuture<'static, Invocation> + Send + Sync>;

impl Target {
    /// Sets a target up: `lambda` is the Lambda client (for `lambda` targets), `region` names
    /// the function for `runtime-api` workers, which start here, and is the default SigV4
    /// region; `aws` signs `http` requests when `sigv4_service` is set; `metrics` are
    /// the pipeline's.
    ///
    /// # Errors
    /// When the Runtime API cannot bind a loopback port, or the TLS files of an `http` target
    /// cannot be used, or it must sign and no AWS credentials are configured.
    pub async fn new(
        cfg: &TargetConfig,
        lambda: &aws_sdk_lambda::Client,
        metrics: &DispatchMetrics,
        region: &str,
        aws: &crate::aws::Aws,
    ) -> std::io::Result<Self> {
        let pipeline = &metrics.pipeline;
        let overflows = metrics.worker_output_overflows.clone();
        Ok(match &cfg.kind {
            TargetKind::Http { url } => {
                let signer = cfg
                    .http
                    .sigv4
                    .as_ref()
                    .map(|s| aws.request_signer(&s.service, s.region.as_deref().unwrap_or(region)));
                Target::Http(http::HttpTarget::new(url, &cfg.http, signer, overflows).map_err(std::io::Error::other)?)
            }
            TargetKind::Command { program, args } => {
                Target::Command(command::CommandTarget::new(program, args, overflows))
            }
            TargetKind::Lambda { function_name, qualifier } => {
                Target::Lambda(lambda::LambdaTarget::new(lambda.clone(), function_name, qualifier.as_deref()))
            }
            TargetKind::RuntimeApi { program, args, workers, handler } => {
                let command = runtime_api::WorkerCommand {
                    program: program.clone(),
                    args: args.clone(),
                    handler: handler.clone(),
                    function_name: pipeline.to_string(),
                    region: region.to_string(),
                };
                Target::RuntimeApi(
                    runtime_api::RuntimeApiTarget::start(
                        command,
                        runtime_api::Settings {
                            workers: *workers,
                            max_wait: cfg.max_throttled,
                            function_timeout: cfg.timeout,
                            overflows,
                        },
                    )
                    .await?,
                )
            }
        })
    }

    /// Stops what the target keeps running (the `runtime-api` workers) once the pipeline has
    /// drained: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&self, grace: Duration) {
        if let Target::RuntimeApi(t) = self {
            t.stop(grace).await;
        }
    }

    /// Sends one event (`{"Records":[…]}`) to the target; the work may take `timeout`, counted
    /// from when the target starts it. `trace` is the batch's trace context ([`crate::trace`]).
    pub async fn invoke(&self, event: &Event<'_>, timeout: Duration, trace: &TraceContext) -> Invocation {
        let timed_out = || Invocation::unavailable(format!("timed out after {} s", timeout.as_secs()));
        // the targets' futures differ in size (the Lambda SDK's is several KiB): each but the
        // HTTP target's is boxed, so a batch waiting for its worker carries only its own target's
        // state (issue 32: a thousand batches in flight)
        match self {
            Target::Http(t) => {
                tokio::time::timeout(timeout, t.invoke(event, trace)).await.unwrap_or_else(|_| timed_out())
            }
            Target::Command(t) => tokio::time::timeout(timeout, Box::pin(t.invoke(event.to_bytes(), trace)))
                .await
                .unwrap_or_else(|_| timed_out()),
            Target::Lambda(t) => tokio::time::timeout(timeout, Box::pin(t.invoke(event.to_bytes())))
                .await
                .unwrap_or_else(|_| timed_out()),
            Target::RuntimeApi(t) => Box::pin(t.invoke(event.to_bytes(), timeout, trace.xray.as_ref())).await,
            Target::Function(f) => {
                tokio::time::timeout(timeout, f(event.to_bytes())).await.unwrap_or_else(|_| timed_out())
            }
        }
    }
}

/// Where the target's pushback goes, so that an earlier stage hears of it without this one
/// reaching back into it: the pipeline's autoscaler (`poller::Scaling`) implements it and holds
/// the fleet back while the target throttles.
pub trait Backpressure: Send + Sync {
    /// The target throttled a batch (a 429 or 503, Lambda's throttling, a worker not yet up).
    fn throttled(&self);
}

/// How one batch's dispatch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered; acknowledge by this verdict.
    Answered(Verdict),
    /// The target kept throttling longer than `max_throttled_secs`: let the batch go with backoff.
    Throttled,
    /// Shutdown gave up on the batch: release it.
    Abandoned,
}

/// Calls the target for batches: rate limit, timeout, throttle policy, circuit breaker.
pub struct Dispatcher {
    pub target: Target,
    timeout: Duration,
    max_throttled: Duration,
    fifo: bool,
    /// `retry.on_batch_error = "bisect"`: see [`Dispatcher::dispatch`].
    bisect: bool,
    limiter: Option<DefaultDirectRateLimiter>,
    fleet_rate: Option<Arc<crate::fleet::FleetRate>>,
    /// Told when the target throttles: the pipeline's autoscaler holds the fleet back.
    backpressure: Arc<dyn Backpressure>,
    metrics: DispatchMetrics,
    /// Told what each call said of the target's capacity (the adaptive limit).
    slots: Option<Arc<concurrency::Member>>,
    breaker: Option<Arc<breaker::Breaker>>,
    /// A batch the breaker holds is released when this fires (the drain), not at the grace's end.
    drain: CancellationToken,
}

/// What a dispatcher is made of besides its target's settings.
pub struct DispatcherParts {
    pub batch_size: usize,
    pub fifo: bool,
    /// `retry.on_batch_error = "bisect"`.
    pub bisect: bool,
    pub target: Target,
    pub backpressure: Arc<dyn Backpressure>,
    pub metrics: DispatchMetrics,
    /// The pipeline's place in its slots, told what each call said of the target's capacity.
    pub slots: Option<Arc<concurrency::Member>>,
    pub breaker: Option<Arc<breaker::Breaker>>,
    /// The drain: a batch the breaker holds is let go when it fires.
    pub drain: CancellationToken,
    /// `target.fleet_rate_per_sec`: the rate shared with the other instances.
    pub fleet_rate: Option<Arc<crate::fleet::FleetRate>>,
}

impl Dispatcher {
    pub fn new(cfg: &TargetConfig, parts: DispatcherParts) -> Self {
        let DispatcherParts {
            batch_size,
            fifo,
            bisect,
            target,
            backpressure,
            metrics,
            slots,
            breaker,
            drain,
            fleet_rate,
        } = parts;
        let limiter = cfg.rate_limit_per_sec.map(|rate| {
            // a whole batch must fit in the bucket at once
            let burst = NonZeroU32::new(rate.get().max(batch_size as u32)).expect("non-zero");
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Dispatcher {
            target,
            timeout: cfg.timeout,
            max_throttled: cfg.max_throttled,
            fifo,
            bisect,
            limiter,
            backpressure,
            metrics,
            slots,
            breaker,
            drain,
            fleet_rate,
        }
    }

    /// Calls the target for a batch ([`Dispatcher::call`]). With `bisect`, a batch that fails as
    /// a whole (a function error, a timeout, an unreadable answer) is split in halves that are
    /// dispatched again at once, recursively, down to single messages: the answer is then a
    /// partial one naming only the messages that failed on their own, so only they take the
    /// retry backoff and count toward the dead-letter threshold. FIFO: the halves go in order,
    /// and a group that failed in the first half does not dispatch its later messages (they are
    /// held behind the failure, as the acknowledgement plan expects).
    ///
    /// A message whose large payload could not be fetched is not dispatched: it fails on its own
    /// (and, on FIFO queues, holds its group's later messages behind it).
    ///
    /// `span` is the `traceparent` of the batch's span ([`crate::telemetry`]), given to the target.
    pub async fn dispatch(
        &self,
        batch: &[ReceivedMessage],
        abandon: &CancellationToken,
        span: Option<&str>,
        slot: &mut Option<concurrency::SlotHold<'_>>,
    ) -> Outcome {
        if batch.iter().all(|m| m.unresolved.is_none()) {
            return self.dispatch_resolved(batch, abandon, span, slot).await;
        }
        let mut failed: Vec<Failed> = Vec::new();
        let mut go: Vec<usize> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            let held =
                self.fifo && m.group_id.is_some() && failed.iter().any(|f| batch[f.index].group_id == m.group_id);
            if m.unresolved.is_some() || held {
                failed.push(Failed::at(i));
            } else {
                go.push(i);
            }
        }
        if go.is_empty() {
            let reason =
                batch.iter().find_map(|m| m.unresolved.as_ref()).map_or_else(String::new, |u| u.reason.clone());
            return Outcome::Answered(Verdict::AllFailed(reason));
        }
        let part: Vec<ReceivedMessage> = go.iter().map(|&i| batch[i].clone()).collect();
        match self.dispatch_resolved(&part, abandon, span, slot).await {
            Outcome::Answered(Verdict::AllSucceeded) => {}
            Outcome::Answered(Verdict::Partial(f)) => failed.extend(f.into_iter().map(|f| f.moved_to(&go))),
            Outcome::Answered(Verdict::AllFailed(reason)) => return Outcome::Answered(Verdict::AllFailed(reason)),
            other => return other,
        }
        failed.sort_unstable_by_key(|f| f.index);
        Outcome::Answered(Verdict::Partial(failed))
    }

    /// [`Dispatcher::dispatch`] for a batch whose payloads are all there.
    async fn dispatch_resolved(
        &self,
        batch: &[ReceivedMessage],
        abandon: &CancellationToken,
        span: Option<&str>,
        slot: &mut Option<concurrency::SlotHold<'_>>,
    ) -> Outcome {
        match self.call(batch, abandon, span, slot).await {
            Outcome::Answered(Verdict::AllFailed(reason)) if self.bisect && batch.len() > 1 => {
                self.metrics.batches_bisected.increment(1);
                tracing::warn!(pipeline = %self.metrics.pipeline, messages = batch.len(), %reason, "the batch failed as a whole: splitting it to find the messages that fail on their own");
                match self.bisect(batch, (0..batch.len()).collect(), abandon, span, slot).await {
                    None => Outcome::Abandoned,
                    Some(mut failed) => {
                        failed.sort_unstable_by_key(|f| f.index);
                        Outcome::Answered(Verdict::of_failures(failed, batch.len(), reason))
                    }
                }
            }
            other => other,
        }
    }

    /// Dispatches the messages at `indexes` of `batch` in two halves, splitting again what fails
    /// as a whole; the indexes that failed on their own, or `None` when shutdown gave up.
    fn bisect<'a, 'h>(
        &'a self,
        batch: &'a [ReceivedMessage],
        indexes: Vec<usize>,
        abandon: &'a CancellationToken,
        span: Option<&'a str>,
        slot: &'a mut Option<concurrency::SlotHold<'h>>,
    ) -> crate::sqs::BoxFuture<'a, Option<Vec<Failed>>>
    where
        'h: 'a,
    {
        Box::pin(async move {
            let (first, second) = indexes.split_at(indexes.len() / 2);
            let mut failed: Vec<Failed> = Vec::new();
            for half in [first, second] {
                // FIFO: messages of a group that failed earlier stay behind the failure
                let (held, go): (Vec<usize>, Vec<usize>) = half.iter().partition(|&&i| {
                    self.fifo
                        && batch[i].group_id.is_some()
                        && failed.iter().any(|f| batch[f.index].group_id == batch[i].group_id)
                });
                failed.extend(held.into_iter().map(Failed::at));
                if go.is_empty() {
                    continue;
                }
                let part: Vec<ReceivedMessage> = go.iter().map(|&i| batch[i].clone()).collect();
                match self.call(&part, abandon, span, slot).await {
                    Outcome::Answered(Verdict::AllSucceeded) => {}
                    Outcome::Answered(Verdict::Partial(f)) => failed.extend(f.into_iter().map(|f| f.moved_to(&go))),
                    Outcome::Answered(Verdict::AllFailed(_)) if go.len() > 1 => {
                        failed.extend(self.bisect(batch, go, abandon, span, &mut *slot).await?);
                    }
                    Outcome::Answered(Verdict::AllFailed(reason)) => {
                        tracing::warn!(pipeline = %self.metrics.pipeline, message_id = %batch[go[0]].message_id, %reason, "the message fails on its own");
                        failed.extend(go.into_iter().map(Failed::at));
                    }
                    // throttled past max_throttled_secs: retried with the backoff, as failures are
                    Outcome::Throttled => failed.extend(go.into_iter().map(Failed::at)),
                    Outcome::Abandoned => return None,
                }
            }
            Some(failed)
        })
    }

    /// Calls the target until it answers, throttles for too long, or `abandon` fires. While the
    /// breaker holds the batch its `slot` is lent back, and taken again before the call.
    pub async fn call(
        &self,
        batch: &[ReceivedMessage],
        abandon: &CancellationToken,
        span: Option<&str>,
        slot: &mut Option<concurrency::SlotHold<'_>>,
    ) -> Outcome {
        self.metrics.dispatched.increment(batch.len() as u64);
        self.metrics.batch_size.record(batch.len() as f64);
        let event = Event::of(batch);
        let trace = TraceContext::of_batch(batch, span);
        let mut first_try = Instant::now();
        let mut throttles = Backoff::default();
        // half-open: this batch is the breaker's one probe until the target's answer (or its
        // unavailability) is told to the breaker; a probe that ends otherwise (throttled past
        // max_throttled_secs, abandoned) hands the turn on when the guard drops
        let mut probe = ProbeTurn(None);
        loop {
            match self.breaker_turn(&mut probe, slot, abandon).await {
                None => return Outcome::Abandoned,
                // time held by the breaker is not time throttled
                Some(true) => first_try = Instant::now(),
                Some(false) => {}
            }
            // every try is a call to the target: each keeps to the rates, a throttled one's retry too
            if !self.pace(batch.len(), abandon).await {
                return Outcome::Abandoned;
            }
            let Some(invocation) = self.invoke(&event, &trace, abandon).await else {
                return Outcome::Abandoned;
            };
            let reason = match self.judge(invocation, batch, &mut probe) {
                Judged::Done(outcome) => return outcome,
                Judged::Held => continue,
                Judged::Throttled(reason) => reason,
            };
            self.metrics.status.set_last_error(format!("target throttled: {reason}"));
            self.metrics.batches_throttled.increment(1);
            self.backpressure.throttled();
            let held = first_try.elapsed();
            if held >= self.max_throttled {
                tracing::warn!(pipeline = %self.metrics.pipeline, reason, messages = batch.len(), held_secs = held.as_secs(), "target throttled the batch for longer than target.max_throttled_secs: letting it go with backoff");
                return Outcome::Throttled;
            }
            let delay = throttles.next_delay().min(self.max_throttled - held);
            tracing::warn!(pipeline = %self.metrics.pipeline, reason, retry_in_ms = delay.as_millis() as u64, "target throttled");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = abandon.cancelled() => return Outcome::Abandoned,
            }
        }
    }

    /// Waits until `n` messages may go by `target.rate_limit_per_sec` and the fleet's rate;
    /// `false` when abandoned meanwhile.
    async fn pace(&self, n: usize, abandon: &CancellationToken) -> bool {
        if let Some(limiter) = &self.limiter {
            let n = NonZeroU32::new(n as u32).expect("batches are never empty");
            tokio::select! {
                r = limiter.until_n_ready(n) => { r.expect("the burst fits a whole batch"); }
                () = abandon.cancelled() => return false,
            }
        }
        if let Some(rate) = &self.fleet_rate {
            tokio::select! {
                _ = rate.until_ready(n as u32) => {}
                () = abandon.cancelled() => return false,
            }
        }
        true
    }

    /// The circuit breaker's say before a try: admitted at once, or held (its slot lent to the
    /// pipeline or pool meanwhile, and taken back after) until the breaker lets it go. This
    /// batch becomes the probe when the breaker says so. `Some(true)`: it was held; `None`:
    /// abandoned while it waited.
    async fn breaker_turn<'b>(
        &'b self,
        probe: &mut ProbeTurn<'b>,
        slot: &mut Option<concurrency::SlotHold<'_>>,
        abandon: &CancellationToken,
    ) -> Option<bool> {
        // a probe the target throttled keeps its turn: back to `admit` it would wait for the
        // probe that is itself (issue 30: the breaker never closed)
        let (None, Some(b)) = (probe.0, &self.breaker) else { return Some(false) };
        match b.try_admit() {
            Some(true) => {
                *probe = ProbeTurn(Some(b.as_ref()));
                return Some(false);
            }
            Some(false) => return Some(false),
            None => {}
        }
        // held: the slot goes back to the pipeline (or its pool) meanwhile; the drain lets a
        // held batch go at once
        if let Some(hold) = slot.as_mut() {
            hold.lend();
        }
        let admitted = tokio::select! {
            biased;
            a = b.admit(&self.drain) => a,
            () = abandon.cancelled() => None,
        };
        if admitted? {
            *probe = ProbeTurn(Some(b.as_ref()));
        }
        if let Some(hold) = slot.as_mut() {
            tokio::select! {
                biased;
                () = hold.reclaim() => {}
                () = abandon.cancelled() => return None,
            }
        }
        Some(true)
    }

    /// One call of the target, timed, its answer told to the adaptive limit; `None` when
    /// abandoned (shutdown's grace is over).
    async fn invoke(&self, event: &Event<'_>, trace: &TraceContext, abandon: &CancellationToken) -> Option<Invocation> {
        let started = Instant::now();
        let call = self.slots.as_ref().map(|s| s.call());
        let invocation = tokio::select! {
            i = self.target.invoke(event, self.timeout, trace) => i,
            () = abandon.cancelled() => {
                if let (Some(slots), Some(call)) = (&self.slots, call) {
                    slots.abandoned(call);
                }
                return None;
            }
        };
        let took = started.elapsed();
        self.metrics.duration.record(took.as_secs_f64());
        let signal = match &invocation {
            Invocation::Response(_) | Invocation::FunctionError(_) => concurrency::Signal::Answered(took),
            Invocation::Throttled(_) | Invocation::Unavailable { .. } => concurrency::Signal::Pushback,
        };
        if let (Some(slots), Some(call)) = (&self.slots, call) {
            slots.observe(call, signal);
        }
        Some(invocation)
    }

    /// What the target's answer means for the batch: an outcome, held by the open breaker
    /// (tried again once it lets the batch go), or throttled (tried again after a backoff).
    fn judge(&self, invocation: Invocation, batch: &[ReceivedMessage], probe: &mut ProbeTurn<'_>) -> Judged {
        match invocation {
            Invocation::Response(body) => {
                probe.told();
                if let Some(b) = &self.breaker {
                    b.answered();
                }
                Judged::Done(Outcome::Answered(response::interpret(&body, batch, self.fifo)))
            }
            Invocation::FunctionError(reason) => {
                probe.told();
                if let Some(b) = &self.breaker {
                    b.answered();
                }
                self.metrics.status.set_last_error(format!("target: {reason}"));
                Judged::Done(Outcome::Answered(Verdict::AllFailed(reason)))
            }
            Invocation::Unavailable { reason, connect } => {
                self.metrics.status.set_last_error(format!("target: {reason}"));
                let holding = self.breaker.as_ref().is_some_and(|b| b.unavailable());
                // a failed probe is settled as a failure: a queue whose only messages make
                // the worker answer 5xx (poison) still reaches its dead-letter queue, one
                // probe batch per cool-down (a refused connection is retried, and waits
                // for the next half-open as any held batch does)
                let was_probe = probe.told();
                if holding && !was_probe {
                    tracing::debug!(pipeline = %self.metrics.pipeline, messages = batch.len(), %reason, "circuit breaker open: the batch waits under lease");
                    return Judged::Held;
                }
                if !connect {
                    return Judged::Done(Outcome::Answered(Verdict::AllFailed(reason)));
                }
                Judged::Throttled(reason)
            }
            Invocation::Throttled(reason) => Judged::Throttled(reason),
        }
    }
}

/// The breaker's probe turn held by a call: handed on ([`breaker::Breaker::probe_dropped`]) when
/// the call ends without telling the breaker what the target did.
struct ProbeTurn<'a>(Option<&'a breaker::Breaker>);

/// What an answer means for the batch ([`Dispatcher::judge`]).
enum Judged {
    Done(Outcome),
    /// The open circuit breaker holds it.
    Held,
    /// Throttled, for this reason.
    Throttled(String),
}

impl ProbeTurn<'_> {
    /// The breaker was told the probe's result: the turn is over. Whether this call was the probe.
    fn told(&mut self) -> bool {
        self.0.take().is_some()
    }
}

impl Drop for ProbeTurn<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.probe_dropped();
        }
    }
}
