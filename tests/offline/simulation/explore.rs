//! Where the features meet: every seed draws a configuration (standard or FIFO queue, batch size,
//! window and `max_bytes` down to below one message, a group cap, a shared pool with a second
//! pipeline, the circuit breaker, fixed or adaptive concurrency, bisect, a dead-letter queue (with message deadlines: messages first sent long ago),
//! visibility, the fleet's size, bodies padded with characters JSON escaping doubles, a filter that deletes or keeps what it rejects (standard queues), the queue's largest
//! message size and a byte budget of one to three receives, the fleet's budget: `[fleet]` slots, rate and
//! idempotency window on an in-memory store that may be away for a while) and a fault schedule (SQS errors, entry errors, latency and
//! duplicates; the target's item failures, function errors, 5xx, 429/503, timeouts, refused
//! connections, slow, unreadable and huge answers; an outage of 5xx or refused connections followed by
//! a stretch of 503s; an outage of SQS itself (every request of the source queue fails); a change of the queue's visibility timeout; a SIGTERM at a random moment),
//! runs the real stages over [`SimQueue`] under paused time, and checks the invariants as it runs
//! and at the end:
//!
//! - **no delete before success**: every delete names a message that succeeded at the worker or
//!   whose copy is in the dead-letter queue, or one the filter rejected with `on_filtered =
//!   "delete"` (checked at the delete call); a message the filter keeps is never deleted;
//! - **the filter decides**: no message it rejects reaches the worker;
//! - **deadlines**: a message first sent before `retry.max_age_secs` never reaches the worker and
//!   ends in the dead-letter queue;
//! - **the worker decides**: a message it asked to see again after `retryAfterSeconds` is not
//!   dispatched before then (unless SQS faults — duplicates, failed visibility changes — bring
//!   it back early), 20 minutes and, on standard queues, 13 hours (in hops: copies re-sent to the
//!   queue, each original deleted only once its copy is there) among them; one it sent to the
//!   dead-letter queue is settled there;
//! - **no message dispatched while an earlier copy runs**, and **a FIFO group in at most one
//!   running batch** (checked at the worker as each batch starts);
//! - **FIFO order**: each group's messages succeed first in send order;
//! - **in-flight and room within their bounds**: batches at the worker never above
//!   `max_concurrency` (and a shared pool's), leased messages never above `lease.max_outstanding`,
//!   their bytes and the receives' reservations never above `lease.max_outstanding_bytes`;
//! - **the fleet's budget**: batches at the worker never above `fleet_max_concurrency` (at the two
//!   pipelines' workers together when they name one `fleet_key`; the store away or not: one instance never holds local and shared slots at once); messages at the
//!   worker within `fleet_rate_per_sec` (a burst of a batch above it; two while the store comes
//!   and goes); with the idempotency window and the store answering, a message whose success was
//!   settled (its delete sent, even one SQS then failed) never reaches the worker again; every
//!   fleet slot given back after the drain;
//! - **the task count asked for** (`sqs_poller_desired_tasks`): a whole number, at least 1, never
//!   more tasks than the fleet's slots let run a batch;
//! - **no lease lapses while held** (`sqs_poller_leases_expired_total` stays 0);
//! - **liveness**: once the target answers again, the breaker closes and the backlog drains (within
//!   three simulated hours of the outage's end);
//! - **settled as the rules say**: every message ends deleted (succeeded, dead-lettered or
//!   filtered out) or kept in the queue by the filter, or, after a SIGTERM, deleted or still in
//!   the queue — none lost; nothing leased, in flight or held
//!   behind a group's cap once idle; `sqs_poller_messages_deleted_total` counts every delete SQS
//!   made (a hop's original as hopped), more only by deletes of stale receipts (SQS answers them success);
//! - **shutdown within its grace**: every pipeline has returned by the end of the grace period.
//!
//! `SQS_POLLER_SIM_SEEDS=N` runs N seeds (default 400, on two threads: about 2 minutes, most of it the seeds that wait out 13-hour delays); a failure prints the
//! configuration, the schedule and the command that replays that seed alone
//! (`SQS_POLLER_SIM_SEED=S`). The simulated worker, queue and the service's own jitter all draw
//! from the seed, on one thread under paused time: a seed replays exactly.
//!
//! Our own simulation rather than `turmoil` or `madsim`: the stages meet SQS through the `Queue`
//! trait, not sockets (turmoil simulates TCP between hosts), and madsim replaces tokio across
//! the whole build; tokio's paused clock on a current-thread runtime already makes a run
//! deterministic.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use sqs_poller::aws::SqsMessage;
use sqs_poller::dispatch::concurrency::Slots;
use sqs_poller::dispatch::{Invocation, Target};
use sqs_poller::fleet::memory::MemoryStore;
use sqs_poller::fleet::{Fleet, PipelineFleet};
use sqs_poller::shutdown::Shutdown;
use sqs_poller::sim::{SimConfig, SimQueue};
use sqs_poller::sqs::{BoxFuture, EntryFailure, Outgoing, Queue, SqsError};
use tokio::time::Instant;

/// The seed a thread runs, since when (real time).
type Running = Option<(u64, std::time::Instant)>;

/// The most real time one seed may take (a few seconds at most when healthy, on a loaded machine).
const WALL_LIMIT: Duration = Duration::from_secs(120);

/// How long the backlog may take to drain once the target answers again (simulated).
const LIVENESS: Duration = Duration::from_secs(3 * 3600);

/// One seed's configuration.
#[derive(Debug, Clone)]
struct Drawn {
    fifo: bool,
    messages: usize,
    /// `MessageGroupId`s: `None` sends none (standard queues only).
    groups: Option<usize>,
    body_max: usize,
    /// What bodies are padded with: `x`, or a character JSON escaping doubles in the record
    /// (`"`, `\\`, a newline), so that records outgrow what SQS counts of their messages.
    pad: char,
    /// Share of poison messages (only with a dead-letter queue: without one they never end).
    poison: f64,
    /// `retry.max_age_secs` is set (with a dead-letter queue), and this share of the messages
    /// were first sent long before it (`sqs-poller.first-sent`): they must be dead-lettered,
    /// never dispatched.
    expired: Option<f64>,
    /// The worker asks, for some of its failures, `retryAfterSeconds` (0–90 s) or, for poison
    /// messages with a dead-letter queue, `deadLetter`.
    asks: bool,
    /// With `asks`, a few first failures ask for 20 minutes (a visibility timeout) or, on a
    /// standard queue long-polling for 5 s or more without a filter that keeps messages, 13 hours
    /// (past any visibility timeout: hops of re-sent copies). Thirteen simulated hours of short
    /// polling or of kept messages coming back every second cost more real time than they explore.
    long_asks: bool,
    batch_size: usize,
    window_ms: u64,
    max_bytes: Option<usize>,
    group_cap: Option<usize>,
    /// (failures, cool-down s); `None`: the breaker is off.
    breaker: Option<(u32, u64)>,
    adaptive: bool,
    bisect: bool,
    dead_letter: Option<u32>,
    queue_visibility: u64,
    visibility_override: Option<u64>,
    pollers: (usize, usize),
    wait_time: u64,
    max_concurrency: usize,
    timeout_secs: u64,
    max_throttled_secs: u64,
    backoff: (u64, u64),
    max_outstanding: Option<usize>,
    depth_interval: u64,
    /// A second pipeline on its own queue shares a pool with this one.
    pool: Option<PoolDraw>,
    filter: Option<FilterDraw>,
    /// The queue's `MaximumMessageSize`.
    max_message_bytes: usize,
    /// `lease.max_outstanding_bytes`, in receives' worth (`None`: the default, 256 MiB).
    byte_budget: Option<usize>,
    /// `[fleet]` on the in-memory store.
    fleet: Option<FleetDraw>,
    /// `[pipelines.desired_tasks]`: `drain_secs`, `utilization` (`None`: the defaults).
    desired_tasks: Option<(u64, f64)>,
}

