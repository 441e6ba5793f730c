//! Every response edge case of the contract, one pipeline (and queue) per case in one process.

use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// (case, outcome): `Ok` cases must delete the message, `Fail` cases must keep it for a retry.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    Ok,
    Fail,
}

const CASES: &[(&str, Expect)] = &[
    ("emptybody", Expect::Ok),
    ("nullbody", Expect::Ok),
    ("emptyobject", Expect::Ok),
    ("emptylist", Expect::Ok),
    ("nulllist", Expect::Ok),
    ("badjson", Expect::Fail),
    ("unknownid", Expect::Fail),
    ("emptyid", Expect::Fail),
    ("nullid", Expect::Fail),
    ("status500", Expect::Fail),
    ("timeout", Expect::Fail),
];

fn case_of(event: &Value) -> String {
    let arn = event["Records"][0]["eventSourceARN"].as_str().unwrap();
    let queue = arn.rsplit(':').next().unwrap();
    queue.split('-').nth(1).unwrap().to_string()
}

fn reply_for(event: &Value) -> Reply {
    let case = case_of(event);
    let id = event["Records"][0]["messageId"].as_str().unwrap().to_string();
    match case.as_str() {
        "emptybody" => Reply::ok(""),
        "nullbody" => Reply::ok("null"),
        "emptyobject" => Reply::ok("{}"),
        "emptylist" => Reply::ok(r#"{"batchItemFailures":[]}"#),
        "nulllist" => Reply::ok(r#"{"batchItemFailures":null}"#),
        "badjson" => Reply::ok(format!(r#"{{"batchItemFailures":[{{"itemIdentifier":"{id}"}}"#)),
        "unknownid" => Reply::failures(&["not-a-message-of-this-batch"]),
        "emptyid" => Reply::failures(&[""]),
        "nullid" => Reply::ok(r#"{"batchItemFailures":[{"itemIdentifier":null}]}"#),
        "status500" => Reply { status: 500, body: "internal error".into(), delay: Duration::ZERO },
        "timeout" => Reply { status: 200, body: String::new(), delay: Duration::from_secs(4) },
        other => panic!("unknown case {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_edge_case_follows_the_lambda_rules() {
    let sqs = sqs().await;
    let worker = worker(reply_for).await;
    let mut pipelines = String::new();
    let mut queues = Vec::new();
    for (case, _) in CASES {
        let queue = sqs.queue(&format!("resp-{case}"), &[]).await;
        sqs.send_bodies(&queue, &[format!("{{\"case\":\"{case}\"}}")]).await;
        // a long backoff keeps a failed message hidden for the rest of the test
        pipelines += &http_pipeline(
            case,
            &queue,
            &worker.url,
            "timeout_secs = 1\n[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 60\nmax_backoff_secs = 60",
        );
        queues.push(queue);
    }
    let poller = start_poller(&sqs, 10, &pipelines).await;

    for ((case, expect), queue) in CASES.iter().zip(&queues) {
        let s = |name: &str| format!("{name}{{pipeline=\"{case}\"}}");
        match expect {
            Expect::Ok => {
                poller.wait_metric(&s("sqs_poller_messages_deleted_total"), 1.0, Duration::from_secs(20)).await;
                let text = poller.metrics_text().await;
                assert_eq!(metric_value(&text, &s("sqs_poller_messages_succeeded_total")), 1.0, "{case}");
                assert_eq!(metric_value(&text, &s("sqs_poller_messages_failed_total")), 0.0, "{case}");
                assert_eq!(
                    metric_value(
                        &text,
                        &format!("sqs_poller_batches_total{{pipeline=\"{case}\",outcome=\"success\"}}")
                    ),
                    1.0,
                    "{case}"
                );
                assert_eq!(sqs.counts(queue).await, (0, 0), "{case}: deleted");
            }
            Expect::Fail => {
                poller.wait_metric(&s("sqs_poller_messages_failed_total"), 1.0, Duration::from_secs(20)).await;
                let text = poller.metrics_text().await;
                assert_eq!(metric_value(&text, &s("sqs_poller_messages_deleted_total")), 0.0, "{case}: never deleted");
                assert_eq!(metric_value(&text, &s("sqs_poller_messages_succeeded_total")), 0.0, "{case}");
                assert_eq!(
                    metric_value(
                        &text,
                        &format!("sqs_poller_batches_total{{pipeline=\"{case}\",outcome=\"failure\"}}")
                    ),
                    1.0,
                    "{case}"
                );
                eventually(
                    &format!("{case}: the message waits out its backoff in the queue"),
                    Duration::from_secs(5),
                    || async { sqs.counts(queue).await == (0, 1) },
                )
                .await;
            }
        }
    }
    let log = poller.log_text();
    assert!(log.contains("response is not valid JSON"), "{log}");
    assert!(log.contains("is not a message of the batch"), "{log}");
    assert!(log.contains("an itemIdentifier is empty"), "{log}");
    assert!(log.contains("an itemIdentifier is null"), "{log}");
    assert!(log.contains("HTTP 500"), "{log}");
    assert!(log.contains("timed out after 1 s"), "{log}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_retries_the_batch_without_failing_its_messages() {
    let sqs = sqs().await;
    let queue = sqs.queue("throttle", &[]).await;
    sqs.send_bodies(&queue, &["{}".to_string()]).await;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let worker = {
        let calls = calls.clone();
        worker(move |_| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let status = [429, 503][n % 2];
            if n < 3 {
                Reply { status, body: "slow down".into(), delay: Duration::ZERO }
            } else {
                Reply::ok("")
            }
        })
        .await
    };
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline("throttle", &queue, &worker.url, "[pipelines.pollers]\nwait_time_secs = 1"),
    )
    .await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"throttle\"}", 1.0, Duration::from_secs(20)).await;
    let text = poller.metrics_text().await;
    assert_eq!(metric_value(&text, "sqs_poller_batches_total{pipeline=\"throttle\",outcome=\"throttled\"}"), 3.0);
    assert_eq!(metric_value(&text, "sqs_poller_messages_failed_total{pipeline=\"throttle\"}"), 0.0);
    // the same receive was retried: the message was never received a second time
    let counts: Vec<String> = worker
        .deliveries()
        .iter()
        .map(|d| d.records()[0]["attributes"]["ApproximateReceiveCount"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(counts, vec!["1"; 4]);
    assert_eq!(sqs.counts(&queue).await, (0, 0), "deleted on the emulator, not only counted");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_is_not_up_yet_does_not_cost_receive_counts() {
    let sqs = sqs().await;
    let queue = sqs.queue("late-worker", &[]).await;
    sqs.send_bodies(&queue, &["{}".to_string(), "{}".to_string()]).await;
    // reserve a port, start the poller against it, and only then start the worker there
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline(
            "late",
            &queue,
            &format!("http://{addr}/sqs"),
            "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 60",
        ),
    )
    .await;
    poller
        .wait_metric("sqs_poller_batches_total{pipeline=\"late\",outcome=\"throttled\"}", 2.0, Duration::from_secs(10))
        .await;
    let tokio_listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let worker = crate::common::worker_on(tokio_listener, |_| Reply::ok("")).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"late\"}", 2.0, Duration::from_secs(20)).await;
    assert_eq!(poller.metric("sqs_poller_messages_failed_total{pipeline=\"late\"}").await, 0.0);
    for d in worker.deliveries() {
        for r in d.records() {
            assert_eq!(r["attributes"]["ApproximateReceiveCount"], "1", "delivered on the first receive");
        }
    }
    assert!(poller.log_text().contains("cannot connect to"));
    assert_eq!(sqs.counts(&queue).await, (0, 0), "deleted on the emulator, not only counted");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
