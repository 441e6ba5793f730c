//! The task count the service needs: `sqs_poller_desired_tasks`, the signal for scaling the
//! number of tasks (ECS service autoscaling, KEDA) rather than the pollers inside one.
//!
//! Each depth sample, every task works it out from what SQS and its own batches show:
//!
//! ```text
//! capacity  C = concurrency limit × messages per batch ÷ seconds per batch   (one task, measured)
//! done      μ = this task's settled messages/s × (queue in flight ÷ this task's leases)
//! arrival   λ = μ + growth of (visible + delayed) per second, over the last minute
//! desired     = ceil((λ + visible ÷ drain_secs) ÷ (C × utilization)),  at least 1
//! ```
//!
//! `μ` is Little's law turned around: a message is in flight (SQS's `NotVisible`) for as long
//! in any task as in this one, so the fleet settles messages as many times faster than this task
//! as it holds more of them. A task that holds none takes its own rate (none) — what the
//! queue's growth then shows is all arrival. `desired` never asks for more tasks than the fleet's
//! budget lets work: with `target.fleet_max_concurrency`, `ceil(fleet limit ÷ this task's
//! limit)`; with `target.fleet_rate_per_sec`, the tasks that rate needs. Until its first batch a
//! task does not know its capacity and says 1 (KEDA and ECS keep their minimum).
//!
//! With `desired_tasks.cloudwatch_emf`, each sample is also written to stdout as one line of
//! CloudWatch's embedded metric format (namespace `sqs-poller`, dimension `Pipeline`, metric
//! `DesiredTasks`): the `awslogs` log driver of an ECS task carries it to CloudWatch, where
//! service autoscaling can track it without an agent (`deploy/ecs/cloudformation.yml`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How far back the queue's growth is measured.
pub const GROWTH_WINDOW: Duration = Duration::from_secs(60);
/// Weight of the newest measurement in the capacity and rate averages.
const SMOOTHING: f64 = 0.3;

/// `[pipelines.desired_tasks]`, with the fleet's limits that cap what more tasks can do.
#[derive(Debug, Clone)]
pub struct DemandSettings {
    /// The backlog should be gone within this long (`drain_secs`, 60 by default).
    pub drain: Duration,
    /// The share of its capacity a task should run at (`utilization`, 0.8 by default).
    pub utilization: f64,
    /// `target.rate_limit_per_sec`: one task never does more than this.
    pub task_rate_limit: Option<f64>,
    /// `target.fleet_max_concurrency`.
    pub fleet_max_concurrency: Option<usize>,
    /// `target.fleet_rate_per_sec`.
    pub fleet_rate: Option<f64>,
    /// `cloudwatch_emf`: the pipeline's name, to write each sample to stdout in CloudWatch's
    /// embedded metric format.
    pub emf_pipeline: Option<String>,
}

/// What one computation of the signal takes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    /// Messages visible in the queue now.
    pub visible: u64,
    /// Growth of the queue's visible and delayed messages, per second.
    pub growth_per_sec: f64,
    /// The fleet's messages settled per second (`μ`).
    pub done_per_sec: f64,
    /// One task's capacity in messages per second, once a batch has measured it.
    pub capacity_per_sec: Option<f64>,
    /// This task's concurrency limit now.
    pub limit: usize,
}

/// The tasks `d` asks for under `s`: at least 1.
pub fn desired_tasks(d: &Demand, s: &DemandSettings) -> u64 {
    let Some(capacity) = d.capacity_per_sec.filter(|c| *c > 0.0) else { return 1 };
    let capacity = s.task_rate_limit.map_or(capacity, |r| capacity.min(r));
    let arrival = (d.done_per_sec + d.growth_per_sec).max(0.0);
    let mut wanted = arrival + d.visible as f64 / s.drain.as_secs_f64().max(1.0);
    if let Some(rate) = s.fleet_rate {
        wanted = wanted.min(rate);
    }
    let tasks = (wanted / (capacity * s.utilization.clamp(0.01, 1.0))).ceil();
    let mut tasks = if tasks.is_finite() { tasks.max(1.0) as u64 } else { 1 };
    if let Some(fleet) = s.fleet_max_concurrency {
        tasks = tasks.min(fleet.div_ceil(d.limit.max(1)) as u64);
    }
    tasks.max(1)
}

/// The signal of one pipeline: batches and depth samples in, the gauge out.
pub struct TaskDemand {
    settings: DemandSettings,
    state: Mutex<Measured>,
    gauge: metrics::Gauge,
}

