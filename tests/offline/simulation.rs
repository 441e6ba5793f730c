//! The whole pipeline against the simulated SQS queue (`sqs_poller::sim`), under paused tokio
//! time: hours of simulated time in seconds, deterministic workload and faults from a seed.
//!
//! 10,000 messages per run, standard and FIFO, with worker latency up to three times the
//! visibility timeout, failures, poison messages, throttles, SQS request and entry errors,
//! latency and (standard) duplicate deliveries. The invariants:
//! - every message is processed at least once (or dead-lettered, for the poison ones);
//! - no message is dispatched while an earlier copy of it is still running;
//! - nothing is deleted that did not succeed or was not dead-lettered, and a delete uses a stale
//!   receipt handle (which SQS answers with success without deleting) only when a duplicate
//!   delivery raced with it;
//! - FIFO: each group's messages succeed first in send order;
//! - the final queue state equals the sum of the counters.
//!
//! `SQS_POLLER_SIM_SEED=N` replays a run (workload, faults, the service's jitter; one thread, paused
//! time): the same seed twice gave identical figures here. The seed is printed on failure.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use sqs_poller::dispatch::{Invocation, Target};
use sqs_poller::pipeline::{self, PipelineParts};
use sqs_poller::shutdown::Shutdown;
use sqs_poller::sim::{SimConfig, SimQueue};
use sqs_poller::sqs::Queue;

/// Every seed a drawn configuration and fault schedule: where the features meet.
#[path = "simulation/explore.rs"]
mod explore;
/// The fleet's budget where it meets the breaker, the retries and a store that goes away.
#[path = "simulation/fleet.rs"]
mod fleet;

const MESSAGES: usize = 10_000;
const VISIBILITY: Duration = Duration::from_secs(30);

fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| sqs_poller::metrics::install().expect("the only recorder of this test binary"))
}

fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("the series {series} is absent"))
}

/// A current-thread runtime under paused time: one thread, a deterministic clock.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
}

