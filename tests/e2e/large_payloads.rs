//! Large payloads through S3: messages sent by AWS's own Python SQS Extended Client
//! (`amazon-sqs-extended-client` from PyPI, in .local/venv) into moto's SQS and S3 reach the worker
//! with the real payload in `body`, byte for byte (2 MB and 20 MB); the objects are deleted after
//! success when asked; a pointer whose object is gone fails only its own message.

use std::time::Duration;

use crate::common::*;

const PRODUCER: &str = r#"
import json, os, sys
import boto3, sqs_extended_client  # the import patches boto3's Session
queue_url, bucket, out = sys.argv[1:4]
session = boto3.session.Session()
s3 = session.client("s3")
s3.create_bucket(Bucket=bucket)
sqs = session.client("sqs")
sqs.large_payload_support = bucket
def send(name, body):
    sqs.send_message(QueueUrl=queue_url, MessageBody=body,
                     MessageAttributes={"name": {"DataType": "String", "StringValue": name}})
for name, size in [("two", 2 * 1024 * 1024), ("twenty", 20 * 1024 * 1024)]:
    body = os.urandom(size // 2).hex()
    with open(os.path.join(out, name), "w") as f:
        f.write(body)
    send(name, body)
send("plain", "a small message, carried by SQS itself")
# a pointer whose object is gone by the time it is received
send("missing", os.urandom(300 * 1024).hex())
for o in s3.list_objects_v2(Bucket=bucket)["Contents"]:
    if o["Size"] == 600 * 1024:
        s3.delete_object(Bucket=bucket, Key=o["Key"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_client_payloads_reach_the_worker_intact() {
    let sqs = moto_sqs().await;
    let queue = sqs.queue("extended", &[]).await;
    let bucket = unique("payloads");
    let dir = tempfile::tempdir().unwrap();
    extended_client(&sqs, PRODUCER, &[&queue, &bucket, dir.path().to_str().unwrap()]);
    let worker = worker(|_| Reply::ok("")).await;
    let pipeline = http_pipeline(
        "extended",
        &queue,
        &worker.url,
        &format!(
            "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 60\nmax_backoff_secs = 60\n\
             [pipelines.large_payloads]\ndelete_after_success = true\nallowed_buckets = [\"{bucket}\"]\n"
        ),
    );
    let poller = start_poller(&sqs, 10, &pipeline).await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"extended\"}", 3.0, Duration::from_secs(60)).await;
    poller.wait_metric("sqs_poller_messages_failed_total{pipeline=\"extended\"}", 1.0, Duration::from_secs(20)).await;

    let mut seen = std::collections::HashMap::new();
    for d in worker.deliveries() {
        for r in d.records() {
            let name = r["messageAttributes"]["name"]["stringValue"].as_str().unwrap().to_string();
            seen.insert(name, r["body"].as_str().unwrap().to_string());
        }
    }
    for name in ["two", "twenty"] {
        let expected = std::fs::read_to_string(dir.path().join(name)).unwrap();
        let got = seen.get(name).unwrap_or_else(|| panic!("{name} never reached the worker"));
        assert_eq!(got.len(), expected.len(), "{name}: the payload's size");
        assert!(*got == expected, "{name}: the payload byte for byte");
    }
    assert_eq!(seen.get("plain").map(String::as_str), Some("a small message, carried by SQS itself"));
    assert!(!seen.contains_key("missing"), "a message whose payload is gone is not dispatched");
    let text = poller.metrics_text().await;
    assert_eq!(metric_value(&text, "sqs_poller_large_payloads_total{pipeline=\"extended\",outcome=\"fetched\"}"), 2.0);
    assert!(metric_value(&text, "sqs_poller_large_payloads_total{pipeline=\"extended\",outcome=\"failed\"}") >= 1.0);
    assert_eq!(sqs.counts(&queue).await, (0, 1), "only the message with the missing payload waits for its retry");
    let log = poller.log_text();
    assert!(log.contains("a large payload could not be fetched") && log.contains("404"), "{log}");
    // the objects of the processed messages are gone
    let (_, listing) = http_get(&format!("{}/{bucket}", sqs.endpoint)).await.expect("ListObjects");
    assert!(listing.contains("ListBucketResult"), "an S3 listing:\n{listing}");
    assert!(!listing.contains("<Key>"), "objects left in the bucket:\n{listing}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

const DLQ_PRODUCER: &str = r#"
import os, sys
import boto3, sqs_extended_client
queue_url, bucket, out = sys.argv[1:4]
session = boto3.session.Session()
session.client("s3").create_bucket(Bucket=bucket)
sqs = session.client("sqs")
sqs.large_payload_support = bucket
body = os.urandom(1024 * 1024).hex()
with open(out, "w") as f:
    f.write(body)
sqs.send_message(QueueUrl=queue_url, MessageBody=body,
                 MessageAttributes={"name": {"DataType": "String", "StringValue": "poison"}})
"#;

const DLQ_CONSUMER: &str = r#"
import json, sys
import boto3, sqs_extended_client  # receive_message resolves pointers
dlq_url, out = sys.argv[1:3]
sqs = boto3.session.Session().client("sqs")
r = sqs.receive_message(QueueUrl=dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=5)
m = r["Messages"][0]
with open(out, "w") as f:
    f.write(m["Body"])
print(json.dumps({k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()}))
"#;

/// A 2 MB payload that fails for good is dead-lettered as its pointer (with its size
/// attribute), and AWS's Python extended client reads the copy back as the payload; with
/// `delete_after_success` its object stays (it was not processed). Before, the copy's body was
/// the 2 MB payload: SendMessage refused it on every try and the message looped in the source
/// queue, never dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_large_payload_is_read_back_by_the_extended_client() {
    let sqs = moto_sqs().await;
    let (queue, dlq) = (sqs.queue("extended-src", &[]).await, sqs.queue("extended-dlq", &[]).await);
    let bucket = unique("dlq-payloads");
    let dir = tempfile::tempdir().unwrap();
    let (sent, read) = (dir.path().join("sent"), dir.path().join("read"));
    let run = |script: &str, args: &[&str]| extended_client(&sqs, script, args);
    run(DLQ_PRODUCER, &[&queue, &bucket, sent.to_str().unwrap()]);
    let worker = worker(|_| Reply { status: 500, ..Reply::ok("down") }).await;
    let pipeline = http_pipeline(
        "extended-dlq",
        &queue,
        &worker.url,
        &format!(
            "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.large_payloads]\ndelete_after_success = true\n\
             allowed_buckets = [\"{bucket}\"]\n[pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 1\n"
        ),
    );
    let poller = start_poller(&sqs, 10, &pipeline).await;
    poller
        .wait_metric("sqs_poller_messages_dead_lettered_total{pipeline=\"extended-dlq\"}", 1.0, Duration::from_secs(30))
        .await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert_eq!(sqs.counts(&queue).await, (0, 0), "the source queue is empty");

    let attributes = run(DLQ_CONSUMER, &[&dlq, read.to_str().unwrap()]);
    let (expected, got) = (std::fs::read_to_string(&sent).unwrap(), std::fs::read_to_string(&read).unwrap());
    assert_eq!(got.len(), expected.len(), "the payload's size, read back through the pointer");
    assert!(got == expected, "the payload byte for byte");
    let attributes: serde_json::Value = serde_json::from_str(attributes.trim()).unwrap();
    assert_eq!(attributes["name"], "poison", "the sender's attributes: {attributes}");
    assert_eq!(attributes["sqs-poller.pipeline"], "extended-dlq", "{attributes}");
    // not processed: its object stays, for the copy (and a redrive) to point at
    let (_, listing) = http_get(&format!("{}/{bucket}", sqs.endpoint)).await.expect("ListObjects");
    assert!(listing.contains("<Key>"), "the object of a message that was not processed stays:\n{listing}");
}

/// Issue 34: a producer chooses the bucket a pointer names. With `allowed_buckets`, a pointer
/// into another bucket (one the service's role can read) is never fetched: the message goes to
/// the dead-letter queue on its first receive with a reason naming the bucket, its payload never
/// reaches the worker, and its object stays (`delete_after_success` deletes only what the list
/// allows); the pointer into the allowed bucket is processed as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pointer_outside_the_allowed_buckets_is_never_fetched_and_dead_lettered_at_once() {
    let sqs = moto_sqs().await;
    let (queue, dlq) = (sqs.queue("allowed-src", &[]).await, sqs.queue("allowed-dlq", &[]).await);
    let (allowed, elsewhere) = (unique("allowed"), unique("elsewhere"));
    let dir = tempfile::tempdir().unwrap();
    let (sent_allowed, sent_elsewhere) = (dir.path().join("allowed"), dir.path().join("elsewhere"));
    extended_client(&sqs, ONE_POINTER, &[&queue, &allowed, sent_allowed.to_str().unwrap()]);
    extended_client(&sqs, ONE_POINTER, &[&queue, &elsewhere, sent_elsewhere.to_str().unwrap()]);
    let worker = worker(|_| Reply::ok("")).await;
    let pipeline = http_pipeline(
        "allowed",
        &queue,
        &worker.url,
        &format!(
            "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.large_payloads]\ndelete_after_success = true\n\
             allowed_buckets = [\"{allowed}\"]\n[pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 5\n"
        ),
    );
    let poller = start_poller(&sqs, 10, &pipeline).await;
    poller
        .wait_metric("sqs_poller_messages_dead_lettered_total{pipeline=\"allowed\"}", 1.0, Duration::from_secs(30))
        .await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"allowed\"}", 2.0, Duration::from_secs(30)).await;

    let bodies: Vec<String> = worker
        .deliveries()
        .iter()
        .flat_map(|d| d.records().iter().map(|r| r["body"].as_str().unwrap().to_string()).collect::<Vec<_>>())
        .collect();
    let expected = std::fs::read_to_string(&sent_allowed).unwrap();
    assert_eq!(bodies.len(), 1, "only the allowed pointer reached the worker");
    assert!(bodies[0] == expected, "the allowed payload, byte for byte");
    let refused = std::fs::read_to_string(&sent_elsewhere).unwrap();
    assert!(!bodies.iter().any(|b| b.contains(&refused[..64])), "the refused payload never reached the worker");

    let moved = sqs.take_all(&dlq).await;
    assert_eq!(moved.len(), 1);
    let attributes = moved[0].message_attributes().unwrap();
    let reason = attributes["sqs-poller.reason"].string_value().unwrap();
    assert!(reason.contains(&elsewhere) && reason.contains("allowed_buckets"), "{reason}");
    assert_eq!(attributes["sqs-poller.receive-count"].string_value(), Some("1"), "dead-lettered at once");
    let text = poller.metrics_text().await;
    let outcome = |o: &str| {
        metric_value(&text, &format!("sqs_poller_large_payloads_total{{pipeline=\"allowed\",outcome=\"{o}\"}}"))
    };
    assert_eq!((outcome("fetched"), outcome("refused")), (1.0, 1.0));
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    let (_, refused_bucket) = http_get(&format!("{}/{elsewhere}", sqs.endpoint)).await.expect("ListObjects");
    assert!(refused_bucket.contains("<Key>"), "the refused pointer's object is untouched:\n{refused_bucket}");
    let (_, allowed_bucket) = http_get(&format!("{}/{allowed}", sqs.endpoint)).await.expect("ListObjects");
    assert!(!allowed_bucket.contains("<Key>"), "the processed message's object is deleted:\n{allowed_bucket}");
}

/// Runs `script` with AWS's Python extended client against the emulator of `sqs`; fails the
/// test with its stderr when the script fails; its stdout.
fn extended_client(sqs: &Sqs, script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(python_with_awslambdaric())
        .args(["-c", script])
        .args(args)
        .env("AWS_ENDPOINT_URL", &sqs.endpoint)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the extended client failed (scripts/install-services.sh installs amazon-sqs-extended-client): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends one 200 KiB payload to `queue` through AWS's Python extended client, into a new bucket
/// named after `bucket`; returns the file in `dir` holding the payload sent, and the bucket.
fn send_one_pointer(sqs: &Sqs, queue: &str, bucket: &str, dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let sent = dir.join("sent");
    let bucket = unique(bucket);
    extended_client(sqs, ONE_POINTER, &[queue, &bucket, sent.to_str().unwrap()]);
    (sent, bucket)
}

const ONE_POINTER: &str = r#"
import os, sys
import boto3, sqs_extended_client
queue_url, bucket, out = sys.argv[1:4]
session = boto3.session.Session()
session.client("s3").create_bucket(Bucket=bucket)
sqs = session.client("sqs")
sqs.large_payload_support = bucket
body = os.urandom(200 * 1024).hex()
with open(out, "w") as f:
    f.write(body)
sqs.send_message(QueueUrl=queue_url, MessageBody=body)
"#;

/// S3 stalls (the fault proxy accepts and never answers) while the queue's visibility timeout
/// is 2 s: the message is leased from its receive, so the heartbeat keeps it hidden through the
/// stall; the fetch gives up after `fetch_timeout_secs` (5 s) and fails only that attempt; once
/// S3 answers again the message is processed once, on its second receive. Before, the lease
/// started after the fetch (which had no bound): the message came back to another poller every
/// 2 s while the first fetch hung (with the fetch before the lease, this test saw 3 receives
/// and a duplicate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_s3_fetch_is_bounded_and_runs_under_the_lease() {
    let sqs = moto_sqs().await;
    let queue = sqs.queue("extended-stall", &[(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "2")]).await;
    let dir = tempfile::tempdir().unwrap();
    let (sent, _) = send_one_pointer(&sqs, &queue, "stalled", dir.path());
    let s3 = crate::common::proxy::FaultProxy::start(&sqs.endpoint).await;
    s3.set(crate::common::proxy::Fault::Hang);
    let worker = worker(|_| Reply::ok("")).await;
    let pipeline = http_pipeline(
        "stall",
        &queue,
        &worker.url,
        "[pipelines.pollers]\nmin = 3\nmax = 3\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 1\n\
         [pipelines.large_payloads]\nfetch_timeout_secs = 5\n",
    );
    let poller = start_poller_with_aws(&sqs, 10, &format!("s3_endpoint_url = \"{}\"", s3.url), &pipeline).await;
    poller
        .wait_metric(
            "sqs_poller_large_payloads_total{pipeline=\"stall\",outcome=\"failed\"}",
            1.0,
            Duration::from_secs(20),
        )
        .await;
    s3.set(crate::common::proxy::Fault::Pass);
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"stall\"}", 1.0, Duration::from_secs(30)).await;
    let text = poller.metrics_text().await;
    let log = poller.log_text();
    let (status, _, _) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("not fetched within 5 s"), "{log}");
    let deliveries = worker.deliveries();
    let records: Vec<serde_json::Value> = deliveries.iter().flat_map(|d| d.records().clone()).collect();
    let counts: Vec<&serde_json::Value> = records.iter().map(|r| &r["attributes"]["ApproximateReceiveCount"]).collect();
    assert_eq!(records.len(), 1, "processed once; receive counts of the deliveries: {counts:?}");
    assert!(records[0]["body"].as_str() == Some(std::fs::read_to_string(&sent).unwrap().as_str()), "the payload");
    assert_eq!(
        records[0]["attributes"]["ApproximateReceiveCount"], "2",
        "received twice in all: the stalled attempt, then the one that worked (the lease kept it hidden meanwhile)"
    );
    assert_eq!(metric_value(&text, "sqs_poller_large_payloads_total{pipeline=\"stall\",outcome=\"failed\"}"), 1.0);
    assert_eq!(metric_value(&text, "sqs_poller_duplicate_receives_total{pipeline=\"stall\"}"), 0.0);
    assert_eq!(
        metric_value(&text, "sqs_poller_messages_received_total{pipeline=\"stall\"}"),
        2.0,
        "two receives: {log}"
    );
}