#[derive(Default)]
struct Measured {
    /// Batches finished since the last sample: messages, seconds, count, the limit last seen.
    batch_messages: u64,
    batch_secs: f64,
    batches: u64,
    limit: usize,
    capacity: Option<f64>,
    done: Option<f64>,
    /// (when, visible + delayed) of the samples within [`GROWTH_WINDOW`].
    depths: VecDeque<(Instant, u64)>,
    last_sample: Option<Instant>,
}

/// One depth sample, as SQS answered it.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

impl TaskDemand {
    pub fn new(settings: DemandSettings, gauge: metrics::Gauge) -> Self {
        gauge.set(1.0);
        TaskDemand { settings, state: Mutex::new(Measured::default()), gauge }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Measured> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A batch of `messages` held its slot for `took`, under a concurrency limit of `limit`.
    pub fn batch_done(&self, messages: usize, took: Duration, limit: usize) {
        let mut m = self.lock();
        m.batch_messages += messages as u64;
        m.batch_secs += took.as_secs_f64();
        m.batches += 1;
        m.limit = limit;
    }

    /// A depth sample at `now`, while this task holds `leased` messages: the signal again, also
    /// set on the gauge.
    pub fn sampled(&self, depth: QueueDepth, leased: usize, now: Instant) -> u64 {
        let demand = self.lock().demand(depth, leased, now);
        let tasks = desired_tasks(&demand, &self.settings);
        self.gauge.set(tasks as f64);
        if let Some(pipeline) = &self.settings.emf_pipeline {
            let line = emf_line(pipeline, tasks, std::time::SystemTime::now());
            // one write of one line: the log lines (stderr) and other pipelines' never split it
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), line.as_bytes());
        }
        tasks
    }
}

/// One CloudWatch embedded-metric-format line (newline included) saying `pipeline` wants
/// `tasks` tasks at `at`.
pub fn emf_line(pipeline: &str, tasks: u64, at: std::time::SystemTime) -> String {
    let ms = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let line = serde_json::json!({
        "_aws": {
            "Timestamp": ms,
            "CloudWatchMetrics": [{
                "Namespace": "sqs-poller",
                "Dimensions": [["Pipeline"]],
                "Metrics": [{"Name": "DesiredTasks", "Unit": "Count"}],
            }],
        },
        "Pipeline": pipeline,
        "DesiredTasks": tasks,
    });
    format!("{line}\n")
}