/// The fleet's parts a seed turns on, and when its store is away.
#[derive(Debug, Clone, Copy)]
struct FleetDraw {
    /// `target.fleet_max_concurrency`.
    max_concurrency: Option<usize>,
    /// `target.fleet_rate_per_sec`.
    rate: Option<u32>,
    /// `[pipelines.idempotency]` (message ids).
    idempotency: bool,
    /// The store cannot be reached from .0 s for .1 s.
    away: Option<(u64, u64)>,
    /// With a second pipeline (the pool's), both name one `fleet_key`: one budget for the two.
    shared_key: bool,
}

impl FleetDraw {
    fn target_toml(&self) -> String {
        let mut t = String::new();
        if let Some(n) = self.max_concurrency {
            t += &format!("fleet_max_concurrency = {n}\n");
        }
        if let Some(r) = self.rate {
            t += &format!("fleet_rate_per_sec = {r}\n");
        }
        if self.shared_key {
            t += "fleet_key = \"shared-budget\"\n";
        }
        t
    }
}

/// A filter passing the bodies that start with none of `prefixes` (`anything-but` a list of
/// prefixes); what it rejects is deleted, or with `keep` made visible again after that delay.
#[derive(Debug, Clone)]
struct FilterDraw {
    prefixes: &'static [&'static str],
    keep: Option<u64>,
}

impl FilterDraw {
    fn rejects(&self, body: &str) -> bool {
        self.prefixes.iter().any(|p| body.starts_with(p))
    }

    fn toml(&self) -> String {
        let list: Vec<String> = self.prefixes.iter().map(|p| format!("\"{p}\"")).collect();
        let mut t = format!(
            "[pipelines.filter]\npatterns = ['{{\"body\": [{{\"anything-but\": {{\"prefix\": [{}]}}}}]}}']\n",
            list.join(", ")
        );
        if let Some(delay) = self.keep {
            t += &format!("on_filtered = \"keep\"\nkeep_delay_secs = {delay}\n");
        }
        t
    }
}

/// A pool shared by the seed's two pipelines.
#[derive(Debug, Clone, Copy)]
struct PoolDraw {
    max: usize,
    adaptive: bool,
    priorities: (u32, u32),
    weights: (u32, u32),
}

/// A stretch when the target is down: unavailable (5xx, or refused connections) from `from` for
/// `down` seconds, then throttling (a load balancer's 503) for `throttled` seconds.
#[derive(Debug, Clone, Copy)]
struct Outage {
    from: u64,
    down: u64,
    throttled: u64,
    refused: bool,
}

impl Outage {
    fn end(&self) -> u64 {
        self.from + self.down + self.throttled
    }
}

/// One seed's faults.
#[derive(Debug, Clone)]
struct Faults {
    sqs_error_rate: f64,
    entry_error_rate: f64,
    duplicate_rate: f64,
    sqs_latency_ms: u64,
    item_failure: f64,
    function_error: f64,
    unavailable: f64,
    throttle: f64,
    refused: f64,
    timeout: f64,
    garbage: f64,
    /// A valid answer padded to 2 MiB.
    huge: f64,
    slow: f64,
    outage: Option<Outage>,
    /// (at s, the queue's new visibility timeout s)
    visibility_change: Option<(u64, u64)>,
    /// (from s, for s): SQS answers every request of the source queue with an error.
    sqs_outage: Option<(u64, u64)>,
    /// (at s, grace s)
    sigterm: Option<(u64, u64)>,
    /// A reload (SIGHUP with a changed pipeline: drained, started again) at s, with a new batch
    /// size and window.
    reload: Option<(u64, usize, u64)>,
}

fn pick<T: Copy>(rng: &mut fastrand::Rng, choices: &[T]) -> T {
    choices[rng.usize(..choices.len())]
}

fn chance(rng: &mut fastrand::Rng, p: f64) -> bool {
    rng.f64() < p
}

fn draw_config(rng: &mut fastrand::Rng) -> Drawn {
    let fifo = chance(rng, 0.5);
    let group_cap = (!fifo && chance(rng, 0.35)).then(|| rng.usize(1..=4));
    let groups = if fifo || group_cap.is_some() || chance(rng, 0.3) { Some(rng.usize(1..=8)) } else { None };
    let dead_letter = chance(rng, 0.6).then(|| rng.u32(2..=5));
    let min = rng.usize(1..=3);
    let batch_size = if fifo { rng.usize(1..=10) } else { pick(rng, &[1, 3, 10, 25]) };
    let max_concurrency = rng.usize(1..=8);
    Drawn {
        fifo,
        messages: rng.usize(40..=200),
        groups,
        body_max: pick(rng, &[20, 200, 1500]),
        pad: pick(rng, &['x', 'x', '"', '\\', '\n']),
        poison: if dead_letter.is_some() { pick(rng, &[0.0, 0.02, 0.05]) } else { 0.0 },
        expired: (dead_letter.is_some() && chance(rng, 0.4)).then(|| pick(rng, &[0.0, 0.03, 0.1])),
        asks: chance(rng, 0.4),
        long_asks: chance(rng, 0.3),
        batch_size,
        window_ms: pick(rng, &[0, 0, 50, 200, 1000]),
        max_bytes: chance(rng, 0.4).then(|| pick(rng, &[1024, 1500, 3000, 8000])),
        group_cap,
        breaker: chance(rng, 0.7).then(|| (rng.u32(1..=5), pick(rng, &[1, 5, 10]))),
        adaptive: chance(rng, 0.3),
        bisect: chance(rng, 0.3),
        dead_letter,
        queue_visibility: pick(rng, &[5, 10, 30, 60]),
        visibility_override: chance(rng, 0.3).then(|| pick(rng, &[4, 20, 45])),
        pollers: (min, min + rng.usize(0..=6)),
        wait_time: pick(rng, &[0, 1, 5, 20]),
        max_concurrency,
        timeout_secs: pick(rng, &[5, 30, 120]),
        max_throttled_secs: pick(rng, &[5, 20, 60]),
        backoff: (pick(rng, &[0, 1, 2]), pick(rng, &[2, 10, 60])),
        max_outstanding: chance(rng, 0.3)
            .then(|| (max_concurrency * batch_size).div_ceil(10).max(1) * 10 + pick(rng, &[0, 10, 40])),
        depth_interval: pick(rng, &[1, 5, 10]),
        // (keep on standard queues only: a kept message heads its FIFO group, which then waits
        // for another consumer — by design, and `check` warns of it)
        filter: chance(rng, 0.3).then(|| FilterDraw {
            prefixes: pick(rng, &[&["m-1"][..], &["m-2", "poison-"], &["m-3", "m-5", "m-7"]]),
            keep: (!fifo && chance(rng, 0.4)).then(|| pick(rng, &[1, 5, 30])),
        }),
        max_message_bytes: pick(rng, &[1 << 20, 64 << 10, 2 << 10]),
        byte_budget: chance(rng, 0.4).then(|| rng.usize(1..=3)),
        desired_tasks: chance(rng, 0.3).then(|| (pick(rng, &[1, 60, 3600]), pick(rng, &[0.1, 0.8, 1.0]))),
        fleet: chance(rng, 0.3).then(|| FleetDraw {
            max_concurrency: chance(rng, 0.7).then(|| rng.usize(1..=max_concurrency)),
            rate: chance(rng, 0.4).then(|| pick(rng, &[3, 20, 200])),
            idempotency: chance(rng, 0.5),
            away: chance(rng, 0.4).then(|| (rng.u64(0..=60), rng.u64(1..=90))),
            shared_key: chance(rng, 0.5),
        }),
        pool: chance(rng, 0.25).then(|| {
            // at least each member's own max_concurrency, less than theirs together
            PoolDraw {
                max: rng.usize(max_concurrency..=2 * max_concurrency),
                adaptive: chance(rng, 0.3),
                priorities: (pick(rng, &[0, 1, 5]), pick(rng, &[0, 1])),
                weights: (rng.u32(1..=3), 1),
            }
        }),
    }
}

