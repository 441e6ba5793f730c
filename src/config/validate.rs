//! The raw file structure (serde, `deny_unknown_fields`) and the rules that turn it into a
//! [`Config`]: ranges, required keys, keys that belong to one target type, cross-key checks.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    aws: RawAws,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    pools: std::collections::BTreeMap<String, RawPool>,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    fleet: RawFleet,
    #[serde(default)]
    pipelines: Vec<RawPipeline>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    redis_url: Option<String>,
    slot_ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    max_concurrency: Option<u64>,
    concurrency: Option<String>,
    min_concurrency: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    otlp_endpoint: Option<String>,
    protocol: Option<String>,
    sample_ratio: Option<f64>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    service_name: Option<String>,
    resource_attributes: Option<std::collections::BTreeMap<String, String>>,
    detect_resources: Option<bool>,
    export_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Option<String>,
    endpoint_url: Option<String>,
    sqs_endpoint_url: Option<String>,
    lambda_endpoint_url: Option<String>,
    s3_endpoint_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    admin_token_file: Option<String>,
    admin_token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace_period_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<String>,
    queue_url: Option<String>,
    depth_interval_secs: Option<u64>,
    #[serde(default)]
    pollers: RawPollers,
    #[serde(default)]
    batch: RawBatch,
    target: Option<RawTarget>,
    #[serde(default)]
    retry: RawRetry,
    dead_letter: Option<RawDeadLetter>,
    filter: Option<RawFilter>,
    #[serde(default)]
    lease: RawLease,
    large_payloads: Option<RawLargePayloads>,
    idempotency: Option<RawIdempotency>,
    #[serde(default)]
    desired_tasks: RawDesiredTasks,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDesiredTasks {
    drain_secs: Option<u64>,
    utilization: Option<f64>,
    cloudwatch_emf: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdempotency {
    key: Option<String>,
    ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLargePayloads {
    max_bytes: Option<u64>,
    concurrency: Option<u64>,
    fetch_timeout_secs: Option<u64>,
    delete_after_success: Option<bool>,
    allowed_buckets: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    max_outstanding: Option<u64>,
    max_outstanding_bytes: Option<u64>,
    max_lease_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    patterns: Option<Vec<String>>,
    on_filtered: Option<String>,
    keep_delay_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPollers {
    min: Option<u64>,
    max: Option<u64>,
    wait_time_secs: Option<u64>,
    visibility_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    size: Option<u64>,
    window_ms: Option<u64>,
    max_bytes: Option<u64>,
    max_in_flight_per_group: Option<u64>,
}

/// All target keys in one flat table: which keys apply depends on `type`, checked in validation
/// so that a misplaced key gets a message naming the type.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(rename = "type")]
    kind: Option<String>,
    url: Option<String>,
    function_name: Option<String>,
    qualifier: Option<String>,
    program: Option<String>,
    args: Option<Vec<String>>,
    workers: Option<u64>,
    handler: Option<String>,
    timeout_secs: Option<u64>,
    max_concurrency: Option<u64>,
    fleet_max_concurrency: Option<u64>,
    fleet_rate_per_sec: Option<u64>,
    fleet_key: Option<String>,
    rate_limit_per_sec: Option<u64>,
    max_throttled_secs: Option<u64>,
    health_url: Option<String>,
    concurrency: Option<String>,
    min_concurrency: Option<u64>,
    breaker: Option<RawBreaker>,
    pool: Option<String>,
    priority: Option<u64>,
    weight: Option<u64>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    ca_file: Option<String>,
    client_cert_file: Option<String>,
    client_key_file: Option<String>,
    sigv4_service: Option<String>,
    sigv4_region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    enabled: Option<bool>,
    failures: Option<u64>,
    cooldown_secs: Option<u64>,
    max_cooldown_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_age_secs: Option<u64>,
    initial_backoff_secs: Option<u64>,
    max_backoff_secs: Option<u64>,
    on_batch_error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeadLetter {
    queue_url: Option<String>,
    max_receive_count: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Collects problems while validating.
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn fail(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), reason: reason.into() });
    }

    /// `value` or `default`, failing when outside `lo..=hi`.
    fn ranged(&mut self, path: &str, value: Option<u64>, default: u64, lo: u64, hi: u64) -> u64 {
        let v = value.unwrap_or(default);
        if v < lo || v > hi {
            self.fail(path, format!("{v} is out of range: must be between {lo} and {hi}"));
            return default.clamp(lo, hi);
        }
        v
    }

    /// Whether `path` was already rejected: a cross-key check on it would compare a stand-in
    /// default, not what the user wrote, and report the key twice.
    fn rejected(&self, path: &str) -> bool {
        self.problems.iter().any(|p| p.path == path)
    }

    fn required_string(&mut self, path: &str, value: Option<String>) -> String {
        match value {
            Some(v) if !v.trim().is_empty() => v,
            Some(_) => {
                self.fail(path, "must not be empty");
                String::new()
            }
            None => {
                self.fail(path, "is required");
                String::new()
            }
        }
    }

    fn url(&mut self, path: &str, value: &str, schemes: &[&str]) {
        if value.is_empty() {
            return;
        }
        let ok = schemes.iter().any(|s| {
            value
                .strip_prefix(s)
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        });
        if !ok {
            let list = schemes.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(" or ");
            self.fail(path, format!("`{value}` is not a URL starting with {list}"));
        }
    }
}

