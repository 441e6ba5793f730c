//! Telemetry: OpenTelemetry spans of what the service does with messages, exported over
//! OTLP/HTTP (protobuf) by the `opentelemetry-otlp` exporter and the SDK's batch processor.
//!
//! Spans follow OpenTelemetry's messaging conventions for AWS SQS (`messaging.system =
//! "aws_sqs"`, span names `{operation} {queue}`):
//! - `receive {queue}` (client): a ReceiveMessage that returned messages, from when the
//!   request was sent.
//! - `process {queue}` (consumer): one per batch, a trace root, **linked** to each message's
//!   producer context (its `traceparent` message attribute, else its `AWSTraceHeader`); the
//!   context passed to the worker is this span's, so the worker's spans are its children.
//!   Attributes: batch size, outcome, messages succeeded / retried / dead-lettered; events for
//!   each retry and dead-letter and for the lease extensions of its messages.
//!   - `dispatch {queue}` (client): the call of the target (throttles and bisection included).
//!   - `settle {queue}` (client): deletes, retries and dead-letter copies.
//!
//! With `[telemetry]` off nothing here runs: the stages hold `None`. A batch that is not
//! sampled builds no span at all (the sampler decides before anything is recorded). Export runs
//! on the SDK's own thread and on the runtime, never in a stage: an unreachable collector costs
//! spans (counted in `sqs_poller_telemetry_spans_total{outcome="failed"}`), never messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use crate::config::TelemetryConfig;
use crate::event::ReceivedMessage;

/// The largest batch: every message of one may have its link.
const MAX_LINKS: u32 = 10_000;
/// Retry and dead-letter events of one batch, at most (one per message, and the extensions).
const MAX_EVENTS: u32 = 1_000;

/// The process's tracer provider; one per process, from `[telemetry]`.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    /// Sets up the exporter (nothing is sent yet) and the resource (reading the ECS or EC2
    /// metadata endpoint when there is one, bounded to about a second).
    ///
    /// # Errors
    /// When the exporter cannot be built (the URL, TLS).
    pub async fn start(cfg: &TelemetryConfig) -> anyhow::Result<Telemetry> {
        let https = crate::net::https_connector(None, None)
            .map_err(|e| anyhow::anyhow!("cannot set up TLS for telemetry.otlp_endpoint: {e}"))?;
        let client = opentelemetry_http::hyper::HyperClient::new(https, cfg.export_timeout, None);
        let mut headers: HashMap<String, String> = cfg.headers.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        // an http:// collector through a proxy with credentials: each export carries them
        let collector: Option<hyper::Uri> = cfg.traces_url.parse().ok();
        if let Some(auth) = collector.as_ref().and_then(crate::net::proxy::forward_authorization) {
            headers.insert("proxy-authorization".into(), auth.to_str().unwrap_or_default().to_string());
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(cfg.traces_url.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(cfg.export_timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the OTLP exporter (telemetry.otlp_endpoint): {e}"))?;
        let exporter = CountingExporter { inner: Arc::new(exporter), runtime: tokio::runtime::Handle::current() };
        let mut attributes: Vec<KeyValue> =
            cfg.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
        if cfg.detect_resources {
            let detected = detect_resource().await;
            // what the user wrote wins over what was detected
            attributes.extend(
                detected.into_iter().filter(|d| !cfg.resource_attributes.iter().any(|(k, _)| k == d.key.as_str())),
            );
        }
        let resource = Resource::builder_empty()
            .with_service_name(cfg.service_name.clone())
            .with_attributes(attributes)
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))))
            .with_max_links_per_span(MAX_LINKS)
            .with_max_events_per_span(MAX_EVENTS)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("sqs-poller");
        crate::metrics::telemetry_spans(true, 0);
        crate::metrics::telemetry_spans(false, 0);
        tracing::info!(url = %cfg.traces_url, sample_ratio = cfg.sample_ratio, "exporting spans over OTLP/HTTP");
        Ok(Telemetry { provider, tracer })
    }

    /// The tracer of one pipeline's queue.
    pub fn pipeline(&self, pipeline: &str, queue_url: &str) -> PipelineTracer {
        let queue = queue_url.rsplit('/').next().unwrap_or(queue_url).to_string();
        PipelineTracer {
            tracer: self.tracer.clone(),
            common: Arc::new([
                KeyValue::new("messaging.system", "aws_sqs"),
                KeyValue::new("messaging.destination.name", queue.clone()),
                KeyValue::new("aws.sqs.queue.url", queue_url.to_string()),
                KeyValue::new("sqs_poller.pipeline", pipeline.to_string()),
            ]),
            queue,
        }
    }

    /// Sends what is still queued and stops the exporter (at most `timeout`).
    pub async fn shutdown(&self, timeout: Duration) {
        let provider = self.provider.clone();
        // the SDK blocks until its thread is done; its exports run on this runtime
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout));
        match tokio::time::timeout(timeout + Duration::from_secs(1), done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "telemetry: the last spans may not have been exported"),
            _ => tracing::warn!("telemetry: the exporter did not stop in time; the last spans may be lost"),
        }
    }
}

