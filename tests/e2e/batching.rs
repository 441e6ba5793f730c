//! Batch cutting end to end: by count across receives, by window, by `max_bytes`.

use std::time::{Duration, Instant};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_100_are_built_from_10_message_receives() {
    let run = Scenario::new("size100")
        .bodies((0..300).map(|i| format!("m{i}")))
        .pipeline("[pipelines.pollers]\nmin = 4\nmax = 4\nwait_time_secs = 1\n[pipelines.batch]\nsize = 100\nwindow_ms = 5000")
        .run(|_| Reply::ok(""))
        .await;
    run.wait_deleted(300, Duration::from_secs(30)).await;
    let Run { sqs, queue, worker, poller, .. } = &run;
    let sizes: Vec<usize> = worker.deliveries().iter().map(|d| d.records().len()).collect();
    assert_eq!(sizes, vec![100, 100, 100], "cut by count, long before the 5 s window");
    assert_eq!(sqs.counts(queue).await, (0, 0), "deleted on the emulator, not only counted");
    let text = poller.metrics_text().await;
    let receives = metric_value(
        &text,
        "sqs_poller_sqs_requests_total{pipeline=\"size100\",operation=\"ReceiveMessage\",outcome=\"ok\"}",
    );
    assert!(receives >= 30.0, "at most 10 messages per receive: {receives} receives");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_cuts_a_batch_that_is_not_full() {
    let sqs = sqs().await;
    let queue = sqs.queue("window", &[]).await;
    let worker = worker(|_| Reply::ok("")).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline(
            "window",
            &queue,
            &worker.url,
            "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.batch]\nsize = 100\nwindow_ms = 1500",
        ),
    )
    .await;
    let sent = Instant::now();
    sqs.send_bodies(&queue, &(0..5).map(|i| format!("w{i}")).collect::<Vec<_>>()).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"window\"}", 5.0, Duration::from_secs(20)).await;
    let deliveries = worker.deliveries();
    assert_eq!(deliveries.iter().map(|d| d.records().len()).collect::<Vec<_>>(), vec![5], "one batch of all five");
    let waited = deliveries[0].at - sent;
    assert!(waited >= Duration::from_millis(1400), "dispatched after {waited:?}, before the 1.5 s window ended");
    assert_eq!(sqs.counts(&queue).await, (0, 0), "deleted on the emulator, not only counted");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_cuts_batches_of_one_mebibyte_messages() {
    let sqs = sqs().await;
    let queue = sqs.queue("bytes", &[]).await;
    // 12 messages of 1,000,000 bytes: six records fit in Lambda's 6 MiB (6,291,456 B) event, seven do not
    let bodies: Vec<String> = (0..12).map(|i| format!("{i:02}{}", "x".repeat(999_998))).collect();
    sqs.send_each(&queue, &bodies).await;
    let worker = worker(|_| Reply::ok("")).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline(
            "bytes",
            &queue,
            &worker.url,
            "[pipelines.pollers]\nmin = 2\nmax = 2\nwait_time_secs = 1\n[pipelines.batch]\nsize = 100\nwindow_ms = 3000",
        ),
    )
    .await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"bytes\"}", 12.0, Duration::from_secs(60)).await;
    let deliveries = worker.deliveries();
    for d in &deliveries {
        assert!(d.bytes <= 6_291_456, "an event of {} bytes exceeds max_bytes", d.bytes);
    }
    let sizes: Vec<usize> = deliveries.iter().map(|d| d.records().len()).collect();
    assert_eq!(sizes, vec![6, 6], "cut by bytes, not by count or window");
    assert!(deliveries.iter().all(|d| d.bytes > 6_000_000), "each batch is as full as the cap allows");
    assert_eq!(sqs.counts(&queue).await, (0, 0), "deleted on the emulator, not only counted");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_spent_filling_a_batch_counts_against_the_visibility_timeout() {
    let sqs = sqs().await;
    let queue = sqs.queue("window-vis", &[(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "2")]).await;
    let worker = worker(|_| Reply { status: 200, body: String::new(), delay: Duration::from_secs(2) }).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline(
            "window-vis",
            &queue,
            &worker.url,
            "[pipelines.pollers]\nmin = 2\nmax = 2\nwait_time_secs = 1\n[pipelines.batch]\nsize = 100\nwindow_ms = 1500",
        ),
    )
    .await;
    sqs.send_bodies(&queue, &["w".to_string()]).await;
    // 1.5 s in the batcher + 2 s in the worker > the 2 s visibility timeout: only an extension
    // counted from the receive keeps the message from being delivered twice
    poller
        .wait_metric("sqs_poller_messages_deleted_total{pipeline=\"window-vis\"}", 1.0, Duration::from_secs(20))
        .await;
    assert_eq!(worker.deliveries().len(), 1, "delivered once");
    let extended = poller.metric("sqs_poller_lease_extensions_total{pipeline=\"window-vis\",outcome=\"ok\"}").await;
    assert!(extended >= 1.0, "the lease keeper extended the message while the batch filled ({extended})");
    assert_eq!(sqs.counts(&queue).await, (0, 0), "deleted on the emulator, not only counted");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