fn draw_faults(rng: &mut fastrand::Rng, d: &Drawn) -> Faults {
    let mut rate = |most: f64| if chance(rng, 0.5) { rng.f64() * most } else { 0.0 };
    let (sqs_error_rate, entry_error_rate, duplicate_rate) = (rate(0.03), rate(0.03), rate(0.05));
    let (item_failure, function_error, unavailable, throttle) = (rate(0.1), rate(0.05), rate(0.05), rate(0.05));
    let (refused, timeout, garbage, slow, huge) = (rate(0.03), rate(0.02), rate(0.02), rate(0.1), rate(0.02));
    Faults {
        sqs_error_rate,
        entry_error_rate,
        duplicate_rate: if d.fifo { 0.0 } else { duplicate_rate },
        // (every answer takes some time, as on a network: with none, a loop of instant failures
        // and instant retries would stop the simulated clock)
        sqs_latency_ms: pick(rng, &[2, 20, 200]),
        item_failure,
        function_error,
        unavailable,
        throttle,
        refused,
        timeout,
        garbage,
        huge,
        slow,
        outage: chance(rng, 0.35).then(|| Outage {
            from: rng.u64(0..=20),
            down: rng.u64(1..=60),
            throttled: pick(rng, &[0, 5, 34, 90]),
            refused: chance(rng, 0.3),
        }),
        visibility_change: (d.visibility_override.is_none() && chance(rng, 0.3))
            .then(|| (rng.u64(1..=60), pick(rng, &[3, 6, 120, 300]))),
        sigterm: chance(rng, 0.25).then(|| (rng.u64(1..=120), pick(rng, &[1, 5, 30]))),
        sqs_outage: chance(rng, 0.2).then(|| (rng.u64(0..=60), pick(rng, &[5, 15, 40, 90]))),
        reload: chance(rng, 0.2).then(|| {
            (
                rng.u64(1..=90),
                if d.fifo { rng.usize(1..=10) } else { pick(rng, &[1, 5, 10, 40]) },
                pick(rng, &[0, 100, 500]),
            )
        }),
    }
}

/// The `[[pipelines]]` table of a drawn configuration.
fn pipeline_toml(name: &str, queue: &str, d: &Drawn, dlq: Option<&str>, pool: Option<(u32, u32)>) -> String {
    let mut t = format!(
        "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{queue}\"\ndepth_interval_secs = {}\n",
        d.depth_interval
    );
    t += &format!(
        "[pipelines.pollers]\nmin = {}\nmax = {}\nwait_time_secs = {}\n",
        d.pollers.0, d.pollers.1, d.wait_time
    );
    if let Some(v) = d.visibility_override {
        t += &format!("visibility_timeout_secs = {v}\n");
    }
    t += &format!("[pipelines.batch]\nsize = {}\nwindow_ms = {}\n", d.batch_size, d.window_ms);
    if let Some(b) = d.max_bytes {
        t += &format!("max_bytes = {b}\n");
    }
    if let Some(c) = d.group_cap {
        t += &format!("max_in_flight_per_group = {c}\n");
    }
    t += &format!(
        "[pipelines.target]\ntype = \"http\"\nurl = \"http://unused\"\ntimeout_secs = {}\nmax_concurrency = {}\nmax_throttled_secs = {}\n",
        d.timeout_secs, d.max_concurrency, d.max_throttled_secs
    );
    if d.adaptive && pool.is_none() {
        t += "concurrency = \"adaptive\"\n";
    }
    if let Some((priority, weight)) = pool {
        t += &format!("pool = \"shared\"\npriority = {priority}\nweight = {weight}\n");
    }
    if let Some(f) = &d.fleet {
        t += &f.target_toml();
    }
    match d.breaker {
        Some((failures, cooldown)) => {
            t += &format!(
            "[pipelines.target.breaker]\nfailures = {failures}\ncooldown_secs = {cooldown}\nmax_cooldown_secs = 60\n"
        )
        }
        None => t += "[pipelines.target.breaker]\nenabled = false\n",
    }
    t += "[pipelines.lease]\n";
    if let Some(m) = d.max_outstanding {
        t += &format!("max_outstanding = {m}\n");
    }
    if let Some(receives) = d.byte_budget {
        let per_receive =
            sqs_poller::limits::RECEIVE_MAX * (d.max_message_bytes + sqs_poller::limits::MESSAGE_OVERHEAD_BYTES);
        t += &format!("max_outstanding_bytes = {}\n", receives * per_receive.div_ceil(1024) * 1024);
    }
    t += &format!("[pipelines.retry]\ninitial_backoff_secs = {}\nmax_backoff_secs = {}\n", d.backoff.0, d.backoff.1);
    if d.bisect {
        t += "on_batch_error = \"bisect\"\n";
    }
    if d.expired.is_some() {
        t += "max_age_secs = 86400\n";
    }
    if let (Some(url), Some(n)) = (dlq, d.dead_letter) {
        t += &format!("[pipelines.dead_letter]\nqueue_url = \"{url}\"\nmax_receive_count = {n}\n");
    }
    if let Some(f) = &d.filter {
        t += &f.toml();
    }
    if let Some((drain, utilization)) = d.desired_tasks {
        t += &format!("[pipelines.desired_tasks]\ndrain_secs = {drain}\nutilization = {utilization}\n");
    }
    if d.fleet.is_some_and(|f| f.idempotency) {
        // completed keys outlive the run (13 simulated hours at most)
        t += "[pipelines.idempotency]\nttl_secs = 2592000\n";
    }
    t
}

/// What one pipeline's worker and queue saw.
#[derive(Default)]
struct World {
    running: HashSet<String>,
    running_groups: HashSet<String>,
    in_flight: usize,
    succeeded: HashSet<String>,
    /// FIFO: (group, message number) in the order of first success.
    success_order: Vec<(String, usize)>,
    invocations: u64,
    violations: Vec<String>,
    /// Messages (by body: a long delay's copy has an id of its own) the worker asked to see
    /// again no earlier than this (`retryAfterSeconds`).
    not_before: HashMap<String, Instant>,
    /// The longest delay the worker asked for: the backlog drains that much later.
    longest_ask: Duration,
    /// Every delay the worker asked for, added up: on a FIFO queue they hold a group one after
    /// the other.
    asked_in_all: Duration,
    /// Copies sent back into the source queue (a long delay's hops).
    hops: usize,
    /// Messages whose success was settled: their delete was sent (SQS may have failed it).
    settled_success: HashSet<String>,
    /// With `fleet_rate_per_sec`: when each batch reached the worker, and its messages.
    dispatched: Vec<(Instant, usize)>,
}

impl World {
    fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(what);
        }
    }
}

