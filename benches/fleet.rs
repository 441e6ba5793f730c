//! What the fleet's shared budget costs per batch (issue 37): the release build on fauxqs with a
//! no-op worker drains the same backlog three times, side by side in one run — no `[fleet]`,
//! then `fleet_max_concurrency`, then the slots with `fleet_rate_per_sec` and the idempotency
//! window — against the real `redis-server`. Reported per batch: Redis round trips (`INFO
//! commandstats`, every command Redis ran), the service's CPU (`/proc/PID/stat`), Redis's own
//! CPU, and the drain's rate as a ratio to the run without the fleet.
//!
//! Writes the "Fleet" section of `bench/RESULTS.md`. Run with `scripts/bench.sh fleet` (about a
//! minute).

#[path = "../tests/e2e/common/mod.rs"]
mod common;
#[path = "shared/results_md.rs"]
mod results_md;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::*;

const MESSAGES: usize = 20_000;
const BATCH: usize = 10;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

struct Figures {
    name: &'static str,
    batches: f64,
    secs: f64,
    cpu: f64,
    redis_calls: f64,
    redis_commands: f64,
    redis_cpu: f64,
}

async fn run() {
    let sqs = sqs().await;
    let redis = redis_url().await;
    let contenders: [(&str, &str, &str); 3] = [
        ("no [fleet]", "", ""),
        ("fleet_max_concurrency", "fleet_max_concurrency = 16", ""),
        (
            "slots + fleet_rate_per_sec + idempotency",
            "fleet_max_concurrency = 16\nfleet_rate_per_sec = 1000000",
            "[pipelines.idempotency]\n",
        ),
    ];
    let mut figures = Vec::new();
    for (name, target_keys, tables) in contenders {
        figures.push(contend(&sqs, &redis, name, target_keys, tables).await);
    }
    let md = report(&figures);
    println!("{md}");
    let path = format!("{}/bench/RESULTS.md", env!("CARGO_MANIFEST_DIR"));
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, results_md::with_section(&old, "fleet", "benches/fleet.rs", &md)).unwrap();
    println!("wrote the fleet section of bench/RESULTS.md");
}

async fn contend(sqs: &Sqs, redis: &str, name: &'static str, target_keys: &str, tables: &str) -> Figures {
    let queue = sqs.queue("bench-fleet", &[]).await;
    let bodies: Vec<String> = (0..MESSAGES).map(|i| format!("{{\"n\":{i}}}")).collect();
    futures_util::future::join_all(bodies.chunks(MESSAGES / 8).map(|c| sqs.send_bodies(&queue, c))).await;
    let worker = worker(|_| Reply::ok("")).await;
    let pipeline = unique("fleet");
    let fleet = if target_keys.is_empty() { String::new() } else { format!("[fleet]\nredis_url = \"{redis}\"\n") };
    let text = format!(
        "{fleet}{}",
        http_pipeline_with_target(
            &pipeline,
            &queue,
            &worker.url,
            &format!("max_concurrency = 16\n{target_keys}"),
            &format!("[pipelines.batch]\nsize = {BATCH}\n[pipelines.pollers]\nmin = 4\nmax = 16\n{tables}"),
        )
    );
    let (trips0, commands0, rcpu0) = redis_stats(redis).await;
    let started = Instant::now();
    let poller = start_poller(sqs, 10, &text).await;
    let pid = poller.child.id().expect("running");
    let deleted = format!("sqs_poller_messages_deleted_total{{pipeline=\"{pipeline}\"}}");
    poller.wait_metric(&deleted, MESSAGES as f64, Duration::from_secs(600)).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid);
    let batches = poller.metric(&format!("sqs_poller_batch_size_count{{pipeline=\"{pipeline}\"}}")).await;
    let (trips1, commands1, rcpu1) = redis_stats(redis).await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    // the two INFO calls of this bench are Redis commands too
    let (redis_calls, redis_commands) = ((trips1 - trips0 - 2.0).max(0.0), (commands1 - commands0 - 2.0).max(0.0));
    Figures { name, batches, secs, cpu, redis_calls, redis_commands, redis_cpu: rcpu1 - rcpu0 }
}

/// The commands the scripts run inside Redis: `INFO commandstats` counts them as well as the
/// `EVALSHA` that ran them.
const IN_SCRIPTS: [&str; 9] = ["time", "zremrangebyscore", "zcard", "zadd", "pexpire", "get", "set", "del", "pttl"];

/// The round trips Redis has answered (`INFO commandstats`: every command but those the
/// scripts ran inside), the commands it ran in all, and its CPU seconds (`INFO cpu`).
async fn redis_stats(url: &str) -> (f64, f64, f64) {
    let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut c).await.unwrap();
    let (mut round_trips, mut commands) = (0.0, 0.0);
    for line in stats.lines() {
        let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
        let calls: f64 =
            rest.split("calls=").nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.parse().ok()).unwrap_or(0.0);
        commands += calls;
        if !IN_SCRIPTS.contains(&name) {
            round_trips += calls;
        }
    }
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut c).await.unwrap();
    let field = |name: &str| -> f64 {
        info.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))?.trim().parse().ok()).unwrap_or(0.0)
    };
    (round_trips, commands, field("used_cpu_sys") + field("used_cpu_user"))
}

/// user + system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `after` starts at field 3; 100 ticks a second
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn report(figures: &[Figures]) -> String {
    let base = &figures[0];
    let mut md = format!(
        "## Fleet: what the shared budget costs per batch (issue 37)\n\n{MESSAGES} messages in batches of {BATCH}, a no-op \
         HTTP worker, `max_concurrency = 16`, fauxqs and Debian's redis-server on loopback, one run, side by side \
         (`scripts/bench.sh fleet`, {}).\n\n\
         | | batches | Redis round trips per batch | commands Redis ran per batch | service CPU per batch | Redis CPU per batch | drain rate (÷ no fleet) |\n\
         |---|---|---|---|---|---|---|\n",
        results_md::utc_now()
    );
    for f in figures {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.1} | {:.0} µs | {:.0} µs | {:.2} |",
            f.name,
            f.batches,
            f.redis_calls / f.batches.max(1.0),
            f.redis_commands / f.batches.max(1.0),
            f.cpu / f.batches.max(1.0) * 1e6,
            f.redis_cpu / f.batches.max(1.0) * 1e6,
            (f.batches / f.secs) / (base.batches / base.secs)
        );
    }
    md.push_str(
        "\nRound trips: a slot is one script call to take and one ZREM to give back (more when it has to wait: \
         a try every 10 to 200 ms); the rate one script call; the idempotency window a claim and a finish per batch \
         (all keys of the batch in one call each, two commands per key inside); the heartbeat every 10 s is not per \
         batch. The drain rate is this machine's (2 cores shared by fauxqs, Redis, the worker \
         and the service): read it as a ratio.\n",
    );
    md
}
