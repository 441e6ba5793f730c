//! A strict-AWS proxy in front of an emulator: it enforces what only real AWS enforces. Every
//! request's SigV4 signature is computed again with `aws-sigv4` (not sqs-poller's signer) from
//! what arrived on the wire, with the secret of the access key it names; the session token must
//! belong to that key, and the key must not have expired when the request was signed. It keeps
//! a clock of its own that can be skewed: answers carry that clock's `Date`, and a request
//! signed more than 5 minutes away from it is refused with SQS's error. Chosen requests can be
//! answered with chosen errors (KMS throttling, KMS access denied). What passes is forwarded.
//!
//! Keys: `test`/`test` (what the other tests use), plus every key a `credential_process`
//! script wrote to `keys_file` (one JSON object per line, as the process printed it).

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The region and service every request must be scoped to.
pub const REGION: &str = "us-east-1";
pub const SERVICE: &str = "sqs";

/// An error to answer instead of forwarding.
#[derive(Clone, Debug)]
pub struct Injection {
    /// `ReceiveMessage`, … (the `X-Amz-Target` operation).
    pub operation: String,
    pub status: u16,
    /// The query-compatible code (`x-amzn-query-error`) and the JSON `__type`.
    pub query_code: String,
    pub type_name: String,
    /// How many more requests get it (`usize::MAX`: until cleared).
    pub remaining: usize,
    /// The request reaches SQS first and its answer is lost (replaced by the error), as when a
    /// connection breaks after SQS acted.
    pub lose_answer: bool,
}

#[derive(Default)]
pub struct State {
    /// Added to the host clock to give the proxy's (AWS's) time.
    pub skew_secs: i64,
    pub keys_file: Option<PathBuf>,
    pub inject: Vec<Injection>,
    /// `Operation by agent` of every request that passed.
    pub verified: Vec<String>,
    /// Why requests were refused.
    pub rejected: Vec<String>,
    /// Requests refused for their clock.
    pub skew_rejections: usize,
    /// Requests signed with a key that had expired.
    pub expired: usize,
    /// Requests answered with an injected error.
    pub injected: usize,
    /// The `ReceiveRequestAttemptId` of every ReceiveMessage, in order.
    pub attempt_ids: Vec<Option<String>>,
    /// The `VisibilityTimeout` every ReceiveMessage asked for, in order.
    pub receive_visibility: Vec<Option<u64>>,
    /// The `VisibilityTimeout` of every `ChangeMessageVisibilityBatch` entry, in order.
    pub visibility_changes: Vec<u64>,
    /// ReceiveMessage calls not answered yet, by the `VisibilityTimeout` they asked for: a long
    /// poll that asked for the old timeout can still bring messages after a change.
    pub open_receives: HashMap<Option<u64>, usize>,
    /// Requests not answered yet, by operation, and the most there were at once.
    pub open: HashMap<String, usize>,
    pub most_open: HashMap<String, usize>,
}

/// Counts a request as open in [`State::open`] until it is answered (or its connection is
/// dropped).
struct Open<'a> {
    state: &'a Mutex<State>,
    operation: String,
}

impl<'a> Open<'a> {
    fn new(state: &'a Mutex<State>, operation: &str) -> Self {
        let mut s = state.lock().unwrap();
        let open = s.open.entry(operation.to_string()).or_default();
        *open += 1;
        let now = *open;
        let most = s.most_open.entry(operation.to_string()).or_default();
        *most = (*most).max(now);
        Open { state, operation: operation.to_string() }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = s.open.get_mut(&self.operation) {
            *n -= 1;
        }
    }
}

/// Counts a ReceiveMessage as open in [`State::open_receives`] until it is answered (or its
/// connection is dropped).
struct OpenReceive<'a> {
    state: &'a Mutex<State>,
    visibility: Option<u64>,
}

impl Drop for OpenReceive<'_> {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = s.open_receives.get_mut(&self.visibility) {
            *n -= 1;
        }
    }
}

