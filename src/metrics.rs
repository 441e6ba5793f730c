//! Every metric name in one place, described at start-up, with the per-pipeline handles the
//! stages use.
//!
//! Labels are bounded: `pipeline` (from the config), `outcome`, `operation`, `state`, `queue`,
//! `call`, `code` (a fixed list of SQS codes, else `other`) — never message ids or error text. Handles are resolved once per pipeline ([`PipelineMetrics`])
//! so the hot path only touches atomics.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::status::Status;

pub const MESSAGES_RECEIVED: &str = "sqs_poller_messages_received_total";
pub const MESSAGES_FILTERED: &str = "sqs_poller_messages_filtered_total";
pub const MESSAGES_DISPATCHED: &str = "sqs_poller_messages_dispatched_total";
pub const MESSAGES_SUCCEEDED: &str = "sqs_poller_messages_succeeded_total";
pub const MESSAGES_FAILED: &str = "sqs_poller_messages_failed_total";
pub const MESSAGES_DEAD_LETTERED: &str = "sqs_poller_messages_dead_lettered_total";
/// Copies a long delay sent back into the queue (see `hop`).
pub const MESSAGES_HOPPED: &str = "sqs_poller_messages_hopped_total";
pub const MESSAGES_DELETED: &str = "sqs_poller_messages_deleted_total";
pub const MESSAGES_RELEASED: &str = "sqs_poller_messages_released_total";
pub const BATCHES: &str = "sqs_poller_batches_total";
pub const BATCH_SIZE: &str = "sqs_poller_batch_size";
pub const DISPATCH_DURATION: &str = "sqs_poller_dispatch_duration_seconds";
pub const MESSAGE_AGE: &str = "sqs_poller_message_age_seconds";
pub const END_TO_END: &str = "sqs_poller_end_to_end_seconds";
pub const POLLERS: &str = "sqs_poller_pollers";
pub const POLLERS_DESIRED: &str = "sqs_poller_pollers_desired";
/// The task count the pipeline asks for (`poller::tasks`): what ECS or KEDA scale on.
pub const DESIRED_TASKS: &str = "sqs_poller_desired_tasks";
pub const POLLERS_MIN: &str = "sqs_poller_pollers_min";
pub const POLLERS_MAX: &str = "sqs_poller_pollers_max";
pub const IN_FLIGHT_MESSAGES: &str = "sqs_poller_in_flight_messages";
pub const IN_FLIGHT_BATCHES: &str = "sqs_poller_in_flight_batches";
pub const MAX_CONCURRENCY: &str = "sqs_poller_max_concurrency";
pub const CONCURRENCY_LIMIT: &str = "sqs_poller_concurrency_limit";
pub const BREAKER_STATE: &str = "sqs_poller_breaker_state";
pub const BREAKER_TRANSITIONS: &str = "sqs_poller_breaker_transitions_total";
pub const GROUPS_IN_FLIGHT: &str = "sqs_poller_groups_in_flight";
pub const GROUP_CAPPED: &str = "sqs_poller_group_capped_messages";
pub const GROUP_CAP_RETURNED: &str = "sqs_poller_group_cap_returned_total";
pub const GROUP_CAP_WAIT: &str = "sqs_poller_group_cap_wait_seconds";
pub const SLOT_WAIT: &str = "sqs_poller_slot_wait_seconds";
pub const MAX_OUTSTANDING: &str = "sqs_poller_max_outstanding_messages";
pub const IN_FLIGHT_BYTES: &str = "sqs_poller_in_flight_bytes";
pub const MAX_OUTSTANDING_BYTES: &str = "sqs_poller_max_outstanding_bytes";
pub const DUPLICATE_RECEIVES: &str = "sqs_poller_duplicate_receives_total";
pub const LEASE_EXTENSIONS: &str = "sqs_poller_lease_extensions_total";
pub const LEASES_EXPIRED: &str = "sqs_poller_leases_expired_total";
pub const RECEIPT_REJECTIONS: &str = "sqs_poller_receipt_rejections_total";
pub const THROTTLE_RELEASES: &str = "sqs_poller_throttle_released_messages_total";
pub const LARGE_PAYLOADS: &str = "sqs_poller_large_payloads_total";
pub const ADMIN_REFUSED: &str = "sqs_poller_admin_refused_total";
/// The reasons the admin API refuses a request (`reason` label): no or a wrong bearer token, a
/// Host that is not a loopback name, a foreign Origin.
pub const ADMIN_REFUSALS: [&str; 3] = ["token", "host", "origin"];
pub const BATCHES_BISECTED: &str = "sqs_poller_batches_bisected_total";
pub const WORKER_OUTPUT_OVERFLOWS: &str = "sqs_poller_worker_output_overflows_total";
pub const QUEUE_MESSAGES: &str = "sqs_poller_queue_messages";
pub const OLDEST_MESSAGE_AGE: &str = "sqs_poller_oldest_message_age_seconds";
pub const SQS_REQUESTS: &str = "sqs_poller_sqs_requests_total";
pub const SQS_ERRORS: &str = "sqs_poller_sqs_errors_total";
pub const BUILD_INFO: &str = "sqs_poller_build_info";
pub const PAUSED: &str = "sqs_poller_paused";
pub const CONFIG_RELOADS: &str = "sqs_poller_config_reloads_total";
/// `[fleet]`: 1 while Redis answers (the shared budget), 0 on the local share.
pub const FLEET_SHARED: &str = "sqs_poller_fleet_shared";
pub const FLEET_SLOTS_HELD: &str = "sqs_poller_fleet_slots_held";
pub const FLEET_SLOT_WAIT: &str = "sqs_poller_fleet_slot_wait_seconds";
pub const FLEET_REDIS_ERRORS: &str = "sqs_poller_fleet_redis_errors_total";
pub const FLEET_RATE_LIMITED: &str = "sqs_poller_fleet_rate_limited_batches_total";
pub const IDEMPOTENT_SKIPS: &str = "sqs_poller_idempotent_skips_total";
pub const IDEMPOTENT_WAITS: &str = "sqs_poller_idempotent_waits_total";
pub const CONFIG_INFO: &str = "sqs_poller_config_info";
pub const TELEMETRY_SPANS: &str = "sqs_poller_telemetry_spans_total";

