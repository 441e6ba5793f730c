//! The `command` target: the event on stdin, the response on stdout, the exit code as the
//! function's success.

use std::time::Duration;

use crate::common::*;

const PARTIAL: &str = "import json, sys\n\
event = json.load(sys.stdin)\n\
failed = [{'itemIdentifier': r['messageId']} for r in event['Records'] if 'bad' in r['body']]\n\
print(json.dumps({'batchItemFailures': failed}))\n";

fn command_pipeline(name: &str, queue: &str, program: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n\
         [pipelines.batch]\nsize = 10\nwindow_ms = 300\n[pipelines.target]\ntype = \"command\"\nprogram = \"{program}\"\nargs = [{}]\n\
         [pipelines.retry]\ninitial_backoff_secs = 60\nmax_backoff_secs = 60\n",
        args.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_targets_follow_the_same_contract() {
    let sqs = sqs().await;
    let ok = sqs.queue("cmd-ok", &[]).await;
    let partial = sqs.queue("cmd-partial", &[]).await;
    let crash = sqs.queue("cmd-crash", &[]).await;
    let missing = sqs.queue("cmd-missing", &[]).await;
    sqs.send_bodies(&ok, &(0..5).map(|i| format!("fine {i}")).collect::<Vec<_>>()).await;
    sqs.send_bodies(&partial, &["good 1".into(), "bad 2".into(), "good 3".into()]).await;
    sqs.send_bodies(&crash, &["x".into()]).await;
    sqs.send_bodies(&missing, &["y".into()]).await;
    let pipelines = [
        command_pipeline("ok", &ok, "sh", &["-c", "cat > /dev/null"]),
        command_pipeline("partial", &partial, "python3", &["-c", PARTIAL]),
        command_pipeline("crash", &crash, "sh", &["-c", "cat > /dev/null; exit 3"]),
        command_pipeline("missing", &missing, "/nonexistent/worker", &[]),
    ]
    .concat();
    let poller = start_poller(&sqs, 10, &pipelines).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"ok\"}", 5.0, Duration::from_secs(20)).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"partial\"}", 2.0, Duration::from_secs(20)).await;
    poller.wait_metric("sqs_poller_messages_failed_total{pipeline=\"partial\"}", 1.0, Duration::from_secs(20)).await;
    poller.wait_metric("sqs_poller_messages_failed_total{pipeline=\"crash\"}", 1.0, Duration::from_secs(20)).await;
    poller.wait_metric("sqs_poller_messages_failed_total{pipeline=\"missing\"}", 1.0, Duration::from_secs(20)).await;

    assert_eq!(sqs.counts(&ok).await, (0, 0));
    assert_eq!(sqs.counts(&partial).await, (0, 1), "the bad message waits for its retry");
    assert_eq!(sqs.counts(&crash).await, (0, 1));
    let text = poller.metrics_text().await;
    assert_eq!(metric_value(&text, "sqs_poller_messages_deleted_total{pipeline=\"crash\"}"), 0.0);
    assert_eq!(metric_value(&text, "sqs_poller_messages_deleted_total{pipeline=\"missing\"}"), 0.0);
    let log = poller.log_text();
    assert!(log.contains("exited with exit status: 3"), "{log}");
    assert!(log.contains("cannot start `/nonexistent/worker`"), "{log}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_longer_than_the_visibility_timeout_keeps_its_messages_hidden() {
    let sqs = sqs().await;
    let queue = sqs.queue("long", &[(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "2")]).await;
    sqs.send_bodies(&queue, &["slow".to_string()]).await;
    let worker = worker(|_| Reply { status: 200, body: String::new(), delay: Duration::from_secs(5) }).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline("long", &queue, &worker.url, "[pipelines.pollers]\nmin = 2\nmax = 2\nwait_time_secs = 1"),
    )
    .await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"long\"}", 1.0, Duration::from_secs(20)).await;
    assert_eq!(worker.deliveries().len(), 1, "the message was not received again while its batch ran");
    let extended = poller
        .metric("sqs_poller_sqs_requests_total{pipeline=\"long\",operation=\"ChangeMessageVisibilityBatch\",outcome=\"ok\"}")
        .await;
    assert!(extended >= 2.0, "visibility extended every second: {extended}");
    assert_eq!(sqs.counts(&queue).await, (0, 0), "deleted on the emulator, not only counted");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
