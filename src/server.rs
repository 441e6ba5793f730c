//! The HTTP server of the sidecar: `GET /metrics` (Prometheus text), `/healthz` (the process is
//! alive) and `/readyz` (every pipeline has found its queue and SQS answers it, and no drain is
//! under way).
//!
//! It is reachable by anything that can reach the task, so it defends itself: at most
//! [`MAX_CONNECTIONS`] connections at once (more are closed as soon as they are accepted), a client
//! that does not send its request headers within [`HEADER_READ_TIMEOUT`] is dropped, no connection
//! lives longer than [`MAX_CONNECTION_LIFE`] (Prometheus reconnects), and a failing `accept` (out of
//! file descriptors, say) backs off instead of spinning. [`serve_connections`] is that accept loop,
//! shared with the Runtime API listeners of `runtime-api` targets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::net::{serve_connections, Limits};

/// A pipeline's name and its readiness.
pub type PipelineFlag = (String, Arc<AtomicBool>);

/// What `/readyz` reports.
#[derive(Clone, Default)]
pub struct Health {
    /// One flag per pipeline: it found its queue and SQS answers it ([`crate::sqs::Reachability`]).
    /// Pipelines come and go with reloads.
    pub pipelines: Arc<std::sync::Mutex<Vec<PipelineFlag>>>,
    pub draining: CancellationToken,
}

impl Health {
    pub fn new(draining: CancellationToken) -> Self {
        Health { pipelines: Arc::default(), draining }
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<PipelineFlag>> {
        self.pipelines.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a pipeline's flag, or replaces the flag of a pipeline of that name.
    pub fn track(&self, name: &str, ready: Arc<AtomicBool>) {
        let mut list = self.list();
        list.retain(|(n, _)| n != name);
        list.push((name.to_string(), ready));
    }

    /// A pipeline that is gone (removed by a reload).
    pub fn forget(&self, name: &str) {
        self.list().retain(|(n, _)| n != name);
    }

    /// Every pipeline has found its queue and SQS answers it.
    pub fn all_ready(&self) -> bool {
        let list = self.list();
        !list.is_empty() && list.iter().all(|(_, r)| r.load(Ordering::Relaxed))
    }

    fn not_ready(&self) -> Vec<String> {
        self.list().iter().filter(|(_, r)| !r.load(Ordering::Relaxed)).map(|(n, _)| n.clone()).collect()
    }
}

/// Binds the listen address.
///
/// # Errors
/// When the address cannot be bound (in use, not permitted).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this long (also while a kept-alive connection
/// waits for its next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection is kept, however busy.
pub const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(60);

/// The limits of the metrics and health server.
pub const METRICS_LIMITS: Limits = Limits {
    max_connections: MAX_CONNECTIONS,
    header_read_timeout: HEADER_READ_TIMEOUT,
    max_connection_life: Some(MAX_CONNECTION_LIFE),
};

/// The `/healthz` URL of a service listening on `listen`, as a process beside it reaches it
/// (an unspecified address is asked on loopback).
pub fn healthz_url(listen: std::net::SocketAddr) -> String {
    let host = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("http://{host}:{}/healthz", listen.port())
}

/// Asks `url` once (`sqs-poller healthcheck`): `Ok` when it answers 200 within `timeout`.
///
/// # Errors
/// What it answered instead, or why nothing answered.
pub async fn probe(url: &str, timeout: std::time::Duration) -> Result<(), String> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = tokio::time::timeout(timeout, client.get(uri))
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
        .map_err(|e| crate::net::error_chain(&e))?;
    let status = response.status();
    // a small answer ("ok"); a larger one is not read
    let _ = tokio::time::timeout(timeout, http_body_util::Limited::new(response.into_body(), 4096).collect()).await;
    if status == hyper::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, metrics: PrometheusHandle, health: Health, stop: CancellationToken) {
    let state = Arc::new((metrics, health));
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(&req, &state.0, &state.1)) }
    });
    serve_connections(listener, METRICS_LIMITS, "metrics server", service, stop).await;
}

fn route(req: &Request<Incoming>, metrics: &PrometheusHandle, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_string());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut text = metrics.render();
            text.push_str(&crate::metrics::process_text());
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                .body(Full::new(Bytes::from(text)))
                .expect("static response")
        }
        "/healthz" => text(StatusCode::OK, "ok\n".to_string()),
        "/readyz" => {
            if health.draining.is_cancelled() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string());
            }
            let waiting = health.not_ready();
            if waiting.is_empty() {
                text(StatusCode::OK, "ready\n".to_string())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("cannot reach the queue of: {}\n", waiting.join(", ")))
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".to_string()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}
