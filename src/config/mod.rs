//! Configuration: TOML text → `${VAR}` interpolation → raw serde structs → validated [`Config`].
//!
//! The raw structs mirror the file exactly (`deny_unknown_fields`, every key optional where the
//! contract gives a default); [`Config`] holds what the service runs on: `Duration`s, checked
//! ranges, one typed target. Validation does no IO and reports every problem it finds, each with
//! the key path (`pipelines[0].batch.size`) and the reason.
//!
//! By concern: this file holds the validated types, the named defaults and the entry points;
//! `interpolate` replaces `${VAR}`; `validate` holds the raw structs and every rule.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

mod interpolate;
mod validate;

use interpolate::interpolate;
use validate::{validate, RawConfig};

pub use crate::limits::MAX_BATCH_BYTES;
pub use crate::limits::MAX_VISIBILITY_SECS;
pub use crate::limits::{MAX_MIN_POLLERS, MAX_POLLERS};

/// The validated configuration the service runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub aws: AwsConfig,
    /// Address of the `/metrics`, `/healthz` and `/readyz` server.
    pub listen: SocketAddr,
    /// Address of the admin API (`GET /pipelines`, pause, resume); `None`: off.
    pub admin_listen: Option<SocketAddr>,
    /// The admin API's bearer token (`server.admin_token_file` or `admin_token_env`); required
    /// when `admin_listen` is not a loopback address.
    pub admin_token: Option<Secret>,
    /// How long a drain may take after SIGTERM before what is left is released.
    pub grace_period: Duration,
    /// `[pools.NAME]`: worker pools that several pipelines share (`target.pool`).
    pub pools: std::collections::BTreeMap<String, PoolConfig>,
    /// `[telemetry]` with an `otlp_endpoint`: spans exported over OTLP; `None`: off.
    pub telemetry: Option<TelemetryConfig>,
    /// `[fleet]` with a `redis_url`: budgets shared by every instance; `None`: off.
    pub fleet: Option<FleetConfig>,
    pub pipelines: Vec<PipelineConfig>,
}

/// `[fleet]`: the Redis (or Valkey) every instance of the service shares budgets through.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` with TLS (ElastiCache in
    /// transit encryption); a secret, as it may carry the password.
    pub redis_url: Secret,
    /// How long a fleet slot lives unless renewed: a killed instance's slots come back after it.
    pub slot_ttl: Duration,
}

/// `[telemetry]`: OpenTelemetry spans of receives and batches, exported over OTLP/HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Where spans go: the collector's OTLP/HTTP traces URL (`…/v1/traces`; a URL without a
    /// path gets it appended).
    pub traces_url: String,
    /// The share of batches (and receives) traced, `0.0..=1.0`.
    pub sample_ratio: f64,
    /// Headers sent with every export (authorization of a hosted collector): secrets.
    pub headers: Vec<(String, Secret)>,
    /// `service.name` of the resource.
    pub service_name: String,
    /// More resource attributes.
    pub resource_attributes: Vec<(String, String)>,
    /// Read the ECS task metadata endpoint or EC2's instance metadata at start.
    pub detect_resources: bool,
    /// Bound of one export request.
    pub export_timeout: Duration,
}

/// `[pools.NAME]`: the batches in flight that the pipelines naming it share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub max_concurrency: usize,
    /// `concurrency = "adaptive"`: the floor (`min_concurrency`); `None`: fixed.
    pub adaptive: Option<usize>,
}

/// A pipeline's place in a shared pool (`target.pool`, `priority`, `weight`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolMembership {
    pub name: String,
    /// Higher first, strictly.
    pub priority: u32,
    /// Share among the pipelines of one priority.
    pub weight: u32,
    /// The pool's settings (a change restarts the pipelines that share it).
    pub settings: PoolConfig,
}

/// `[aws]` (the edge's settings).
pub type AwsConfig = crate::aws::Settings;

/// One queue → target flow.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub name: String,
    pub queue_url: String,
    /// FIFO queues (URL ends in `.fifo`) keep message-group order through failures.
    pub fifo: bool,
    pub pollers: PollerConfig,
    pub batch: BatchConfig,
    pub target: TargetConfig,
    pub retry: RetryConfig,
    pub dead_letter: Option<DeadLetterConfig>,
    /// Messages pass when any pattern matches; `None` passes everything.
    pub filter: Option<FilterConfig>,
    /// How often the queue depth is sampled with GetQueueAttributes.
    pub depth_interval: Duration,
    pub lease: LeaseConfig,
    /// `[pipelines.large_payloads]`: resolve SQS Extended Client pointers from S3.
    pub large_payloads: Option<LargePayloadConfig>,
    /// `[pipelines.idempotency]`: a key reaches the worker once across the fleet (`[fleet]`).
    pub idempotency: Option<IdempotencyConfig>,
    /// `[pipelines.desired_tasks]`: how `sqs_poller_desired_tasks` is worked out.
    pub desired_tasks: DesiredTasksConfig,
}

/// `[pipelines.desired_tasks]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredTasksConfig {
    /// `drain_secs`: the backlog should be gone within this long.
    pub drain: Duration,
    /// `utilization`: the share of its measured capacity a task should run at.
    pub utilization: f64,
    /// `cloudwatch_emf`: each sample also on stdout in CloudWatch's embedded metric format.
    pub cloudwatch_emf: bool,
}

