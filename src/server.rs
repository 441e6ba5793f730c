//! The HTTP server of the sidecar: `GET /metrics` (Prometheus text), `/healthz` (the process is
//! alive) and `/readyz` (every pipeline has reached its queue, and no drain is under way).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` reports.
#[derive(Clone, Default)]
pub struct Health {
    /// One flag per pipeline: its queue has answered.
    pub pipelines: Vec<(String, Arc<AtomicBool>)>,
    pub draining: CancellationToken,
}

impl Health {
    fn not_ready(&self) -> Vec<&str> {
        self.pipelines.iter().filter(|(_, r)| !r.load(Ordering::Relaxed)).map(|(n, _)| n.as_str()).collect()
    }
}

/// Binds the listen address.
///
/// # Errors
/// When the address cannot be bound (in use, not permitted).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, metrics: PrometheusHandle, health: Health, stop: CancellationToken) {
    let state = Arc::new((metrics, health));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state.0, &state.1)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn route(req: &Request<Incoming>, metrics: &PrometheusHandle, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_string());
    }
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(metrics.render())))
            .expect("static response"),
        "/healthz" => text(StatusCode::OK, "ok\n".to_string()),
        "/readyz" => {
            if health.draining.is_cancelled() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string());
            }
            let waiting = health.not_ready();
            if waiting.is_empty() {
                text(StatusCode::OK, "ready\n".to_string())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("waiting for the queue of: {}\n", waiting.join(", ")))
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
