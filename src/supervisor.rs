//! The running pipelines: started from the configuration, and changed by a reload (SIGHUP)
//! without stopping the service.
//!
//! A reload reads and validates the file again. A file with a problem is rejected with the same
//! key-path messages as `check`, counted (`sqs_poller_config_reloads_total{outcome="error"}`),
//! and the running configuration keeps going. Otherwise each pipeline is compared with the one
//! running under its name: an unchanged pipeline is not touched; a changed one is drained (its
//! own shutdown: receives stop, batches finish or are released, leases settle) and then started
//! again with the new settings; a removed one is drained; an added one starts. `[aws]`,
//! `[server]` and `[shutdown]` take effect at the next restart (logged).
//!
//! Each pipeline runs under a [`Shutdown::child`] of the service's: SIGTERM drains them all; a
//! reload drains one. A pipeline still draining when a later reload names it again (removed,
//! then added back; changed twice) is started with the newest settings once its drain ends —
//! never mistaken for one that runs.
//!
//! A pipeline task that panics is a bug: the service drains the others and exits with code 1,
//! naming the pipeline, so that the orchestrator restarts it — never a queue that silently
//! stops being consumed while `/readyz` keeps its last answer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::admin::{Entry, Registry};
use crate::config::{self, Config, PipelineConfig};
use crate::control::Control;
use crate::dispatch::Target;
use crate::metrics::{self, PipelineMetrics};
use crate::pipeline::{self, PipelineParts};
use crate::server::Health;
use crate::shutdown::Shutdown;
use crate::sqs::{self, Reachability, SqsError};

/// Where reload requests come from: the configuration file, and a message per SIGHUP.
pub struct Reloads {
    pub path: PathBuf,
    pub requests: mpsc::UnboundedReceiver<()>,
}

/// The AWS clients every pipeline shares.
pub struct Clients {
    /// The AWS edge: credentials, clock, endpoints (SigV4-signed `http` targets use it).
    pub aws: crate::aws::Aws,
    pub sqs: sqs::SqsClients,
    pub lambda: aws_sdk_lambda::Client,
    /// Large payloads.
    pub s3: Arc<crate::aws::s3::S3>,
    /// `[telemetry]`, when on.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// `[fleet]`, when on: budgets shared with the other instances through Redis.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

impl Clients {
    /// Every client from the one AWS edge.
    ///
    /// # Errors
    /// When the SQS endpoint cannot be resolved or TLS cannot be set up.
    pub async fn new(aws: crate::aws::Aws) -> anyhow::Result<Clients> {
        Ok(Clients {
            sqs: sqs::SqsClients::new(&aws).await?,
            lambda: aws.lambda_client(),
            s3: Arc::new(crate::aws::s3::S3::new(&aws)),
            telemetry: None,
            fleet: None,
            aws,
        })
    }
}

struct Running {
    config: PipelineConfig,
    shutdown: Shutdown,
    /// Started by a reload: an unusable queue stops only this pipeline, not the service.
    from_reload: bool,
}

pub struct Supervisor {
    /// The configuration last loaded.
    config: Config,
    clients: Clients,
    health: Health,
    /// What the admin API sees.
    registry: Registry,
    shutdown: Shutdown,
    running: HashMap<String, Running>,
    /// New settings for pipelines whose previous run is still draining.
    waiting: HashMap<String, PipelineConfig>,
    tasks: JoinSet<(String, Result<(), SqsError>)>,
    /// The pipeline each task runs, to name a task that panicked.
    task_names: HashMap<tokio::task::Id, String>,
    /// Of the file last loaded, for `sqs_poller_config_info`.
    hash: Option<String>,
    /// The shared pools (`[pools.NAME]`) by name, with the settings each was made with: a pipeline
    /// started after a pool's settings changed gets a new pool (those still on the old one are
    /// restarted by the same reload, their configuration having changed with it).
    pools: HashMap<String, (crate::config::PoolConfig, Arc<crate::dispatch::concurrency::Slots>)>,
}

/// Whether two resolved pipeline configurations are the same. Every part is plain data (the
/// filter's compiled patterns included) whose `Debug` rendering follows its declaration order.
fn same(a: &PipelineConfig, b: &PipelineConfig) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

impl Supervisor {
    pub fn new(
        config: Config,
        clients: Clients,
        health: Health,
        registry: Registry,
        shutdown: Shutdown,
        hash: Option<String>,
    ) -> Self {
        if let Some(h) = &hash {
            metrics::config_loaded(h, None);
        }
        Supervisor {
            config,
            clients,
            health,
            registry,
            shutdown,
            running: HashMap::new(),
            pools: HashMap::new(),
            waiting: HashMap::new(),
            tasks: JoinSet::new(),
            task_names: HashMap::new(),
            hash,
        }
    }

