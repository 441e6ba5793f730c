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

/// Issue 36, delays past SQS's limits: a worker asks for 12 hours and 30 seconds, longer than any
/// visibility timeout holds. The message is re-sent to its queue — the odd 30 seconds as the
/// first hop's `DelaySeconds` — with its body, its attributes, its trace header, the time it was
/// first sent and the hop's state; the original is deleted once the copy is there. On LocalStack,
/// which keeps per-message delays and `AWSTraceHeader` as SQS does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_past_twelve_hours_hops_a_copy_and_deletes_the_original() {
    use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
    let sqs = localstack().await;
    let queue = sqs.queue("hop", &[]).await;
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    sqs.send_with_trace_header(&queue, "much later", trace).await;
    let original = sqs.take_all(&queue).await.remove(0);
    // back at once, with its SentTimestamp, to be received by the service
    sqs.client
        .change_message_visibility()
        .queue_url(&queue)
        .receipt_handle(original.receipt_handle().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    let worker = worker(|event| {
        let failures: Vec<_> = event["Records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| json!({"itemIdentifier": r["messageId"], "retryAfterSeconds": 43_230}))
            .collect();
        Reply::ok(json!({ "batchItemFailures": failures }).to_string())
    })
    .await;
    let poller =
        start_poller(&sqs, 5, &http_pipeline("hop", &queue, &worker.url, "[pipelines.pollers]\nwait_time_secs = 1\n"))
            .await;
    poller.wait_metric("sqs_poller_messages_hopped_total{pipeline=\"hop\"}", 1.0, Duration::from_secs(30)).await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert_eq!(worker.deliveries().len(), 1, "the worker saw it once");

    // the original is gone; the copy waits out its first hop
    let attrs = sqs
        .client
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    let count = |k: QueueAttributeName| attrs[&k].parse::<u64>().unwrap();
    assert_eq!(
        (
            count(QueueAttributeName::ApproximateNumberOfMessages),
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            count(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        ),
        (0, 0, 1),
        "(visible, in flight, delayed): the original deleted, its copy delayed"
    );
    let mut copies = Vec::new();
    for _ in 0..5 {
        copies = sqs
            .client
            .receive_message()
            .queue_url(&queue)
            .wait_time_seconds(20)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        if !copies.is_empty() {
            break;
        }
    }
    assert_eq!(copies.len(), 1, "the copy arrives after its 30 s hop");
    let copy = &copies[0];
    assert_ne!(copy.message_id(), original.message_id(), "a copy");
    assert_eq!(copy.body(), Some("much later"));
    let system = copy.attributes().unwrap();
    assert_eq!(system.get(&MessageSystemAttributeName::AwsTraceHeader).map(String::as_str), Some(trace));
    let carried = copy.message_attributes().unwrap();
    let sent = &original.attributes().unwrap()[&MessageSystemAttributeName::SentTimestamp];
    assert_eq!(carried["sqs-poller.first-sent"].string_value(), Some(sent.as_str()), "the first send's time");
    let hop: serde_json::Value = serde_json::from_str(carried["sqs-poller.hop"].string_value().unwrap()).unwrap();
    assert_eq!(hop, json!({"dueInSeconds": 43_200, "receiveCount": 2, "hops": 1}));
}
