//! Configuration: TOML text → `${VAR}` interpolation → raw serde structs → validated [`Config`].
//!
//! The raw structs mirror the file exactly (`deny_unknown_fields`, every key optional where the
//! contract gives a default); [`Config`] holds what the service runs on: `Duration`s, checked
//! ranges, one typed target. Validation does no IO and reports every problem it finds, each with
//! the key path (`pipelines[0].batch.size`) and the reason.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Largest visibility timeout SQS accepts (12 hours).
pub const MAX_VISIBILITY_SECS: u64 = 43_200;
/// Lambda's synchronous invocation payload limit, the default and ceiling of `batch.max_bytes`.
pub const MAX_BATCH_BYTES: usize = 6_291_456;

/// The validated configuration the service runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub aws: AwsConfig,
    /// Address of the `/metrics`, `/healthz` and `/readyz` server.
    pub listen: SocketAddr,
    /// How long a drain may take after SIGTERM before what is left is released.
    pub grace_period: Duration,
    pub pipelines: Vec<PipelineConfig>,
}

#[derive(Debug, Clone, Default)]
pub struct AwsConfig {
    pub region: Option<String>,
    /// Endpoint for SQS calls (`sqs_endpoint_url`, else `endpoint_url`), for local emulators.
    pub sqs_endpoint_url: Option<String>,
    /// Endpoint for Lambda calls (`lambda_endpoint_url`, else `endpoint_url`).
    pub lambda_endpoint_url: Option<String>,
}

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
}

/// Defaults of the keys that have no fixed default in the contract.
pub mod defaults {
    /// `lease.max_lease_secs`: SQS's own limit (12 hours from the receive).
    pub const MAX_LEASE_SECS: u64 = super::MAX_VISIBILITY_SECS;
    /// `target.max_throttled_secs`: how long a throttled batch is held before it is released.
    pub const MAX_THROTTLED_SECS: u64 = 60;
    /// `filter.keep_delay_secs`: how long a kept (filtered, `on_filtered = "keep"`) message stays
    /// invisible before it comes back.
    pub const KEEP_DELAY_SECS: u64 = 30;

    /// `lease.max_outstanding`: room for every batch that may be in flight
    /// (`max_concurrency × batch.size`), in whole receives of 10, at least one receive.
    pub fn max_outstanding(max_concurrency: usize, batch_size: usize) -> usize {
        let n = max_concurrency.saturating_mul(batch_size).max(crate::lease::RECEIVE_MAX);
        n.div_ceil(crate::lease::RECEIVE_MAX) * crate::lease::RECEIVE_MAX
    }
}

/// `[pipelines.lease]`: how many messages may be outstanding, and for how long.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Messages received and not yet acknowledged, at most; pollers wait for room before receiving.
    pub max_outstanding: usize,
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
    validate(raw)
}

fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    let path = e.span().map(|s| format!("line {}", line_of(text, s.start))).unwrap_or_else(|| "(syntax)".to_string());
    Problem { path, reason: format!("TOML syntax error: {}", e.message()) }
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

// ---------------------------------------------------------------------------------------------
// Interpolation
// ---------------------------------------------------------------------------------------------

