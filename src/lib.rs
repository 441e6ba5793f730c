//! sqs-poller: Lambda's SQS event source mapping as a self-hosted sidecar.
//!
//! # Layout: the path of one message
//!
//! 1. [`config`] — the TOML file, `${VAR}` interpolation, validation into typed [`config::Config`].
//! 2. [`poller`] — a fleet of long-polling `ReceiveMessage` loops per pipeline, sized by the pure
//!    [`poller::scaling::Autoscaler`]; pollers pause while the target is saturated.
//! 3. [`event`] — each received message becomes its Lambda SQS record, serialized once.
//! 4. [`filter`] — EventBridge patterns on the record; rejected messages are deleted (or kept).
//! 5. [`batch`] — records are cut into batches by count, window and event bytes.
//! 6. [`dispatch`] — one call of the target per batch (`http`, `command`, `lambda`, `runtime-api`), read with Lambda's
//!    `batchItemFailures` rules ([`dispatch::response`]).
//! 7. [`ack`] — the pure plan (delete / retry with backoff / dead-letter) and its execution.
//! 8. [`sqs`] — the SQS edge every stage talks through, counting each request.
//!
//! Around them: [`pipeline`] wires the stages of one queue together, [`metrics`] names every
//! metric, [`server`] serves `/metrics`, `/healthz` and `/readyz`, and [`shutdown`] drains in
//! order on SIGTERM, and [`redrive`] moves dead-lettered messages back. `docs/design.md` walks the message lifecycle and the guarantees.

pub mod ack;
pub mod backoff;
pub mod batch;
pub mod config;
pub mod dispatch;
pub mod event;
pub mod filter;
pub mod intake;
pub mod lease;
pub mod metrics;
pub mod pipeline;
pub mod poller;
pub mod redrive;
pub mod server;
pub mod shutdown;
pub mod sim;
pub mod sqs;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::PipelineParts;
use crate::shutdown::Shutdown;

/// Runs every pipeline of `config` until `shutdown` has drained them.
///
/// # Errors
/// When the listen address cannot be bound, no AWS region is configured, or a queue cannot be
/// used at all (it does not exist, access is denied).
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let prometheus = metrics::install()?;
    let listener = server::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.listen))?;
    // the bound address, which differs from the configured one for port 0
    let listen = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(%listen, "serving /metrics, /healthz and /readyz");
    let shared = sqs::shared_config(&config.aws).await?;
    let client = sqs::client(&config.aws, &shared);
    let lambda = dispatch::lambda::client(&config.aws, &shared);

    let mut health = server::Health { pipelines: Vec::new(), draining: shutdown.drain.clone() };
    let mut pipelines = Vec::new();
    for p in &config.pipelines {
        let ready = Arc::new(AtomicBool::new(false));
        health.pipelines.push((p.name.clone(), ready.clone()));
        let reachability = Arc::new(sqs::Reachability::new(&p.name, ready));
        let m = metrics::PipelineMetrics::new(&p.name, p.pollers.min, p.pollers.max, p.target.max_concurrency);
        let region = shared.region().map_or_else(|| "us-east-1".to_string(), ToString::to_string);
        let target = dispatch::Target::new(&p.target, &lambda, &m, &region)
            .await
            .with_context(|| format!("pipeline {}: cannot start its runtime-api target", p.name))?;
        pipelines.push(PipelineParts {
            config: p.clone(),
            queue: Arc::new(
                sqs::SqsQueue::new(client.clone(), p.queue_url.clone(), m.clone()).reporting_to(reachability.clone()),
            ),
            dead_letter: p.dead_letter.as_ref().map(|d| {
                Arc::new(sqs::SqsQueue::new(client.clone(), d.queue_url.clone(), m.clone())) as Arc<dyn sqs::Queue>
            }),
            target,
            metrics: m,
            shutdown: shutdown.clone(),
            ready: reachability,
        });
    }

    let stop_server = CancellationToken::new();
    let server = tokio::spawn(server::serve(listener, prometheus.clone(), health, stop_server.clone()));
    let upkeep = tokio::spawn({
        let stop = stop_server.clone();
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => prometheus.run_upkeep(),
                }
            }
        }
    });
    tracing::info!(%listen, pipelines = pipelines.len(), "sqs-poller started");

    let grace = config.grace_period;
    let results = futures_util::future::join_all(pipelines.into_iter().map(|parts| {
        let shutdown = shutdown.clone();
        let (name, queue_url) = (parts.config.name.clone(), parts.config.queue_url.clone());
        async move {
            let r = pipeline::run(parts).await;
            if r.is_err() {
                // one unusable queue is a configuration problem: stop the others cleanly too
                shutdown.begin(grace);
            }
            r.map_err(|e| anyhow::anyhow!("pipeline {name}: queue {queue_url}: {e}"))
        }
    }))
    .await;
    stop_server.cancel();
    for (what, task) in [("metrics server", server), ("metrics upkeep", upkeep)] {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "the {what} task failed");
        }
    }
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}
