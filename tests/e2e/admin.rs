//! The admin API and health-gated polling: a paused pipeline sends no ReceiveMessage (its request
//! counter stays flat while a backlog waits) and runs at full speed after resume; with
//! `target.health_url`, pollers wait while the worker's health check fails, so no receive count is
//! spent on a worker that is down.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;

async fn receives(poller: &Poller, pipeline: &str) -> f64 {
    let text = poller.metrics_text().await;
    ["ok", "error"]
        .iter()
        .map(|o| {
            metric_value(
                &text,
                &format!("sqs_poller_sqs_requests_total{{pipeline=\"{pipeline}\",operation=\"ReceiveMessage\",outcome=\"{o}\"}}"),
            )
        })
        .sum()
}

async fn pipeline_json(poller: &Poller, name: &str) -> Value {
    let (status, body) =
        http_get(&format!("{}/pipelines/{name}", poller.admin_url())).await.expect("GET /pipelines/NAME");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_pipeline_sends_no_receive_and_resumes_at_full_speed() {
    let sqs = sqs().await;
    let queue = sqs.queue("paused", &[]).await;
    let worker = worker(|_| Reply::ok("")).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline("paced", &queue, &worker.url, "[pipelines.pollers]\nwait_time_secs = 1\n"),
    )
    .await;
    let admin = poller.admin_url();

    let (status, body) = http_post(&format!("{admin}/pipelines/paced/pause")).await.expect("POST pause");
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["state"], "paused", "{state}");
    assert_eq!(state["paused_by"], serde_json::json!(["operator"]), "{state}");
    assert_eq!(poller.metric("sqs_poller_paused{pipeline=\"paced\"}").await, 1.0);
    // the long polls in flight at the pause return within wait_time_secs
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = receives(&poller, "paced").await;
    sqs.send_bodies(&queue, &(0..300).map(|i| format!("waiting {i}")).collect::<Vec<_>>()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receives(&poller, "paced").await, before, "no ReceiveMessage while paused");
    assert_eq!(sqs.counts(&queue).await, (300, 0), "the backlog waits in the queue, untouched");

    let (status, _) = http_post(&format!("{admin}/pipelines/paced/resume")).await.expect("POST resume");
    assert_eq!(status, 200);
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"paced\"}", 300.0, Duration::from_secs(30)).await;
    assert_eq!(pipeline_json(&poller, "paced").await["state"], "running");
    assert_eq!(poller.metric("sqs_poller_paused{pipeline=\"paced\"}").await, 0.0);

    // the listing, and the errors an operator can make
    let (_, list) = http_get(&format!("{admin}/pipelines")).await.unwrap();
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["pipelines"][0]["name"], "paced", "{list}");
    assert!(list["pipelines"][0]["pollers"].as_u64().unwrap() >= 1, "{list}");
    // resident memory next to the byte budget (issue 32)
    let memory = &list["pipelines"][0]["memory"];
    assert_eq!(memory["max_outstanding_bytes"], 256 << 20, "{list}");
    assert!(memory["in_flight_bytes"].as_u64().is_some(), "{list}");
    assert!(memory["process_resident_bytes"].as_u64().unwrap() > 1 << 20, "{list}");
    assert_eq!(http_post(&format!("{admin}/pipelines/nope/pause")).await.unwrap().0, 404);
    assert_eq!(http_get(&format!("{admin}/pipelines/paced/pause")).await.unwrap().0, 405);
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// A health endpoint that answers 200 while `up`, else 503.
pub(crate) async fn health_endpoint(up: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let up = up.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let status = if up.load(Ordering::Relaxed) { 200 } else { 503 };
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pollers_wait_while_the_worker_health_check_fails() {
    let sqs = sqs().await;
    let queue = sqs.queue("health-gated", &[]).await;
    let worker = worker(|_| Reply::ok("")).await;
    let up = Arc::new(AtomicBool::new(false));
    let health = health_endpoint(up.clone()).await;
    let pipeline = http_pipeline_with_target(
        "gated",
        &queue,
        &worker.url,
        &format!("health_url = \"{health}\""),
        "[pipelines.pollers]\nwait_time_secs = 1\n",
    );
    let poller = start_poller(&sqs, 10, &pipeline).await;
    // the worker is down from the start: not one receive
    sqs.send_bodies(&queue, &(0..50).map(|i| format!("early {i}")).collect::<Vec<_>>()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = pipeline_json(&poller, "gated").await;
    assert_eq!(state["state"], "paused", "{state}");
    assert_eq!(state["paused_by"], serde_json::json!(["health_check"]), "{state}");
    assert_eq!(receives(&poller, "gated").await, 0.0, "no ReceiveMessage before the first health check passed");
    assert_eq!(sqs.counts(&queue).await, (50, 0));

    up.store(true, Ordering::Relaxed);
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"gated\"}", 50.0, Duration::from_secs(20)).await;

    // the worker goes down again
    up.store(false, Ordering::Relaxed);
    eventually("the pipeline pauses", Duration::from_secs(5), || async {
        pipeline_json(&poller, "gated").await["state"] == "paused"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = receives(&poller, "gated").await;
    sqs.send_bodies(&queue, &(0..20).map(|i| format!("late {i}")).collect::<Vec<_>>()).await;
    // down for ten seconds in all
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(receives(&poller, "gated").await, before, "no ReceiveMessage while the health check fails");
    up.store(true, Ordering::Relaxed);
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"gated\"}", 70.0, Duration::from_secs(20)).await;

    // no receive count was spent while the worker was down: every message arrived on its first
    let counts: Vec<String> = worker
        .deliveries()
        .iter()
        .flat_map(|d| {
            d.records()
                .iter()
                .map(|r| r["attributes"]["ApproximateReceiveCount"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(counts.len(), 70);
    assert!(counts.iter().all(|c| c == "1"), "{counts:?}");
    let log = poller.log_text();
    assert!(
        log.contains("health check fails: pollers paused") && log.contains("health check passes: pollers resume"),
        "{log}"
    );
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// The token of the tests below: long enough, never in the service's log.
const TOKEN: &str = "s3cr3t-t0ken-0123456789abcdef";

async fn state_of(url: &str, auth: &[(&str, &str)]) -> String {
    let (status, body) = http_request("GET", url, auth).await.expect("the admin API answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["state"].as_str().unwrap().to_string()
}

/// Issue 34: with `server.admin_token_file` every request needs `Authorization: Bearer TOKEN`;
/// a missing or wrong one is refused (401) and counted, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_wants_its_bearer_token_and_counts_every_refusal() {
    let sqs = sqs().await;
    let queue = sqs.queue("admin-token", &[]).await;
    let worker = worker(|_| Reply::ok("")).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let header = format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n[shutdown]\ngrace_period_secs = 5\n",
        sqs.endpoint,
        token_file.display()
    );
    let text =
        header.clone() + &http_pipeline("admintoken", &queue, &worker.url, "[pipelines.pollers]\nwait_time_secs = 1");
    let env = [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];
    let mut poller = spawn_poller_config(&header, &text, &env, &[]);
    poller.wait_listening().await;
    eventually("the admin API listens", Duration::from_secs(15), || async { poller.log_text().contains("admin API:") })
        .await;
    let url = format!("{}/pipelines/admintoken", poller.admin_url());
    let bearer = format!("Bearer {TOKEN}");
    let right = [("authorization", bearer.as_str())];

    let (status, body) = http_request("GET", &url, &[]).await.unwrap();
    assert_eq!(status, 401, "no token: {body}");
    assert!(body.contains("bearer token"), "{body}");
    let wrong = [("authorization", "Bearer s3cr3t-t0ken-0123456789abcdeX")];
    let (status, _) = http_request("POST", &format!("{url}/pause"), &wrong).await.unwrap();
    assert_eq!(status, 401, "a wrong token");
    let (status, _) = http_request("POST", &format!("{url}/pause"), &[("authorization", TOKEN)]).await.unwrap();
    assert_eq!(status, 401, "the token without `Bearer `");
    assert_ne!(state_of(&url, &right).await, "paused", "a refused POST changed nothing");

    let (status, body) = http_request("POST", &format!("{url}/pause"), &right).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(&url, &right).await, "paused");
    assert_eq!(poller.metric("sqs_poller_admin_refused_total{reason=\"token\"}").await, 3.0);
    assert_eq!(poller.metric("sqs_poller_admin_refused_total{reason=\"host\"}").await, 0.0);
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert!(!log.contains(TOKEN), "the token is never logged:\n{log}");
}

/// Issue 34: on loopback a web page in a browser on the same host must not reach the admin API:
/// a Host that is not a loopback name (DNS rebinding) and a foreign Origin (a cross-site POST)
/// are refused (403) and counted; a page of this machine (`http://localhost:3000`) may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_a_foreign_host_or_origin_is_refused() {
    let sqs = sqs().await;
    let queue = sqs.queue("admin-origin", &[]).await;
    let worker = worker(|_| Reply::ok("")).await;
    let poller = start_poller(
        &sqs,
        5,
        &http_pipeline("adminorigin", &queue, &worker.url, "[pipelines.pollers]\nwait_time_secs = 1"),
    )
    .await;
    let url = format!("{}/pipelines/adminorigin", poller.admin_url());
    let port = url.rsplit_once(':').unwrap().1.split('/').next().unwrap().to_string();

    let rebound = format!("attacker.example:{port}");
    let (status, body) = http_request("GET", &url, &[("host", &rebound)]).await.unwrap();
    assert_eq!(status, 403, "a rebound name: {body}");
    for origin in ["http://attacker.example", "null", "http://127.0.0.1.attacker.example"] {
        let (status, body) = http_request("POST", &format!("{url}/pause"), &[("origin", origin)]).await.unwrap();
        assert_eq!(status, 403, "origin {origin}: {body}");
    }
    assert_ne!(state_of(&url, &[]).await, "paused", "a refused POST changed nothing");
    for host in [format!("localhost:{port}"), format!("[::1]:{port}"), format!("127.0.0.1:{port}")] {
        let (status, body) = http_request("GET", &url, &[("host", &host)]).await.unwrap();
        assert_eq!(status, 200, "host {host}: {body}");
    }
    let (status, body) =
        http_request("POST", &format!("{url}/pause"), &[("origin", "http://localhost:3000")]).await.unwrap();
    assert_eq!(status, 200, "a page of this machine: {body}");
    assert_eq!(poller.metric("sqs_poller_admin_refused_total{reason=\"host\"}").await, 1.0);
    assert_eq!(poller.metric("sqs_poller_admin_refused_total{reason=\"origin\"}").await, 3.0);
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