/// The `outcome` label of [`TELEMETRY_SPANS`]: spans the collector took, and spans lost (the
/// export failed or timed out; the messages are not affected).
pub const TELEMETRY_OUTCOMES: [&str; 2] = ["exported", "failed"];

/// Batch outcomes, the values of the `outcome` label of [`BATCHES`].
pub const BATCH_OUTCOMES: [&str; 4] = ["success", "partial", "failure", "throttled"];

/// The lease keeper's calls, the values of the `call` label of [`RECEIPT_REJECTIONS`].
pub const RECEIPT_CALLS: [&str; 3] = ["delete", "extend", "release"];
/// The `to` label of `sqs_poller_breaker_transitions_total`: the breaker's phases
/// (`dispatch::breaker::Phase::name`).
pub const BREAKER_PHASES: [&str; 3] = ["closed", "open", "half_open"];

/// The SQS operations the service calls, the values of the `operation` label of [`SQS_REQUESTS`].
pub const SQS_OPERATIONS: [&str; 5] =
    ["ReceiveMessage", "DeleteMessageBatch", "ChangeMessageVisibilityBatch", "SendMessage", "GetQueueAttributes"];

/// How many of the busiest message groups the admin API lists (per-group figures are never labels).
pub const NOISIEST_GROUPS: usize = 10;

