//! Leases end to end: each defect of the leases issue, reproduced against a real emulator.
//! FIFO grouping and attribute rules run on LocalStack, which behaves as SQS does there
//! (fauxqs returns one message per group per receive and accepts any attribute characters).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

fn receive_count(r: &Value) -> u32 {
    r["attributes"]["ApproximateReceiveCount"].as_str().unwrap().parse().unwrap()
}

/// Samples a metric every 50 ms until `stop` is set; returns the largest value seen.
fn sample_max(
    poller: &Poller,
    series: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<f64> {
    let url = format!("{}/metrics", poller.listen);
    tokio::spawn(async move {
        let mut max: f64 = 0.0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some((200, text)) = http_get(&url).await {
                max = max.max(metric_value(&text, &series));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        max
    })
}

/// 30 messages, a 3 s worker, a 4 s visibility timeout, four pollers and one batch at a time:
/// before leases, pollers passed on one freed permit and buffered ~100 messages with no
/// heartbeat, and a third of them ran twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pollers_receive_only_into_room_and_nothing_runs_twice() {
    let run = Scenario::new("room")
        .attribute(QueueAttributeName::VisibilityTimeout, "4")
        .bodies((0..30).map(|i| format!("m{i}")))
        .pipeline("max_concurrency = 1\n[pipelines.pollers]\nmin = 4\nmax = 4\nwait_time_secs = 1\n[pipelines.batch]\nsize = 10")
        .run(|_| Reply { status: 200, body: String::new(), delay: Duration::from_secs(3) })
        .await;
    let Run { sqs, queue, worker, poller, .. } = &run;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = sample_max(poller, "sqs_poller_in_flight_messages{pipeline=\"room\"}".into(), stop.clone());
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"room\"}", 30.0, Duration::from_secs(60)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let held = held.await.unwrap();

    let delivered = worker.times_delivered();
    let twice = delivered.values().filter(|&&n| n > 1).count();
    assert!(
        held <= 10.0,
        "at most max_concurrency × batch.size = 10 messages held at once, saw {held} ({twice} of 30 delivered twice)"
    );
    assert_eq!(delivered.len(), 30);
    assert_eq!(twice, 0, "delivered twice: {delivered:?}");
    for d in worker.deliveries() {
        for r in d.records() {
            assert_eq!(receive_count(r), 1, "received once: {r}");
        }
    }
    let bound = poller.metric("sqs_poller_max_outstanding_messages{pipeline=\"room\"}").await;
    assert_eq!(bound, 10.0, "1 × 10 by default");
    assert_eq!(sqs.counts(queue).await, (0, 0), "deleted on the emulator, not only counted");
    run.stop().await;
}

/// A batch that runs three times the visibility timeout completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_three_times_the_visibility_timeout_completes_once() {
    let run = Scenario::new("long")
        .attribute(QueueAttributeName::VisibilityTimeout, "2")
        .bodies((0..5).map(|i| format!("slow-{i}")))
        .pipeline(
            "[pipelines.pollers]\nmin = 2\nmax = 2\nwait_time_secs = 1\n[pipelines.batch]\nsize = 5\nwindow_ms = 200",
        )
        .run(|_| Reply { status: 200, body: String::new(), delay: Duration::from_secs(6) })
        .await;
    run.wait_deleted(5, Duration::from_secs(40)).await;
    let Run { sqs, queue, worker, poller, .. } = &run;
    let delivered = worker.times_delivered();
    assert_eq!(delivered.len(), 5);
    assert!(delivered.values().all(|&n| n == 1), "delivered twice: {delivered:?}");
    let extended = poller.metric("sqs_poller_lease_extensions_total{pipeline=\"long\",outcome=\"ok\"}").await;
    assert!(extended >= 5.0 * 4.0, "about one extension per message per second over 6 s, saw {extended}");
    assert_eq!(poller.metric("sqs_poller_lease_extensions_total{pipeline=\"long\",outcome=\"error\"}").await, 0.0);
    // a stale handle would have been deleted in name only on fauxqs: look after the old timeout
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(sqs.take_all(queue).await.is_empty(), "nothing comes back");
    run.stop().await;
}