fn seed() -> u64 {
    std::env::var("SQS_POLLER_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..))
}

/// A number in [0, 1) fixed by the seed and `parts` (so a message's fate does not depend on the
/// order in which tasks ran).
fn draw(seed: u64, parts: &[&str]) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    parts.hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What the simulated worker saw.
#[derive(Default)]
struct Witness {
    running: HashSet<String>,
    /// Dispatched while an earlier copy was running.
    overlaps: Vec<String>,
    succeeded: HashSet<String>,
    /// Body of every message dispatched, by id.
    bodies: HashMap<String, String>,
    /// FIFO: message ids in the order they first succeeded.
    success_order: Vec<(String, String)>,
    invocations: u64,
}

/// The worker: per message, latency and outcome drawn from the seed.
fn worker(seed: u64, witness: Arc<Mutex<Witness>>) -> Target {
    Target::Function(Arc::new(move |event: Bytes| {
        let witness = witness.clone();
        Box::pin(async move {
            let event: Value = serde_json::from_slice(&event).expect("the event is JSON");
            let records = event["Records"].as_array().expect("Records").clone();
            let ids: Vec<String> = records.iter().map(|r| r["messageId"].as_str().unwrap().to_string()).collect();
            let attempt = |r: &Value| r["attributes"]["ApproximateReceiveCount"].as_str().unwrap().to_string();
            let first = &records[0];
            let key = [ids[0].as_str(), &attempt(first)];
            let invocation = {
                let mut w = witness.lock().unwrap();
                w.invocations += 1;
                for (id, r) in ids.iter().zip(&records) {
                    if !w.running.insert(id.clone()) {
                        w.overlaps.push(id.clone());
                    }
                    w.bodies.insert(id.clone(), r["body"].as_str().unwrap().to_string());
                }
                w.invocations
            };
            // mostly quick, one batch in five slow, up to three visibility timeouts
            let slow = draw(seed, &[&key[..], &["slow"]].concat()) < 0.2;
            let latency = if slow {
                VISIBILITY.mul_f64(3.0 * draw(seed, &[&key[..], &["latency"]].concat()))
            } else {
                Duration::from_millis((2000.0 * draw(seed, &[&key[..], &["latency"]].concat())) as u64)
            };
            tokio::time::sleep(latency).await;
            let outcome = draw(seed, &[&key[..], &["outcome"], &[&invocation.to_string()]].concat());
            let mut w = witness.lock().unwrap();
            for id in &ids {
                w.running.remove(id);
            }
            // chance failures hit early deliveries only, so that only poison messages reach
            // the dead-letter threshold (4 receives)
            let early = |r: &Value| attempt(r).parse::<u32>().unwrap() <= 2;
            if outcome < 0.02 {
                return Invocation::Throttled("simulated throttle".into());
            }
            // (a function error fails the whole batch: only when every message in it is early)
            if outcome < 0.03 && records.iter().all(early) {
                return Invocation::FunctionError("simulated function error".into());
            }
            // a FIFO handler stops a group at its first failure
            let mut failures = Vec::new();
            let mut stopped: HashSet<String> = HashSet::new();
            for r in &records {
                let id = r["messageId"].as_str().unwrap();
                let body = r["body"].as_str().unwrap();
                let group = r["attributes"]["MessageGroupId"].as_str().unwrap_or("").to_string();
                let fails = body.starts_with("poison")
                    || (early(r) && draw(seed, &[id, &attempt(r), "fails"]) < 0.05)
                    || stopped.contains(&group);
                if fails {
                    failures.push(serde_json::json!({ "itemIdentifier": id }));
                    if !group.is_empty() {
                        stopped.insert(group);
                    }
                } else if w.succeeded.insert(id.to_string()) {
                    w.success_order.push((group, body.to_string()));
                }
            }
            Invocation::Response(Bytes::from(serde_json::json!({ "batchItemFailures": failures }).to_string()))
        })
    }))
}

/// A running pipeline on simulated queues.
struct Running {
    task: tokio::task::JoinHandle<Result<(), sqs_poller::sqs::SqsError>>,
    shutdown: Shutdown,
    witness: Arc<Mutex<Witness>>,
}

impl Running {
    /// Drains the pipeline (SIGTERM) and waits for it.
    async fn stop(self) {
        self.shutdown.begin(Duration::from_secs(30));
        self.task.await.expect("the pipeline task").expect("the pipeline ran");
    }
}

/// Starts pipeline `name` (its sub-tables are `tables`) on `queue`, dead-lettering to `dlq` after
/// `max_receive_count` receives, with the seeded worker.
fn start(
    name: &str,
    queue: &Arc<SimQueue>,
    (dlq, max_receive_count): (&Arc<SimQueue>, u32),
    seed: u64,
    tables: &str,
) -> Running {
    let config = format!(
        "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{}\"\n{tables}\n\
         [pipelines.dead_letter]\nqueue_url = \"{}\"\nmax_receive_count = {max_receive_count}\n",
        queue.url(),
        dlq.url()
    );
    let witness: Arc<Mutex<Witness>> = Arc::default();
    let target = worker(seed, witness.clone());
    let (task, shutdown) = start_with(&config, queue, Some(dlq), target);
    Running { task, shutdown, witness }
}

/// Starts the pipeline of `config` (one `[[pipelines]]` table) with `target`.
fn start_with(
    config: &str,
    queue: &Arc<SimQueue>,
    dlq: Option<&Arc<SimQueue>>,
    target: Target,
) -> (tokio::task::JoinHandle<Result<(), sqs_poller::sqs::SqsError>>, Shutdown) {
    let cfg = sqs_poller::config::parse(config, &|_| None).expect("valid").pipelines.remove(0);
    spawn_pipeline(cfg, queue.clone(), dlq.map(|d| d.clone() as Arc<dyn Queue>), target, None)
}

/// Runs the pipeline of `cfg` in a task of its own, with its own metrics and no telemetry or
/// large payloads; `pool`: the shared pool it takes part in.
fn spawn_pipeline(
    cfg: sqs_poller::config::PipelineConfig,
    queue: Arc<dyn Queue>,
    dead_letter: Option<Arc<dyn Queue>>,
    target: Target,
    pool: Option<Arc<sqs_poller::dispatch::concurrency::Slots>>,
) -> (tokio::task::JoinHandle<Result<(), sqs_poller::sqs::SqsError>>, Shutdown) {
    let mut parts = PipelineParts::for_test(cfg, queue, target);
    parts.dead_letter = dead_letter;
    parts.pool = pool;
    spawn_parts(parts)
}

/// Runs the pipeline of `parts` in a task of its own.
fn spawn_parts(parts: PipelineParts) -> (tokio::task::JoinHandle<Result<(), sqs_poller::sqs::SqsError>>, Shutdown) {
    let shutdown = parts.shutdown.clone();
    let task = tokio::spawn(pipeline::run(parts));
    (task, shutdown)
}

async fn run(name: &str, fifo: bool, seed: u64) {
    let handle = recorder();
    let suffix = if fifo { ".fifo" } else { "" };
    let mut source = SimConfig::new(&format!("http://sim/000000000000/{name}{suffix}"), VISIBILITY, seed);
    source.error_rate = 0.01;
    source.entry_error_rate = 0.01;
    source.duplicate_rate = if fifo { 0.0 } else { 0.05 };
    source.max_latency = Duration::from_millis(50);
    let queue = Arc::new(SimQueue::new(source));
    let dlq = Arc::new(SimQueue::new(SimConfig::new(
        &format!("http://sim/000000000000/{name}-dlq{suffix}"),
        VISIBILITY,
        seed ^ 1,
    )));
    let mut poison = 0;
    for i in 0..MESSAGES {
        let body = if draw(seed, &[name, &i.to_string(), "poison"]) < 0.005 {
            poison += 1;
            format!("poison-{i}")
        } else {
            format!("m-{i}")
        };
        let group = fifo.then(|| format!("g{}", i % 50));
        queue.put(&body, group.as_deref());
    }
    let tables = "[pipelines.pollers]\nmin = 2\nmax = 10\nwait_time_secs = 5\n\
         [pipelines.batch]\nsize = 10\nwindow_ms = 200\n\
         [pipelines.target]\ntype = \"http\"\nurl = \"http://unused\"\ntimeout_secs = 120\nmax_concurrency = 50\n\
         [pipelines.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 20";
    let started = tokio::time::Instant::now();
    let running = start(name, &queue, (&dlq, 4), seed, tables);
    while !queue.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(6 * 3600), "not drained after 6 simulated hours");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let simulated = started.elapsed();
    let witness = running.witness.clone();
    running.stop().await;

    let w = witness.lock().unwrap();
    let log = queue.log();
    let dead: Vec<String> = dlq.bodies();
    eprintln!(
        "{name}: {MESSAGES} messages in {:.0} simulated s; {} invocations, {} deliveries, {} duplicates injected, \
         {} faults injected, {} dead-lettered ({poison} poison), {} stale deletes",
        simulated.as_secs_f64(),
        w.invocations,
        log.deliveries,
        log.duplicates,
        log.injected_errors,
        dead.len(),
        log.stale_deletes
    );
    assert!(
        w.overlaps.is_empty(),
        "dispatched while an earlier copy ran: {:?}",
        &w.overlaps[..w.overlaps.len().min(5)]
    );
    // SQS answers success to a delete with an old receipt handle without deleting. The keeper
    // always deletes with the newest handle it holds, so a stale delete needs a duplicate
    // delivery racing with the delete itself (its lease had ended); that copy is then processed
    // and deleted in turn (every message ends deleted, below)
    assert!(log.stale_deletes <= log.duplicates, "{} stale deletes", log.stale_deletes);
    let deleted: HashSet<&String> = log.deleted.iter().collect();
    assert_eq!(deleted.len(), log.deleted.len(), "each message deleted once");
    assert_eq!(log.deleted.len(), MESSAGES, "every message ended deleted (processed or dead-lettered)");
    // a dead-letter copy whose source delete failed is sent again when the message comes back
    // (at-least-once), so the dead-letter queue may hold a message twice
    let dead_set: HashSet<&str> = dead.iter().map(String::as_str).collect();
    assert!(dead_set.iter().all(|b| b.starts_with("poison")), "only poison messages dead-lettered: {dead:?}");
    assert_eq!(dead_set.len(), poison, "every poison message dead-lettered");
    for id in &log.deleted {
        // a deleted message either succeeded or was dead-lettered (its copy is in the DLQ)
        let body = w.bodies.get(id).map(String::as_str).unwrap_or("(never dispatched)");
        assert!(w.succeeded.contains(id) || dead_set.contains(body), "{id} ({body}) deleted without success");
    }
    assert_eq!(w.succeeded.len(), MESSAGES - poison, "every other message succeeded");
    if fifo {
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (group, body) in &w.success_order {
            let n: usize = body.trim_start_matches("m-").parse().unwrap();
            if let Some(prev) = last.insert(group.as_str(), n) {
                assert!(n > prev, "group {group}: m-{n} succeeded after m-{prev}");
            }
        }
    }
    let text = handle.render();
    let c = |metric: &str| counter(&text, &format!("{metric}{{pipeline=\"{name}\"}}"));
    let deleted_answers = log.deleted.len() + log.stale_deletes as usize;
    assert_eq!(c("sqs_poller_messages_deleted_total") as usize, deleted_answers, "deleted counter = SQS's answers");
    assert_eq!(c("sqs_poller_messages_dead_lettered_total") as usize, dead.len(), "dead-letter counter = DLQ");
    assert!(dead.len() - dead_set.len() <= log.injected_errors as usize, "copies sent twice only after a fault");
    // a message whose delete failed comes back and is processed again (at-least-once): the
    // succeeded counter counts every success, each an injected fault's doing
    let successes = c("sqs_poller_messages_succeeded_total") as usize;
    assert!(successes >= MESSAGES - poison, "succeeded counter {successes}");
    assert!(
        successes - (MESSAGES - poison) <= log.injected_errors as usize * 10,
        "{} successes beyond one per message, with {} faults injected",
        successes - (MESSAGES - poison),
        log.injected_errors
    );
    assert_eq!(c("sqs_poller_in_flight_messages"), 0.0, "nothing outstanding after the drain");
}