/// Installs the Prometheus recorder and describes every metric.
///
/// # Errors
/// When a global recorder is already installed.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    // 1 ms … ~10 days: message age runs from milliseconds (a hot queue) to days (a stuck one).
    let age_buckets = [
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
        60.0,
        300.0,
        900.0,
        3600.0,
        14_400.0,
        86_400.0,
        345_600.0,
        1_209_600.0,
    ];
    let dispatch_buckets =
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];
    let size_buckets = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10_000.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(MESSAGE_AGE.into()), &age_buckets)?
        .set_buckets_for_metric(Matcher::Full(END_TO_END.into()), &age_buckets)?
        .set_buckets_for_metric(Matcher::Full(DISPATCH_DURATION.into()), &dispatch_buckets)?
        .set_buckets_for_metric(Matcher::Full(GROUP_CAP_WAIT.into()), &dispatch_buckets)?
        .set_buckets_for_metric(Matcher::Full(SLOT_WAIT.into()), &dispatch_buckets)?
        .set_buckets_for_metric(Matcher::Full(FLEET_SLOT_WAIT.into()), &dispatch_buckets)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &size_buckets)?
        .install_recorder()?;
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// What a series is, for its description.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every series' kind, unit and help (the `# HELP` line of /metrics).
const DESCRIPTIONS: &[(Kind, &str, Option<Unit>, &str)] = &[
    (Kind::Counter, MESSAGES_RECEIVED, Some(Unit::Count), "Messages returned by ReceiveMessage."),
    (Kind::Counter, TELEMETRY_SPANS, Some(Unit::Count), "Spans sent to the OTLP collector, by outcome: exported, failed (the collector did not take them)."),
    (Kind::Counter, MESSAGES_FILTERED, Some(Unit::Count), "Messages rejected by the filter (and deleted)."),
    (Kind::Counter, MESSAGES_DISPATCHED, Some(Unit::Count), "Messages handed to the target."),
    (Kind::Counter, MESSAGES_SUCCEEDED, Some(Unit::Count), "Messages the target processed successfully."),
    (Kind::Counter, MESSAGES_FAILED, Some(Unit::Count), "Messages the target failed (retried after a backoff)."),
    (Kind::Counter, MESSAGES_DEAD_LETTERED, Some(Unit::Count), "Messages moved to the dead-letter queue."),
    (Kind::Counter, MESSAGES_HOPPED, Some(Unit::Count), "Copies of messages re-sent to their queue to wait longer than a visibility timeout holds (hops of at most 15 minutes)."),
    (Kind::Counter, MESSAGES_DELETED, Some(Unit::Count), "Messages deleted from the source queue."),
    (Kind::Counter, MESSAGES_RELEASED, Some(Unit::Count), "Messages made visible again without being processed (shutdown, or a receive that could not be handed on)."),
    (Kind::Counter, BATCHES, Some(Unit::Count), "Batches dispatched, by outcome: success, partial, failure, throttled."),
    (Kind::Histogram, BATCH_SIZE, Some(Unit::Count), "Messages per dispatched batch."),
    (Kind::Histogram, DISPATCH_DURATION, Some(Unit::Seconds), "Time of one target call for a batch."),
    (Kind::Histogram, MESSAGE_AGE, Some(Unit::Seconds), "Receive time minus SentTimestamp (time spent in the queue)."),
    (Kind::Histogram, END_TO_END, Some(Unit::Seconds), "Deletion time minus SentTimestamp, for succeeded messages."),
    (Kind::Gauge, POLLERS, Some(Unit::Count), "Poller tasks alive now (polling or paused for backpressure)."),
    (Kind::Gauge, POLLERS_DESIRED, Some(Unit::Count), "The autoscaler's target number of pollers."),
    (Kind::Gauge, POLLERS_MIN, Some(Unit::Count), "Configured pollers.min."),
    (Kind::Gauge, POLLERS_MAX, Some(Unit::Count), "Configured pollers.max."),
    (Kind::Gauge, IN_FLIGHT_MESSAGES, Some(Unit::Count), "Messages received and not yet acknowledged."),
    (Kind::Gauge, IN_FLIGHT_BYTES, Some(Unit::Bytes), "Bytes of the byte budget taken: the leased messages (body, attributes and a fixed overhead each) and the receives in flight (ten of the queue's largest messages each)."),
    (Kind::Gauge, MAX_OUTSTANDING_BYTES, Some(Unit::Bytes), "Configured lease.max_outstanding_bytes (raised to one receive's worth when lower)."),
    (Kind::Gauge, IN_FLIGHT_BATCHES, Some(Unit::Count), "Batches being dispatched or acknowledged now."),
    (Kind::Gauge, MAX_CONCURRENCY, Some(Unit::Count), "Configured target.max_concurrency (batches in flight at most)."),
    (Kind::Gauge, CONCURRENCY_LIMIT, Some(Unit::Count), "Batches allowed in flight now: max_concurrency, or the adaptive limit (target.concurrency = \"adaptive\")."),
    (Kind::Gauge, BREAKER_STATE, None, "The target's circuit breaker: 0 closed, 1 open, 2 half-open (one probe batch)."),
    (Kind::Counter, BREAKER_TRANSITIONS, Some(Unit::Count), "Circuit breaker transitions, by the phase entered (`to`: open, half_open, closed)."),
    (Kind::Gauge, GROUPS_IN_FLIGHT, Some(Unit::Count), "Message groups with messages in batches now (batch.max_in_flight_per_group set; standard and fair queues)."),
    (Kind::Gauge, GROUP_CAPPED, Some(Unit::Count), "Messages waiting under lease because their group is at batch.max_in_flight_per_group."),
    (Kind::Counter, GROUP_CAP_RETURNED, Some(Unit::Count), "Messages over their group's cap given back to the queue because the room for waiting messages was full (each spends a receive)."),
    (Kind::Histogram, GROUP_CAP_WAIT, Some(Unit::Seconds), "Time messages waited behind their group's cap (batch.max_in_flight_per_group)."),
    (Kind::Histogram, SLOT_WAIT, Some(Unit::Seconds), "Time a cut batch waited for a concurrency slot (of the pipeline, or of its shared pool: by priority and weight)."),
    (Kind::Gauge, MAX_OUTSTANDING, Some(Unit::Count), "Configured lease.max_outstanding: messages received and not yet acknowledged, at most."),
    (Kind::Counter, DUPLICATE_RECEIVES, Some(Unit::Count), "Messages received again while already leased (the lease took the new receipt handle; the copy went no further)."),
    (Kind::Counter, LEASE_EXTENSIONS, Some(Unit::Count), "Visibility extensions sent by the lease keeper, by outcome (ok, error)."),
    (Kind::Counter, LEASES_EXPIRED, Some(Unit::Count), "Leases that reached lease.max_lease_secs (or SQS's 12-hour limit) and were no longer extended."),
    (Kind::Counter, RECEIPT_REJECTIONS, Some(Unit::Count), "Receipt handles SQS rejected for good in a delete, extension or let-go (call), by code (ReceiptHandleIsInvalid, MessageNotInflight, InvalidParameterValue, ..., other); not retried."),
    (Kind::Counter, THROTTLE_RELEASES, Some(Unit::Count), "Messages of batches throttled longer than target.max_throttled_secs, released with a backoff."),
    (Kind::Counter, WORKER_OUTPUT_OVERFLOWS, Some(Unit::Count), "Batches failed because the target's answer (a command's stdout, an HTTP or runtime-api response) passed 6 MiB, Lambda's response limit."),
    (Kind::Gauge, QUEUE_MESSAGES, Some(Unit::Count), "Approximate messages in the queue by state (visible, in_flight, delayed), from GetQueueAttributes."),
    (Kind::Gauge, OLDEST_MESSAGE_AGE, Some(Unit::Seconds), "Age of the oldest message received since the previous depth sample (growing while the queue holds messages nobody receives)."),
    (Kind::Counter, SQS_REQUESTS, Some(Unit::Count), "SQS API requests by operation and outcome (ok, error); SQS bills per request."),
    (Kind::Counter, SQS_ERRORS, Some(Unit::Count), "Failed SQS requests by operation and kind (throttled, server_error, timeout, connection, bad_response, rejected); all but rejected are retried with backoff."),
    (Kind::Gauge, BUILD_INFO, None, "Build information; the value is always 1."),
    (Kind::Counter, ADMIN_REFUSED, Some(Unit::Count), "Requests the admin API refused, by reason: token (none or a wrong one), host (not a loopback name, on a loopback listener), origin (a web page of another origin)."),
    (Kind::Counter, LARGE_PAYLOADS, Some(Unit::Count), "SQS Extended Client payloads fetched from S3, by outcome: fetched, failed (the message failed with the reason), refused (a bucket outside large_payloads.allowed_buckets: never fetched)."),
    (Kind::Counter, BATCHES_BISECTED, Some(Unit::Count), "Batches that failed as a whole and were split in halves to find the poison messages (retry.on_batch_error = \"bisect\")."),
    (Kind::Gauge, PAUSED, Some(Unit::Count), "1 while the pipeline does not receive: paused through the admin API, or its target's health check fails."),
    (Kind::Gauge, DESIRED_TASKS, Some(Unit::Count), "Tasks (instances of the service) the pipeline needs: ceil((arrival rate + visible / desired_tasks.drain_secs) / (one task's measured capacity x desired_tasks.utilization)), at least 1; scale the service on its maximum over tasks."),
    (Kind::Gauge, FLEET_SHARED, None, "[fleet]: 1 while Redis answers and batches take the fleet's shared slots; 0 while they run on this instance's local share of fleet_max_concurrency."),
    (Kind::Gauge, FLEET_SLOTS_HELD, Some(Unit::Count), "[fleet]: fleet slots this instance holds (shared or of its local share)."),
    (Kind::Histogram, FLEET_SLOT_WAIT, Some(Unit::Seconds), "[fleet]: how long a batch waited for a fleet slot (after its local one)."),
    (Kind::Counter, FLEET_REDIS_ERRORS, Some(Unit::Count), "[fleet]: Redis calls that failed (unreachable, timed out, refused)."),
    (Kind::Counter, IDEMPOTENT_SKIPS, Some(Unit::Count), "[pipelines.idempotency]: messages whose key was completed already, deleted without reaching the worker."),
    (Kind::Counter, IDEMPOTENT_WAITS, Some(Unit::Count), "[pipelines.idempotency]: messages whose key another message held, retried once its claim would expire."),
    (Kind::Counter, FLEET_RATE_LIMITED, Some(Unit::Count), "[fleet]: batches that waited for the fleet's rate (target.fleet_rate_per_sec)."),
    (Kind::Counter, CONFIG_RELOADS, Some(Unit::Count), "Configuration reloads (SIGHUP) by outcome: ok, error (the file was rejected; the running configuration kept going)."),
    (Kind::Gauge, CONFIG_INFO, None, "The configuration file in use: 1 for the hash of the loaded file (FNV-1a 64 of its bytes), 0 for files loaded before it."),
];

