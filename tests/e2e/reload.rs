//! Reload on SIGHUP: under load, a changed pipeline is drained and started again with its new
//! settings (nothing lost, the new batch size reaches the worker), an added one starts, an
//! untouched one is not restarted; a broken file is rejected, reported, and changes nothing.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;

fn pipeline(name: &str, queue: &str, worker: &str, size: usize) -> String {
    http_pipeline(
        name,
        queue,
        worker,
        &format!("[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.batch]\nsize = {size}\nwindow_ms = 300\n"),
    )
}

fn batch_sizes(worker: &Worker, prefix: &str) -> Vec<usize> {
    worker
        .deliveries()
        .iter()
        .filter(|d| d.records()[0]["body"].as_str().unwrap().starts_with(prefix))
        .map(|d| d.records().len())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_restarts_changed_pipelines_starts_new_ones_and_leaves_the_rest_alone() {
    let sqs = sqs().await;
    let (a, b, c) =
        (sqs.queue("reload-a", &[]).await, sqs.queue("reload-b", &[]).await, sqs.queue("reload-c", &[]).await);
    let a_bodies: Vec<String> = (0..2000).map(|i| format!("a-{i}")).collect();
    sqs.send_bodies(&a, &a_bodies).await;
    // 20 ms per batch: pipeline a takes a few seconds, so the reload lands mid-run
    let worker = worker(|_| Reply { delay: Duration::from_millis(20), ..Reply::ok("") }).await;
    let before = [pipeline("a", &a, &worker.url, 10), pipeline("c", &c, &worker.url, 10)].concat();
    let poller = start_poller(&sqs, 10, &before).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"a\"}", 200.0, Duration::from_secs(30)).await;
    let hash_before = config_hashes(&poller.metrics_text().await);

    // a: batches of 100; b: new; c: unchanged
    let after =
        [pipeline("a", &a, &worker.url, 100), pipeline("c", &c, &worker.url, 10), pipeline("b", &b, &worker.url, 10)]
            .concat();
    poller.rewrite(&after);
    sqs.send_bodies(&b, &(0..100).map(|i| format!("b-{i}")).collect::<Vec<_>>()).await;
    poller.sighup();
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"a\"}", 2000.0, Duration::from_secs(60)).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"b\"}", 100.0, Duration::from_secs(30)).await;
    sqs.send_bodies(&c, &["c-after".to_string()]).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"c\"}", 1.0, Duration::from_secs(30)).await;

    let text = poller.metrics_text().await;
    assert_eq!(metric_value(&text, "sqs_poller_config_reloads_total{outcome=\"ok\"}"), 1.0);
    let hash_after = config_hashes(&text);
    assert_eq!(hash_before.len(), 1, "{hash_before:?}");
    assert!(hash_after.contains(&(hash_before[0].0.clone(), 0.0)), "the old file's hash is 0 now: {hash_after:?}");
    assert!(
        hash_after.iter().any(|(h, v)| *v == 1.0 && *h != hash_before[0].0),
        "the new file's hash is 1: {hash_after:?}"
    );

    // nothing lost, and the new size reached the worker
    let seen: HashSet<String> = worker
        .deliveries()
        .iter()
        .flat_map(|d| d.records().iter().map(|r| r["body"].as_str().unwrap().to_string()).collect::<Vec<_>>())
        .collect();
    assert!(a_bodies.iter().all(|b| seen.contains(b)), "every message of a reached the worker");
    assert_eq!(sqs.counts(&a).await, (0, 0));
    assert_eq!(sqs.counts(&b).await, (0, 0));
    let sizes = batch_sizes(&worker, "a-");
    assert!(sizes.iter().any(|&n| n > 10), "batches of a over 10 after the reload: {sizes:?}");
    let log = poller.log_text();
    let found = |p: &str| log.matches(&format!("queue found pipeline={p} ")).count();
    assert_eq!((found("a"), found("b"), found("c")), (2, 1, 1), "a restarted, b started, c untouched:\n{log}");
    assert!(log.contains("configuration reloaded") && log.contains("changed=1") && log.contains("added=1"), "{log}");
    assert!(log.contains("unchanged=1"), "{log}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_rejected_and_everything_keeps_running() {
    let sqs = sqs().await;
    let queue = sqs.queue("reload-broken", &[]).await;
    let worker = worker(|_| Reply::ok("")).await;
    let poller = start_poller(&sqs, 10, &pipeline("kept", &queue, &worker.url, 10)).await;
    poller.rewrite(&pipeline("kept", &queue, &worker.url, 20_000));
    poller.sighup();
    poller.wait_metric("sqs_poller_config_reloads_total{outcome=\"error\"}", 1.0, Duration::from_secs(10)).await;
    let log = poller.log_text();
    assert!(log.contains("pipelines[0].batch.size: 20000 is out of range"), "the same message as `check`:\n{log}");
    assert!(log.contains("configuration reload rejected"), "{log}");
    // the running configuration goes on
    sqs.send_bodies(&queue, &(0..5).map(|i| format!("still {i}")).collect::<Vec<_>>()).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"kept\"}", 5.0, Duration::from_secs(20)).await;
    assert_eq!(poller.metric("sqs_poller_config_reloads_total{outcome=\"ok\"}").await, 0.0);
    assert_eq!(log.matches("queue found pipeline=kept ").count(), 1, "the pipeline was not restarted:\n{log}");
    assert_eq!(http_get(&format!("{}/readyz", poller.listen)).await.map(|r| r.0), Some(200));

    // a filter pattern EventBridge refuses is a configuration error too, not a filter that
    // silently passes nothing
    let refused =
        "[pipelines.filter]\npatterns = ['{\"body\": {\"arn\": [{\"wildcard\": \"*:*:*:*:*:event-bus/*\"}]}}']\n";
    poller.rewrite(&[pipeline("kept", &queue, &worker.url, 10), refused.to_string()].concat());
    poller.sighup();
    poller.wait_metric("sqs_poller_config_reloads_total{outcome=\"error\"}", 2.0, Duration::from_secs(10)).await;
    let log = poller.log_text();
    assert!(
        log.contains(
            "pipelines[0].filter.patterns[0]: invalid pattern of pipeline `kept`: body.arn: the rule is too complex"
        ),
        "{log}"
    );
    sqs.send_bodies(&queue, &["unfiltered".to_string()]).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"kept\"}", 6.0, Duration::from_secs(20)).await;
    assert_eq!(poller.metric("sqs_poller_messages_filtered_total{pipeline=\"kept\"}").await, 0.0);

    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// `(hash, value)` of every `sqs_poller_config_info` series.