/// One drawn run's shared parts.
struct Run {
    faults: Faults,
    start: Instant,
    rng: Mutex<fastrand::Rng>,
    pool_load: AtomicUsize,
    pool_max: Option<usize>,
    /// Batches at the workers of the pipelines that share one `fleet_key`.
    fleet_load: AtomicUsize,
    /// `[fleet]`: the store (the simulation makes it come and go) and the instance's fleet.
    fleet: Option<(Arc<MemoryStore>, Arc<Fleet>)>,
}

/// Undoes a batch's marks at the worker when it ends, however it ends (answered, timed out,
/// abandoned).
struct Working {
    world: Arc<Mutex<World>>,
    run: Arc<Run>,
    ids: Vec<String>,
    groups: Vec<String>,
}

impl Drop for Working {
    fn drop(&mut self) {
        let mut w = self.world.lock().unwrap();
        for id in &self.ids {
            w.running.remove(id);
        }
        for g in &self.groups {
            w.running_groups.remove(g);
        }
        w.in_flight -= 1;
        if self.run.pool_max.is_some() {
            self.run.pool_load.fetch_sub(1, Ordering::SeqCst);
        }
        self.run.fleet_load.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The simulated worker of one pipeline.
fn worker(world: Arc<Mutex<World>>, run: Arc<Run>, d: &Drawn, visibility: Duration) -> Target {
    let (fifo, max_concurrency, timeout) = (d.fifo, d.max_concurrency, Duration::from_secs(d.timeout_secs));
    let (asks_drawn, long_asks, has_dead_letter) = (d.asks, d.asks && d.long_asks, d.dead_letter.is_some());
    let fleet_max = d.fleet.and_then(|f| f.max_concurrency);
    let shared_key = d.fleet.is_some_and(|f| f.shared_key);
    let fleet_rate = d.fleet.is_some_and(|f| f.rate.is_some());
    // the store answers throughout: a completed key holds
    let exactly_once = d.fleet.is_some_and(|f| f.idempotency && f.away.is_none());
    // thirteen simulated hours cost real time in what runs all along: short polling, and
    // messages a filter keeps (received again every keep delay)
    let keeps = d.filter.as_ref().is_some_and(|f| f.keep.is_some());
    let hops_drawn = long_asks && !fifo && d.wait_time >= 5 && !keeps;
    let filter = d.filter.clone();
    Target::Function(Arc::new(move |event: Bytes| {
        let (world, run, filter) = (world.clone(), run.clone(), filter.clone());
        Box::pin(async move {
            let event: Value = serde_json::from_slice(&event).expect("the event is JSON");
            let records = event["Records"].as_array().expect("Records").clone();
            let attempt =
                |r: &Value| -> u32 { r["attributes"]["ApproximateReceiveCount"].as_str().unwrap().parse().unwrap() };
            let group = |r: &Value| r["attributes"]["MessageGroupId"].as_str().map(str::to_string);
            let ids: Vec<String> = records.iter().map(|r| r["messageId"].as_str().unwrap().to_string()).collect();
            let mut groups: Vec<String> = records.iter().filter_map(group).collect();
            groups.sort();
            groups.dedup();
            let t = run.start.elapsed().as_secs();
            {
                let mut w = world.lock().unwrap();
                w.invocations += 1;
                for r in &records {
                    let body = r["body"].as_str().unwrap_or_default();
                    if filter.as_ref().is_some_and(|f| f.rejects(body)) {
                        w.violation(format!("{t} s: {body:.20} reached the worker, though the filter rejects it"));
                    }
                }
                for id in &ids {
                    if !w.running.insert(id.clone()) {
                        w.violation(format!("{t} s: {id} dispatched while an earlier copy of it runs"));
                    }
                    if exactly_once && w.settled_success.contains(id) {
                        w.violation(format!(
                            "{t} s: {id} reached the worker again after its success was settled (idempotency window)"
                        ));
                    }
                }
                if fleet_rate {
                    w.dispatched.push((Instant::now(), ids.len()));
                }
                for r in &records {
                    let (id, body) = (r["messageId"].as_str().unwrap(), r["body"].as_str().unwrap_or_default());
                    if let Some(until) = w.not_before.remove(body) {
                        // SQS itself may bring a message back early: a duplicate, or a visibility
                        // change that failed for good (an outage: the lease cannot be kept
                        // either); without those faults, never
                        let f = &run.faults;
                        let exact = f.duplicate_rate == 0.0
                            && f.sqs_error_rate == 0.0
                            && f.entry_error_rate == 0.0
                            && f.sqs_outage.is_none();
                        let now = Instant::now();
                        if exact && now < until {
                            let early = until - now;
                            w.violation(format!("{t} s: {id} seen again {early:?} before its retryAfterSeconds"));
                        }
                    }
                }
                if fifo {
                    for g in &groups {
                        if !w.running_groups.insert(g.clone()) {
                            w.violation(format!("{t} s: FIFO group {g} in two running batches"));
                        }
                    }
                }
                w.in_flight += 1;
                if w.in_flight > max_concurrency {
                    let n = w.in_flight;
                    w.violation(format!("{t} s: {n} batches at the worker, max_concurrency {max_concurrency}"));
                }
                // the fleet's budget: this pipeline's, or that of every pipeline naming its key
                let fleet_load = run.fleet_load.fetch_add(1, Ordering::SeqCst) + 1;
                let load = if shared_key { fleet_load } else { w.in_flight };
                if let Some(fleet_max) = fleet_max.filter(|m| load > *m) {
                    w.violation(format!("{t} s: {load} batches at the workers, fleet_max_concurrency {fleet_max}"));
                }
                if let Some(max) = run.pool_max {
                    let n = run.pool_load.fetch_add(1, Ordering::SeqCst) + 1;
                    if n > max {
                        w.violation(format!("{t} s: {n} batches at the pool's workers, its max_concurrency {max}"));
                    }
                }
            }
            let _working = Working {
                world: world.clone(),
                run: run.clone(),
                ids: ids.clone(),
                groups: if fifo { groups } else { Vec::new() },
            };
            // a round trip, whatever the answer
            tokio::time::sleep(Duration::from_millis(1)).await;
            let f = &run.faults;
            // the outage first: unavailable, then throttled
            if let Some(o) = f.outage {
                if (o.from..o.from + o.down).contains(&t) {
                    return if o.refused {
                        Invocation::Unavailable { reason: "connection refused".into(), connect: true }
                    } else {
                        Invocation::unavailable("HTTP 502")
                    };
                }
                if (o.from + o.down..o.end()).contains(&t) {
                    return Invocation::Throttled("HTTP 503".into());
                }
            }
            let (roll, latency, item_rolls) = {
                let mut rng = run.rng.lock().unwrap();
                let roll = rng.f64();
                let latency = if rng.f64() < f.slow {
                    visibility.mul_f64(3.0 * rng.f64())
                } else {
                    Duration::from_millis(rng.u64(0..500))
                };
                let items: Vec<f64> = records.iter().map(|_| rng.f64()).collect();
                (roll, latency, items)
            };
            let mut edge = 0.0;
            let mut hit = |p: f64| {
                edge += p;
                roll < edge
            };
            if hit(f.throttle) {
                return Invocation::Throttled("HTTP 429".into());
            }
            if hit(f.unavailable) {
                return Invocation::unavailable("HTTP 500");
            }
            if hit(f.refused) {
                return Invocation::Unavailable { reason: "connection refused".into(), connect: true };
            }
            if hit(f.timeout) {
                tokio::time::sleep(timeout + Duration::from_secs(1)).await;
            }
            tokio::time::sleep(latency).await;
            let early = records.iter().all(|r| attempt(r) <= 2);
            if hit(f.function_error) && early {
                return Invocation::FunctionError("simulated function error".into());
            }
            if hit(f.garbage) {
                return Invocation::Response(Bytes::from_static(b"{\"batchItemFailures\": [{\"itemIdent"));
            }
            // a FIFO handler stops a group at its first failure
            let mut failures = Vec::new();
            let mut stopped: HashSet<String> = HashSet::new();
            let asks: Vec<(f64, u64)> = {
                let mut rng = run.rng.lock().unwrap();
                records.iter().map(|_| (rng.f64(), rng.u64(0..=90))).collect()
            };
            let mut w = world.lock().unwrap();
            for ((r, item), (ask_roll, delay)) in records.iter().zip(item_rolls).zip(asks) {
                let id = r["messageId"].as_str().unwrap();
                let body = r["body"].as_str().unwrap();
                let g = group(r).unwrap_or_default();
                if body.starts_with("expired") {
                    w.violation(format!("{id} ({body:.20}) dispatched, though past retry.max_age_secs"));
                }
                // with long asks, every 16th message asks on its first try for 20 minutes or,
                // on a standard queue, 13 hours
                let n: usize = body.split('-').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let hopped = r["messageAttributes"].get("sqs-poller.hop").is_some();
                let long = (long_asks && n % 16 == 5 && attempt(r) == 1 && !hopped && !body.starts_with("poison"))
                    .then_some(if !hops_drawn || n % 32 == 5 { 20 * 60 } else { 13 * 3600 });
                let fails = body.starts_with("poison")
                    || (attempt(r) <= 2 && item < f.item_failure)
                    || (fifo && stopped.contains(&g))
                    || long.is_some();
                if fails {
                    let behind = fifo && stopped.contains(&g);
                    let mut entry = serde_json::json!({ "itemIdentifier": id });
                    if asks_drawn && !behind {
                        if body.starts_with("poison") && has_dead_letter && ask_roll < 0.5 {
                            entry["deadLetter"] = serde_json::json!("poison, says the worker");
                        } else if let Some(delay) = long.or((ask_roll < 0.3).then_some(delay)) {
                            entry["retryAfterSeconds"] = serde_json::json!(delay);
                            w.not_before.insert(body.to_string(), Instant::now() + Duration::from_secs(delay));
                            w.longest_ask = w.longest_ask.max(Duration::from_secs(delay));
                            w.asked_in_all += Duration::from_secs(delay);
                        }
                    }
                    failures.push(entry);
                    if fifo {
                        stopped.insert(g);
                    }
                } else if w.succeeded.insert(id.to_string()) {
                    w.success_order.push((g, n));
                }
            }
            let answer = serde_json::json!({ "batchItemFailures": failures }).to_string();
            if hit(f.huge) {
                let padded = format!("{}{}}}", &answer[..answer.len() - 1], " ".repeat(2 << 20));
                return Invocation::Response(Bytes::from(padded));
            }
            Invocation::Response(Bytes::from(answer))
        })
    }))
}

/// The source queue, checking each delete against what the worker saw.
struct Checked {
    inner: Arc<SimQueue>,
    world: Arc<Mutex<World>>,
    dead_letter: Option<Arc<SimQueue>>,
    filter: Option<FilterDraw>,
    start: Instant,
}

impl Queue for Checked {
    fn url(&self) -> &str {
        self.inner.url()
    }
    fn region(&self) -> String {
        self.inner.region()
    }
    fn receive(
        &self,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> BoxFuture<'_, Result<Vec<SqsMessage>, SqsError>> {
        self.inner.receive(wait, visibility)
    }
    fn attributes<'a>(
        &'a self,
        names: &'a [QueueAttributeName],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, SqsError>> {
        self.inner.attributes(names)
    }
    fn delete<'a>(&'a self, receipts: &'a [&'a str]) -> BoxFuture<'a, Vec<EntryFailure>> {
        let dead: HashSet<String> =
            self.dead_letter.as_ref().map(|q| q.bodies().into_iter().collect()).unwrap_or_default();
        {
            let mut w = self.world.lock().unwrap();
            for h in receipts {
                if let Some((id, body)) = self.inner.message_of(h) {
                    let t = self.start.elapsed().as_secs();
                    match &self.filter {
                        Some(f) if f.rejects(&body) && f.keep.is_some() => {
                            w.violation(format!("{t} s: {id} ({body:.20}) deleted, though the filter keeps it"));
                        }
                        Some(f) if f.rejects(&body) => {} // filtered out: deleted, as Lambda does
                        // a long delay's hop: its copy is in the queue (sent before this delete)
                        _ if self.inner.bodies().iter().filter(|b| **b == body).count() >= 2 => {}
                        _ if !w.succeeded.contains(&id) && !dead.contains(&body) => {
                            w.violation(format!(
                                "{t} s: {id} ({body:.20}) deleted without success or a dead-letter copy"
                            ));
                        }
                        _ if !dead.contains(&body) => {
                            w.settled_success.insert(id);
                        }
                        _ => {}
                    }
                }
            }
        }
        self.inner.delete(receipts)
    }
    fn change_visibility<'a>(&'a self, entries: &'a [(&'a str, i32)]) -> BoxFuture<'a, Vec<EntryFailure>> {
        self.inner.change_visibility(entries)
    }
    fn send<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<(), SqsError>> {
        Box::pin(async move {
            // only a long delay's hop sends to the source queue
            let sent = self.inner.send(message).await;
            if sent.is_ok() {
                self.world.lock().unwrap().hops += 1;
            }
            sent
        })
    }
}

