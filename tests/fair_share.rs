//! Fair share (issue 22): a per-group cap keeps one tenant of a fair queue from taking every
//! slot, and pipelines that share a worker pool get its slots by strict priority or by weight.
//! The real binary against real emulators and real HTTP workers. The group cap runs on
//! LocalStack: fauxqs drops `MessageGroupId` from the messages of standard queues (fair queues),
//! LocalStack returns it as SQS does.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use common::*;

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
    /// The quiet tenant's send → worker times, sorted.
    quiet: Vec<Duration>,
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
    // the quiet tenant's times, and the most noisy messages at the worker at once
    let mut quiet = Vec::new();
    let mut noisy_at: Vec<(Instant, i32)> = Vec::new();
    for d in worker.deliveries() {
        for r in d.records() {
            let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            assert_eq!(r["attributes"]["MessageGroupId"], body["tenant"], "the record carries its group");
            if body["tenant"] == "quiet" {
                let sent = UNIX_EPOCH + Duration::from_millis(body["sent_ms"].as_u64().unwrap());
                let seen = SystemTime::now() - d.at.elapsed();
                quiet.push(seen.duration_since(sent).unwrap_or_default());
            } else {
                noisy_at.push((d.at, 1));
                noisy_at.push((d.at + Duration::from_millis(50), -1));
            }
        }
    }
    noisy_at.sort();
    let (mut now, mut peak) = (0, 0);
    for (_, step) in noisy_at {
        now += step;
        peak = peak.max(now);
    }
    quiet.sort();
    assert_eq!(quiet.len(), 100);
    let given_back = metric_value(&text, "sqs_poller_group_cap_returned_total{pipeline=\"fair\"}");
    let received = metric_value(&text, "sqs_poller_messages_received_total{pipeline=\"fair\"}");
    TenantRun { quiet, noisy_peak_in_flight: peak as usize, sent_in, given_back, noisiest, received }
}

/// A noisy tenant sends 5,000 messages and a quiet one 100 over the same 20 s, into one fair
/// queue; the worker takes 50 ms a batch and 10 batches at once (200 messages a second, less than
/// the 250 a second the noisy tenant sends). Without a cap the quiet tenant's messages wait behind the noisy
/// backlog; with `max_in_flight_per_group = 4` the noisy tenant has at most 4 at the worker and
/// the quiet one is served within 2 s (p99). Nothing is lost or processed twice in either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenant_does_not_hold_up_a_quiet_one_with_a_group_cap() {
    let _one = ONE_AT_A_TIME.lock().await;
    let without = noisy_neighbour(None, Some(6_000)).await;
    // room for the noisy burst to wait under lease behind its cap: none given back
    let with = noisy_neighbour(Some(4), Some(6_000)).await;
    println!(
        "quiet tenant's send → worker time: p50 {:?}, p99 {:?}, max {:?} without the cap; p50 {:?}, p99 {:?}, max {:?} with a cap of 4 \
         (noisy in flight at most {} / {}; sent in {:?} / {:?})",
        without.quiet[49],
        without.p99(),
        without.quiet[99],
        with.quiet[49],
        with.p99(),
        with.quiet[99],
        without.noisy_peak_in_flight,
        with.noisy_peak_in_flight,
        without.sent_in,
        with.sent_in,
    );
    assert!(with.p99() < Duration::from_secs(2), "the quiet tenant's p99 with the cap: {:?}", with.p99());
    assert!(with.noisy_peak_in_flight <= 4, "the noisy tenant passed its cap: {}", with.noisy_peak_in_flight);
    assert_eq!(with.given_back, 0.0, "the room held the burst: nothing given back");
    assert_eq!(with.noisiest.as_deref(), Some("noisy"), "the admin API's busiest group");
    // the scenario is a noisy neighbour at all: without the cap the quiet tenant waits
    assert!(without.p99() > with.p99() * 2, "without the cap {:?}, with {:?}", without.p99(), with.p99());
}

/// Two pipelines, each with its own backlogged queue and worker, sharing one pool.
struct PoolRun {
    /// Messages each pipeline's worker got in the measured window.
    processed: HashMap<&'static str, usize>,
    /// Batches at each worker, sampled every 100 ms in the window.
    loads: HashMap<&'static str, Vec<usize>>,
    total_peak: usize,
}

