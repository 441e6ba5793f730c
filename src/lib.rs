//! sqs-poller: Lambda's SQS event source mapping as a self-hosted sidecar.
//!
//! # Layout: the path of one message
//!
//! 1. [`config`] — the TOML file, `${VAR}` interpolation, validation into typed [`config::Config`].
//! 2. [`poller`] — a fleet of long-polling `ReceiveMessage` loops per pipeline, sized by the pure
//!    [`poller::scaling::Autoscaler`]; pollers pause while the target is saturated. Beside it
//!    [`poller::tasks`] works out the task count the service needs (`sqs_poller_desired_tasks`).
//! 3. [`event`] — each received message becomes its Lambda SQS record, serialized once
//!    ([`payload`] first fetches a large payload from S3 when the body is an Extended Client
//!    pointer).
//! 4. [`filter`] — EventBridge patterns on the record (only the parts they name are parsed);
//!    rejected messages are deleted (or kept).
//! 5. [`batch`] — records are cut into batches by count, window and event bytes; FIFO groups run
//!    one batch at a time, and on standard and fair queues a group cap keeps one tenant from
//!    taking every slot ([`batch::GroupCap`]).
//! 6. [`dispatch`] — one call of the target per batch (`http`, `command`, `lambda`, `runtime-api`), read with Lambda's
//!    `batchItemFailures` rules ([`dispatch::response`]); at most the concurrency limit at once
//!    ([`dispatch::concurrency`]: fixed, or adaptive to the worker's latency and pushback; a
//!    pipeline's own, or a pool's that pipelines share by priority and weight), held
//!    under lease while the target's circuit breaker is open ([`dispatch::breaker`]).
//! 7. [`ack`] — the pure plan (delete / retry with backoff / dead-letter) and its execution.
//! 8. [`sqs`] — the SQS queue every stage talks through, counting each request; a receive
//!    returns the crate's own [`aws::SqsMessage`].
//! 9. [`aws`] — the AWS edge at the bottom of the house: one credentials cache, one
//!    skew-corrected clock, endpoints and errors as the SDK has them; the SQS hot calls
//!    (receive, delete, visibility) over AWS JSON ([`aws::sqs_json`], signed by [`aws::sigv4`]
//!    with the signing key kept for the day), the rest through aws-sdk-sqs, S3 through
//!    aws-sdk-s3. Below it only [`limits`] (SQS's limits) and [`net`] (TLS, error chains, the connection loop every server of the service shares).
//!
//! Around them: [`pipeline`] wires the stages of one queue together, [`lease`] keeps every
//! received message invisible until it is settled, [`metrics`] names every metric and builds
//! each stage its own handles ([`metrics::PipelineMetrics`]: `PollerMetrics`, `LeaseMetrics`, ...),
//! [`status`] holds the live figures the admin API shows (written by the stages), [`server`]
//! serves `/metrics`, `/healthz` and `/readyz`, [`admin`] the admin API over [`control`] (pause,
//! resume, the worker's health check), [`trace`] carries X-Ray/W3C trace context to the worker, [`telemetry`] records OpenTelemetry spans of receives and batches (linked to their producers) and exports them over OTLP,
//! [`fleet`] shares a budget across the service's instances through Redis (slots, a rate, an
//! idempotency window; a local share while Redis is away), [`shutdown`] drains in order on SIGTERM, [`supervisor`] starts the pipelines and applies
//! reloads (SIGHUP), [`notify`] tells systemd, [`descriptors`] checks the open-file limit a fleet needs, [`check`] shows the resolved configuration (`sqs-poller check`), and [`redrive`] moves dead-lettered messages back. `docs/src/design.md` walks the message lifecycle and the guarantees.
//!
//! Imports keep to layers (`LAYERS` in `tests/offline/structure.rs`, which fails on one against them):
//! the bottom, the message's types, the stages — each importing what it hands messages on to,
//! never an earlier one — then the service around them. `sim` (the in-memory SQS of the
//! simulation tests) and `fleet::memory` (the fleet's store in memory) are built only for tests,
//! behind the `test-util` feature.