    /// Starts the pipelines of the configuration (their metrics exist from here on).
    ///
    /// # Errors
    /// When a target cannot start (a runtime-api port); the pipelines started are drained first.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for p in self.config.pipelines.clone() {
            if let Err(e) = self.start(&p, false).await {
                self.shutdown.begin(self.config.grace_period);
                self.wait_all().await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Runs the pipelines [`Supervisor::start_all`] started until the service's shutdown has
    /// drained them all, applying reloads.
    ///
    /// # Errors
    /// When a pipeline of the starting configuration cannot use its queue (it does not exist,
    /// access is denied); the other pipelines are drained first.
    pub async fn run(mut self, mut reloads: Option<Reloads>) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        loop {
            tokio::select! {
                Some(path) = next_reload(&mut reloads), if !self.shutdown.drain.is_cancelled() => self.reload(&path).await,
                Some(joined) = self.tasks.join_next_with_id() => {
                    let (name, result) = match joined {
                        Ok((id, r)) => {
                            self.task_names.remove(&id);
                            r
                        }
                        Err(e) => {
                            let name = self.task_names.remove(&e.id()).unwrap_or_default();
                            errors.push(self.panicked(&name, &e));
                            continue;
                        }
                    };
                    if let Some(error) = self.finished(&name, result).await {
                        errors.push(error);
                    }
                }
                () = self.shutdown.drain.cancelled(), if self.tasks.is_empty() => break,
            }
            if self.tasks.is_empty() && self.shutdown.drain.is_cancelled() {
                break;
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(errors.join("; ")))
        }
    }

