//! The worker decides (issue 36): next to `itemIdentifier` in `batchItemFailures`, an entry may
//! ask for `retryAfterSeconds` (the message is seen again then, never earlier) or `deadLetter`
//! (to the dead-letter queue at once, with its reason) — in the same answer, ignored by Lambda.
//! Every target reads answers the same way: the http target and the command target here.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_asks_for_45_seconds_and_for_the_dead_letter_queue() {
    let sqs = sqs().await;
    let queue = sqs.queue("asks", &[]).await;
    let dlq = sqs.queue("asks-dlq", &[]).await;
    sqs.send_bodies(&queue, &["later".to_string(), "never".to_string(), "fine".to_string()]).await;
    // "later" fails on its first delivery asking for 45 s; "never" asks for the dead-letter
    // queue; the backoff alone would bring "later" back after 1 s
    let worker = worker(|event| {
        let mut failures = Vec::new();
        for r in event["Records"].as_array().unwrap() {
            let (id, body) = (r["messageId"].as_str().unwrap(), r["body"].as_str().unwrap());
            let first = r["attributes"]["ApproximateReceiveCount"] == "1";
            match body {
                "later" if first => failures.push(json!({"itemIdentifier": id, "retryAfterSeconds": 45})),
                "never" => failures.push(json!({"itemIdentifier": id, "deadLetter": "no such customer"})),
                _ => {}
            }
        }
        Reply::ok(json!({ "batchItemFailures": failures }).to_string())
    })
    .await;
    let extra = format!(
        "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 1\n\
         [pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 5\n"
    );
    let poller = start_poller(&sqs, 5, &http_pipeline("asks", &queue, &worker.url, &extra)).await;
    eventually("\"never\" in the dead-letter queue", Duration::from_secs(20), || async {
        sqs.counts(&dlq).await.0 == 1
    })
    .await;
    let dead = sqs.take_all(&dlq).await;
    let attrs = dead[0].message_attributes().unwrap();
    assert_eq!(dead[0].body.as_deref(), Some("never"));
    assert_eq!(attrs["sqs-poller.reason"].string_value(), Some("no such customer"));
    assert_eq!(attrs["sqs-poller.receive-count"].string_value(), Some("1"), "at once, on its first receive");
    eventually("\"later\" seen again and deleted", Duration::from_secs(90), || async {
        poller.metric("sqs_poller_messages_deleted_total{pipeline=\"asks\"}").await >= 3.0
    })
    .await;
    let seen: Vec<_> = worker
        .deliveries()
        .iter()
        .flat_map(|d| d.records().iter().map(|r| (r["body"].as_str().unwrap().to_string(), d.at)).collect::<Vec<_>>())
        .filter(|(body, _)| body == "later")
        .map(|(_, at)| at)
        .collect();
    assert_eq!(seen.len(), 2, "seen once, then once more");
    // SQS keeps it hidden for the visibility the service asked for: never earlier than 45 s
    let gap = seen[1] - seen[0];
    assert!(gap >= Duration::from_secs(44), "seen again after {gap:?}, before the 45 s asked for");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// The command target reads the same answer: a malformed ask fails the whole batch, a
/// well-formed `deadLetter` sends its message at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_worker_asks_too_and_a_malformed_ask_fails_the_batch() {
    let sqs = sqs().await;
    let queue = sqs.queue("asks-cmd", &[]).await;
    let dlq = sqs.queue("asks-cmd-dlq", &[]).await;
    sqs.send_bodies(&queue, &["poison".to_string()]).await;
    // the first answer's ask is malformed (a negative delay): the batch fails as a whole and
    // comes back; the second asks for the dead-letter queue
    let script = "import json, sys\n\
event = json.load(sys.stdin)\n\
r = event['Records'][0]\n\
first = r['attributes']['ApproximateReceiveCount'] == '1'\n\
ask = {'retryAfterSeconds': -5} if first else {'deadLetter': True}\n\
print(json.dumps({'batchItemFailures': [dict(itemIdentifier=r['messageId'], **ask)]}))\n";
    let pipeline = format!(
        "[[pipelines]]\nname = \"asks-cmd\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n\
         [pipelines.target]\ntype = \"command\"\nprogram = \"python3\"\nargs = [\"-c\", {script:?}]\n\
         [pipelines.retry]\ninitial_backoff_secs = 0\n[pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 5\n"
    );
    let poller = start_poller(&sqs, 5, &pipeline).await;
    eventually("the message in the dead-letter queue", Duration::from_secs(30), || async {
        sqs.counts(&dlq).await.0 == 1
    })
    .await;
    let dead = sqs.take_all(&dlq).await;
    let attrs = dead[0].message_attributes().unwrap();
    assert_eq!(attrs["sqs-poller.reason"].string_value(), Some("the worker asked for the dead-letter queue"));
    assert_eq!(
        attrs["sqs-poller.receive-count"].string_value(),
        Some("2"),
        "the malformed answer failed the first try"
    );
    let log = poller.log_text();
    assert!(log.contains("retryAfterSeconds -5 is not a whole number of seconds"), "{log}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