fn describe() {
    for &(kind, name, unit, help) in DESCRIPTIONS {
        let (name, help) = (metrics::KeyName::from_const_str(name), metrics::SharedString::const_str(help));
        metrics::with_recorder(|r| match kind {
            Kind::Counter => r.describe_counter(name, unit, help),
            Kind::Gauge => r.describe_gauge(name, unit, help),
            Kind::Histogram => r.describe_histogram(name, unit, help),
        });
    }
    for outcome in ["ok", "error"] {
        metrics::counter!(CONFIG_RELOADS, "outcome" => outcome).increment(0);
    }
}

/// The handles of one pipeline, one value per stage of the message's path (in its order); each
/// stage is given only its own. Built once per pipeline by [`PipelineMetrics::new`], which also
/// sets every counter to 0 so that the series exist from start-up.
#[derive(Clone)]
pub struct PipelineMetrics {
    pub pipeline: String,
    pub sqs: SqsMetrics,
    pub poller: PollerMetrics,
    pub intake: IntakeMetrics,
    pub payloads: PayloadMetrics,
    pub lease: LeaseMetrics,
    pub batch: BatchMetrics,
    pub dispatch: DispatchMetrics,
    pub ack: AckMetrics,
    /// `sqs_poller_paused` (the admin API's pause switch).
    pub paused: Gauge,
    /// The live figures the admin API shows; every stage handle that writes one holds it too.
    pub status: Arc<Status>,
}

