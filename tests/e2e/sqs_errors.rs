//! An unreachable SQS endpoint is retried with backoff, reported, and survives a clean stop.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_retried_and_reported() {
    // nothing listens on this port
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let mut poller = spawn_poller(
        &endpoint,
        5,
        &http_pipeline(
            "down",
            &format!("{endpoint}/000000000000/q"),
            "http://127.0.0.1:9/",
            "[pipelines.pollers]\nwait_time_secs = 1",
        ),
    );
    poller.wait_listening().await;
    let series = "sqs_poller_sqs_requests_total{pipeline=\"down\",operation=\"GetQueueAttributes\",outcome=\"error\"}";
    let mut last = 0.0;
    for _ in 0..100 {
        if let Some((_, text)) = http_get(&format!("{}/metrics", poller.listen)).await {
            last = metric_value(&text, series);
            if last >= 3.0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last >= 3.0, "errors counted: {last}; log:\n{}", poller.log_text());
    assert_eq!(http_get(&format!("{}/healthz", poller.listen)).await.map(|r| r.0), Some(200));
    let ready = http_get(&format!("{}/readyz", poller.listen)).await.unwrap();
    assert_eq!(ready.0, 503);
    assert!(ready.1.contains("down"), "{}", ready.1);
    let log = poller.log_text();
    assert!(log.contains("queue not reachable yet"), "{log}");
    let (status, took, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    // the retry's backoff does not hold the stop up to the 5 s grace period
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_does_not_exist_is_a_fatal_error_naming_it() {
    let sqs = sqs().await;
    let missing = format!("{}/000000000000/{}", sqs.endpoint, unique("missing"));
    let mut poller = spawn_poller(
        &sqs.endpoint,
        5,
        &http_pipeline("missing", &missing, "http://127.0.0.1:9/", "[pipelines.pollers]\nwait_time_secs = 1"),
    );
    let status = tokio::time::timeout(Duration::from_secs(15), poller.child.wait()).await.expect("exits").unwrap();
    assert_eq!(status.code(), Some(1));
    let log = poller.log_text();
    assert!(log.contains("pipeline missing") && log.contains(&missing), "{log}");
    // a person can read it: the operation, the code and the message, not the SDK's whole
    // debug structure with the response headers (about 2 KB on one line before)
    let fatal = log.lines().find(|l| l.contains("GetQueueAttributes failed")).unwrap_or_else(|| panic!("{log}"));
    assert!(fatal.contains("NonExistentQueue") || fatal.contains("QueueDoesNotExist"), "{fatal}");
    assert!(!fatal.contains("ErrorMetadata") && !fatal.contains("headers"), "{fatal}");
    assert!(fatal.len() < 600, "{} bytes: {fatal}", fatal.len());
    println!("the fatal line ({} bytes): {fatal}", fatal.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:0\"\n{}",
            free_port(),
            http_pipeline("json", &format!("{endpoint}/000000000000/q"), "http://127.0.0.1:9/", "")
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
        .args(["run", "--config"])
        .arg(&config)
        .env("SQS_POLLER_LOG_FORMAT", "json")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "queue not reachable yet" && l["pipeline"] == "json" && l["level"] == "WARN"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pipelines_fatal_error_stops_the_others_cleanly_with_exit_1() {
    let sqs = sqs().await;
    let good = sqs.queue("good", &[]).await;
    sqs.send_bodies(&good, &(0..20).map(|i| format!("g{i}")).collect::<Vec<_>>()).await;
    let worker = worker(|_| Reply { status: 200, body: String::new(), delay: Duration::from_millis(300) }).await;
    let missing = format!("{}/000000000000/{}", sqs.endpoint, unique("gone"));
    let pipelines = format!(
        "{}{}",
        http_pipeline(
            "good",
            &good,
            &worker.url,
            "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.batch]\nsize = 5"
        ),
        http_pipeline("gone", &missing, &worker.url, "[pipelines.pollers]\nwait_time_secs = 1")
    );
    let mut poller = spawn_poller(&sqs.endpoint, 5, &pipelines);
    let status = tokio::time::timeout(Duration::from_secs(15), poller.child.wait()).await.expect("exits").unwrap();
    let log = poller.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("pipeline gone") && log.contains(&missing), "{log}");
    assert!(log.contains("pipeline drained"), "the good pipeline drained: {log}");
    // nothing of the good queue is lost or left hidden: processed (and deleted) or visible now
    let processed = worker.times_delivered().len();
    let left = sqs.take_all(&good).await.len();
    assert_eq!(processed + left, 20, "{processed} processed, {left} visible; log:\n{log}");
}

/// The JSON client reads SQS's error answers as the SDK does: a missing queue is a refusal with
/// its code (not retried), on fauxqs and on LocalStack; a refused connection is a retryable
/// connection error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_client_names_sqs_errors_by_their_code() {
    use sqs_poller::sqs::SqsErrorKind;
    for sqs in [sqs().await, localstack().await] {
        let json = sqs.json_client().await;
        let missing = format!("{}/000000000000/{}", sqs.endpoint, unique("missing"));
        let e = json
            .receive(&missing, Duration::ZERO, None, None, Duration::from_secs(10))
            .await
            .expect_err("a receive from a queue that does not exist");
        assert_eq!((e.kind, e.is_retryable()), (SqsErrorKind::Rejected, false), "{}: {e:?}", sqs.endpoint);
        let code = e.code.clone().unwrap_or_default();
        assert!(
            code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist"),
            "{}: code {code:?} of {e}",
            sqs.endpoint
        );
        let e = json
            .delete_batch(&missing, &[("0".to_string(), "handle")], Duration::from_secs(10))
            .await
            .expect_err("a delete in a queue that does not exist");
        assert_eq!(e.kind, SqsErrorKind::Rejected, "{e:?}");
    }
    let nowhere = Sqs { endpoint: format!("http://127.0.0.1:{}", free_port()), client: sqs().await.client };
    let e = nowhere
        .json_client()
        .await
        .receive(&format!("{}/000000000000/q", nowhere.endpoint), Duration::ZERO, None, None, Duration::from_secs(5))
        .await
        .expect_err("nothing listens there");
    assert_eq!((e.kind, e.is_retryable()), (SqsErrorKind::Connection, true), "{e:?}");
}

/// Issue 30: the JSON client read an answer of any size. A server answering a receive with an
/// endless 200 is refused once past SQS's largest answer, named, and not read to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_sqs_ever_sends_is_refused_unread() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let written = Arc::new(AtomicUsize::new(0));
    let total = 256usize << 20;
    let server = tokio::spawn({
        let written = written.clone();
        async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 64 * 1024];
            let _ = s.read(&mut request).await.unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {total}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b' '; 1 << 20];
            while written.load(Ordering::SeqCst) < total {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
                written.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        }
    });
    let hostile = Sqs { endpoint: endpoint.clone(), client: sqs().await.client };
    let e = hostile
        .json_client()
        .await
        .receive(&format!("{endpoint}/000000000000/q"), Duration::ZERO, None, None, Duration::from_secs(120))
        .await
        .expect_err("an endless answer");
    assert_eq!(e.kind, sqs_poller::sqs::SqsErrorKind::BadResponse, "{e:?}");
    assert!(e.to_string().contains("longer than 32 MiB"), "{e}");
    server.await.unwrap();
    let sent = written.load(Ordering::SeqCst);
    assert!(sent < total, "the whole {} MiB answer was read", sent >> 20);
}
