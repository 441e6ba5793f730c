//! Poison isolation by bisection (`retry.on_batch_error = "bisect"`): a batch that fails as a
//! whole is split down to the messages that fail on their own; the others are processed in the
//! same lease, after one receive, and only the poison ones are retried and dead-lettered. FIFO
//! order holds (on LocalStack, which hands out several messages of a group per receive).

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use aws_sdk_sqs::types::QueueAttributeName;

/// Fails the whole batch (HTTP 500, no item list) when any message in it is poison.
async fn poison_sensitive_worker() -> Worker {
    worker(|event| {
        let poisoned =
            event["Records"].as_array().unwrap().iter().any(|r| r["body"].as_str().unwrap().starts_with("poison"));
        if poisoned {
            Reply { status: 500, body: "poison in the batch".into(), delay: Duration::ZERO }
        } else {
            Reply::ok("")
        }
    })
    .await
}

fn bisecting(name: &str, queue: &str, worker: &str, size: usize, dlq: Option<&str>) -> String {
    let dead_letter =
        dlq.map_or(String::new(), |d| format!("[pipelines.dead_letter]\nqueue_url = \"{d}\"\nmax_receive_count = 2\n"));
    http_pipeline(
        name,
        queue,
        worker,
        &format!(
            "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.batch]\nsize = {size}\nwindow_ms = 2000\n\
             [pipelines.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 1\non_batch_error = \"bisect\"\n{dead_letter}"
        ),
    )
}

/// For each body: the `ApproximateReceiveCount`s of its deliveries, and whether any delivery
/// of it was in a batch the worker accepted.
fn deliveries_by_body(worker: &Worker) -> HashMap<String, (Vec<String>, bool)> {
    let mut by_body: HashMap<String, (Vec<String>, bool)> = HashMap::new();
    for d in worker.deliveries() {
        let ok = !d.records().iter().any(|r| r["body"].as_str().unwrap().starts_with("poison"));
        for r in d.records() {
            let e = by_body.entry(r["body"].as_str().unwrap().to_string()).or_default();
            e.0.push(r["attributes"]["ApproximateReceiveCount"].as_str().unwrap().to_string());
            e.1 |= ok;
        }
    }
    by_body
}

async fn one_batch_with_poison(poison: &[usize]) {
    let sqs = sqs().await;
    let queue = sqs.queue("bisect", &[]).await;
    let dlq = sqs.queue("bisect-dlq", &[]).await;
    let bodies: Vec<String> =
        (0..100).map(|i| if poison.contains(&i) { format!("poison-{i}") } else { format!("fine-{i}") }).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let worker = poison_sensitive_worker().await;
    let poller = start_poller(&sqs, 10, &bisecting("bisect", &queue, &worker.url, 100, Some(&dlq))).await;
    let fine = 100 - poison.len();
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"bisect\"}", 100.0, Duration::from_secs(40)).await;
    let by_body = deliveries_by_body(&worker);
    for b in bodies.iter().filter(|b| b.starts_with("fine")) {
        let (counts, ok) = &by_body[b];
        assert!(*ok, "{b} was processed");
        assert!(counts.iter().all(|c| c == "1"), "{b} was processed after one receive: {counts:?}");
    }
    let dead: Vec<String> = sqs.take_all(&dlq).await.iter().map(|m| m.body().unwrap().to_string()).collect();
    let mut expected: Vec<String> = poison.iter().map(|i| format!("poison-{i}")).collect();
    let mut dead_sorted = dead.clone();
    dead_sorted.sort();
    expected.sort();
    assert_eq!(dead_sorted, expected, "only the poison messages were dead-lettered");
    let text = poller.metrics_text().await;
    assert!(metric_value(&text, "sqs_poller_batches_bisected_total{pipeline=\"bisect\"}") >= 1.0);
    assert_eq!(metric_value(&text, "sqs_poller_messages_succeeded_total{pipeline=\"bisect\"}"), fine as f64);
    assert_eq!(
        metric_value(&text, "sqs_poller_messages_dead_lettered_total{pipeline=\"bisect\"}"),
        poison.len() as f64
    );
    assert_eq!(sqs.counts(&queue).await, (0, 0));
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_message_in_a_batch_of_100_is_isolated() {
    one_batch_with_poison(&[37]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_poison_messages_in_a_batch_of_100_are_isolated() {
    one_batch_with_poison(&[10, 80]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_order_holds_through_a_bisection() {
    let sqs = localstack().await;
    let fifo = [(QueueAttributeName::FifoQueue, "true"), (QueueAttributeName::ContentBasedDeduplication, "true")];
    let queue = sqs.queue("bisect-fifo", &fifo).await;
    let dlq = sqs.queue("bisect-fifo-dlq", &fifo).await;
    let bodies: Vec<String> = (0..10).map(|i| if i == 4 { "poison-4".to_string() } else { format!("m-{i}") }).collect();
    for b in &bodies {
        sqs.client.send_message().queue_url(&queue).message_body(b).message_group_id("g").send().await.unwrap();
    }
    let worker = poison_sensitive_worker().await;
    let poller = start_poller(&sqs, 10, &bisecting("fifo", &queue, &worker.url, 10, Some(&dlq))).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"fifo\"}", 10.0, Duration::from_secs(60)).await;
    // the order the worker accepted them in: 0..3, then (after the poison went to the DLQ) 5..9
    let accepted: Vec<String> = worker
        .deliveries()
        .iter()
        .filter(|d| !d.records().iter().any(|r| r["body"].as_str().unwrap().starts_with("poison")))
        .flat_map(|d| d.records().iter().map(|r| r["body"].as_str().unwrap().to_string()).collect::<Vec<_>>())
        .collect();
    let expected: Vec<String> = (0..10).filter(|&i| i != 4).map(|i| format!("m-{i}")).collect();
    assert_eq!(accepted, expected, "each message accepted once, in the group's order");
    let dead: Vec<String> = sqs.take_all(&dlq).await.iter().map(|m| m.body().unwrap().to_string()).collect();
    assert_eq!(dead, vec!["poison-4".to_string()]);
    assert!(poller.metric("sqs_poller_batches_bisected_total{pipeline=\"fifo\"}").await >= 1.0);
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
