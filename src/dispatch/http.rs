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

use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;

use super::Invocation;
use crate::config::HttpOptions;
use crate::trace::Trace;

/// Signs each request with SigV4.
pub struct Signer {
    pub service: String,
    pub region: String,
    pub credentials: SharedCredentialsProvider,
}

pub struct HttpTarget {
    url: String,
    /// Keeps connections to the worker open between batches.
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    signer: Option<Signer>,
    overflows: metrics::Counter,
}

/// The TLS settings: the system's roots, the configured CA file, the client certificate.
fn tls_config(options: &HttpOptions) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = &options.ca_file {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(file)
            .map_err(|e| format!("ca_file {}: {e}", file.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("ca_file {}: {e}", file.display()))?;
            roots.add(cert).map_err(|e| format!("ca_file {}: {e}", file.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match &options.client_cert {
        Some((cert, key)) => {
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("client_cert_file {}: {e}", cert.display()))?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("client_key_file {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

impl HttpTarget {
    /// # Errors
    /// When the TLS files cannot be used (they were checked when the configuration was loaded).
    pub fn new(
        url: &str,
        options: &HttpOptions,
        signer: Option<Signer>,
        overflows: metrics::Counter,
    ) -> Result<Self, String> {
        let https = https_connector(options)?;
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
            client: Client::builder(TokioExecutor::new()).build(https),
            headers,
            signer,
            overflows,
        })
    }

    /// POSTs the event; with a trace, `X-Amzn-Trace-Id` and the W3C `traceparent` go with it.
    pub async fn invoke(&self, event: Bytes, trace: Option<&Trace>) -> Invocation {
        let mut request =
            match Request::post(&self.url).header(CONTENT_TYPE, "application/json").body(Full::new(event.clone())) {
                Ok(r) => r,
                Err(e) => return Invocation::FunctionError(format!("cannot build a request to {}: {e}", self.url)),
            };
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(t) = trace {
            if let (Ok(xray), Ok(w3c)) = (
                HeaderValue::from_str(&t.header),
                HeaderValue::from_str(&t.traceparent(&crate::trace::random_span_id())),
            ) {
                headers.insert("x-amzn-trace-id", xray);
                headers.insert("traceparent", w3c);
            }
        }
        if let Some(signer) = &self.signer {
            if let Err(reason) = sign(signer, &mut request, &event).await {
                // nothing the worker did: the batch waits and is tried again
                return Invocation::Throttled(reason);
            }
        }
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

/// Adds the SigV4 headers (`authorization`, `x-amz-date`, `x-amz-content-sha256`,
/// `x-amz-security-token`) for this request and body.
async fn sign(signer: &Signer, request: &mut Request<Full<Bytes>>, body: &[u8]) -> Result<(), String> {
    sign_request(&signer.credentials, &signer.region, &signer.service, request, body).await
}

/// An HTTP/1 connector for `http://` and `https://` (rustls with [`tls_config`]); shared with
/// the S3 fetches of large payloads.
///
/// # Errors
/// When the TLS files of `options` cannot be used.
pub(crate) fn https_connector(options: &HttpOptions) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    connector.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(options)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector))
}

/// Signs `request` (its method, URI, headers and `body`) with SigV4 for `service` in `region`;
/// shared with the S3 fetches of large payloads.
///
/// # Errors
/// When no credentials can be loaded or the request cannot be signed.
pub(crate) async fn sign_request(
    credentials: &SharedCredentialsProvider,
    region: &str,
    service: &str,
    request: &mut Request<Full<Bytes>>,
    body: &[u8],
) -> Result<(), String> {
    use aws_sigv4::http_request::{sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings};
    let credentials = credentials
        .provide_credentials()
        .await
        .map_err(|e| format!("cannot load AWS credentials to sign the request: {e}"))?;
    let identity = credentials.into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| format!("cannot sign the request: {e}"))?
        .into();
    let uri = request.uri().to_string();
    let method = request.method().as_str().to_string();
    let headers: Vec<(&str, &str)> =
        request.headers().iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))).collect();
    let signable = SignableRequest::new(&method, uri, headers.into_iter(), SignableBody::Bytes(body))
        .map_err(|e| format!("cannot sign the request: {e}"))?;
    let (instructions, _signature) =
        sign(signable, &params).map_err(|e| format!("cannot sign the request: {e}"))?.into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

/// An error with its sources, `outer: inner: …` (shared with the SQS client, `sqs_json`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