pub struct StrictAws {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

struct Key {
    secret: String,
    token: Option<String>,
    /// `Err`: an `Expiration` that does not parse (real AWS would not have issued it: refused).
    expiry: Result<Option<SystemTime>, String>,
}

/// The keys the proxy knows: `test`, and those of `keys_file`.
fn lookup(state: &State, access_key: &str) -> Option<Key> {
    if access_key == "test" {
        return Some(Key { secret: "test".into(), token: None, expiry: Ok(None) });
    }
    let text = std::fs::read_to_string(state.keys_file.as_ref()?).ok()?;
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|v| {
        (v["AccessKeyId"].as_str()? == access_key).then(|| Key {
            secret: v["SecretAccessKey"].as_str().unwrap_or_default().to_string(),
            token: v["SessionToken"].as_str().map(str::to_string),
            expiry: match v["Expiration"].as_str() {
                None => Ok(None),
                Some(e) => aws_smithy_types::DateTime::from_str(e, aws_smithy_types::date_time::Format::DateTime)
                    .ok()
                    .and_then(|d| SystemTime::try_from(d).ok())
                    .map(Some)
                    .ok_or_else(|| format!("the Expiration {e:?} of the key does not parse")),
            },
        })
    })
}

impl State {
    /// The proxy's clock.
    pub fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        let d = Duration::from_secs(self.skew_secs.unsigned_abs());
        if self.skew_secs >= 0 {
            now + d
        } else {
            now - d
        }
    }
}

fn http_date(t: SystemTime) -> String {
    aws_smithy_types::DateTime::from(t).fmt(aws_smithy_types::date_time::Format::HttpDate).unwrap()
}

fn error_response(
    now: SystemTime,
    status: u16,
    query_code: &str,
    type_name: &str,
    message: &str,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"__type": type_name, "message": message}).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amzn-query-error", format!("{query_code};Sender"))
        .header("date", http_date(now))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