/// Runs one scenario with a fresh seed (or `SQS_POLLER_SIM_SEED`) and prints the seed if it fails.
fn scenario(name: &'static str, fifo: bool) {
    let seed = seed();
    let result = std::panic::catch_unwind(|| {
        // the service's own jitter (backoffs) draws from this thread's generator
        fastrand::seed(seed);
        paused_runtime().block_on(run(name, fifo, seed))
    });
    if let Err(e) = result {
        eprintln!("simulation `{name}` failed with seed {seed}: replay with SQS_POLLER_SIM_SEED={seed}");
        std::panic::resume_unwind(e);
    }
}

#[test]
fn standard_queue_ten_thousand_messages_under_faults() {
    scenario("sim-standard", false);
}

#[test]
fn fifo_queue_ten_thousand_messages_under_faults() {
    scenario("sim-fifo", true);
}

/// A dead-letter queue that refuses every copy: the messages stay in the source queue, come
/// back after their backoff, and nothing is deleted or counted as dead-lettered.
#[test]
fn a_dead_letter_queue_that_refuses_every_copy_loses_nothing() {
    let seed = seed();
    fastrand::seed(seed);
    paused_runtime().block_on(async {
        let handle = recorder();
        let name = "sim-dlq-down";
        let queue = Arc::new(SimQueue::new(SimConfig::new("http://sim/000000000000/dlq-down", VISIBILITY, seed)));
        let mut broken = SimConfig::new("http://sim/000000000000/dlq-down-dlq", VISIBILITY, seed);
        broken.error_rate = 1.0;
        let dlq = Arc::new(SimQueue::new(broken));
        for i in 0..20 {
            queue.put(&format!("poison-{i}"), None);
        }
        let running = start(
            name,
            &queue,
            (&dlq, 2),
            seed,
            "[pipelines.pollers]\nwait_time_secs = 5\n[pipelines.target]\ntype = \"http\"\nurl = \"http://unused\"\n\
             [pipelines.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 4",
        );
        tokio::time::sleep(Duration::from_secs(600)).await;
        running.stop().await;
        let log = queue.log();
        assert_eq!(queue.len(), 20, "every message is still in the source queue");
        assert!(log.deleted.is_empty(), "nothing deleted: {:?}", log.deleted);
        assert!(dlq.is_empty());
        assert!(log.deliveries >= 20 * 5, "each came back after its backoff: {} deliveries", log.deliveries);
        let text = handle.render();
        assert_eq!(counter(&text, &format!("sqs_poller_messages_dead_lettered_total{{pipeline=\"{name}\"}}")), 0.0);
        assert_eq!(counter(&text, &format!("sqs_poller_messages_deleted_total{{pipeline=\"{name}\"}}")), 0.0);
        assert!(dlq.log().injected_errors >= 20, "every copy was tried and refused");
    });
}

