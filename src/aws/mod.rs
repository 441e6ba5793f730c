//! The AWS edge: everything that talks to AWS is built here, at the bottom of the house, from
//! one [`Aws`] per process — one credentials cache ([`credentials`]), one skew-corrected clock
//! ([`clock`]), endpoints resolved as the SDK resolves them, errors read as the SDK reads them
//! ([`errors`]). On top of it: the SQS hot calls over AWS JSON ([`sqs_json`], signed by
//! [`sigv4`]), the SDK clients for SQS and Lambda, S3 through `aws-sdk-s3` ([`s3`]), and SigV4
//! for the `http` target ([`sign`]). Nothing above this module knows which client sent a request.

pub mod clock;
pub mod credentials;
pub mod errors;
pub mod message;
pub mod s3;
pub mod sign;
pub mod sigv4;
pub mod sqs_json;
pub mod wire;

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;

pub use clock::Clock;
pub use credentials::CredentialsCache;
pub use errors::{SqsError, SqsErrorKind};
pub use message::SqsMessage;
pub use sign::RequestSigner;

/// How long connecting to an AWS endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// `[aws]`: the region and the endpoint overrides (`endpoint_url` already spread over the
/// services that have none of their own).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub region: Option<String>,
    /// Endpoint for SQS calls (`sqs_endpoint_url`, else `endpoint_url`), for local emulators.
    pub sqs_endpoint_url: Option<String>,
    /// Endpoint for Lambda calls (`lambda_endpoint_url`, else `endpoint_url`).
    pub lambda_endpoint_url: Option<String>,
    /// Endpoint for S3 (large payloads; `s3_endpoint_url`, else `endpoint_url`), path-style.
    pub s3_endpoint_url: Option<String>,
}

/// The process's way to AWS. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Aws {
    /// The SDK's shared configuration, its credentials provider replaced by [`Self::credentials`]
    /// and its identity cache off (the one cache is ours), its time source [`Self::clock`].
    pub shared: aws_config::SdkConfig,
    pub settings: Settings,
    pub credentials: CredentialsCache,
    pub clock: Clock,
    /// The region requests are signed for.
    pub region: String,
}

impl Aws {
    /// Loads the standard AWS configuration (credentials, region, endpoints, FIPS, dual-stack)
    /// with `[aws]` on top.
    ///
    /// # Errors
    /// When no region can be found.
    pub async fn load(settings: &Settings) -> anyhow::Result<Aws> {
        // the SDK's default HTTP client reads the environment's egress proxies (HTTPS_PROXY,
        // HTTP_PROXY, NO_PROXY) from behaviour version 2025-08-07 on; the lean client does the same
        // (`tests/e2e/egress_proxy.rs` shows both through one)
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let Some(region) = shared.region().map(ToString::to_string) else {
            anyhow::bail!(
                "no AWS region: set `[aws] region` in the configuration or the AWS_REGION environment variable"
            );
        };
        Ok(Aws::from_shared(shared, settings.clone(), region))
    }

    /// The edge over an already loaded SDK configuration (tests, tools).
    pub fn from_shared(shared: aws_config::SdkConfig, settings: Settings, region: String) -> Aws {
        let clock = Clock::default();
        let credentials = CredentialsCache::new(shared.credentials_provider(), clock.clone());
        let shared = shared
            .into_builder()
            .credentials_provider(SharedCredentialsProvider::new(credentials.clone()))
            .identity_cache(aws_sdk_sqs::config::IdentityCache::no_cache())
            .time_source(clock.time_source())
            .build();
        Aws { shared, settings, credentials, clock, region }
    }

    /// The SDK's SQS client (GetQueueAttributes, SendMessage): SDK retries off (each operation
    /// has its own policy), bounded timeouts, the endpoint as the SDK resolves it, signed by
    /// [`sigv4`] with the process clock, which every answer teaches ([`clock::SkewInterceptor`]).
    /// The SDK's stalled-stream protection is off: every request has an attempt timeout of its
    /// own, and its throughput checks cost about 3% of a drain's CPU (`bench/RESULTS.md`).
    pub fn sqs_client(&self) -> aws_sdk_sqs::Client {
        let mut builder = aws_sdk_sqs::config::Builder::from(&self.shared)
            .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
            .stalled_stream_protection(aws_sdk_sqs::config::StalledStreamProtectionConfig::disabled())
            .timeout_config(
                aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(crate::limits::SQS_ATTEMPT_TIMEOUT)
                    .build(),
            )
            .interceptor(clock::SkewInterceptor::new(self.clock.clone()))
            .push_auth_scheme(sigv4::CachedSigV4::new(self.region.clone(), "sqs", self.clock.clone()));
        if let Some(endpoint) = &self.settings.sqs_endpoint_url {
            builder = builder.endpoint_url(endpoint.clone());
        }
        aws_sdk_sqs::Client::from_conf(builder.build())
    }