/// Issue 30: the S3 delete after success had no time bound. S3 stalls after the fetch (the
/// proxy accepts and never answers) while `delete_after_success` deletes the processed message's
/// object: the batch's task (its slot, its groups, the drain) waited for it for good. Now the
/// delete gives up after `fetch_timeout_secs`, says so, and the batch ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_s3_delete_after_success_is_bounded() {
    let sqs = moto_sqs().await;
    let queue = sqs.queue("extended-delete-stall", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, bucket) = send_one_pointer(&sqs, &queue, "delete-stall", dir.path());
    let s3 = crate::common::proxy::FaultProxy::start(&sqs.endpoint).await;
    // the worker holds the batch until S3 has stalled
    let worker = worker(|_| Reply { delay: Duration::from_secs(2), ..Reply::ok("") }).await;
    let pipeline = http_pipeline(
        "delete-stall",
        &queue,
        &worker.url,
        &format!(
            "[pipelines.pollers]\nwait_time_secs = 1\n\
             [pipelines.large_payloads]\nfetch_timeout_secs = 3\ndelete_after_success = true\nallowed_buckets = [\"{bucket}\"]\n"
        ),
    );
    let poller = start_poller_with_aws(&sqs, 30, &format!("s3_endpoint_url = \"{}\"", s3.url), &pipeline).await;
    eventually("the batch at the worker", Duration::from_secs(30), || async { !worker.deliveries().is_empty() }).await;
    s3.set(crate::common::proxy::Fault::Hang);
    poller
        .wait_metric("sqs_poller_messages_deleted_total{pipeline=\"delete-stall\"}", 1.0, Duration::from_secs(30))
        .await;
    eventually("the S3 delete given up", Duration::from_secs(30), || async {
        poller.log_text().contains("not deleted within 3 s")
    })
    .await;
    // the batch ended: its slot is free and nothing is in flight
    eventually("no batch in flight", Duration::from_secs(10), || async {
        poller.metric("sqs_poller_in_flight_batches{pipeline=\"delete-stall\"}").await == 0.0
    })
    .await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert!(!log.contains("drain did not finish"), "the stalled delete held the drain:\n{log}");
    assert_eq!(worker.times_delivered().len(), 1);
    assert_eq!(sqs.counts(&queue).await, (0, 0), "the message itself was deleted");
}