/// Panics are bugs, but they must not lose or hide messages: pollers whose receive panics are
/// replaced (the pollers gauge stays at the fleet's size), and a batch whose target panics is
/// released and delivered again.
#[test]
fn panicking_pollers_are_replaced_and_a_panicking_batch_is_released() {
    let seed = seed();
    fastrand::seed(seed);
    paused_runtime().block_on(async {
        let handle = recorder();
        let name = "sim-panics";
        let mut config = SimConfig::new("http://sim/000000000000/panics", VISIBILITY, seed);
        config.receive_panics = 3;
        let queue = Arc::new(SimQueue::new(config));
        let dlq = Arc::new(SimQueue::new(SimConfig::new("http://sim/000000000000/panics-dlq", VISIBILITY, seed)));
        for i in 0..50 {
            queue.put(&format!("m-{i}"), None);
        }
        // the target panics on the first batch it gets
        let panicked = Arc::new(AtomicBool::new(false));
        let once = panicked.clone();
        let succeeded: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = succeeded.clone();
        let target = Target::Function(Arc::new(move |event: Bytes| {
            let once = once.clone();
            let log = log.clone();
            Box::pin(async move {
                if !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    panic!("simulated panic in the target");
                }
                let event: Value = serde_json::from_slice(&event).unwrap();
                for r in event["Records"].as_array().unwrap() {
                    log.lock().unwrap().push(r["body"].as_str().unwrap().to_string());
                }
                Invocation::Response(Bytes::new())
            })
        }));
        let config = format!(
            "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{}\"\n[pipelines.pollers]\nmin = 2\nmax = 2\nwait_time_secs = 5\n\
             [pipelines.target]\ntype = \"http\"\nurl = \"http://unused\"\n[pipelines.dead_letter]\nqueue_url = \"{}\"\n",
            queue.url(),
            dlq.url()
        );
        let cfg = sqs_poller::config::parse(&config, &|_| None).expect("valid").pipelines.remove(0);
        let (task, shutdown) = spawn_pipeline(cfg, queue.clone(), Some(dlq.clone()), target, None);
        let started = tokio::time::Instant::now();
        while !queue.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(600), "not drained: {} left", queue.len());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // released at once, not after the 30 s visibility timeout
        assert!(started.elapsed() < Duration::from_secs(20), "drained after {:?}", started.elapsed());
        // a poller that died is replaced within a second; the gauge counts the living
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let text = handle.render();
        let pollers = counter(&text, &format!("sqs_poller_pollers{{pipeline=\"{name}\"}}"));
        assert_eq!(pollers, 2.0, "the gauge counts the pollers alive after three died");
        assert!(panicked.load(std::sync::atomic::Ordering::SeqCst));
        shutdown.begin(Duration::from_secs(30));
        task.await.expect("the pipeline task").expect("the pipeline ran");
        let mut got = succeeded.lock().unwrap().clone();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 50, "every message processed, the panicked batch's included");
        assert_eq!(queue.log().deleted.len(), 50);
    });
}

