//! Pollers: the fleet of long-polling ReceiveMessage loops of one pipeline.
//!
//! The [`Fleet`] keeps as many `poller` tasks alive as the [`scaling::Autoscaler`] wants and
//! retires the newest first. A retired poller lets its long poll return and hands the messages
//! on. At shutdown every open long poll is given up after a second ([`RECEIVE_GIVE_UP_AFTER`]:
//! a receive that is answering finishes, and its messages are released as any others), so that
//! an idle service stops in a moment rather than after `wait_time_secs`: receives ask for a
//! short visibility timeout
//! ([`crate::lease::RECEIVE_VISIBILITY`], extended by the lease once messages are held), so what
//! SQS handed a given-up receive comes back within it. A poller takes room for the messages it may receive from the
//! [`LeaseKeeper`] *before* it receives, so the messages outstanding never exceed
//! `lease.max_outstanding`: while the target is saturated, pollers wait instead of receiving.

pub mod scaling;
pub mod tasks;

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use futures_util::FutureExt;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::backoff::Backoff;
use crate::config::PollerConfig;
use crate::event::ReceivedMessage;
use crate::intake::Intake;
use crate::lease::{LeaseKeeper, ReceiveStamp, Reservation};
use crate::metrics::{PollerMetrics, QueueGauges};
use crate::sqs::Queue;
use scaling::{Autoscaler, ScaleChange};

/// The autoscaler of a pipeline and the signals around it.
pub struct Scaling {
    pipeline: String,
    scaler: Mutex<Autoscaler>,
    desired_gauge: metrics::Gauge,
    /// Woken when the desired number changed.
    changed: Notify,
    /// Woken when a burst wants a fresh depth sample.
    sample_now: Notify,
    /// `sqs_poller_desired_tasks`: the task count, from the depth samples and the batches.
    pub tasks: tasks::TaskDemand,
}

