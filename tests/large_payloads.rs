//! Large payloads through S3: messages sent by AWS's own Python SQS Extended Client
//! (`amazon-sqs-extended-client` from PyPI, in .local/venv) into moto's SQS and S3 reach the worker
//! with the real payload in `body`, byte for byte (2 MB and 20 MB); the objects are deleted after
//! success when asked; a pointer whose object is gone fails only its own message.

mod common;

use std::time::Duration;

use common::*;

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
    let python = python_with_awslambdaric();
    let sqs = moto_sqs().await;
    let queue = sqs.queue("extended", &[]).await;
    let bucket = unique("payloads");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&python)
        .args(["-c", PRODUCER, &queue, &bucket, dir.path().to_str().unwrap()])
        .env("AWS_ENDPOINT_URL", &sqs.endpoint)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the extended client's producer failed (scripts/install-services.sh installs amazon-sqs-extended-client): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let worker = worker(|_| Reply::ok("")).await;
    let pipeline = http_pipeline(
        "extended",
        &queue,
        &worker.url,
        "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 60\nmax_backoff_secs = 60\n\
         [pipelines.large_payloads]\ndelete_after_success = true\n",
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
