//! SigV4 for the SQS client, with the signing key kept for the day.
//!
//! The SDK's signer derives the signing key — four chained HMACs of the secret, the date, the
//! region and the service — and builds the canonical request through general-purpose header maps
//! for every request; at 0.2 SQS requests per message that was about 7% of a drain's CPU (perf,
//! `bench/RESULTS.md`). The key only changes with the date or the credentials, so this signer
//! derives it once per day and secret (as the AWS CLI's signers do) and writes the canonical
//! request into one buffer. It replaces the SDK's `sigv4` auth scheme on the SQS client only.
//!
//! The fast path covers what the SQS client sends: a request whose body is in memory, with no
//! query string and a path of unreserved characters. Anything else is signed by `aws-sigv4`
//! itself. A unit test holds the two to the same signatures.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::auth::{AuthScheme, AuthSchemeEndpointConfig, AuthSchemeId, Sign};
use aws_smithy_runtime_api::client::identity::{Identity, SharedIdentityResolver};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::{GetIdentityResolver, RuntimeComponents};
use aws_smithy_types::config_bag::ConfigBag;
use hmac::digest::FixedOutput;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The SDK's scheme id for SigV4: registering under it replaces the SDK's signer.
const SCHEME_ID: AuthSchemeId = AuthSchemeId::new("sigv4");

/// Headers the SDK's signer leaves unsigned (`aws-sigv4`'s default exclusions).
const EXCLUDED: [&str; 4] = ["authorization", "user-agent", "x-amzn-trace-id", "transfer-encoding"];

/// The auth scheme to register with `push_auth_scheme` on an SQS client config.
#[derive(Debug)]
pub struct CachedSigV4 {
    signer: CachedSigner,
}

impl CachedSigV4 {
    /// Signs for `service` in `region` (the client's region) at `clock`'s time.
    pub fn new(region: impl Into<String>, service: &'static str, clock: super::Clock) -> Self {
        CachedSigV4 { signer: CachedSigner::new(region, service, clock) }
    }
}

impl AuthScheme for CachedSigV4 {
    fn scheme_id(&self) -> AuthSchemeId {
        SCHEME_ID
    }

    fn identity_resolver(&self, identity_resolvers: &dyn GetIdentityResolver) -> Option<SharedIdentityResolver> {
        identity_resolvers.identity_resolver(SCHEME_ID)
    }

    fn signer(&self) -> &dyn Sign {
        &self.signer
    }
}

/// The signer itself, for clients that sign their own requests ([`super::sqs_json`]).
#[derive(Debug)]
pub struct CachedSigner {
    region: String,
    service: &'static str,
    key: Mutex<Option<SigningKey>>,
    /// The process clock (AWS's time): what the SDK's requests are signed at.
    clock: super::Clock,
}

/// A derived signing key and what it was derived from.
struct SigningKey {
    secret: String,
    date: [u8; 8],
    key: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(** redacted **)")
    }
}

impl Sign for CachedSigner {
    fn sign_http_request(
        &self,
        request: &mut HttpRequest,
        identity: &Identity,
        _auth_scheme_endpoint_config: AuthSchemeEndpointConfig<'_>,
        _runtime_components: &RuntimeComponents,
        _config_bag: &ConfigBag,
    ) -> Result<(), BoxError> {
        let creds = identity.data::<Credentials>().ok_or("SigV4 signing needs AWS credentials")?;
        // the process clock, corrected by the skew every AWS answer teaches it
        let now = self.clock.now();
        let headers: Vec<(&str, &str)> = request.headers().iter().collect();
        let signed = self.sign(request.method(), request.uri(), &headers, request.body().bytes(), creds, now)?;
        for (name, value) in signed {
            request.headers_mut().insert(name, value);
        }
        Ok(())
    }
}