pub(super) fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<Problem>> {
    let mut c = Checker { problems: Vec::new() };
    let aws = validate_aws(&mut c, raw.aws);
    let Server { listen, admin_listen, admin_token } = validate_server(&mut c, raw.server, env);
    let grace = c.ranged("shutdown.grace_period_secs", raw.shutdown.grace_period_secs, 30, 1, 3600);
    let pools = validate_pools(&mut c, raw.pools);
    let telemetry = validate_telemetry(&mut c, raw.telemetry);
    let fleet = validate_fleet(&mut c, raw.fleet);
    let pipelines = validate_pipelines(&mut c, raw.pipelines, &pools);
    for (i, p) in pipelines.iter().enumerate() {
        let keys = [
            ("target.fleet_max_concurrency", p.target.fleet_max_concurrency.is_some()),
            ("target.fleet_rate_per_sec", p.target.fleet_rate_per_sec.is_some()),
            ("target.fleet_key", p.target.fleet_key.is_some()),
            ("idempotency", p.idempotency.is_some()),
        ];
        for (key, _) in keys.iter().filter(|(_, set)| *set && fleet.is_none()) {
            c.fail(
                format!("pipelines[{i}].{key}"),
                "needs the fleet's Redis: set [fleet] redis_url (redis:// or rediss://)",
            );
        }
    }
    if c.problems.is_empty() {
        let grace_period = Duration::from_secs(grace);
        Ok(Config { aws, listen, admin_listen, admin_token, grace_period, pools, telemetry, fleet, pipelines })
    } else {
        Err(c.problems)
    }
}

/// `[aws]`: endpoints are http(s) URLs; `endpoint_url` is each service's unless it has its own.
fn validate_aws(c: &mut Checker, raw: RawAws) -> AwsConfig {
    for (key, v) in [
        ("aws.endpoint_url", &raw.endpoint_url),
        ("aws.sqs_endpoint_url", &raw.sqs_endpoint_url),
        ("aws.lambda_endpoint_url", &raw.lambda_endpoint_url),
        ("aws.s3_endpoint_url", &raw.s3_endpoint_url),
    ] {
        if let Some(v) = v {
            c.url(key, v, &["http", "https"]);
        }
    }
    AwsConfig {
        region: raw.region.filter(|r| !r.is_empty()),
        sqs_endpoint_url: raw.sqs_endpoint_url.or(raw.endpoint_url.clone()),
        s3_endpoint_url: raw.s3_endpoint_url.or(raw.endpoint_url.clone()),
        lambda_endpoint_url: raw.lambda_endpoint_url.or(raw.endpoint_url),
    }
}

/// `[server]`, checked.
struct Server {
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    admin_token: Option<Secret>,
}

/// `[server]`: the metrics address, and the admin API's (loopback by default; "" turns it off)
/// with its bearer token, which any address but loopback requires.
fn validate_server(c: &mut Checker, raw: RawServer, env: &dyn Fn(&str) -> Option<String>) -> Server {
    let listen_text = raw.listen.unwrap_or_else(|| "0.0.0.0:9464".to_string());
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        c.fail("server.listen", format!("`{listen_text}` is not an address:port such as 0.0.0.0:9464"));
        SocketAddr::from(([0, 0, 0, 0], 9464))
    });
    // loopback only unless the operator says otherwise; "" turns the admin API off
    let admin_text = raw.admin_listen.unwrap_or_else(|| defaults::ADMIN_LISTEN.to_string());
    let admin_listen = if admin_text.is_empty() {
        None
    } else {
        match admin_text.parse::<SocketAddr>() {
            Ok(a) if a == listen && a.port() != 0 => {
                c.fail(
                    "server.admin_listen",
                    format!("`{admin_text}` is server.listen too; the admin API needs its own address"),
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                c.fail(
                    "server.admin_listen",
                    format!(
                        "`{admin_text}` is not an address:port such as 127.0.0.1:9465 (\"\" turns the admin API off)"
                    ),
                );
                None
            }
        }
    };
    let admin_token = admin_token(c, raw.admin_token_file, raw.admin_token_env, env);
    if let Some(a) = admin_listen.filter(|a| !a.ip().is_loopback()) {
        if admin_token.is_none() && !c.rejected("server.admin_token_file") && !c.rejected("server.admin_token_env") {
            c.fail(
                "server.admin_listen",
                format!("`{a}` is not a loopback address: anyone who reaches it could pause pipelines; set server.admin_token_file (or admin_token_env) to require a bearer token, or listen on 127.0.0.1"),
            );
        }
    }
    Server { listen, admin_listen, admin_token }
}

/// The shortest admin token accepted (bytes): a guessable token is no token.
const MIN_ADMIN_TOKEN: usize = 16;

/// The admin API's bearer token, from a file (its first line, surrounding whitespace trimmed)
/// or an environment variable; never shown in a problem.
fn admin_token(
    c: &mut Checker,
    file: Option<String>,
    var: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Secret> {
    let (key, token) = match (file, var) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            c.fail("server.admin_token_env", "set server.admin_token_file or server.admin_token_env, not both");
            return None;
        }
        (Some(path), None) => match std::fs::read_to_string(&path) {
            Ok(text) => ("server.admin_token_file", text.lines().next().unwrap_or("").trim().to_string()),
            Err(e) => {
                c.fail("server.admin_token_file", format!("cannot read `{path}`: {e}"));
                return None;
            }
        },
        (None, Some(name)) => match env(&name) {
            Some(value) => ("server.admin_token_env", value.trim().to_string()),
            None => {
                c.fail("server.admin_token_env", format!("environment variable {name} is not set"));
                return None;
            }
        },
    };
    if token.len() < MIN_ADMIN_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        c.fail(
            key,
            format!("the token must be at least {MIN_ADMIN_TOKEN} visible ASCII characters (e.g. `openssl rand -hex 32`); not shown"),
        );
        return None;
    }
    Some(Secret(token))
}

