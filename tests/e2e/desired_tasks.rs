//! `sqs_poller_desired_tasks`: the task count worked out from the backlog, the arrivals and one
//! task's measured capacity, on the gauge and (with `cloudwatch_emf`) on stdout for CloudWatch.

use std::time::Duration;

use crate::common::*;

/// A worker that takes 100 ms a batch, one batch at a time, batches of 10: one task does at
/// most 100 messages a second, 80 at the default utilization. 1,500 waiting to be gone within
/// 5 s need 300 a second: more than one task, until the queue is nearly empty; then one.
#[tokio::test]
async fn a_backlog_one_task_cannot_drain_in_time_asks_for_more_tasks_and_an_empty_queue_for_one() {
    let sqs = sqs().await;
    let name = unique("tasks");
    let queue = sqs.queue(&name, &[]).await;
    let bodies: Vec<String> = (0..1500).map(|i| format!("m{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let worker = worker(|_| Reply { delay: Duration::from_millis(100), ..Reply::ok("") }).await;
    let pipeline = format!(
        "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{queue}\"\ndepth_interval_secs = 1\n\
         [pipelines.target]\ntype = \"http\"\nurl = \"{}\"\nmax_concurrency = 1\n\
         [pipelines.batch]\nsize = 10\n[pipelines.desired_tasks]\ndrain_secs = 5\ncloudwatch_emf = true\n",
        worker.url
    );
    let poller = start_poller(&sqs, 10, &pipeline).await;
    let series = format!("sqs_poller_desired_tasks{{pipeline=\"{name}\"}}");
    let deleted = format!("sqs_poller_messages_deleted_total{{pipeline=\"{name}\"}}");
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let text = poller.metrics_text().await;
        seen.push(metric_value(&text, &series));
        if find_metric(&text, &deleted).unwrap_or(0.0) >= 1500.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every message deleted in 120 s; log:\n{}",
            poller.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let most = seen.iter().copied().fold(0.0, f64::max);
    println!("desired tasks while draining (every 200 ms): {seen:?}");
    assert!(most >= 2.0, "a backlog one task cannot drain within drain_secs asks for more: {seen:?}");
    assert!(seen.iter().all(|v| *v >= 1.0 && v.fract() == 0.0), "whole tasks, at least one: {seen:?}");
    // the queue empty: one task is enough again
    eventually("the signal back at 1", Duration::from_secs(30), || async { poller.metric(&series).await == 1.0 }).await;

    // each sample also went to stdout as a CloudWatch embedded-metric-format line, the same numbers
    let out = poller.stdout_text();
    let emf: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(emf.len() >= 5, "one line a sample: {out}");
    for line in &emf {
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"], "DesiredTasks", "{line}");
        assert_eq!(line["Pipeline"], name.as_str(), "{line}");
    }
    let tasks: Vec<u64> = emf.iter().map(|l| l["DesiredTasks"].as_u64().expect("a count")).collect();
    assert!(tasks.iter().any(|t| *t >= 2), "{tasks:?}");
    assert_eq!(tasks.last(), Some(&1), "{tasks:?}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
