//! `sqs-poller redrive`: messages move from a dead-letter queue back, attributes kept.

use crate::common::*;

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

fn cli(sqs: &Sqs, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
        .args(args)
        .args(["--endpoint-url", &sqs.endpoint, "--region", "us-east-1"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("SQS_POLLER_CONFIG", "/nonexistent.toml")
        .output()
        .unwrap()
}

async fn send_dead(sqs: &Sqs, dlq: &str, body: &str, reason: Option<&str>) {
    let s = |v: &str| {
        aws_sdk_sqs::types::MessageAttributeValue::builder().data_type("String").string_value(v).build().unwrap()
    };
    let mut req = sqs.client.send_message().queue_url(dlq).message_body(body);
    if let Some(r) = reason {
        req = req
            .message_attributes("sqs-poller.reason", s(r))
            .message_attributes("sqs-poller.pipeline", s("orders"))
            .message_attributes("sqs-poller.receive-count", s("5"));
    }
    req.send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_stats_counts_by_reason_and_leaves_every_message() {
    let sqs = sqs().await;
    let dlq = sqs.queue("triage", &[]).await;
    for (reason, n) in [("HTTP 500: boom", 3), ("timed out after 30 s", 2), ("function error: KeyError", 1)] {
        for i in 0..n {
            send_dead(&sqs, &dlq, &format!("{{\"order\": {i}}}"), Some(reason)).await;
        }
    }
    send_dead(&sqs, &dlq, "moved by a redrive policy", None).await;
    let out = cli(&sqs, &["dlq", "stats", "--queue", &dlq, "--samples", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("7 message(s), all left in the queue"), "{stdout}");
    for (n, reason) in [(3, "HTTP 500: boom"), (2, "timed out after 30 s"), (1, "function error: KeyError")] {
        assert!(stdout.contains(&format!("{n:>8}  {reason}")), "{n} × {reason}:\n{stdout}");
    }
    assert!(stdout.contains("       1  (no sqs-poller reason"), "{stdout}");
    assert!(stdout.contains("       6  orders"), "by pipeline:\n{stdout}");
    assert!(stdout.contains("       7  < 1 hour"), "by age:\n{stdout}");
    assert!(stdout.contains("samples"), "{stdout}");
    // nothing consumed: every message is visible again at once
    assert_eq!(sqs.counts(&dlq).await, (7, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_with_a_pattern_moves_only_matching_messages_at_the_rate() {
    let sqs = sqs().await;
    let dlq = sqs.queue("pattern-dlq", &[]).await;
    let queue = sqs.queue("pattern-back", &[]).await;
    for i in 0..6 {
        send_dead(&sqs, &dlq, &format!("{{\"kind\": \"order\", \"n\": {i}}}"), Some("boom")).await;
        send_dead(&sqs, &dlq, &format!("{{\"kind\": \"refund\", \"n\": {i}}}"), Some("boom")).await;
    }
    let started = std::time::Instant::now();
    let out = cli(
        &sqs,
        &["redrive", "--from", &dlq, "--to", &queue, "--pattern", r#"{"body": {"kind": ["order"]}}"#, "--rate", "5"],
    );
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("moved 6 messages"), "{stdout}");
    let moved = sqs.take_all(&queue).await;
    assert_eq!(moved.len(), 6);
    assert!(moved.iter().all(|m| m.body().unwrap().contains("\"order\"")), "only orders moved");
    assert_eq!(sqs.counts(&dlq).await, (6, 0), "the refunds stay, visible");
    // six sends at five a second: the last one no sooner than 1 s after the first
    assert!(took >= std::time::Duration::from_secs(1), "{took:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not matching"), "the progress says what was left:\n{stderr}");
    // a broken pattern is a usage error
    let bad = cli(&sqs, &["redrive", "--from", &dlq, "--to", &queue, "--pattern", "{"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// Issue 36: a redrive into a FIFO queue keeps each message's group (in order) and deduplicates
/// by its id, and the copy carries when the message was first sent: a dead-letter copy's
/// `sqs-poller.first-sent` is kept, else the dead-letter message's own `SentTimestamp` is written
/// (`retry.max_age_secs` counts from it). On LocalStack, which enforces FIFO's parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_into_a_fifo_queue_keeps_groups_order_and_the_first_send_on_localstack() {
    use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
    let sqs = localstack().await;
    let fifo = [(QueueAttributeName::FifoQueue, "true")];
    let dlq = sqs.queue("redrive-fifo-dlq", &fifo).await;
    let queue = sqs.queue("redrive-fifo", &fifo).await;
    let first_sent = "1733000000000";
    // eight of group a: sent all at once they arrived out of order (3 runs of 3 before the fix;
    // with three messages, 1 run in a few); one at a time, in order
    let order: Vec<(String, &str)> = std::iter::once(("a1".to_string(), "a"))
        .chain(std::iter::once(("b1".to_string(), "b")))
        .chain((2..=8).map(|i| (format!("a{i}"), "a")))
        .collect();
    for (body, group) in order.iter().map(|(b, g)| (b.as_str(), *g)) {
        let mut req = sqs
            .client
            .send_message()
            .queue_url(&dlq)
            .message_body(body)
            .message_group_id(group)
            .message_deduplication_id(body);
        if body == "a1" {
            let v = aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(first_sent)
                .build()
                .unwrap();
            req = req.message_attributes("sqs-poller.first-sent", v);
        }
        req.send().await.unwrap();
    }
    let out = cli(&sqs, &["redrive", "--from", &dlq, "--to", &queue]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut moved = Vec::new();
    for _ in 0..10 {
        moved.extend(sqs.take_all(&queue).await);
        if moved.len() >= 9 {
            break;
        }
    }
    let group_of = |m: &aws_sdk_sqs::types::Message| {
        m.attributes().and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId)).cloned().unwrap_or_default()
    };
    let in_group =
        |g: &str| moved.iter().filter(|m| group_of(m) == g).filter_map(|m| m.body.clone()).collect::<Vec<_>>();
    assert_eq!(in_group("a"), (1..=8).map(|i| format!("a{i}")).collect::<Vec<_>>(), "group a, in order");
    assert_eq!(in_group("b"), vec!["b1"]);
    for m in &moved {
        let carried =
            m.message_attributes().and_then(|a| a.get("sqs-poller.first-sent")).and_then(|v| v.string_value());
        let carried: u64 = carried.unwrap_or_else(|| panic!("{:?} carries no first send", m.body)).parse().unwrap();
        if m.body.as_deref() == Some("a1") {
            assert_eq!(carried.to_string(), first_sent, "a copy's first send is kept");
        } else {
            assert!(carried > 1_733_000_000_000, "the dead-letter message's SentTimestamp: {carried}");
        }
    }
    assert_eq!(sqs.counts(&dlq).await, (0, 0));
}