/// Replaces `${VAR}` and `${VAR:-default}` outside comments; `$${` stands for a literal `${`.
///
/// Comments are skipped so that a documented example such as `# queue_url = "${URL}"` does not
/// demand the variable. The scanner tracks TOML strings only far enough to know where a `#`
/// starts a comment.
fn interpolate(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut line = 1;
    // The quote that opened the string we are in, if any ("\"", "'", "\"\"\"" or "'''").
    let mut quote: Option<&'static str> = None;
    while i < bytes.len() {
        let rest = &text[i..];
        let c = bytes[i];
        if c == b'\n' {
            line += 1;
            if matches!(quote, Some("\"") | Some("'")) {
                quote = None; // an unterminated one-line string: let the TOML parser say so
            }
        }
        match quote {
            None if c == b'#' => {
                let end = rest.find('\n').map_or(text.len(), |n| i + n);
                out.push_str(&text[i..end]);
                i = end;
                continue;
            }
            None => {
                for q in ["\"\"\"", "'''", "\"", "'"] {
                    if rest.starts_with(q) {
                        quote = Some(q);
                        out.push_str(q);
                        i += q.len();
                        break;
                    }
                }
                if quote.is_some() {
                    continue;
                }
            }
            Some(q) => {
                if c == b'\\' && !q.starts_with('\'') && i + 1 < bytes.len() {
                    // an escape in a basic string: copy both characters (a `\"` does not close it)
                    let next = rest[1..].chars().next().map_or(1, char::len_utf8);
                    out.push_str(&rest[..1 + next]);
                    i += 1 + next;
                    continue;
                }
                if rest.starts_with(q) {
                    quote = None;
                    out.push_str(q);
                    i += q.len();
                    continue;
                }
            }
        }
        if rest.starts_with("$${") {
            out.push_str("${");
            i += 3;
            continue;
        }
        if rest.starts_with("${") {
            let Some(close) = rest.find('}') else {
                problems
                    .push(Problem { path: format!("line {line}"), reason: "`${` without a closing `}`".to_string() });
                break;
            };
            let inner = &rest[2..close];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid_name = !name.is_empty()
                && name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                && !name.starts_with(|ch: char| ch.is_ascii_digit());
            if !valid_name {
                problems.push(Problem {
                    path: format!("line {line}"),
                    reason: format!(
                        "`${{{inner}}}` is not a valid variable reference (use ${{NAME}} or ${{NAME:-default}})"
                    ),
                });
            } else {
                match (env(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => problems.push(Problem {
                        path: format!("line {line}"),
                        reason: format!(
                            "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                        ),
                    }),
                }
            }
            i += close + 1;
            continue;
        }
        let ch_len = rest.chars().next().map_or(1, char::len_utf8);
        out.push_str(&rest[..ch_len]);
        i += ch_len;
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw file structure
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    aws: RawAws,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    pipelines: Vec<RawPipeline>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Option<String>,
    endpoint_url: Option<String>,
    sqs_endpoint_url: Option<String>,
    lambda_endpoint_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    max_outstanding: Option<u64>,
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
    rate_limit_per_sec: Option<u64>,
    max_throttled_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial_backoff_secs: Option<u64>,
    max_backoff_secs: Option<u64>,
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

fn validate(raw: RawConfig) -> Result<Config, Vec<Problem>> {
    let mut c = Checker { problems: Vec::new() };

    for (key, v) in [
        ("aws.endpoint_url", &raw.aws.endpoint_url),
        ("aws.sqs_endpoint_url", &raw.aws.sqs_endpoint_url),
        ("aws.lambda_endpoint_url", &raw.aws.lambda_endpoint_url),
    ] {
        if let Some(v) = v {
            c.url(key, v, &["http", "https"]);
        }
    }
    let aws = AwsConfig {
        region: raw.aws.region.filter(|r| !r.is_empty()),
        sqs_endpoint_url: raw.aws.sqs_endpoint_url.or(raw.aws.endpoint_url.clone()),
        lambda_endpoint_url: raw.aws.lambda_endpoint_url.or(raw.aws.endpoint_url),
    };

    let listen_text = raw.server.listen.unwrap_or_else(|| "0.0.0.0:9464".to_string());
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        c.fail("server.listen", format!("`{listen_text}` is not an address:port such as 0.0.0.0:9464"));
        SocketAddr::from(([0, 0, 0, 0], 9464))
    });
    let grace = c.ranged("shutdown.grace_period_secs", raw.shutdown.grace_period_secs, 30, 1, 3600);

    if raw.pipelines.is_empty() {
        c.fail("pipelines", "at least one [[pipelines]] table is required");
    }
    let mut names = HashSet::new();
    let mut pipelines = Vec::new();
    for (i, p) in raw.pipelines.into_iter().enumerate() {
        let at = format!("pipelines[{i}]");
        let pipeline = validate_pipeline(&mut c, &at, p);
        if !pipeline.name.is_empty() && !names.insert(pipeline.name.clone()) {
            c.fail(
                format!("{at}.name"),
                format!("`{}` is used by another pipeline; names must be unique", pipeline.name),
            );
        }
        pipelines.push(pipeline);
    }

    // a long poll in flight at SIGTERM must be able to return inside the grace period
    for (i, p) in pipelines.iter().enumerate() {
        if p.pollers.wait_time.as_secs() >= grace {
            c.fail(
                format!("pipelines[{i}].pollers.wait_time_secs"),
                format!(
                    "{} must be shorter than shutdown.grace_period_secs ({grace}): a long poll in flight at shutdown has to return within the grace period",
                    p.pollers.wait_time.as_secs()
                ),
            );
        }
    }

    if c.problems.is_empty() {
        Ok(Config { aws, listen, grace_period: Duration::from_secs(grace), pipelines })
    } else {
        Err(c.problems)
    }
}

fn validate_pipeline(c: &mut Checker, at: &str, p: RawPipeline) -> PipelineConfig {
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

    let min = c.ranged(&format!("{at}.pollers.min"), p.pollers.min, 1, 0, 1000);
    let max = c.ranged(&format!("{at}.pollers.max"), p.pollers.max, 10, 1, 1000);
    if min > max {
        c.fail(format!("{at}.pollers.min"), format!("{min} is greater than pollers.max ({max})"));
    }
    let wait = c.ranged(&format!("{at}.pollers.wait_time_secs"), p.pollers.wait_time_secs, 20, 0, 20);
    let visibility = p
        .pollers
        .visibility_timeout_secs
        .map(|v| c.ranged(&format!("{at}.pollers.visibility_timeout_secs"), Some(v), v, 0, MAX_VISIBILITY_SECS));

    let size_hi = if fifo { 10 } else { 10_000 };
    let size = c.ranged(&format!("{at}.batch.size"), p.batch.size, 10, 1, size_hi);
    if fifo && p.batch.size.is_some_and(|s| s > 10) {
        c.fail(format!("{at}.batch.size"), "FIFO queues (queue_url ending in .fifo) allow at most 10");
    }
    let window = c.ranged(&format!("{at}.batch.window_ms"), p.batch.window_ms, 0, 0, 300_000);
    let max_bytes = c.ranged(
        &format!("{at}.batch.max_bytes"),
        p.batch.max_bytes,
        MAX_BATCH_BYTES as u64,
        1024,
        MAX_BATCH_BYTES as u64,
    );

    let target = match p.target {
        Some(t) => validate_target(c, &format!("{at}.target"), t),
        None => {
            c.fail(format!("{at}.target"), "is required ([pipelines.target] with a `type`)");
            placeholder_target()
        }
    };

    let initial =
        c.ranged(&format!("{at}.retry.initial_backoff_secs"), p.retry.initial_backoff_secs, 1, 0, MAX_VISIBILITY_SECS);
    let max_backoff =
        c.ranged(&format!("{at}.retry.max_backoff_secs"), p.retry.max_backoff_secs, 300, 0, MAX_VISIBILITY_SECS);
    if initial > max_backoff {
        c.fail(
            format!("{at}.retry.initial_backoff_secs"),
            format!("{initial} is greater than retry.max_backoff_secs ({max_backoff})"),
        );
    }

    let dead_letter = p.dead_letter.map(|d| {
        let queue_url = c.required_string(&format!("{at}.dead_letter.queue_url"), d.queue_url);
        c.url(&format!("{at}.dead_letter.queue_url"), &queue_url, &["http", "https"]);
        let count = c.ranged(&format!("{at}.dead_letter.max_receive_count"), d.max_receive_count, 5, 1, 1000);
        DeadLetterConfig { queue_url, max_receive_count: count as u32 }
    });
    if let Some(d) = &dead_letter {
        if d.queue_url == queue_url && !queue_url.is_empty() {
            c.fail(format!("{at}.dead_letter.queue_url"), "is the pipeline's own queue_url; it must be another queue");
        }
        if d.queue_url.ends_with(".fifo") != fifo && !d.queue_url.is_empty() {
            c.fail(
                format!("{at}.dead_letter.queue_url"),
                "a FIFO queue needs a FIFO dead-letter queue and a standard queue a standard one",
            );
        }
    }

    let filter = p.filter.and_then(|f| {
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
            c.fail(
                format!("{at}.filter.patterns"),
                "lists no pattern; remove [pipelines.filter] to pass every message",
            );
            return None;
        }
        match crate::filter::Filter::compile(&patterns) {
            Ok(filter) => Some(FilterConfig { filter, on_filtered, keep_delay: Duration::from_secs(keep_delay) }),
            Err((i, e)) => {
                c.fail(format!("{at}.filter.patterns[{i}]"), format!("invalid pattern of pipeline `{name}`: {e}"));
                None
            }
        }
    });

    let default_outstanding = defaults::max_outstanding(target.max_concurrency, size as usize) as u64;
    let max_outstanding = c.ranged(
        &format!("{at}.lease.max_outstanding"),
        p.lease.max_outstanding,
        default_outstanding,
        crate::lease::RECEIVE_MAX as u64,
        1_000_000,
    );
    let max_lease = c.ranged(
        &format!("{at}.lease.max_lease_secs"),
        p.lease.max_lease_secs,
        defaults::MAX_LEASE_SECS,
        1,
        MAX_VISIBILITY_SECS,
    );

    PipelineConfig {
        lease: LeaseConfig { max_outstanding: max_outstanding as usize, max_lease: Duration::from_secs(max_lease) },
        name,
        queue_url,
        fifo,
        filter,
        pollers: PollerConfig {
            min: min as usize,
            max: max as usize,
            wait_time: Duration::from_secs(wait),
            visibility_timeout: visibility.map(Duration::from_secs),
        },
        batch: BatchConfig {
            size: size as usize,
            window: Duration::from_millis(window),
            max_bytes: max_bytes as usize,
        },
        target,
        retry: RetryConfig {
            initial_backoff: Duration::from_secs(initial),
            max_backoff: Duration::from_secs(max_backoff),
        },
        dead_letter,
        depth_interval: Duration::from_secs(depth_interval),
    }
}

fn placeholder_target() -> TargetConfig {
    TargetConfig {
        kind: TargetKind::Http { url: String::new() },
        timeout: Duration::from_secs(30),
        max_concurrency: 10,
        rate_limit_per_sec: None,
        max_throttled: Duration::from_secs(defaults::MAX_THROTTLED_SECS),
    }
}

fn validate_target(c: &mut Checker, at: &str, t: RawTarget) -> TargetConfig {
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

    // Keys that belong to one target type only.
    let present = [
        ("url", t.url.is_some()),
        ("function_name", t.function_name.is_some()),
        ("qualifier", t.qualifier.is_some()),
        ("program", t.program.is_some()),
        ("args", t.args.is_some()),
        ("workers", t.workers.is_some()),
        ("handler", t.handler.is_some()),
    ];
    let only = |kind: &str, allowed: &[&str], c: &mut Checker| {
        for (key, is_set) in present {
            if is_set && !allowed.contains(&key) {
                c.fail(format!("{at}.{key}"), format!("does not apply to target type `{kind}`"));
            }
        }
    };

    let kind = match t.kind.as_deref() {
        Some("http") => {
            only("http", &["url"], c);
            let url = c.required_string(&format!("{at}.url"), t.url);
            c.url(&format!("{at}.url"), &url, &["http"]);
            TargetKind::Http { url }
        }
        Some("command") => {
            only("command", &["program", "args"], c);
            let program = c.required_string(&format!("{at}.program"), t.program);
            TargetKind::Command { program, args: t.args.unwrap_or_default() }
        }
        Some("lambda") => {
            only("lambda", &["function_name", "qualifier"], c);
            let function_name = c.required_string(&format!("{at}.function_name"), t.function_name);
            TargetKind::Lambda { function_name, qualifier: t.qualifier.filter(|q| !q.is_empty()) }
        }
        Some("runtime-api") => {
            only("runtime-api", &["program", "args", "workers", "handler"], c);
            let program = c.required_string(&format!("{at}.program"), t.program);
            let workers = c.ranged(&format!("{at}.workers"), t.workers, 1, 1, 256) as usize;
            TargetKind::RuntimeApi {
                program,
                args: t.args.unwrap_or_default(),
                workers,
                handler: t.handler.filter(|h| !h.is_empty()),
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
    };
    TargetConfig {
        kind,
        timeout: Duration::from_secs(timeout),
        max_concurrency: max_concurrency as usize,
        rate_limit_per_sec,
        max_throttled: Duration::from_secs(max_throttled),
    }
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
    fn target_keys_must_fit_the_type() {
        let text = MINIMAL.replace("url = \"http://127.0.0.1:8080/\"", "program = \"./w\"");
        let p = problems(&text);
        assert!(p.contains(&"pipelines[0].target.program: does not apply to target type `http`".to_string()), "{p:?}");
        assert!(p.contains(&"pipelines[0].target.url: is required".to_string()), "{p:?}");
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

    #[test]
    fn long_polls_must_fit_in_the_grace_period() {
        let p = problems(&format!("[shutdown]\ngrace_period_secs = 10\n{MINIMAL}"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "pipelines[0].pollers.wait_time_secs: 20 must be shorter than shutdown.grace_period_secs (10)"
            ),
            "{p:?}"
        );
        assert!(parse(
            &format!("[shutdown]\ngrace_period_secs = 10\n{MINIMAL}[pipelines.pollers]\nwait_time_secs = 5\n"),
            &env
        )
        .is_ok());
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
