//! What an operator (the admin API) and the worker's health check can say to a running pipeline,
//! and what it shows them.
//!
//! - [`Control`]: paused by the operator, because the worker's health check fails, or because the
//!   target's circuit breaker is open. While
//!   either holds, pollers send no `ReceiveMessage` (in-flight batches finish and are settled as
//!   usual), so no receive count is spent while the worker is down.
//! - [`Status`]: live figures for `GET /pipelines` (pollers, in-flight messages, the last error).

use tokio::sync::watch;

/// Why a pipeline does not receive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pause {
    /// `POST /pipelines/{name}/pause`, until `/resume`.
    pub by_operator: bool,
    /// `target.health_url` does not answer 2xx (or has not answered yet).
    pub by_health: bool,
    /// The target's circuit breaker is open ([`crate::dispatch::breaker`]; half-open receives).
    pub by_breaker: bool,
}

impl Pause {
    pub fn paused(self) -> bool {
        self.by_operator || self.by_health || self.by_breaker
    }
}

/// The pause switches of one pipeline.
pub struct Control {
    state: watch::Sender<Pause>,
    gauge: metrics::Gauge,
}

impl Control {
    /// `health_gated`: the pipeline has a health check, and waits for its first pass.
    pub fn new(health_gated: bool, gauge: metrics::Gauge) -> Self {
        let pause = Pause { by_operator: false, by_health: health_gated, by_breaker: false };
        gauge.set(if pause.paused() { 1.0 } else { 0.0 });
        Control { state: watch::Sender::new(pause), gauge }
    }

    pub fn pause(&self) -> Pause {
        *self.state.borrow()
    }

    fn update(&self, f: impl FnOnce(&mut Pause)) -> Pause {
        self.state.send_modify(f);
        let now = self.pause();
        self.gauge.set(if now.paused() { 1.0 } else { 0.0 });
        now
    }

    /// The operator pauses (`true`) or resumes (`false`); returns the state after.
    pub fn set_operator_pause(&self, paused: bool) -> Pause {
        self.update(|p| p.by_operator = paused)
    }

    /// The health check failed (`true`) or passed (`false`); returns whether this changed it.
    pub fn set_health_failing(&self, failing: bool) -> bool {
        let before = self.pause().by_health;
        self.update(|p| p.by_health = failing);
        before != failing
    }

    /// The circuit breaker opened (`true`) or closed (`false`).
    pub fn set_breaker_open(&self, open: bool) {
        self.update(|p| p.by_breaker = open);
    }

    /// Returns at once when not paused, else when resumed.
    pub async fn until_running(&self) {
        let mut rx = self.state.subscribe();
        // the sender lives as long as self: wait_for only fails if it is dropped
        let _ = rx.wait_for(|p| !p.paused()).await;
    }
}

pub use crate::status::Status;

/// The most of a health check's answer that is read.
const HEALTH_BODY_MAX: usize = 64 * 1024;

/// How often the health check runs, and how long one may take.
pub const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Checks `url` every [`HEALTH_INTERVAL`] until `stop`: a 2xx answer within the interval passes,
/// anything else (an error status, no connection, no answer in time) fails. Each change pauses
/// or resumes the pipeline's pollers and is logged.
pub async fn watch_health(
    url: String,
    control: std::sync::Arc<Control>,
    pipeline: String,
    stop: tokio_util::sync::CancellationToken,
) {
    use http_body_util::{BodyExt, Empty};
    // through the environment's egress proxy, as the target's own requests go
    let connector = match crate::net::https_connector(None, None) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(pipeline = %pipeline, %url, error = %e, "cannot set up the health check's client; the pipeline stays paused");
            return;
        }
    };
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        tracing::error!(pipeline = %pipeline, %url, "target.health_url is not a URI; the pipeline stays paused");
        return;
    };
    // an http:// health URL through a proxy with credentials carries them on each request
    let proxy_auth = crate::net::proxy::forward_authorization(&uri);
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let check = async {
            let mut request = hyper::Request::get(uri.clone());
            if let Some(auth) = &proxy_auth {
                request = request.header(hyper::header::PROXY_AUTHORIZATION, auth);
            }
            let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            // read the body so the connection can be kept (at most 64 KiB: a health check's
            // answer is small, and a worker that streams one is not read into memory)
            let _ = http_body_util::Limited::new(response.into_body(), HEALTH_BODY_MAX).collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {status}"))
            }
        };
        let outcome = match tokio::time::timeout(HEALTH_INTERVAL, check).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", HEALTH_INTERVAL.as_millis())),
        };
        let failing = outcome.is_err();
        if control.set_health_failing(failing) {
            match outcome {
                Err(reason) => {
                    tracing::warn!(pipeline = %pipeline, %url, %reason, "the target's health check fails: pollers paused")
                }
                Ok(()) => {
                    tracing::info!(pipeline = %pipeline, %url, "the target's health check passes: pollers resume")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paused_by_either_until_both_clear() {
        let c = Control::new(true, metrics::Gauge::noop());
        assert!(c.pause().paused(), "a health-gated pipeline waits for its first check");
        assert!(c.set_health_failing(false));
        assert!(!c.set_health_failing(false), "no change");
        c.until_running().await;
        c.set_operator_pause(true);
        c.set_health_failing(true);
        c.set_operator_pause(false);
        assert!(c.pause().paused(), "still paused by the health check");
        let waiting = tokio::spawn({
            let c = std::sync::Arc::new(c);
            let c2 = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                c2.set_health_failing(false);
            });
            async move { c.until_running().await }
        });
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting).await.unwrap().unwrap();
    }
}