    async fn wait_all(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// A pipeline task panicked: its entry goes, the service drains the others and exits with an
    /// error that names it.
    fn panicked(&mut self, name: &str, e: &tokio::task::JoinError) -> String {
        let what = if e.is_panic() { "panicked" } else { "was cancelled" };
        let message = format!(
            "pipeline {name}: its task {what} (a bug; please report it); stopping the service so that it is restarted"
        );
        tracing::error!(pipeline = %name, error = %e, "{message}");
        self.running.remove(name);
        self.waiting.remove(name);
        self.health.forget(name);
        self.registry.remove(name);
        self.shutdown.begin(self.config.grace_period);
        message
    }

    /// The fleet's slots and rate of pipeline `p` (`target.fleet_max_concurrency`,
    /// `fleet_rate_per_sec`), when `[fleet]` runs.
    fn fleet_parts(&self, p: &PipelineConfig) -> crate::fleet::PipelineFleet {
        let Some(fleet) = &self.clients.fleet else {
            let wants = p.target.fleet_max_concurrency.is_some()
                || p.target.fleet_rate_per_sec.is_some()
                || p.idempotency.is_some();
            if wants {
                tracing::warn!(pipeline = %p.name, "target.fleet_max_concurrency, fleet_rate_per_sec and [pipelines.idempotency] need [fleet], which a reload does not start: this pipeline runs without them until the next restart");
            }
            return crate::fleet::PipelineFleet::default();
        };
        crate::fleet::PipelineFleet::of(fleet, p)
    }
    /// Starts one pipeline under a child of the service's shutdown.
    async fn start(&mut self, p: &PipelineConfig, from_reload: bool) -> anyhow::Result<()> {
        let ready = Arc::new(AtomicBool::new(false));
        self.health.track(&p.name, ready.clone());
        let reachability = Arc::new(Reachability::new(&p.name, ready.clone()));
        let m = PipelineMetrics::new(&p.name, p.pollers.min, p.pollers.max, p.target.max_concurrency);
        let control = Arc::new(Control::new(p.target.health_url.is_some(), m.paused.clone()));
        // an operator's pause outlives a restart by a reload
        if self.registry.get(&p.name).is_some_and(|e| e.control.pause().by_operator) {
            control.set_operator_pause(true);
        }
        let target =
            Target::new(&p.target, &self.clients.lambda, &m.dispatch, &self.clients.aws.region, &self.clients.aws)
                .await
                .with_context(|| format!("pipeline {}: cannot start its target", p.name))?;
        let shutdown = self.shutdown.child();
        let pool = p.target.pool.as_ref().map(|member| self.pool_slots(member));
        let fleet = self.fleet_parts(p);
        let parts = PipelineParts {
            pool,
            fleet,
            telemetry: self.clients.telemetry.as_ref().map(|t| t.pipeline(&p.name, &p.queue_url)),
            config: p.clone(),
            queue: Arc::new(
                sqs::SqsQueue::new(&self.clients.sqs, p.queue_url.clone(), m.sqs.clone())
                    .reporting_to(reachability.clone()),
            ),
            dead_letter: p.dead_letter.as_ref().map(|d| {
                Arc::new(sqs::SqsQueue::new(&self.clients.sqs, d.queue_url.clone(), m.sqs.clone()))
                    as Arc<dyn sqs::Queue>
            }),
            target,
            metrics: m.clone(),
            shutdown: shutdown.clone(),
            ready: reachability,
            control: control.clone(),
            payloads: p
                .large_payloads
                .as_ref()
                .map(|l| Arc::new(crate::payload::PayloadStore::new(self.clients.s3.clone(), l, &m.payloads))),
        };
        self.registry.insert(
            &p.name,
            Entry {
                queue_url: p.queue_url.clone(),
                control,
                status: parts.metrics.status.clone(),
                ready,
                draining: shutdown.drain.clone(),
            },
        );
        let handle = self.spawn_pipeline(p.name.clone(), parts);
        self.task_names.insert(handle.id(), p.name.clone());
        self.running.insert(p.name.clone(), Running { config: p.clone(), shutdown, from_reload });
        Ok(())
    }

    /// The slots of the shared pool `member` takes part in: made by its first member, made anew
    /// when a reload changed the pool's settings.
    fn pool_slots(&mut self, member: &crate::config::PoolMembership) -> Arc<crate::dispatch::concurrency::Slots> {
        let new_slots = || {
            Arc::new(crate::dispatch::concurrency::Slots::new(
                member.settings.max_concurrency,
                member.settings.adaptive,
            ))
        };
        let (settings, slots) =
            self.pools.entry(member.name.clone()).or_insert_with(|| (member.settings.clone(), new_slots()));
        if *settings != member.settings {
            *settings = member.settings.clone();
            *slots = new_slots();
        }
        slots.clone()
    }

    /// Runs the pipeline of `parts` in the supervisor's task set (its handle names the task).
    fn spawn_pipeline(&mut self, name: String, parts: PipelineParts) -> tokio::task::AbortHandle {
        #[cfg(debug_assertions)]
        let panic_for_test = std::env::var("SQS_POLLER_TEST_PANIC_PIPELINE").is_ok_and(|n| n == name);
        self.tasks.spawn(async move {
            // a fault-injection point for tests of the panic path, in debug builds only
            #[cfg(debug_assertions)]
            if panic_for_test {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                panic!("SQS_POLLER_TEST_PANIC_PIPELINE names this pipeline");
            }
            (name, pipeline::run(parts).await)
        })
    }

    /// A pipeline ended: its successor starts, or it is gone. Returns the error that stops the
    /// service, if any.
    async fn finished(&mut self, name: &str, result: Result<(), SqsError>) -> Option<String> {
        let run = self.running.remove(name);
        let mut fatal = None;
        if let Err(e) = result {
            let url = run.as_ref().map_or("", |r| r.config.queue_url.as_str());
            let message = format!("pipeline {name}: queue {url}: {e}");
            if run.as_ref().is_some_and(|r| r.from_reload) {
                tracing::error!(pipeline = %name, error = %message, "a pipeline added or changed by a reload cannot use its queue; it stopped, the others keep going");
                metrics::config_reload(false);
            } else {
                // one unusable queue is a configuration problem: stop the others cleanly too
                self.shutdown.begin(self.config.grace_period);
                fatal = Some(message);
            }
        }
        match self.waiting.remove(name) {
            Some(next) if !self.shutdown.drain.is_cancelled() => {
                tracing::info!(pipeline = %name, "pipeline drained; starting it with its new settings");
                if let Err(e) = self.start(&next, true).await {
                    tracing::error!(pipeline = %name, error = %format!("{e:#}"), "the pipeline could not start with its new settings");
                    metrics::config_reload(false);
                }
            }
            _ if !self.config.pipelines.iter().any(|p| p.name == name) => {
                self.health.forget(name);
                self.registry.remove(name);
            }
            _ => {}
        }
        fatal
    }

    /// Reads the file again and applies what changed.
    async fn reload(&mut self, path: &std::path::Path) {
        crate::notify::notify("RELOADING=1");
        self.apply_reload(path).await;
        crate::notify::notify("READY=1");
    }

    async fn apply_reload(&mut self, path: &std::path::Path) {
        let new = match config::load(path) {
            Ok(c) => c,
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!("{line}");
                }
                tracing::error!(file = %path.display(), "configuration reload rejected; the running configuration keeps going");
                metrics::config_reload(false);
                return;
            }
        };
        if new.listen != self.config.listen
            || new.grace_period != self.config.grace_period
            || format!("{:?}", new.aws) != format!("{:?}", self.config.aws)
            || new.telemetry != self.config.telemetry
            || new.fleet != self.config.fleet
        {
            tracing::warn!(
                "[aws], [server], [shutdown], [telemetry] and [fleet] changes take effect at the next restart"
            );
        }
        let [added, changed, removed, unchanged] = self.apply_pipelines(&new).await;
        self.config = new;
        let hash = config::file_hash(path);
        if let Some(h) = &hash {
            metrics::config_loaded(h, self.hash.as_deref());
        }
        self.hash = hash;
        metrics::config_reload(true);
        tracing::info!(
            added,
            changed,
            removed,
            unchanged,
            hash = self.hash.as_deref().unwrap_or(""),
            "configuration reloaded"
        );
    }

