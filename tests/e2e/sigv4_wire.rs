//! The SQS client signs with its own SigV4 signer (src/aws/sigv4.rs, the signing key kept for
//! the day). No emulator checks signatures, so this test drains a queue through the strict-AWS
//! proxy (tests/e2e/common/strict_aws.rs), which computes every request's signature again with
//! `aws-sigv4` from what arrived on the wire and forwards it only when they match, the session
//! token belonging to the key. A drain through it must see every request verified.

use std::time::Duration;

use crate::common::strict_aws::StrictAws;
use crate::common::*;

async fn drain_through_the_proxy(token: Option<&'static str>) {
    let sqs = sqs().await;
    let queue = sqs.queue("sigv4", &[]).await;
    let bodies: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let proxy = StrictAws::start(&sqs.endpoint).await;
    // temporary credentials: a key of their own, whose token the proxy holds to it
    let keys = tempfile::tempdir().unwrap();
    let mut env: Vec<(&str, &str)> = Vec::new();
    if let Some(token) = token {
        let file = keys.path().join("keys.jsonl");
        let key =
            serde_json::json!({"AccessKeyId": "ASIATEMPORARY", "SecretAccessKey": "temporary", "SessionToken": token});
        std::fs::write(&file, format!("{key}\n")).unwrap();
        proxy.set_keys_file(file);
        env = vec![
            ("AWS_ACCESS_KEY_ID", "ASIATEMPORARY"),
            ("AWS_SECRET_ACCESS_KEY", "temporary"),
            ("AWS_SESSION_TOKEN", token),
        ];
    }
    let w = worker(|_| Reply::ok("")).await;
    let mut p = spawn_poller_with_env(
        &proxy.url,
        5,
        "",
        &format!(
            "[[pipelines]]\nname = \"p\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.target]\ntype = \"http\"\nurl = \"{}\"\n",
            w.url
        ),
        &env,
    );
    p.wait_listening().await;
    let deleted =
        p.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"p\"}", 60.0, Duration::from_secs(30)).await;
    let log = p.log_text();
    p.stop().await;
    let (verified, rejected) = {
        let seen = proxy.state.lock().unwrap();
        (seen.verified.clone(), seen.rejected.clone())
    };
    assert!(rejected.is_empty(), "requests with a wrong signature: {rejected:?}\nlog:\n{log}");
    assert_eq!(deleted, 60.0, "log:\n{log}");
    // the hot calls from sqs-poller's own JSON client (src/sqs_json.rs), the others from the SDK
    for (op, sender) in [
        ("GetQueueAttributes", "aws-sdk-rust/"),
        ("ReceiveMessage", "sqs-poller/"),
        ("DeleteMessageBatch", "sqs-poller/"),
    ] {
        let prefix = format!("{op} by {sender}");
        assert!(
            verified.iter().any(|t| t.starts_with(&prefix)),
            "no {op} from {sender} went through the verifying proxy: {verified:?}"
        );
    }
    assert_eq!(sqs.counts(&queue).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sqs_request_carries_a_signature_aws_sigv4_agrees_with() {
    drain_through_the_proxy(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_credentials_sign_their_session_token_too() {
    drain_through_the_proxy(Some("FwoGZXIvYXdzE+session/token==")).await;
}
