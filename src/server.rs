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
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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

/// The defences of a server: how many connections at once, how long a client may take to send
/// its request headers (and, on a kept-alive connection, to start its next request), and how long
/// a connection may live at most.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// `None`: as long as the client keeps using it (the Runtime API's long polls).
    pub max_connection_life: Option<Duration>,
}

/// The limits of the metrics and health server.
pub const METRICS_LIMITS: Limits = Limits {
    max_connections: MAX_CONNECTIONS,
    header_read_timeout: HEADER_READ_TIMEOUT,
    max_connection_life: Some(MAX_CONNECTION_LIFE),
};

/// Serves `/metrics`, `/healthz` and `/readyz` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, metrics: PrometheusHandle, health: Health, stop: CancellationToken) {
    let state = Arc::new((metrics, health));
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(&req, &state.0, &state.1)) }
    });
    serve_connections(listener, METRICS_LIMITS, "metrics server", service, stop).await;
}

/// Accepts HTTP/1 connections on `listener` and serves each with `service`, within `limits`,
/// until `stop` is cancelled. A failing `accept` (out of file descriptors, say) backs off instead
/// of spinning, and is logged once per run of failures (then every 100th).
pub async fn serve_connections<S>(
    listener: TcpListener,
    limits: Limits,
    name: &'static str,
    service: S,
    stop: CancellationToken,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut accept_errors = crate::backoff::Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut refused: u64 = 0;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    let pause = accept_errors.next_delay();
                    // EMFILE and friends repeat as fast as we ask: log the first of a run, then every 100th
                    if accept_errors.failures() % 100 == 1 {
                        tracing::warn!(server = name, error = %e, failures = accept_errors.failures(), "accept failed; backing off");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stop.cancelled() => return,
                    }
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        accept_errors.reset();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // over the cap: close at once rather than hold a descriptor for it
            refused += 1;
            if refused % 1000 == 1 {
                tracing::warn!(
                    server = name,
                    max = limits.max_connections,
                    refused,
                    "too many connections; closing new ones"
                );
            }
            drop(stream);
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            match limits.max_connection_life {
                Some(life) => {
                    let _ = tokio::time::timeout(life, connection).await;
                }
                None => {
                    let _ = connection.await;
                }
            }
            drop(slot);
        });
    }
}

fn route(req: &Request<Incoming>, metrics: &PrometheusHandle, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_string());
    }
    match req.uri().path() {
        "/metrics" => {
            crate::metrics::note_resident_memory();
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                .body(Full::new(Bytes::from(metrics.render())))
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
