//! The `http` target: `POST` the event as `application/json` to a worker, usually one in the
//! same task (the sidecar pattern). 2xx answers are read as the function's result; 429 and 503
//! are throttles; any other status, or a connection lost mid-request, fails the batch.
//!
//! A worker that cannot be connected to at all (not started yet, restarting) is treated as a
//! throttle too: the batch waits and is tried again, keeping its messages invisible, instead of
//! spending their receive counts — a sidecar's app restarting for half a minute must not send
//! its queue to the dead-letter queue.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::Invocation;
use crate::trace::Trace;

pub struct HttpTarget {
    url: String,
    /// Keeps connections to the worker open between batches.
    client: Client<HttpConnector, Full<Bytes>>,
    overflows: metrics::Counter,
}

impl HttpTarget {
    pub fn new(url: &str, overflows: metrics::Counter) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        HttpTarget { url: url.to_string(), client: Client::builder(TokioExecutor::new()).build(connector), overflows }
    }

    /// POSTs the event; with a trace, `X-Amzn-Trace-Id` and the W3C `traceparent` go with it.
    pub async fn invoke(&self, event: Bytes, trace: Option<&Trace>) -> Invocation {
        let mut request = Request::post(&self.url).header(CONTENT_TYPE, "application/json");
        if let Some(t) = trace {
            request = request
                .header("x-amzn-trace-id", t.header.as_str())
                .header("traceparent", t.traceparent(&crate::trace::random_span_id()));
        }
        let request = match request.body(Full::new(event)) {
            Ok(r) => r,
            Err(e) => return Invocation::FunctionError(format!("cannot build a request to {}: {e}", self.url)),
        };
        let response = match self.client.request(request).await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return Invocation::Throttled(format!("cannot connect to {}: {}", self.url, error_chain(&e)))
            }
            Err(e) => return Invocation::FunctionError(format!("request to {} failed: {}", self.url, error_chain(&e))),
        };
        let status = response.status();
        let body = match Limited::new(response.into_body(), super::worker_process::MAX_OUTPUT).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                self.overflows.increment(1);
                return Invocation::FunctionError(format!(
                    "the response of {} is more than 6 MiB (Lambda's response limit)",
                    self.url
                ));
            }
            Err(e) => return Invocation::FunctionError(format!("cannot read the response of {}: {e}", self.url)),
        };
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            return Invocation::Throttled(format!("HTTP {status}"));
        }
        if !status.is_success() {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Invocation::FunctionError(format!("HTTP {status}: {excerpt}"));
        }
        Invocation::Response(body)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