async fn shared_pool(pool: &str, a: (&'static str, &str), b: (&'static str, &str), secs: u64) -> PoolRun {
    let sqs = sqs().await;
    let mut pipelines = format!("{pool}\n");
    let mut workers = Vec::new();
    let mut queues = Vec::new();
    for (name, target_keys) in [a, b] {
        let queue = sqs.queue(name, &[]).await;
        sqs.send_bodies(&queue, &(0..3_000).map(|i| format!("{{\"i\":{i}}}")).collect::<Vec<_>>()).await;
        let worker = loaded_worker(|_, _| Reply { delay: Duration::from_millis(100), ..Reply::ok("") }).await;
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
    let mut loads: HashMap<&'static str, Vec<usize>> = HashMap::new();
    let mut total_peak = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut total = 0;
        for (name, w) in &workers {
            let n = w.load.now();
            loads.entry(name).or_default().push(n);
            total += n;
        }
        total_peak = total_peak.max(total);
    }
    let processed = workers.iter().zip(&before).map(|((name, w), b)| (*name, w.deliveries().len() - b)).collect();
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    // nothing lost or twice: what was not processed is back in its queue
    for ((name, w), queue) in workers.iter().zip(&queues) {
        let times = w.times_delivered();
        assert!(times.values().all(|&n| n == 1), "{name}: a message was processed twice");
        let (visible, in_flight) = sqs.counts(queue).await;
        assert_eq!((visible + in_flight) as usize + times.len(), 3_000, "{name}: processed + left = sent");
    }
    PoolRun { processed, loads, total_peak }
}

fn mean(v: &[usize]) -> f64 {
    v.iter().sum::<usize>() as f64 / v.len() as f64
}

/// Strict priority: a pool of 10, the high-priority pipeline may use 6 of it; both backlogged.
/// The high one holds its 6, the low one gets the other 4, never more than 10 at once.
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
    let (high, low) = (mean(&run.loads["high"]), mean(&run.loads["low"]));
    println!(
        "batches at the workers: high {high:.2}, low {low:.2} (peak together {}); processed {:?}",
        run.total_peak, run.processed
    );
    assert!(run.total_peak <= 10, "the pool's 10 were exceeded: {}", run.total_peak);
    assert!(high >= 5.5, "the high priority did not get its 6: {high:.2} {:?}", run.loads["high"]);
    assert!((3.0..=4.5).contains(&low), "the low priority did not get the other 4: {low:.2} {:?}", run.loads["low"]);
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
        "processed in 30 s: heavy {heavy}, light {light} (light's share {:.1} %); mean batches at the workers {:.2} / {:.2}",
        share * 100.0,
        mean(&run.loads["heavy"]),
        mean(&run.loads["light"])
    );
    assert!(run.total_peak <= 8, "the pool's 8 were exceeded: {}", run.total_peak);
    assert!(heavy + light > 1_000.0, "the pool ran: {heavy} + {light}");
    assert!((0.225..=0.275).contains(&share), "light's share {:.1} % is not 25 % ± 10 %", share * 100.0);
}

/// The same noisy neighbour with the default room (`lease.max_outstanding` 60: 40 may wait behind
/// the cap): the noisy backlog does not fit, so messages over the cap are given back to the queue,
/// paced at the rate the cap lets the group go, and wait ahead of newer ones when they come back.
/// The quiet tenant is still served within 2 s (p99), every message is processed once, and a
/// given-back message is given back about once (receives stay within about twice the messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_the_room_is_given_back_paced_and_nothing_is_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let run = noisy_neighbour(Some(4), None).await;
    println!(
        "default room: quiet p50 {:?}, p99 {:?}, max {:?}; {} given back, {} received for 5,100 messages (sent in {:?})",
        run.quiet[49],
        run.p99(),
        run.quiet[99],
        run.given_back,
        run.received,
        run.sent_in
    );
    assert!(run.given_back > 0.0, "the backlog did not outgrow the room: nothing given back");
    assert!(run.noisy_peak_in_flight <= 4, "the noisy tenant passed its cap: {}", run.noisy_peak_in_flight);
    assert!(run.p99() < Duration::from_secs(2), "the quiet tenant's p99: {:?}", run.p99());
    assert!(run.received < 2.5 * 5_100.0, "messages were given back again and again: {} receives", run.received);
}