/// The seed's fleet (min 20, max 2,000, 20 s long polls, batch 50, window 2 s): a 40,000-message
/// burst takes it to max, and once the queue is empty it is back at min within about two
/// minutes — a fraction of the fleet per cool-down, not one poller per long poll — and stays
/// there, receiving only what 20 idle long polls cost.
#[test]
fn the_seed_fleet_goes_to_max_on_a_burst_and_back_to_min_within_two_minutes_of_idle() {
    let seed = seed();
    fastrand::seed(seed);
    paused_runtime().block_on(async {
        let handle = recorder();
        let name = "sim-seed-fleet";
        // the seed's events are small: its queue's MaximumMessageSize says so (4 KiB), and the
        // default byte budget (256 MiB) then covers 4,369 receives at once, past the 2,000 pollers
        let mut source = SimConfig::new("http://sim/000000000000/seed-fleet", VISIBILITY, seed);
        source.max_message_bytes = 4096;
        let queue = Arc::new(SimQueue::new(source));
        let dlq = Arc::new(SimQueue::new(SimConfig::new("http://sim/000000000000/seed-fleet-dlq", VISIBILITY, seed)));
        for i in 0..40_000 {
            queue.put(&format!("m-{i}"), None);
        }
        let target = Target::Function(Arc::new(|_event: Bytes| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Invocation::Response(Bytes::new())
            })
        }));
        let config = format!(
            "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{}\"\ndepth_interval_secs = 10\n\
             [pipelines.pollers]\nmin = 20\nmax = 2000\nwait_time_secs = 20\nvisibility_timeout_secs = 60\n\
             [pipelines.batch]\nsize = 50\nwindow_ms = 2000\n\
             [pipelines.target]\ntype = \"http\"\nurl = \"http://unused\"\nmax_concurrency = 5000\n\
             [pipelines.dead_letter]\nqueue_url = \"{}\"\nmax_receive_count = 3\n",
            queue.url(),
            dlq.url()
        );
        let cfg = sqs_poller::config::parse(&config, &|_| None).expect("valid").pipelines.remove(0);
        let (task, shutdown) = spawn_pipeline(cfg, queue.clone(), Some(dlq.clone()), target, None);
        let pollers = || counter(&handle.render(), &format!("sqs_poller_pollers{{pipeline=\"{name}\"}}"));
        let started = tokio::time::Instant::now();
        let mut peak = 0.0f64;
        while !queue.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(600), "not drained: {} left", queue.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
            peak = peak.max(pollers());
        }
        let idle_from = tokio::time::Instant::now();
        println!("40,000 drained in {:?}, peak {peak} pollers", idle_from - started);
        assert_eq!(peak, 2000.0, "the burst took the fleet to max");
        let mut seen = vec![pollers()];
        while seen.last() != Some(&20.0) {
            assert!(idle_from.elapsed() < Duration::from_secs(600), "the fleet went {seen:?} in 10 minutes of idle");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let n = pollers();
            if seen.last() != Some(&n) {
                seen.push(n);
            }
        }
        let to_min = idle_from.elapsed();
        println!("idle: 2000 -> 20 pollers in {to_min:?}, through {seen:?}");
        assert!(to_min <= Duration::from_secs(130), "2000 -> 20 took {to_min:?}: {seen:?}");
        // at rest: 20 long polls of 20 s, about 60 receives a minute (and no step back up)
        let before = queue.receives();
        tokio::time::sleep(Duration::from_secs(120)).await;
        let per_minute = (queue.receives() - before) / 2;
        println!("at rest: {per_minute} receives a minute");
        assert_eq!(pollers(), 20.0);
        assert!(per_minute <= 70, "{per_minute} receives a minute at rest");
        shutdown.begin(Duration::from_secs(30));
        task.await.expect("the pipeline task").expect("the pipeline ran");
        assert_eq!(queue.log().deleted.len(), 40_000, "every message deleted");
    });
}

