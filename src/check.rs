//! `sqs-poller check`: the resolved configuration as the service will run it, one section per
//! line group (`tests/golden/check-poller.txt` pins the whole output). Secrets show their names
//! only.

use std::fmt::{self, Display, Formatter};
use std::path::Path;

use crate::config::{self, Config, PipelineConfig as Pipeline, TargetKind};

/// The configuration loaded from `path`, as `check` prints it.
pub struct Resolved<'a> {
    pub path: &'a Path,
    pub config: &'a Config,
}

impl Display for Resolved<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let c = self.config;
        writeln!(f, "{}: ok", self.path.display())?;
        writeln!(
            f,
            "listen {}  admin {}  grace_period {}s",
            c.listen,
            c.admin_listen.map_or_else(
                || "off".to_string(),
                |a| if c.admin_token.is_some() { format!("{a} (bearer token)") } else { a.to_string() }
            ),
            c.grace_period.as_secs()
        )?;
        if let Some(e) = &c.aws.sqs_endpoint_url {
            writeln!(f, "sqs endpoint {e}")?;
        }
        telemetry(f, c.telemetry.as_ref())?;
        fleet(f, c.fleet.as_ref())?;
        for p in &c.pipelines {
            pipeline(f, p)?;
        }
        descriptors(f, c)
    }
}

fn telemetry(f: &mut Formatter<'_>, t: Option<&config::TelemetryConfig>) -> fmt::Result {
    let Some(t) = t else { return writeln!(f, "telemetry  off (no [telemetry] otlp_endpoint)") };
    // header values are secrets: their names only
    let headers = if t.headers.is_empty() {
        String::new()
    } else {
        format!(" headers {}", t.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(","))
    };
    writeln!(
        f,
        "telemetry  OTLP/HTTP {} sample_ratio {} service.name {}{headers}{}",
        t.traces_url,
        t.sample_ratio,
        t.service_name,
        if t.detect_resources { " (ECS/EC2 resource detection)" } else { "" }
    )
}

fn fleet(f: &mut Formatter<'_>, fleet: Option<&config::FleetConfig>) -> fmt::Result {
    let Some(fleet) = fleet else {
        return writeln!(f, "fleet      off (no [fleet] redis_url: every limit is this instance's)");
    };
    writeln!(f, "fleet      redis {} slot_ttl {}s", without_credentials(&fleet.redis_url.0), fleet.slot_ttl.as_secs())
}

/// `url` with its user and password (an AUTH token) masked.
fn without_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://(credentials not shown)@{host}"),
        _ => url.to_string(),
    }
}

/// A pipeline: the path of its messages, in order (queue, pollers, batch, target, lease,
/// filter, retry, dead-letter queue).
fn pipeline(f: &mut Formatter<'_>, p: &Pipeline) -> fmt::Result {
    writeln!(f, "pipeline {}", p.name)?;
    writeln!(f, "  queue      {}{}", p.queue_url, if p.fifo { " (FIFO)" } else { "" })?;
    writeln!(
        f,
        "  pollers    min {} max {} wait {}s visibility {}",
        p.pollers.min,
        p.pollers.max,
        p.pollers.wait_time.as_secs(),
        p.pollers.visibility_timeout.map_or("queue default".to_string(), |v| format!("{}s", v.as_secs()))
    )?;
    writeln!(
        f,
        "  batch      size {} window {}ms max_bytes {}",
        p.batch.size,
        p.batch.window.as_millis(),
        p.batch.max_bytes
    )?;
    target(f, p)?;
    if let Some(cap) = p.batch.max_in_flight_per_group {
        writeln!(f, "  fair share at most {cap} messages of one message group in batches at once")?;
    }
    http(f, &p.target.http)?;
    if let Some(l) = &p.large_payloads {
        writeln!(
            f,
            "  payloads   S3 extended-client pointers resolved (at most {} bytes, {} at once{})",
            l.max_bytes,
            l.concurrency,
            if l.delete_after_success { ", objects deleted after success" } else { "" }
        )?;
        if let Some(list) = &l.allowed_buckets {
            let names: Vec<String> = list.iter().map(|a| format!("{}/{}", a.bucket, a.prefix)).collect();
            writeln!(f, "             only from {} (other pointers are refused)", names.join(", "))?;
        }
    }
    if let Some(url) = &p.target.health_url {
        writeln!(f, "  health     {url} (pollers pause while it fails)")?;
    }
    writeln!(
        f,
        "  lease      max_outstanding {} max_outstanding_bytes {} ({} MiB) max_lease {}s",
        p.lease.max_outstanding,
        p.lease.max_outstanding_bytes,
        p.lease.max_outstanding_bytes >> 20,
        p.lease.max_lease.as_secs()
    )?;
    shared(f, p)?;
    settlement(f, p)
}

/// The fleet's budget of the pipeline and the task count it asks for.
fn shared(f: &mut Formatter<'_>, p: &Pipeline) -> fmt::Result {
    let mut parts = Vec::new();
    if let Some(n) = p.target.fleet_max_concurrency {
        parts.push(format!("fleet_max_concurrency {n}"));
    }
    if let Some(r) = p.target.fleet_rate_per_sec {
        parts.push(format!("fleet_rate {r}/s"));
    }
    if !parts.is_empty() {
        parts.push(format!("key {}", p.target.fleet_key.as_deref().unwrap_or(&p.name)));
    }
    if let Some(i) = &p.idempotency {
        let key = match &i.key {
            config::IdempotencyKey::MessageId => "message_id".to_string(),
            config::IdempotencyKey::Pointer(p) => p.clone(),
        };
        parts.push(format!("idempotency key {key} ttl {}s", i.ttl.as_secs()));
    }
    if !parts.is_empty() {
        writeln!(f, "  fleet      {}", parts.join(" "))?;
    }
    let t = &p.desired_tasks;
    writeln!(
        f,
        "  tasks      sqs_poller_desired_tasks drain {}s utilization {}{}",
        t.drain.as_secs(),
        t.utilization,
        if t.cloudwatch_emf { " (CloudWatch EMF on stdout)" } else { "" }
    )
}

