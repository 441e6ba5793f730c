//! The AWS edge against what only real AWS enforces, through the strict-AWS proxy
//! (tests/e2e/common/strict_aws.rs): signatures checked with `aws-sigv4` against the key's own
//! secret, session tokens bound to their key, expired keys refused, a clock that can be
//! skewed, chosen error answers. The emulator behind it checks none of this.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::strict_aws::{Injection, StrictAws};
use crate::common::*;

/// A `credential_process` whose every call prints a new key living `life_secs`, writes it to
/// `DIR/keys.jsonl` (for the proxy) and counts its calls in `DIR/count`.
fn rotating_credentials(dir: &Path, life_secs: u64) -> std::path::PathBuf {
    let script = dir.join("creds.py");
    std::fs::write(
        &script,
        format!(
            r#"import datetime, json, os, sys
d = {dir:?}
count = os.path.join(d, "count")
n = int(open(count).read()) if os.path.exists(count) else 0
open(count, "w").write(str(n + 1))
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds={life_secs})
key = {{"Version": 1, "AccessKeyId": "ASIAROTATING%d" % n, "SecretAccessKey": "secret-%d" % n,
       "SessionToken": "token-%d" % n, "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}
with open(os.path.join(d, "keys.jsonl"), "a") as f:
    f.write(json.dumps(key) + "\n")
print(json.dumps(key))
"#,
            dir = dir.display().to_string()
        ),
    )
    .unwrap();
    let config = dir.join("config");
    std::fs::write(&config, format!("[default]\ncredential_process = python3 {}\n", script.display())).unwrap();
    config
}

fn header(endpoint: Option<&str>) -> String {
    let endpoint = endpoint.map(|e| format!("endpoint_url = \"{e}\"\n")).unwrap_or_default();
    format!(
        "[aws]\nregion = \"us-east-1\"\n{endpoint}[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[shutdown]\ngrace_period_secs = 5\n"
    )
}

fn pipeline(queue: &str, worker: &str) -> String {
    format!(
        "[[pipelines]]\nname = \"p\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.target]\ntype = \"http\"\nurl = \"{worker}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_credentials_are_refreshed_ahead_of_expiry_never_per_request() {
    let sqs = sqs().await;
    let queue = sqs.queue("rotating", &[]).await;
    let proxy = StrictAws::start(&sqs.endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let config = rotating_credentials(dir.path(), 40);
    proxy.set_keys_file(dir.path().join("keys.jsonl"));
    let w = worker(|_| Reply::ok("")).await;
    let h = header(Some(&proxy.url));
    let mut p = spawn_poller_config(
        &h,
        &format!("{h}{}", pipeline(&queue, &w.url)),
        &[("AWS_CONFIG_FILE", config.to_str().unwrap()), ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")],
        &[],
    );
    p.wait_listening().await;
    // 90 s of traffic: a few messages every second
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(90) {
        let bodies: Vec<String> = (0..5).map(|i| format!("m{sent}-{i}")).collect();
        sqs.send_bodies(&queue, &bodies).await;
        sent += bodies.len();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eventually("every message deleted", Duration::from_secs(30), || async {
        p.metric("sqs_poller_messages_deleted_total{pipeline=\"p\"}").await >= sent as f64
    })
    .await;
    let log = p.log_text();
    p.stop().await;
    let runs: usize = std::fs::read_to_string(dir.path().join("count")).unwrap().trim().parse().unwrap();
    let s = proxy.state.lock().unwrap();
    assert!(
        s.rejected.is_empty(),
        "requests the proxy refused: {:?}\nlog:\n{log}",
        &s.rejected[..s.rejected.len().min(10)]
    );
    assert_eq!(s.expired, 0);
    let requests = s.verified.len();
    // 90 s of 40-second keys refreshed 10 s ahead: about one run per 30 s, not one per request
    assert!(
        (3..=6).contains(&runs),
        "the credential process ran {runs} times for {requests} requests in 90 s\nlog:\n{log}"
    );
    assert!(requests > 100, "{requests}");
    let times = w.times_delivered();
    assert_eq!(times.len(), sent, "every message processed");
    assert!(times.values().all(|&n| n == 1), "each once: {times:?}");
    println!("{requests} requests in 90 s, the credential process ran {runs} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_ten_minutes_off_is_corrected_after_one_rejected_attempt() {
    let sqs = sqs().await;
    let queue = sqs.queue("skew", &[]).await;
    let bodies: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let proxy = StrictAws::start(&sqs.endpoint).await;
    proxy.set_skew(600);
    let w = worker(|_| Reply::ok("")).await;
    let mut p = spawn_poller_with_env(&proxy.url, 5, "", &pipeline(&queue, &w.url), &[]);
    p.wait_listening().await;
    eventually("every message deleted", Duration::from_secs(30), || async {
        p.metric("sqs_poller_messages_deleted_total{pipeline=\"p\"}").await >= 40.0
    })
    .await;
    let log = p.log_text();
    let failed = p.metric("sqs_poller_messages_failed_total{pipeline=\"p\"}").await;
    p.stop().await;
    let (skew_rejections, rejected) = {
        let s = proxy.state.lock().unwrap();
        (s.skew_rejections, s.rejected.clone())
    };
    // the SDK client and the JSON client share one clock: at most one refusal each
    assert!(
        (1..=2).contains(&skew_rejections),
        "{skew_rejections} requests refused for their clock: {rejected:?}\nlog:\n{log}"
    );
    assert_eq!(rejected.len(), skew_rejections, "{rejected:?}");
    assert!(log.contains("the host clock differs from AWS's by"), "log:\n{log}");
    assert_eq!(w.times_delivered().len(), 40);
    assert_eq!(failed, 0.0, "no message failed (and so none spent a receive towards a dead-letter queue)\nlog:\n{log}");
    assert_eq!(sqs.counts(&queue).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_endpoint_url_sqs_receives_every_sqs_call() {
    let sqs = sqs().await;
    let queue = sqs.queue("endpoint", &[]).await;
    let bodies: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let proxy = StrictAws::start(&sqs.endpoint).await;
    let w = worker(|_| Reply::ok("")).await;
    // no endpoint_url anywhere in the file: only the SDK's service-specific variable
    let h = header(None);
    let mut p = spawn_poller_config(
        &h,
        &format!("{h}{}", pipeline(&queue, &w.url)),
        &[("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_ENDPOINT_URL_SQS", &proxy.url)],
        &[],
    );
    p.wait_listening().await;
    eventually("every message deleted", Duration::from_secs(30), || async {
        p.metric("sqs_poller_messages_deleted_total{pipeline=\"p\"}").await >= 20.0
    })
    .await;
    let log = p.log_text();
    p.stop().await;
    for op in ["GetQueueAttributes", "ReceiveMessage", "DeleteMessageBatch"] {
        assert!(proxy.verified(op) > 0, "no {op} reached AWS_ENDPOINT_URL_SQS\nlog:\n{log}");
    }
    assert!(proxy.state.lock().unwrap().rejected.is_empty());
    assert_eq!(sqs.counts(&queue).await, (0, 0));
}

fn kms(query_code: &str, type_name: &str, remaining: usize) -> Injection {
    Injection {
        operation: "ReceiveMessage".into(),
        status: 400,
        query_code: query_code.into(),
        type_name: format!("com.amazonaws.sqs#{type_name}"),
        remaining,
        lose_answer: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_throttling_is_a_throttle_and_kms_access_denied_makes_the_pipeline_not_ready() {
    let sqs = sqs().await;
    let queue = sqs.queue("kms", &[]).await;
    let bodies: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let proxy = StrictAws::start(&sqs.endpoint).await;
    proxy.inject(kms("KMS.ThrottlingException", "KmsThrottled", 3));
    let w = worker(|_| Reply::ok("")).await;
    let mut p = spawn_poller_with_env(&proxy.url, 5, "", &pipeline(&queue, &w.url), &[]);
    p.wait_listening().await;
    eventually("every message deleted after the throttling", Duration::from_secs(30), || async {
        p.metric("sqs_poller_messages_deleted_total{pipeline=\"p\"}").await >= 10.0
    })
    .await;
    let throttled =
        p.metric("sqs_poller_sqs_errors_total{pipeline=\"p\",operation=\"ReceiveMessage\",kind=\"throttled\"}").await;
    assert!(throttled >= 3.0, "KMS throttling counted as a throttle: {throttled}\n{}", p.metrics_text().await);

    // a key the role may not use: nothing can be received, /readyz says so, the log names the code
    proxy.inject(kms("KMS.AccessDeniedException", "KmsAccessDenied", usize::MAX));
    let readyz = format!("{}/readyz", p.listen);
    eventually("/readyz 503", Duration::from_secs(30), || async { matches!(http_get(&readyz).await, Some((503, _))) })
        .await;
    let log = p.log_text();
    assert!(
        log.lines().any(|l| l.contains("cannot consume its queue") && l.contains("KMS.AccessDeniedException")),
        "log:\n{log}"
    );
    proxy.clear_injections();
    eventually("/readyz 200 again", Duration::from_secs(30), || async {
        matches!(http_get(&readyz).await, Some((200, _)))
    })
    .await;
    p.stop().await;
}

/// A FIFO receive whose answer is lost (SQS took the messages, the connection broke) is retried
/// with the same `ReceiveRequestAttemptId`, as the SQS reference asks, so that SQS hands the
/// same messages back instead of keeping them and their group hidden for the visibility
/// timeout; the receive after an answered one carries a new id. No emulator deduplicates by
/// attempt id (LocalStack and fauxqs ignore it), so the witness is the proxy's record of what
/// was sent; the messages still all arrive, once their visibility timeout (5 s) ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_receive_whose_answer_is_lost_is_retried_with_the_same_attempt_id() {
    let sqs = sqs().await;
    let queue = sqs
        .queue(
            "attempt-id",
            &[
                (aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true"),
                (aws_sdk_sqs::types::QueueAttributeName::ContentBasedDeduplication, "true"),
                (aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "5"),
            ],
        )
        .await;
    for i in 0..3 {
        sqs.client
            .send_message()
            .queue_url(&queue)
            .message_group_id("g")
            .message_body(format!("m-{i}"))
            .send()
            .await
            .unwrap();
    }
    let proxy = StrictAws::start(&sqs.endpoint).await;
    proxy.inject(Injection {
        operation: "ReceiveMessage".into(),
        status: 500,
        query_code: "InternalError".into(),
        type_name: "com.amazonaws.sqs#InternalError".into(),
        remaining: 1,
        lose_answer: true,
    });
    let w = worker(|_| Reply::ok("")).await;
    let one_poller = format!(
        "[[pipelines]]\nname = \"p\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nmin = 1\nmax = 1\nwait_time_secs = 1\n[pipelines.target]\ntype = \"http\"\nurl = \"{}\"\n",
        w.url
    );
    let mut p = spawn_poller_with_env(&proxy.url, 5, "", &one_poller, &[]);
    p.wait_listening().await;
    eventually("every message deleted", Duration::from_secs(30), || async {
        p.metric("sqs_poller_messages_deleted_total{pipeline=\"p\"}").await >= 3.0
    })
    .await;
    let log = p.log_text();
    p.stop().await;
    let ids = proxy.state.lock().unwrap().attempt_ids.clone();
    assert!(ids.len() >= 3, "{ids:?}\nlog:\n{log}");
    assert!(ids.iter().all(Option::is_some), "every FIFO receive carries an attempt id: {ids:?}");
    assert_eq!(ids[1], ids[0], "the retry of the lost receive reuses its id: {ids:?}");
    assert_ne!(ids[2], ids[1], "the receive after an answered one has a new id: {ids:?}");
    assert_eq!(w.deliveries().iter().map(|d| d.records().len()).sum::<usize>(), 3, "each message once");
}

/// A client of `service` ("sqs" or "lambda") signing as `key` (`secret`, `token`) for `region`.
fn signed_as(url: &str, region: &str, key: &str, secret: &str, token: Option<&str>) -> aws_sdk_sqs::Client {
    let credentials = aws_sdk_sqs::config::Credentials::new(key, secret, token.map(str::to_string), None, "test");
    aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new(region.to_string()))
            .credentials_provider(credentials)
            .endpoint_url(url)
            .build(),
    )
}

/// The error code of a refused call, as the SDK read it.
async fn refusal(client: &aws_sdk_sqs::Client, queue: &str) -> String {
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    match client.get_queue_attributes().queue_url(queue).send().await {
        Ok(_) => "accepted".into(),
        Err(e) => e.code().unwrap_or("no code").to_string(),
    }
}

/// Negative controls of the witness: the strict-AWS proxy refuses what real AWS refuses — a
/// wrong secret, a session token of another key, a key expired by AWS's clock (though not by the
/// date the request claims), a key whose expiry cannot be read, a scope of another region or
/// service — and lets the right key through. Without these, a proxy that checked nothing would
/// pass every other test of this file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_strict_aws_proxy_refuses_what_aws_refuses() {
    let sqs = sqs().await;
    let queue = sqs.queue("witness", &[]).await;
    let proxy = StrictAws::start(&sqs.endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.jsonl");
    let at = |secs: i64| {
        let t = if secs >= 0 {
            std::time::SystemTime::now() + Duration::from_secs(secs as u64)
        } else {
            std::time::SystemTime::now() - Duration::from_secs(secs.unsigned_abs())
        };
        aws_smithy_types::DateTime::from(t).fmt(aws_smithy_types::date_time::Format::DateTime).unwrap()
    };
    let key = |id: &str, expiration: &str| {
        format!(
            "{{\"AccessKeyId\": \"{id}\", \"SecretAccessKey\": \"secret-{id}\", \"SessionToken\": \"token-{id}\", \"Expiration\": \"{expiration}\"}}\n"
        )
    };
    std::fs::write(
        &keys,
        [
            key("ASIAVALID", &at(3600)),
            key("ASIAEXPIRED", &at(-60)),
            key("ASIASOON", &at(60)),
            key("ASIABROKEN", "tomorrow"),
        ]
        .concat(),
    )
    .unwrap();
    proxy.set_keys_file(keys);
    let q = queue.replace(&sqs.endpoint, &proxy.url);
    let url = &proxy.url;
    // the positive controls
    assert_eq!(refusal(&signed_as(url, "us-east-1", "test", "test", None), &q).await, "accepted");
    let valid = signed_as(url, "us-east-1", "ASIAVALID", "secret-ASIAVALID", Some("token-ASIAVALID"));
    assert_eq!(refusal(&valid, &q).await, "accepted");
    // the refusals
    let cases = [
        ("a wrong secret", signed_as(url, "us-east-1", "test", "not-the-secret", None), "SignatureDoesNotMatch"),
        (
            "another key's session token",
            signed_as(url, "us-east-1", "ASIAVALID", "secret-ASIAVALID", Some("token-ASIASOON")),
            "InvalidClientTokenId",
        ),
        (
            "an expired key",
            signed_as(url, "us-east-1", "ASIAEXPIRED", "secret-ASIAEXPIRED", Some("token-ASIAEXPIRED")),
            "ExpiredToken",
        ),
        (
            "an Expiration that does not parse",
            signed_as(url, "us-east-1", "ASIABROKEN", "secret-ASIABROKEN", Some("token-ASIABROKEN")),
            "InvalidClientTokenId",
        ),
        ("an unknown key", signed_as(url, "us-east-1", "AKIAUNKNOWN", "x", None), "InvalidClientTokenId"),
        ("another region's scope", signed_as(url, "eu-west-1", "test", "test", None), "SignatureDoesNotMatch"),
    ];
    for (what, client, code) in &cases {
        assert_eq!(refusal(client, &q).await, *code, "{what}: {:?}", proxy.state.lock().unwrap().rejected.last());
    }
    // expired by AWS's clock two minutes ahead, though not by the request's own date
    let soon = signed_as(url, "us-east-1", "ASIASOON", "secret-ASIASOON", Some("token-ASIASOON"));
    assert_eq!(refusal(&soon, &q).await, "accepted");
    proxy.set_skew(120);
    assert_eq!(refusal(&soon, &q).await, "ExpiredToken", "expiry is AWS's clock's, not the request's date");
    proxy.set_skew(0);
    // another service's scope: a Lambda client signs for "lambda"
    let lambda = aws_sdk_lambda::Client::from_conf(
        aws_sdk_lambda::Config::builder()
            .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
            .region(aws_sdk_lambda::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_lambda::config::Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(url)
            .build(),
    );
    assert!(lambda.list_functions().send().await.is_err(), "a request scoped to lambda");
    let rejected = proxy.state.lock().unwrap().rejected.clone();
    assert!(
        rejected.last().is_some_and(|r| r.contains("scoped to us-east-1/sqs, not us-east-1/lambda")),
        "{rejected:?}"
    );
    assert_eq!(rejected.len(), cases.len() + 2, "every refusal recorded: {rejected:?}");
}

/// A batch call over many entries (a heartbeat round over 1,000 leases, the deletes of a batch of
/// 1,000) sends its requests of ten at most `BATCH_CALLS_AT_ONCE` at a time: all at once, a
/// round opened a connection per ten leases (100 here, a TLS handshake each on real SQS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_call_over_a_thousand_entries_keeps_its_requests_in_flight_bounded() {
    use sqs_poller::sqs::{Queue, SqsQueue, BATCH_CALLS_AT_ONCE};
    let sqs = sqs().await;
    let url = sqs.queue("many", &[]).await;
    let bodies: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    sqs.send_bodies(&url, &bodies).await;
    let proxy = StrictAws::start(&sqs.endpoint).await;
    let through = Sqs { endpoint: proxy.url.clone(), client: sqs.client.clone() };
    let clients = through.clients().await;
    let queue = SqsQueue::new(&clients, url.clone(), sqs_poller::metrics::PipelineMetrics::new("many", 1, 1, 1).sqs);
    let mut handles = Vec::new();
    for _ in 0..1000 {
        if handles.len() == 1000 {
            break;
        }
        let got = Queue::receive(&queue, Duration::from_secs(1), Some(Duration::from_secs(300))).await.unwrap();
        handles.extend(got.iter().map(|m| m.receipt_handle().unwrap().to_string()));
    }
    assert_eq!(handles.len(), 1000, "all received");
    let entries: Vec<(&str, i32)> = handles.iter().map(|h| (h.as_str(), 600)).collect();
    assert!(queue.change_visibility(&entries).await.is_empty(), "every extension succeeds");
    let receipts: Vec<&str> = handles.iter().map(String::as_str).collect();
    assert!(queue.delete(&receipts).await.is_empty(), "every delete succeeds");
    {
        let s = proxy.state.lock().unwrap();
        assert!(s.rejected.is_empty(), "{:?}", s.rejected);
        for operation in ["ChangeMessageVisibilityBatch", "DeleteMessageBatch"] {
            let sent = s.verified.iter().filter(|v| v.starts_with(&format!("{operation} by"))).count();
            assert_eq!(sent, 100, "{operation}: requests of ten");
            let most = s.most_open[operation];
            assert!(most <= BATCH_CALLS_AT_ONCE, "{operation}: {most} requests at once");
        }
    }
    assert_eq!(sqs.counts(&url).await, (0, 0));
}