fn config_hashes(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("sqs_poller_config_info{hash=\""))
        .filter_map(|rest| {
            let (hash, value) = rest.split_once("\"} ")?;
            Some((hash.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A pipeline removed by one SIGHUP and named again by the next while it still drains (a batch
/// of 4 s in flight) runs again once drained. Before, the second reload counted it unchanged
/// and the queue silently stopped being consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_removed_and_added_back_within_one_drain_runs_again() {
    let sqs = sqs().await;
    let (queue, other) = (sqs.queue("reload-readd", &[]).await, sqs.queue("reload-readd-other", &[]).await);
    let worker = worker(|_| Reply { delay: Duration::from_secs(4), ..Reply::ok("") }).await;
    let (a, kept) = (pipeline("a", &queue, &worker.url, 10), pipeline("other", &other, &worker.url, 10));
    let poller = start_poller(&sqs, 30, &[a.as_str(), &kept].concat()).await;
    sqs.send_bodies(&queue, &["first".to_string()]).await;
    eventually("the first batch reaches the worker", Duration::from_secs(20), || async {
        !worker.deliveries().is_empty()
    })
    .await;
    poller.rewrite(&kept);
    poller.sighup();
    poller.wait_metric("sqs_poller_config_reloads_total{outcome=\"ok\"}", 1.0, Duration::from_secs(10)).await;
    poller.rewrite(&[a.as_str(), &kept].concat());
    poller.sighup();
    poller.wait_metric("sqs_poller_config_reloads_total{outcome=\"ok\"}", 2.0, Duration::from_secs(10)).await;
    sqs.send_bodies(&queue, &["second".to_string()]).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"a\"}", 2.0, Duration::from_secs(40)).await;
    let log = poller.log_text();
    assert!(log.contains("pipeline named again by the reload while it drains"), "{log}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// A pipeline task that panics (a bug, injected here through the debug build's
/// `SQS_POLLER_TEST_PANIC_PIPELINE`) stops the service with code 1 naming it, the other
/// pipeline drained. Before, the panic was skipped: the service ran on with that queue unread
/// and `/readyz` still ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_task_that_panics_stops_the_service_with_code_1() {
    let sqs = sqs().await;
    let (a, b) = (sqs.queue("panic-a", &[]).await, sqs.queue("panic-b", &[]).await);
    let worker = worker(|_| Reply::ok("")).await;
    let pipelines = [pipeline("a", &a, &worker.url, 10), pipeline("b", &b, &worker.url, 10)].concat();
    let mut poller =
        spawn_poller_with_env(&sqs.endpoint, 10, "", &pipelines, &[("SQS_POLLER_TEST_PANIC_PIPELINE", "b")]);
    let status = tokio::time::timeout(Duration::from_secs(30), poller.child.wait())
        .await
        .unwrap_or_else(|_| panic!("the service ran on after a pipeline panicked; log:\n{}", poller.log_text()))
        .unwrap();
    let log = poller.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("pipeline b: its task panicked"), "{log}");
}