/// The SQS client of a queue ([`crate::sqs::SqsQueue`]): requests, errors, receipt handles SQS
/// rejected for good.
#[derive(Clone)]
pub struct SqsMetrics {
    pub pipeline: String,
    /// `sqs_requests_total` and `sqs_errors_total` of each of [`SQS_OPERATIONS`], resolved once.
    counters: Arc<[SqsCounters; SQS_OPERATIONS.len()]>,
    pub status: Arc<Status>,
}

/// The pollers and the autoscaler, and the queue-depth sampler beside them.
#[derive(Clone)]
pub struct PollerMetrics {
    pub pipeline: String,
    pub pollers: Gauge,
    pub pollers_desired: Gauge,
    pub desired_tasks: Gauge,
    pub source_queue: QueueGauges,
    pub dead_letter_queue: QueueGauges,
    pub oldest_message_age: Gauge,
    pub status: Arc<Status>,
}

/// What the intake does with a receive: counted, filtered (and deleted), aged.
#[derive(Clone)]
pub struct IntakeMetrics {
    pub pipeline: String,
    pub received: Counter,
    pub filtered: Counter,
    /// Shared with [`AckMetrics::deleted`]: a filtered message deleted is a message deleted.
    pub deleted: Counter,
    pub message_age: Histogram,
}

/// Large payloads fetched from S3 (or not, or refused: a bucket outside `allowed_buckets`).
#[derive(Clone)]
pub struct PayloadMetrics {
    pub fetched: Counter,
    pub failed: Counter,
    pub refused: Counter,
}

/// The lease keeper: room, extensions, releases, duplicates.
#[derive(Clone)]
pub struct LeaseMetrics {
    pub pipeline: String,
    pub released: Counter,
    pub in_flight_messages: Gauge,
    pub max_outstanding: Gauge,
    pub in_flight_bytes: Gauge,
    pub max_outstanding_bytes: Gauge,
    pub duplicates: Counter,
    pub extensions: Counter,
    pub extensions_failed: Counter,
    pub expired: Counter,
    pub status: Arc<Status>,
}

/// The batcher, its FIFO group cap, and the batch tasks waiting for a slot.
#[derive(Clone)]
pub struct BatchMetrics {
    pub pipeline: String,
    pub groups_in_flight: Gauge,
    pub group_held: Gauge,
    pub group_returned: Counter,
    pub group_cap_wait: Histogram,
    pub in_flight_batches: Gauge,
    pub slot_wait: Histogram,
    pub status: Arc<Status>,
}

/// The dispatcher, its concurrency limit and its circuit breaker.
#[derive(Clone)]
pub struct DispatchMetrics {
    pub pipeline: String,
    pub dispatched: Counter,
    pub batches_throttled: Counter,
    pub batch_size: Histogram,
    pub duration: Histogram,
    pub worker_output_overflows: Counter,
    pub batches_bisected: Counter,
    pub concurrency_limit: Gauge,
    pub breaker_state: Gauge,
    pub status: Arc<Status>,
}

/// The acknowledgement of a batch: outcomes, deletes, the dead-letter queue, releases after a
/// throttle, the end-to-end time.
#[derive(Clone)]
pub struct AckMetrics {
    pub pipeline: String,
    pub succeeded: Counter,
    pub failed: Counter,
    pub dead_lettered: Counter,
    /// Copies sent on a long delay's next hop.
    pub hopped: Counter,
    pub deleted: Counter,
    pub batches_success: Counter,
    pub batches_partial: Counter,
    pub batches_failure: Counter,
    pub throttle_released: Counter,
    pub end_to_end: Histogram,
}

/// The request counters of one SQS operation.
struct SqsCounters {
    ok: Counter,
    error: Counter,
    /// By [`crate::aws::SqsErrorKind::ALL`] order.
    kinds: [Counter; crate::aws::SqsErrorKind::ALL.len()],
}

/// `sqs_poller_queue_messages{state}` of one queue (`queue="source"` or `"dead_letter"`).
#[derive(Clone)]
pub struct QueueGauges {
    pub visible: Gauge,
    pub in_flight: Gauge,
    pub delayed: Gauge,
}

impl QueueGauges {
    fn new(pipeline: &str, queue: &'static str) -> Self {
        let g = |state: &'static str| metrics::gauge!(QUEUE_MESSAGES, "pipeline" => pipeline.to_string(), "queue" => queue, "state" => state);
        QueueGauges { visible: g("visible"), in_flight: g("in_flight"), delayed: g("delayed") }
    }
}

/// Resolves the handles of one pipeline's series, each at 0 from start-up.
struct Series<'a>(&'a str);