/// The headers a signature adds to a request.
pub type SignatureHeaders = Vec<(&'static str, String)>;

impl CachedSigner {
    /// Signs for `service` in `region`.
    pub fn new(region: impl Into<String>, service: &'static str, clock: super::Clock) -> Self {
        CachedSigner { region: region.into(), service, key: Mutex::new(None), clock }
    }

    /// The signature headers of a request (`body`: `None` when it is not in memory): from the fast
    /// path when it covers the request, else from `aws-sigv4`.
    ///
    /// # Errors
    /// When `aws-sigv4` cannot sign the request.
    pub fn sign(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        creds: &Credentials,
        now: SystemTime,
    ) -> Result<SignatureHeaders, BoxError> {
        if let Some(signed) = body.and_then(|b| self.sign_fast(method, uri, headers, b, creds, now)) {
            return Ok(signed);
        }
        aws_sigv4_headers(method, uri, headers, body, creds, now, &self.region, self.service)
    }

    /// The signature headers of a request the fast path covers; `None` for any other.
    fn sign_fast(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        creds: &Credentials,
        now: SystemTime,
    ) -> Option<SignatureHeaders> {
        let (scheme, rest) = uri.split_once("://")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        if !plain_path(path) || authority.contains('@') {
            return None;
        }
        let (date, date_time) = utc(now);
        let host = default_port_stripped(scheme, authority);

        let mut signed = headers_to_sign(headers, host, &date_time, creds)?;
        signed.sort_unstable_by(|a, b| a.0.cmp(b.0));

        let (creq, signed_names) = canonical_request(method, path, &signed, body);
        let scope = format!("{}/{}/{}/aws4_request", std::str::from_utf8(&date).ok()?, self.region, self.service);
        let string_to_sign =
            format!("AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}", hex::encode(Sha256::digest(creq.as_bytes())));
        let key = self.key_for(creds.secret_access_key(), date);
        let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));

        let mut out: SignatureHeaders = vec![
            ("x-amz-date", date_time),
            (
                "authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}",
                    creds.access_key_id()
                ),
            ),
        ];
        if let Some(token) = creds.session_token() {
            out.push(("x-amz-security-token", token.to_string()));
        }
        Some(out)
    }

    /// The signing key for `secret` on `date`, derived at most once a day per secret.
    fn key_for(&self, secret: &str, date: [u8; 8]) -> [u8; 32] {
        let mut cached = self.key.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(k) = cached.as_ref().filter(|k| k.date == date && k.secret == secret) {
            return k.key;
        }
        let k_date = hmac(format!("AWS4{secret}").as_bytes(), &date);
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, self.service.as_bytes());
        let key = hmac(&k_service, b"aws4_request");
        *cached = Some(SigningKey { secret: secret.to_string(), date, key });
        key
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any size");
    mac.update(data);
    mac.finalize_fixed().into()
}

/// The headers to sign: the request's (lower-case names only, values trimmed, repeats joined),
/// less the exclusions, plus host, date and token; `None` when the fast path cannot sign them.
fn headers_to_sign<'h>(
    headers: &[(&'h str, &str)],
    host: &str,
    date_time: &str,
    creds: &Credentials,
) -> Option<Vec<(&'h str, String)>> {
    let mut signed: Vec<(&str, String)> = Vec::with_capacity(headers.len() + 3);
    for (name, value) in headers {
        let name_lower = name.to_ascii_lowercase();
        if EXCLUDED.contains(&name_lower.as_str()) {
            continue;
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return None;
        }
        let value = trim_all(value);
        match signed.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => signed.push((name, value)),
        }
    }
    if !signed.iter().any(|(n, _)| *n == "host") {
        signed.push(("host", host.to_string()));
    }
    if signed.iter().any(|(n, _)| matches!(*n, "x-amz-date" | "x-amz-security-token")) {
        return None; // set by the signer only
    }
    signed.push(("x-amz-date", date_time.to_string()));
    if let Some(token) = creds.session_token() {
        signed.push(("x-amz-security-token", token.to_string()));
    }
    Some(signed)
}

/// The canonical request of sorted `signed` headers, and their names joined for the
/// `SignedHeaders` field.
fn canonical_request(method: &str, path: &str, signed: &[(&str, String)], body: &[u8]) -> (String, String) {
    let mut creq = String::with_capacity(512);
    let _ = write!(creq, "{method}\n{path}\n\n");
    for (name, value) in signed {
        let _ = writeln!(creq, "{name}:{value}");
    }
    creq.push('\n');
    let names: Vec<&str> = signed.iter().map(|(n, _)| *n).collect();
    let signed_names = names.join(";");
    creq.push_str(&signed_names);
    creq.push('\n');
    creq.push_str(&hex::encode(Sha256::digest(body)));
    (creq, signed_names)
}

/// A path that needs neither encoding nor normalization: unreserved characters and single
/// slashes, no `.` or `..` segments.
fn plain_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("//")
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'))
        && path.split('/').all(|seg| seg != "." && seg != "..")
}

/// The host as the signer and hyper send it: without a default port.
fn default_port_stripped<'a>(scheme: &str, authority: &'a str) -> &'a str {
    match authority.rsplit_once(':') {
        Some((host, "80")) if scheme == "http" => host,
        Some((host, "443")) if scheme == "https" => host,
        _ => authority,
    }
}