    /// The endpoint URL the SDK's SQS client would use as its `endpoint_url`: `[aws]`'s, else
    /// the SDK's service-specific settings (`AWS_ENDPOINT_URL_SQS`, a profile's `services`
    /// section), else the global ones (`AWS_ENDPOINT_URL`, `endpoint_url`) — the generated
    /// `From<&SdkConfig>` of `aws-sdk-sqs`, line for line.
    pub fn sqs_endpoint_url(&self) -> Option<String> {
        if let Some(e) = &self.settings.sqs_endpoint_url {
            return Some(e.clone());
        }
        service_endpoint_url(&self.shared, "SQS", "AWS_ENDPOINT_URL", "endpoint_url")
    }

    /// The Lambda client: SDK retries off (throttles are retried per batch without failing its
    /// messages), the configured endpoint, the process clock (the SDK's own skew correction on
    /// top measures from it).
    pub fn lambda_client(&self) -> aws_sdk_lambda::Client {
        let mut builder = aws_sdk_lambda::config::Builder::from(&self.shared)
            .retry_config(aws_sdk_lambda::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_lambda::config::timeout::TimeoutConfig::builder().connect_timeout(CONNECT_TIMEOUT).build(),
            )
            .interceptor(clock::SkewInterceptor::new(self.clock.clone()));
        if let Some(endpoint) = &self.settings.lambda_endpoint_url {
            builder = builder.endpoint_url(endpoint.clone());
        }
        aws_sdk_lambda::Client::from_conf(builder.build())
    }

    /// A SigV4 signer for `service` in `region` with the process's credentials and clock.
    pub fn request_signer(&self, service: &str, region: &str) -> RequestSigner {
        RequestSigner::new(service.to_string(), region.to_string(), self.credentials.clone(), self.clock.clone())
    }
}

/// The SDK's endpoint lookup for one service: its service-specific environment variable and
/// profile key when the endpoint was not set in code, else the shared `endpoint_url`.
fn service_endpoint_url(shared: &aws_config::SdkConfig, service_id: &str, env: &str, profile: &str) -> Option<String> {
    if shared.get_origin("endpoint_url").is_client_config() {
        return shared.endpoint_url().map(str::to_string);
    }
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id(service_id)
        .env(env)
        .profile(profile)
        .build()
        .expect("every field is set");
    shared.service_config().and_then(|conf| conf.load_config(key)).or_else(|| shared.endpoint_url().map(str::to_string))
}

/// `t` as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), for logs.
pub fn http_date(t: SystemTime) -> String {
    aws_smithy_types::DateTime::from(t)
        .fmt(aws_smithy_types::date_time::Format::HttpDate)
        .unwrap_or_else(|_| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Profile(&'static str);
    impl aws_types::service_config::LoadServiceConfig for Profile {
        fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
            (key.service_id() == "SQS" && key.env() == "AWS_ENDPOINT_URL").then(|| self.0.to_string())
        }
    }

    #[test]
    fn the_sqs_endpoint_is_the_one_the_sdk_client_gets() {
        let base = || aws_config::SdkConfig::builder().region(aws_config::Region::new("eu-west-1"));
        let aws = |shared, settings| Aws::from_shared(shared, settings, "eu-west-1".into());
        // the service-specific setting (AWS_ENDPOINT_URL_SQS, a profile's services section)
        let shared = base().service_config(Profile("https://vpce-1.sqs.eu-west-1.vpce.amazonaws.com")).build();
        assert_eq!(
            aws(shared, Settings::default()).sqs_endpoint_url().as_deref(),
            Some("https://vpce-1.sqs.eu-west-1.vpce.amazonaws.com")
        );
        // `[aws] sqs_endpoint_url` first
        let shared = base().service_config(Profile("https://vpce")).build();
        let settings = Settings { sqs_endpoint_url: Some("http://127.0.0.1:1".into()), ..Settings::default() };
        assert_eq!(aws(shared, settings).sqs_endpoint_url().as_deref(), Some("http://127.0.0.1:1"));
        // none: the SDK's rules give the regional endpoint
        assert_eq!(aws(base().build(), Settings::default()).sqs_endpoint_url(), None);
    }
}