/// `[pipelines.idempotency]`.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyConfig {
    pub key: IdempotencyKey,
    /// How long a completed key keeps later copies away.
    pub ttl: Duration,
}

/// What a message's idempotency key is.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyKey {
    /// Its message id: a redelivery of the same message (a lost delete, a crash) is caught.
    MessageId,
    /// The value at this JSON pointer into its body: duplicate sends of one business key too.
    Pointer(String),
}

/// `[pipelines.large_payloads]`.
#[derive(Debug, Clone)]
pub struct LargePayloadConfig {
    /// Largest payload fetched.
    pub max_bytes: usize,
    /// Fetches at once.
    pub concurrency: usize,
    /// How long one fetch may take, waiting for a slot included.
    pub fetch_timeout: std::time::Duration,
    /// Delete the S3 object once its message was processed and deleted.
    pub delete_after_success: bool,
    /// `allowed_buckets`: the only buckets (and key prefixes) pointers may name; `None`: any
    /// bucket the service's role can read. A pointer elsewhere is never fetched.
    pub allowed_buckets: Option<Vec<AllowedBucket>>,
}

/// One entry of `large_payloads.allowed_buckets`: `bucket`, or `bucket/prefix` (keys that start
/// with `prefix`, as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedBucket {
    pub bucket: String,
    pub prefix: String,
}

impl LargePayloadConfig {
    /// Whether a pointer may name `bucket`/`key`.
    pub fn allows(&self, bucket: &str, key: &str) -> bool {
        self.allowed_buckets
            .as_ref()
            .is_none_or(|list| list.iter().any(|a| a.bucket == bucket && key.starts_with(&a.prefix)))
    }
}

/// Defaults of the keys that have no fixed default in the contract.
pub mod defaults {
    /// `large_payloads.fetch_timeout_secs`: one S3 fetch, waiting for a slot included.
    pub const FETCH_TIMEOUT_SECS: u64 = 60;
    /// `lease.max_outstanding_bytes`: 256 MiB, for a sidecar in a task of 512 MiB to a few GiB.
    /// With the queues' default `MaximumMessageSize` (1 MiB) that is 25 receives at once.
    pub const MAX_OUTSTANDING_BYTES: u64 = 256 << 20;
    /// `lease.max_lease_secs`: SQS's own limit (12 hours from the receive).
    pub const MAX_LEASE_SECS: u64 = super::MAX_VISIBILITY_SECS;
    /// `target.max_throttled_secs`: how long a throttled batch is held before it is released.
    pub const MAX_THROTTLED_SECS: u64 = 60;
    /// `filter.keep_delay_secs`: how long a kept (filtered, `on_filtered = "keep"`) message stays
    /// invisible before it comes back.
    pub const KEEP_DELAY_SECS: u64 = 30;
    /// `server.admin_listen`: loopback only.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9465";

    /// `lease.max_outstanding`: room for every batch that may be in flight
    /// (`max_concurrency × batch.size`, in whole receives of 10), and with batches of fewer than
    /// 10 messages one receive more: a poller reserves room for a whole receive, so with small
    /// batches filling the room the pollers would receive only once ten messages' batches had
    /// ended (with batches of one, once every batch had ended: the pipeline ran in bursts).
    pub fn max_outstanding(max_concurrency: usize, batch_size: usize) -> usize {
        let n = max_concurrency.saturating_mul(batch_size).max(1);
        let slack = if batch_size < crate::limits::RECEIVE_MAX { crate::limits::RECEIVE_MAX } else { 0 };
        n.div_ceil(crate::limits::RECEIVE_MAX) * crate::limits::RECEIVE_MAX + slack
    }
}

/// `[pipelines.lease]`: how many messages may be outstanding, and for how long.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Messages received and not yet acknowledged, at most; pollers wait for room before receiving.
    pub max_outstanding: usize,
    /// Bytes of those messages (as SQS counts a message: body and attributes, plus
    /// [`crate::limits::MESSAGE_OVERHEAD_BYTES`] each), at most; a poller reserves what its
    /// receive can bring (ten of the queue's largest messages) before receiving.
    pub max_outstanding_bytes: usize,
    /// Longest time the lease keeper keeps a message invisible; then it lets it go.
    pub max_lease: Duration,
}