/// `[pools.NAME]`: shared concurrency for the pipelines that name them.
fn validate_pools(
    c: &mut Checker,
    raw: std::collections::BTreeMap<String, RawPool>,
) -> std::collections::BTreeMap<String, PoolConfig> {
    let mut pools = std::collections::BTreeMap::new();
    for (name, p) in raw {
        let at = format!("pools.{name}");
        if !name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
            c.fail(&at, format!("`{name}` may only contain letters, digits, `-` and `_`"));
        }
        let max_concurrency = c.ranged(&format!("{at}.max_concurrency"), p.max_concurrency, 10, 1, 10_000);
        let adaptive = concurrency_mode(c, &at, p.concurrency.as_deref(), p.min_concurrency, max_concurrency);
        pools.insert(name, PoolConfig { max_concurrency: max_concurrency as usize, adaptive });
    }
    pools
}

/// Every `[[pipelines]]`: at least one, unique names.
fn validate_pipelines(
    c: &mut Checker,
    raw: Vec<RawPipeline>,
    pools: &std::collections::BTreeMap<String, PoolConfig>,
) -> Vec<PipelineConfig> {
    if raw.is_empty() {
        c.fail("pipelines", "at least one [[pipelines]] table is required");
    }
    let mut names = HashSet::new();
    let mut pipelines = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let at = format!("pipelines[{i}]");
        let pipeline = validate_pipeline(c, &at, p, pools);
        if !pipeline.name.is_empty() && !names.insert(pipeline.name.clone()) {
            c.fail(
                format!("{at}.name"),
                format!("`{}` is used by another pipeline; names must be unique", pipeline.name),
            );
        }
        pipelines.push(pipeline);
    }

    pipelines
}

/// A pipeline, one section at a time along its messages' path: the queue, its pollers and
/// batches, the target, retries, the dead-letter queue, the filter, the lease, large payloads.
fn validate_pipeline(
    c: &mut Checker,
    at: &str,
    p: RawPipeline,
    pools: &std::collections::BTreeMap<String, PoolConfig>,
) -> PipelineConfig {
    let name = c.required_string(&format!("{at}.name"), p.name);
    if !name.is_empty() && !name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
        c.fail(
            format!("{at}.name"),
            format!("`{name}` may only contain letters, digits, `-` and `_` (it becomes a metric label)"),
        );
    }
    let queue_url = c.required_string(&format!("{at}.queue_url"), p.queue_url);
    c.url(&format!("{at}.queue_url"), &queue_url, &["http", "https"]);
    let fifo = queue_url.ends_with(".fifo");
    let depth_interval = c.ranged(&format!("{at}.depth_interval_secs"), p.depth_interval_secs, 10, 1, 3600);
    let pollers = validate_pollers(c, at, p.pollers);
    let batch = validate_batch(c, at, p.batch, fifo);
    let target = match p.target {
        Some(t) => validate_target(c, &format!("{at}.target"), t, pools),
        None => {
            c.fail(format!("{at}.target"), "is required ([pipelines.target] with a `type`)");
            placeholder_target()
        }
    };
    let retry = validate_retry(c, at, p.retry);
    let dead_letter = p.dead_letter.map(|d| validate_dead_letter(c, at, d, &queue_url, fifo));
    if retry.max_age.is_some() && dead_letter.is_none() {
        c.fail(
            format!("{at}.retry.max_age_secs"),
            "dead-letters expired messages: it needs [pipelines.dead_letter] (a queue_url to move them to)",
        );
    }
    let filter = p.filter.and_then(|f| validate_filter(c, at, f, &name));
    let lease = validate_lease(c, at, p.lease, &target, &batch);
    let large_payloads = p.large_payloads.map(|l| validate_large_payloads(c, at, l));
    let idempotency = p.idempotency.map(|i| validate_idempotency(c, at, i));
    let desired_tasks = validate_desired_tasks(c, at, &p.desired_tasks);
    PipelineConfig {
        desired_tasks,
        idempotency,
        large_payloads,
        lease,
        name,
        queue_url,
        fifo,
        filter,
        pollers,
        batch,
        target,
        retry,
        dead_letter,
        depth_interval: Duration::from_secs(depth_interval),
    }
}

/// `[pipelines.desired_tasks]`: `drain_secs` 1..=86400 (60), `utilization` above 0 up to 1 (0.8).
fn validate_desired_tasks(c: &mut Checker, at: &str, d: &RawDesiredTasks) -> DesiredTasksConfig {
    let drain = c.ranged(&format!("{at}.desired_tasks.drain_secs"), d.drain_secs, 60, 1, 86_400);
    let mut utilization = d.utilization.unwrap_or(0.8);
    if !(utilization > 0.0 && utilization <= 1.0) {
        c.fail(
            format!("{at}.desired_tasks.utilization"),
            format!("{utilization} is out of range: must be above 0.0 and at most 1.0 (the share of a task's capacity to plan for)"),
        );
        utilization = 0.8;
    }
    DesiredTasksConfig {
        drain: Duration::from_secs(drain),
        utilization,
        cloudwatch_emf: d.cloudwatch_emf.unwrap_or(false),
    }
}

/// `[pipelines.idempotency]`: `key` is `message_id` (the default) or a JSON pointer into the body.
fn validate_idempotency(c: &mut Checker, at: &str, i: RawIdempotency) -> IdempotencyConfig {
    let ttl = c.ranged(&format!("{at}.idempotency.ttl_secs"), i.ttl_secs, 3600, 1, 30 * 86_400);
    let key = match i.key.as_deref() {
        None | Some("message_id") => IdempotencyKey::MessageId,
        Some(p) if p.starts_with('/') => IdempotencyKey::Pointer(p.to_string()),
        Some(other) => {
            c.fail(
                format!("{at}.idempotency.key"),
                format!("`{other}` is neither \"message_id\" nor a JSON pointer into the body (\"/order/id\")"),
            );
            IdempotencyKey::MessageId
        }
    };
    IdempotencyConfig { key, ttl: Duration::from_secs(ttl) }
}