/// A value of this run's metrics (`None`: not registered).
fn metric(handle: &PrometheusHandle, series: &str) -> Option<f64> {
    handle.render().lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// One pipeline of a run.
struct Lane {
    name: String,
    queue: Arc<SimQueue>,
    dead_letter: Option<Arc<SimQueue>>,
    world: Arc<Mutex<World>>,
    messages: usize,
    /// Of them, the ones the filter rejects.
    rejected: usize,
    max_outstanding: usize,
    task: Option<tokio::task::JoinHandle<Result<(), SqsError>>>,
    shutdown: Shutdown,
    /// Its configuration file, and the pool it shares: what a reload starts it again with.
    text: String,
    pool: Option<Arc<Slots>>,
}

impl Lane {
    /// Nothing left to do: the queue is empty but for what the filter keeps there.
    fn settled(&self, d: &Drawn) -> bool {
        match &d.filter {
            Some(f) if f.keep.is_some() => self.queue.bodies().iter().all(|b| f.rejects(b)),
            _ => self.queue.is_empty(),
        }
    }

    /// Starts the pipeline of `text` (the lane's first start, or a reload's).
    fn launch(&mut self, text: &str, run: &Arc<Run>, d: &Drawn) -> Result<(), String> {
        let cfg = match sqs_poller::config::parse(text, &|_| None) {
            Ok(mut c) => c.pipelines.remove(0),
            Err(e) => return Err(format!("the drawn configuration is refused: {e:?}\n{text}")),
        };
        self.max_outstanding = cfg.lease.max_outstanding;
        let visibility = cfg.pollers.visibility_timeout.unwrap_or(Duration::from_secs(d.queue_visibility));
        let target = worker(self.world.clone(), run.clone(), d, visibility);
        let checked = Arc::new(Checked {
            inner: self.queue.clone(),
            world: self.world.clone(),
            dead_letter: self.dead_letter.clone(),
            filter: d.filter.clone(),
            start: run.start,
        });
        let fleet = run.fleet.as_ref().map(|(_, f)| PipelineFleet::of(f, &cfg)).unwrap_or_default();
        let mut parts = sqs_poller::pipeline::PipelineParts::for_test(cfg, checked, target);
        parts.dead_letter = self.dead_letter.clone().map(|q| q as Arc<dyn Queue>);
        parts.pool = self.pool.clone();
        parts.fleet = fleet;
        let (task, shutdown) = super::spawn_parts(parts);
        self.task = Some(task);
        self.shutdown = shutdown;
        self.text = text.to_string();
        Ok(())
    }

    /// Drains the running pipeline (`grace` from now) and waits for it; what went wrong.
    async fn drain(&mut self, grace: Duration, from: Instant) -> Option<String> {
        self.shutdown.begin(grace);
        let task = self.task.take().expect("started");
        match tokio::time::timeout_at(from + grace, task).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(format!("{}: the pipeline failed: {e}", self.name)),
            Ok(Err(e)) => Some(format!("{}: the pipeline task panicked: {e}", self.name)),
            Err(_) => Some(format!("{}: shutdown ran past its {} s grace", self.name, grace.as_secs())),
        }
    }
}

