//! Issue 19, item 1: a queue whose `VisibilityTimeout` is lowered while the service runs. The
//! lease keeper schedules its extensions for the visibility it found at start (300 s: the first
//! extension at 150 s); receives used to send none, so SQS hid each message for the queue's new
//! 6 s and a second instance took it again while the first was still working on it. Receives
//! now always ask for the visibility the lease keeper schedules for, and the keeper adopts the
//! queue's new attribute at the next depth sample (logged); leases taken before keep theirs.
//! On fauxqs and on LocalStack (which keeps SQS's visibility rules).

use std::time::Duration;

use crate::common::strict_aws::StrictAws;
use crate::common::*;
use aws_sdk_sqs::types::QueueAttributeName;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_the_queues_visibility_timeout_while_running_delivers_nothing_twice() {
    lower_the_visibility_while_running(sqs().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_the_queues_visibility_timeout_on_localstack_delivers_nothing_twice() {
    lower_the_visibility_while_running(localstack().await).await;
}

async fn lower_the_visibility_while_running(sqs: Sqs) {
    let queue = sqs.queue("vis-change", &[(QueueAttributeName::VisibilityTimeout, "300")]).await;
    // batches that take 14 s, longer than the queue's new visibility timeout
    let w = worker(|_| Reply { delay: Duration::from_secs(14), ..Reply::ok("") }).await;
    let pipeline =
        http_pipeline("vis", &queue, &w.url, "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.batch]\nsize = 5\n")
            .replace("[pipelines.target]", "depth_interval_secs = 1\n[pipelines.target]");
    // both instances reach SQS through the strict-AWS proxy, which records what they asked for
    let proxy = StrictAws::start(&sqs.endpoint).await;
    let mut a = spawn_poller(&proxy.url, 5, &pipeline);
    let mut b = spawn_poller(&proxy.url, 5, &pipeline);
    a.wait_listening().await;
    b.wait_listening().await;
    eventually("both receive", Duration::from_secs(15), || async {
        proxy.state.lock().unwrap().receive_visibility.len() >= 2
    })
    .await;
    sqs.client
        .set_queue_attributes()
        .queue_url(&queue)
        .attributes(QueueAttributeName::VisibilityTimeout, "6")
        .send()
        .await
        .unwrap();
    for p in [&a, &b] {
        eventually("the change is adopted at a depth sample", Duration::from_secs(15), || async {
            p.log_text().contains("the queue's VisibilityTimeout changed")
        })
        .await;
    }
    // a long poll sent before the change asked for 30 s (a receive's at most, lease::RECEIVE_VISIBILITY);
    // wait until none is open, so that every receive counted next asks for the new 6 s
    let most = sqs_poller::lease::RECEIVE_VISIBILITY.as_secs();
    eventually("no receive asking for the most a receive asks is open", Duration::from_secs(15), || async {
        proxy.state.lock().unwrap().open_receives.get(&Some(most)).copied().unwrap_or(0) == 0
    })
    .await;
    // what SQS is asked for from here on
    let (receives_before, changes_before) = {
        let s = proxy.state.lock().unwrap();
        (s.receive_visibility.len(), s.visibility_changes.len())
    };
    let bodies: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    eventually("all 20 deleted", Duration::from_secs(90), || async {
        a.metric("sqs_poller_messages_deleted_total{pipeline=\"vis\"}").await
            + b.metric("sqs_poller_messages_deleted_total{pipeline=\"vis\"}").await
            >= 20.0
    })
    .await;
    let (log_a, log_b) = (a.log_text(), b.log_text());
    // what SQS saw: every receive asked for a visibility, 30 s before the change was adopted (a
    // receive's at most; the queue's 300 s is what extensions ask for) and 6 s after; the 14 s
    // batches were extended, each time for 6 s
    let (receives, changes) = {
        let s = proxy.state.lock().unwrap();
        (s.receive_visibility.clone(), s.visibility_changes.clone())
    };
    assert!(receives.iter().all(Option::is_some), "a receive asked for no visibility: {receives:?}");
    assert!(receives[..2].iter().all(|v| *v == Some(most)), "before the change: {receives:?}");
    let after: Vec<Option<u64>> = receives[receives_before..].to_vec();
    assert!(!after.is_empty() && after.iter().all(|v| *v == Some(6)), "after the change: {after:?}");
    let extensions: Vec<u64> = changes[changes_before..].iter().copied().filter(|&v| v > 0).collect();
    assert!(extensions.len() >= 20, "each 14 s batch extended at least once: {extensions:?}");
    assert!(extensions.iter().all(|&v| v == 6), "extensions of 6 s: {extensions:?}");
    a.stop().await;
    b.stop().await;
    let times = w.times_delivered();
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    let recounted: usize = w
        .deliveries()
        .iter()
        .flat_map(|d| d.records().clone())
        .filter(|r| r["attributes"]["ApproximateReceiveCount"].as_str() != Some("1"))
        .count();
    assert!(log_a.contains("from_secs=300 to_secs=6"), "{log_a}");
    assert_eq!(times.len(), 20, "every message processed");
    assert!(twice.is_empty(), "processed more than once: {twice:?}\nlog a:\n{log_a}\nlog b:\n{log_b}");
    assert_eq!(recounted, 0, "deliveries with a receive count above 1");
    assert_eq!(sqs.counts(&queue).await, (0, 0));
}