fn validate_pollers(c: &mut Checker, at: &str, p: RawPollers) -> PollerConfig {
    let min = c.ranged(&format!("{at}.pollers.min"), p.min, 1, 0, MAX_MIN_POLLERS);
    let max = c.ranged(&format!("{at}.pollers.max"), p.max, 10, 1, MAX_POLLERS);
    if min > max && !c.rejected(&format!("{at}.pollers.min")) && !c.rejected(&format!("{at}.pollers.max")) {
        c.fail(format!("{at}.pollers.min"), format!("{min} is greater than pollers.max ({max})"));
    }
    let wait = c.ranged(&format!("{at}.pollers.wait_time_secs"), p.wait_time_secs, 20, 0, 20);
    let visibility = p
        .visibility_timeout_secs
        .map(|v| c.ranged(&format!("{at}.pollers.visibility_timeout_secs"), Some(v), v, 0, MAX_VISIBILITY_SECS));
    PollerConfig {
        min: min as usize,
        max: max as usize,
        wait_time: Duration::from_secs(wait),
        visibility_timeout: visibility.map(Duration::from_secs),
    }
}

fn validate_batch(c: &mut Checker, at: &str, b: RawBatch, fifo: bool) -> BatchConfig {
    let size_hi = if fifo { 10 } else { 10_000 };
    let size = c.ranged(&format!("{at}.batch.size"), b.size, 10, 1, size_hi);
    if fifo && b.size.is_some_and(|s| s > 10) {
        c.fail(format!("{at}.batch.size"), "FIFO queues (queue_url ending in .fifo) allow at most 10");
    }
    let window = c.ranged(&format!("{at}.batch.window_ms"), b.window_ms, 0, 0, 300_000);
    let max_bytes =
        c.ranged(&format!("{at}.batch.max_bytes"), b.max_bytes, MAX_BATCH_BYTES as u64, 1024, MAX_BATCH_BYTES as u64);
    let per_group = b.max_in_flight_per_group.map(|n| {
        let key = format!("{at}.batch.max_in_flight_per_group");
        if fifo {
            c.fail(
                &key,
                "applies to standard and fair queues; a FIFO queue already runs at most one batch per message group",
            );
        }
        c.ranged(&key, Some(n), n, 1, 100_000) as usize
    });
    BatchConfig {
        size: size as usize,
        window: Duration::from_millis(window),
        max_bytes: max_bytes as usize,
        max_in_flight_per_group: per_group,
    }
}

fn validate_retry(c: &mut Checker, at: &str, r: RawRetry) -> RetryConfig {
    let initial =
        c.ranged(&format!("{at}.retry.initial_backoff_secs"), r.initial_backoff_secs, 1, 0, MAX_VISIBILITY_SECS);
    let max_backoff =
        c.ranged(&format!("{at}.retry.max_backoff_secs"), r.max_backoff_secs, 300, 0, MAX_VISIBILITY_SECS);
    if initial > max_backoff
        && !c.rejected(&format!("{at}.retry.initial_backoff_secs"))
        && !c.rejected(&format!("{at}.retry.max_backoff_secs"))
    {
        c.fail(
            format!("{at}.retry.initial_backoff_secs"),
            format!("{initial} is greater than retry.max_backoff_secs ({max_backoff})"),
        );
    }
    let bisect = match r.on_batch_error.as_deref() {
        None | Some("retry") => false,
        Some("bisect") => true,
        Some(other) => {
            c.fail(format!("{at}.retry.on_batch_error"), format!("`{other}` is not one of: retry, bisect"));
            false
        }
    };
    // SQS keeps a message 14 days at most: an age past that is never reached
    let max_age =
        r.max_age_secs.map(|_| c.ranged(&format!("{at}.retry.max_age_secs"), r.max_age_secs, 0, 1, 1_209_600));
    RetryConfig {
        initial_backoff: Duration::from_secs(initial),
        max_backoff: Duration::from_secs(max_backoff),
        bisect,
        max_age: max_age.map(Duration::from_secs),
    }
}

fn validate_dead_letter(c: &mut Checker, at: &str, d: RawDeadLetter, queue_url: &str, fifo: bool) -> DeadLetterConfig {
    let dlq_url = c.required_string(&format!("{at}.dead_letter.queue_url"), d.queue_url);
    c.url(&format!("{at}.dead_letter.queue_url"), &dlq_url, &["http", "https"]);
    let count = c.ranged(&format!("{at}.dead_letter.max_receive_count"), d.max_receive_count, 5, 1, 1000);
    if dlq_url == queue_url && !queue_url.is_empty() {
        c.fail(format!("{at}.dead_letter.queue_url"), "is the pipeline's own queue_url; it must be another queue");
    }
    if dlq_url.ends_with(".fifo") != fifo && !dlq_url.is_empty() {
        c.fail(
            format!("{at}.dead_letter.queue_url"),
            "a FIFO queue needs a FIFO dead-letter queue and a standard queue a standard one",
        );
    }
    DeadLetterConfig { queue_url: dlq_url, max_receive_count: count as u32 }
}

fn validate_filter(c: &mut Checker, at: &str, f: RawFilter, name: &str) -> Option<FilterConfig> {
    let on_filtered = match f.on_filtered.as_deref() {
        None | Some("delete") => OnFiltered::Delete,
        Some("keep") => OnFiltered::Keep,
        Some(other) => {
            c.fail(format!("{at}.filter.on_filtered"), format!("`{other}` is not one of: delete, keep"));
            OnFiltered::Delete
        }
    };
    let keep_delay = c.ranged(
        &format!("{at}.filter.keep_delay_secs"),
        f.keep_delay_secs,
        defaults::KEEP_DELAY_SECS,
        1,
        MAX_VISIBILITY_SECS,
    );
    if f.keep_delay_secs.is_some() && on_filtered != OnFiltered::Keep {
        c.fail(format!("{at}.filter.keep_delay_secs"), "applies only with on_filtered = \"keep\"");
    }
    let patterns = f.patterns.unwrap_or_default();
    if patterns.is_empty() {
        c.fail(format!("{at}.filter.patterns"), "lists no pattern; remove [pipelines.filter] to pass every message");
        return None;
    }
    match crate::filter::Filter::compile(&patterns) {
        Ok(filter) => Some(FilterConfig { filter, on_filtered, keep_delay: Duration::from_secs(keep_delay) }),
        Err((i, e)) => {
            c.fail(format!("{at}.filter.patterns[{i}]"), format!("invalid pattern of pipeline `{name}`: {e}"));
            None
        }
    }
}