    /// Drains the pipelines the reload removed or changed (a changed one starts again with its
    /// new settings once drained) and starts the ones it added; returns how many were added,
    /// changed, removed and left as they were.
    async fn apply_pipelines(&mut self, new: &Config) -> [usize; 4] {
        let grace = self.config.grace_period;
        let (mut added, mut changed, mut removed, mut unchanged) = (0, 0, 0, 0);
        for (name, run) in &self.running {
            if !new.pipelines.iter().any(|p| &p.name == name) {
                tracing::info!(pipeline = %name, "pipeline removed by the reload: draining it");
                run.shutdown.begin(grace);
                self.waiting.remove(name);
                removed += 1;
            }
        }
        for p in &new.pipelines {
            match self.running.get(&p.name) {
                Some(run)
                    if same(&run.config, p)
                        && !self.waiting.contains_key(&p.name)
                        && !run.shutdown.drain.is_cancelled() =>
                {
                    unchanged += 1;
                }
                // still draining from an earlier reload that removed it: it starts again once drained
                Some(run) if run.shutdown.drain.is_cancelled() => {
                    tracing::info!(pipeline = %p.name, "pipeline named again by the reload while it drains: it starts with these settings once drained");
                    self.waiting.insert(p.name.clone(), p.clone());
                    changed += 1;
                }
                Some(run) => {
                    tracing::info!(pipeline = %p.name, "pipeline changed by the reload: draining it to start it again with the new settings");
                    run.shutdown.begin(grace);
                    self.waiting.insert(p.name.clone(), p.clone());
                    changed += 1;
                }
                None => {
                    added += 1;
                    if let Err(e) = self.start(p, true).await {
                        tracing::error!(pipeline = %p.name, error = %format!("{e:#}"), "a pipeline added by the reload could not start");
                    }
                }
            }
        }
        [added, changed, removed, unchanged]
    }
}

async fn next_reload(reloads: &mut Option<Reloads>) -> Option<PathBuf> {
    match reloads {
        Some(r) => r.requests.recv().await.map(|()| r.path.clone()),
        None => std::future::pending().await,
    }
}