impl Series<'_> {
    fn counter(&self, name: &'static str) -> Counter {
        let c = metrics::counter!(name, "pipeline" => self.0.to_string());
        c.increment(0);
        c
    }

    /// A counter with an `outcome` label.
    fn by_outcome(&self, name: &'static str, outcome: &'static str) -> Counter {
        let c = metrics::counter!(name, "pipeline" => self.0.to_string(), "outcome" => outcome);
        c.increment(0);
        c
    }

    fn gauge(&self, name: &'static str) -> Gauge {
        metrics::gauge!(name, "pipeline" => self.0.to_string())
    }

    fn histogram(&self, name: &'static str) -> Histogram {
        metrics::histogram!(name, "pipeline" => self.0.to_string())
    }

    fn sqs_counters(&self) -> [SqsCounters; SQS_OPERATIONS.len()] {
        let p = self.0;
        SQS_OPERATIONS.map(|op| {
            let requests = |outcome: &'static str| {
                let c = metrics::counter!(SQS_REQUESTS, "pipeline" => p.to_string(), "operation" => op, "outcome" => outcome);
                c.increment(0);
                c
            };
            SqsCounters {
                ok: requests("ok"),
                error: requests("error"),
                kinds: crate::aws::SqsErrorKind::ALL.map(|kind| {
                    let c = metrics::counter!(SQS_ERRORS, "pipeline" => p.to_string(), "operation" => op, "kind" => kind.as_str());
                    c.increment(0);
                    c
                }),
            }
        })
    }

    /// Rare, but alerted on: every series from start-up.
    fn zero_rare_counters(&self) {
        let p = self.0;
        for call in RECEIPT_CALLS {
            for code in crate::aws::errors::PERMANENT_CODES.iter().chain(&["other"]) {
                metrics::counter!(RECEIPT_REJECTIONS, "pipeline" => p.to_string(), "call" => call, "code" => *code)
                    .increment(0);
            }
        }
        for to in BREAKER_PHASES {
            metrics::counter!(BREAKER_TRANSITIONS, "pipeline" => p.to_string(), "to" => to).increment(0);
        }
    }
}

impl PipelineMetrics {
    /// Resolves the handles and sets every counter to 0, so that series exist from start-up.
    pub fn new(pipeline: &str, min: usize, max: usize, max_concurrency: usize) -> Self {
        let s = Series(pipeline);
        let p = pipeline.to_string();
        s.zero_rare_counters();
        s.gauge(POLLERS_MIN).set(min as f64);
        s.gauge(POLLERS_MAX).set(max as f64);
        s.gauge(MAX_CONCURRENCY).set(max_concurrency as f64);
        let status: Arc<Status> = Arc::default();
        let deleted = s.counter(MESSAGES_DELETED);
        PipelineMetrics {
            sqs: SqsMetrics::new(&s, &status),
            poller: PollerMetrics::new(&s, &status),
            intake: IntakeMetrics::new(&s, deleted.clone()),
            payloads: PayloadMetrics::new(&s),
            lease: LeaseMetrics::new(&s, &status),
            batch: BatchMetrics::new(&s, &status),
            dispatch: DispatchMetrics::new(&s, &status),
            ack: AckMetrics::new(&s, deleted),
            paused: s.gauge(PAUSED),
            status,
            pipeline: p,
        }
    }
}

impl SqsMetrics {
    fn new(s: &Series, status: &Arc<Status>) -> Self {
        SqsMetrics { pipeline: s.0.to_string(), counters: Arc::new(s.sqs_counters()), status: status.clone() }
    }
}

impl PollerMetrics {
    fn new(s: &Series, status: &Arc<Status>) -> Self {
        PollerMetrics {
            pipeline: s.0.to_string(),
            pollers: s.gauge(POLLERS),
            pollers_desired: s.gauge(POLLERS_DESIRED),
            desired_tasks: s.gauge(DESIRED_TASKS),
            source_queue: QueueGauges::new(s.0, "source"),
            dead_letter_queue: QueueGauges::new(s.0, "dead_letter"),
            oldest_message_age: s.gauge(OLDEST_MESSAGE_AGE),
            status: status.clone(),
        }
    }
}

impl IntakeMetrics {
    fn new(s: &Series, deleted: Counter) -> Self {
        IntakeMetrics {
            pipeline: s.0.to_string(),
            received: s.counter(MESSAGES_RECEIVED),
            filtered: s.counter(MESSAGES_FILTERED),
            deleted,
            message_age: s.histogram(MESSAGE_AGE),
        }
    }
}

impl PayloadMetrics {
    fn new(s: &Series) -> Self {
        PayloadMetrics {
            fetched: s.by_outcome(LARGE_PAYLOADS, "fetched"),
            failed: s.by_outcome(LARGE_PAYLOADS, "failed"),
            refused: s.by_outcome(LARGE_PAYLOADS, "refused"),
        }
    }
}

