//! Protecting the worker (issue 21): the adaptive concurrency limit follows a real HTTP worker's
//! latency and pushback, and the circuit breaker stops spending receive counts while the worker
//! is down. The real binary against the SQS emulator, each worker a real HTTP server whose
//! answer depends on how many events it is working on at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

fn limit_series(pipeline: &str) -> String {
    format!("sqs_poller_concurrency_limit{{pipeline=\"{pipeline}\"}}")
}

fn receives_series(pipeline: &str) -> String {
    format!("sqs_poller_sqs_requests_total{{pipeline=\"{pipeline}\",operation=\"ReceiveMessage\",outcome=\"ok\"}}")
}

fn bodies(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"n\":{i}}}")).collect()
}

/// A worker that serves 8 batches at once in 250 ms and slows down in proportion past that
/// (16 at once: 500 ms each), as a worker with 8 cores does. The adaptive limit starts at its
/// floor (1) and must find the capacity from the latency alone, without a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_concurrency_settles_near_a_slowing_workers_capacity() {
    let sqs = sqs().await;
    let queue = sqs.queue("adaptive-slow", &[]).await;
    sqs.send_bodies(&queue, &bodies(9_000)).await;
    let worker = loaded_worker(|_, n| {
        let base = Duration::from_millis(250);
        Reply { delay: if n <= 8 { base } else { base.mul_f64(n as f64 / 8.0) }, ..Reply::ok("") }
    })
    .await;
    let poller = start_poller(
        &sqs,
        5,
        &http_pipeline_with_target(
            "slow",
            &queue,
            &worker.url,
            "max_concurrency = 64\nconcurrency = \"adaptive\"\ntimeout_secs = 10",
            "[pipelines.batch]\nsize = 5\n[pipelines.pollers]\nmax = 20\nwait_time_secs = 1",
        ),
    )
    .await;
    let start = Instant::now();
    // the limit and the worker's load from 30 s to 45 s
    let mut limits = Vec::new();
    let mut loads = Vec::new();
    while start.elapsed() < Duration::from_secs(45) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if start.elapsed() >= Duration::from_secs(30) {
            limits.push(poller.metric(&limit_series("slow")).await as usize);
            loads.push(worker.load.now());
        }
    }
    let text = poller.metrics_text().await;
    let (_, admin) = http_get(&format!("{}/pipelines/slow", poller.admin_url())).await.expect("the admin API answers");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    println!("limit from 30 s to 45 s: {limits:?}\nworker's load: {loads:?}; peak {}", worker.load.peak());
    let admin: serde_json::Value = serde_json::from_str(&admin).unwrap();
    assert_eq!(admin["concurrency"]["mode"], "adaptive", "{admin}");
    assert!((6..=12).contains(&admin["concurrency"]["limit"].as_u64().unwrap()), "{admin}");
    assert_eq!(admin["breaker"], "closed", "{admin}");
    assert!(limits.iter().all(|l| (6..=12).contains(l)), "the limit left 6..=12 after 30 s: {limits:?}");
    let mean = loads.iter().sum::<usize>() as f64 / loads.len() as f64;
    assert!((5.0..=12.0).contains(&mean), "batches in flight at the worker averaged {mean:.1}: {loads:?}");
    assert_eq!(
        metric_value(&text, "sqs_poller_batches_total{pipeline=\"slow\",outcome=\"failure\"}"),
        0.0,
        "no batch timed out or failed"
    );
    assert!(metric_value(&text, "sqs_poller_messages_succeeded_total{pipeline=\"slow\"}") > 500.0);
}

