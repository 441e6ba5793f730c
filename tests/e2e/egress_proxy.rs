//! Egress proxies (issue 34): in a network that leaves only through a proxy, every client of the
//! service goes through the one the environment names (`HTTP_PROXY`, `HTTPS_PROXY`), as curl and
//! the AWS SDKs of other languages do — SQS's hot calls (the lean client), its other calls and
//! S3/Lambda (the AWS SDK's client), the `http` target, the worker's health check — and what
//! `NO_PROXY` names goes straight. (The OTLP exporter uses the health check's connector.)
//! The proxy is a real one on loopback (`common::egress`): `CONNECT` tunnels for `https://`
//! destinations, absolute-form requests for `http://` ones, each counted.

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::egress::EgressProxy;
use crate::common::*;
use bytes::Bytes;
use http_body_util::Full;

fn spawn_behind(sqs: &Sqs, pipeline: &str, env: &[(&str, &str)]) -> Poller {
    let header = format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"\"\n[shutdown]\ngrace_period_secs = 5\n",
        sqs.endpoint
    );
    let mut all = vec![("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];
    all.extend_from_slice(env);
    // the harness removes the proxy variables of the tests' own environment; these are the test's
    spawn_poller_config(&header, &format!("{header}{pipeline}"), &all, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_goes_through_the_proxy_the_environment_names() {
    let sqs = sqs().await;
    let queue = sqs.queue("egress", &[]).await;
    sqs.send_bodies(&queue, &(0..20).map(|i| format!("e{i}")).collect::<Vec<_>>()).await;
    let worker = worker(|_| Reply::ok("")).await;
    let proxy = EgressProxy::start().await;
    // the worker's health check too (the pipeline only receives once it passed)
    let health = crate::admin::health_endpoint(Arc::new(std::sync::atomic::AtomicBool::new(true))).await;
    let pipeline = http_pipeline_with_target(
        "egress",
        &queue,
        &worker.url,
        &format!("health_url = \"{health}\""),
        "[pipelines.pollers]\nwait_time_secs = 1\n",
    );
    // the proxy's credentials in its URL: every request carries them
    let with_credentials = proxy.url.replace("http://", "http://user:secret@");
    let env = [("HTTP_PROXY", with_credentials.as_str()), ("HTTPS_PROXY", with_credentials.as_str())];
    let mut poller = spawn_behind(&sqs, &pipeline, &env);
    poller.wait_listening().await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"egress\"}", 20.0, Duration::from_secs(30)).await;
    let seen = proxy.seen();
    let sqs_authority = sqs.endpoint.trim_start_matches("http://");
    let ops: HashSet<&str> =
        seen.forwarded.iter().filter(|(a, _)| a == sqs_authority).map(|(_, what)| what.as_str()).collect();
    for op in ["AmazonSQS.GetQueueAttributes", "AmazonSQS.ReceiveMessage", "AmazonSQS.DeleteMessageBatch"] {
        assert!(ops.contains(op), "{op} did not go through the proxy: {ops:?}");
    }
    let worker_authority = worker.url.trim_start_matches("http://").split('/').next().unwrap();
    assert!(seen.forwarded.iter().any(|(a, _)| a == worker_authority), "the worker's batches: {seen:?}");
    let health_authority = health.trim_start_matches("http://").split('/').next().unwrap();
    assert!(seen.forwarded.iter().any(|(a, _)| a == health_authority), "the health check: {seen:?}");
    assert!(seen.tunnels.is_empty(), "http:// destinations are not tunnelled: {seen:?}");
    assert!(
        seen.without_credentials.is_empty(),
        "requests without the proxy's credentials: {:?}",
        seen.without_credentials
    );
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// A TLS worker (no client certificate asked) with the test CA's certificate for `localhost`;
/// its URL and how many batches it answered.
async fn tls_worker(dir: &Path) -> (String, Arc<AtomicUsize>) {
    let acceptor = crate::https_target::tls_acceptor(dir, false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{}")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://localhost:{port}/sqs"), answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_goes_through_a_connect_tunnel_and_no_proxy_goes_straight() {
    let dir = tempfile::tempdir().unwrap();
    crate::https_target::certificates(dir.path());
    let (url, answered) = tls_worker(dir.path()).await;
    let sqs = sqs().await;
    let queue = sqs.queue("egress-tls", &[]).await;
    sqs.send_bodies(&queue, &(0..10).map(|i| format!("t{i}")).collect::<Vec<_>>()).await;
    let proxy = EgressProxy::start().await;
    let target = format!("ca_file = \"{}/ca.pem\"", dir.path().display());
    let pipeline =
        http_pipeline_with_target("egresstls", &queue, &url, &target, "[pipelines.pollers]\nwait_time_secs = 1\n");
    // SQS is at 127.0.0.1, which NO_PROXY names; the worker is at `localhost`, which it does not
    let env = [("HTTP_PROXY", proxy.url.as_str()), ("HTTPS_PROXY", proxy.url.as_str()), ("NO_PROXY", "127.0.0.1")];
    let mut poller = spawn_behind(&sqs, &pipeline, &env);
    poller.wait_listening().await;
    poller
        .wait_metric("sqs_poller_messages_deleted_total{pipeline=\"egresstls\"}", 10.0, Duration::from_secs(30))
        .await;
    let seen = proxy.seen();
    let worker_authority = url.trim_start_matches("https://").split('/').next().unwrap();
    assert!(seen.tunnels.get(worker_authority).copied().unwrap_or(0) >= 1, "no tunnel to the worker: {seen:?}");
    assert!(answered.load(Ordering::SeqCst) >= 1, "the worker answered through the tunnel");
    assert!(seen.forwarded.is_empty(), "SQS at 127.0.0.1 (NO_PROXY) went through the proxy: {seen:?}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