/// Runs the OTLP exporter's requests on the runtime (the SDK calls it from its own thread) and
/// counts what it sent and what it lost.
#[derive(Debug)]
struct CountingExporter {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let inner = self.inner.clone();
        let result = match self.runtime.spawn(async move { inner.export(batch).await }).await {
            Ok(r) => r,
            Err(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(e.to_string())),
        };
        crate::metrics::telemetry_spans(result.is_ok(), n);
        if let Err(e) = &result {
            warn_export_failed(e);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // called once, while the provider is built: nothing else holds the exporter yet
        match Arc::get_mut(&mut self.inner) {
            Some(exporter) => exporter.set_resource(resource),
            None => tracing::warn!("telemetry: the resource could not be set on the exporter"),
        }
    }
}

/// One warning a minute at most while exports fail (each failure is counted).
fn warn_export_failed(e: &dyn std::fmt::Display) {
    static LAST: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(error = %e, "telemetry: spans could not be exported (counted in sqs_poller_telemetry_spans_total{{outcome=\"failed\"}}); messages are not affected");
    }
}

/// The spans of one pipeline.
#[derive(Clone)]
pub struct PipelineTracer {
    tracer: SdkTracer,
    /// `messaging.system`, `messaging.destination.name`, `aws.sqs.queue.url`, the pipeline.
    common: Arc<[KeyValue; 4]>,
    queue: String,
}

impl PipelineTracer {
    /// The common attributes, the operation's name and its type (`None`: not a messaging
    /// operation, the call of the target).
    fn attributes(&self, operation: &'static str, kind: Option<&'static str>, more: usize) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(self.common.len() + 2 + more);
        a.extend(self.common.iter().cloned());
        a.push(KeyValue::new("messaging.operation.name", operation));
        if let Some(kind) = kind {
            a.push(KeyValue::new("messaging.operation.type", kind));
        }
        a
    }

    /// Records the span of a ReceiveMessage sent at `sent_at` that returned `messages` (> 0).
    pub fn received(&self, sent_at: SystemTime, messages: usize) {
        let mut attributes = self.attributes("ReceiveMessage", Some("receive"), 1);
        attributes.push(KeyValue::new("messaging.batch.message_count", messages as i64));
        let mut span = self
            .tracer
            .span_builder(format!("receive {}", self.queue))
            .with_kind(SpanKind::Client)
            .with_start_time(sent_at)
            .with_attributes(attributes)
            .start(&self.tracer);
        span.end();
    }

    /// Starts the span of a batch cut at `cut` (it then waited `slot_wait` for a concurrency
    /// slot); `None` when it is not sampled (then nothing is recorded).
    pub fn batch(&self, batch: &[ReceivedMessage], cut: SystemTime, slot_wait: Duration) -> Option<BatchSpan> {
        let cut_ms = cut.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        // time from the producer's send to the batch's cut: in the queue, then in the batch
        let age_ms = |m: &ReceivedMessage| m.sent_timestamp_ms.map(|sent| cut_ms.saturating_sub(sent) as i64);
        let links: Vec<Link> = batch
            .iter()
            .filter_map(|m| {
                let producer = producer_context(m)?;
                let mut attributes = vec![KeyValue::new("messaging.message.id", m.message_id.clone())];
                if let Some(age) = age_ms(m) {
                    attributes.push(KeyValue::new("sqs_poller.message.age_ms", age));
                }
                Some(Link::new(producer, attributes, 0))
            })
            .collect();
        let mut attributes = self.attributes("process", Some("process"), 3);
        attributes.push(KeyValue::new("messaging.batch.message_count", batch.len() as i64));
        if let Some(oldest) = batch.iter().filter_map(age_ms).max() {
            attributes.push(KeyValue::new("sqs_poller.oldest_message.age_ms", oldest));
        }
        attributes.push(KeyValue::new("sqs_poller.slot_wait_ms", slot_wait.as_millis() as i64));
        let span = self
            .tracer
            .span_builder(format!("process {}", self.queue))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .with_links(links)
            .with_start_time(cut)
            // a root: the producers are linked, not parents (a batch has many)
            .start_with_context(&self.tracer, &Context::new());
        if !span.span_context().is_sampled() {
            return None;
        }
        Some(BatchSpan { cx: Context::new().with_span(span), tracer: self.clone() })
    }
}