/// A header value as SigV4 canonicalizes it: outer spaces trimmed, inner runs of spaces as one.
fn trim_all(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, word) in value.trim_matches(' ').split(' ').filter(|w| !w.is_empty()).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `YYYYMMDD` and `YYYYMMDD'T'HHMMSS'Z'` of `t` in UTC.
fn utc(t: SystemTime) -> ([u8; 8], String) {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let date_str = format!("{year:04}{month:02}{day:02}");
    let mut date = [b'0'; 8];
    date.copy_from_slice(&date_str.as_bytes()[..8]);
    let date_time = format!("{date_str}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60);
    (date, date_time)
}

/// Signs with `aws-sigv4` itself (a request outside the fast path).
#[allow(clippy::too_many_arguments)]
fn aws_sigv4_headers(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    creds: &Credentials,
    now: SystemTime,
    region: &str,
    service: &str,
) -> Result<SignatureHeaders, BoxError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let identity: Identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(SigningSettings::default())
        .build()?
        .into();
    let body = body.map_or(SignableBody::UnsignedPayload, SignableBody::Bytes);
    let signable = SignableRequest::new(method, uri, headers.iter().copied(), body)?;
    let (instructions, _) = sign(signable, &params)?.into_parts();
    let (headers, _) = instructions.into_parts();
    Ok(headers.into_iter().map(|h| (h.name(), h.value().to_string())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `aws-sigv4` (the SDK's signer) produces for the same request.
    fn reference(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        creds: &Credentials,
        now: SystemTime,
    ) -> Vec<(&'static str, String)> {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        let identity: Identity = creds.clone().into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("eu-west-1")
            .name("sqs")
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(method, uri, headers.iter().copied(), SignableBody::Bytes(body)).unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut out: Vec<_> =
            instructions.into_parts().0.into_iter().map(|h| (h.name(), h.value().to_string())).collect();
        out.sort();
        out
    }

    fn ours(
        signer: &CachedSigner,
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        creds: &Credentials,
        now: SystemTime,
    ) -> Vec<(&'static str, String)> {
        let mut out = signer.sign_fast("POST", uri, headers, body, creds, now).expect("the fast path takes it");
        out.sort();
        out
    }

    #[test]
    fn signatures_equal_the_sdk_signers_across_days_credentials_and_requests() {
        let signer = CachedSigV4::new("eu-west-1", "sqs", crate::aws::Clock::default()).signer;
        let plain = Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None, None, "t");
        let session = Credentials::new("ASIAEXAMPLE", "other/secret+key", Some("token==/+".into()), None, "t");
        let receive = br#"{"QueueUrl":"https://sqs.eu-west-1.amazonaws.com/123456789012/q","MaxNumberOfMessages":10}"#;
        let headers = [
            ("content-type", "application/x-amz-json-1.0"),
            ("x-amz-target", "AmazonSQS.ReceiveMessage"),
            ("x-amzn-query-mode", "true"),
            ("content-length", "92"),
            ("user-agent", "aws-sdk-rust/1 os/linux"),
            ("x-amz-user-agent", "aws-sdk-rust/1  api/sqs#1"),
            ("amz-sdk-invocation-id", "  0f7c1a9e-2b  "),
            ("amz-sdk-request", "attempt=1; max=1"),
        ];
        let day = 86_400;
        let times = [1_800_000_000u64, 1_800_000_000 + 5, 1_800_000_000 + day, 1_700_000_000, 951_782_400];
        for (uri, creds) in [
            ("https://sqs.eu-west-1.amazonaws.com/", &plain),
            ("https://sqs.eu-west-1.amazonaws.com", &session),
            ("http://127.0.0.1:4566/", &plain),
            ("https://sqs.eu-west-1.amazonaws.com:443/", &plain),
            ("http://localhost:80/", &session),
            ("http://localhost:9324/queue/a-b_c.d~e", &plain),
        ] {
            for t in times {
                let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t);
                for body in [&receive[..], b"", "{\"Entries\":[\"é\"]}".as_bytes()] {
                    assert_eq!(
                        ours(&signer, uri, &headers, body, creds, now),
                        reference("POST", uri, &headers, body, creds, now),
                        "{uri} at {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_signing_key_is_derived_again_for_a_new_day_or_secret() {
        let signer = CachedSigV4::new("eu-west-1", "sqs", crate::aws::Clock::default()).signer;
        let day1 = utc(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000)).0;
        let day2 = utc(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_086_400)).0;
        let a = signer.key_for("secret-a", day1);
        assert_eq!(signer.key_for("secret-a", day1), a);
        assert_ne!(signer.key_for("secret-a", day2), a);
        assert_ne!(signer.key_for("secret-b", day2), signer.key_for("secret-a", day2));
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        let at = |s| utc(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s)).1;
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_800_000_000), "20270115T080000Z");
        assert_eq!(at(4_102_444_799), "20991231T235959Z");
    }

    #[test]
    fn requests_outside_the_fast_path_are_left_to_aws_sigv4() {
        let signer = CachedSigV4::new("eu-west-1", "sqs", crate::aws::Clock::default()).signer;
        let creds = Credentials::new("AKID", "secret", None, None, "t");
        let now = SystemTime::UNIX_EPOCH;
        for uri in ["https://h/?Action=ReceiveMessage", "https://h/a%20b", "https://h/a/../b", "https://h//a"] {
            assert!(signer.sign_fast("POST", uri, &[], b"", &creds, now).is_none(), "{uri}");
            let mut signed = signer.sign("POST", uri, &[], Some(b""), &creds, now).unwrap();
            signed.sort();
            assert_eq!(signed, reference("POST", uri, &[], b"", &creds, now), "{uri}");
        }
    }
}