/// The lease's room: by default what the target's slots can hold in batches (and, with a group
/// cap, four times that again for the messages waiting behind their groups' caps).
fn validate_lease(c: &mut Checker, at: &str, l: RawLease, target: &TargetConfig, batch: &BatchConfig) -> LeaseConfig {
    let mut default_outstanding = defaults::max_outstanding(target.max_concurrency, batch.size) as u64;
    if batch.max_in_flight_per_group.is_some() {
        default_outstanding += 4 * (target.max_concurrency.saturating_mul(batch.size).div_ceil(10) * 10) as u64;
    }
    let max_outstanding = c.ranged(
        &format!("{at}.lease.max_outstanding"),
        l.max_outstanding,
        default_outstanding,
        crate::limits::RECEIVE_MAX as u64,
        1_000_000,
    );
    let max_outstanding_bytes = c.ranged(
        &format!("{at}.lease.max_outstanding_bytes"),
        l.max_outstanding_bytes,
        defaults::MAX_OUTSTANDING_BYTES,
        // (under one receive's worth for the queue it is raised to that, at start)
        1 << 10,
        1 << 40,
    );
    let max_lease = c.ranged(
        &format!("{at}.lease.max_lease_secs"),
        l.max_lease_secs,
        defaults::MAX_LEASE_SECS,
        1,
        MAX_VISIBILITY_SECS,
    );
    LeaseConfig {
        max_outstanding: max_outstanding as usize,
        max_outstanding_bytes: max_outstanding_bytes as usize,
        max_lease: Duration::from_secs(max_lease),
    }
}

fn validate_large_payloads(c: &mut Checker, at: &str, l: RawLargePayloads) -> LargePayloadConfig {
    LargePayloadConfig {
        max_bytes: c.ranged(
            &format!("{at}.large_payloads.max_bytes"),
            l.max_bytes,
            64 * 1024 * 1024,
            1,
            2 * 1024 * 1024 * 1024,
        ) as usize,
        concurrency: c.ranged(&format!("{at}.large_payloads.concurrency"), l.concurrency, 8, 1, 256) as usize,
        fetch_timeout: Duration::from_secs(c.ranged(
            &format!("{at}.large_payloads.fetch_timeout_secs"),
            l.fetch_timeout_secs,
            defaults::FETCH_TIMEOUT_SECS,
            1,
            900,
        )),
        delete_after_success: l.delete_after_success.unwrap_or(false),
        allowed_buckets: allowed_buckets(c, at, l.allowed_buckets, l.delete_after_success.unwrap_or(false)),
    }
}

/// `large_payloads.allowed_buckets`: S3 bucket names, each optionally with a key prefix
/// (`bucket/prefix/`); required by `delete_after_success` (the service deletes what pointers name).
fn allowed_buckets(
    c: &mut Checker,
    at: &str,
    raw: Option<Vec<String>>,
    delete_after_success: bool,
) -> Option<Vec<AllowedBucket>> {
    let key = format!("{at}.large_payloads.allowed_buckets");
    let Some(raw) = raw else {
        if delete_after_success {
            c.fail(
                &key,
                "delete_after_success deletes whatever object a message's pointer names: list the buckets (and key prefixes) producers may use, e.g. allowed_buckets = [\"my-payloads\"]",
            );
        }
        return None;
    };
    if raw.is_empty() {
        c.fail(&key, "an empty list would refuse every pointer; list at least one bucket, or leave the key out");
    }
    let mut out = Vec::with_capacity(raw.len());
    for entry in raw {
        let (bucket, prefix) = entry.split_once('/').unwrap_or((entry.as_str(), ""));
        if !valid_bucket_name(bucket) {
            c.fail(
                &key,
                format!("`{entry}`: `{bucket}` is not an S3 bucket name (3 to 63 lowercase letters, digits, dots and hyphens)"),
            );
        }
        out.push(AllowedBucket { bucket: bucket.to_string(), prefix: prefix.to_string() });
    }
    Some(out)
}

/// S3's bucket naming rules (general purpose buckets): 3 to 63 characters of lowercase letters,
/// digits, dots and hyphens, beginning and ending with a letter or digit.
fn valid_bucket_name(name: &str) -> bool {
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && edge(name.bytes().next())
        && edge(name.bytes().last())
}

fn placeholder_target() -> TargetConfig {
    TargetConfig {
        kind: TargetKind::Http { url: String::new() },
        timeout: Duration::from_secs(30),
        max_concurrency: 10,
        rate_limit_per_sec: None,
        max_throttled: Duration::from_secs(defaults::MAX_THROTTLED_SECS),
        health_url: None,
        adaptive: None,
        breaker: BreakerConfig::default(),
        http: HttpOptions::default(),
        pool: None,
        fleet_max_concurrency: None,
        fleet_rate_per_sec: None,
        fleet_key: None,
    }
}