/// The span of one batch, shared with the lease keeper for its extension events.
#[derive(Clone)]
pub struct BatchSpan {
    cx: Context,
    tracer: PipelineTracer,
}

/// A child of a batch span (`dispatch`, `settle`); ended by [`Child::end`].
pub struct Child {
    cx: Context,
}

impl Child {
    pub fn set(&self, attributes: Vec<KeyValue>) {
        self.cx.span().set_attributes(attributes);
    }

    pub fn error(&self, description: impl Into<String>) {
        self.cx.span().set_status(Status::error(description.into()));
    }

    pub fn end(self) {
        self.cx.span().end();
    }

    /// Ends a `dispatch` span with what the target did (`sqs_poller.outcome`, and why it failed).
    pub fn dispatched(self, name: &'static str, error: Option<String>) {
        self.set(vec![KeyValue::new("sqs_poller.outcome", name)]);
        if let Some(e) = error {
            self.error(e);
        }
        self.end();
    }
}

/// How a batch was settled, as indexes into it: (deleted, retried with their delay in seconds,
/// dead-lettered).
pub type Settled<'a> = (&'a [usize], &'a [(usize, i32)], &'a [usize]);

impl BatchSpan {
    /// The W3C `traceparent` of this span: what the worker is given, so its spans are children.
    pub fn traceparent(&self) -> String {
        let sc = self.cx.span().span_context().clone();
        format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
    }

    /// Starts a child span: `dispatch` (no messaging type) or `settle`.
    pub fn child(&self, operation: &'static str, kind: Option<&'static str>) -> Child {
        let span = self
            .tracer
            .tracer
            .span_builder(format!("{operation} {}", self.tracer.queue))
            .with_kind(SpanKind::Client)
            .with_attributes(self.tracer.attributes(operation, kind, 0))
            .start_with_context(&self.tracer.tracer, &self.cx);
        Child { cx: Context::new().with_span(span) }
    }

    /// Records how the batch ended: its outcome, what was deleted, retried and dead-lettered,
    /// with an event for each retry and each dead-letter.
    /// `settled`: (deleted, retried with their delay, dead-lettered) as indexes into the batch.
    pub fn settled(
        &self,
        batch: &[ReceivedMessage],
        name: &'static str,
        error: Option<String>,
        settled: Option<Settled<'_>>,
    ) {
        let mut attributes = vec![KeyValue::new("sqs_poller.outcome", name)];
        if let Some((deleted, retried, dead_lettered)) = settled {
            attributes.push(KeyValue::new("sqs_poller.messages.succeeded", deleted.len() as i64));
            attributes.push(KeyValue::new("sqs_poller.messages.retried", retried.len() as i64));
            attributes.push(KeyValue::new("sqs_poller.messages.dead_lettered", dead_lettered.len() as i64));
            let span = self.cx.span();
            for &(i, delay) in retried.iter().take(MAX_EVENTS as usize / 2) {
                span.add_event(
                    "retry",
                    vec![
                        KeyValue::new("messaging.message.id", batch[i].message_id.clone()),
                        KeyValue::new("sqs_poller.retry.delay_secs", i64::from(delay)),
                        KeyValue::new("sqs_poller.receive_count", i64::from(batch[i].receive_count)),
                    ],
                );
            }
            for &i in dead_lettered.iter().take(MAX_EVENTS as usize / 2) {
                span.add_event(
                    "dead_letter",
                    vec![
                        KeyValue::new("messaging.message.id", batch[i].message_id.clone()),
                        KeyValue::new("sqs_poller.receive_count", i64::from(batch[i].receive_count)),
                    ],
                );
            }
        }
        self.set(attributes);
        if let Some(e) = error {
            self.error(e);
        }
    }

    pub fn event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        self.cx.span().add_event(name, attributes);
    }

    pub fn set(&self, attributes: Vec<KeyValue>) {
        self.cx.span().set_attributes(attributes);
    }

    pub fn error(&self, description: impl Into<String>) {
        self.cx.span().set_status(Status::error(description.into()));
    }

    pub fn end(&self) {
        self.cx.span().end();
    }
}

