//! Faults between the service and its peers, through fault-injecting TCP proxies
//! (`tests/e2e/common/proxy.rs`): one between the service and the SQS emulator, one between the
//! service and its HTTP worker. On a 5,000-message run the SQS link gets latency, resets, a
//! 10-second cut and an accept-and-hang phase, and the worker link resets, hangs and slows down.
//! Every message is processed at least once, deleted exactly once, the poison ones end in the
//! dead-letter queue, `/readyz` is false while the pipeline cannot poll and true again after, and
//! the counters equal the emulator's final state.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::proxy::{Fault, FaultProxy};
use crate::common::*;

const MESSAGES: usize = 5_000;
const POISON: usize = 20;

async fn readyz(poller: &Poller) -> Option<u16> {
    http_get(&format!("{}/readyz", poller.listen)).await.map(|(s, _)| s)
}

fn sum_series(text: &str, prefix: &str, contains: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(contains))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_and_worker_faults_lose_nothing_and_delete_once() {
    let sqs = sqs().await;
    let queue = sqs.queue("faults", &[]).await;
    let dlq = sqs.queue("faults-dlq", &[]).await;
    let bodies: Vec<String> = (0..MESSAGES)
        .map(|i| if i % (MESSAGES / POISON) == 0 { format!("poison-{i}") } else { format!("message-{i}") })
        .collect();
    sqs.send_bodies(&queue, &bodies).await;

    let worker = worker(|event| {
        let poison: Vec<&str> = event["Records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["body"].as_str().unwrap().starts_with("poison"))
            .map(|r| r["messageId"].as_str().unwrap())
            .collect();
        Reply::failures(&poison)
    })
    .await;
    let sqs_link = FaultProxy::start(&sqs.endpoint).await;
    let worker_link = FaultProxy::start(&worker.url).await;
    let pipeline = http_pipeline_with_target(
        "faults",
        &queue,
        &format!("{}/sqs", worker_link.url),
        // a steady 250 messages a second, so that the faults fall in the middle of the run
        "timeout_secs = 2\nmax_concurrency = 4\nrate_limit_per_sec = 250",
        &format!(
            "[pipelines.pollers]\nmin = 2\nmax = 8\nwait_time_secs = 1\nvisibility_timeout_secs = 30\n\
             [pipelines.lease]\nmax_outstanding = 6000\n\
             [pipelines.retry]\ninitial_backoff_secs = 2\nmax_backoff_secs = 4\n\
             [pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 6\n"
        ),
    );
    // a second pipeline on an empty queue keeps long-polling through the faults (the busy one's
    // pollers wait for room while its batches wait for the rate limit)
    let idle_queue = sqs.queue("faults-idle", &[]).await;
    let idle = http_pipeline("idle", &idle_queue, &worker.url, "[pipelines.pollers]\nwait_time_secs = 1\n");
    let mut poller = spawn_poller(&sqs_link.url, 10, &format!("{pipeline}{idle}"));
    poller.wait_listening().await;
    eventually("ready through the proxy", Duration::from_secs(15), || async { readyz(&poller).await == Some(200) })
        .await;
    let started = Instant::now();
    let at = |secs: f64| tokio::time::sleep_until((started + Duration::from_secs_f64(secs)).into());

    // the SQS link
    at(2.0).await;
    sqs_link.set(Fault::Latency(Duration::from_millis(200)));
    at(4.0).await;
    sqs_link.set(Fault::Reset);
    at(5.0).await;
    sqs_link.set(Fault::Cut);
    let during_cut = poller.metrics_text().await;
    at(9.0).await;
    let ready_during_cut = readyz(&poller).await;
    at(15.0).await;
    sqs_link.set(Fault::Hang);
    at(18.0).await;
    sqs_link.set(Fault::Pass);
    let t = Instant::now();
    eventually("/readyz is 200 again once SQS answers", Duration::from_secs(20), || async {
        readyz(&poller).await == Some(200)
    })
    .await;
    let ready_again_after = t.elapsed();

    // the worker link
    at(20.0).await;
    worker_link.set(Fault::Reset);
    at(21.0).await;
    worker_link.set(Fault::Pass);
    at(22.0).await;
    worker_link.set(Fault::Hang);
    at(25.0).await;
    worker_link.set(Fault::Latency(Duration::from_millis(300)));
    at(28.0).await;
    worker_link.set(Fault::Pass);

    poller
        .wait_metric(
            "sqs_poller_messages_deleted_total{pipeline=\"faults\"}",
            MESSAGES as f64,
            Duration::from_secs(150),
        )
        .await;
    // what a late retry could still add shows up within a few seconds
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = poller.metrics_text().await;
    let m = |name: &str| metric_value(&text, &format!("{name}{{pipeline=\"faults\"}}"));
    println!(
        "{MESSAGES} messages in {:.1} s; received {} dispatched {} succeeded {} failed {} dead-lettered {} deleted {}; \
         SQS errors {} ({} connection, {} timeout, {} bad response); ready again {ready_again_after:?} after the link came back",
        started.elapsed().as_secs_f64(),
        m("sqs_poller_messages_received_total"),
        m("sqs_poller_messages_dispatched_total"),
        m("sqs_poller_messages_succeeded_total"),
        m("sqs_poller_messages_failed_total"),
        m("sqs_poller_messages_dead_lettered_total"),
        m("sqs_poller_messages_deleted_total"),
        sum_series(&text, "sqs_poller_sqs_errors_total", ""),
        sum_series(&text, "sqs_poller_sqs_errors_total", "kind=\"connection\""),
        sum_series(&text, "sqs_poller_sqs_errors_total", "kind=\"timeout\""),
        sum_series(&text, "sqs_poller_sqs_errors_total", "kind=\"bad_response\""),
    );

    assert_eq!(ready_during_cut, Some(503), "/readyz while no receive can succeed");
    assert!(during_cut.contains("sqs_poller_sqs_errors_total"), "the error counter is exported");

    // every message processed at least once: the worker saw every body
    let seen: HashSet<String> = worker
        .deliveries()
        .iter()
        .flat_map(|d| d.records().iter().map(|r| r["body"].as_str().unwrap().to_string()).collect::<Vec<_>>())
        .collect();
    let missing: Vec<&String> = bodies.iter().filter(|b| !seen.contains(*b)).collect();
    assert!(
        missing.is_empty(),
        "{} messages never reached the worker, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // the emulator's final state equals the counters
    assert_eq!(sqs.counts(&queue).await, (0, 0), "the source queue is empty:\n{}", poller.log_text());
    assert_eq!(m("sqs_poller_messages_deleted_total"), MESSAGES as f64, "each message deleted exactly once");
    // a message is processed again only when its batch's answer was lost (the worker link broke)
    assert!(m("sqs_poller_messages_succeeded_total") >= (MESSAGES - POISON) as f64);
    let dead: Vec<String> = sqs.take_all(&dlq).await.iter().map(|m| m.body().unwrap().to_string()).collect();
    let dead_set: HashSet<&String> = dead.iter().collect();
    assert_eq!(dead_set.len(), POISON, "the poison messages, and only they, in the DLQ: {dead:?}");
    assert!(dead.iter().all(|b| b.starts_with("poison")), "{dead:?}");
    assert_eq!(m("sqs_poller_messages_dead_lettered_total"), dead.len() as f64, "a DLQ copy per count");

    // every fault was counted, by call kind
    let idle_text = poller.metrics_text().await;
    assert!(
        sum_series(&idle_text, "sqs_poller_sqs_errors_total{pipeline=\"idle\",operation=\"ReceiveMessage\"", "") > 0.0
    );
    assert!(sum_series(&text, "sqs_poller_sqs_errors_total{", "operation=\"GetQueueAttributes\"") > 0.0);
    assert_eq!(
        sum_series(&text, "sqs_poller_sqs_errors_total{", ""),
        sum_series(&text, "sqs_poller_sqs_requests_total{", "outcome=\"error\""),
        "each failed request has its kind"
    );
    assert_eq!(m("sqs_poller_in_flight_messages"), 0.0);

    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sqs_cannot_hold_the_shutdown_past_its_grace_period() {
    let sqs = sqs().await;
    let queue = sqs.queue("hung-shutdown", &[]).await;
    sqs.send_bodies(&queue, &(0..5).map(|i| format!("slow {i}")).collect::<Vec<_>>()).await;
    let worker = worker(|_| Reply { delay: Duration::from_secs(2), ..Reply::ok("") }).await;
    let sqs_link = FaultProxy::start(&sqs.endpoint).await;
    let pipeline = http_pipeline("hung", &queue, &worker.url, "[pipelines.pollers]\nwait_time_secs = 1\n");
    let mut poller = spawn_poller(&sqs_link.url, 5, &pipeline);
    poller.wait_listening().await;
    poller.wait_metric("sqs_poller_messages_dispatched_total{pipeline=\"hung\"}", 5.0, Duration::from_secs(15)).await;
    // SQS stops answering while the batch runs; its delete, and anything else, hangs
    sqs_link.set(Fault::Hang);
    let t = Instant::now();
    poller.sigterm();
    let status = tokio::time::timeout(Duration::from_secs(30), poller.child.wait()).await.expect("exit").unwrap();
    let took = t.elapsed();
    let log = poller.log_text();
    println!("SQS hung during the drain: exit {status} {took:?} after SIGTERM (grace period 5 s)");
    // SQS hangs for good: without the grace's bound the exit would wait for it (the 30 s above);
    // the exact bound is checked under simulated time (tests/offline/simulation.rs)
    assert!(took < Duration::from_secs(20), "exit {took:?} after SIGTERM with a 5 s grace period:\n{log}");
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("could not delete processed messages"), "the undeleted messages are reported:\n{log}");
    sqs_link.set(Fault::Pass);
    // nothing is lost: the messages come back after their visibility timeout (they were processed once)
    assert_eq!(sqs.counts(&queue).await.0 + sqs.counts(&queue).await.1, 5);
}