/// `concurrency` and `min_concurrency` of a target or a pool: the adaptive limit's floor, or
/// `None` for a fixed limit.
fn concurrency_mode(
    c: &mut Checker,
    at: &str,
    mode: Option<&str>,
    min_concurrency: Option<u64>,
    max_concurrency: u64,
) -> Option<usize> {
    match mode {
        None | Some("fixed") => {
            if min_concurrency.is_some() {
                c.fail(format!("{at}.min_concurrency"), "applies to `concurrency = \"adaptive\"` only");
            }
            None
        }
        Some("adaptive") => {
            let floor = c.ranged(&format!("{at}.min_concurrency"), min_concurrency, 1, 1, 10_000);
            let rejected = c.rejected(&format!("{at}.max_concurrency")) || c.rejected(&format!("{at}.min_concurrency"));
            if floor > max_concurrency && !rejected {
                c.fail(
                    format!("{at}.min_concurrency"),
                    format!("{floor} is greater than max_concurrency ({max_concurrency})"),
                );
            }
            Some(floor.min(max_concurrency) as usize)
        }
        Some(other) => {
            c.fail(
                format!("{at}.concurrency"),
                format!("`{other}` is not a concurrency mode (expected fixed or adaptive)"),
            );
            None
        }
    }
}

/// A pipeline's target: its limits, its type and the keys of that type, its pool, its
/// concurrency and its breaker.
fn validate_target(
    c: &mut Checker,
    at: &str,
    mut t: RawTarget,
    pools: &std::collections::BTreeMap<String, PoolConfig>,
) -> TargetConfig {
    let timeout = c.ranged(&format!("{at}.timeout_secs"), t.timeout_secs, 30, 1, 900);
    let max_throttled = c.ranged(
        &format!("{at}.max_throttled_secs"),
        t.max_throttled_secs,
        defaults::MAX_THROTTLED_SECS,
        1,
        MAX_VISIBILITY_SECS,
    );
    let max_concurrency = c.ranged(&format!("{at}.max_concurrency"), t.max_concurrency, 10, 1, 10_000);
    let rate_limit_per_sec = t.rate_limit_per_sec.and_then(|r| {
        let r = c.ranged(&format!("{at}.rate_limit_per_sec"), Some(r), 1, 1, 1_000_000);
        NonZeroU32::new(r as u32)
    });
    // which of the keys that belong to one target type only are set (before the http options
    // take theirs)
    let present = type_keys_present(&t);
    let http = http_options(c, at, &mut t);
    let kind = validate_target_kind(c, at, &mut t, &present);
    let health_url = t.health_url.take().filter(|u| !u.is_empty());
    if let Some(u) = &health_url {
        c.url(&format!("{at}.health_url"), u, &["http"]);
    }
    let pool = validate_pool_membership(c, at, &mut t, pools, max_concurrency);
    // in a pool, the pipeline takes at most the pool's limit unless it says less
    let max_concurrency = match (&pool, t.max_concurrency) {
        (Some(p), None) => p.settings.max_concurrency as u64,
        _ => max_concurrency,
    };
    let adaptive = if pool.is_some() {
        None
    } else {
        concurrency_mode(c, at, t.concurrency.as_deref(), t.min_concurrency, max_concurrency)
    };
    let breaker = t.breaker.take().map_or_else(BreakerConfig::default, |b| validate_breaker(c, at, b));
    TargetConfig {
        kind,
        timeout: Duration::from_secs(timeout),
        max_concurrency: max_concurrency as usize,
        rate_limit_per_sec,
        max_throttled: Duration::from_secs(max_throttled),
        health_url,
        adaptive,
        breaker,
        http,
        pool,
        fleet_max_concurrency: t
            .fleet_max_concurrency
            .map(|n| c.ranged(&format!("{at}.fleet_max_concurrency"), Some(n), 1, 1, 100_000) as usize),
        fleet_rate_per_sec: t.fleet_rate_per_sec.and_then(|r| {
            NonZeroU32::new(c.ranged(&format!("{at}.fleet_rate_per_sec"), Some(r), 1, 1, 1_000_000) as u32)
        }),
        fleet_key: t.fleet_key.take().map(|k| validate_fleet_key(c, at, k)),
    }
}

/// `target.fleet_key`: 1 to 100 letters, digits, `.`, `_`, `-` or `:` (it is part of Redis's keys).
fn validate_fleet_key(c: &mut Checker, at: &str, key: String) -> String {
    let fits = (1..=100).contains(&key.len())
        && key.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-' | ':'));
    if !fits {
        c.fail(
            format!("{at}.fleet_key"),
            format!("`{key}`: 1 to 100 letters, digits, '.', '_', '-' or ':' (it names the budget in Redis)"),
        );
    }
    key
}

