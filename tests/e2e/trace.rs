//! Trace context on LocalStack (fauxqs drops `AWSTraceHeader`; see docs/src/testing.md): a message sent
//! with an X-Ray trace header reaches an HTTP worker as `X-Amzn-Trace-Id` and a W3C
//! `traceparent`, an unmodified Lambda handler (awslambdaric) as `_X_AMZN_TRACE_ID`, and the
//! batch's log lines carry its trace id.

use std::time::Duration;

use crate::common::*;

const HEADER: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";

async fn send_traced(sqs: &Sqs, queue: &str, body: &str) {
    sqs.send_with_trace_header(queue, body, HEADER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_header_reaches_an_http_worker_and_the_logs() {
    let sqs = localstack().await;
    let queue = sqs.queue("traced", &[]).await;
    send_traced(&sqs, &queue, "traced").await;
    // fails the message once, so that the batch logs a line
    let worker = worker(|event| {
        let r = &event["Records"][0];
        if r["attributes"]["ApproximateReceiveCount"] == "1" {
            Reply::failures(&[r["messageId"].as_str().unwrap()])
        } else {
            Reply::ok("")
        }
    })
    .await;
    let pipeline = http_pipeline(
        "traced",
        &queue,
        &worker.url,
        "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 0\n",
    );
    let poller = start_poller(&sqs, 10, &pipeline).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"traced\"}", 1.0, Duration::from_secs(30)).await;
    let d = &worker.deliveries()[0];
    assert_eq!(d.records()[0]["attributes"]["AWSTraceHeader"], HEADER, "the record keeps the attribute, as on Lambda");
    assert_eq!(d.headers.get("x-amzn-trace-id").map(String::as_str), Some(HEADER));
    assert_eq!(
        d.headers.get("traceparent").map(String::as_str),
        Some("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01")
    );
    let log = poller.log_text();
    assert!(log.contains("trace_id=5759e988bd862e3fe1be46a994272793"), "the batch's log line names its trace:\n{log}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_header_reaches_an_unmodified_lambda_handler() {
    let python = python_with_awslambdaric();
    let sqs = localstack().await;
    let queue = sqs.queue("traced-runtime", &[]).await;
    send_traced(&sqs, &queue, "traced").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trace.txt");
    let pipeline = format!(
        "[[pipelines]]\nname = \"runtime\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n\
         [pipelines.target]\ntype = \"runtime-api\"\nprogram = \"{}\"\nargs = [\"-m\", \"awslambdaric\", \"tests.trace_handler.handler\"]\n",
        python.display()
    );
    let mut poller = spawn_poller_with_env(&sqs.endpoint, 10, "", &pipeline, &[("TRACE_OUT", out.to_str().unwrap())]);
    poller.wait_listening().await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"runtime\"}", 1.0, Duration::from_secs(30)).await;
    let seen = std::fs::read_to_string(&out).unwrap();
    assert_eq!(seen.trim(), HEADER, "_X_AMZN_TRACE_ID in the handler");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
