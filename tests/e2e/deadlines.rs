//! Message deadlines (issue 36): `retry.max_age_secs` dead-letters a message first sent longer ago
//! than that, with reason `expired`, instead of dispatching it — counted from its first send
//! (`sqs-poller.first-sent`, which dead-letter copies and redrives carry), and whatever the
//! filter says of it (a kept message expires too). The copy in the dead-letter queue is the
//! message untouched, with the time of its first send.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::MessageAttributeValue;

use crate::common::*;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn send(sqs: &Sqs, queue: &str, body: &str, first_sent_ms: Option<u64>) {
    let mut req = sqs.client.send_message().queue_url(queue).message_body(body);
    if let Some(ms) = first_sent_ms {
        let v = MessageAttributeValue::builder().data_type("Number").string_value(ms.to_string()).build().unwrap();
        req = req.message_attributes("sqs-poller.first-sent", v);
    }
    req.send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_its_max_age_is_dead_lettered_untouched_and_a_fresh_one_goes_on() {
    let sqs = sqs().await;
    let queue = sqs.queue("deadline", &[]).await;
    let dlq = sqs.queue("deadline-dlq", &[]).await;
    let two_hours_ago = now_ms() - 2 * 3600 * 1000;
    // a redriven copy first sent two hours ago (its own SentTimestamp is fresh), one that the
    // filter would keep back, and a fresh one
    send(&sqs, &queue, r#"{"kind": "order", "n": "old"}"#, Some(two_hours_ago)).await;
    send(&sqs, &queue, r#"{"kind": "other", "n": "old-kept"}"#, Some(two_hours_ago)).await;
    send(&sqs, &queue, r#"{"kind": "order", "n": "fresh"}"#, None).await;
    let worker = worker(|_| Reply::ok("")).await;
    let extra = format!(
        "[pipelines.pollers]\nwait_time_secs = 1\n\
         [pipelines.filter]\npatterns = ['{{\"body\": {{\"kind\": [\"order\"]}}}}']\non_filtered = \"keep\"\n\
         [pipelines.retry]\nmax_age_secs = 3600\n\
         [pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 5\n"
    );
    let poller = start_poller(&sqs, 5, &http_pipeline("deadline", &queue, &worker.url, &extra)).await;
    eventually("both old messages in the dead-letter queue", Duration::from_secs(30), || async {
        sqs.counts(&dlq).await.0 == 2
    })
    .await;
    eventually("the fresh one processed", Duration::from_secs(30), || async {
        poller.metric("sqs_poller_messages_succeeded_total{pipeline=\"deadline\"}").await == 1.0
    })
    .await;
    let log = poller.stop().await.2;
    let at_worker: Vec<String> = worker
        .deliveries()
        .iter()
        .flat_map(|d| d.records().clone())
        .map(|r| r["body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(at_worker, vec![r#"{"kind": "order", "n": "fresh"}"#], "an expired message reached the worker");
    let mut dead = sqs.take_all(&dlq).await;
    dead.sort_by_key(|m| m.body.clone());
    let bodies: Vec<&str> = dead.iter().filter_map(|m| m.body.as_deref()).collect();
    assert_eq!(bodies, vec![r#"{"kind": "order", "n": "old"}"#, r#"{"kind": "other", "n": "old-kept"}"#]);
    for m in &dead {
        let attrs = m.message_attributes().unwrap();
        let reason = attrs["sqs-poller.reason"].string_value().unwrap();
        assert!(
            reason.starts_with("expired: first sent 7200 s ago") || reason.starts_with("expired: first sent 720"),
            "{reason}"
        );
        assert_eq!(
            attrs["sqs-poller.first-sent"].string_value(),
            Some(two_hours_ago.to_string().as_str()),
            "the first send is kept"
        );
    }
    assert_eq!(sqs.counts(&queue).await, (0, 0), "{log}");
}

#[test]
fn max_age_without_a_dead_letter_queue_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("poller.toml");
    std::fs::write(
        &file,
        "[[pipelines]]\nname = \"p\"\nqueue_url = \"http://127.0.0.1:4566/000000000000/q\"\n\
         [pipelines.target]\ntype = \"http\"\nurl = \"http://127.0.0.1:8080/\"\n[pipelines.retry]\nmax_age_secs = 600\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pipelines[0].retry.max_age_secs") && stderr.contains("[pipelines.dead_letter]"),
        "{stderr}"
    );
}