pub mod ack;
pub mod admin;
pub mod aws;
pub mod backoff;
pub mod batch;
pub mod check;
pub mod config;
pub mod control;
pub mod descriptors;
pub mod dispatch;
pub mod dlq;
pub mod event;
pub mod filter;
pub mod fleet;
#[cfg(any(test, feature = "test-util"))]
pub mod fuzz;
pub mod hop;
pub mod import_esm;
pub mod intake;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod payload;
pub mod pipeline;
pub mod poller;
pub mod redrive;
pub mod server;
pub mod shutdown;
#[cfg(any(test, feature = "test-util"))]
#[cfg(any(test, feature = "test-util"))]
pub mod sim;
pub mod sqs;
pub mod status;
pub mod supervisor;
pub mod telemetry;
pub mod trace;

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// Runs every pipeline of `config` until `shutdown` has drained them; `reloads` (the file and
/// SIGHUP requests) lets the pipelines change while the service runs ([`supervisor`]).
///
/// # Errors
/// When the listen address cannot be bound, no AWS region is configured, or a queue cannot be
/// used at all (it does not exist, access is denied).
pub async fn run(config: Config, shutdown: Shutdown, reloads: Option<supervisor::Reloads>) -> anyhow::Result<()> {
    let prometheus = metrics::install()?;
    let listener = server::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.listen))?;
    // the bound address, which differs from the configured one for port 0
    let listen = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(%listen, "serving /metrics, /healthz and /readyz");
    let mut clients = supervisor::Clients::new(aws::Aws::load(&config.aws).await?).await?;
    if let Some(t) = &config.telemetry {
        clients.telemetry = Some(std::sync::Arc::new(telemetry::Telemetry::start(t).await?));
    }
    if let Some(f) = &config.fleet {
        let fleet = fleet::Fleet::new(&f.redis_url.0, f.slot_ttl)?;
        tokio::spawn(fleet.clone().keep_alive(shutdown.abandon.clone()));
        clients.fleet = Some(fleet);
    }
    let telemetry = clients.telemetry.clone();
    let health = server::Health::new(shutdown.drain.clone());
    let registry = admin::Registry::default();
    let admin = bind_admin(config.admin_listen, config.admin_token.clone()).await?;
    let hash = reloads.as_ref().and_then(|r| config::file_hash(&r.path));
    let pipelines = config.pipelines.len();
    let mut supervisor =
        supervisor::Supervisor::new(config, clients, health.clone(), registry.clone(), shutdown.clone(), hash);
    // the pipelines' series exist before the first scrape is answered
    supervisor.start_all().await?;
    let service = ServiceTasks::start(listener, admin, prometheus, health, registry, &shutdown);
    tracing::info!(%listen, pipelines, "sqs-poller started");
    let result = supervisor.run(reloads).await;
    service.stop().await;
    // the last batches' spans go out before the process ends
    if let Some(t) = telemetry {
        t.shutdown(Duration::from_secs(5)).await;
    }
    result
}

/// The admin API's listener and who may use it, when `server.admin_listen` is set.
async fn bind_admin(
    addr: Option<std::net::SocketAddr>,
    token: Option<config::Secret>,
) -> anyhow::Result<Option<(tokio::net::TcpListener, admin::Gate)>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = server::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (server.admin_listen; \"\" turns the admin API off)"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(listen = %bound, "admin API: GET /pipelines, POST /pipelines/NAME/pause, POST /pipelines/NAME/resume");
    Ok(Some((listener, admin::Gate::new(token, addr))))
}

/// The service's own tasks — the metrics server, the admin API, the metrics' upkeep, the systemd
/// notifier — on one tracker under one token, which is cancelled once the pipelines have drained
/// (the servers answer until then: `/readyz` says "draining").
struct ServiceTasks {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl ServiceTasks {
    fn start(
        listener: tokio::net::TcpListener,
        admin: Option<(tokio::net::TcpListener, admin::Gate)>,
        prometheus: metrics_exporter_prometheus::PrometheusHandle,
        health: server::Health,
        registry: admin::Registry,
        shutdown: &Shutdown,
    ) -> ServiceTasks {
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        tasks.spawn(server::serve(listener, prometheus.clone(), health.clone(), stop.clone()));
        if let Some((l, gate)) = admin {
            tasks.spawn(admin::serve(l, gate, registry, stop.clone()));
        }
        tasks.spawn(metrics_upkeep(prometheus, stop.clone()));
        tasks.spawn(notify_systemd(health, shutdown.drain.clone(), stop.clone()));
        tasks.close();
        ServiceTasks { tasks, stop }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// The Prometheus recorder's upkeep (its histograms' buckets age out) every 5 s until `stop`.
async fn metrics_upkeep(prometheus: metrics_exporter_prometheus::PrometheusHandle, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => prometheus.run_upkeep(),
        }
    }
}

/// systemd (Type=notify): ready once every pipeline has found its queue; stopping at the drain.
async fn notify_systemd(health: server::Health, drain: CancellationToken, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = drain.cancelled() => break,
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if health.all_ready() {
            notify::notify("READY=1");
            break;
        }
    }
    tokio::select! {
        () = drain.cancelled() => {
            notify::notify("STOPPING=1");
        }
        () = stop.cancelled() => {}
    }
}
