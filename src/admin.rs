//! The admin API, on its own listener (`[server] admin_listen`, loopback by default; `""`
//! turns it off):
//!
//! - `GET /pipelines`: every pipeline's state (`starting`, `running`, `paused`, `unreachable`,
//!   `draining`), why it is paused, its pollers, in-flight messages and last error, as JSON;
//! - `POST /pipelines/{name}/pause`: its pollers stop receiving; in-flight batches finish and are
//!   acknowledged as usual;
//! - `POST /pipelines/{name}/resume`.
//!
//! Who may use it ([`Gate`]): with `server.admin_token_file` (or `admin_token_env`) every request
//! must carry `Authorization: Bearer TOKEN` (compared in constant time); a listener on anything
//! but loopback requires a token (a configuration error otherwise). On a loopback listener a
//! request must also name a loopback host and come from no foreign web origin: a page open in a
//! browser on the same host can neither rebind a name of its own to 127.0.0.1 (DNS rebinding)
//! nor post across sites. Refusals are counted in `sqs_poller_admin_refused_total{reason}`.
//! `GET`s only read; the `POST`s change what the service does.
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

/// Who may use the admin API: the bearer token's holders, and on a loopback listener only
/// requests named for a loopback host from no foreign web origin.
#[derive(Clone)]
pub struct Gate {
    token: Option<crate::config::Secret>,
    loopback: bool,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token, or not the configured one.
    Token,
    /// On a loopback listener, a Host that is not a loopback name (or none).
    Host,
    /// A web page of another origin.
    Origin,
}

impl Refusal {
    /// The `reason` label ([`crate::metrics::ADMIN_REFUSALS`]).
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Token => "token",
            Refusal::Host => "host",
            Refusal::Origin => "origin",
        }
    }

    fn response(self) -> Response<Full<Bytes>> {
        let (status, error) = match self {
            Refusal::Token => (StatusCode::UNAUTHORIZED, "a bearer token is required (Authorization: Bearer TOKEN)"),
            Refusal::Host => (StatusCode::FORBIDDEN, "the Host is not a loopback name (localhost, 127.0.0.1, [::1])"),
            Refusal::Origin => (StatusCode::FORBIDDEN, "requests from a web page of another origin are refused"),
        };
        let mut r = reply(status, &json!({ "error": error }));
        if self == Refusal::Token {
            r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl Gate {
    pub fn new(token: Option<crate::config::Secret>, listen: std::net::SocketAddr) -> Self {
        Gate { token, loopback: listen.ip().is_loopback() }
    }

    /// Why a request with these headers is refused, if it is.
    pub fn refusal(&self, headers: &hyper::HeaderMap) -> Option<Refusal> {
        let text = |name| headers.get(name).map(|v: &hyper::header::HeaderValue| v.to_str().unwrap_or("\u{fffd}"));
        if self.loopback {
            if !text(hyper::header::HOST).is_some_and(loopback_host) {
                return Some(Refusal::Host);
            }
            if text(hyper::header::ORIGIN).is_some_and(|o| !loopback_origin(o)) {
                return Some(Refusal::Origin);
            }
        }
        if let Some(token) = &self.token {
            let given = text(hyper::header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
            if !bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.0.as_bytes())) {
                return Some(Refusal::Token);
            }
        }
        None
    }
}

/// A Host header that names this machine: `localhost`, `127.x.x.x` or `[::1]`, with any port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6.split_once(']').is_some_and(|(ip, port)| {
                ip == "::1" && (port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok()))
            })
        }
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// An Origin of a page served from this machine (`http://localhost:3000`, ...); `null` (a
/// sandboxed page, a file) is foreign.
fn loopback_origin(origin: &str) -> bool {
    origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")).is_some_and(loopback_host)
}

