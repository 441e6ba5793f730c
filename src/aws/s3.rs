//! S3 for large payloads, through `aws-sdk-s3`: S3's own signing settings (single-encoded keys,
//! no path normalisation), virtual-hosted or path-style addressing by S3's endpoint rules
//! (buckets with dots go path-style over TLS), partitions, FIPS and dual-stack, with the
//! process's credentials and clock. One thing the Rust SDK does not do by itself is follow a
//! bucket to its region: a bucket in another region answers `301 PermanentRedirect` or
//! `400 AuthorizationHeaderMalformed` with `x-amz-bucket-region`; the request is sent again to
//! that region, and the bucket's region is remembered.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use bytes::{Bytes, BytesMut};

use super::Aws;

/// Buckets whose region is remembered, at most: producers name the buckets, and without
/// `large_payloads.allowed_buckets` any number of them (a bucket past the cap still has its
/// redirect followed, once per request).
const MAX_REMEMBERED_BUCKETS: usize = 1024;

/// Remembers `bucket`'s region unless `regions` already holds `cap` other buckets.
fn remember_region(regions: &mut HashMap<String, String>, bucket: &str, region: &str, cap: usize) {
    if regions.len() < cap || regions.contains_key(bucket) {
        regions.insert(bucket.to_string(), region.to_string());
    }
}

/// An S3 client per region a bucket lives in.
pub struct S3 {
    aws: Aws,
    /// `[aws] s3_endpoint_url` (an emulator): path-style, the one region.
    endpoint: Option<String>,
    clients: Mutex<HashMap<String, aws_sdk_s3::Client>>,
    bucket_regions: Mutex<HashMap<String, String>>,
}

/// Why an object could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    TooLarge { max_bytes: usize },
    Failed(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::TooLarge { max_bytes } => write!(f, "the object is larger than {max_bytes} bytes"),
            FetchError::Failed(why) => f.write_str(why),
        }
    }
}

impl S3 {
    pub fn new(aws: &Aws) -> S3 {
        S3 {
            aws: aws.clone(),
            endpoint: aws.settings.s3_endpoint_url.clone(),
            clients: Mutex::new(HashMap::new()),
            bucket_regions: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, region: &str) -> aws_sdk_s3::Client {
        let mut clients = self.clients.lock().expect("s3 clients");
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let mut b = aws_sdk_s3::config::Builder::from(&self.aws.shared)
                    .region(aws_sdk_s3::config::Region::new(region.to_string()))
                    .interceptor(super::clock::SkewInterceptor::new(self.aws.clock.clone()))
                    .timeout_config(
                        aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                            .connect_timeout(super::CONNECT_TIMEOUT)
                            .build(),
                    );
                if let Some(e) = &self.endpoint {
                    b = b.endpoint_url(e.clone()).force_path_style(true);
                }
                aws_sdk_s3::Client::from_conf(b.build())
            })
            .clone()
    }

    /// The region to send requests for `bucket` to: the one it answered with before, else the
    /// service's.
    fn region_of(&self, bucket: &str) -> String {
        self.bucket_regions
            .lock()
            .expect("bucket regions")
            .get(bucket)
            .cloned()
            .unwrap_or_else(|| self.aws.region.clone())
    }

    /// The region a failed request's answer names for `bucket`, when it differs from `tried`.
    fn redirect<E>(
        &self,
        bucket: &str,
        tried: &str,
        e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Option<String> {
        let raw = e.raw_response()?;
        if !matches!(raw.status().as_u16(), 301 | 307 | 400) {
            return None;
        }
        let region = raw.headers().get("x-amz-bucket-region")?.to_string();
        if region == tried {
            return None;
        }
        tracing::info!(bucket, region = %region, "the bucket lives in another region; following it");
        remember_region(
            &mut self.bucket_regions.lock().expect("bucket regions"),
            bucket,
            &region,
            MAX_REMEMBERED_BUCKETS,
        );
        Some(region)
    }

    /// The object `bucket`/`key`, at most `max_bytes` (the caller bounds the time:
    /// `large_payloads.fetch_timeout_secs`).
    ///
    /// # Errors
    /// [`FetchError`]: too large, or why S3 refused (code and message).
    pub async fn get(&self, bucket: &str, key: &str, max_bytes: usize) -> Result<Bytes, FetchError> {
        let mut region = self.region_of(bucket);
        let mut redirected = false;
        let out = loop {
            match self.client(&region).get_object().bucket(bucket).key(key).send().await {
                Ok(out) => break out,
                Err(e) => match self.redirect(bucket, &region, &e) {
                    Some(r) if !redirected => {
                        region = r;
                        redirected = true;
                    }
                    _ => return Err(FetchError::Failed(describe(&e))),
                },
            }
        };
        if out.content_length().is_some_and(|n| n > max_bytes as i64) {
            return Err(FetchError::TooLarge { max_bytes });
        }
        let mut body = out.body;
        let mut bytes = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| FetchError::Failed(format!("the object broke off: {}", crate::net::error_chain(&e))))?;
            if bytes.len() + chunk.len() > max_bytes {
                return Err(FetchError::TooLarge { max_bytes });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes.freeze())
    }

    /// Deletes `bucket`/`key`.
    ///
    /// # Errors
    /// Why S3 refused.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), String> {
        let mut region = self.region_of(bucket);
        let mut redirected = false;
        loop {
            match self.client(&region).delete_object().bucket(bucket).key(key).send().await {
                Ok(_) => return Ok(()),
                Err(e) => match self.redirect(bucket, &region, &e) {
                    Some(r) if !redirected => {
                        region = r;
                        redirected = true;
                    }
                    _ => return Err(describe(&e)),
                },
            }
        }
    }
}

/// An S3 error as a person reads it: the code, the message and the status, or the connection's
/// error chain.
fn describe<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            match (se.err().code(), se.err().message()) {
                (Some(c), Some(m)) => format!("{c}: {m} (HTTP {status})"),
                (Some(c), None) => format!("{c} (HTTP {status})"),
                _ if status == 404 => "NoSuchKey: no such object (HTTP 404)".to_string(),
                _ => format!("HTTP {status}"),
            }
        }
        other => crate::net::error_chain(other),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn remembered_regions_stop_at_the_cap() {
        let mut regions = std::collections::HashMap::new();
        for i in 0..10 {
            super::remember_region(&mut regions, &format!("bucket-{i}"), "eu-west-1", 4);
        }
        assert_eq!(regions.len(), 4, "bounded however many buckets producers name");
        super::remember_region(&mut regions, "bucket-0", "us-west-2", 4);
        assert_eq!(regions["bucket-0"], "us-west-2", "a remembered bucket's region is still updated");
    }
}