impl LeaseMetrics {
    fn new(s: &Series, status: &Arc<Status>) -> Self {
        LeaseMetrics {
            pipeline: s.0.to_string(),
            released: s.counter(MESSAGES_RELEASED),
            in_flight_messages: s.gauge(IN_FLIGHT_MESSAGES),
            max_outstanding: s.gauge(MAX_OUTSTANDING),
            in_flight_bytes: s.gauge(IN_FLIGHT_BYTES),
            max_outstanding_bytes: s.gauge(MAX_OUTSTANDING_BYTES),
            duplicates: s.counter(DUPLICATE_RECEIVES),
            extensions: s.by_outcome(LEASE_EXTENSIONS, "ok"),
            extensions_failed: s.by_outcome(LEASE_EXTENSIONS, "error"),
            expired: s.counter(LEASES_EXPIRED),
            status: status.clone(),
        }
    }
}

impl BatchMetrics {
    fn new(s: &Series, status: &Arc<Status>) -> Self {
        BatchMetrics {
            pipeline: s.0.to_string(),
            groups_in_flight: s.gauge(GROUPS_IN_FLIGHT),
            group_held: s.gauge(GROUP_CAPPED),
            group_returned: s.counter(GROUP_CAP_RETURNED),
            group_cap_wait: s.histogram(GROUP_CAP_WAIT),
            in_flight_batches: s.gauge(IN_FLIGHT_BATCHES),
            slot_wait: s.histogram(SLOT_WAIT),
            status: status.clone(),
        }
    }
}

impl DispatchMetrics {
    fn new(s: &Series, status: &Arc<Status>) -> Self {
        DispatchMetrics {
            pipeline: s.0.to_string(),
            dispatched: s.counter(MESSAGES_DISPATCHED),
            batches_throttled: s.by_outcome(BATCHES, "throttled"),
            batch_size: s.histogram(BATCH_SIZE),
            duration: s.histogram(DISPATCH_DURATION),
            worker_output_overflows: s.counter(WORKER_OUTPUT_OVERFLOWS),
            batches_bisected: s.counter(BATCHES_BISECTED),
            concurrency_limit: s.gauge(CONCURRENCY_LIMIT),
            breaker_state: s.gauge(BREAKER_STATE),
            status: status.clone(),
        }
    }
}

impl AckMetrics {
    fn new(s: &Series, deleted: Counter) -> Self {
        AckMetrics {
            pipeline: s.0.to_string(),
            succeeded: s.counter(MESSAGES_SUCCEEDED),
            failed: s.counter(MESSAGES_FAILED),
            dead_lettered: s.counter(MESSAGES_DEAD_LETTERED),
            hopped: s.counter(MESSAGES_HOPPED),
            deleted,
            batches_success: s.by_outcome(BATCHES, "success"),
            batches_partial: s.by_outcome(BATCHES, "partial"),
            batches_failure: s.by_outcome(BATCHES, "failure"),
            throttle_released: s.counter(THROTTLE_RELEASES),
            end_to_end: s.histogram(END_TO_END),
        }
    }
}

impl SqsMetrics {
    /// Counts one SQS request: `error` is what went wrong, if anything.
    pub fn request(&self, operation: &'static str, error: Option<crate::aws::SqsErrorKind>) {
        // the handles resolved at start-up: no labels built, no registry look-up per request
        if let Some(c) = SQS_OPERATIONS.iter().position(|op| *op == operation).map(|i| &self.counters[i]) {
            match error {
                None => c.ok.increment(1),
                Some(kind) => {
                    c.error.increment(1);
                    let k = crate::aws::SqsErrorKind::ALL.iter().position(|k| *k == kind).expect("ALL has every kind");
                    c.kinds[k].increment(1);
                }
            }
            return;
        }
        let outcome = if error.is_none() { "ok" } else { "error" };
        metrics::counter!(SQS_REQUESTS, "pipeline" => self.pipeline.clone(), "operation" => operation, "outcome" => outcome)
            .increment(1);
        if let Some(kind) = error {
            metrics::counter!(SQS_ERRORS, "pipeline" => self.pipeline.clone(), "operation" => operation, "kind" => kind.as_str())
                .increment(1);
        }
    }
}

impl LeaseMetrics {
    /// Counts `n` receipt handles SQS rejected for good in `call` (`delete`, `extend`, `release`)
    /// with `code` (one of [`crate::aws::errors::PERMANENT_CODES`] or `other`: bounded labels).
    pub fn receipt_rejected(&self, call: &'static str, code: &'static str, n: u64) {
        metrics::counter!(RECEIPT_REJECTIONS, "pipeline" => self.pipeline.clone(), "call" => call, "code" => code)
            .increment(n);
    }
}

/// Counts spans the OTLP exporter sent (`exported`) or lost (`failed`).
pub fn telemetry_spans(exported: bool, n: u64) {
    let outcome = TELEMETRY_OUTCOMES[usize::from(!exported)];
    metrics::counter!(TELEMETRY_SPANS, "outcome" => outcome).increment(n);
}

/// Counts one configuration reload.
pub fn config_reload(ok: bool) {
    metrics::counter!(CONFIG_RELOADS, "outcome" => if ok { "ok" } else { "error" }).increment(1);
}

