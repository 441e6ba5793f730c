//! The admin API, on its own listener (`[server] admin_listen`, loopback by default; `""`
//! turns it off):
//!
//! - `GET /pipelines`: every pipeline's state (`starting`, `running`, `paused`, `unreachable`,
//!   `draining`), why it is paused, its pollers, in-flight messages and last error, as JSON;
//! - `POST /pipelines/{name}/pause`: its pollers stop receiving; in-flight batches finish and are
//!   acknowledged as usual;
//! - `POST /pipelines/{name}/resume`.
//!
//! It shares the metrics server's accept loop and limits.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::{Control, Status};

/// What the admin API sees of one running pipeline.
#[derive(Clone)]
pub struct Entry {
    pub queue_url: String,
    pub control: Arc<Control>,
    pub status: Arc<Status>,
    /// Found its queue, and SQS answers.
    pub ready: Arc<AtomicBool>,
    pub draining: CancellationToken,
}

impl Entry {
    fn state(&self) -> &'static str {
        if self.draining.is_cancelled() {
            "draining"
        } else if self.control.pause().paused() {
            "paused"
        } else if !self.ready.load(Ordering::Relaxed) {
            if self.status.last_error().is_some() {
                "unreachable"
            } else {
                "starting"
            }
        } else {
            "running"
        }
    }

    fn to_json(&self, name: &str) -> serde_json::Value {
        let pause = self.control.pause();
        let mut paused_by = Vec::new();
        if pause.by_operator {
            paused_by.push("operator");
        }
        if pause.by_health {
            paused_by.push("health_check");
        }
        if pause.by_breaker {
            paused_by.push("breaker");
        }
        json!({
            "name": name,
            "queue_url": self.queue_url,
            "state": self.state(),
            "paused_by": paused_by,
            "pollers": self.status.pollers(),
            "in_flight_messages": self.status.in_flight(),
            // the byte budget, and what the whole process holds (every pipeline's share of it)
            "memory": {
                "in_flight_bytes": self.status.in_flight_bytes.load(Ordering::Relaxed),
                "max_outstanding_bytes": self.status.max_outstanding_bytes.load(Ordering::Relaxed),
                "process_resident_bytes": crate::metrics::resident_memory_bytes(),
            },
            "concurrency": {
                "mode": if self.status.adaptive.load(Ordering::Relaxed) { "adaptive" } else { "fixed" },
                "limit": self.status.concurrency_limit.load(Ordering::Relaxed),
                "pool": self.status.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            },
            // batch.max_in_flight_per_group: the busiest groups (never metric labels)
            "noisiest_groups": self.status.noisiest_groups().into_iter().map(|(group, in_batches, waiting)| {
                json!({"group": group, "in_batches": in_batches, "waiting": waiting})
            }).collect::<Vec<_>>(),
            "breaker": self.status.breaker(),
            "last_error": self.status.last_error().map(|(at, e)| json!({"at_unix_secs": at, "message": e})),
        })
    }
}

/// The pipelines running now, by name; kept by the supervisor.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<BTreeMap<String, Entry>>>);

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn insert(&self, name: &str, entry: Entry) {
        self.lock().insert(name.to_string(), entry);
    }

    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    pub fn get(&self, name: &str) -> Option<Entry> {
        self.lock().get(name).cloned()
    }
}

/// Serves the admin API until `stop` is cancelled.
pub async fn serve(listener: TcpListener, registry: Registry, stop: CancellationToken) {
    let service = service_fn(move |req| {
        let registry = registry.clone();
        async move { Ok::<_, Infallible>(route(&req, &registry)) }
    });
    crate::net::serve_connections(listener, crate::server::METRICS_LIMITS, "admin API", service, stop).await;
}

fn route(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/');
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["pipelines"]) => {
            let list: Vec<serde_json::Value> = registry.lock().iter().map(|(n, e)| e.to_json(n)).collect();
            reply(StatusCode::OK, &json!({ "pipelines": list }))
        }
        (&Method::GET, ["pipelines", name]) => match registry.get(name) {
            Some(e) => reply(StatusCode::OK, &e.to_json(name)),
            None => no_such_pipeline(name),
        },
        (&Method::POST, ["pipelines", name, action @ ("pause" | "resume")]) => match registry.get(name) {
            Some(e) => {
                let paused = *action == "pause";
                e.control.set_operator_pause(paused);
                tracing::warn!(pipeline = %name, "admin API: {}", if paused { "paused" } else { "resumed" });
                reply(StatusCode::OK, &e.to_json(name))
            }
            None => no_such_pipeline(name),
        },
        (_, ["pipelines", ..]) => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "GET /pipelines, GET /pipelines/{name}, POST /pipelines/{name}/pause or /resume"}),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            &json!({"error": "not found: GET /pipelines, POST /pipelines/{name}/pause, POST /pipelines/{name}/resume"}),
        ),
    }
}

fn no_such_pipeline(name: &str) -> Response<Full<Bytes>> {
    reply(StatusCode::NOT_FOUND, &json!({"error": format!("no pipeline named `{name}`")}))
}

fn reply(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string() + "\n")))
        .expect("static response")
}
