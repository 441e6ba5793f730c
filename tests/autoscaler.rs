//! The burst autoscaler against the emulator: `min = 1, max = 32`, idle, then 5,000 messages.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_takes_the_fleet_from_min_to_max_within_two_seconds_and_back_down() {
    let sqs = sqs().await;
    let queue = sqs.queue("burst", &[]).await;
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

    // watch the gauge while the burst lands
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
    let bodies: Vec<String> = (0..5000).map(|i| format!("b{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let sent = t0.elapsed();
    let to_max = watch.await.unwrap();
    println!("burst of 5,000 sent in {sent:?}; pollers 1 -> 32 after {to_max:?} from the first message");
    let to_max = to_max.unwrap_or_else(|| panic!("the fleet never reached 32 pollers; log:\n{}", poller.log_text()));
    assert!(to_max < Duration::from_secs(2), "took {to_max:?} to reach max");
    assert!(poller.log_text().contains("scaling pollers"), "each step is logged");

    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"burst\"}", 5000.0, Duration::from_secs(60)).await;
    let drained = t0.elapsed();
    println!("burst drained after {drained:?}");

    let delivered = worker.times_delivered();
    assert_eq!(delivered.len(), 5000, "every message of the burst reached the worker");
    assert!(delivered.values().all(|&n| n == 1), "none twice");
    assert_eq!(sqs.counts(&queue).await, (0, 0), "the queue is empty on the emulator");

    // back toward min once the queue is empty: one step per 5 s cool-down, step after step
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = vec![poller.metric(pollers).await];
    while seen.last().copied().unwrap_or(32.0) > 30.0 {
        assert!(Instant::now() < deadline, "the fleet went {seen:?} in 30 s after the backlog drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = poller.metric(pollers).await;
        if seen.last() != Some(&n) {
            seen.push(n);
        }
    }
    println!("pollers after the drain: {seen:?} ({:?} after the burst began)", t0.elapsed());
    assert!(seen.windows(2).all(|w| w[1] < w[0]), "only down: {seen:?}");
    let desired = poller.metric("sqs_poller_pollers_desired{pipeline=\"burst\"}").await;
    assert!((1.0..=30.0).contains(&desired), "desired {desired}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
