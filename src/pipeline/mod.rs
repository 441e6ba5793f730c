//! One pipeline end to end: discover the queue, wire the stages, and drain in order on shutdown
//! (pollers → batcher → in-flight batches → release the rest).
//!
//! The stages and what each is given:
//! - [`Fleet`] (pollers): the queue, the [`LeaseKeeper`] (room before each receive), the
//!   [`Intake`] and the autoscaler; it sends what passes to the batcher.
//! - [`Batcher`]: cuts batches, holds FIFO groups that have a batch running, and hands batches
//!   to `BatchRunner`, which takes a concurrency slot and runs each in its own task.
//! - [`Dispatcher`]: calls the target; [`Acker`]: settles the outcome through the lease keeper.
//! - the lease keeper's heartbeat extends every outstanding message until it is settled.
//!
//! [`Pipeline::build`] finds the queue (`discover.rs`) and builds every stage complete;
//! [`Pipeline::run`] starts them on one tracker and spells out the drain order. The batch task
//! (one per batch: dispatch, settle) is in `batch_task.rs`.

mod batch_task;
mod discover;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ack::Acker;
use crate::batch::{BatchBuffer, Batcher, CapStage, GroupCap, GroupGate};
use crate::config::PipelineConfig;
use crate::dispatch::breaker::Breaker;
use crate::dispatch::concurrency::{Member, MemberSettings, Slots};
use crate::dispatch::{Dispatcher, DispatcherParts, Target};
use crate::intake::Intake;
use crate::lease::LeaseKeeper;
use crate::metrics::{BatchMetrics, DispatchMetrics, LeaseMetrics, PipelineMetrics, PollerMetrics};
use crate::poller::{sample_depth, DepthSampler, Fleet, PollerStage, Scaling};
use crate::shutdown::Shutdown;
use crate::sqs::{Queue, Reachability, SqsError};
use batch_task::{BatchRunner, BatchWork};
use discover::{discover, Discovered};

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
    /// `[fleet]`: the slots, rate and idempotency window it shares with the other instances.
    pub fleet: crate::fleet::PipelineFleet,
}

#[cfg(any(test, feature = "test-util"))]
impl PipelineParts {
    /// The parts of a pipeline as the tests build it: `config`'s metrics, its own shutdown, not
    /// yet ready, no health check, no dead-letter queue, large payloads, pool or telemetry (the
    /// fields are public: a test sets the ones it needs).
    pub fn for_test(config: PipelineConfig, queue: Arc<dyn Queue>, target: Target) -> Self {
        let name = config.name.clone();
        let metrics =
            PipelineMetrics::new(&name, config.pollers.min, config.pollers.max, config.target.max_concurrency);
        PipelineParts {
            config,
            queue,
            dead_letter: None,
            target,
            metrics,
            shutdown: Shutdown::default(),
            ready: Arc::new(Reachability::new(&name, Arc::new(std::sync::atomic::AtomicBool::new(false)))),
            control: Arc::new(crate::control::Control::new(false, metrics::Gauge::noop())),
            payloads: None,
            pool: None,
            telemetry: None,
            fleet: crate::fleet::PipelineFleet::default(),
        }
    }
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

/// A pipeline with every stage built and none started: the values [`Pipeline::run`] starts,
/// and what its drain needs.
pub struct Pipeline {
    /// Its name (the logs' `pipeline`) and `target.health_url`, the worker's health check that
    /// pauses the pollers while it fails.
    config: PipelineConfig,
    shutdown: Shutdown,
    leases: Arc<LeaseKeeper>,
    breaker: Arc<Breaker>,
    fleet: Fleet,
    sampler: DepthSampler,
    control: Arc<crate::control::Control>,
    batcher: Batcher<BatchRunner>,
    /// The batch tasks (the batcher's runner spawns them).
    batches: TaskTracker,
    work: Arc<BatchWork>,
}

impl Pipeline {
    /// Finds the queue and builds every stage complete; `None` when shutdown came first.
    ///
    /// # Errors
    /// When the queue cannot be used at all (it does not exist, access is denied).
    pub async fn build(parts: PipelineParts) -> Result<Option<Pipeline>, SqsError> {
        let Some(found) = discover(&parts.config, parts.queue.as_ref(), &parts.shutdown.drain).await? else {
            return Ok(None);
        };
        parts.ready.found();
        Ok(Some(Self::assemble(parts, found)))
    }

