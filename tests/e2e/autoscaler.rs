//! The burst autoscaler against the emulator: `min = 1, max = 32`, idle, then a backlog of
//! 5,000 messages; and a producer sending batches of 10 steadily, which is no backlog at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use aws_sdk_sqs::types::QueueAttributeName;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_takes_the_fleet_from_min_to_max_in_one_step_and_back_to_min() {
    let sqs = sqs().await;
    // small messages: the queue says so (as a user of a wide fleet would set it), and the byte
    // budget covers the 32 pollers
    let queue = sqs.queue("burst", &[(QueueAttributeName::MaximumMessageSize, "16384")]).await;
    let worker = worker(|_| Reply::ok("")).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline(
            "burst",
            &queue,
            &worker.url,
            "max_concurrency = 64\n[pipelines.pollers]\nmin = 1\nmax = 32\nwait_time_secs = 1",
        ),
    )
    .await;
    let pollers = "sqs_poller_pollers{pipeline=\"burst\"}";
    // idle: one poller, no scaling
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(poller.metric(pollers).await, 1.0, "idle fleet at min");

    // the backlog: 5,000 messages sent while the pipeline is paused (one poller on the emulator
    // keeps up with a single sender, so messages sent while it polls are never a backlog)
    let admin = poller.admin_url();
    let (status, body) = http_post(&format!("{admin}/pipelines/burst/pause")).await.expect("POST pause");
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await; // the long poll in flight returns
    let bodies: Vec<String> = (0..5000).map(|i| format!("b{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    assert_eq!(sqs.counts(&queue).await, (5000, 0), "the backlog waits");
    assert_eq!(poller.metric(pollers).await, 1.0, "nothing scaled while paused");

    // watch the gauge while the backlog is taken
    let reached = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let watch = {
        let listen = poller.listen.clone();
        let reached = reached.clone();
        tokio::spawn(async move {
            while t0.elapsed() < Duration::from_secs(10) {
                if let Some((_, text)) = http_get(&format!("{listen}/metrics")).await {
                    if metric_value(&text, "sqs_poller_pollers{pipeline=\"burst\"}") >= 32.0 {
                        reached.store(true, Ordering::SeqCst);
                        return Some(t0.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        })
    };
    let (status, _) = http_post(&format!("{admin}/pipelines/burst/resume")).await.expect("POST resume");
    assert_eq!(status, 200);
    let to_max = watch.await.unwrap();
    println!("a backlog of 5,000: pollers 1 -> 32 after {to_max:?} from the resume");
    let to_max = to_max.unwrap_or_else(|| panic!("the fleet never reached 32 pollers; log:\n{}", poller.log_text()));
    // the mechanism, not the wall clock: a sampled backlog jumps to max, where growth by doubling
    // would go 1 → 2 → 4 → 8 → 16 → 32 (a run of quick receives may double the fleet once or
    // twice before the sample comes back; the step that reaches max is a jump of 4× or more)
    let log = poller.log_text();
    let steps = scaling_steps(&log);
    let up_to_max: Vec<&(u32, u32)> = steps.iter().take_while(|s| s.1 > s.0).collect();
    assert!(
        up_to_max.last().is_some_and(|s| s.1 == 32 && s.0 <= 8),
        "the steps up were {up_to_max:?} ({to_max:?} from the resume); log:\n{log}"
    );

    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"burst\"}", 5000.0, Duration::from_secs(60)).await;
    let drained = t0.elapsed();
    println!("burst drained after {drained:?}");

    let delivered = worker.times_delivered();
    assert_eq!(delivered.len(), 5000, "every message of the burst reached the worker");
    assert!(delivered.values().all(|&n| n == 1), "none twice");
    assert_eq!(sqs.counts(&queue).await, (0, 0), "the queue is empty on the emulator");

    // back to min once the queue is empty: the live fleet, step after step (a liveness bound:
    // about a minute of 5 s cool-downs retiring a quarter each)
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut seen = vec![poller.metric(pollers).await];
    while seen.last().copied().unwrap_or(32.0) > 1.0 {
        assert!(Instant::now() < deadline, "the fleet went {seen:?} in 240 s after the backlog drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = poller.metric(pollers).await;
        if seen.last() != Some(&n) {
            seen.push(n);
        }
    }
    println!("pollers after the drain: {seen:?} ({:?} after the burst began)", t0.elapsed());
    assert!(seen.windows(2).all(|w| w[1] < w[0]), "only down: {seen:?}");
    let desired = poller.metric("sqs_poller_pollers_desired{pipeline=\"burst\"}").await;
    assert_eq!(desired, 1.0, "desired at min with the live fleet");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// A producer sending `SendMessageBatch` of 10 steadily (200 messages a second): each batch
/// lands whole in a waiting long poll, a full receive every time. That is no backlog: the fleet
/// stays near `min` (before, every full receive doubled it, and it sat at `max`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_producer_of_batches_of_ten_does_not_scale_the_fleet_up() {
    let sqs = sqs().await;
    let queue = sqs.queue("batched", &[]).await;
    let worker = worker(|_| Reply::ok("")).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline(
            "batched",
            &queue,
            &worker.url,
            "max_concurrency = 64\n[pipelines.pollers]\nmin = 1\nmax = 64\nwait_time_secs = 5",
        ),
    )
    .await;
    let pollers = "sqs_poller_pollers_desired{pipeline=\"batched\"}";
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let peak = Arc::new(std::sync::Mutex::new(0.0f64));
    let done = Arc::new(AtomicBool::new(false));
    let watch = {
        let listen = poller.listen.clone();
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                if let Some((_, text)) = http_get(&format!("{listen}/metrics")).await {
                    let n = metric_value(&text, pollers);
                    let mut p = peak.lock().unwrap();
                    *p = p.max(n);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut sent = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        tick.tick().await;
        let bodies: Vec<String> = (sent..sent + 10).map(|i| format!("m{i}")).collect();
        sqs.send_bodies(&queue, &bodies).await;
        sent += 10;
    }
    poller
        .wait_metric("sqs_poller_messages_deleted_total{pipeline=\"batched\"}", sent as f64, Duration::from_secs(30))
        .await;
    done.store(true, Ordering::SeqCst);
    watch.await.unwrap();
    let peak = *peak.lock().unwrap();
    let log = poller.log_text();
    let steps: Vec<&str> = log.lines().filter(|l| l.contains("scaling pollers")).collect();
    println!("{sent} messages in batches of 10 over 20 s: peak {peak} pollers desired; steps: {steps:#?}");
    assert!(peak <= 4.0, "a steady batched producer took the fleet to {peak}: {steps:#?}");
    let delivered = worker.times_delivered();
    assert_eq!(delivered.len(), sent, "every message reached the worker");
    assert!(delivered.values().all(|&n| n == 1), "none twice");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// The `scaling pollers` steps of a log, in order: (from, to).
fn scaling_steps(log: &str) -> Vec<(u32, u32)> {
    let field = |line: &str, name: &str| -> Option<u32> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    log.lines()
        .filter(|l| l.contains("scaling pollers"))
        .filter_map(|l| Some((field(l, " from")?, field(l, " to")?)))
        .collect()
}