/// The batch spans of the messages in batches, for the lease keeper's extension events (only
/// when telemetry is on).
#[derive(Default)]
pub struct LeaseSpans {
    by_message: Mutex<HashMap<String, BatchSpan>>,
}

impl LeaseSpans {
    pub fn attach(&self, batch: &[ReceivedMessage], span: &BatchSpan) {
        let mut map = self.by_message.lock().unwrap_or_else(PoisonError::into_inner);
        for m in batch {
            map.insert(m.message_id.clone(), span.clone());
        }
    }

    pub fn detach(&self, batch: &[ReceivedMessage]) {
        let mut map = self.by_message.lock().unwrap_or_else(PoisonError::into_inner);
        for m in batch {
            map.remove(&m.message_id);
        }
    }

    /// One `lease extended` event on each batch span whose messages were just extended.
    pub fn extended<'a>(&self, message_ids: impl Iterator<Item = &'a str>, visibility_secs: i32) {
        let mut per_span: HashMap<SpanId, (BatchSpan, i64)> = HashMap::new();
        {
            let map = self.by_message.lock().unwrap_or_else(PoisonError::into_inner);
            for id in message_ids {
                let Some(span) = map.get(id) else { continue };
                let span_id = span.cx.span().span_context().span_id();
                per_span.entry(span_id).or_insert_with(|| (span.clone(), 0)).1 += 1;
            }
        }
        for (span, n) in per_span.into_values() {
            span.event(
                "lease extended",
                vec![
                    KeyValue::new("messaging.batch.message_count", n),
                    KeyValue::new("aws.sqs.visibility_timeout", i64::from(visibility_secs)),
                ],
            );
        }
    }
}

impl crate::lease::ExtensionWatcher for LeaseSpans {
    fn extended(&self, message_ids: &mut dyn Iterator<Item = &str>, visibility_secs: i32) {
        LeaseSpans::extended(self, message_ids, visibility_secs);
    }
}

/// A message's producer context: its `traceparent` message attribute (W3C), else its
/// `AWSTraceHeader` (X-Ray: the root is the trace id, the parent the span id).
pub fn producer_context(m: &ReceivedMessage) -> Option<SpanContext> {
    if let Some(sc) = m.traceparent.as_deref().and_then(parse_traceparent) {
        return Some(sc);
    }
    let xray = crate::trace::Trace::parse(m.trace_header.as_deref()?)?;
    let trace_id = TraceId::from_hex(&xray.trace_id).ok()?;
    let span_id = SpanId::from_hex(xray.parent.as_deref()?).ok()?;
    let flags = if xray.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
    valid(SpanContext::new(trace_id, span_id, flags, true, TraceState::NONE))
}

/// A W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), as a remote span context.
pub fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let mut parts = text.trim().split('-');
    let (Some(version), Some(trace), Some(span), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    // version 00 has exactly four fields; later versions may add fields after them
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let all_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ![version, trace, span, flags].iter().all(|s| all_hex(s)) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    valid(SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(flags & 1),
        true,
        TraceState::NONE,
    ))
}

fn valid(sc: SpanContext) -> Option<SpanContext> {
    sc.is_valid().then_some(sc)
}

/// Resource attributes of the place the service runs: the ECS task (its metadata endpoint,
/// `ECS_CONTAINER_METADATA_URI_V4`), else the EC2 instance (IMDSv2, the AWS SDK's client, which
/// honours `AWS_EC2_METADATA_SERVICE_ENDPOINT`; skipped with `AWS_EC2_METADATA_DISABLED=true`).
/// Nothing when neither answers within about a second.
pub async fn detect_resource() -> Vec<KeyValue> {
    if let Ok(uri) = std::env::var("ECS_CONTAINER_METADATA_URI_V4") {
        return match tokio::time::timeout(Duration::from_secs(2), ecs_resource(&uri)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "telemetry: cannot read the ECS task metadata; no ECS resource attributes");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!("telemetry: the ECS task metadata endpoint did not answer; no ECS resource attributes");
                Vec::new()
            }
        };
    }
    if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return Vec::new();
    }
    match tokio::time::timeout(Duration::from_millis(1500), ec2_resource()).await {
        Ok(Some(a)) => a,
        // not on EC2 (or IMDS is off): nothing to say
        _ => Vec::new(),
    }
}

async fn http_get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.parse()?).await?;
    anyhow::ensure!(response.status().is_success(), "{url} answered {}", response.status());
    // task and instance metadata are small; a larger answer is not read into memory
    let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?
        .to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