/// A worker that answers 503 as soon as more than 4 events reach it at once: from the second
/// after its first pushback on, the limit stays at or under 4 (the ceiling holds 30 s after the
/// last pushback), and does not collapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_concurrency_stays_under_a_worker_that_pushes_back() {
    let sqs = sqs().await;
    let queue = sqs.queue("adaptive-503", &[]).await;
    sqs.send_bodies(&queue, &bodies(4_000)).await;
    let worker = loaded_worker(|_, n| {
        if n > 4 {
            Reply { status: 503, ..Reply::ok("busy") }
        } else {
            Reply { delay: Duration::from_millis(100), ..Reply::ok("") }
        }
    })
    .await;
    let poller = start_poller(
        &sqs,
        5,
        &http_pipeline_with_target(
            "pushback",
            &queue,
            &worker.url,
            "max_concurrency = 32\nconcurrency = \"adaptive\"",
            "[pipelines.batch]\nsize = 5\n[pipelines.pollers]\nmax = 20\nwait_time_secs = 1",
        ),
    )
    .await;
    let throttled = "sqs_poller_batches_total{pipeline=\"pushback\",outcome=\"throttled\"}";
    let first = Instant::now();
    let pushed = poller.wait_metric(throttled, 1.0, Duration::from_secs(30)).await;
    println!("first pushback after {:?}", first.elapsed());
    let after = Instant::now();
    // the first pushback at most halves the limit; the refused calls of its burst take it down
    // to the worker's capacity within the burst: from 1 s after the first pushback on
    let mut burst = Vec::new();
    let mut limits = Vec::new();
    while after.elapsed() < Duration::from_secs(21) {
        let limit = poller.metric(&limit_series("pushback")).await as usize;
        if after.elapsed() < Duration::from_secs(1) {
            burst.push(limit)
        } else {
            limits.push(limit)
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = poller.metrics_text().await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    println!("limit in the first second after the first pushback: {burst:?}");
    println!("limit for 20 s after that: {limits:?}");
    assert!(pushed >= 1.0);
    assert!(limits.iter().all(|&l| l <= 4), "the limit rose past 4 after the worker pushed back: {limits:?}");
    assert!(limits.iter().any(|&l| l >= 3), "the limit fell far below the worker's capacity: {limits:?}");
    assert!(metric_value(&text, "sqs_poller_messages_succeeded_total{pipeline=\"pushback\"}") > 200.0);
    assert_eq!(metric_value(&text, "sqs_poller_messages_failed_total{pipeline=\"pushback\"}"), 0.0);
}

/// How the worker is down.
#[derive(Clone, Copy, PartialEq)]
enum Outage {
    /// Its load balancer answers 502 (no healthy host).
    Answers502,
    /// Nothing listens on its port: every connection is refused.
    NotListening,
}

/// A worker that answers 502 for 30 s, behind a queue with `max_receive_count = 3`: the breaker
/// opens, the pollers stop receiving, the batches it holds wait under lease; once the worker is
/// back every message is processed, none dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_down_for_30_s_costs_no_message_and_no_receive_while_the_breaker_is_open() {
    worker_down_for_30_s(Outage::Answers502).await;
}

/// The same with the worker's process gone (connections refused) for 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_refuses_connections_for_30_s_costs_no_message_and_no_receive() {
    worker_down_for_30_s(Outage::NotListening).await;
}

