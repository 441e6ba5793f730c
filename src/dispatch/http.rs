//! The `http` target: `POST` the event as `application/json` to a worker, usually one in the
//! same task (the sidecar pattern), or a remote one over `https://`. 2xx answers are read as the
//! function's result; 429 and 503 are throttles; any other status, or a connection lost
//! mid-request, fails the batch.
//!
//! A worker that cannot be connected to at all (not started yet, restarting) is treated as a
//! throttle too: the batch waits and is tried again, keeping its messages invisible, instead of
//! spending their receive counts — a sidecar's app restarting for half a minute must not send
//! its queue to the dead-letter queue.
//!
//! Remote workers: TLS with rustls (the system's roots, plus `ca_file`; a client certificate
//! with `client_cert_file` and `client_key_file`), `headers` sent with every request (their
//! values are never logged), and SigV4 signing (`sigv4_service`) with the AWS credential chain,
//! for IAM-protected endpoints such as API Gateway or Lambda function URLs.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, StatusCode};

use super::Invocation;
use crate::config::HttpOptions;
use crate::trace::TraceContext;

pub struct HttpTarget {
    url: String,
    /// Keeps connections to the worker open between batches (lean ones: a batch waiting for its
    /// answer holds its socket and no buffer, `crate::aws::wire`).
    wire: crate::aws::wire::Wire,
    headers: Vec<(HeaderName, HeaderValue)>,
    signer: Option<crate::aws::RequestSigner>,
    overflows: metrics::Counter,
}

impl HttpTarget {
    /// # Errors
    /// When the TLS files cannot be used (they were checked when the configuration was loaded).
    pub fn new(
        url: &str,
        options: &HttpOptions,
        signer: Option<crate::aws::RequestSigner>,
        overflows: metrics::Counter,
    ) -> Result<Self, String> {
        let tls = crate::net::tls_config(
            options.ca_file.as_deref(),
            options.client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )?;
        let headers = options
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((HeaderName::from_bytes(name.as_bytes()).ok()?, HeaderValue::from_str(&value.0).ok()?))
            })
            .map(|(name, mut value)| {
                value.set_sensitive(true);
                (name, value)
            })
            .collect();
        Ok(HttpTarget {
            url: url.to_string(),
            wire: crate::aws::wire::Wire::new(url, tls)?.sent_once(),
            headers,
            signer,
            overflows,
        })
    }

    /// POSTs the event; with a trace, `X-Amzn-Trace-Id` and the W3C `traceparent` go with it.
    pub async fn invoke(&self, event: &crate::event::Event, trace: &TraceContext) -> Invocation {
        let mut request =
            match Request::post(&self.url).header(CONTENT_TYPE, "application/json").body(Full::new(Bytes::new())) {
                Ok(r) => r,
                Err(e) => return Invocation::FunctionError(format!("cannot build a request to {}: {e}", self.url)),
            };
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(Ok(xray)) = trace.xray.as_ref().map(|t| HeaderValue::from_str(&t.header)) {
            headers.insert("x-amzn-trace-id", xray);
        }
        if let Some(Ok(w3c)) = trace.traceparent.as_deref().map(HeaderValue::from_str) {
            headers.insert("traceparent", w3c);
        }
        if let Some(signer) = &self.signer {
            // the signature covers the body: put together once for it
            if let Err(reason) = signer.sign(&mut request, &event.to_bytes()).await {
                // nothing the worker did: the batch waits and is tried again
                return Invocation::Throttled(reason);
            }
        }
        let (parts, _) = request.into_parts();
        let headers: Vec<(&str, &str)> =
            parts.headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))).collect();
        let body: Vec<&[u8]> = event.parts().iter().map(|p| &p[..]).collect();
        let answer = match self.wire.post_parts(&headers, &body, super::worker_process::MAX_OUTPUT).await {
            Ok(a) => a,
            Err(crate::aws::wire::WireError::TooLong(_)) => {
                self.overflows.increment(1);
                return Invocation::FunctionError(format!(
                    "the response of {} is more than 6 MiB (Lambda's response limit)",
                    self.url
                ));
            }
            Err(e @ crate::aws::wire::WireError::Connect(_)) => {
                return Invocation::Unavailable { reason: format!("{e} ({})", self.url), connect: true }
            }
            Err(e) => return Invocation::unavailable(format!("request to {} failed: {e}", self.url)),
        };
        let (status, body) = (answer.status, answer.body);
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            return Invocation::Throttled(format!("HTTP {status}"));
        }
        if !status.is_success() {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            let reason = format!("HTTP {status}: {excerpt}");
            // a 5xx is the worker (or what is in front of it) down; a 4xx is its answer
            return if status.is_server_error() {
                Invocation::unavailable(reason)
            } else {
                Invocation::FunctionError(reason)
            };
        }
        Invocation::Response(body)
    }
}