#[derive(Debug, Clone)]
pub struct PollerConfig {
    pub min: usize,
    pub max: usize,
    /// Long-poll wait of each ReceiveMessage.
    pub wait_time: Duration,
    /// Sent with ReceiveMessage when set; otherwise the queue's own timeout applies.
    pub visibility_timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub size: usize,
    pub window: Duration,
    pub max_bytes: usize,
    /// Standard and fair queues: messages of one `MessageGroupId` in batches at once, at most.
    pub max_in_flight_per_group: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub kind: TargetKind,
    pub timeout: Duration,
    /// Batches in flight at once; pollers pause while this many are running.
    pub max_concurrency: usize,
    pub rate_limit_per_sec: Option<NonZeroU32>,
    /// A batch the target keeps throttling is held at most this long, then released with backoff.
    pub max_throttled: Duration,
    /// While this URL does not answer 2xx, the pipeline's pollers do not receive.
    pub health_url: Option<String>,
    /// `concurrency = "adaptive"`: the floor of the adaptive limit (`min_concurrency`); `None`:
    /// fixed at `max_concurrency`.
    pub adaptive: Option<usize>,
    /// `[pipelines.target.breaker]`.
    pub breaker: BreakerConfig,
    /// The `http` target's options for remote workers (headers, TLS, SigV4).
    pub http: HttpOptions,
    /// `target.pool`: the shared pool its batches take their slots from.
    pub pool: Option<PoolMembership>,
    /// `fleet_max_concurrency`: batches in flight at once across every instance of the service
    /// (the pipeline's name is the key they share), through `[fleet]`.
    pub fleet_max_concurrency: Option<usize>,
    /// `fleet_rate_per_sec`: messages dispatched a second across every instance, through
    /// `[fleet]`.
    pub fleet_rate_per_sec: Option<NonZeroU32>,
    /// `fleet_key`: the name of the budget the two above share; pipelines (of any service) that
    /// name the same key share one budget. `None`: the pipeline's name.
    pub fleet_key: Option<String>,
}

/// `[pipelines.target.breaker]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Consecutive unavailable calls that open it.
    pub failures: u32,
    /// The first cool-down; doubled after each failed probe.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failures: 5,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(300),
        }
    }
}

/// Options of the `http` target for workers that are not on localhost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpOptions {
    /// Request headers sent with every batch; their values are secrets (never printed, logged
    /// or exported).
    pub headers: Vec<(String, Secret)>,
    /// More trusted roots (PEM), beside the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Sign every request with SigV4 (the AWS credential chain), for IAM-protected endpoints.
    pub sigv4: Option<SigV4>,
}

/// SigV4 signing of the `http` target's requests.
#[derive(Debug, Clone, PartialEq)]
pub struct SigV4 {
    /// `execute-api` (API Gateway), `lambda` (function URLs), …
    pub service: String,
    /// Defaults to the AWS region of the service.
    pub region: Option<String>,
}

/// A value that must not be shown: `Debug` prints a fingerprint, not the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // a fingerprint, so that a changed value still reads as a change (reloads compare Debug)
        let hash = fnv1a(self.0.as_bytes());
        write!(f, "Secret({:04x})", hash >> 48)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetKind {
    Http {
        url: String,
    },
    Command {
        program: String,
        args: Vec<String>,
    },
    /// A function name or ARN, and an optional version or alias.
    Lambda {
        function_name: String,
        qualifier: Option<String>,
    },
    /// `workers` processes of `program args…` served the Lambda Runtime API.
    RuntimeApi {
        program: String,
        args: Vec<String>,
        workers: usize,
        handler: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// `on_batch_error = "bisect"`: a batch that fails as a whole is split in halves and tried
    /// again at once, down to single messages, so that only the poison ones are retried.
    pub bisect: bool,
    /// `max_age_secs`: a message first sent longer ago than this is dead-lettered (reason
    /// `expired`) instead of dispatched; needs `[pipelines.dead_letter]`.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct FilterConfig {
    pub filter: crate::filter::Filter,
    pub on_filtered: OnFiltered,
    /// `on_filtered = "keep"`: kept messages stay invisible this long before they come back.
    pub keep_delay: Duration,
}

/// What happens to a message no pattern matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFiltered {
    /// Delete it, as Lambda does.
    Delete,
    /// Make it visible again after `keep_delay`, for other consumers of a shared queue.
    Keep,
}

#[derive(Debug, Clone)]
pub struct DeadLetterConfig {
    pub queue_url: String,
    pub max_receive_count: u32,
}

/// Why a configuration could not be used. Displayed as one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the configuration file: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_problems(file, problems))]
    Invalid { file: String, problems: Vec<Problem> },
}

/// One mistake in the file: where (a key path, or a line) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

fn render_problems(file: &str, problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("{file}: {p}")).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

/// FNV-1a 64: a fingerprint for change detection, not a cryptographic hash.
/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A short fingerprint of the file at `path` (FNV-1a 64 of its bytes, in hex), for the
/// `sqs_poller_config_info` metric; `None` when it cannot be read.
pub fn file_hash(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let hash = fnv1a(&bytes);
    Some(format!("{hash:016x}"))
}

/// Reads, interpolates, parses and validates the configuration file at `path`.
///
/// # Errors
/// [`ConfigError`] naming the file, the key path and the reason for each problem.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
    parse(&text, &|name| std::env::var(name).ok()).map_err(|problems| ConfigError::Invalid { file, problems })
}

/// Parses configuration text with `env` as the source of `${VAR}` values.
///
/// # Errors
/// Every problem found, each with its key path or line.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<Problem>> {
    let text = interpolate(text, env)?;
    let raw: RawConfig = {
        let de = toml::Deserializer::parse(&text).map_err(|e| vec![toml_problem(&text, &e)])?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|s| line_of(&text, s.start));
            let mut reason = inner.message().to_string();
            let path = if path == "." || path.is_empty() {
                line.map_or_else(|| "(top level)".to_string(), |l| format!("line {l}"))
            } else {
                if let Some(l) = line {
                    reason.push_str(&format!(" (line {l})"));
                }
                path
            };
            vec![Problem { path, reason }]
        })?
    };
    validate(raw, env)
}

fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    let path = e.span().map(|s| format!("line {}", line_of(text, s.start))).unwrap_or_else(|| "(syntax)".to_string());
    Problem { path, reason: format!("TOML syntax error: {}", e.message()) }
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

/// `on_filtered = "keep"` on a FIFO queue: a kept message heads its group again (SQS delivers a
/// group in order), so the group waits until another consumer takes it — the shared-queue use
/// keep is for, a stall for a queue this service alone reads.
pub fn kept_fifo_warning(p: &PipelineConfig) -> Option<String> {
    let kept = p.filter.as_ref().is_some_and(|f| f.on_filtered == OnFiltered::Keep);
    (kept && p.fifo).then(|| {
        format!(
            "pipeline `{}`: on_filtered = \"keep\" on a FIFO queue: a kept message is the head of its group again, so the rest of that group waits until another consumer takes it",
            p.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "QUEUE" => Some("http://127.0.0.1:4566/000000000000/q".to_string()),
            "MAX" => Some("40".to_string()),
            _ => None,
        }
    }

    const MINIMAL: &str = r#"
[[pipelines]]
name = "p"
queue_url = "http://127.0.0.1:4566/000000000000/q"
[pipelines.target]
type = "http"
url = "http://127.0.0.1:8080/"
"#;

    fn problems(text: &str) -> Vec<String> {
        parse(text, &env).unwrap_err().iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn minimal_config_gets_the_contract_defaults() {
        let c = parse(MINIMAL, &env).unwrap();
        let p = &c.pipelines[0];
        assert_eq!(c.listen.to_string(), "0.0.0.0:9464");
        assert_eq!(c.grace_period, Duration::from_secs(30));
        assert_eq!((p.pollers.min, p.pollers.max), (1, 10));
        assert_eq!(p.pollers.wait_time, Duration::from_secs(20));
        assert_eq!(p.pollers.visibility_timeout, None);
        assert_eq!((p.batch.size, p.batch.window, p.batch.max_bytes), (10, Duration::ZERO, 6_291_456));
        assert_eq!(p.target.timeout, Duration::from_secs(30));
        assert_eq!(p.target.max_concurrency, 10);
        assert_eq!(p.retry.initial_backoff, Duration::from_secs(1));
        assert_eq!(p.retry.max_backoff, Duration::from_secs(300));
        assert!(p.dead_letter.is_none());
        assert!(!p.fifo);
    }

    #[test]
    fn telemetry_is_off_by_default_and_checked_key_by_key() {
        assert!(parse(MINIMAL, &env).unwrap().telemetry.is_none());
        let on = format!(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nheaders = {{ authorization = \"Bearer x\" }}\n{MINIMAL}"
        );
        let t = parse(&on, &env).unwrap().telemetry.unwrap();
        assert_eq!(t.traces_url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!((t.sample_ratio, t.service_name.as_str(), t.detect_resources), (1.0, "sqs-poller", true));
        assert_eq!(t.export_timeout, Duration::from_secs(10));
        assert!(!format!("{t:?}").contains("Bearer"), "header values are secrets");
        // keys without an endpoint: off, but still checked
        let off = format!("[telemetry]\nsample_ratio = 0.5\n{MINIMAL}");
        assert!(parse(&off, &env).unwrap().telemetry.is_none());
        let bad = format!(
            "[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\nsample_ratio = 1.5\nprotocol = \"grpc\"\n\
             headers = {{ \"bad header\" = \"x\", ok = \"v\\u0001\" }}\nresource_attributes = {{ \"service.name\" = \"x\" }}\n\
             export_timeout_secs = 0\n{MINIMAL}"
        );
        let p = problems(&bad);
        for key in [
            "telemetry.otlp_endpoint",
            "telemetry.sample_ratio",
            "telemetry.protocol",
            "telemetry.headers.bad header",
            "telemetry.headers.ok",
            "telemetry.resource_attributes.service.name",
            "telemetry.export_timeout_secs",
        ] {
            assert!(p.iter().any(|l| l.starts_with(key)), "{key} in {p:#?}");
        }
        assert!(!p.iter().any(|l| l.contains("v\u{1}")), "a header value is never repeated: {p:#?}");
        assert!(p.iter().any(|l| l.contains("grpc") && l.contains("http/protobuf")), "{p:#?}");
        let unknown = problems(&format!("[telemetry]\nendpoint = \"x\"\n{MINIMAL}"));
        assert!(unknown[0].contains("endpoint"), "{unknown:?}");
    }

    #[test]
    fn otlp_base_urls_get_the_traces_path() {
        use validate::otlp_traces_url as url;
        assert_eq!(url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(url("https://otlp.example.com/v1/traces"), "https://otlp.example.com/v1/traces");
        assert_eq!(url("https://gw.example.com/otlp/v1/traces"), "https://gw.example.com/otlp/v1/traces");
    }

    #[test]
    fn interpolation_substitutes_values_and_defaults_but_not_comments() {
        let text = MINIMAL.replace(
            "queue_url = \"http://127.0.0.1:4566/000000000000/q\"",
            "queue_url = \"${QUEUE}\" # not ${MISSING}\n[pipelines.pollers]\nmax = ${MAX}\nmin = ${MIN:-3}",
        );
        let c = parse(&text, &env).unwrap();
        assert_eq!(c.pipelines[0].queue_url, "http://127.0.0.1:4566/000000000000/q");
        assert_eq!((c.pipelines[0].pollers.min, c.pipelines[0].pollers.max), (3, 40));
    }

    #[test]
    fn interpolation_keeps_hash_inside_strings_and_escaped_dollar() {
        let out = interpolate("a = \"x#${QUEUE}\" # ${NOPE}\nb = '$${LIT}'", &env).unwrap();
        assert_eq!(out, "a = \"x#http://127.0.0.1:4566/000000000000/q\" # ${NOPE}\nb = '${LIT}'");
    }

    /// A secret made of every character a naive paste would break or change (issue 34): quotes,
    /// backslashes, `$`, `${`, line breaks, a tab, control characters, `#`, unicode, and the
    /// delimiters of every TOML string.
    const NASTY: &str = "a\"b'c\\d\\\"e$f${G}h\ni\r\tj#k\u{1}l\u{7f}ü€😀\"\"\"m'''n";

    fn nasty_env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| NASTY.to_string()).or_else(|| env(name))
    }

    /// A command target whose `args` hold `values` (TOML text each): any text is a valid argument.
    fn with_args(values: &str) -> String {
        MINIMAL.replace(
            "type = \"http\"\nurl = \"http://127.0.0.1:8080/\"",
            &format!("type = \"command\"\nprogram = \"/bin/true\"\nargs = [{values}]"),
        )
    }

    fn args_of(c: &Config) -> Vec<String> {
        match &c.pipelines[0].target.kind {
            TargetKind::Command { args, .. } => args.clone(),
            other => panic!("not a command target: {other:?}"),
        }
    }

    #[test]
    fn interpolation_keeps_every_byte_of_a_value_in_basic_strings() {
        for q in ["\"", "\"\"\""] {
            let text = with_args(&format!("{q}Bearer ${{SECRET}}{q}, {q}${{UNSET:-x\\y\"z}}{q}"));
            let c = parse(&text, &nasty_env).unwrap_or_else(|e| panic!("{q}: {e:?}"));
            assert_eq!(args_of(&c), [format!("Bearer {NASTY}"), "x\\y\"z".to_string()], "in {q}...{q}");
        }
    }

    #[test]
    fn a_value_a_literal_string_cannot_hold_is_refused_naming_the_variable() {
        for q in ["'", "'''"] {
            let p: Vec<String> = parse(&with_args(&format!("{q}${{SECRET}}{q}")), &nasty_env)
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(p[0].contains("SECRET") && p[0].contains("literal string"), "{p:?}");
            assert!(!p[0].contains("a\"b"), "the value is never shown: {p:?}");
        }
        // what a literal string can hold arrives unchanged: backslashes, double quotes, `$`
        let plain = |n: &str| (n == "PLAIN").then(|| r#"C:\dir "q" $x"#.to_string());
        assert_eq!(args_of(&parse(&with_args("'${PLAIN}'"), &plain).unwrap()), [r#"C:\dir "q" $x"#]);
    }

    #[test]
    fn outside_quotes_a_value_is_a_number_boolean_or_date_only() {
        let text = MINIMAL.replace("name = \"p\"", "name = \"p\"\ndepth_interval_secs = ${SECRET}");
        let p: Vec<String> = parse(&text, &nasty_env).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("SECRET") && p[0].contains("quote"), "{p:?}");
        // numbers keep working unquoted (interpolation_substitutes_values_and_defaults_but_not_comments)
    }

    #[test]
    fn missing_variable_names_the_variable_and_line() {
        let p = problems("\n\nx = \"${NOT_SET}\"");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("line 3: environment variable NOT_SET is not set"), "{p:?}");
    }

    #[test]
    fn unknown_key_names_its_path() {
        let p = problems(&format!("{MINIMAL}[pipelines.batch]\nsizee = 5\n"));
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("pipelines[0].batch"), "{p:?}");
        assert!(p[0].contains("unknown field `sizee`"), "{p:?}");
    }

    #[test]
    fn wrong_type_names_its_path() {
        let p = problems(&format!("{MINIMAL}[pipelines.pollers]\nmax = \"lots\"\n"));
        assert!(p[0].starts_with("pipelines[0].pollers.max"), "{p:?}");
    }

    #[test]
    fn out_of_range_values_are_each_reported() {
        let text = format!(
            "{MINIMAL}[pipelines.batch]\nsize = 20000\nwindow_ms = 400000\n[pipelines.pollers]\nwait_time_secs = 21\nmin = 5\nmax = 2\n"
        );
        let p = problems(&text);
        assert!(
            p.iter().any(|l| l == "pipelines[0].batch.size: 20000 is out of range: must be between 1 and 10000"),
            "{p:?}"
        );
        assert!(p.iter().any(|l| l.starts_with("pipelines[0].batch.window_ms: 400000 is out of range")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("pipelines[0].pollers.wait_time_secs: 21 is out of range")), "{p:?}");
        assert!(p.iter().any(|l| l == "pipelines[0].pollers.min: 5 is greater than pollers.max (2)"), "{p:?}");
    }

    #[test]
    fn fifo_queues_cap_batch_size_at_ten() {
        let text = MINIMAL.replace("/q\"", "/q.fifo\"") + "[pipelines.batch]\nsize = 11\n";
        let p = problems(&text);
        assert!(
            p.iter().any(|l| l.starts_with("pipelines[0].batch.size: 11 is out of range: must be between 1 and 10")),
            "{p:?}"
        );
    }

    #[test]
    fn pools_and_group_caps_are_checked() {
        let pool = |keys: &str| {
            format!(
                "[pools.workers]\nmax_concurrency = 8\n{}",
                MINIMAL.replace("type = \"http\"", &format!("type = \"http\"\npool = \"workers\"\n{keys}"))
            )
        };
        let c = parse(&pool("priority = 5\nweight = 3"), &env).unwrap();
        let member = c.pipelines[0].target.pool.as_ref().unwrap();
        assert_eq!((member.name.as_str(), member.priority, member.weight), ("workers", 5, 3));
        assert_eq!(c.pipelines[0].target.max_concurrency, 8, "a member may take the whole pool");
        assert_eq!(c.pools["workers"], PoolConfig { max_concurrency: 8, adaptive: None });
        let p = problems(&pool("max_concurrency = 9\nconcurrency = \"adaptive\""));
        assert!(
            p.iter().any(|p| p.starts_with("pipelines[0].target.max_concurrency: 9 is more than its pool's")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.starts_with("pipelines[0].target.concurrency: does not apply to a pipeline in a pool")),
            "{p:?}"
        );
        let p = problems(&pool("").replace("pool = \"workers\"", "pool = \"other\""));
        assert_eq!(p, ["pipelines[0].target.pool: `other` names no [pools.other] table (defined: workers)"]);
        let p = problems(&MINIMAL.replace("type = \"http\"", "type = \"http\"\nweight = 2"));
        assert_eq!(p, ["pipelines[0].target.weight: applies to a pipeline in a shared pool only (target.pool)"]);
        let p = problems(&format!("[pools.w]\nconcurrency = \"adaptive\"\nmin_concurrency = 20\n{MINIMAL}"));
        assert_eq!(p, ["pools.w.min_concurrency: 20 is greater than max_concurrency (10)"]);

        let capped = MINIMAL.to_string() + "[pipelines.batch]\nmax_in_flight_per_group = 4\n";
        let c = parse(&capped, &env).unwrap();
        assert_eq!(c.pipelines[0].batch.max_in_flight_per_group, Some(4));
        // the batches' room (100), and four times as much for waiting messages
        assert_eq!(c.pipelines[0].lease.max_outstanding, 100 + 400);
        assert_eq!(parse(MINIMAL, &env).unwrap().pipelines[0].lease.max_outstanding, 100);
        // batches of one: a receive's room more, so that pollers receive while the batches run
        let small = MINIMAL.to_string() + "[pipelines.batch]\nsize = 1\n";
        assert_eq!(parse(&small, &env).unwrap().pipelines[0].lease.max_outstanding, 20);
        let p = problems(&capped.replace("/q\"", "/q.fifo\""));
        assert!(
            p[0].starts_with("pipelines[0].batch.max_in_flight_per_group: applies to standard and fair queues"),
            "{p:?}"
        );
    }

    #[test]
    fn target_keys_must_fit_the_type() {
        let text = MINIMAL.replace("url = \"http://127.0.0.1:8080/\"", "program = \"./w\"");
        let p = problems(&text);
        assert!(p.contains(&"pipelines[0].target.program: does not apply to target type `http`".to_string()), "{p:?}");
        assert!(p.contains(&"pipelines[0].target.url: is required".to_string()), "{p:?}");
    }

    /// Issue 34: the admin API anywhere but loopback needs a bearer token; the token is read from
    /// a file or a variable, checked, and never shown.
    #[test]
    fn an_admin_api_beyond_loopback_needs_a_token_that_is_never_shown() {
        let open = format!("[server]\nadmin_listen = \"0.0.0.0:9465\"\n{MINIMAL}");
        let p = problems(&open);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("server.admin_listen: `0.0.0.0:9465` is not a loopback address"), "{p:?}");
        assert!(p[0].contains("admin_token_file"), "{p:?}");

        let token = "0123456789abcdef0123456789abcdef";
        let with_env = |name: &str| (name == "ADMIN_TOKEN").then(|| format!("{token}\n"));
        let text = format!("[server]\nadmin_listen = \"0.0.0.0:9465\"\nadmin_token_env = \"ADMIN_TOKEN\"\n{MINIMAL}");
        let c = parse(&text, &with_env).unwrap();
        assert_eq!(c.admin_token.as_ref().map(|s| s.0.as_str()), Some(token), "trimmed");
        assert!(!format!("{c:?}").contains(token), "Debug never shows it");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let text =
            format!("[server]\nadmin_listen = \"[::]:9465\"\nadmin_token_file = \"{}\"\n{MINIMAL}", file.display());
        assert_eq!(parse(&text, &env).unwrap().admin_token.unwrap().0, token);

        std::fs::write(&file, "short-secret\n").unwrap();
        let p = problems(&text);
        assert!(p.iter().any(|l| l.starts_with("server.admin_token_file: the token must be at least 16")), "{p:?}");
        assert!(!p.iter().any(|l| l.contains("short-secret")), "never shown: {p:?}");
        let p = problems(&text.replace(&file.display().to_string(), "/nonexistent/token"));
        assert!(p.iter().any(|l| l.starts_with("server.admin_token_file: cannot read `/nonexistent/token`")), "{p:?}");
        let both = format!("[server]\nadmin_token_env = \"A\"\nadmin_token_file = \"{}\"\n{MINIMAL}", file.display());
        assert!(problems(&both)[0].contains("not both"));
        let unset = format!("[server]\nadmin_token_env = \"NOT_SET_ANYWHERE\"\n{MINIMAL}");
        assert!(problems(&unset)[0].contains("NOT_SET_ANYWHERE is not set"));
    }

    #[test]
    fn admin_api_is_loopback_by_default_and_checked() {
        let c = parse(MINIMAL, &env).unwrap();
        assert_eq!(c.admin_listen.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9465"));
        assert!(c.pipelines[0].target.health_url.is_none());
        let off = format!("[server]\nadmin_listen = \"\"\n{MINIMAL}");
        assert_eq!(parse(&off, &env).unwrap().admin_listen, None);
        let p = problems(&format!("[server]\nadmin_listen = \"localhost\"\n{MINIMAL}"));
        assert!(p[0].starts_with("server.admin_listen: `localhost` is not an address:port"), "{p:?}");
        let p = problems(&format!("[server]\nlisten = \"0.0.0.0:9465\"\nadmin_listen = \"0.0.0.0:9465\"\n{MINIMAL}"));
        assert!(p[0].contains("is server.listen too"), "{p:?}");
        let p = problems(&MINIMAL.replace("type = \"http\"", "type = \"http\"\nhealth_url = \"ftp://x\""));
        assert!(p[0].starts_with("pipelines[0].target.health_url:"), "{p:?}");
    }

    #[test]
    fn remote_http_options_are_checked_without_showing_secrets() {
        let with = |keys: &str| MINIMAL.replace("type = \"http\"", &format!("type = \"http\"\n{keys}"));
        let c = parse(&with("headers = { Authorization = \"Bearer abc\" }\nsigv4_service = \"lambda\""), &env).unwrap();
        let http = &c.pipelines[0].target.http;
        assert_eq!(http.headers[0].0, "Authorization");
        assert!(!format!("{http:?}").contains("Bearer"), "Debug hides header values: {http:?}");
        assert_eq!(http.sigv4, Some(SigV4 { service: "lambda".into(), region: None }));
        let p = problems(&with("headers = { Authorization = \"Bearer\\nabc\" }"));
        assert!(p[0].starts_with("pipelines[0].target.headers.Authorization: the value is not a valid"), "{p:?}");
        assert!(!p[0].contains("Bearer"), "the message does not repeat the value: {p:?}");
        let p = problems(&with("ca_file = \"/nonexistent/ca.pem\""));
        assert!(p[0].starts_with("pipelines[0].target.ca_file: cannot read `/nonexistent/ca.pem`"), "{p:?}");
        let p = problems(&with("client_cert_file = \"/x.pem\""));
        assert!(
            p.iter().any(|m| m == "pipelines[0].target.client_key_file: is required with client_cert_file"),
            "{p:?}"
        );
        let p = problems(
            &MINIMAL
                .replace("type = \"http\"", "type = \"command\"\nprogram = \"x\"\nsigv4_service = \"lambda\"")
                .replace("url = \"http://127.0.0.1:8080/\"\n", ""),
        );
        assert!(
            p.iter().any(|m| m == "pipelines[0].target.sigv4_service: does not apply to target type `command`"),
            "{p:?}"
        );
    }

    #[test]
    fn on_batch_error_is_retry_or_bisect() {
        assert!(!parse(MINIMAL, &env).unwrap().pipelines[0].retry.bisect);
        let with = |v: &str| format!("{MINIMAL}[pipelines.retry]\non_batch_error = \"{v}\"\n");
        assert!(parse(&with("bisect"), &env).unwrap().pipelines[0].retry.bisect);
        let p = problems(&with("split"));
        assert_eq!(p, vec!["pipelines[0].retry.on_batch_error: `split` is not one of: retry, bisect".to_string()]);
    }

    #[test]
    fn large_payloads_have_defaults_and_ranges() {
        assert!(parse(MINIMAL, &env).unwrap().pipelines[0].large_payloads.is_none());
        let c = parse(&format!("{MINIMAL}[pipelines.large_payloads]\n"), &env).unwrap();
        let l = c.pipelines[0].large_payloads.clone().unwrap();
        assert_eq!((l.max_bytes, l.concurrency, l.delete_after_success), (64 * 1024 * 1024, 8, false));
        let p = problems(&format!("{MINIMAL}[pipelines.large_payloads]\nconcurrency = 0\n"));
        assert!(p[0].starts_with("pipelines[0].large_payloads.concurrency: 0 is out of range"), "{p:?}");
    }

    /// Issue 34: the buckets (and key prefixes) pointers may name; `delete_after_success` needs
    /// the list, since the service deletes what a pointer names.
    #[test]
    fn allowed_buckets_are_s3_names_with_optional_prefixes_and_delete_after_success_needs_them() {
        let with = |list: &str| format!("{MINIMAL}[pipelines.large_payloads]\nallowed_buckets = {list}\n");
        let c = parse(&with(r#"["payloads", "shared.bucket/tenant-a/"]"#), &env).unwrap();
        let l = c.pipelines[0].large_payloads.clone().unwrap();
        assert!(l.allows("payloads", "any/key") && l.allows("shared.bucket", "tenant-a/x"));
        assert!(!l.allows("shared.bucket", "tenant-b/x"), "outside the prefix");
        assert!(!l.allows("payloads-2", "k") && !l.allows("other", "k"), "another bucket");
        let open = parse(&format!("{MINIMAL}[pipelines.large_payloads]\n"), &env).unwrap();
        assert!(open.pipelines[0].large_payloads.as_ref().unwrap().allows("anything", "k"), "no list: any bucket");

        for bad in ["Payloads", "ab", "-payloads", "pay_loads", "payloads-"] {
            let p = problems(&with(&format!("[\"{bad}\"]")));
            assert!(p[0].starts_with("pipelines[0].large_payloads.allowed_buckets: `"), "{bad}: {p:?}");
            assert!(p[0].contains("is not an S3 bucket name"), "{bad}: {p:?}");
        }
        let p = problems(&with("[]"));
        assert!(p[0].contains("an empty list would refuse every pointer"), "{p:?}");
        let p = problems(&format!("{MINIMAL}[pipelines.large_payloads]\ndelete_after_success = true\n"));
        assert!(p[0].starts_with("pipelines[0].large_payloads.allowed_buckets: delete_after_success deletes"), "{p:?}");
    }

    #[test]
    fn unknown_target_type_lists_the_types() {
        let p = problems(&MINIMAL.replace("type = \"http\"", "type = \"smtp\""));
        assert!(p[0].contains("`smtp` is not a target type"), "{p:?}");
    }

    #[test]
    fn duplicate_names_and_missing_fields_are_reported() {
        let text = format!("{MINIMAL}{MINIMAL}[[pipelines]]\n");
        let p = problems(&text);
        assert!(p.iter().any(|l| l.starts_with("pipelines[1].name: `p` is used by another pipeline")), "{p:?}");
        assert!(p.contains(&"pipelines[2].name: is required".to_string()), "{p:?}");
        assert!(p.contains(&"pipelines[2].queue_url: is required".to_string()), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("pipelines[2].target: is required")), "{p:?}");
    }

    #[test]
    fn filter_patterns_are_compiled_at_load() {
        let ok = format!(
            "{MINIMAL}[pipelines.filter]\npatterns = ['{{\"body\": {{\"t\": [\"a\"]}}}}']\non_filtered = \"keep\"\n"
        );
        let c = parse(&ok, &env).unwrap();
        assert_eq!(c.pipelines[0].filter.as_ref().unwrap().on_filtered, OnFiltered::Keep);
        let bad = format!("{MINIMAL}[pipelines.filter]\npatterns = ['{{\"body\": [\"a\"]}}', '{{\"body\": \"a\"}}']\n");
        let p = problems(&bad);
        assert_eq!(p, vec!["pipelines[0].filter.patterns[1]: invalid pattern of pipeline `p`: body: values must be in an array: write [\"a\"] instead of \"a\"".to_string()]);
        let p = problems(&format!("{MINIMAL}[pipelines.filter]\npatterns = []\non_filtered = \"drop\"\n"));
        assert!(p.iter().any(|l| l.starts_with("pipelines[0].filter.on_filtered: `drop` is not one of")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("pipelines[0].filter.patterns: lists no pattern")), "{p:?}");
    }

    /// Issue 36: long polls open at SIGTERM are given up, so a grace period shorter than
    /// `wait_time_secs` is fine (it was a configuration error while they were waited out).
    #[test]
    fn a_grace_period_shorter_than_the_long_poll_is_accepted() {
        assert!(parse(&format!("[shutdown]\ngrace_period_secs = 5\n{MINIMAL}"), &env).is_ok());
    }

    #[test]
    fn no_pipelines_is_an_error() {
        assert_eq!(problems("")[0], "pipelines: at least one [[pipelines]] table is required");
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let p = problems("[[pipelines]]\nname = \n");
        assert!(p[0].starts_with("line 2: TOML syntax error"), "{p:?}");
    }

    #[test]
    fn dead_letter_must_be_another_queue_of_the_same_kind() {
        let text = format!("{MINIMAL}[pipelines.dead_letter]\nqueue_url = \"http://127.0.0.1:4566/000000000000/q\"\n");
        let p = problems(&text);
        assert!(p[0].contains("is the pipeline's own queue_url"), "{p:?}");
        let text =
            format!("{MINIMAL}[pipelines.dead_letter]\nqueue_url = \"http://127.0.0.1:4566/000000000000/d.fifo\"\n");
        assert!(problems(&text)[0].contains("FIFO"));
    }
}
