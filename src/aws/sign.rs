//! SigV4 for requests the service sends itself to IAM-protected HTTP endpoints (the `http`
//! target's `sigv4_service`: API Gateway, Lambda function URLs, …), with `aws-sigv4`'s signer,
//! the process's credentials cache and its skew-corrected clock.

use aws_sigv4::http_request::{sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings};
use bytes::Bytes;
use http_body_util::Full;

use super::{Clock, CredentialsCache};

/// Signs requests for one service and region.
#[derive(Clone, Debug)]
pub struct RequestSigner {
    pub service: String,
    pub region: String,
    credentials: CredentialsCache,
    clock: Clock,
}

impl RequestSigner {
    pub fn new(service: String, region: String, credentials: CredentialsCache, clock: Clock) -> Self {
        RequestSigner { service, region, credentials, clock }
    }

    /// Adds the SigV4 headers (`authorization`, `x-amz-date`, `x-amz-content-sha256`,
    /// `x-amz-security-token`) for this request and `body`.
    ///
    /// # Errors
    /// When no credentials can be loaded or the request cannot be signed.
    pub async fn sign(&self, request: &mut hyper::Request<Full<Bytes>>, body: &[u8]) -> Result<(), String> {
        let credentials =
            self.credentials.get().await.map_err(|e| {
                format!("cannot load AWS credentials to sign the request: {}", crate::net::error_chain(&e))
            })?;
        let identity = credentials.into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.service)
            .time(self.clock.now())
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
}