async fn ecs_resource(base: &str) -> anyhow::Result<Vec<KeyValue>> {
    let task = http_get_json(&format!("{base}/task")).await?;
    let container = http_get_json(base).await.unwrap_or_default();
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let mut a = vec![KeyValue::new("cloud.provider", "aws"), KeyValue::new("cloud.platform", "aws_ecs")];
    if let Some(arn) = text(&task, "TaskARN") {
        // arn:aws:ecs:REGION:ACCOUNT:task/…
        let fields: Vec<&str> = arn.split(':').collect();
        if fields.len() > 4 {
            a.push(KeyValue::new("cloud.region", fields[3].to_string()));
            a.push(KeyValue::new("cloud.account.id", fields[4].to_string()));
        }
        a.push(KeyValue::new("aws.ecs.task.arn", arn));
    }
    for (document, key, attribute) in [
        (&task, "Cluster", "aws.ecs.cluster.arn"),
        (&task, "Family", "aws.ecs.task.family"),
        (&task, "Revision", "aws.ecs.task.revision"),
        (&task, "AvailabilityZone", "cloud.availability_zone"),
        (&container, "ContainerARN", "aws.ecs.container.arn"),
        (&container, "DockerId", "container.id"),
        (&container, "Name", "container.name"),
    ] {
        if let Some(v) = text(document, key) {
            a.push(KeyValue::new(attribute, v));
        }
    }
    if let Some(launch) = text(&task, "LaunchType") {
        // the convention's values are lower case (ec2, fargate)
        a.push(KeyValue::new("aws.ecs.launchtype", launch.to_ascii_lowercase()));
    }
    Ok(a)
}

async fn ec2_resource() -> Option<Vec<KeyValue>> {
    let client = aws_config::imds::Client::builder()
        .max_attempts(1)
        .connect_timeout(Duration::from_millis(500))
        .read_timeout(Duration::from_millis(500))
        .build();
    let document = client.get("/latest/dynamic/instance-identity/document").await.ok()?;
    let doc: serde_json::Value = serde_json::from_str(document.as_ref()).ok()?;
    let mut a = vec![KeyValue::new("cloud.provider", "aws"), KeyValue::new("cloud.platform", "aws_ec2")];
    for (key, attribute) in [
        ("accountId", "cloud.account.id"),
        ("region", "cloud.region"),
        ("availabilityZone", "cloud.availability_zone"),
        ("instanceId", "host.id"),
        ("instanceType", "host.type"),
        ("imageId", "host.image.id"),
    ] {
        if let Some(v) = doc.get(key).and_then(|v| v.as_str()) {
            a.push(KeyValue::new(attribute, v.to_string()));
        }
    }
    Some(a)
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`); `json` writes one JSON object per
/// line (for CloudWatch Logs Insights and the like): `--log-format` or `SQS_POLLER_LOG_FORMAT`.
pub fn init_logs(json: bool) {
    // aws-config logs every credentials load at info ("loaded base credentials"): those belong
    // at debug, unless RUST_LOG asks for aws_config by name
    let mut directives =
        std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "info".into());
    if !directives.contains("aws_config") {
        directives.push_str(",aws_config=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aws_config=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_as_w3c_says() {
        let sc = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert!(!parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap().is_sampled());
        // a later version may carry more fields
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    fn message(traceparent: Option<&str>, xray: Option<&str>) -> ReceivedMessage {
        ReceivedMessage {
            trace_header: xray.map(Into::into),
            traceparent: traceparent.map(Into::into),
            ..ReceivedMessage::for_test("m")
        }
    }

    #[test]
    fn the_producer_is_the_traceparent_else_the_xray_header() {
        let xray = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let w3c = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = producer_context(&message(None, Some(xray))).unwrap();
        assert_eq!(sc.trace_id().to_string(), "5759e988bd862e3fe1be46a994272793");
        assert_eq!(sc.span_id().to_string(), "53995c3f42cd8ad8");
        assert!(sc.is_sampled());
        let sc = producer_context(&message(Some(w3c), Some(xray))).unwrap();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // a broken traceparent falls back to the X-Ray header; an X-Ray root without a parent
        // names no span to link to
        assert!(producer_context(&message(Some("nonsense"), Some(xray))).is_some());
        assert!(producer_context(&message(None, Some("Root=1-5759e988-bd862e3fe1be46a994272793"))).is_none());
        assert!(producer_context(&message(None, None)).is_none());
    }
}
