//! Fair share (issue 22): a per-group cap keeps one tenant of a fair queue from taking every
//! slot, and pipelines that share a worker pool get its slots by strict priority or by weight.
//! The real binary against real emulators and real HTTP workers. The group cap runs on
//! LocalStack: fauxqs drops `MessageGroupId` from the messages of standard queues (fair queues),
//! LocalStack returns it as SQS does.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

/// The tests of this file measure latency and shares against emulators on a two-core machine:
/// one at a time, so that none is measured while another loads LocalStack or the workers.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Sends `noisy` messages of tenant `noisy` and `quiet` of tenant `quiet` to a standard queue,
/// spread evenly over `over`: batches of ten noisy messages, one quiet message every
/// `noisy / quiet` of them. Each body carries its send time. Returns how long sending took.
async fn send_tenants(sqs: &Sqs, queue: &str, noisy: usize, quiet: usize, over: Duration) -> Duration {
    let start = Instant::now();
    let every = noisy / quiet;
    let (mut n, mut q) = (0, 0);
    let sends = (noisy + quiet).div_ceil(10) as u32;
    let mut k = 0;
    while n < noisy {
        tokio::time::sleep_until((start + over / sends * k).into()).await;
        k += 1;
        let mut entries = Vec::new();
        for _ in 0..10 {
            if n >= noisy {
                break;
            }
            let (tenant, i) = if q < quiet
                && n % every == 0
                && entries.iter().all(|e: &SendMessageBatchRequestEntry| e.id() != "q")
            {
                q += 1;
                ("quiet", q)
            } else {
                n += 1;
                ("noisy", n)
            };
            let id = if tenant == "quiet" { "q".to_string() } else { entries.len().to_string() };
            entries.push(
                SendMessageBatchRequestEntry::builder()
                    .id(id)
                    .message_body(format!("{{\"tenant\":\"{tenant}\",\"i\":{i},\"sent_ms\":{}}}", now_ms()))
                    .message_group_id(tenant)
                    .build()
                    .unwrap(),
            );
        }
        let out = sqs.client.send_message_batch().queue_url(queue).set_entries(Some(entries)).send().await.unwrap();
        assert!(out.failed.is_empty(), "{:?}", out.failed);
    }
    start.elapsed()
}

struct TenantRun {
    /// The quiet tenant's send → worker times, sorted (printed; figures belong in the bench).
    quiet: Vec<Duration>,
    /// For each quiet message, how many noisy messages reached the worker after it was sent and
    /// before it did (who waited behind whom), sorted.
    noisy_ahead: Vec<usize>,
    /// The quiet tenant's highest `ApproximateReceiveCount` (1: never given back).
    quiet_max_receives: u64,
    /// The most noisy messages at the worker at once, counted from the worker's record.
    noisy_peak_in_flight: usize,
    sent_in: Duration,
    given_back: f64,
    noisiest: Option<String>,
    received: f64,
}

impl TenantRun {
    fn p99(&self) -> Duration {
        self.quiet[(self.quiet.len() * 99).div_ceil(100) - 1]
    }
    /// The 99th percentile of the noisy messages served ahead of a quiet one.
    fn ahead_p99(&self) -> usize {
        self.noisy_ahead[(self.noisy_ahead.len() * 99).div_ceil(100) - 1]
    }
}

