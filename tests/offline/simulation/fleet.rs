//! The fleet's budget where it meets the breaker, the throttle retries and a store that goes
//! away: each test replays what the exploration found (paused time, the in-memory store).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sqs_poller::dispatch::{Invocation, Target};
use sqs_poller::fleet::memory::MemoryStore;
use sqs_poller::fleet::{Fleet, PipelineFleet};
use sqs_poller::pipeline::PipelineParts;
use sqs_poller::sim::{SimConfig, SimQueue};
use sqs_poller::sqs::Queue;
use tokio::time::Instant;

use sqs_poller::shutdown::Shutdown;

use super::{paused_runtime, spawn_parts, VISIBILITY};

/// A running pipeline: its queue, its task and its shutdown.
type Running = (Arc<SimQueue>, tokio::task::JoinHandle<Result<(), sqs_poller::sqs::SqsError>>, Shutdown);

/// Starts pipeline `name` (`target_keys`: its `[pipelines.target]` keys after the type) on
/// `fleet`, on a queue of `messages` bodies.
fn start_on_fleet(name: &str, messages: usize, target_keys: &str, target: Target, fleet: &Arc<Fleet>) -> Running {
    let queue = Arc::new(SimQueue::new(SimConfig::new(&format!("http://sim/000000000000/{name}"), VISIBILITY, 1)));
    for i in 0..messages {
        queue.put(&format!("m-{i}"), None);
    }
    let text = format!(
        "[fleet]\nredis_url = \"redis://sim.invalid\"\n[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{}\"\n\
         [pipelines.pollers]\nmin = 1\nmax = 2\nwait_time_secs = 5\n[pipelines.batch]\nsize = 1\n\
         [pipelines.target]\ntype = \"http\"\nurl = \"http://unused\"\n{target_keys}\n",
        queue.url()
    );
    let cfg = sqs_poller::config::parse(&text, &|_| None).expect("valid").pipelines.remove(0);
    let mut parts = PipelineParts::for_test(cfg.clone(), queue.clone() as Arc<dyn Queue>, target);
    parts.fleet = PipelineFleet::of(fleet, &cfg);
    let (task, shutdown) = spawn_parts(parts);
    (queue, task, shutdown)
}

/// A fleet on `store`, its heartbeat running.
fn fleet_on(store: &Arc<MemoryStore>, instance: &str) -> Arc<Fleet> {
    let fleet = Fleet::with_store(store.clone(), instance, Duration::from_secs(30));
    tokio::spawn(fleet.clone().keep_alive(tokio_util::sync::CancellationToken::new()));
    fleet
}

/// Waits until every pipeline's queue is empty or `most` simulated time (paused: a loaded
/// machine cannot make it pass sooner) has gone by, then drains them; whether they emptied.
async fn drain_within(running: Vec<Running>, most: Duration) -> bool {
    let start = Instant::now();
    while running.iter().any(|(q, _, _)| !q.is_empty()) && start.elapsed() < most {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let emptied = running.iter().all(|(q, _, _)| q.is_empty());
    for (_, task, shutdown) in running {
        shutdown.begin(Duration::from_secs(5));
        task.await.expect("the pipeline task").expect("the pipeline ran");
    }
    emptied
}

/// One pipeline of `target_keys` on a fleet in memory with a queue of `messages` bodies, until the
/// queue is empty or `most` simulated time has passed; whether it emptied.
async fn run_on_fleet(
    name: &str,
    messages: usize,
    target_keys: &str,
    target: Target,
    store: &Arc<MemoryStore>,
    most: Duration,
) -> bool {
    let running = start_on_fleet(name, messages, target_keys, target, &fleet_on(store, name));
    drain_within(vec![running], most).await
}

/// A worker that holds each batch `hold`, counting the batches it works on at once (`now`) and
/// the most at once (`peak`).
fn peak_counting(now: &Arc<AtomicUsize>, peak: &Arc<AtomicUsize>, hold: Duration) -> Target {
    let (now, peak) = (now.clone(), peak.clone());
    Target::Function(Arc::new(move |_: Bytes| {
        let (now, peak) = (now.clone(), peak.clone());
        Box::pin(async move {
            peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            tokio::time::sleep(hold).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Invocation::Response(Bytes::new())
        })
    }))
}

/// Found by the exploration (seed 61669798328634553): a batch the breaker held lent its local
/// slot but kept its fleet slot; the next batch took the local slot and waited for the fleet
/// slot, and the held batch, admitted as the probe, waited for the local slot — for ever. Now
/// the fleet slot goes and comes back with the local one.
#[test]
fn a_batch_the_breaker_holds_lends_its_fleet_slot_too() {
    paused_runtime().block_on(async {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let target = Target::Function(Arc::new(move |_: Bytes| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if n == 0 {
                    Invocation::unavailable("HTTP 502")
                } else {
                    Invocation::Response(Bytes::new())
                }
            })
        }));
        let keys = "max_concurrency = 1\nfleet_max_concurrency = 1\n[pipelines.target.breaker]\nfailures = 1\ncooldown_secs = 1";
        let store = Arc::new(MemoryStore::new());
        let drained = run_on_fleet("sim-fleet-breaker", 10, keys, target, &store, Duration::from_secs(600)).await;
        assert!(drained, "10 messages not processed in 10 minutes: {} calls", calls.load(Ordering::SeqCst));
    });
}