/// The keys that belong to one target type only, and whether each is set.
fn type_keys_present(t: &RawTarget) -> [(&'static str, bool); 13] {
    [
        ("url", t.url.is_some()),
        ("function_name", t.function_name.is_some()),
        ("qualifier", t.qualifier.is_some()),
        ("program", t.program.is_some()),
        ("args", t.args.is_some()),
        ("workers", t.workers.is_some()),
        ("handler", t.handler.is_some()),
        ("headers", t.headers.is_some()),
        ("ca_file", t.ca_file.is_some()),
        ("client_cert_file", t.client_cert_file.is_some()),
        ("client_key_file", t.client_key_file.is_some()),
        ("sigv4_service", t.sigv4_service.is_some()),
        ("sigv4_region", t.sigv4_region.is_some()),
    ]
}

/// The target's type and its own keys; a key of another type is a mistake named as such.
fn validate_target_kind(c: &mut Checker, at: &str, t: &mut RawTarget, present: &[(&str, bool)]) -> TargetKind {
    let only = |kind: &str, allowed: &[&str], c: &mut Checker| {
        for (key, is_set) in present {
            if *is_set && !allowed.contains(key) {
                c.fail(format!("{at}.{key}"), format!("does not apply to target type `{kind}`"));
            }
        }
    };
    match t.kind.as_deref() {
        Some("http") => {
            only(
                "http",
                &["url", "headers", "ca_file", "client_cert_file", "client_key_file", "sigv4_service", "sigv4_region"],
                c,
            );
            let url = c.required_string(&format!("{at}.url"), t.url.take());
            c.url(&format!("{at}.url"), &url, &["http", "https"]);
            TargetKind::Http { url }
        }
        Some("command") => {
            only("command", &["program", "args"], c);
            let program = c.required_string(&format!("{at}.program"), t.program.take());
            TargetKind::Command { program, args: t.args.take().unwrap_or_default() }
        }
        Some("lambda") => {
            only("lambda", &["function_name", "qualifier"], c);
            let function_name = c.required_string(&format!("{at}.function_name"), t.function_name.take());
            TargetKind::Lambda { function_name, qualifier: t.qualifier.take().filter(|q| !q.is_empty()) }
        }
        Some("runtime-api") => {
            only("runtime-api", &["program", "args", "workers", "handler"], c);
            let program = c.required_string(&format!("{at}.program"), t.program.take());
            let workers = c.ranged(&format!("{at}.workers"), t.workers, 1, 1, 256) as usize;
            TargetKind::RuntimeApi {
                program,
                args: t.args.take().unwrap_or_default(),
                workers,
                handler: t.handler.take().filter(|h| !h.is_empty()),
            }
        }
        Some(other) => {
            c.fail(
                format!("{at}.type"),
                format!("`{other}` is not a target type (expected one of: http, command, lambda, runtime-api)"),
            );
            TargetKind::Http { url: String::new() }
        }
        None => {
            c.fail(format!("{at}.type"), "is required (http, command, lambda or runtime-api)");
            TargetKind::Http { url: String::new() }
        }
    }
}

/// `target.pool`: the shared pool the pipeline takes part in (its priority and weight there), or
/// none; the keys of the other case are mistakes named as such.
fn validate_pool_membership(
    c: &mut Checker,
    at: &str,
    t: &mut RawTarget,
    pools: &std::collections::BTreeMap<String, PoolConfig>,
    max_concurrency: u64,
) -> Option<PoolMembership> {
    let Some(name) = t.pool.take().filter(|p| !p.is_empty()) else {
        for (key, set) in [("priority", t.priority.is_some()), ("weight", t.weight.is_some())] {
            if set {
                c.fail(format!("{at}.{key}"), "applies to a pipeline in a shared pool only (target.pool)");
            }
        }
        return None;
    };
    let Some(settings) = pools.get(&name) else {
        let known = pools.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
        c.fail(
            format!("{at}.pool"),
            if known.is_empty() {
                format!("`{name}` names no [pools.{name}] table (none is defined)")
            } else {
                format!("`{name}` names no [pools.{name}] table (defined: {known})")
            },
        );
        return None;
    };
    for (key, set) in [("concurrency", t.concurrency.is_some()), ("min_concurrency", t.min_concurrency.is_some())] {
        if set {
            c.fail(
                format!("{at}.{key}"),
                format!(
                    "does not apply to a pipeline in a pool: set it on [pools.{name}], whose limit the pipelines share"
                ),
            );
        }
    }
    if t.max_concurrency.is_some()
        && max_concurrency as usize > settings.max_concurrency
        && !c.rejected(&format!("{at}.max_concurrency"))
    {
        c.fail(
            format!("{at}.max_concurrency"),
            format!("{max_concurrency} is more than its pool's max_concurrency ({}): in a pool it caps the pipeline's own share", settings.max_concurrency),
        );
    }
    Some(PoolMembership {
        priority: c.ranged(&format!("{at}.priority"), t.priority, 0, 0, 1_000) as u32,
        weight: c.ranged(&format!("{at}.weight"), t.weight, 1, 1, 1_000) as u32,
        settings: settings.clone(),
        name,
    })
}

fn validate_breaker(c: &mut Checker, at: &str, b: RawBreaker) -> BreakerConfig {
    let d = BreakerConfig::default();
    let cooldown = c.ranged(&format!("{at}.breaker.cooldown_secs"), b.cooldown_secs, d.cooldown.as_secs(), 1, 3_600);
    let max_cooldown = c.ranged(
        &format!("{at}.breaker.max_cooldown_secs"),
        b.max_cooldown_secs,
        d.max_cooldown.as_secs().max(cooldown),
        1,
        86_400,
    );
    let rejected =
        c.rejected(&format!("{at}.breaker.cooldown_secs")) || c.rejected(&format!("{at}.breaker.max_cooldown_secs"));
    if max_cooldown < cooldown && !rejected {
        c.fail(
            format!("{at}.breaker.max_cooldown_secs"),
            format!("{max_cooldown} is less than breaker.cooldown_secs ({cooldown})"),
        );
    }
    BreakerConfig {
        enabled: b.enabled.unwrap_or(true),
        failures: c.ranged(&format!("{at}.breaker.failures"), b.failures, u64::from(d.failures), 1, 1_000) as u32,
        cooldown: Duration::from_secs(cooldown),
        max_cooldown: Duration::from_secs(max_cooldown.max(cooldown)),
    }
}

/// `[fleet]`: on with a `redis_url` (its value never echoed: it may hold a password).
fn validate_fleet(c: &mut Checker, f: RawFleet) -> Option<FleetConfig> {
    let slot_ttl = c.ranged("fleet.slot_ttl_secs", f.slot_ttl_secs, 30, 3, 3600);
    let url = f.redis_url.filter(|u| !u.is_empty())?;
    let scheme_ok = ["redis://", "rediss://"].iter().any(|s| url.len() > s.len() && url.starts_with(s));
    if !scheme_ok {
        c.fail("fleet.redis_url", "is not a URL starting with redis:// or rediss:// (TLS)");
    } else if let Err(e) = redis::Client::open(url.as_str()) {
        c.fail("fleet.redis_url", format!("cannot be used ({:?})", e.kind()));
    }
    Some(FleetConfig { redis_url: Secret(url), slot_ttl: Duration::from_secs(slot_ttl) })
}

/// `[telemetry]`: on with an `otlp_endpoint`; its other keys are checked either way.
fn validate_telemetry(c: &mut Checker, t: RawTelemetry) -> Option<TelemetryConfig> {
    let endpoint = t.otlp_endpoint.filter(|e| !e.is_empty());
    if let Some(e) = &endpoint {
        c.url("telemetry.otlp_endpoint", e, &["http", "https"]);
    }
    match t.protocol.as_deref() {
        None | Some("http/protobuf") => {}
        Some("grpc") => c.fail(
            "telemetry.protocol",
            "`grpc` is not supported: use \"http/protobuf\" (OTLP/HTTP, port 4318 on a collector)",
        ),
        Some(other) => c.fail("telemetry.protocol", format!("`{other}` is not one of \"http/protobuf\"")),
    }
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        c.fail("telemetry.sample_ratio", format!("{sample_ratio} is out of range: must be between 0.0 and 1.0"));
    }
    let mut headers = Vec::new();
    for (name, value) in t.headers.unwrap_or_default() {
        let path = format!("telemetry.headers.{name}");
        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            c.fail(&path, "is not a valid HTTP header name");
        } else if hyper::header::HeaderValue::from_str(&value).is_err() {
            // the value may be a secret: never repeat it in a message
            c.fail(&path, "the value is not a valid HTTP header value (visible ASCII only; not shown)");
        } else {
            headers.push((name, Secret(value)));
        }
    }
    let service_name = t.service_name.unwrap_or_else(|| "sqs-poller".to_string());
    if service_name.is_empty() {
        c.fail("telemetry.service_name", "must not be empty (the default is \"sqs-poller\")");
    }
    let mut resource_attributes = Vec::new();
    for (key, value) in t.resource_attributes.unwrap_or_default() {
        if key.is_empty() || key == "service.name" {
            c.fail(
                format!("telemetry.resource_attributes.{key}"),
                "is set by telemetry.service_name; name another attribute",
            );
        } else {
            resource_attributes.push((key, value));
        }
    }
    let export_timeout = c.ranged("telemetry.export_timeout_secs", t.export_timeout_secs, 10, 1, 60);
    let traces_url = endpoint.map(|e| otlp_traces_url(&e))?;
    Some(TelemetryConfig {
        traces_url,
        sample_ratio,
        headers,
        service_name,
        resource_attributes,
        detect_resources: t.detect_resources.unwrap_or(true),
        export_timeout: Duration::from_secs(export_timeout),
    })
}

