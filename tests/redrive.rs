//! `sqs-poller redrive`: messages move from a dead-letter queue back, attributes kept.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_messages_back_with_their_attributes() {
    let sqs = sqs().await;
    let dlq = sqs.queue("redrive-dlq", &[]).await;
    let queue = sqs.queue("redrive-back", &[]).await;
    for i in 0..25 {
        sqs.client
            .send_message()
            .queue_url(&dlq)
            .message_body(format!("body {i}"))
            .message_attributes(
                "tenant",
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("acme")
                    .build()
                    .unwrap(),
            )
            .message_attributes(
                "sqs-poller.reason",
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("boom")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    let run = |limit: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
            .args(["redrive", "--from", &dlq, "--to", &queue, "--endpoint-url", &sqs.endpoint, "--region", "us-east-1"])
            .args(if limit.is_empty() { vec![] } else { vec!["--limit", limit] })
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("SQS_POLLER_CONFIG", "/nonexistent.toml")
            .output()
            .unwrap()
    };
    let out = run("20");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("moved 20 messages"), "{stdout}");
    assert_eq!(sqs.counts(&queue).await, (20, 0));
    assert_eq!(sqs.counts(&dlq).await, (5, 0), "the rest is visible again in the source");

    let out = run("");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("moved 5 messages"));
    let moved = sqs.take_all(&queue).await;
    assert_eq!(moved.len(), 25);
    for m in &moved {
        let attrs = m.message_attributes().unwrap();
        assert_eq!(attrs["tenant"].string_value(), Some("acme"));
        assert!(!attrs.contains_key("sqs-poller.reason"), "dead-letter attributes are dropped");
    }
    assert_eq!(sqs.counts(&dlq).await, (0, 0));
}