/// `on_filtered = "keep"` with messages that match nothing: before, 4,000 receives a second and
/// every message in the queue's own dead-letter queue within 0.1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_messages_come_back_after_the_keep_delay_without_spinning() {
    let sqs = sqs().await;
    let dlq = sqs.queue("keep-dlq", &[]).await;
    let dlq_arn = sqs
        .client
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let redrive = format!("{{\"deadLetterTargetArn\":\"{dlq_arn}\",\"maxReceiveCount\":\"5\"}}");
    let queue = sqs.queue("keep", &[(QueueAttributeName::RedrivePolicy, &redrive)]).await;
    sqs.send_bodies(&queue, &(0..10).map(|i| format!("{{\"kind\":\"other\",\"n\":{i}}}")).collect::<Vec<_>>()).await;
    let worker = worker(|_| Reply::ok("")).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline(
            "keep",
            &queue,
            &worker.url,
            "[pipelines.pollers]\nmin = 1\nmax = 10\nwait_time_secs = 1\n\
             [pipelines.filter]\npatterns = ['{\"body\": {\"kind\": [\"mine\"]}}']\non_filtered = \"keep\"\nkeep_delay_secs = 2",
        ),
    )
    .await;
    poller.wait_metric("sqs_poller_messages_filtered_total{pipeline=\"keep\"}", 10.0, Duration::from_secs(20)).await;
    let receives = |text: &str| {
        metric_value(
            text,
            "sqs_poller_sqs_requests_total{pipeline=\"keep\",operation=\"ReceiveMessage\",outcome=\"ok\"}",
        )
    };
    let before = receives(&poller.metrics_text().await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = poller.metrics_text().await;
    let per_sec = (receives(&text) - before) / 3.0;
    assert!(per_sec < 25.0, "{per_sec} ReceiveMessage calls a second for a queue of kept messages");
    let desired = metric_value(&text, "sqs_poller_pollers_desired{pipeline=\"keep\"}");
    assert!(desired <= 2.0, "kept messages are no demand: {desired} pollers wanted");
    let filtered = metric_value(&text, "sqs_poller_messages_filtered_total{pipeline=\"keep\"}");
    assert!(filtered <= 30.0, "each message comes back at most every 2 s: {filtered} filtered in ~4 s");
    assert!(sqs.take_all(&dlq).await.is_empty(), "none reached the queue's dead-letter queue");
    assert!(worker.deliveries().is_empty());
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    // nothing deleted: all ten come back (the last kept ones after their 2 s delay; any a receive
    // given up at the stop took, after that receive's visibility, lease::RECEIVE_VISIBILITY)
    let back = Mutex::new(0);
    eventually("all ten messages back in the queue", Duration::from_secs(45), || async {
        let n = sqs.take_all(&queue).await.len();
        let mut back = back.lock().unwrap();
        *back += n;
        *back >= 10
    })
    .await;
    assert_eq!(back.into_inner().unwrap(), 10, "none twice");
}

/// A worker that answers 503 for one body: before, that batch was retried under one receipt
/// handle for as long as the worker said so, and with `max_concurrency = 1` the pipeline stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_throttled_too_long_is_released_and_the_pipeline_goes_on() {
    let sqs = sqs().await;
    let queue = sqs.queue("throttle", &[]).await;
    sqs.send_bodies(&queue, &["poison".to_string()]).await;
    let worker = worker(|event| {
        let poison = event["Records"].as_array().unwrap().iter().any(|r| r["body"] == "poison");
        if poison {
            Reply { status: 503, body: "busy".into(), delay: Duration::ZERO }
        } else {
            Reply::ok("")
        }
    })
    .await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline_with_target(
            "throttle",
            &queue,
            &worker.url,
            "max_concurrency = 1\nmax_throttled_secs = 2",
            "[pipelines.pollers]\nmin = 1\nmax = 1\nwait_time_secs = 1\n[pipelines.batch]\nsize = 1\n\
             [pipelines.retry]\ninitial_backoff_secs = 2",
        ),
    )
    .await;
    poller
        .wait_metric("sqs_poller_throttle_released_messages_total{pipeline=\"throttle\"}", 1.0, Duration::from_secs(20))
        .await;
    sqs.send_bodies(&queue, &(0..4).map(|i| format!("ok-{i}")).collect::<Vec<_>>()).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"throttle\"}", 4.0, Duration::from_secs(30)).await;
    // the poison message comes back with a higher receive count: its receives are counted
    eventually("the poison message is received again", Duration::from_secs(20), || async {
        worker
            .deliveries()
            .iter()
            .flat_map(|d| d.records().clone())
            .any(|r| r["body"] == "poison" && receive_count(&r) >= 2)
    })
    .await;
    let text = poller.metrics_text().await;
    assert_eq!(
        metric_value(&text, "sqs_poller_messages_failed_total{pipeline=\"throttle\"}"),
        0.0,
        "never ran: not failed"
    );
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("longer than target.max_throttled_secs"), "{log}");
}