/// Found by the exploration (seeds 61669798328634550, …498): the rates were kept once per batch,
/// and a throttled batch's retries called the target at the throttle backoff's pace. Now every
/// call keeps to them.
#[test]
fn the_retries_of_a_throttled_batch_keep_to_the_fleets_rate() {
    paused_runtime().block_on(async {
        let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let seen = calls.clone();
        let target = Target::Function(Arc::new(move |_: Bytes| {
            let n = {
                let mut c = seen.lock().unwrap();
                c.push(Instant::now());
                c.len()
            };
            Box::pin(async move {
                if n <= 20 {
                    Invocation::Throttled("HTTP 429".into())
                } else {
                    Invocation::Response(Bytes::new())
                }
            })
        }));
        let keys = "max_concurrency = 2\nmax_throttled_secs = 600\nfleet_rate_per_sec = 2";
        let store = Arc::new(MemoryStore::new());
        assert!(run_on_fleet("sim-fleet-rate", 6, keys, target, &store, Duration::from_secs(600)).await);
        let calls = calls.lock().unwrap();
        // 2 a second in bursts of a batch (1): at most 3 calls within any second
        for (i, at) in calls.iter().enumerate() {
            let within = calls[i..].iter().take_while(|t| **t < *at + Duration::from_secs(1)).count();
            assert!(within <= 3, "{within} calls within a second from call {i} at 2 a second: {calls:?}");
        }
        assert!(calls.len() > 20, "the throttles were retried");
    });
}

/// Found by the exploration (seed 61669798328634568): a batch held a shared fleet slot when the
/// store went away, and the local share (the whole limit, for one instance) let another batch
/// run beside it. Shared slots still held now count against the local share.
#[test]
fn shared_slots_held_when_the_store_goes_away_count_against_the_local_share() {
    paused_runtime().block_on(async {
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let target = peak_counting(&now, &peak, Duration::from_secs(10));
        let store = Arc::new(MemoryStore::new());
        let away = store.clone();
        // away from the third second (a batch holds the shared slot) for a minute
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            away.set_away(true);
            tokio::time::sleep(Duration::from_secs(60)).await;
            away.set_away(false);
        });
        let keys = "max_concurrency = 4\nfleet_max_concurrency = 1";
        assert!(run_on_fleet("sim-fleet-away", 8, keys, target, &store, Duration::from_secs(600)).await);
        assert_eq!(
            peak.load(Ordering::SeqCst),
            1,
            "at most fleet_max_concurrency at the worker, the store away or not"
        );
    });
}

/// Two pipelines of different names on two queues that name one `fleet_key` share one budget:
/// one batch at the worker at a time between them, each allowed two of its own.
#[test]
fn pipelines_naming_one_fleet_key_share_its_budget() {
    paused_runtime().block_on(async {
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let store = Arc::new(MemoryStore::new());
        let fleet = fleet_on(&store, "one-instance");
        let keys = "max_concurrency = 2\nfleet_max_concurrency = 1\nfleet_key = \"orders-db\"";
        let running = ["sim-fleet-key-a", "sim-fleet-key-b"]
            .map(|name| start_on_fleet(name, 10, keys, peak_counting(&now, &peak, Duration::from_millis(500)), &fleet));
        assert!(drain_within(running.into(), Duration::from_secs(600)).await, "not drained in 10 simulated minutes");
        assert_eq!(peak.load(Ordering::SeqCst), 1, "one batch at a time across both pipelines");
        assert_eq!(store.held("sqs-poller:orders-db:slots"), 0, "the shared key's slots given back");
    });
}
