//! The `lambda` target against moto's Lambda backend (Docker off: canned responses, then an
//! echo of the payload), through the real aws-sdk-lambda over HTTP. FunctionError and
//! throttling cannot be produced by moto; their mapping is unit-tested in src/dispatch/lambda.rs.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lambda_function_gets_the_event_and_its_item_failures_are_retried() {
    let sqs = sqs().await;
    let moto = moto().await;
    let queue = sqs.queue("lambda", &[]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(sqs.send_with_attribute(&queue, &format!("{{\"n\": {i}}}"), "tenant", "acme").await);
    }
    // the first invocation reports the second message as failed; later ones echo the event,
    // an object without batchItemFailures: all succeeded
    moto_post(
        &moto,
        "/moto-api/static/lambda-simple/response",
        &json!({"results": [json!({"batchItemFailures": [{"itemIdentifier": ids[1]}]}).to_string()], "region": "us-east-1"}),
    )
    .await;
    let pipeline = format!(
        "[[pipelines]]\nname = \"lambda\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n\
         [pipelines.batch]\nsize = 10\nwindow_ms = 500\n[pipelines.target]\ntype = \"lambda\"\nfunction_name = \"orders-worker\"\n\
         [pipelines.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 1\n"
    );
    let poller = start_poller_with_aws(&sqs, 10, &format!("lambda_endpoint_url = \"{moto}\""), &pipeline).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"lambda\"}", 3.0, Duration::from_secs(20)).await;
    let text = poller.metrics_text().await;
    let m = |s: &str| metric_value(&text, s);
    assert_eq!(m("sqs_poller_messages_failed_total{pipeline=\"lambda\"}"), 1.0);
    assert_eq!(m("sqs_poller_messages_succeeded_total{pipeline=\"lambda\"}"), 3.0);
    assert_eq!(m("sqs_poller_batches_total{pipeline=\"lambda\",outcome=\"partial\"}"), 1.0);
    assert!(m("sqs_poller_batches_total{pipeline=\"lambda\",outcome=\"success\"}") >= 1.0);
    assert_eq!(m("sqs_poller_messages_dispatched_total{pipeline=\"lambda\"}"), 4.0, "three, then the failed one again");
    assert_eq!(sqs.counts(&queue).await, (0, 0));
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_a_lambda_target_and_rejects_misplaced_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let base = "[[pipelines]]\nname = \"l\"\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"\n[pipelines.target]\ntype = \"lambda\"\n";
    std::fs::write(
        &file,
        format!("{base}function_name = \"arn:aws:lambda:us-east-1:1:function:f\"\nqualifier = \"live\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("lambda arn:aws:lambda:us-east-1:1:function:f:live"));
    std::fs::write(&file, format!("{base}url = \"http://x\"\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pipelines[0].target.url: does not apply to target type `lambda`"), "{stderr}");
    assert!(stderr.contains("pipelines[0].target.function_name: is required"), "{stderr}");
}