impl Measured {
    fn demand(&mut self, depth: QueueDepth, leased: usize, now: Instant) -> Demand {
        let since = self.last_sample.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.last_sample = Some(now);
        if self.batches > 0 && self.batch_secs > 0.0 {
            let per_batch = self.batch_messages as f64 / self.batches as f64;
            let measured = self.limit.max(1) as f64 * per_batch / (self.batch_secs / self.batches as f64);
            self.capacity = Some(average(self.capacity, measured));
        }
        if since > Duration::ZERO {
            let own = self.batch_messages as f64 / since.as_secs_f64();
            // the fleet holds `in_flight` for as long as this task holds its `leased`
            let fleet = if leased > 0 { own * (depth.in_flight as f64 / leased as f64).max(1.0) } else { own };
            self.done = Some(average(self.done, fleet));
        }
        (self.batch_messages, self.batch_secs, self.batches) = (0, 0.0, 0);
        self.depths.push_back((now, depth.visible + depth.delayed));
        while self.depths.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > GROWTH_WINDOW) {
            self.depths.pop_front();
        }
        Demand {
            visible: depth.visible,
            growth_per_sec: self.growth(),
            done_per_sec: self.done.unwrap_or(0.0),
            capacity_per_sec: self.capacity,
            limit: self.limit,
        }
    }

    /// The queue's growth per second between the oldest and newest samples of the window.
    fn growth(&self) -> f64 {
        match (self.depths.front(), self.depths.back()) {
            (Some((t0, d0)), Some((t1, d1))) if t1.duration_since(*t0) >= Duration::from_secs(1) => {
                (*d1 as f64 - *d0 as f64) / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

fn average(before: Option<f64>, now: f64) -> f64 {
    before.map_or(now, |b| b + SMOOTHING * (now - b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DemandSettings {
        DemandSettings {
            drain: Duration::from_secs(60),
            utilization: 0.8,
            task_rate_limit: None,
            fleet_max_concurrency: None,
            fleet_rate: None,
            emf_pipeline: None,
        }
    }

    fn demand(visible: u64, growth: f64, done: f64, capacity: f64) -> Demand {
        Demand { visible, growth_per_sec: growth, done_per_sec: done, capacity_per_sec: Some(capacity), limit: 10 }
    }

    #[test]
    fn the_formula_adds_the_arrivals_and_the_backlog_to_drain_over_a_task_at_its_utilization() {
        let s = settings();
        // 100/s arriving (80 done, 20 growth) + 6,000 over 60 s = 200/s; a task does 50/s at 80%: 40/s
        assert_eq!(desired_tasks(&demand(6_000, 20.0, 80.0, 50.0), &s), 5);
        // an idle queue: one task, never none
        assert_eq!(desired_tasks(&demand(0, 0.0, 0.0, 50.0), &s), 1);
        // a shrinking queue is not negative arrival
        assert_eq!(desired_tasks(&demand(0, -500.0, 10.0, 50.0), &s), 1);
        // capacity not measured yet: 1
        let unknown = Demand { capacity_per_sec: None, ..demand(1_000_000, 0.0, 0.0, 1.0) };
        assert_eq!(desired_tasks(&unknown, &s), 1);
        // a drain target twice as long halves the backlog's share: 100/s + 50/s over 40/s
        let slow = DemandSettings { drain: Duration::from_secs(120), ..settings() };
        assert_eq!(desired_tasks(&demand(6_000, 20.0, 80.0, 50.0), &slow), 4);
    }

    #[test]
    fn more_tasks_than_the_fleet_budget_lets_work_are_not_asked_for() {
        let d = demand(600_000, 0.0, 1_000.0, 50.0);
        assert_eq!(desired_tasks(&d, &settings()), 275);
        // 25 fleet slots, 10 per task: the fourth task would only wait for a slot
        let slots = DemandSettings { fleet_max_concurrency: Some(25), ..settings() };
        assert_eq!(desired_tasks(&d, &slots), 3);
        // 100 messages a second for the fleet, 40 a task
        let rate = DemandSettings { fleet_rate: Some(100.0), ..settings() };
        assert_eq!(desired_tasks(&d, &rate), 3);
        // a task's own rate limit is its capacity when it is lower: 1,000/s + 10,000/s over 8/s
        let own = DemandSettings { task_rate_limit: Some(10.0), ..settings() };
        assert_eq!(desired_tasks(&d, &own), 1_375);
    }

    #[test]
    fn an_emf_line_is_what_cloudwatch_extracts_a_metric_from() {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let line = emf_line("orders \"eu\"", 7, at);
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'), "one line: {line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_123u64);
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "sqs-poller");
        assert_eq!(directive["Dimensions"][0][0], "Pipeline");
        assert_eq!(directive["Metrics"][0]["Name"], "DesiredTasks");
        // the dimension's and the metric's values are members named as the directive says
        assert_eq!(v["Pipeline"], "orders \"eu\"");
        assert_eq!(v["DesiredTasks"], 7);
    }

    #[test]
    fn the_measurements_give_capacity_from_batches_and_the_fleets_rate_by_littles_law() {
        let t0 = Instant::now();
        let demand = TaskDemand::new(settings(), metrics::Gauge::noop());
        // before any batch: capacity unknown, 1
        let deep = QueueDepth { visible: 10_000, in_flight: 0, delayed: 0 };
        assert_eq!(demand.sampled(deep, 0, t0), 1);
        // 4 batches of 10 in 0.5 s each under a limit of 5: 100 messages/s
        for _ in 0..4 {
            demand.batch_done(10, Duration::from_millis(500), 5);
        }
        // 40 settled over 10 s = 4/s here; the queue has 120 in flight, this task 30: 16/s fleet
        let depth = QueueDepth { visible: 12_000, in_flight: 120, delayed: 0 };
        let at = t0 + Duration::from_secs(10);
        let d = demand.lock().demand(depth, 30, at);
        assert_eq!(d.capacity_per_sec, Some(100.0));
        assert!((d.done_per_sec - 16.0).abs() < 1e-9, "{d:?}");
        // the queue grew by 2,000 in 10 s
        assert!((d.growth_per_sec - 200.0).abs() < 1e-9, "{d:?}");
        // (16 + 200 + 12,000 / 60) / (100 × 0.8) = 416 / 80
        assert_eq!(desired_tasks(&d, &settings()), 6);
        // samples older than the window no longer count for growth
        let later = t0 + GROWTH_WINDOW + Duration::from_secs(30);
        let d = demand.lock().demand(depth, 30, later);
        assert!(d.growth_per_sec.abs() < 1e-9, "one sample left in the window: {d:?}");
        assert_eq!(d.capacity_per_sec, Some(100.0), "no batch since: the capacity is kept");
    }
}