/// A message received again while its first copy waits in the batcher: before, both copies
/// went into one batch and a failure reported for the id failed only one of them; the other
/// was deleted as succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_received_again_while_leased_is_one_message() {
    let sqs = sqs().await;
    let queue = sqs.queue("dup", &[(QueueAttributeName::VisibilityTimeout, "1")]).await;
    sqs.send_bodies(&queue, &(0..3).map(|i| format!("d{i}")).collect::<Vec<_>>()).await;
    // every message fails: nothing may be deleted
    let worker = worker(|event| {
        let ids: Vec<&str> =
            event["Records"].as_array().unwrap().iter().map(|r| r["messageId"].as_str().unwrap()).collect();
        Reply::failures(&ids)
    })
    .await;
    // a one-second maximum lease lets the messages become visible while the 3 s window fills
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline(
            "dup",
            &queue,
            &worker.url,
            "[pipelines.pollers]\nmin = 2\nmax = 2\nwait_time_secs = 1\n[pipelines.batch]\nsize = 10\nwindow_ms = 3000\n\
             [pipelines.lease]\nmax_lease_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 30",
        ),
    )
    .await;
    poller.wait_metric("sqs_poller_messages_failed_total{pipeline=\"dup\"}", 3.0, Duration::from_secs(30)).await;
    let text = poller.metrics_text().await;
    let duplicates = metric_value(&text, "sqs_poller_duplicate_receives_total{pipeline=\"dup\"}");
    assert!(duplicates >= 1.0, "the scenario needs a second receive of a leased message");
    assert!(metric_value(&text, "sqs_poller_leases_expired_total{pipeline=\"dup\"}") >= 3.0);
    for d in worker.deliveries() {
        let mut ids: Vec<&str> = d.records().iter().map(|r| r["messageId"].as_str().unwrap()).collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "one batch held two copies of a message: {:?}", d.event);
    }
    assert_eq!(metric_value(&text, "sqs_poller_messages_deleted_total{pipeline=\"dup\"}"), 0.0);
    assert_eq!(metric_value(&text, "sqs_poller_messages_succeeded_total{pipeline=\"dup\"}"), 0.0);
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    let (visible, hidden) = sqs.counts(&queue).await;
    assert_eq!(visible + hidden, 3, "none deleted on the emulator");
}