/// Issue 30: the worker answers 502 for 6 s (the breaker opens after 5), then 503 for 34 s (a
/// load balancer whose targets are still unhealthy), then 200. The half-open probe was throttled,
/// went back to the breaker's `admit` and waited for the probe that was itself: nothing was
/// processed after the worker recovered. Now the probe keeps its turn through the throttles, and
/// the breaker closes on the first answer.
#[test]
fn a_probe_the_target_throttles_keeps_its_turn_and_the_breaker_closes_when_the_target_answers() {
    paused_runtime().block_on(async {
        let handle = recorder();
        let name = "sim-breaker-throttled-probe";
        let queue = Arc::new(SimQueue::new(SimConfig::new(&format!("http://sim/000000000000/{name}"), VISIBILITY, 1)));
        for i in 0..50 {
            queue.put(&format!("m-{i}"), None);
        }
        let start = tokio::time::Instant::now();
        let answered: Arc<Mutex<HashSet<String>>> = Arc::default();
        let seen = answered.clone();
        let target = Target::Function(Arc::new(move |event: Bytes| {
            let seen = seen.clone();
            Box::pin(async move {
                let t = start.elapsed();
                if t < Duration::from_secs(6) {
                    return Invocation::unavailable("HTTP 502");
                }
                if t < Duration::from_secs(40) {
                    return Invocation::Throttled("HTTP 503".into());
                }
                let event: Value = serde_json::from_slice(&event).unwrap();
                for r in event["Records"].as_array().unwrap() {
                    seen.lock().unwrap().insert(r["body"].as_str().unwrap().to_string());
                }
                Invocation::Response(Bytes::new())
            })
        }));
        let config = format!(
            "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{}\"\n[pipelines.pollers]\nmin = 1\nmax = 4\nwait_time_secs = 5\n\
             [pipelines.batch]\nsize = 5\nwindow_ms = 100\n\
             [pipelines.target]\ntype = \"http\"\nurl = \"http://unused\"\nmax_concurrency = 4\nmax_throttled_secs = 300\n",
            queue.url()
        );
        let (task, shutdown) = start_with(&config, &queue, None, target);
        let recovered = start + Duration::from_secs(40);
        while !queue.is_empty() {
            let now = tokio::time::Instant::now();
            assert!(
                now < recovered + Duration::from_secs(100),
                "{} of 50 messages processed 100 s after the worker recovered; breaker state {}",
                answered.lock().unwrap().len(),
                counter(&handle.render(), &format!("sqs_poller_breaker_state{{pipeline=\"{name}\"}}"))
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(answered.lock().unwrap().len(), 50);
        let text = handle.render();
        assert_eq!(counter(&text, &format!("sqs_poller_breaker_state{{pipeline=\"{name}\"}}")), 0.0, "closed");
        shutdown.begin(Duration::from_secs(30));
        task.await.unwrap().unwrap();
    });
}

/// Found by the exploration: short polling (`wait_time_secs = 0`) of an empty queue asked again
/// at once, a receive per round trip per poller (a hot loop on an emulator that answers at once;
/// on SQS, hundreds of billed requests a second). Now an empty answer that came back at once
/// is followed by the next receive a second after it was sent.
#[test]
fn short_polling_an_empty_queue_receives_at_most_once_a_second_per_poller() {
    paused_runtime().block_on(async {
        let name = "sim-short-poll";
        let mut config = SimConfig::new(&format!("http://sim/000000000000/{name}"), VISIBILITY, 1);
        config.max_latency = Duration::from_millis(2);
        let queue = Arc::new(SimQueue::new(config));
        let target = Target::Function(Arc::new(|_event: Bytes| Box::pin(async { Invocation::Response(Bytes::new()) })));
        let config = format!(
            "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{}\"\n[pipelines.pollers]\nmin = 3\nmax = 3\nwait_time_secs = 0\n\
             [pipelines.target]\ntype = \"http\"\nurl = \"http://unused\"\n",
            queue.url()
        );
        let (task, shutdown) = start_with(&config, &queue, None, target);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let receives = queue.receives();
        shutdown.begin(Duration::from_secs(30));
        task.await.unwrap().unwrap();
        assert!(receives <= 3 * 61, "{receives} receives by 3 short-polling pollers in 60 s");
        assert!(receives >= 3 * 50, "the pollers kept polling: {receives} receives");
    });
}

/// Issue 30: batches the open breaker held kept their concurrency slots, so a pool's other
/// pipelines starved. Pipelines `down` and `up` share a pool of 2; `down`'s worker answers 502
/// (the breaker opens at the first, cool-down 300 s), `up`'s works. Now a held batch lends its
/// slot back: `up` drains long before `down`'s first probe.
#[test]
fn batches_the_breaker_holds_lend_their_pool_slots_to_the_other_pipelines() {
    paused_runtime().block_on(async {
        let queues: Vec<Arc<SimQueue>> = ["down", "up"]
            .iter()
            .map(|n| Arc::new(SimQueue::new(SimConfig::new(&format!("http://sim/000000000000/pool-{n}"), VISIBILITY, 1))))
            .collect();
        for q in &queues {
            for i in 0..40 {
                q.put(&format!("m-{i}"), None);
            }
        }
        let mut text = "[pools.shared]\nmax_concurrency = 2\n".to_string();
        for (name, q) in ["down", "up"].iter().zip(&queues) {
            text += &format!(
                "[[pipelines]]\nname = \"pool-{name}\"\nqueue_url = \"{}\"\n[pipelines.pollers]\nmin = 1\nmax = 2\nwait_time_secs = 5\n\
                 [pipelines.batch]\nsize = 2\n\
                 [pipelines.target]\ntype = \"http\"\nurl = \"http://unused\"\npool = \"shared\"\nmax_concurrency = 2\n\
                 [pipelines.target.breaker]\nfailures = 1\ncooldown_secs = 300\n",
                q.url()
            );
        }
        let mut cfg = sqs_poller::config::parse(&text, &|_| None).expect("valid");
        let pool = Arc::new(sqs_poller::dispatch::concurrency::Slots::new(2, None));
        let mut running = Vec::new();
        for (k, q) in queues.iter().enumerate() {
            let config = cfg.pipelines.remove(0);
            let target = Target::Function(Arc::new(move |_event: Bytes| {
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if k == 0 {
                        Invocation::unavailable("HTTP 502")
                    } else {
                        Invocation::Response(Bytes::new())
                    }
                })
            }));
            let (task, shutdown) = spawn_pipeline(config, q.clone(), None, target, Some(pool.clone()));
            running.push((task, shutdown));
        }
        let start = tokio::time::Instant::now();
        while !queues[1].is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(250),
                "`up` has {} of 40 left after 250 s: the held batches of `down` kept the pool's slots",
                queues[1].len()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(queues[0].len(), 40, "`down` processed nothing (its worker is down)");
        for (task, shutdown) in running {
            shutdown.begin(Duration::from_secs(10));
            task.await.unwrap().unwrap();
        }
    });
}

