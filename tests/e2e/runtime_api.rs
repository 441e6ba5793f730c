//! The `runtime-api` target with the official Python runtime interface client (awslambdaric,
//! from PyPI into .local/venv) running the unmodified handler in examples/lambda_handler.py.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_lambda_handler_runs_as_a_local_worker() {
    let python = python_with_awslambdaric();
    let sqs = sqs().await;
    let queue = sqs.queue("runtime", &[]).await;
    let dlq = sqs.queue("runtime-dlq", &[]).await;
    let bodies = ["ok-1", "ok-2", "ok-3", "FAIL-4", "RAISE-5", "CRASH-6"].map(String::from);
    sqs.send_bodies(&queue, &bodies).await;
    let pipeline = format!(
        "[[pipelines]]\nname = \"runtime\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n\
         [pipelines.batch]\nsize = 1\n[pipelines.target]\ntype = \"runtime-api\"\nprogram = \"{}\"\n\
         args = [\"-m\", \"awslambdaric\", \"examples.lambda_handler.handler\"]\nworkers = 2\ntimeout_secs = 20\n\
         [pipelines.retry]\ninitial_backoff_secs = 0\n[pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 2\n",
        python.display()
    );
    let poller = start_poller(&sqs, 10, &pipeline).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"runtime\"}", 6.0, Duration::from_secs(60)).await;
    let text = poller.metrics_text().await;
    let m = |s: &str| metric_value(&text, &format!("{s}{{pipeline=\"runtime\"}}"));
    assert_eq!(m("sqs_poller_messages_succeeded_total"), 5.0, "ok ×3, RAISE and CRASH on their second delivery");
    assert_eq!(m("sqs_poller_messages_dead_lettered_total"), 1.0, "FAIL-4");
    assert_eq!(m("sqs_poller_messages_failed_total"), 4.0, "FAIL twice, RAISE once, CRASH once");
    let moved = sqs.take_all(&dlq).await;
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].body(), Some("FAIL-4"));
    assert_eq!(sqs.counts(&queue).await, (0, 0));
    let log = poller.log_text();
    assert!(log.contains("function error") && log.contains("this message asked to raise"), "{log}");
    assert!(log.contains("exited") && log.contains("during the batch"), "{log}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_its_timeout_has_its_worker_killed_and_replaced() {
    let python = python_with_awslambdaric();
    let sqs = sqs().await;
    let queue = sqs.queue("runtime-timeout", &[]).await;
    sqs.send_bodies(&queue, &["SLEEP-1".to_string()]).await;
    let pipeline = format!(
        "[[pipelines]]\nname = \"timeout\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n\
         [pipelines.batch]\nsize = 1\n[pipelines.target]\ntype = \"runtime-api\"\nprogram = \"{}\"\n\
         args = [\"-m\", \"awslambdaric\", \"examples.lambda_handler.handler\"]\nworkers = 1\ntimeout_secs = 2\n\
         [pipelines.retry]\ninitial_backoff_secs = 0\n",
        python.display()
    );
    let poller = start_poller(&sqs, 10, &pipeline).await;
    poller.wait_metric("sqs_poller_messages_failed_total{pipeline=\"timeout\"}", 1.0, Duration::from_secs(20)).await;
    // the only worker was asleep in the timed-out batch: only its replacement can take these
    sqs.send_bodies(&queue, &["ok-2".to_string()]).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"timeout\"}", 2.0, Duration::from_secs(30)).await;
    let log = poller.log_text();
    assert!(log.contains("timed out after 2 s"), "{log}");
    assert!(log.contains("killed: its batch timed out"), "{log}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