/// Serves the admin API until `stop` is cancelled.
pub async fn serve(listener: TcpListener, gate: Gate, registry: Registry, stop: CancellationToken) {
    for reason in crate::metrics::ADMIN_REFUSALS {
        metrics::counter!(crate::metrics::ADMIN_REFUSED, "reason" => reason).increment(0);
    }
    let service = service_fn(move |req: Request<Incoming>| {
        let (registry, gate) = (registry.clone(), gate.clone());
        async move {
            if let Some(refusal) = gate.refusal(req.headers()) {
                metrics::counter!(crate::metrics::ADMIN_REFUSED, "reason" => refusal.label()).increment(1);
                tracing::debug!(reason = refusal.label(), method = %req.method(), path = req.uri().path(), "admin API: request refused");
                return Ok::<_, Infallible>(refusal.response());
            }
            Ok(route(&req, &registry))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 34: any Host or Origin header is judged without a panic, and only a loopback name
    /// passes.
    #[test]
    fn hostile_hosts_and_origins_are_judged() {
        crate::fuzz::run("admin_hosts", 3000, |rng| {
            let sample = ["localhost:9465", "127.0.0.1:9465", "[::1]:9465", "http://localhost:3000"][rng.usize(0..4)];
            let host = String::from_utf8_lossy(&crate::fuzz::mutate(rng, sample.as_bytes())).into_owned();
            if loopback_host(&host) {
                let lower = host.to_ascii_lowercase();
                assert!(
                    lower.starts_with("localhost") || lower.starts_with("127.") || lower.starts_with("[::1]"),
                    "{host:?}"
                );
            }
            let _ = loopback_origin(&host);
        });
    }

    fn headers(pairs: &[(&'static str, &str)]) -> hyper::HeaderMap {
        pairs.iter().map(|(k, v)| (hyper::header::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn loopback_names_are_this_machine_only() {
        for host in
            ["localhost", "LOCALHOST:9465", "127.0.0.1", "127.0.0.1:9465", "127.1.2.3:80", "[::1]", "[::1]:9465"]
        {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.attacker.example:9465",
            "10.0.0.1:9465",
            "[::2]:9465",
            "[::1]x",
            "localhost:port",
            "",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
        assert!(loopback_origin("http://localhost:3000") && loopback_origin("https://127.0.0.1"));
        assert!(!loopback_origin("null") && !loopback_origin("file://") && !loopback_origin("http://evil.example"));
    }

    #[test]
    fn the_gate_checks_host_and_origin_on_loopback_and_the_token_everywhere() {
        let loopback = Gate::new(None, "127.0.0.1:9465".parse().unwrap());
        assert_eq!(loopback.refusal(&headers(&[("host", "127.0.0.1:9465")])), None);
        assert_eq!(loopback.refusal(&headers(&[])), Some(Refusal::Host), "no Host at all");
        assert_eq!(loopback.refusal(&headers(&[("host", "evil.example")])), Some(Refusal::Host));
        let foreign = headers(&[("host", "localhost"), ("origin", "http://evil.example")]);
        assert_eq!(loopback.refusal(&foreign), Some(Refusal::Origin));

        let token = Some(crate::config::Secret("0123456789abcdef".into()));
        let anywhere = Gate::new(token, "0.0.0.0:9465".parse().unwrap());
        assert_eq!(anywhere.refusal(&headers(&[("host", "poller.internal")])), Some(Refusal::Token));
        let bearer = |v: &str| headers(&[("host", "poller.internal"), ("authorization", v)]);
        assert_eq!(anywhere.refusal(&bearer("Bearer 0123456789abcdef")), None, "any Host with the token");
        assert_eq!(anywhere.refusal(&bearer("Bearer 0123456789abcdeF")), Some(Refusal::Token));
        assert_eq!(anywhere.refusal(&bearer("Bearer 0123456789abcdef0")), Some(Refusal::Token));
        assert_eq!(anywhere.refusal(&bearer("0123456789abcdef")), Some(Refusal::Token));
        assert_eq!(anywhere.refusal(&bearer("Basic MDEyMzQ1Njc4OWFiY2RlZg==")), Some(Refusal::Token));
    }
}
