//! Static vs adaptive concurrency (issue 21) against a worker whose capacity changes mid-run,
//! with the release build on fauxqs.
//!
//! The worker serves `capacity` batches at once in 200 ms, slower in proportion past that (a
//! processor shared by more batches than it has cores), and answers 503 to a batch that finds
//! more than twice its capacity at work (its overload protection). Its capacity is 40 batches for
//! the first 20 s (from its first request), 10 for the next 20 s, then 40 again. Each contender
//! drains its own backlog of 5-message batches for 60 s: `max_concurrency = 64` fixed, then the
//! same with `concurrency = "adaptive"`. Reported per phase: messages processed per second, the
//! worker's p50/p99 time per batch, throttles (503) and batches the service timed out
//! (`timeout_secs = 2`).
//!
//! Writes the "Static vs adaptive concurrency" section of `bench/RESULTS.md`. Run with
//! `scripts/bench.sh protect` (about three minutes).

#[path = "../tests/e2e/common/mod.rs"]
mod common;
#[path = "shared/results_md.rs"]
mod results_md;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const PHASE: Duration = Duration::from_secs(20);
const CAPACITIES: [usize; 3] = [40, 10, 40];
const SERVICE: Duration = Duration::from_millis(200);
const BATCH: usize = 5;
const MESSAGES: usize = 50_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

/// One call the worker saw: seconds since its first call, answered 503, the time it took.
#[derive(Clone, Copy)]
struct Call {
    at: f64,
    throttled: bool,
    took: Duration,
    records: usize,
}

#[derive(Default)]
struct PhaseFigures {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    throttles: usize,
    mean_in_flight: f64,
}

struct Contender {
    name: &'static str,
    phases: Vec<PhaseFigures>,
    timeouts: f64,
}

async fn run() {
    let sqs = sqs().await;
    let mut contenders = Vec::new();
    for (name, keys) in [("static", ""), ("adaptive", "concurrency = \"adaptive\"\n")] {
        contenders.push(contend(&sqs, name, keys).await);
    }
    let md = report(&contenders);
    println!("{md}");
    let root = env!("CARGO_MANIFEST_DIR");
    let path = format!("{root}/bench/RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, results_md::with_section(&old, "concurrency", "benches/protect.rs", &md)).unwrap();
    println!("wrote the concurrency section of bench/RESULTS.md");
}

async fn contend(sqs: &Sqs, name: &'static str, keys: &str) -> Contender {
    let queue = sqs.queue(&format!("protect-{name}"), &[]).await;
    let bodies: Vec<String> = (0..MESSAGES).map(|i| format!("{{\"n\":{i}}}")).collect();
    futures_util::future::join_all(bodies.chunks(MESSAGES / 8).map(|c| sqs.send_bodies(&queue, c))).await;
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let worker = {
        let (calls, first) = (calls.clone(), first.clone());
        loaded_worker(move |event, n| {
            let start = *first.lock().unwrap().get_or_insert_with(Instant::now);
            let at = start.elapsed();
            let phase = ((at.as_secs_f64() / PHASE.as_secs_f64()) as usize).min(CAPACITIES.len() - 1);
            let capacity = CAPACITIES[phase];
            let records = event["Records"].as_array().map_or(0, Vec::len);
            let (reply, call) = if n > 2 * capacity {
                (
                    Reply { status: 503, ..Reply::ok("overloaded") },
                    Call { at: at.as_secs_f64(), throttled: true, took: Duration::ZERO, records },
                )
            } else {
                let took = SERVICE.mul_f64((n as f64 / capacity as f64).max(1.0));
                (Reply { delay: took, ..Reply::ok("") }, Call { at: at.as_secs_f64(), throttled: false, took, records })
            };
            calls.lock().unwrap().push(call);
            reply
        })
        .await
    };
    let poller = start_poller(
        sqs,
        5,
        &http_pipeline_with_target(
            name,
            &queue,
            &worker.url,
            &format!("max_concurrency = 64\ntimeout_secs = 2\n{keys}"),
            &format!("[pipelines.batch]\nsize = {BATCH}\n[pipelines.pollers]\nmax = 20\nwait_time_secs = 1"),
        ),
    )
    .await;
    // the worker's load, sampled every 100 ms
    let mut load: Vec<(f64, usize)> = Vec::new();
    let total = PHASE * CAPACITIES.len() as u32;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(start) = *first.lock().unwrap() else { continue };
        if start.elapsed() >= total {
            break;
        }
        load.push((start.elapsed().as_secs_f64(), worker.load.now()));
    }
    let text = poller.metrics_text().await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    let timeouts = find_metric(&text, &format!("sqs_poller_batches_total{{pipeline=\"{name}\",outcome=\"failure\"}}"))
        .unwrap_or(0.0);
    let calls = calls.lock().unwrap().clone();
    let phases = (0..CAPACITIES.len())
        .map(|p| {
            let (from, to) = (p as f64 * PHASE.as_secs_f64(), (p + 1) as f64 * PHASE.as_secs_f64());
            let inside: Vec<&Call> = calls.iter().filter(|c| c.at >= from && c.at < to).collect();
            let mut took: Vec<f64> =
                inside.iter().filter(|c| !c.throttled).map(|c| c.took.as_secs_f64() * 1e3).collect();
            took.sort_by(f64::total_cmp);
            let q = |f: f64| took.get(((took.len() as f64 * f) as usize).min(took.len().saturating_sub(1))).copied();
            let samples: Vec<usize> = load.iter().filter(|l| l.0 >= from && l.0 < to).map(|l| l.1).collect();
            PhaseFigures {
                per_sec: inside.iter().filter(|c| !c.throttled).map(|c| c.records).sum::<usize>() as f64
                    / PHASE.as_secs_f64(),
                p50_ms: q(0.5).unwrap_or(0.0),
                p99_ms: q(0.99).unwrap_or(0.0),
                throttles: inside.iter().filter(|c| c.throttled).count(),
                mean_in_flight: samples.iter().sum::<usize>() as f64 / samples.len().max(1) as f64,
            }
        })
        .collect();
    Contender { name, phases, timeouts }
}

fn report(contenders: &[Contender]) -> String {
    let commit = std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output();
    let commit = commit.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "## Static vs adaptive concurrency: a worker whose capacity changes\n");
    let _ = writeln!(
        md,
        "`scripts/bench.sh protect` ({}, commit {commit}; release build, fauxqs, this machine). A worker that \
         serves its capacity in batches at once in 200 ms, slower in proportion past it, and answers 503 past \
         twice its capacity; capacity 40, then 10, then 40 batches, 20 s each. Batches of {BATCH}, \
         `max_concurrency = 64`, `timeout_secs = 2`, a backlog throughout. One run.\n",
        results_md::utc_now()
    );
    let _ = writeln!(
        md,
        "| contender | capacity | messages/s | worker p50 / p99 per batch | throttles (503) | batches at the worker (mean) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for c in contenders {
        for (p, f) in c.phases.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} / {:.0} ms | {} | {:.1} |",
                c.name, CAPACITIES[p], f.per_sec, f.p50_ms, f.p99_ms, f.throttles, f.mean_in_flight
            );
        }
    }
    let _ = writeln!(md);
    for c in contenders {
        let _ = writeln!(md, "- {}: {} batches timed out or failed in the 60 s.", c.name, c.timeouts);
    }
    md
}
