//! End to end against the SQS emulator: delivery, partial failures, the dead-letter queue.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use aws_sdk_sqs::types::MessageSystemAttributeName;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_are_delivered_once_and_deleted() {
    let run = Scenario::new("thousand")
        .bodies((0..1000).map(|i| format!("{{\"n\":{i}}}")))
        .pipeline("[pipelines.pollers]\nmax = 8\nwait_time_secs = 1\n[pipelines.batch]\nsize = 50\nwindow_ms = 100")
        .run(|_| Reply::ok(""))
        .await;
    run.wait_deleted(1000, Duration::from_secs(60)).await;
    let Run { sqs, queue, bodies, worker, poller, .. } = &run;
    let series = |name: &str| run.series(name);

    let delivered = worker.times_delivered();
    assert_eq!(delivered.len(), 1000, "every message reached the worker");
    assert!(delivered.values().all(|&n| n == 1), "no message was delivered twice");
    let seen: HashSet<String> = worker
        .deliveries()
        .iter()
        .flat_map(|d| d.records().iter().map(|r| r["body"].as_str().unwrap().to_string()).collect::<Vec<_>>())
        .collect();
    assert_eq!(seen, bodies.iter().cloned().collect::<HashSet<_>>(), "bodies arrive unchanged");
    assert!(worker.deliveries().iter().all(|d| d.records().len() <= 50));
    assert_eq!(sqs.counts(queue).await, (0, 0), "the queue is empty");

    let text = poller.metrics_text().await;
    for name in [
        "sqs_poller_messages_received_total",
        "sqs_poller_messages_dispatched_total",
        "sqs_poller_messages_succeeded_total",
        "sqs_poller_messages_deleted_total",
    ] {
        assert_eq!(metric_value(&text, &series(name)), 1000.0, "{name}");
    }
    assert_eq!(metric_value(&text, &series("sqs_poller_messages_failed_total")), 0.0);
    assert_eq!(metric_value(&text, &series("sqs_poller_in_flight_messages")), 0.0);
    let batches = metric_value(&text, "sqs_poller_batches_total{pipeline=\"thousand\",outcome=\"success\"}");
    assert_eq!(batches as usize, worker.deliveries().len(), "one success per batch");
    assert_eq!(metric_value(&text, "sqs_poller_batch_size_count{pipeline=\"thousand\"}"), batches);
    assert_eq!(metric_value(&text, "sqs_poller_batch_size_sum{pipeline=\"thousand\"}"), 1000.0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_retry_only_the_failed_with_backoff() {
    // "fail-" messages fail on their first delivery only
    let run = Scenario::new("partial")
        .bodies((0..30).map(|i| if i % 3 == 0 { format!("fail-{i}") } else { format!("ok-{i}") }))
        .pipeline("[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 2\nmax_backoff_secs = 2")
        .run(|event| {
            let failed: Vec<&str> = event["Records"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| {
                    r["body"].as_str().unwrap().starts_with("fail-")
                        && r["attributes"]["ApproximateReceiveCount"] == "1"
                })
                .map(|r| r["messageId"].as_str().unwrap())
                .collect();
            Reply::failures(&failed)
        })
        .await;
    run.wait_deleted(30, Duration::from_secs(30)).await;
    let Run { sqs, queue, worker, poller, .. } = &run;

    let deliveries = worker.deliveries();
    let mut first_seen = std::collections::HashMap::new();
    for d in &deliveries {
        for r in d.records() {
            let body = r["body"].as_str().unwrap().to_string();
            let count = r["attributes"]["ApproximateReceiveCount"].as_str().unwrap().to_string();
            match first_seen.get(&body) {
                None => {
                    assert_eq!(count, "1", "{body}");
                    first_seen.insert(body, d.at);
                }
                Some(&t) => {
                    assert!(body.starts_with("fail-"), "{body} succeeded yet came back");
                    assert_eq!(count, "2", "{body} comes back once");
                    // backoff 2 s with equal jitter: visible again after 1..2 s (rounded up: 1 or 2 s)
                    let gap = d.at - t;
                    assert!(gap >= Duration::from_millis(900), "{body} came back after {gap:?}");
                }
            }
        }
    }
    let times = worker.times_delivered();
    assert_eq!(times.len(), 30);
    assert_eq!(times.values().filter(|&&n| n == 2).count(), 10, "the ten failed messages came back");
    assert_eq!(times.values().filter(|&&n| n == 1).count(), 20, "the others were delivered once");
    assert_eq!(sqs.counts(queue).await, (0, 0));

    let text = poller.metrics_text().await;
    let m = |name: &str| metric_value(&text, &format!("{name}{{pipeline=\"partial\"}}"));
    assert_eq!(m("sqs_poller_messages_failed_total"), 10.0);
    assert_eq!(m("sqs_poller_messages_succeeded_total"), 30.0);
    assert_eq!(m("sqs_poller_messages_deleted_total"), 30.0, "each message deleted once");
    assert!(metric_value(&text, "sqs_poller_batches_total{pipeline=\"partial\",outcome=\"partial\"}") >= 1.0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_message_ends_in_the_dead_letter_queue() {
    let sqs = sqs().await;
    let queue = sqs.queue("poison", &[]).await;
    let dlq = sqs.queue("poison-dlq", &[]).await;
    let poison_id = sqs.send_with_attribute(&queue, "{\"poison\":true}", "tenant", "acme").await;
    sqs.send_bodies(&queue, &["{\"fine\":true}".to_string()]).await;
    let worker = worker(|event| {
        let failed: Vec<&str> = event["Records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["body"].as_str().unwrap().contains("poison"))
            .map(|r| r["messageId"].as_str().unwrap())
            .collect();
        Reply::failures(&failed)
    })
    .await;
    let extra = format!(
        "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 0\n[pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 3"
    );
    let poller = start_poller(
        &sqs,
        10,
        // depth sampled every second (a key of the pipeline's own table, before its target)
        &http_pipeline("poison", &queue, &worker.url, &extra).replacen(
            "[pipelines.target]",
            "depth_interval_secs = 1\n[pipelines.target]",
            1,
        ),
    )
    .await;
    poller
        .wait_metric("sqs_poller_messages_dead_lettered_total{pipeline=\"poison\"}", 1.0, Duration::from_secs(30))
        .await;
    // the dead-letter depth gauge follows the emulator's count
    poller
        .wait_metric(
            "sqs_poller_queue_messages{pipeline=\"poison\",queue=\"dead_letter\",state=\"visible\"}",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(sqs.counts(&dlq).await, (1, 0), "the emulator agrees with the gauge");
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"poison\"}", 2.0, Duration::from_secs(10)).await;

    assert_eq!(worker.times_delivered()[&poison_id], 3, "tried max_receive_count times");
    eventually("the source queue is empty", Duration::from_secs(5), || async { sqs.counts(&queue).await == (0, 0) })
        .await;

    let moved = sqs.take_all(&dlq).await;
    assert_eq!(moved.len(), 1);
    let m = &moved[0];
    assert_eq!(m.body(), Some("{\"poison\":true}"), "body unchanged");
    let attrs = m.message_attributes().unwrap();
    assert_eq!(attrs["tenant"].string_value(), Some("acme"), "original attributes kept");
    assert_eq!(attrs["sqs-poller.pipeline"].string_value(), Some("poison"));
    assert_eq!(attrs["sqs-poller.receive-count"].string_value(), Some("3"));
    assert_eq!(attrs["sqs-poller.reason"].string_value(), Some("reported in batchItemFailures"));
    assert!(m.attributes().unwrap().contains_key(&MessageSystemAttributeName::SentTimestamp));

    let text = poller.metrics_text().await;
    let m = |name: &str| metric_value(&text, &format!("{name}{{pipeline=\"poison\"}}"));
    assert_eq!(m("sqs_poller_messages_failed_total"), 3.0);
    assert_eq!(m("sqs_poller_messages_succeeded_total"), 1.0);
    assert_eq!(m("sqs_poller_messages_dead_lettered_total"), 1.0);
    // after a run with successes, failures, retries and a dead letter: every label value is
    // one of the fixed sets of the metrics contract
    assert_bounded_labels(&text, &["poison"]);
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