/// The target, its limits and its pool.
fn target(f: &mut Formatter<'_>, p: &Pipeline) -> fmt::Result {
    let kind = match &p.target.kind {
        TargetKind::Http { url } => format!("http {url}"),
        TargetKind::Command { program, args } => format!("command {program} {}", args.join(" ")),
        TargetKind::RuntimeApi { program, args, workers, handler } => format!(
            "runtime-api {program} {} workers {workers}{}",
            args.join(" "),
            handler.as_ref().map_or(String::new(), |h| format!(" handler {h}"))
        ),
        TargetKind::Lambda { function_name, qualifier } => {
            format!("lambda {function_name}{}", qualifier.as_ref().map_or(String::new(), |q| format!(":{q}")))
        }
    };
    writeln!(
        f,
        "  target     {kind} timeout {}s max_concurrency {} rate_limit {} max_throttled {}s",
        p.target.timeout.as_secs(),
        p.target.max_concurrency,
        p.target.rate_limit_per_sec.map_or("none".to_string(), |r| format!("{r}/s")),
        p.target.max_throttled.as_secs()
    )?;
    if let Some(pool) = &p.target.pool {
        writeln!(
            f,
            "  pool       {} (max_concurrency {}{}) priority {} weight {}",
            pool.name,
            pool.settings.max_concurrency,
            pool.settings.adaptive.map_or(String::new(), |floor| format!(", adaptive from {floor}")),
            pool.priority,
            pool.weight
        )?;
    }
    Ok(())
}

/// The `http` target's headers (names only: their values are secrets), TLS and signing.
fn http(f: &mut Formatter<'_>, http: &config::HttpOptions) -> fmt::Result {
    if !http.headers.is_empty() {
        let names: Vec<&str> = http.headers.iter().map(|(n, _)| n.as_str()).collect();
        writeln!(f, "  headers    {} (values not shown)", names.join(", "))?;
    }
    if let Some(ca) = &http.ca_file {
        writeln!(f, "  tls        ca_file {}", ca.display())?;
    }
    if let Some((cert, key)) = &http.client_cert {
        writeln!(f, "  tls        client_cert_file {} client_key_file {}", cert.display(), key.display())?;
    }
    if let Some(s) = &http.sigv4 {
        writeln!(f, "  sigv4      service {} region {}", s.service, s.region.as_deref().unwrap_or("(the AWS region)"))?;
    }
    Ok(())
}

/// What becomes of a message after the worker: filter, retries, dead-letter queue.
fn settlement(f: &mut Formatter<'_>, p: &Pipeline) -> fmt::Result {
    match &p.filter {
        Some(x) if x.on_filtered == config::OnFiltered::Keep => writeln!(
            f,
            "  filter     {} pattern(s), on_filtered keep (back after {}s)",
            x.filter.len(),
            x.keep_delay.as_secs()
        )?,
        Some(x) => writeln!(f, "  filter     {} pattern(s), on_filtered delete", x.filter.len())?,
        None => writeln!(f, "  filter     none (every message passes)")?,
    }
    if let Some(warning) = config::kept_fifo_warning(p) {
        writeln!(f, "warning: {warning}")?;
    }
    writeln!(
        f,
        "  retry      backoff {}s..{}s{}",
        p.retry.initial_backoff.as_secs(),
        p.retry.max_backoff.as_secs(),
        if p.retry.bisect { ", a batch that fails as a whole is bisected" } else { "" }
    )?;
    if let Some(age) = p.retry.max_age {
        writeln!(f, "  deadline   dead-lettered (reason expired) once first sent over {}s ago", age.as_secs())?;
    }
    match &p.dead_letter {
        Some(d) => writeln!(f, "  dead_letter {} after {} receives", d.queue_url, d.max_receive_count),
        None => writeln!(f, "  dead_letter none (the queue's own redrive policy applies)"),
    }
}

/// The descriptors a full fleet needs against this host's open-file limit.
fn descriptors(f: &mut Formatter<'_>, c: &Config) -> fmt::Result {
    let needed = crate::descriptors::needed(c);
    match crate::descriptors::current() {
        Some((soft, hard)) => {
            writeln!(f, "descriptors up to {needed} at full scale; open-file limit here: soft {soft}, hard {hard} (the soft limit is raised to the hard one at start)")?;
            if let Some(warning) = crate::descriptors::shortfall(hard, needed) {
                writeln!(f, "warning: {warning}")?;
            }
            Ok(())
        }
        None => writeln!(f, "descriptors up to {needed} at full scale; the open-file limit cannot be read here"),
    }
}

#[cfg(test)]
mod tests {
    use super::without_credentials;

    #[test]
    fn a_redis_urls_credentials_are_not_shown() {
        let shown = without_credentials("rediss://user:p@ss@word@cache.example:6379/0");
        assert_eq!(shown, "rediss://(credentials not shown)@cache.example:6379/0");
        assert_eq!(without_credentials("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