/// A collector's base URL (no path) gets OTLP's traces path, as `OTEL_EXPORTER_OTLP_ENDPOINT`
/// does; a URL with a path is used as it is.
pub(super) fn otlp_traces_url(endpoint: &str) -> String {
    match endpoint.parse::<hyper::Uri>() {
        Ok(u) if u.path() == "/" && u.query().is_none() => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        _ => endpoint.to_string(),
    }
}

/// The `http` target's remote options; files are read and their PEM checked now, so that a
/// wrong path is a configuration error naming its key.
fn http_options(c: &mut Checker, at: &str, t: &mut RawTarget) -> HttpOptions {
    use rustls_pki_types::pem::PemObject;
    let (headers, ca_file, sigv4_service, sigv4_region) =
        (t.headers.take(), t.ca_file.take(), t.sigv4_service.take(), t.sigv4_region.take());
    let (client_cert_file, client_key_file) = (t.client_cert_file.take(), t.client_key_file.take());
    let mut options = HttpOptions::default();
    for (name, value) in headers.unwrap_or_default() {
        let path = format!("{at}.headers.{name}");
        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            c.fail(&path, "is not a valid HTTP header name");
            continue;
        }
        // the value may be a secret: never repeat it in a message
        if hyper::header::HeaderValue::from_str(&value).is_err() {
            c.fail(&path, "the value is not a valid HTTP header value (visible ASCII only; not shown)");
            continue;
        }
        options.headers.push((name, Secret(value)));
    }
    let certs = |c: &mut Checker, key: &str, file: &str| {
        let path = format!("{at}.{key}");
        match rustls_pki_types::CertificateDer::pem_file_iter(file) {
            Ok(iter) => {
                let n = iter.filter(Result::is_ok).count();
                if n == 0 {
                    c.fail(&path, format!("`{file}` holds no PEM certificate"));
                }
            }
            Err(e) => c.fail(&path, format!("cannot read `{file}`: {e}")),
        }
    };
    if let Some(file) = ca_file.filter(|f| !f.is_empty()) {
        certs(c, "ca_file", &file);
        options.ca_file = Some(file.into());
    }
    match (client_cert_file.filter(|f| !f.is_empty()), client_key_file.filter(|f| !f.is_empty())) {
        (Some(cert), Some(key)) => {
            certs(c, "client_cert_file", &cert);
            if let Err(e) = rustls_pki_types::PrivateKeyDer::from_pem_file(&key) {
                c.fail(format!("{at}.client_key_file"), format!("`{key}` holds no usable PEM private key: {e}"));
            }
            options.client_cert = Some((cert.into(), key.into()));
        }
        (Some(_), None) => c.fail(format!("{at}.client_key_file"), "is required with client_cert_file"),
        (None, Some(_)) => c.fail(format!("{at}.client_cert_file"), "is required with client_key_file"),
        (None, None) => {}
    }
    match (sigv4_service.filter(|s| !s.is_empty()), sigv4_region) {
        (Some(service), region) => options.sigv4 = Some(SigV4 { service, region: region.filter(|r| !r.is_empty()) }),
        (None, Some(_)) => c.fail(format!("{at}.sigv4_service"), "is required with sigv4_region"),
        (None, None) => {}
    }
    options
}
