//! Checking a SigV4 signature as a server does: computed again with `aws-sigv4` from what
//! arrived on the wire (the signed headers, the body, the time of `x-amz-date`) and compared.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a request's `Authorization` header says.
pub struct Authorization {
    pub access_key: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

pub fn authorization(headers: &HashMap<String, String>) -> Result<Authorization, String> {
    let auth = headers.get("authorization").ok_or("no authorization header")?;
    let field = |name: &str| {
        auth.split([' ', ','])
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
            .ok_or(format!("no {name} in {auth}"))
    };
    let credential = field("Credential")?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 {
        return Err(format!("credential scope {credential}"));
    }
    Ok(Authorization {
        access_key: scope[0].to_string(),
        region: scope[2].to_string(),
        service: scope[3].to_string(),
        signed_headers: field("SignedHeaders")?.split(';').map(str::to_string).collect(),
        signature: field("Signature")?,
    })
}

/// Computes the signature of a POST to `url` again with the secret `test` (and `token`, if
/// any), signing every header the request says it signed as it arrived — the signer adds the
/// date, the token and `x-amz-content-sha256` (when `payload_header`) itself — and compares.
pub fn verify(
    url: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
    token: Option<&str>,
    payload_header: bool,
) -> Result<Authorization, String> {
    verify_with_secret(url, headers, body, "test", token, payload_header)
}

/// As [`verify`], with the key's `secret`.
pub fn verify_with_secret(
    url: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
    secret: &str,
    token: Option<&str>,
    payload_header: bool,
) -> Result<Authorization, String> {
    use aws_sigv4::http_request::{sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings};
    let auth = authorization(headers)?;
    let date = headers.get("x-amz-date").ok_or("no x-amz-date")?;
    let identity =
        aws_credential_types::Credentials::new(&auth.access_key, secret, token.map(str::to_string), None, "t").into();
    let mut settings = SigningSettings::default();
    if payload_header {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&auth.region)
        .name(&auth.service)
        .time(parse_amz_date(date))
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let given: Vec<(&str, &str)> = auth
        .signed_headers
        .iter()
        .filter(|h| !matches!(h.as_str(), "x-amz-date" | "x-amz-security-token" | "x-amz-content-sha256"))
        .map(|h| (h.as_str(), headers.get(h).map_or("", String::as_str)))
        .collect();
    let signable =
        SignableRequest::new("POST", url, given.into_iter(), SignableBody::Bytes(body)).map_err(|e| e.to_string())?;
    let (_, expected) = sign(signable, &params).map_err(|e| e.to_string())?.into_parts();
    if auth.signature == expected {
        Ok(auth)
    } else {
        Err(format!("signature {}, expected {expected}", auth.signature))
    }
}

/// `20261127T093000Z` → the time it names.
pub fn parse_amz_date(s: &str) -> SystemTime {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d, hh, mm, ss) = (n(0, 4), n(4, 6), n(6, 8), n(9, 11), n(11, 13), n(13, 15));
    // days from the civil date (Howard Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    UNIX_EPOCH + Duration::from_secs((days * 86_400 + hh * 3600 + mm * 60 + ss) as u64)
}