/// Marks `hash` as the configuration in use (and `previous`, if any, as no longer).
pub fn config_loaded(hash: &str, previous: Option<&str>) {
    if let Some(previous) = previous.filter(|p| *p != hash) {
        metrics::gauge!(CONFIG_INFO, "hash" => previous.to_string()).set(0.0);
    }
    metrics::gauge!(CONFIG_INFO, "hash" => hash.to_string()).set(1.0);
}

/// The process's resident memory in bytes (`VmRSS` of `/proc/self/status`); `None` where there
/// is no such file.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's figures under the names every Prometheus client library gives them (the
/// exposition format's "process" collector), read from `/proc/self` at each scrape: CPU time,
/// resident memory, open descriptors and the open-file limit (running out of descriptors is how
/// a large fleet of pollers fails), and the start time. Empty where there is no `/proc`.
pub fn process_text() -> String {
    let mut out = String::new();
    let mut add = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
        }
    };
    let stat = ProcStat::read();
    let ticks = clock_ticks_per_second();
    add(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stat.as_ref().map(|s| (s.utime + s.stime) as f64 / ticks),
    );
    add(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        resident_memory_bytes().map(|b| b as f64),
    );
    let open = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    add("process_open_fds", "gauge", "Number of open file descriptors.", open);
    add("process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds());
    let boot = boot_time_seconds();
    let start = stat.as_ref().zip(boot).map(|(s, boot)| boot + s.starttime as f64 / ticks);
    add("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", start);
    out
}

/// The fields of `/proc/self/stat` that [`process_text`] reports, in clock ticks.
struct ProcStat {
    utime: u64,
    stime: u64,
    starttime: u64,
}

impl ProcStat {
    fn read() -> Option<ProcStat> {
        Self::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }

    /// `pid (comm) state ppid …`: the command may hold spaces and parentheses, so the fields are
    /// counted from the last `)`; utime, stime and starttime are fields 14, 15 and 22.
    fn parse(text: &str) -> Option<ProcStat> {
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse().ok();
        Some(ProcStat { utime: field(14)?, stime: field(15)?, starttime: field(22)? })
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The soft open-file limit (`ulimit -n`), the one that fails an `open` or `accept`.
fn max_fds() -> Option<f64> {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given, nothing else
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0).then_some(l.rlim_cur as f64)
}

/// When the machine booted (`btime` of `/proc/stat`), in seconds since the epoch.
fn boot_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// Gives the memory of settled messages back to the system once a second. glibc serves
/// allocations from 128 KiB up with `mmap` at first, but raises that threshold to the size of
/// every such block freed (up to 32 MiB): after the first large message is settled, bodies,
/// records and receive answers come from the heap, and the holes they leave between live
/// messages stay resident. `malloc_trim(0)` hands the free pages inside the heap back
/// (`MADV_DONTNEED`); it walks the free chunks under the arenas' locks, a fraction of a
/// millisecond at 1 Hz. Measured (`scripts/profile/large_bodies.sh`, bench/RESULTS.md) against
/// fixing the threshold at 128 KiB, which bounded memory as well but made every large block a
/// fresh `mmap` (256 KiB messages: 1.73× the bare SDK loop's CPU per message against 1.23×).
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            // SAFETY: malloc_trim only returns free memory to the system
            unsafe {
                libc::malloc_trim(0);
            }
        })
        .map(drop)
        .unwrap_or_else(|e| tracing::warn!(error = %e, "cannot start the thread that gives freed memory back"));
}

#[cfg(test)]
mod process_tests {
    use super::*;

    #[test]
    fn proc_stat_is_read_past_a_command_with_spaces_and_parentheses() {
        let line = "4242 (sqs poller (x)) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 75 0 0 20 0 9 0 1234 0 0";
        let stat = ProcStat::parse(line).unwrap();
        assert_eq!((stat.utime, stat.stime, stat.starttime), (250, 75, 1234));
        assert!(ProcStat::parse("4242 (short) S 1").is_none());
    }

    #[test]
    fn the_process_block_has_the_standard_names_and_types() {
        let text = process_text();
        for (name, kind) in [
            ("process_cpu_seconds_total", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("process_start_time_seconds", "gauge"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n{name} ")), "{name} in:\n{text}");
        }
        let value = |name: &str| -> f64 {
            let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
            line.split(' ').nth(1).unwrap().parse().unwrap()
        };
        assert!(value("process_open_fds") >= 3.0 && value("process_open_fds") <= value("process_max_fds"));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(start <= now + 1.0 && start > now - 86_400.0 * 365.0, "start {start}, now {now}");
    }
}

/// `[fleet]`: the instance's link to the fleet's Redis (the pipelines' own series are theirs).
#[derive(Clone)]
pub struct FleetMetrics {
    pub shared: Gauge,
    pub errors: Counter,
}

impl FleetMetrics {
    /// Registers the fleet's series (shared: 1, no errors yet).
    pub fn register() -> Self {
        let shared = metrics::gauge!(FLEET_SHARED);
        shared.set(1.0);
        let errors = metrics::counter!(FLEET_REDIS_ERRORS);
        errors.increment(0);
        FleetMetrics { shared, errors }
    }
}