/// The noisy-neighbour scenario on a fresh fair queue: 5,000 noisy and 100 quiet messages,
/// a worker taking 50 ms per batch, `max_concurrency` 10, batches of one; `cap`: the group cap.
/// `room`: `lease.max_outstanding` (`None`: the default).
async fn noisy_neighbour(cap: Option<usize>, room: Option<usize>) -> TenantRun {
    let sqs = localstack().await;
    let queue = sqs.queue("fair", &[]).await;
    let worker = loaded_worker(|_, _| Reply { delay: Duration::from_millis(50), ..Reply::ok("") }).await;
    let cap_key = cap.map_or(String::new(), |c| format!("max_in_flight_per_group = {c}"));
    let poller = start_poller(
        &sqs,
        5,
        &http_pipeline_with_target(
            "fair",
            &queue,
            &worker.url,
            "max_concurrency = 10",
            &format!(
                "[pipelines.batch]\nsize = 1\n{cap_key}\n[pipelines.pollers]\nmin = 5\nmax = 10\nwait_time_secs = 1\n{}",
                room.map_or(String::new(), |r| format!("[pipelines.lease]\nmax_outstanding = {r}"))
            ),
        ),
    )
    .await;
    let sent_in = send_tenants(&sqs, &queue, 5_000, 100, Duration::from_secs(20)).await;
    let noisiest = match cap {
        // the admin API names the busiest group (never a metric label)
        Some(_) => {
            let (_, body) = http_get(&format!("{}/pipelines/fair", poller.admin_url())).await.expect("the admin API");
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            status["noisiest_groups"][0]["group"].as_str().map(str::to_string)
        }
        None => None,
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while worker.times_delivered().len() < 5_100 {
        if Instant::now() > deadline {
            let text = poller.metrics_text().await;
            let figures: Vec<&str> = text
                .lines()
                .filter(|l| {
                    !l.starts_with('#') && (l.contains("messages_") || l.contains("group") || l.contains("in_flight"))
                })
                .collect();
            panic!(
                "{} of 5,100 delivered after 180 s; queue (visible, in flight) {:?}\n{}",
                worker.times_delivered().len(),
                sqs.counts(&queue).await,
                figures.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the worker answers 200 and nothing else: settled once the queue is empty
    eventually("the queue empty", Duration::from_secs(60), || async { sqs.counts(&queue).await == (0, 0) }).await;
    let text = poller.metrics_text().await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    let times = worker.times_delivered();
    assert_eq!(times.len(), 5_100, "every message processed");
    assert!(times.values().all(|&n| n == 1), "none twice: {:?}", times.values().filter(|&&n| n > 1).count());
    assert_eq!(metric_value(&text, "sqs_poller_messages_failed_total{pipeline=\"fair\"}"), 0.0);
    // the quiet tenant's times and the noisy messages served ahead of each, and the most noisy
    // messages at the worker at once (batches of one: a delivery is a message)
    let deliveries = worker.deliveries();
    let mut quiet = Vec::new();
    let mut quiet_sent: Vec<(SystemTime, SystemTime)> = Vec::new();
    let mut noisy_seen: Vec<SystemTime> = Vec::new();
    let mut noisy = Vec::new();
    let mut quiet_max_receives = 0;
    for d in &deliveries {
        let seen = SystemTime::now() - d.at.elapsed();
        for r in d.records() {
            let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            assert_eq!(r["attributes"]["MessageGroupId"], body["tenant"], "the record carries its group");
            if body["tenant"] == "quiet" {
                let sent = UNIX_EPOCH + Duration::from_millis(body["sent_ms"].as_u64().unwrap());
                quiet.push(seen.duration_since(sent).unwrap_or_default());
                quiet_sent.push((sent, seen));
                let receives: u64 = r["attributes"]["ApproximateReceiveCount"].as_str().unwrap().parse().unwrap();
                quiet_max_receives = quiet_max_receives.max(receives);
            } else {
                noisy_seen.push(seen);
                noisy.push(d);
            }
        }
    }
    noisy_seen.sort();
    let mut noisy_ahead: Vec<usize> = quiet_sent
        .iter()
        .map(|(sent, seen)| noisy_seen.partition_point(|t| t < seen) - noisy_seen.partition_point(|t| t <= sent))
        .collect();
    noisy_ahead.sort_unstable();
    let peak = peak_at_once(noisy);
    quiet.sort();
    assert_eq!(quiet.len(), 100);
    let given_back = metric_value(&text, "sqs_poller_group_cap_returned_total{pipeline=\"fair\"}");
    let received = metric_value(&text, "sqs_poller_messages_received_total{pipeline=\"fair\"}");
    TenantRun {
        quiet,
        noisy_ahead,
        quiet_max_receives,
        noisy_peak_in_flight: peak,
        sent_in,
        given_back,
        noisiest,
        received,
    }
}

/// A noisy tenant sends 5,000 messages and a quiet one 100 over the same 20 s, into one fair
/// queue; the worker takes 50 ms a batch and 10 batches at once (200 messages a second, less than
/// the 250 a second the noisy tenant sends). Without a cap the quiet tenant's messages wait behind the noisy
/// backlog; with `max_in_flight_per_group = 4` the noisy tenant has at most 4 at the worker and
/// the quiet one overtakes its backlog: the noisy messages served between a quiet message's send
/// and its arrival at the worker (p99) are fewer than half of those without the cap. Nothing is
/// lost or processed twice in either. (Latency figures: `benches/`, bench/RESULTS.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenant_does_not_hold_up_a_quiet_one_with_a_group_cap() {
    let _one = ONE_AT_A_TIME.lock().await;
    let without = noisy_neighbour(None, Some(6_000)).await;
    // room for the noisy burst to wait under lease behind its cap: none given back
    let with = noisy_neighbour(Some(4), Some(6_000)).await;
    println!(
        "quiet tenant's send → worker time: p50 {:?}, p99 {:?}, max {:?} without the cap; p50 {:?}, p99 {:?}, max {:?} with a cap of 4 \
         (noisy messages served ahead of a quiet one, p99: {} / {}; noisy in flight at most {} / {}; sent in {:?} / {:?})",
        without.quiet[49],
        without.p99(),
        without.quiet[99],
        with.quiet[49],
        with.p99(),
        with.quiet[99],
        without.ahead_p99(),
        with.ahead_p99(),
        without.noisy_peak_in_flight,
        with.noisy_peak_in_flight,
        without.sent_in,
        with.sent_in,
    );
    assert!(with.noisy_peak_in_flight <= 4, "the noisy tenant passed its cap: {}", with.noisy_peak_in_flight);
    assert_eq!(with.quiet_max_receives, 1, "the quiet tenant was never held back nor given back");
    assert_eq!(with.given_back, 0.0, "the room held the burst: nothing given back");
    assert_eq!(with.noisiest.as_deref(), Some("noisy"), "the admin API's busiest group");
    // the scenario is a noisy neighbour at all: without the cap the quiet tenant waits behind
    // the noisy backlog, with it the quiet tenant overtakes it
    assert!(
        without.ahead_p99() > with.ahead_p99() * 2,
        "noisy messages served ahead of a quiet one (p99): {} without the cap, {} with it",
        without.ahead_p99(),
        with.ahead_p99()
    );
}

/// Two pipelines, each with its own backlogged queue and worker, sharing one pool.
struct PoolRun {
    /// Messages each pipeline's worker got in the measured window.
    processed: HashMap<&'static str, usize>,
    /// The most batches at each worker at once, counted at the worker (the whole run).
    peaks: HashMap<&'static str, usize>,
    /// The most batches at both workers at once, counted at the workers (the whole run).
    total_peak: usize,
}

async fn shared_pool(pool: &str, a: (&'static str, &str), b: (&'static str, &str), secs: u64) -> PoolRun {
    let sqs = sqs().await;
    let mut pipelines = format!("{pool}\n");
    let mut workers = Vec::new();
    let mut queues = Vec::new();
    let pool_load: std::sync::Arc<Load> = std::sync::Arc::default();
    for (name, target_keys) in [a, b] {
        let queue = sqs.queue(name, &[]).await;
        sqs.send_bodies(&queue, &(0..3_000).map(|i| format!("{{\"i\":{i}}}")).collect::<Vec<_>>()).await;
        let worker =
            counted_worker(pool_load.clone(), |_, _| Reply { delay: Duration::from_millis(100), ..Reply::ok("") })
                .await;
        pipelines.push_str(&http_pipeline_with_target(
            name,
            &queue,
            &worker.url,
            target_keys,
            "[pipelines.batch]\nsize = 1\n[pipelines.pollers]\nmin = 2\nmax = 10\nwait_time_secs = 1",
        ));
        workers.push((name, worker));
        queues.push(queue);
    }
    let poller = start_poller(&sqs, 5, &pipelines).await;
    // the pools fill first
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before: Vec<usize> = workers.iter().map(|(_, w)| w.deliveries().len()).collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let processed = workers.iter().zip(&before).map(|((name, w), b)| (*name, w.deliveries().len() - b)).collect();
    // (counted before the stop: a batch the stop cuts off is never answered)
    let peaks = workers.iter().map(|(name, w)| (*name, peak_at_once(&w.deliveries()))).collect();
    let total_peak = pool_load.peak();
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    // nothing lost or twice: what was not processed is back in its queue
    for ((name, w), queue) in workers.iter().zip(&queues) {
        let times = w.times_delivered();
        assert!(times.values().all(|&n| n == 1), "{name}: a message was processed twice");
        let (visible, in_flight) = sqs.counts(queue).await;
        assert_eq!((visible + in_flight) as usize + times.len(), 3_000, "{name}: processed + left = sent");
    }
    PoolRun { processed, peaks, total_peak }
}

/// Strict priority: a pool of 10, the high-priority pipeline may use 6 of it; both backlogged.
/// The high one holds its 6, the low one gets the other 4, never more than 10 at once: counted at
/// the workers, which take the same time per batch, the messages processed split 6:4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_priority_gives_the_high_pipeline_every_slot_it_can_use_and_the_low_one_the_rest() {
    let _one = ONE_AT_A_TIME.lock().await;
    let run = shared_pool(
        "[pools.shared]\nmax_concurrency = 10",
        ("high", "pool = \"shared\"\npriority = 10\nmax_concurrency = 6"),
        ("low", "pool = \"shared\"\npriority = 1"),
        15,
    )
    .await;
    let (high, low) = (run.processed["high"] as f64, run.processed["low"] as f64);
    let share = high / (high + low);
    println!(
        "processed: high {high}, low {low} (high's share {:.1} %); most at once: {:?}, together {}",
        share * 100.0,
        run.peaks,
        run.total_peak
    );
    assert!(run.total_peak <= 10, "the pool's 10 were exceeded: {}", run.total_peak);
    assert!(run.peaks["high"] <= 6, "the high priority passed its own 6: {}", run.peaks["high"]);
    assert!(high + low > 500.0, "the pool ran: {high} + {low}");
    assert!((0.55..=0.65).contains(&share), "high's share {:.1} % is not 60 % ± 5", share * 100.0);
}

/// Weights 3:1 in a pool of 8, both backlogged: over 30 s the messages processed split 75 % / 25 %
/// within ±10 % (of each share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_a_pool_in_proportion() {
    let _one = ONE_AT_A_TIME.lock().await;
    let run = shared_pool(
        "[pools.shared]\nmax_concurrency = 8",
        ("heavy", "pool = \"shared\"\nweight = 3"),
        ("light", "pool = \"shared\"\nweight = 1"),
        30,
    )
    .await;
    let (heavy, light) = (run.processed["heavy"] as f64, run.processed["light"] as f64);
    let share = light / (heavy + light);
    println!(
        "processed in 30 s: heavy {heavy}, light {light} (light's share {:.1} %); most at once: {:?}, together {}",
        share * 100.0,
        run.peaks,
        run.total_peak
    );
    assert!(run.total_peak <= 8, "the pool's 8 were exceeded: {}", run.total_peak);
    assert!(heavy + light > 1_000.0, "the pool ran: {heavy} + {light}");
    assert!((0.225..=0.275).contains(&share), "light's share {:.1} % is not 25 % ± 10 %", share * 100.0);
}

/// The same noisy neighbour with the default room (`lease.max_outstanding` 60: 40 may wait behind
/// the cap): the noisy backlog does not fit, so messages over the cap are given back to the queue,
/// paced at the rate the cap lets the group go, and wait ahead of newer ones when they come back.
/// The quiet tenant is never given back (its messages are received once), every message is
/// processed once, and a given-back message is given back about once (receives stay within about
/// twice the messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_the_room_is_given_back_paced_and_nothing_is_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let run = noisy_neighbour(Some(4), None).await;
    println!(
        "default room: quiet p50 {:?}, p99 {:?}, max {:?}; {} noisy served ahead of a quiet one (p99); {} given back, {} received for 5,100 messages (sent in {:?})",
        run.quiet[49],
        run.p99(),
        run.quiet[99],
        run.ahead_p99(),
        run.given_back,
        run.received,
        run.sent_in
    );
    assert!(run.given_back > 0.0, "the backlog did not outgrow the room: nothing given back");
    assert!(run.noisy_peak_in_flight <= 4, "the noisy tenant passed its cap: {}", run.noisy_peak_in_flight);
    assert_eq!(run.quiet_max_receives, 1, "the quiet tenant was given back");
    assert!(run.received < 2.5 * 5_100.0, "messages were given back again and again: {} receives", run.received);
}