/// runtime-api with one worker and five batches at a time: before, `timeout_secs` counted the
/// wait for the worker, so queued batches "timed out" without ever running and were
/// dead-lettered, and a worker was killed in a batch it had just started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_api_timeouts_count_the_work_not_the_wait_for_a_worker() {
    let python = python_with_awslambdaric();
    let sqs = sqs().await;
    let queue = sqs.queue("rt-wait", &[]).await;
    let dlq = sqs.queue("rt-wait-dlq", &[]).await;
    // each batch of 3 takes 1.5 s (NAP: 0.5 s per message); 5 batches queue for the one worker
    let bodies: Vec<String> = (0..15).map(|i| format!("NAP-{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let pipeline = format!(
        "[[pipelines]]\nname = \"rtwait\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nmin = 2\nmax = 2\nwait_time_secs = 1\n\
         [pipelines.batch]\nsize = 3\n[pipelines.target]\ntype = \"runtime-api\"\nprogram = \"{}\"\n\
         args = [\"-m\", \"awslambdaric\", \"examples.lambda_handler.handler\"]\nworkers = 1\ntimeout_secs = 3\nmax_concurrency = 5\n\
         [pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 1\n",
        python.display()
    );
    let poller = start_poller(&sqs, 10, &pipeline).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"rtwait\"}", 15.0, Duration::from_secs(60)).await;
    let text = poller.metrics_text().await;
    assert_eq!(metric_value(&text, "sqs_poller_messages_succeeded_total{pipeline=\"rtwait\"}"), 15.0);
    assert_eq!(metric_value(&text, "sqs_poller_messages_dead_lettered_total{pipeline=\"rtwait\"}"), 0.0);
    assert!(sqs.take_all(&dlq).await.is_empty());
    assert_eq!(sqs.counts(&queue).await, (0, 0));
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert!(!log.contains("timed out"), "{log}");
    assert!(!log.contains("killed"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// On LocalStack: FIFO group locking with several messages per receive, attribute rules
// ---------------------------------------------------------------------------------------------

/// FIFO, 10 messages of one group, batches of 5, message 2 fails once: before, two batches of
/// the group ran at once and the order was 1 6 7 8 9 10 2 3 4 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_a_group_runs_in_one_batch_at_a_time_and_keeps_its_order() {
    let sqs = localstack().await;
    let queue = sqs
        .queue(
            "fifo-order",
            &[(QueueAttributeName::FifoQueue, "true"), (QueueAttributeName::ContentBasedDeduplication, "true")],
        )
        .await;
    for i in 1..=10 {
        sqs.client
            .send_message()
            .queue_url(&queue)
            .message_body(i.to_string())
            .message_group_id("g")
            .send()
            .await
            .expect("SendMessage");
    }
    // a FIFO handler: process in order, stop the group at the first failure
    let processed: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = processed.clone();
    let worker = worker(move |event| {
        let mut failures = Vec::new();
        for r in event["Records"].as_array().unwrap() {
            let body = r["body"].as_str().unwrap();
            if !failures.is_empty() || (body == "2" && receive_count(r) == 1) {
                failures.push(r["messageId"].as_str().unwrap().to_string());
            } else {
                log.lock().unwrap().push(body.to_string());
            }
        }
        let ids: Vec<&str> = failures.iter().map(String::as_str).collect();
        Reply { delay: Duration::from_millis(300), ..Reply::failures(&ids) }
    })
    .await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline_with_target(
            "fifo",
            &queue,
            &worker.url,
            "max_concurrency = 4",
            "[pipelines.pollers]\nmin = 3\nmax = 3\nwait_time_secs = 1\n[pipelines.batch]\nsize = 5\nwindow_ms = 300\n\
             [pipelines.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 1",
        ),
    )
    .await;
    eventually("all ten processed", Duration::from_secs(60), || async { processed.lock().unwrap().len() >= 10 }).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"fifo\"}", 10.0, Duration::from_secs(20)).await;
    let order = processed.lock().unwrap().clone();
    let expected: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    assert_eq!(order, expected, "processed in group order, each once");
    assert!(
        worker.deliveries().iter().any(|d| d.records().len() >= 2),
        "the emulator must put several messages of the group in one batch for this test to mean anything"
    );
    // no two batches of the group overlapped: each started after the previous one was answered
    let deliveries = worker.deliveries();
    for pair in deliveries.windows(2) {
        assert!(pair[1].at >= pair[0].at + Duration::from_millis(300), "two batches of group g ran at once");
    }
    assert_eq!(sqs.counts(&queue).await, (0, 0));
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// A worker that answers 500 with control characters in its body, and a standard queue whose
/// messages carry a MessageGroupId (a fair queue): every dead-letter copy must be accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_copies_are_accepted_by_sqs() {
    let sqs = localstack().await;
    let queue = sqs.queue("dlq-chars", &[]).await;
    let dlq = sqs.queue("dlq-chars-dlq", &[]).await;
    sqs.client.send_message().queue_url(&queue).message_body("plain").send().await.unwrap();
    sqs.client
        .send_message()
        .queue_url(&queue)
        .message_body("fair")
        .message_group_id("tenant-1")
        .send()
        .await
        .expect("a standard queue takes a MessageGroupId (fair queues)");
    let worker =
        worker(|_| Reply { status: 500, body: "boom\u{1}\u{0}\u{7f}\u{fffe}end".into(), delay: Duration::ZERO }).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline(
            "dlqchars",
            &queue,
            &worker.url,
            &format!(
                "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.batch]\nsize = 1\n\
                 [pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 1"
            ),
        ),
    )
    .await;
    poller
        .wait_metric("sqs_poller_messages_dead_lettered_total{pipeline=\"dlqchars\"}", 2.0, Duration::from_secs(30))
        .await;
    let moved = sqs.take_all(&dlq).await;
    let mut bodies: Vec<&str> = moved.iter().filter_map(|m| m.body()).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, vec!["fair", "plain"]);
    for m in &moved {
        let reason = m.message_attributes().unwrap()["sqs-poller.reason"].string_value().unwrap();
        assert!(reason.starts_with("HTTP 500"), "{reason}");
        assert!(reason.contains("\\u{1}") && reason.contains("end"), "control characters escaped: {reason}");
    }
    assert_eq!(sqs.counts(&queue).await, (0, 0));
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// A FIFO queue's dead-letter copies go to a FIFO dead-letter queue with their group (and a
/// deduplication id); a message that already has SQS's 10 attributes is copied with them alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_dead_letter_copies_keep_their_group_and_a_full_set_of_attributes() {
    use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
    let sqs = localstack().await;
    let fifo = [(QueueAttributeName::FifoQueue, "true"), (QueueAttributeName::ContentBasedDeduplication, "true")];
    let queue = sqs.queue("fifo-dlq-src", &fifo).await;
    let dlq = sqs.queue("fifo-dlq", &[(QueueAttributeName::FifoQueue, "true")]).await;
    let attr = |v: &str| MessageAttributeValue::builder().data_type("String").string_value(v).build().unwrap();
    let mut full = sqs.client.send_message().queue_url(&queue).message_body("full").message_group_id("g1");
    for i in 0..10 {
        full = full.message_attributes(format!("a{i}"), attr(&format!("v{i}")));
    }
    full.send().await.expect("SendMessage with 10 attributes");
    sqs.client
        .send_message()
        .queue_url(&queue)
        .message_body("plain")
        .message_group_id("g2")
        .message_attributes("tenant", attr("acme"))
        .send()
        .await
        .expect("SendMessage");
    let worker = worker(|_| Reply { status: 500, body: "nope".into(), delay: Duration::ZERO }).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline(
            "fifodlq",
            &queue,
            &worker.url,
            &format!(
                "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.batch]\nsize = 1\n\
                 [pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 1"
            ),
        ),
    )
    .await;
    poller
        .wait_metric("sqs_poller_messages_dead_lettered_total{pipeline=\"fifodlq\"}", 2.0, Duration::from_secs(30))
        .await;
    let moved = sqs.take_all(&dlq).await;
    assert_eq!(moved.len(), 2);
    for m in &moved {
        let group = m.attributes().unwrap().get(&MessageSystemAttributeName::MessageGroupId).cloned();
        let attrs = m.message_attributes().unwrap();
        match m.body() {
            Some("full") => {
                assert_eq!(group.as_deref(), Some("g1"));
                assert_eq!(attrs.len(), 10, "the original ten, nothing added: {attrs:?}");
                assert_eq!(attrs["a9"].string_value(), Some("v9"));
            }
            Some("plain") => {
                assert_eq!(group.as_deref(), Some("g2"));
                assert_eq!(attrs["tenant"].string_value(), Some("acme"));
                assert_eq!(attrs["sqs-poller.pipeline"].string_value(), Some("fifodlq"));
                assert!(attrs["sqs-poller.reason"].string_value().unwrap().starts_with("HTTP 500"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sqs.counts(&queue).await, (0, 0));
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("has 10 attributes already"), "{log}");
}
