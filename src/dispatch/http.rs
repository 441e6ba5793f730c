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
use hyper::header::{HeaderName, HeaderValue};
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
    pub async fn invoke(&self, event: &crate::event::Event<'_>, trace: &TraceContext) -> Invocation {
        // the request's head is made (and signed) first and the structures it was made from let
        // go: a batch waiting for its worker holds its head's bytes and its socket only
        let head = match &self.signer {
            None => self.wire.request_head(&self.headers_of(trace), event.len()),
            // boxed: signing's state (728 bytes) is gone before the request waits
            Some(signer) => match Box::pin(self.signed_head(signer, event, trace)).await {
                Ok(head) => head,
                // nothing the worker did: the batch waits and is tried again
                Err(reason) => return Invocation::Throttled(reason),
            },
        };
        let answer = match self.wire.send(&head, event, super::worker_process::MAX_OUTPUT).await {
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

    /// The request's headers (besides `host` and `content-length`): the content type, the
    /// configured ones, the trace's; a later one replaces an earlier one of its name, as inserting
    /// them into a request in that order would.
    fn headers_of<'h>(&'h self, trace: &'h TraceContext) -> Vec<(&'h str, &'h str)> {
        let configured = self.headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let traced = [
            trace.xray.as_ref().map(|t| ("x-amzn-trace-id", t.header.as_str())),
            trace.traceparent.as_deref().map(|w3c| ("traceparent", w3c)),
        ];
        let all: Vec<(&str, &str)> = std::iter::once(("content-type", "application/json"))
            .chain(configured)
            .chain(traced.into_iter().flatten().filter(|(_, v)| HeaderValue::from_str(v).is_ok()))
            .collect();
        all.iter()
            .enumerate()
            .filter(|(i, (name, _))| !all[i + 1..].iter().any(|(later, _)| later == name))
            .map(|(_, h)| *h)
            .collect()
    }

    /// The request's head with a SigV4 signature over the event (put together once for it).
    async fn signed_head(
        &self,
        signer: &crate::aws::RequestSigner,
        event: &crate::event::Event<'_>,
        trace: &TraceContext,
    ) -> Result<Vec<u8>, String> {
        let mut request = Request::post(&self.url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("cannot build a request to {}: {e}", self.url))?;
        let headers = request.headers_mut();
        for (name, value) in self.headers_of(trace) {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                headers.insert(name, value);
            }
        }
        signer.sign(&mut request, &event.to_bytes()).await?;
        let signed = request.headers();
        let all: Vec<(&str, &str)> =
            signed.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))).collect();
        Ok(self.wire.request_head(&all, event.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    /// The headers as a request built by inserting them in order would carry them: a configured
    /// one replaces the content type, the trace's replace configured ones, a value that is no
    /// header value is left out; the head carries each once.
    #[test]
    fn later_headers_replace_earlier_ones_of_their_name() {
        let options = HttpOptions {
            headers: vec![
                ("Content-Type".into(), Secret("application/x-ndjson".into())),
                ("traceparent".into(), Secret("mine".into())),
            ],
            ..Default::default()
        };
        let target = HttpTarget::new("http://127.0.0.1:9/work", &options, None, metrics::Counter::noop()).unwrap();
        let trace = TraceContext {
            xray: None,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        assert_eq!(
            target.headers_of(&trace),
            vec![
                ("content-type", "application/x-ndjson"),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            ]
        );
        let broken = TraceContext { xray: None, traceparent: Some("line\nbreak".into()) };
        assert_eq!(target.headers_of(&broken), vec![("content-type", "application/x-ndjson"), ("traceparent", "mine")]);
        let head = String::from_utf8(target.wire.request_head(&target.headers_of(&trace), 2)).unwrap();
        assert_eq!(head.matches("content-type").count(), 1, "{head}");
    }
}