/// Runs one seed; `Err` describes what broke.
async fn run_seed(seed: u64, handle: &PrometheusHandle) -> Result<String, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let d = draw_config(&mut rng);
    let f = draw_faults(&mut rng, &d);
    if std::env::var_os("SQS_POLLER_SIM_SEED").is_some() {
        eprintln!("seed {seed}:\n  configuration: {d:?}\n  faults: {f:?}");
    }
    let start = Instant::now();
    let run = Arc::new(Run {
        faults: f.clone(),
        start,
        rng: Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5eed)),
        pool_load: AtomicUsize::new(0),
        fleet_load: AtomicUsize::new(0),
        pool_max: d.pool.map(|p| p.max),
        fleet: d.fleet.map(|_| {
            let store = Arc::new(MemoryStore::new());
            let fleet = Fleet::with_store(store.clone(), &format!("sim-{seed}"), Duration::from_secs(30));
            tokio::spawn(fleet.clone().keep_alive(tokio_util::sync::CancellationToken::new()));
            (store, fleet)
        }),
    });
    let suffix = if d.fifo { ".fifo" } else { "" };
    let names: Vec<String> = match d.pool {
        Some(_) => vec![format!("s{seed}-a"), format!("s{seed}-b")],
        None => vec![format!("s{seed}")],
    };
    let pool_slots = d.pool.map(|p| Arc::new(Slots::new(p.max, p.adaptive.then_some(1))));
    let mut lanes = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let mut source = SimConfig::new(
            &format!("http://sim/000000000000/{name}{suffix}"),
            Duration::from_secs(d.queue_visibility),
            seed.wrapping_add(k as u64),
        );
        source.error_rate = f.sqs_error_rate;
        source.entry_error_rate = f.entry_error_rate;
        source.duplicate_rate = f.duplicate_rate;
        source.max_latency = Duration::from_millis(f.sqs_latency_ms);
        source.max_message_bytes = d.max_message_bytes;
        let queue = Arc::new(SimQueue::new(source));
        let dead_letter = d.dead_letter.map(|_| {
            Arc::new(SimQueue::new(SimConfig::new(
                &format!("http://sim/000000000000/{name}-dlq{suffix}"),
                Duration::from_secs(30),
                seed ^ 1,
            )))
        });
        let mut body_rng = fastrand::Rng::with_seed(seed.wrapping_mul(31).wrapping_add(k as u64));
        let mut rejected = 0;
        for i in 0..d.messages {
            let expired = body_rng.f64() < d.expired.unwrap_or(0.0);
            let kind = if expired {
                "expired"
            } else if body_rng.f64() < d.poison {
                "poison"
            } else {
                "m"
            };
            let pad = d.pad.to_string().repeat(body_rng.usize(0..=d.body_max));
            let group = d.groups.map(|g| format!("g{}", body_rng.usize(0..g)));
            let body = format!("{kind}-{i}-{pad}");
            rejected += usize::from(!expired && d.filter.as_ref().is_some_and(|f| f.rejects(&body)));
            // first sent in 1970: past any max_age_secs
            let first_sent = MessageAttributeValue::builder().data_type("Number").string_value("1000").build().unwrap();
            let attributes = if expired {
                HashMap::from([("sqs-poller.first-sent".to_string(), first_sent)])
            } else {
                HashMap::new()
            };
            queue.put_with_attributes(&body, group.as_deref(), attributes);
        }
        let pool = d.pool.map(|p| if k == 0 { (p.priorities.0, p.weights.0) } else { (p.priorities.1, p.weights.1) });
        let mut text = String::new();
        if d.fleet.is_some() {
            // (the pipelines run on the in-memory store, not on this URL)
            text += "[fleet]\nredis_url = \"redis://sim.invalid\"\n";
        }
        if let Some(p) = d.pool {
            text += &format!("[pools.shared]\nmax_concurrency = {}\n", p.max);
            if p.adaptive {
                text += "concurrency = \"adaptive\"\n";
            }
        }
        text += &pipeline_toml(name, queue.url(), &d, dead_letter.as_ref().map(|q| q.url()), pool);
        let mut lane = Lane {
            name: name.clone(),
            queue,
            dead_letter,
            world: Arc::default(),
            messages: d.messages,
            rejected,
            max_outstanding: 0,
            task: None,
            shutdown: Shutdown::default(),
            text: String::new(),
            pool: pool_slots.clone(),
        };
        lane.launch(&text, &run, &d)?;
        lanes.push(lane);
    }

    let mut broken: Vec<String> = Vec::new();
    let outage_end = f.outage.map_or(0, |o| o.end()).max(f.sqs_outage.map_or(0, |(from, secs)| from + secs));
    let mut stopped_at: Option<(Instant, u64)> = None;
    let mut seconds = 0u64;
    let (mut changed, mut reloaded) = (false, false);
    let mut tick = 0u64;
    loop {
        // a second at a time; past every scheduled fault, while messages wait out a long delay
        // the worker asked for, a minute (the checks are the same, fewer of them)
        // what the worker asked delays the drain: by its longest ask, on FIFO by all of them
        let asked = |w: &World| if d.fifo { w.asked_in_all } else { w.longest_ask };
        let longest_ask = lanes.iter().map(|l| asked(&l.world.lock().unwrap())).max().unwrap_or_default();
        let quiet =
            seconds > outage_end.max(f.reload.map_or(0, |r| r.0)).max(f.visibility_change.map_or(0, |v| v.0)) + 600;
        let step = if quiet && longest_ask > Duration::from_secs(3600) { 60 } else { 1 };
        tokio::time::sleep(Duration::from_secs(step)).await;
        seconds = start.elapsed().as_secs();
        tick += 1;
        if let Some((from, secs)) = f.sqs_outage {
            for lane in &lanes {
                lane.queue.set_down((from..from + secs).contains(&seconds));
            }
        }
        if let (Some((store, _)), Some((from, secs))) = (&run.fleet, d.fleet.and_then(|f| f.away)) {
            store.set_away((from..from + secs).contains(&seconds));
        }
        if let Some((at, secs)) = f.visibility_change {
            if seconds >= at && !changed {
                changed = true;
                for lane in &lanes {
                    lane.queue.set_visibility(Duration::from_secs(secs));
                }
            }
        }
        // the room: leased messages never above lease.max_outstanding
        if tick % 5 == 0 {
            for lane in &lanes {
                let leased = metric(handle, &format!("sqs_poller_in_flight_messages{{pipeline=\"{}\"}}", lane.name));
                if leased.is_some_and(|n| n > lane.max_outstanding as f64) {
                    broken.push(format!(
                        "{seconds} s: {} leased in {}, lease.max_outstanding {}",
                        leased.unwrap_or_default(),
                        lane.name,
                        lane.max_outstanding
                    ));
                }
                // the task count asked for: a whole number, at least 1, never more tasks than
                // the fleet's slots let run a batch
                let tasks = metric(handle, &format!("sqs_poller_desired_tasks{{pipeline=\"{}\"}}", lane.name));
                let most = d.fleet.and_then(|f| f.max_concurrency).map_or(f64::INFINITY, |m| m as f64);
                if tasks.is_some_and(|t| t < 1.0 || t.fract() != 0.0 || t > most) {
                    broken.push(format!("{seconds} s: {} asks for {tasks:?} tasks (fleet slots {most})", lane.name));
                }
                // and the bytes within the byte budget
                let bytes = metric(handle, &format!("sqs_poller_in_flight_bytes{{pipeline=\"{}\"}}", lane.name));
                let budget = metric(handle, &format!("sqs_poller_max_outstanding_bytes{{pipeline=\"{}\"}}", lane.name));
                if let (Some(bytes), Some(budget)) = (bytes, budget) {
                    if bytes > budget {
                        broken.push(format!(
                            "{seconds} s: {bytes} bytes taken in {}, the byte budget {budget}",
                            lane.name
                        ));
                    }
                }
            }
        }
        // a reload: the changed pipeline is drained (its grace 30 s), then started again with
        // its new batching; its messages wait in the queue meanwhile
        if let Some((at, size, window)) = f.reload {
            if seconds >= at && !reloaded && f.sigterm.is_none_or(|(s, _)| s > at) {
                reloaded = true;
                for lane in &mut lanes {
                    if let Some(e) = lane.drain(Duration::from_secs(30), Instant::now()).await {
                        broken.push(format!("reload: {e}"));
                    }
                    let text = lane.text.replace(
                        &format!("size = {}\nwindow_ms = {}", d.batch_size, d.window_ms),
                        &format!("size = {size}\nwindow_ms = {window}"),
                    );
                    lane.launch(&text, &run, &d)?;
                }
                seconds = start.elapsed().as_secs();
            }
        }
        if let Some((at, grace)) = f.sigterm {
            if seconds >= at {
                for lane in &lanes {
                    lane.shutdown.begin(Duration::from_secs(grace));
                }
                stopped_at = Some((Instant::now(), grace));
                break;
            }
        }
        if lanes.iter().all(|l| l.settled(&d)) {
            break;
        }
        // a message the worker asked to see again later drains that much later
        if start.elapsed() > Duration::from_secs(outage_end) + LIVENESS + longest_ask {
            let left: Vec<String> = lanes
                .iter()
                .map(|l| {
                    let breaker = metric(handle, &format!("sqs_poller_breaker_state{{pipeline=\"{}\"}}", l.name));
                    format!(
                        "{}: {} of {} left, (in flight, visible) {:?}, breaker {breaker:?}",
                        l.name,
                        l.queue.len(),
                        l.messages,
                        l.queue.counts()
                    )
                })
                .collect();
            broken.push(format!(
                "liveness: not drained {} s after the target answered again: {}",
                LIVENESS.as_secs(),
                left.join("; ")
            ));
            break;
        }
    }
    // the breaker does not stay open: a cool-down (at most 60 s here) after the drain it is
    // closed, or half-open waiting for a batch to probe with (the queue may have drained through
    // failed probes into the dead-letter queue)
    if stopped_at.is_none() && broken.is_empty() {
        tokio::time::sleep(Duration::from_secs(62)).await;
        for lane in &lanes {
            let state = metric(handle, &format!("sqs_poller_breaker_state{{pipeline=\"{}\"}}", lane.name));
            if state.is_some_and(|s| s == 1.0) {
                broken.push(format!("{}: the breaker is still open a cool-down after the drain", lane.name));
            }
        }
    }
    let (stop_from, grace) = match stopped_at {
        Some(s) => s,
        None => {
            for lane in &lanes {
                lane.shutdown.begin(Duration::from_secs(30));
            }
            (Instant::now(), 30)
        }
    };
    for lane in &mut lanes {
        // (begun above, all lanes at once: begin again is a no-op)
        if let Some(e) = lane.drain(Duration::from_secs(grace), stop_from).await {
            broken.push(e);
        }
    }
    // the fleet's slots given back (or, with the store away at the end, expired)
    if let Some((store, _)) = &run.fleet {
        let away = d.fleet.and_then(|f| f.away).is_some_and(|(from, secs)| (from..from + secs).contains(&seconds));
        store.set_away(false);
        tokio::time::sleep(if away { Duration::from_secs(31) } else { Duration::from_secs(1) }).await;
        for lane in &lanes {
            let key = if d.fleet.is_some_and(|f| f.shared_key) { "shared-budget" } else { lane.name.as_str() };
            let held = store.held(&format!("sqs-poller:{key}:slots"));
            if held > 0 {
                broken.push(format!("{}: {held} fleet slots still held after the drain", lane.name));
            }
        }
    }
    // settled as the rules say, nothing lost, nothing left leased or held
    for lane in &lanes {
        let w = lane.world.lock().unwrap();
        broken.extend(w.violations.iter().map(|v| format!("{}: {v}", lane.name)));
        let log = lane.queue.log();
        let deleted: HashSet<&String> = log.deleted.iter().collect();
        if deleted.len() != log.deleted.len() {
            broken.push(format!("{}: a message was deleted twice", lane.name));
        }
        // each hop adds a copy and deletes its original
        if deleted.len() + lane.queue.len() != lane.messages + w.hops {
            broken.push(format!(
                "{}: {} deleted + {} in the queue of {} sent: messages lost",
                lane.name,
                deleted.len(),
                lane.queue.len(),
                lane.messages
            ));
        }
        // the counter says what SQS did: every delete counted (a hop's original is counted as
        // hopped: its delete may fail after the copy was sent, and both go on), and more only
        // for deletes with a receipt handle that was no longer the newest (a duplicate or a
        // lapsed lease's redelivery deleted again: SQS answers success)
        let counted = metric(handle, &format!("sqs_poller_messages_deleted_total{{pipeline=\"{}\"}}", lane.name))
            .unwrap_or(0.0) as usize;
        if counted + w.hops < deleted.len() || counted > deleted.len() + log.stale_deletes as usize {
            broken.push(format!(
                "{}: sqs_poller_messages_deleted_total {counted} + {} hops, SQS deleted {} ({} deletes of stale receipts)",
                lane.name,
                w.hops,
                deleted.len(),
                log.stale_deletes
            ));
        }
        let dead = lane.dead_letter.as_ref().map(|q| q.bodies()).unwrap_or_default();
        if stopped_at.is_none() && !broken.iter().any(|b| b.starts_with("liveness")) {
            let dead_ok = dead.len() + w.succeeded.len() >= lane.messages - lane.rejected;
            if !dead_ok {
                broken.push(format!(
                    "{}: {} succeeded + {} dead-lettered of {} sent ({} filtered out)",
                    lane.name,
                    w.succeeded.len(),
                    dead.len(),
                    lane.messages,
                    lane.rejected
                ));
            }
            // past retry.max_age_secs: dead-lettered, never left waiting in the queue
            let expired_alive = lane.queue.bodies().iter().filter(|b| b.starts_with("expired")).count();
            if expired_alive > 0 {
                broken.push(format!("{}: {expired_alive} expired messages left in the queue", lane.name));
            }
            let kept = d.filter.as_ref().is_some_and(|f| f.keep.is_some());
            if kept && lane.queue.len() != lane.rejected {
                broken.push(format!(
                    "{}: {} in the queue, the filter keeps {}",
                    lane.name,
                    lane.queue.len(),
                    lane.rejected
                ));
            }
        }
        if d.fifo {
            let mut last: HashMap<&str, usize> = HashMap::new();
            for (group, n) in &w.success_order {
                if let Some(prev) = last.insert(group.as_str(), *n) {
                    if *n < prev {
                        broken.push(format!("{}: FIFO group {group}: m-{n} succeeded after m-{prev}", lane.name));
                        break;
                    }
                }
            }
        }
        if let Some(rate) = d.fleet.and_then(|f| f.rate) {
            let burst = d.batch_size.max(f.reload.map_or(0, |r| r.1));
            // the store's limiter and the local share's each allow a burst
            let bursts = if d.fleet.is_some_and(|f| f.away.is_some()) { 2 } else { 1 };
            if let Some(e) = over_rate(&w.dispatched, rate, burst * bursts) {
                broken.push(format!("{}: {e}", lane.name));
            }
        }
        // no lease lapsed while held (the maximum lease, 12 hours, is never reached here)
        let lapsed = metric(handle, &format!("sqs_poller_leases_expired_total{{pipeline=\"{}\"}}", lane.name));
        if lapsed.is_some_and(|n| n > 0.0) {
            broken.push(format!("{}: {lapsed:?} leases lapsed while held", lane.name));
        }
        for (series, what) in [
            ("sqs_poller_in_flight_messages", "messages still leased"),
            ("sqs_poller_in_flight_batches", "batches still in flight"),
            ("sqs_poller_group_capped_messages", "messages still held behind a group's cap"),
            ("sqs_poller_groups_in_flight", "groups still counted in flight"),
            ("sqs_poller_in_flight_bytes", "bytes of the budget still taken"),
            ("sqs_poller_fleet_slots_held", "fleet slots still counted held"),
        ] {
            let v = metric(handle, &format!("{series}{{pipeline=\"{}\"}}", lane.name));
            if v.is_some_and(|v| v != 0.0) {
                broken.push(format!("{}: {what} after the drain ({series} {v:?})", lane.name));
            }
        }
    }
    let invocations: u64 = lanes.iter().map(|l| l.world.lock().unwrap().invocations).sum();
    let summary = format!("{} s simulated, {invocations} invocations", start.elapsed().as_secs());
    if broken.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{}\n  configuration: {d:?}\n  faults: {f:?}\n  ({summary})", broken.join("\n  ")))
    }
}