    /// The stages, in the order a message meets them: the lease keeper and the autoscaler, the
    /// intake, the acker, the slots, the breaker and the dispatcher, the batch runner, the
    /// batcher, the fleet of pollers.
    fn assemble(parts: PipelineParts, found: Discovered) -> Pipeline {
        let PipelineParts {
            config: cfg,
            queue,
            dead_letter,
            target,
            metrics,
            shutdown,
            control,
            payloads,
            pool,
            telemetry,
            fleet,
            ..
        } = parts;
        let lease_spans = telemetry.as_ref().map(|_| Arc::new(crate::telemetry::LeaseSpans::default()));
        let leases = lease_keeper(&cfg, &found, queue.clone(), &metrics.lease, &shutdown, lease_spans.clone());
        let scaling = autoscaler(&cfg, &leases, &found, &metrics.poller);
        let acker = Acker::new(&cfg, leases.clone(), dead_letter.clone(), payloads.clone(), metrics.ack);
        let intake = intake(&cfg, found.source, &leases, metrics.intake, payloads, &acker);
        let slots = join_slots(&cfg, pool, &leases, &metrics.dispatch);
        let breaker = Arc::new(Breaker::new(cfg.target.breaker.clone(), control.clone(), metrics.dispatch.clone()));
        let dispatcher = dispatcher(
            &cfg,
            target,
            scaling.clone(),
            &metrics.dispatch,
            slots.clone(),
            &breaker,
            (shutdown.drain.clone(), fleet.rate),
        );
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let work = Arc::new(BatchWork {
            dispatcher,
            acker,
            metrics: metrics.batch.clone(),
            abandon: shutdown.abandon.clone(),
            done: done_tx,
            tracer: telemetry.clone(),
            lease_spans,
            idempotency: fleet.idempotency,
        });
        let batches = TaskTracker::new();
        let (tx, rx) = mpsc::channel(cfg.pollers.max.max(2));
        let runner = BatchRunner::new(&work, slots, fleet.slots, &scaling, &batches);
        let batcher = batcher(&cfg, rx, done_rx, runner, &metrics.batch);
        let stage = PollerStage {
            config: cfg.pollers.clone(),
            queue,
            leases: leases.clone(),
            intake,
            scaling,
            metrics: metrics.poller,
            stop: shutdown.drain.clone(),
            control: control.clone(),
            tracer: telemetry,
        };
        let (fleet, sampler) = pollers(&cfg, stage, dead_letter, tx, &shutdown.drain);
        Pipeline { config: cfg, shutdown, leases, breaker, fleet, sampler, control, batcher, batches, work }
    }

    /// Starts every stage on one tracker and drains them in order: the pollers stop receiving
    /// and the batcher flushes what it holds; the batches in flight finish (or are abandoned at
    /// the grace period's end); the health check, the breaker's clock, the pollers and the depth
    /// sampler end; whatever is still leased is released; the heartbeat stops last; the
    /// target's own processes go.
    pub async fn run(self) {
        let Pipeline { config, shutdown, leases, breaker, fleet, sampler, control, batcher, batches, work } = self;
        let (name, health) = (config.name, config.target.health_url);
        let stages = TaskTracker::new();
        let drain = shutdown.drain.clone();
        let breaker_clock = stages.spawn(async move { breaker.keep_time(drain).await });
        // the heartbeat outlives every other stage: it stops once every lease is settled
        let stop_heartbeat = CancellationToken::new();
        let heartbeat = stages.spawn({
            let (leases, stop) = (leases.clone(), stop_heartbeat.clone());
            async move { leases.heartbeat(stop).await }
        });
        let sampler = stages.spawn(sample_depth(sampler));
        let health = health
            .map(|url| stages.spawn(crate::control::watch_health(url, control, name.clone(), shutdown.drain.clone())));
        let fleet = stages.spawn(fleet.run());
        stages.close();

        // the batcher returns once the pollers have stopped and it has flushed what it held
        batcher.run().await;
        batches.close();
        batches.wait().await;
        if let Some(h) = health {
            let _ = h.await;
        }
        let _ = breaker_clock.await;
        Self::joined(&name, "pollers", fleet).await;
        Self::joined(&name, "depth sampler", sampler).await;
        // every stage is done: anything still leased would stay hidden for its visibility timeout
        let leftover = leases.outstanding_ids();
        if !leftover.is_empty() {
            tracing::error!(pipeline = %name, messages = leftover.len(), "messages were still leased after the drain; releasing them");
            let ids: Vec<&str> = leftover.iter().map(String::as_str).collect();
            leases.release(&ids).await;
        }
        stop_heartbeat.cancel();
        Self::joined(&name, "lease keeper's heartbeat", heartbeat).await;
        stages.wait().await;
        // no batch runs any more: the target's own processes (runtime-api workers) can go
        work.dispatcher.target.stop(shutdown.worker_stop_grace()).await;
        tracing::info!(pipeline = %name, "pipeline drained");
    }