async fn worker_down_for_30_s(outage: Outage) {
    let name = match outage {
        Outage::Answers502 => "down502",
        Outage::NotListening => "refused",
    };
    let sqs = sqs().await;
    let queue = sqs.queue(&format!("breaker-{name}"), &[]).await;
    let dlq = sqs.queue(&format!("breaker-{name}-dlq"), &[]).await;
    let sent = bodies(200);
    sqs.send_bodies(&queue, &sent).await;
    let down = Arc::new(AtomicBool::new(true));
    let up_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let handler = {
        let (down, up_at) = (down.clone(), up_at.clone());
        move |_: &serde_json::Value, _: usize| {
            if down.load(Ordering::SeqCst) {
                Reply { status: 502, delay: Duration::from_millis(20), ..Reply::ok("no healthy upstream") }
            } else {
                up_at.lock().unwrap().get_or_insert_with(Instant::now);
                Reply { delay: Duration::from_millis(20), ..Reply::ok("") }
            }
        }
    };
    let (mut worker, url) = match outage {
        Outage::Answers502 => {
            let w = loaded_worker(handler.clone()).await;
            let url = w.url.clone();
            (Some(w), url)
        }
        Outage::NotListening => (None, format!("http://127.0.0.1:{}/sqs", free_port())),
    };
    let extra = format!(
        "[pipelines.batch]\nsize = 10\n[pipelines.pollers]\nmax = 4\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 0\n[pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 3"
    );
    let poller =
        start_poller(&sqs, 10, &http_pipeline_with_target(name, &queue, &url, "max_concurrency = 4", &extra)).await;
    let started = Instant::now();
    // (seconds since start, breaker state, receives so far) every 200 ms while the worker is down
    let mut samples = Vec::new();
    // what the admin API said of the pipeline while the breaker was open
    let mut admin_open = None;
    while started.elapsed() < Duration::from_secs(30) {
        let text = poller.metrics_text().await;
        let state = metric_value(&text, &format!("sqs_poller_breaker_state{{pipeline=\"{name}\"}}")) as u8;
        samples.push((started.elapsed().as_secs_f64(), state, metric_value(&text, &receives_series(name))));
        if state == 1 && admin_open.is_none() {
            admin_open = http_get(&format!("{}/pipelines/{name}", poller.admin_url())).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    down.store(false, Ordering::SeqCst);
    if outage == Outage::NotListening {
        let addr = url.trim_start_matches("http://").trim_end_matches("/sqs").to_string();
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("the worker's port is free again");
        worker = Some(loaded_worker_on(listener, handler).await);
    }
    let worker = worker.unwrap();
    eventually("every message processed once the worker is back", Duration::from_secs(90), || async {
        worker_processed(&worker, &up_at) >= sent.len()
    })
    .await;
    eventually("the queue is empty", Duration::from_secs(30), || async { sqs.counts(&queue).await == (0, 0) }).await;
    let text = poller.metrics_text().await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");

    // the breaker opened while the worker was down, and its receives stopped
    let opened = samples.iter().position(|s| s.1 == 1).unwrap_or_else(|| panic!("never open: {samples:?}"));
    println!("{name}: breaker open after {:.1} s; samples (s, state, receives): {samples:?}", samples[opened].0);
    // every stretch of open samples: flat after the long polls out when it opened (1 s) returned
    let mut i = 0;
    let mut flat_seconds = 0.0;
    while i < samples.len() {
        if samples[i].1 != 1 {
            i += 1;
            continue;
        }
        let run: Vec<_> = samples[i..].iter().take_while(|s| s.1 == 1).collect();
        let settled: Vec<_> = run.iter().filter(|s| s.0 >= run[0].0 + 1.5).collect();
        if let (Some(a), Some(b)) = (settled.first(), settled.last()) {
            assert_eq!(a.2, b.2, "receives while the breaker was open ({:.1} s to {:.1} s): {samples:?}", a.0, b.0);
            flat_seconds += b.0 - a.0;
        }
        i += run.len();
    }
    assert!(flat_seconds >= 10.0, "open and flat for only {flat_seconds:.1} s: {samples:?}");
    let (code, body) = admin_open.expect("the admin API answered while the breaker was open");
    assert_eq!(code, 200, "{body}");
    // open, paused by it (or, sampled at the cool-down's end, half-open and receiving again)
    let me: serde_json::Value = serde_json::from_str(&body).unwrap();
    let paused_by_breaker = me["paused_by"].as_array().is_some_and(|p| p.iter().any(|r| r == "breaker"));
    assert!((me["breaker"] == "open" && paused_by_breaker) || me["breaker"] == "half_open", "{body}");
    assert_eq!(me["concurrency"]["mode"], "fixed", "{body}");
    assert_eq!(me["concurrency"]["limit"], 4, "{body}");
    let m = |series: &str| metric_value(&text, &series.replace("NAME", name));
    assert_eq!(sqs.counts(&dlq).await, (0, 0), "nothing dead-lettered");
    assert_eq!(m("sqs_poller_messages_dead_lettered_total{pipeline=\"NAME\"}"), 0.0);
    assert!(m("sqs_poller_breaker_transitions_total{pipeline=\"NAME\",to=\"open\"}") >= 1.0);
    assert!(m("sqs_poller_breaker_transitions_total{pipeline=\"NAME\",to=\"closed\"}") >= 1.0);
    assert_eq!(m("sqs_poller_breaker_state{pipeline=\"NAME\"}"), 0.0, "closed again");
    assert_bounded_labels(&text, &[name]);
}

/// Distinct bodies the worker answered 200 for after it came back.
fn worker_processed(worker: &Worker, up_at: &std::sync::Mutex<Option<Instant>>) -> usize {
    let Some(up) = *up_at.lock().unwrap() else { return 0 };
    worker
        .deliveries()
        .iter()
        .filter(|d| d.answered && d.at >= up)
        .flat_map(|d| d.records().iter().map(|r| r["body"].as_str().unwrap().to_string()).collect::<Vec<_>>())
        .collect::<HashSet<_>>()
        .len()
}

/// Messages that make the worker answer 500 every time (poison, not an outage): the breaker
/// opens, but the queue is never silently stopped — probes keep going after each cool-down, and
/// the messages end in the dead-letter queue after `max_receive_count` receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_worker_always_answers_500_for_still_reach_the_dead_letter_queue() {
    let sqs = sqs().await;
    let queue = sqs.queue("breaker-poison", &[]).await;
    let dlq = sqs.queue("breaker-poison-dlq", &[]).await;
    sqs.send_each(&queue, &bodies(3)).await;
    let worker = worker(|_| Reply { status: 500, ..Reply::ok("internal error") }).await;
    let extra = format!(
        "[pipelines.batch]\nsize = 10\n[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 0\n[pipelines.target.breaker]\nfailures = 1\ncooldown_secs = 1\nmax_cooldown_secs = 2\n[pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 2"
    );
    let poller = start_poller(&sqs, 5, &http_pipeline("poison", &queue, &worker.url, &extra)).await;
    eventually("the three messages are dead-lettered", Duration::from_secs(60), || async {
        sqs.counts(&dlq).await.0 == 3
    })
    .await;
    let text = poller.metrics_text().await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert_eq!(metric_value(&text, "sqs_poller_messages_dead_lettered_total{pipeline=\"poison\"}"), 3.0);
    assert!(metric_value(&text, "sqs_poller_breaker_transitions_total{pipeline=\"poison\",to=\"open\"}") >= 1.0);
    assert_eq!(sqs.counts(&queue).await, (0, 0));
}

/// Answers that name failed items are the worker working: however many batches fail that way,
/// and a whole-batch function error (HTTP 400), the breaker never opens and receives go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_failures_and_function_errors_never_open_the_breaker() {
    let sqs = sqs().await;
    let queue = sqs.queue("breaker-items", &[]).await;
    sqs.send_bodies(&queue, &bodies(60)).await;
    let worker = worker(|event| {
        let records = event["Records"].as_array().unwrap();
        if records.iter().any(|r| r["body"].as_str().unwrap().contains("\"n\":0}")) {
            return Reply { status: 400, ..Reply::ok("bad request") };
        }
        // every item failed, by name
        let ids: Vec<&str> = records.iter().map(|r| r["messageId"].as_str().unwrap()).collect();
        Reply::failures(&ids)
    })
    .await;
    let poller = start_poller(
        &sqs,
        5,
        &http_pipeline_with_target(
            "items",
            &queue,
            &worker.url,
            "",
            "[pipelines.batch]\nsize = 5\n[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 0\n[pipelines.target.breaker]\nfailures = 2",
        ),
    )
    .await;
    poller
        .wait_metric("sqs_poller_batches_total{pipeline=\"items\",outcome=\"failure\"}", 30.0, Duration::from_secs(60))
        .await;
    let text = poller.metrics_text().await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert_eq!(metric_value(&text, "sqs_poller_breaker_transitions_total{pipeline=\"items\",to=\"open\"}"), 0.0);
    assert_eq!(metric_value(&text, "sqs_poller_breaker_state{pipeline=\"items\"}"), 0.0);
    assert!(!log.contains("circuit breaker open"), "{log}");
}