/// Whether the messages `dispatched` (when, how many) ever came faster than `rate` a second with
/// bursts of `burst`: within any second or ten seconds, at most the burst and what the rate
/// allows in that time.
fn over_rate(dispatched: &[(Instant, usize)], rate: u32, burst: usize) -> Option<String> {
    for window in [Duration::from_secs(1), Duration::from_secs(10)] {
        let allowed = burst + (window.as_secs_f64() * f64::from(rate)).ceil() as usize;
        let (mut end, mut sum) = (0, 0);
        for (i, (at, n)) in dispatched.iter().enumerate() {
            while end < dispatched.len() && dispatched[end].0 < *at + window {
                sum += dispatched[end].1;
                end += 1;
            }
            if sum > allowed {
                return Some(format!(
                    "{sum} messages at the worker within {window:?} from dispatch {i}: fleet_rate_per_sec {rate} allows {allowed}"
                ));
            }
            sum -= n;
        }
    }
    None
}

/// Runs `seed` on its own current-thread runtime under paused time, with its own metrics.
fn one_seed(seed: u64) -> Result<String, String> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let result = std::panic::catch_unwind(|| {
        metrics::with_local_recorder(&recorder, || {
            // the service's own jitter draws from this thread's generator
            fastrand::seed(seed);
            super::paused_runtime().block_on(run_seed(seed, &handle))
        })
    });
    match result {
        Ok(r) => r,
        Err(e) => Err(format!(
            "panicked: {}",
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

#[test]
fn every_feature_together_under_drawn_configurations_and_faults() {
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    // a seed fixes the configuration and the schedule; tokio's `select!` draws its own branch
    // order, so an interleaving may need a few replays: SQS_POLLER_SIM_REPEAT=N runs the seed
    // N times
    let (first, count, repeat) = match env("SQS_POLLER_SIM_SEED") {
        Some(seed) => (seed, 1, env("SQS_POLLER_SIM_REPEAT").unwrap_or(1).max(1)),
        None => (fastrand::u64(..u64::MAX / 2), env("SQS_POLLER_SIM_SEEDS").unwrap_or(400), 1),
    };
    let threads = 2.min(count * repeat);
    eprintln!("{count} seeds from {first} on {threads} threads");
    let failures: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    // a seed whose simulated time stops (a task that never yields to the timer) would hang the
    // suite: past WALL_LIMIT of real time the run is ended, naming the seed
    let running: Arc<Mutex<Vec<Running>>> = Arc::new(Mutex::new(vec![None; threads as usize]));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (running, done) = (running.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                let stuck = running.lock().unwrap().iter().flatten().find(|(_, t)| t.elapsed() > WALL_LIMIT).copied();
                if let Some((seed, _)) = stuck {
                    // straight to stderr: the test harness captures eprintln!, and exit drops it
                    let _ = writeln!(
                        std::io::stderr(),
                        "seed {seed} ran past {} s of real time (its simulated clock stopped: a task that never yields?); \
                         replay with SQS_POLLER_SIM_SEED={seed} cargo test --test offline simulation::explore::every_feature_together -- --nocapture",
                        WALL_LIMIT.as_secs()
                    );
                    std::process::exit(101);
                }
            }
        })
    };
    let handles: Vec<_> = (0..threads)
        .map(|k| {
            let (failures, running) = (failures.clone(), running.clone());
            std::thread::spawn(move || {
                let mut run = k;
                while run < count * repeat {
                    let seed = first + run % count;
                    running.lock().unwrap()[k as usize] = Some((seed, std::time::Instant::now()));
                    let one = one_seed(seed);
                    running.lock().unwrap()[k as usize] = None;
                    if let Err(e) = &one {
                        eprintln!("seed {seed} failed: replay with SQS_POLLER_SIM_SEED={seed} SQS_POLLER_SIM_REPEAT=20 cargo test --test offline simulation::explore::every_feature_together -- --nocapture\n  {e}");
                        failures.lock().unwrap().push((seed, e.clone()));
                    } else if count == 1 {
                        eprintln!("seed {seed}: every invariant held ({})", one.as_ref().map_or("", String::as_str));
                    }
                    run += threads;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a seed thread");
    }
    done.store(true, Ordering::SeqCst);
    watchdog.join().expect("the watchdog");
    let failures = failures.lock().unwrap();
    println!("{} runs of {count} seeds from {first}: {} failed", count * repeat, failures.len());
    assert!(
        failures.is_empty(),
        "{} of {count} seeds broke an invariant; the first: seed {} — replay with SQS_POLLER_SIM_SEED={} SQS_POLLER_SIM_REPEAT=20 cargo test --test offline simulation::explore::every_feature_together -- --nocapture\n  {}",
        failures.len(),
        failures[0].0,
        failures[0].0,
        failures[0].1
    );
}