/// Issue 36: a worker asks to see one message again in 20 minutes and another in 13 hours. The
/// first waits out a visibility timeout (the same message); the second, longer than any
/// visibility timeout holds, is re-sent to its queue in 52 hops of 15 minutes, each copy
/// accepted before the message it was copied from is deleted. Neither is seen earlier; the copy
/// the worker finally sees carries the original's message attributes, trace header and
/// `SentTimestamp`, and counts its receives across the hops.
#[test]
fn a_worker_asking_for_twenty_minutes_and_thirteen_hours_sees_its_messages_then() {
    paused_runtime().block_on(async {
        let handle = recorder();
        let name = "sim-long-delays";
        let queue = Arc::new(SimQueue::new(SimConfig::new(&format!("http://sim/000000000000/{name}"), VISIBILITY, 1)));
        let tenant = aws_sdk_sqs::types::MessageAttributeValue::builder().data_type("String").string_value("a");
        let attributes = HashMap::from([("tenant".to_string(), tenant.build().unwrap())]);
        for body in ["twenty", "thirteen"] {
            let mut m = sqs_poller::sqs::Outgoing::new(body, attributes.clone());
            m.trace_header = Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1");
            queue.send(m).await.unwrap();
        }
        let start = tokio::time::Instant::now();
        // every sighting: (body, seconds since the start, the record)
        let seen: Arc<Mutex<Vec<(String, u64, Value)>>> = Arc::default();
        let sightings = seen.clone();
        let target = Target::Function(Arc::new(move |event: Bytes| {
            let sightings = sightings.clone();
            Box::pin(async move {
                let event: Value = serde_json::from_slice(&event).unwrap();
                let mut failures = Vec::new();
                for r in event["Records"].as_array().unwrap() {
                    let body = r["body"].as_str().unwrap().to_string();
                    let mut seen = sightings.lock().unwrap();
                    let first = !seen.iter().any(|(b, _, _)| *b == body);
                    seen.push((body.clone(), start.elapsed().as_secs(), r.clone()));
                    if first {
                        let delay = if body == "twenty" { 20 * 60 } else { 13 * 3600 };
                        failures.push(serde_json::json!({"itemIdentifier": r["messageId"], "retryAfterSeconds": delay}));
                    }
                }
                Invocation::Response(Bytes::from(serde_json::json!({ "batchItemFailures": failures }).to_string()))
            })
        }));
        let config = format!(
            "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{}\"\n[pipelines.pollers]\nmin = 1\nmax = 2\nwait_time_secs = 20\n\
             [pipelines.batch]\nsize = 10\nwindow_ms = 100\n\
             [pipelines.target]\ntype = \"http\"\nurl = \"http://unused\"\nmax_concurrency = 2\n",
            queue.url()
        );
        let (task, shutdown) = start_with(&config, &queue, None, target);
        while !queue.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(14 * 3600), "not done 14 hours on: {:?}", seen.lock().unwrap());
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        shutdown.begin(Duration::from_secs(30));
        task.await.unwrap().unwrap();

        let seen = seen.lock().unwrap();
        let of = |body: &str| seen.iter().filter(|(b, _, _)| b == body).collect::<Vec<_>>();
        let (twenty, thirteen) = (of("twenty"), of("thirteen"));
        assert_eq!((twenty.len(), thirteen.len()), (2, 2), "each seen twice: {seen:?}");
        // 20 minutes: a visibility timeout; the same message, its second receive
        assert!(twenty[1].1 >= twenty[0].1 + 1200, "seen again after {} s", twenty[1].1 - twenty[0].1);
        assert_eq!(twenty[1].2["messageId"], twenty[0].2["messageId"]);
        assert_eq!(twenty[1].2["attributes"]["ApproximateReceiveCount"], "2");
        // 13 hours: hops, a copy
        let (before, after) = (&thirteen[0].2, &thirteen[1].2);
        assert!(thirteen[1].1 >= thirteen[0].1 + 13 * 3600, "seen again after {} s", thirteen[1].1 - thirteen[0].1);
        assert_ne!(after["messageId"], before["messageId"], "a copy");
        assert_eq!(after["attributes"]["ApproximateReceiveCount"], "2", "receives count across the hops");
        assert_eq!(after["attributes"]["SentTimestamp"], before["attributes"]["SentTimestamp"], "the original's");
        assert_eq!(after["attributes"]["AWSTraceHeader"], before["attributes"]["AWSTraceHeader"]);
        assert_eq!(after["messageAttributes"]["tenant"]["stringValue"], "a");
        let hop: Value =
            serde_json::from_str(after["messageAttributes"]["sqs-poller.hop"]["stringValue"].as_str().unwrap()).unwrap();
        assert_eq!(hop, serde_json::json!({"dueInSeconds": 0, "receiveCount": 1, "hops": 52}));
        let text = handle.render();
        assert_eq!(counter(&text, &format!("sqs_poller_messages_hopped_total{{pipeline=\"{name}\"}}")), 52.0);
        // each hop's copy was accepted before its original went: 52 deletes of originals, two of
        // the processed messages, and nothing else
        assert_eq!(queue.log().deleted.len(), 54);
    });
}