impl Scaling {
    pub fn new(
        pipeline: &str,
        (min, max): (usize, usize),
        desired_gauge: metrics::Gauge,
        tasks: tasks::TaskDemand,
    ) -> Self {
        desired_gauge.set(min as f64);
        Scaling {
            tasks,
            pipeline: pipeline.to_string(),
            scaler: Mutex::new(Autoscaler::new(min, max, Instant::now())),
            desired_gauge,
            changed: Notify::new(),
            sample_now: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Autoscaler> {
        self.scaler.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn desired(&self) -> usize {
        self.lock().desired()
    }

    /// A receive sent at `sent_at` returned `messages` messages.
    pub fn receive(&self, messages: usize, sent_at: Instant) {
        let now = Instant::now();
        let took = now.saturating_duration_since(sent_at);
        let decision = self.lock().observe_receive(messages, took, now);
        self.apply(decision.change);
        if decision.sample_depth {
            self.sample_now.notify_one();
        }
    }

    /// A depth sample that took `took` found `visible` messages; `burst`: a quick full receive
    /// asked for it.
    pub fn backlog(&self, visible: u64, took: Duration, burst: bool) {
        let now = Instant::now();
        let change = {
            let mut scaler = self.lock();
            scaler.observe_round_trip(took);
            if burst {
                scaler.observe_burst_sample(visible, now)
            } else {
                scaler.observe_backlog(visible, now)
            }
        };
        self.apply(change);
    }

    pub fn saturation(&self, in_flight: usize, max_concurrency: usize) {
        self.lock().observe_saturation(in_flight, max_concurrency);
    }

    pub fn throttle(&self) {
        self.lock().observe_throttle(Instant::now());
    }

    /// Logs a scaling step and wakes the fleet.
    fn apply(&self, change: Option<ScaleChange>) {
        if let Some(c) = change {
            tracing::info!(pipeline = %self.pipeline, from = c.from, to = c.to, reason = ?c.reason, "scaling pollers");
            self.desired_gauge.set(c.to as f64);
            self.changed.notify_one();
        }
    }
}

impl crate::dispatch::Backpressure for Scaling {
    fn throttled(&self) {
        self.throttle();
    }
}

/// What every poller of a pipeline uses.
pub struct PollerStage {
    pub config: PollerConfig,
    pub queue: Arc<dyn Queue>,
    pub leases: Arc<LeaseKeeper>,
    pub intake: Arc<Intake>,
    pub scaling: Arc<Scaling>,
    pub metrics: PollerMetrics,
    /// Shutdown began: an open receive is given up (what it took comes back within the short
    /// visibility receives ask for).
    pub stop: CancellationToken,
    /// Paused pollers do not receive.
    pub control: Arc<crate::control::Control>,
    /// `[telemetry]`: a span for each receive that returned messages.
    pub tracer: Option<crate::telemetry::PipelineTracer>,
}

/// The pollers of one pipeline.
pub struct Fleet {
    pub stage: Arc<PollerStage>,
    /// Where received messages go (the batcher).
    pub receives: mpsc::Sender<Vec<ReceivedMessage>>,
    /// Stop receiving (shutdown).
    pub drain: CancellationToken,
}

impl Fleet {
    /// Keeps the fleet at the desired size until shutdown, then lets every poller finish its
    /// receive. The channel to the batcher closes when this returns.
    pub async fn run(self) {
        let tracker = TaskTracker::new();
        let mut pollers: Vec<(CancellationToken, tokio::task::JoinHandle<()>)> = Vec::new();
        let scaling = &self.stage.scaling;
        let name = &self.stage.metrics.pipeline;
        loop {
            // a poller that ended without being retired panicked: log it; it is replaced below
            pollers.retain_mut(|(retire, handle)| {
                if !handle.is_finished() || retire.is_cancelled() {
                    return true;
                }
                if let Some(Err(e)) = futures_util::FutureExt::now_or_never(handle) {
                    tracing::error!(pipeline = %name, error = %e, "a poller died; starting another");
                }
                false
            });
            let desired = scaling.desired();
            while pollers.len() < desired {
                let retire = CancellationToken::new();
                let handle = tracker.spawn(poller(self.stage.clone(), self.receives.clone(), retire.clone()));
                pollers.push((retire, handle));
            }
            while pollers.len() > desired {
                pollers.pop().expect("len > desired ≥ 0").0.cancel();
            }
            tokio::select! {
                () = scaling.changed.notified() => {}
                () = self.drain.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        pollers.iter().for_each(|(retire, _)| retire.cancel());
        tracker.close();
        tracker.wait().await;
        for (_, handle) in pollers {
            if let Err(e) = handle.await {
                tracing::error!(pipeline = %name, error = %e, "a poller died during the drain");
            }
        }
    }
}

/// Counts a poller alive (the gauge and the admin API's figure) until it ends, however it
/// ends (a panic included).
struct Alive(PollerMetrics);

impl Alive {
    fn new(metrics: &PollerMetrics) -> Self {
        metrics.pollers.increment(1.0);
        metrics.status.pollers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Alive(metrics.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.pollers.decrement(1.0);
        self.0.status.pollers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long an open receive may still answer once shutdown begins: one that is answering
/// (messages on their way) finishes and hands them on, to be released properly; a long poll
/// waiting on an empty queue is given up after it. A quarter of the grace period when that is
/// shorter.
pub const RECEIVE_GIVE_UP_AFTER: Duration = Duration::from_secs(1);

/// Resolves once the drain has begun and an open receive has had its time to answer.
async fn given_up(stage: &PollerStage) {
    stage.stop.cancelled().await;
    tokio::time::sleep(stage.leases.receive_grace(RECEIVE_GIVE_UP_AFTER)).await;
}

/// One poller: take room, receive, hand on; until retired.
async fn poller(stage: Arc<PollerStage>, receives: mpsc::Sender<Vec<ReceivedMessage>>, retire: CancellationToken) {
    let _alive = Alive::new(&stage.metrics);
    let cfg = &stage.config;
    let mut backoff = Backoff::default();
    let mut attempt = ReceiveAttempt::new(stage.queue.url().ends_with(".fifo"));
    while let Some(reservation) = room_to_receive(&stage, &retire).await {
        // not cancelled by a retirement (a scale-down lets the long poll return and hands its
        // messages on), only by shutdown: a long poll given up by the client can still take
        // messages, which stay hidden for the visibility timeout the receive asked for — short
        // (lease::RECEIVE_VISIBILITY), so they come back soon.
        // the messages' visibility timeout starts somewhere in the receive: the lease counts it
        // from here, and every receive asks for the timeout the lease keeper schedules for, so
        // the queue's attribute (which may change while the service runs) never decides it
        let stamp = stage.leases.stamp();
        let attempt_id = attempt.id(stamp.sent_at);
        let result = tokio::select! {
            r = stage.queue.receive_attempt(cfg.wait_time, Some(stamp.visibility), attempt_id.as_deref()) => r,
            () = given_up(&stage) => {
                tracing::debug!(pipeline = %stage.metrics.pipeline, visibility_secs = stamp.visibility.as_secs(), "shutdown: an open receive given up (anything it took comes back within its visibility timeout)");
                break;
            }
        };
        attempt.answered(result.as_ref().err());
        let go_on = match result {
            Ok(messages) => {
                backoff.reset();
                hand_on(&stage, reservation, messages, stamp, &receives, &retire).await
            }
            Err(e) => {
                drop(reservation);
                let delay = backoff.next_delay();
                tracing::warn!(pipeline = %stage.metrics.pipeline, error = %e, retry_in_ms = delay.as_millis() as u64, failures = backoff.failures(), "receive failed");
                tokio::select! {
                    () = retire.cancelled() => false,
                    () = tokio::time::sleep(delay) => true,
                }
            }
        };
        if !go_on {
            break;
        }
    }
}

/// Waits until the pipeline runs (not paused by the operator, the health check or the breaker)
/// and the room of one receive is reserved; `None` once the poller is retired.
async fn room_to_receive(stage: &PollerStage, retire: &CancellationToken) -> Option<Reservation> {
    loop {
        tokio::select! {
            biased;
            () = retire.cancelled() => return None,
            () = stage.control.until_running() => {}
        }
        let reservation = tokio::select! {
            biased;
            () = retire.cancelled() => return None,
            r = stage.leases.reserve() => r,
        };
        if retire.is_cancelled() {
            return None;
        }
        // paused while it waited for room (the circuit breaker opened): no receive
        if !stage.control.pause().paused() {
            return Some(reservation);
        }
    }
}

/// A receive's answer: through the intake (leases, records, the filter) to the batcher, and
/// told to the autoscaler; `false` when the poller was retired meanwhile.
async fn hand_on(
    stage: &PollerStage,
    reservation: Reservation,
    messages: Vec<crate::aws::SqsMessage>,
    stamp: ReceiveStamp,
    receives: &mpsc::Sender<Vec<ReceivedMessage>>,
    retire: &CancellationToken,
) -> bool {
    let n = messages.len();
    if let (Some(tracer), true) = (&stage.tracer, n > 0) {
        tracer.received(std::time::SystemTime::now() - stamp.sent_at.elapsed(), n);
    }
    // a bug in the intake must not leave these leased (and extended) with nobody to settle them
    let ids: Vec<String> = messages.iter().filter_map(|m| m.message_id.clone()).collect();
    let taken = AssertUnwindSafe(stage.intake.take(reservation, messages, stamp)).catch_unwind().await;
    let Ok((received, kept)) = taken else {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        stage.leases.release(&ids).await;
        panic!("the intake of a receive panicked; its messages were released");
    };
    // messages the filter keeps back are no demand
    stage.scaling.receive(n - kept, stamp.sent_at);
    if n == 0 {
        // an empty answer that came back at once (short polling, `wait_time_secs = 0`, or a
        // server that ignores the wait) is not asked again at once: a poller's receives of an
        // empty queue stay at most one a second, not one per round trip (the simulation found
        // the hot loop)
        tokio::select! {
            () = retire.cancelled() => return false,
            () = tokio::time::sleep_until(stamp.sent_at + EMPTY_RECEIVE_SPACING) => {}
        }
    }
    if received.is_empty() {
        return true;
    }
    if let Err(mpsc::error::SendError(lost)) = receives.send(received).await {
        // the batcher is gone (cannot happen before every poller stopped): do not hide them
        let ids: Vec<&str> = lost.iter().map(|m| m.message_id.as_str()).collect();
        stage.leases.release(&ids).await;
    }
    true
}

/// The shortest time from one empty receive's start to the next receive of the same poller.
pub const EMPTY_RECEIVE_SPACING: Duration = Duration::from_secs(1);

/// How long SQS honours a `ReceiveRequestAttemptId` (its deduplication interval).
const ATTEMPT_ID_LIFE: Duration = Duration::from_secs(300);

/// The `ReceiveRequestAttemptId` of a FIFO poller's receives: a new one for each receive, the
/// same one again when the previous receive failed in a way that may have lost its answer
/// (timeout, connection, 5xx, throttling), so that SQS returns the messages that receive took
/// instead of keeping them (and their groups) hidden for the visibility timeout. Standard
/// queues send none.
struct ReceiveAttempt {
    fifo: bool,
    /// The id to use again, and when it was first sent.
    retry: Option<(String, Instant)>,
    current: Option<(String, Instant)>,
}

impl ReceiveAttempt {
    fn new(fifo: bool) -> Self {
        ReceiveAttempt { fifo, retry: None, current: None }
    }

    /// The id for a receive sent at `now`.
    fn id(&mut self, now: Instant) -> Option<String> {
        if !self.fifo {
            return None;
        }
        let (id, first_sent) = match self.retry.take() {
            Some((id, first)) if now.duration_since(first) < ATTEMPT_ID_LIFE => (id, first),
            _ => (std::iter::repeat_with(fastrand::alphanumeric).take(32).collect(), now),
        };
        self.current = Some((id.clone(), first_sent));
        Some(id)
    }

    /// The receive's outcome: a retryable error keeps its id for the next receive.
    fn answered(&mut self, error: Option<&crate::sqs::SqsError>) {
        let current = self.current.take();
        self.retry = current.filter(|_| error.is_some_and(crate::sqs::SqsError::is_retryable));
    }
}

/// Shortest time between two depth samples asked for by a burst.
const BURST_SAMPLE_SPACING: Duration = Duration::from_millis(200);

/// Samples the depth of the queue (and of the dead-letter queue) every `depth_interval` (and at
/// once, at most every `BURST_SAMPLE_SPACING`, while a burst is being scaled for) for the
/// gauges and the autoscaler.
pub struct DepthSampler {
    pub interval: Duration,
    pub queue: Arc<dyn Queue>,
    /// Unless `pollers.visibility_timeout_secs` fixes it: the lease keeper that adopts a change
    /// of the queue's `VisibilityTimeout` attribute, read with each sample.
    pub follow_visibility: Option<Arc<LeaseKeeper>>,
    pub dead_letter: Option<Arc<dyn Queue>>,
    pub intake: Arc<Intake>,
    pub scaling: Arc<Scaling>,
    /// The messages this task holds, for `sqs_poller_desired_tasks`.
    pub leases: Arc<LeaseKeeper>,
    pub metrics: PollerMetrics,
    pub drain: CancellationToken,
}

pub async fn sample_depth(s: DepthSampler) {
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut oldest_secs = 0.0;
    loop {
        let burst = tokio::select! {
            () = s.drain.cancelled() => return,
            _ = tick.tick() => false,
            () = s.scaling.sample_now.notified() => {
                tokio::time::sleep_until(last + BURST_SAMPLE_SPACING).await;
                true
            }
        };
        let since_last = last.elapsed().as_secs_f64();
        last = Instant::now();
        let dead_letter = async {
            if let Some(dlq) = &s.dead_letter {
                sample_queue(&s.metrics.pipeline, dlq.as_ref(), &s.metrics.dead_letter_queue, None).await;
            }
        };
        let source = async {
            let sent = Instant::now();
            let visible = sample_queue(
                &s.metrics.pipeline,
                s.queue.as_ref(),
                &s.metrics.source_queue,
                s.follow_visibility.as_deref(),
            )
            .await;
            // the round trip to SQS, for the autoscaler's quick receives
            (visible, sent.elapsed())
        };
        // a sample SQS does not answer must not hold the drain
        let ((visible, took), ()) = tokio::select! {
            r = async { tokio::join!(source, dead_letter) } => r,
            () = s.drain.cancelled() => return,
        };
        let Some(depth) = visible else { continue };
        let visible = depth.visible;
        s.scaling.tasks.sampled(depth, s.leases.outstanding(), Instant::now());
        // the oldest message received since the last sample; with none received, a waiting
        // backlog only gets older
        let received_ms = s.intake.take_oldest_age_ms();
        oldest_secs = match received_ms {
            Some(ms) => ms as f64 / 1000.0,
            None if visible == 0 => 0.0,
            None => oldest_secs + since_last,
        };
        s.metrics.oldest_message_age.set(oldest_secs);
        s.scaling.backlog(visible, took, burst);
    }
}

/// One GetQueueAttributes into `gauges`; the depth, or `None` when the call failed.
/// With `leases`, the queue's `VisibilityTimeout` is read too and a change adopted (logged).
async fn sample_queue(
    pipeline: &str,
    queue: &dyn Queue,
    gauges: &QueueGauges,
    leases: Option<&LeaseKeeper>,
) -> Option<tasks::QueueDepth> {
    let names = [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        QueueAttributeName::VisibilityTimeout,
    ];
    let asked = if leases.is_some() { &names[..] } else { &names[..3] };
    let attrs = match queue.attributes(asked).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(pipeline = %pipeline, queue = %queue.url(), error = %e, "queue depth sample failed");
            return None;
        }
    };
    let get = |n: &QueueAttributeName| attrs.get(n.as_str()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let depth = tasks::QueueDepth { visible: get(&names[0]), in_flight: get(&names[1]), delayed: get(&names[2]) };
    gauges.visible.set(depth.visible as f64);
    gauges.in_flight.set(depth.in_flight as f64);
    gauges.delayed.set(depth.delayed as f64);
    let attribute = attrs.get(names[3].as_str()).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
    if let (Some(leases), Some(now)) = (leases, attribute) {
        let before = leases.visibility();
        if now != before {
            tracing::warn!(pipeline = %pipeline, from_secs = before.as_secs(), to_secs = now.as_secs(), "the queue's VisibilityTimeout changed: receives ask for the new timeout from now on (messages leased before keep theirs)");
            leases.set_visibility(now);
        }
    }
    Some(depth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqs::{SqsError, SqsErrorKind};

    #[test]
    fn a_fifo_receive_whose_answer_may_be_lost_is_retried_with_the_same_attempt_id() {
        let t0 = Instant::now();
        let lost = SqsError::new("ReceiveMessage", None, "timed out".into(), SqsErrorKind::Timeout, true);
        let refused = SqsError::coded("ReceiveMessage", "AccessDenied", "no", false);
        let mut a = ReceiveAttempt::new(true);
        let first = a.id(t0).expect("FIFO receives carry one");
        a.answered(Some(&lost));
        assert_eq!(a.id(t0 + Duration::from_secs(1)).as_deref(), Some(first.as_str()), "the retry reuses it");
        a.answered(Some(&lost));
        let after = t0 + ATTEMPT_ID_LIFE + Duration::from_secs(1);
        let fresh = a.id(after).expect("FIFO");
        assert_ne!(fresh, first, "not past SQS's five minutes");
        a.answered(None);
        let next = a.id(after).expect("FIFO");
        assert_ne!(next, fresh, "an answered receive's id is not used again");
        a.answered(Some(&refused));
        assert_ne!(a.id(after), Some(next), "nor one SQS refused");
        assert_eq!(ReceiveAttempt::new(false).id(t0), None, "standard queues send none");
    }
}