impl StrictAws {
    /// Listens on a free loopback port and forwards what passes to `upstream`.
    pub async fn start(upstream: &str) -> StrictAws {
        let upstream = upstream.trim_end_matches('/').to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (state, upstream, client) = (shared.clone(), upstream.clone(), client.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (state, upstream, client) = (state.clone(), upstream.clone(), client.clone());
                        async move { Ok::<_, Infallible>(handle(req, &state, &upstream, &client).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StrictAws { url, state }
    }

    pub fn set_skew(&self, secs: i64) {
        self.state.lock().unwrap().skew_secs = secs;
    }

    pub fn set_keys_file(&self, file: PathBuf) {
        self.state.lock().unwrap().keys_file = Some(file);
    }

    pub fn inject(&self, injection: Injection) {
        self.state.lock().unwrap().inject.push(injection);
    }

    pub fn clear_injections(&self) {
        self.state.lock().unwrap().inject.clear();
    }

    /// How many requests of `operation` passed.
    pub fn verified(&self, operation: &str) -> usize {
        let prefix = format!("{operation} by");
        self.state.lock().unwrap().verified.iter().filter(|v| v.starts_with(&prefix)).count()
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: &Mutex<State>,
    upstream: &str,
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let headers: HashMap<String, String> =
        parts.headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let agent = headers.get("user-agent").map_or("", |a| a.split(' ').next().unwrap_or(""));
    let operation = headers.get("x-amz-target").map_or("", |t| t.trim_start_matches("AmazonSQS.")).to_string();
    let what = format!("{operation} by {agent}");
    let _open = Open::new(state, &operation);
    let now = state.lock().unwrap().now();

    // the signature, the key, its token and its expiry
    let checked = (|| -> Result<(), (&'static str, String)> {
        let auth = super::sigv4::authorization(&headers).map_err(|e| ("MissingAuthenticationToken", e))?;
        let key = lookup(&state.lock().unwrap(), &auth.access_key)
            .ok_or_else(|| ("InvalidClientTokenId", format!("unknown access key {}", auth.access_key)))?;
        if headers.get("x-amz-security-token") != key.token.as_ref() {
            return Err(("InvalidClientTokenId", format!("the session token does not belong to {}", auth.access_key)));
        }
        if key.token.is_some() && !auth.signed_headers.iter().any(|h| h == "x-amz-security-token") {
            return Err(("IncompleteSignature", "the session token is not signed".into()));
        }
        // SigV4: the host and every x-amz-* header must be signed
        let unsigned = headers
            .keys()
            .filter(|h| *h == "host" || h.starts_with("x-amz-"))
            .find(|h| !auth.signed_headers.iter().any(|s| s == *h));
        if let Some(h) = unsigned {
            return Err(("IncompleteSignature", format!("{h} is not signed")));
        }
        // the scope names this region and this service (AWS: "Credential should be scoped to a
        // valid region" / "to correct service")
        if auth.region != REGION || auth.service != SERVICE {
            return Err((
                "SignatureDoesNotMatch",
                format!("Credential should be scoped to {REGION}/{SERVICE}, not {}/{}", auth.region, auth.service),
            ));
        }
        let date = headers.get("x-amz-date").ok_or(("MissingAuthenticationToken", "no x-amz-date".to_string()))?;
        // expiry by AWS's clock when the request arrives, not by the date the request claims
        let expiry = key.expiry.map_err(|e| ("InvalidClientTokenId", e))?;
        if expiry.is_some_and(|expiry| now >= expiry) {
            return Err(("ExpiredToken", format!("the key {} has expired", auth.access_key)));
        }
        let signed_at = super::sigv4::parse_amz_date(date);
        let off = match now.duration_since(signed_at) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        if off > Duration::from_secs(300) {
            let now = http_date(now);
            return Err(("SKEW", format!("Signature expired: {date} is now earlier than {now} ({now} - 5 min.)")));
        }
        let url = format!("http://{}{}", headers["host"], parts.uri.path());
        super::sigv4::verify_with_secret(&url, &headers, &body, &key.secret, key.token.as_deref(), false)
            .map(|_| ())
            .map_err(|e| ("SignatureDoesNotMatch", e))
    })();
    if let Err((code, message)) = checked {
        let mut s = state.lock().unwrap();
        s.rejected.push(format!("{what}: {code}: {message}"));
        return match code {
            "SKEW" => {
                s.skew_rejections += 1;
                error_response(
                    now,
                    400,
                    "SignatureDoesNotMatch",
                    "com.amazon.coral.service#InvalidSignatureException",
                    &message,
                )
            }
            "ExpiredToken" => {
                s.expired += 1;
                error_response(now, 400, "ExpiredToken", "com.amazon.coral.service#ExpiredTokenException", &message)
            }
            c => error_response(now, 403, c, &format!("com.amazon.coral.service#{c}"), &message),
        };
    }
    let _open_receive = (operation == "ReceiveMessage").then(|| {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let id = v["ReceiveRequestAttemptId"].as_str().map(str::to_string);
        let visibility = v["VisibilityTimeout"].as_u64();
        let mut s = state.lock().unwrap();
        s.attempt_ids.push(id);
        s.receive_visibility.push(visibility);
        *s.open_receives.entry(visibility).or_default() += 1;
        OpenReceive { state, visibility }
    });
    if operation == "ChangeMessageVisibilityBatch" {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let entries = v["Entries"].as_array().cloned().unwrap_or_default();
        state.lock().unwrap().visibility_changes.extend(entries.iter().filter_map(|e| e["VisibilityTimeout"].as_u64()));
    }
    // an injected error
    let injected = {
        let mut guard = state.lock().unwrap();
        let s = &mut *guard;
        match s.inject.iter_mut().find(|i| i.operation == operation && i.remaining > 0) {
            Some(i) => {
                i.remaining = i.remaining.saturating_sub(1);
                let r = error_response(now, i.status, &i.query_code, &i.type_name, "injected by the strict-AWS proxy");
                s.injected += 1;
                s.verified.push(format!("{what} (answered with {})", i.query_code));
                if !i.lose_answer {
                    return r;
                }
                Some(r)
            }
            None => {
                s.verified.push(what);
                None
            }
        }
    };
    let mut forward = Request::builder().method(parts.method).uri(format!("{upstream}{}", parts.uri));
    for (k, v) in &parts.headers {
        if k != "host" {
            forward = forward.header(k, v);
        }
    }
    let res = match client.request(forward.body(Full::new(body)).unwrap()).await {
        Ok(r) => r,
        Err(e) => return error_response(now, 502, "InternalError", "InternalError", &e.to_string()),
    };
    if let Some(lost) = injected {
        let _ = res.into_body().collect().await;
        return lost;
    }
    let (mut parts, body) = res.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    parts.headers.insert("date", http_date(now).parse().unwrap());
    Response::from_parts(parts, Full::new(body))
}