    async fn joined(name: &str, what: &str, task: JoinHandle<()>) {
        if let Err(e) = task.await {
            tracing::error!(pipeline = %name, error = %e, "the {what} task failed");
        }
    }
}

/// Runs one pipeline until shutdown has drained it ([`Pipeline::build`], then [`Pipeline::run`]).
///
/// # Errors
/// When the queue cannot be used at all (it does not exist, access is denied).
pub async fn run(parts: PipelineParts) -> Result<(), SqsError> {
    if let Some(pipeline) = Pipeline::build(parts).await? {
        pipeline.run().await;
    }
    Ok(())
}

/// The fleet of pollers and the depth sampler that steers it. (Every receive asks for the lease
/// keeper's visibility timeout, not the one in `stage.config`.)
fn pollers(
    cfg: &PipelineConfig,
    stage: PollerStage,
    dead_letter: Option<Arc<dyn Queue>>,
    receives: mpsc::Sender<Vec<crate::event::ReceivedMessage>>,
    drain: &CancellationToken,
) -> (Fleet, DepthSampler) {
    let sampler = DepthSampler {
        interval: cfg.depth_interval,
        queue: stage.queue.clone(),
        follow_visibility: cfg.pollers.visibility_timeout.is_none().then(|| stage.leases.clone()),
        dead_letter,
        intake: stage.intake.clone(),
        scaling: stage.scaling.clone(),
        leases: stage.leases.clone(),
        metrics: stage.metrics.clone(),
        drain: drain.clone(),
    };
    (Fleet { stage: Arc::new(stage), receives, drain: drain.clone() }, sampler)
}

/// The lease keeper: the queue's visibility timeout, the room and the byte budget.
fn lease_keeper(
    cfg: &PipelineConfig,
    found: &Discovered,
    queue: Arc<dyn Queue>,
    metrics: &LeaseMetrics,
    shutdown: &Shutdown,
    spans: Option<Arc<crate::telemetry::LeaseSpans>>,
) -> Arc<LeaseKeeper> {
    Arc::new(
        LeaseKeeper::new(queue, found.visibility, cfg.lease.max_lease, cfg.lease.max_outstanding, metrics.clone())
            .with_byte_budget(cfg.lease.max_outstanding_bytes, found.max_message_bytes)
            .stopping_with(shutdown.clone())
            .tracing_to(spans.map(|s| s as Arc<dyn crate::lease::ExtensionWatcher>)),
    )
}

/// The autoscaler, between `pollers.min` and `pollers.max` — or fewer when the byte budget
/// covers fewer receives at once (a poller it cannot cover would only wait for room).
fn autoscaler(cfg: &PipelineConfig, leases: &LeaseKeeper, found: &Discovered, metrics: &PollerMetrics) -> Arc<Scaling> {
    let receives = leases.receives_in_budget().unwrap_or(usize::MAX);
    if receives < cfg.pollers.max {
        tracing::warn!(pipeline = %cfg.name, pollers_max = cfg.pollers.max, receives_at_once = receives, max_message_bytes = found.max_message_bytes, max_outstanding_bytes = cfg.lease.max_outstanding_bytes, "the byte budget covers fewer receives at once than pollers.max: the fleet stops there; raise lease.max_outstanding_bytes, or lower the queue's MaximumMessageSize to what producers send, for more");
    }
    let max = cfg.pollers.max.min(receives.max(cfg.pollers.min));
    let tasks = crate::poller::tasks::TaskDemand::new(demand_settings(cfg), metrics.desired_tasks.clone());
    Arc::new(Scaling::new(&cfg.name, (cfg.pollers.min, max), metrics.pollers_desired.clone(), tasks))
}

/// `[pipelines.desired_tasks]`, and the target's limits that cap what a task or the fleet does.
fn demand_settings(cfg: &PipelineConfig) -> crate::poller::tasks::DemandSettings {
    crate::poller::tasks::DemandSettings {
        drain: cfg.desired_tasks.drain,
        utilization: cfg.desired_tasks.utilization,
        task_rate_limit: cfg.target.rate_limit_per_sec.map(|r| f64::from(r.get())),
        fleet_max_concurrency: cfg.target.fleet_max_concurrency,
        fleet_rate: cfg.target.fleet_rate_per_sec.map(|r| f64::from(r.get())),
        emf_pipeline: cfg.desired_tasks.cloudwatch_emf.then(|| cfg.name.clone()),
    }
}

/// The dispatcher: the target, its limits, its slots and its breaker; throttles go to the
/// autoscaler.
fn dispatcher(
    cfg: &PipelineConfig,
    target: Target,
    scaling: Arc<Scaling>,
    metrics: &DispatchMetrics,
    slots: Arc<Member>,
    breaker: &Arc<Breaker>,
    (drain, fleet_rate): (CancellationToken, Option<Arc<crate::fleet::FleetRate>>),
) -> Dispatcher {
    let parts = DispatcherParts {
        batch_size: cfg.batch.size,
        fifo: cfg.fifo,
        bisect: cfg.retry.bisect,
        target,
        backpressure: scaling,
        metrics: metrics.clone(),
        slots: Some(slots),
        breaker: cfg.target.breaker.enabled.then(|| breaker.clone()),
        drain,
        fleet_rate,
    };
    Dispatcher::new(&cfg.target, parts)
}

/// The batcher: cuts batches by count, window and bytes, holds FIFO groups and the groups over
/// their cap, and hands each batch to `runner`.
fn batcher(
    cfg: &PipelineConfig,
    receives: mpsc::Receiver<Vec<crate::event::ReceivedMessage>>,
    done: mpsc::UnboundedReceiver<crate::batch::GroupsDone>,
    runner: BatchRunner,
    metrics: &BatchMetrics,
) -> Batcher<BatchRunner> {
    Batcher {
        buffer: BatchBuffer::new(&cfg.batch),
        receives,
        gate: cfg.fifo.then(GroupGate::default),
        cap: cfg
            .batch
            .max_in_flight_per_group
            .map(|cap| CapStage::new(GroupCap::new(cap, max_held(cfg)), metrics.clone())),
        done,
        sink: runner,
    }
}

/// The batches in flight, at most the (adaptive) limit of the pipeline or of its pool; the
/// pollers' room follows its share (the batches it may run, one being cut, and what the group
/// cap may hold).
fn join_slots(
    cfg: &PipelineConfig,
    pool: Option<Arc<Slots>>,
    leases: &Arc<LeaseKeeper>,
    metrics: &DispatchMetrics,
) -> Arc<Member> {
    *metrics.status.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
        cfg.target.pool.as_ref().map(|p| p.name.clone());
    let configured_room = cfg.lease.max_outstanding;
    let cap_room = cfg.batch.max_in_flight_per_group.map_or(0, |_| max_held(cfg));
    let slots = pool.unwrap_or_else(|| Arc::new(Slots::new(cfg.target.max_concurrency, cfg.target.adaptive)));
    let follow_room = slots.is_adaptive() || cfg.target.pool.is_some();
    Arc::new(slots.join(MemberSettings {
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
    }))
}

/// The intake of `cfg`: its filter, its large payloads, its deadline (`retry.max_age_secs`) and
/// the next hops of long delays (the acker's hopper, standard queues).
fn intake(
    cfg: &PipelineConfig,
    source: crate::event::EventSource,
    leases: &Arc<LeaseKeeper>,
    metrics: crate::metrics::IntakeMetrics,
    payloads: Option<Arc<crate::payload::PayloadStore>>,
    acker: &Acker,
) -> Arc<Intake> {
    let intake = Intake::new(source, cfg.filter.clone(), leases.clone(), metrics, payloads);
    Arc::new(intake.with_max_age(cfg.retry.max_age).with_hopper(acker.hopper.clone()))
}
