//! The seed's workload (issue 20), with the release build on fauxqs: `config/seed-provisioned.toml`
//! as written, its Lambda target swapped for an HTTP worker that takes 20 ms.
//!
//! 1. **Steady load**: 50,000 messages a minute (833/s, five in six matching the filter) sent at
//!    an even pace for `SEED_SEND_SECS` (120): send→worker latency (p50, p99, max, share within
//!    500 ms), what the sender reached, peak pollers, peak RSS, CPU per message.
//! 2. **Burst**: `SEED_BURST` (40,000) messages sent as fast as 64 concurrent SendMessageBatch
//!    go: the time until the fleet is at `max` (2,000), the drain.
//! 3. **Idle**: from the last message on, the time until the fleet is back at `min` (20), then
//!    the receives per minute at rest; then SIGTERM: the drain's length and exit status.
//! 4. **Idle fleets** of 2,000 and 10,000 pollers (10 and 50 pipelines held at 200 each, AWS's
//!    largest `pollers.min`), each long-polling an empty queue: RSS, CPU-s per minute,
//!    descriptors, receives per minute, the drain on SIGTERM.
//!
//! Writes `bench/seed.json` and the "Seed scenario" section of `bench/RESULTS.md`. Run with
//! `scripts/bench.sh seed` (about ten minutes).

#[path = "../tests/e2e/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;

const PER_MINUTE: u64 = 50_000;
const WORKER_DELAY: Duration = Duration::from_millis(20);
const SLA_MS: u64 = 500;
/// Event types sent in turn: five in six are the filter's.
const EVENT_TYPES: [&str; 6] = ["PAYMENT", "REFUND", "PAYMENT", "CHARGEBACK", "BALANCE_INQUIRY", "PAYMENT"];
const SEED_MIN: f64 = 20.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

/// The worker: records each record's send→arrival latency, answers success after 20 ms.
struct LatencyWorker {
    url: String,
    latencies_ms: Arc<Mutex<Vec<u64>>>,
    last_arrival: Arc<Mutex<Option<Instant>>>,
}

async fn latency_worker() -> LatencyWorker {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let latencies_ms: Arc<Mutex<Vec<u64>>> = Arc::default();
    let last_arrival: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (lat, last) = (latencies_ms.clone(), last_arrival.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (lat, last) = (lat.clone(), last.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (lat, last) = (lat.clone(), last.clone());
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let arrived = now_ms();
                        let event: serde_json::Value = serde_json::from_slice(&body).expect("the event is JSON");
                        let sent: Vec<u64> = event["Records"]
                            .as_array()
                            .expect("Records")
                            .iter()
                            .map(|r| {
                                let b: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
                                b["sent_ms"].as_u64().unwrap()
                            })
                            .collect();
                        lat.lock().unwrap().extend(sent.iter().map(|s| arrived.saturating_sub(*s)));
                        *last.lock().unwrap() = Some(Instant::now());
                        tokio::time::sleep(WORKER_DELAY).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    LatencyWorker { url, latencies_ms, last_arrival }
}

/// `config/seed-provisioned.toml` as written, pointed at `queue` and `dlq` through its own
/// variables, its Lambda target swapped for the HTTP `worker`, listening on port 0.
fn seed_config(sqs: &Sqs, worker: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/config/seed-provisioned.toml")).unwrap();
    let lambda = "type = \"lambda\"\nfunction_name = \"${TRANSACTIONS_FUNCTION:-transaction-processor}\"\n";
    let region = "region = \"${AWS_REGION:-us-east-1}\"\n";
    assert!(
        text.contains(lambda) && text.contains(region),
        "config/seed-provisioned.toml changed shape: update benches/seed.rs"
    );
    text.replace(lambda, &format!("type = \"http\"\nurl = \"{worker}\"\n")).replace(
        region,
        &format!(
            "{region}endpoint_url = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
            sqs.endpoint
        ),
    )
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// user + system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `after` starts at field 3; 100 ticks a second
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn sum_series(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn receives(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("sqs_poller_sqs_requests_total{") && l.contains("operation=\"ReceiveMessage\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn start(text: &str) -> Poller {
    let env = [("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")];
    let header = text.split("[[pipelines]]").next().unwrap().to_string();
    spawn_poller_config(&header, text, &env, &[])
}

async fn run() {
    let sqs = sqs().await;
    let mut results = serde_json::Map::new();
    results.insert("steady".into(), steady_then_idle(&sqs).await);
    let mut fleets = Vec::new();
    for pollers in [2000, 10_000] {
        fleets.push(idle_fleet(&sqs, pollers).await);
    }
    results.insert("idle_fleets".into(), json!(fleets));
    let date = String::from_utf8(
        std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().unwrap().stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let commit = std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output();
    results.insert("date".into(), json!(date));
    results.insert(
        "commit".into(),
        json!(commit.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()),
    );
    let value = serde_json::Value::Object(results);
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::write(format!("{root}/bench/seed.json"), serde_json::to_string_pretty(&value).unwrap() + "\n").unwrap();
    let path = format!("{root}/bench/RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, with_seed_section(&old, &seed_md(&value))).unwrap();
    println!("wrote bench/seed.json and the seed section of bench/RESULTS.md");
}

/// `md` with its seed section (between the markers) replaced by `section`, or `section` appended.
fn with_seed_section(md: &str, section: &str) -> String {
    const BEGIN: &str = "<!-- seed scenario: begin (written by benches/seed.rs) -->";
    const END: &str = "<!-- seed scenario: end -->";
    let block = format!("{BEGIN}\n{section}{END}\n");
    match (md.find(BEGIN), md.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &md[..b], &md[e + END.len()..].trim_start_matches('\n')),
        _ => format!("{}\n{block}", md.trim_end()),
    }
}

async fn steady_then_idle(sqs: &Sqs) -> serde_json::Value {
    let send_secs = env_u64("SEED_SEND_SECS", 120);
    // the seed's events are small: its queue says so (16 KiB), and the default byte budget then
    // covers 1,456 receives at once (with the default 1 MiB it would stop the fleet at 25)
    let queue = sqs.queue("transactions", &[(QueueAttributeName::MaximumMessageSize, "16384")]).await;
    let dlq = sqs.queue("transactions-dlq", &[]).await;
    let worker = latency_worker().await;
    let text = seed_config(sqs, &worker.url);
    let env = [
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("TRANSACTIONS_QUEUE_URL", queue.as_str()),
        ("TRANSACTIONS_DLQ_URL", dlq.as_str()),
    ];
    let header = text.split("[[pipelines]]").next().unwrap().to_string();
    let mut p = spawn_poller_config(&header, &text, &env, &[]);
    p.wait_listening().await;
    let pid = p.child.id().unwrap();
    let pollers = |t: &str| metric_value(t, "sqs_poller_pollers{pipeline=\"transactions\"}");
    eventually("the fleet at min", Duration::from_secs(30), || async { pollers(&p.metrics_text().await) == SEED_MIN })
        .await;
    println!("seed: sending {PER_MINUTE} messages/min for {send_secs} s (HTTP worker of 20 ms)");
    let total_batches = PER_MINUTE * send_secs / 60 / 10;
    let spacing = Duration::from_secs(60).div_f64((PER_MINUTE / 10) as f64);
    let sends = Arc::new(tokio::sync::Semaphore::new(64));
    let max_lag_ms = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds(pid);
    let t0 = tokio::time::Instant::now();
    let started = Instant::now();
    let mut peak_pollers = 0.0f64;
    let mut next_sample = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..total_batches {
        let at = t0 + spacing.mul_f64(k as f64);
        tokio::time::sleep_until(at).await;
        let permit = sends.clone().acquire_owned().await.unwrap();
        let lag = tokio::time::Instant::now().duration_since(at).as_millis() as u64;
        max_lag_ms.fetch_max(lag, Ordering::Relaxed);
        let (client, queue) = (sqs.client.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let sent = now_ms();
            let entries = (0..10)
                .map(|i| {
                    let n = k * 10 + i;
                    let body = json!({"event_type": EVENT_TYPES[(n % 6) as usize], "transaction_id": n, "amount_cents": n % 100_000, "sent_ms": sent});
                    SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(body.to_string()).build().unwrap()
                })
                .collect();
            let out = client.send_message_batch().queue_url(&queue).set_entries(Some(entries)).send().await.expect("SendMessageBatch");
            assert!(out.failed.is_empty(), "{:?}", out.failed);
            drop(permit);
        }));
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            peak_pollers = peak_pollers.max(pollers(&p.metrics_text().await));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let send_elapsed = started.elapsed().as_secs_f64();
    let sent = total_batches * 10;
    let matching = (0..sent).filter(|n| EVENT_TYPES[(n % 6) as usize] != "BALANCE_INQUIRY").count();
    let sender_rate = sent as f64 / send_elapsed * 60.0;
    println!(
        "seed: sent {sent} in {send_elapsed:.1} s ({sender_rate:.0}/min, largest lag behind schedule {} ms)",
        max_lag_ms.load(Ordering::Relaxed)
    );
    loop {
        let t = p.metrics_text().await;
        peak_pollers = peak_pollers.max(pollers(&t));
        let deleted = sum_series(&t, "sqs_poller_messages_deleted_total{");
        if deleted >= sent as f64 && worker.latencies_ms.lock().unwrap().len() >= matching {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(send_secs + 120), "not drained: {deleted} of {sent} deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let busy = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let peak_rss = p.peak_rss_mib();
    let mut lat = worker.latencies_ms.lock().unwrap().clone();
    lat.sort_unstable();
    let within = lat.iter().filter(|l| **l <= SLA_MS).count() as f64 / lat.len() as f64;
    let (p50, p99, max) = (percentile(&lat, 0.5), percentile(&lat, 0.99), *lat.last().unwrap());
    let counts = sqs.counts(&queue).await;
    let dlq_counts = sqs.counts(&dlq).await;
    println!(
        "seed: {} processed ({} expected), send→worker p50 {p50} ms, p99 {p99} ms, max {max} ms, {:.2} % within {SLA_MS} ms; \
         peak pollers {peak_pollers}, peak RSS {peak_rss:.0} MiB, {:.0} µs CPU per message; queue {counts:?}, DLQ {dlq_counts:?}",
        lat.len(),
        matching,
        within * 100.0,
        cpu / sent as f64 * 1e6
    );

    // a burst onto the steady fleet (as a producer catching up would send it): to max, drained
    let burst = env_u64("SEED_BURST", 40_000);
    let burst_start = Instant::now();
    let sender = {
        let (client, queue) = (sqs.client.clone(), queue.clone());
        tokio::spawn(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(64));
            let mut tasks = Vec::new();
            for k in 0..burst / 10 {
                let permit = gate.clone().acquire_owned().await.unwrap();
                let (client, queue) = (client.clone(), queue.clone());
                tasks.push(tokio::spawn(async move {
                    let sent_at = now_ms();
                    let entries = (0..10)
                        .map(|i| {
                            let n = sent + k * 10 + i;
                            let body = json!({"event_type": EVENT_TYPES[(n % 6) as usize], "transaction_id": n, "amount_cents": n % 100_000, "sent_ms": sent_at});
                            SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(body.to_string()).build().unwrap()
                        })
                        .collect();
                    let out = client.send_message_batch().queue_url(&queue).set_entries(Some(entries)).send().await.expect("SendMessageBatch");
                    assert!(out.failed.is_empty(), "{:?}", out.failed);
                    drop(permit);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            burst_start.elapsed().as_secs_f64()
        })
    };
    let (mut burst_peak, mut burst_to_max) = (0.0f64, None);
    loop {
        let t = p.metrics_text().await;
        let n = pollers(&t);
        burst_peak = burst_peak.max(n);
        if burst_to_max.is_none() && n >= 2000.0 {
            burst_to_max = Some(burst_start.elapsed().as_secs_f64());
        }
        if sender.is_finished() && sum_series(&t, "sqs_poller_messages_deleted_total{") >= (sent + burst) as f64 {
            break;
        }
        assert!(burst_start.elapsed() < Duration::from_secs(300), "the burst of {burst} not drained in 5 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let burst_sent_s = sender.await.unwrap();
    let burst_drained_s = burst_start.elapsed().as_secs_f64();
    let burst_peak_rss = p.peak_rss_mib();
    println!(
        "seed: burst of {burst} sent in {burst_sent_s:.1} s, fleet at max (2000) after {}, peak {burst_peak}, drained in {burst_drained_s:.1} s, peak RSS {burst_peak_rss:.0} MiB",
        burst_to_max.map_or("never".to_string(), |s| format!("{s:.2} s"))
    );

    // idle: from the last message the worker saw until the fleet is back at min
    let last = worker.last_arrival.lock().unwrap().unwrap();
    let mut steps: Vec<(f64, f64)> = Vec::new();
    let to_min = loop {
        let n = pollers(&p.metrics_text().await);
        if steps.last().is_none_or(|(_, m)| *m != n) {
            steps.push((last.elapsed().as_secs_f64(), n));
        }
        if n <= SEED_MIN {
            break last.elapsed().as_secs_f64();
        }
        assert!(last.elapsed() < Duration::from_secs(900), "not back at min after 15 minutes: {steps:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("seed: back at min ({SEED_MIN}) {to_min:.0} s after the last message: {steps:?}");
    // at rest: one long poll per poller every 20 s
    let rest_secs = env_u64("SEED_REST_SECS", 60);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let r0 = receives(&p.metrics_text().await);
    let c0 = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(rest_secs)).await;
    let receives_per_min = (receives(&p.metrics_text().await) - r0) * 60.0 / rest_secs as f64;
    let rest_cpu_per_min = (cpu_seconds(pid) - c0) * 60.0 / rest_secs as f64;
    let (status, drain, _) = p.stop().await;
    println!("seed: at rest {receives_per_min:.0} receives/min, {rest_cpu_per_min:.3} CPU-s/min; SIGTERM: exit {status}, drain {:.1} s", drain.as_secs_f64());
    json!({
        "per_minute": PER_MINUTE, "send_secs": send_secs, "worker_delay_ms": WORKER_DELAY.as_millis() as u64,
        "sent": sent, "sender_per_minute": sender_rate, "sender_max_lag_ms": max_lag_ms.load(Ordering::Relaxed),
        "matching": matching, "processed": lat.len(),
        "p50_ms": p50, "p99_ms": p99, "max_ms": max, "within_sla": within,
        "peak_pollers": peak_pollers, "peak_rss_mib": peak_rss, "cpu_us_per_message": cpu / sent as f64 * 1e6,
        "busy_s": busy, "queue_after": [counts.0, counts.1], "dlq_after": [dlq_counts.0, dlq_counts.1],
        "burst": burst, "burst_sent_s": burst_sent_s, "burst_to_max_s": burst_to_max, "burst_peak_pollers": burst_peak,
        "burst_drained_s": burst_drained_s, "burst_peak_rss_mib": burst_peak_rss,
        "seconds_to_min": to_min, "descent": steps, "receives_per_min_at_rest": receives_per_min,
        "cpu_s_per_min_at_rest": rest_cpu_per_min, "exit_ok": status.success(), "drain_s": drain.as_secs_f64(),
    })
}

async fn idle_fleet(sqs: &Sqs, total: usize) -> serde_json::Value {
    const EACH: usize = 200;
    let idle_secs = env_u64("SEED_IDLE_SECS", 60);
    let worker = latency_worker().await;
    let mut text = format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[shutdown]\ngrace_period_secs = 30\n",
        sqs.endpoint
    );
    for i in 0..total / EACH {
        let queue = sqs.queue(&format!("idle{i}"), &[(QueueAttributeName::MaximumMessageSize, "16384")]).await;
        // the seed's batch and room for every poller's receive (200 × 10 messages)
        let _ = write!(
            text,
            "[[pipelines]]\nname = \"idle{i}\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nmin = {EACH}\nmax = {EACH}\n\
             [pipelines.batch]\nsize = 50\nwindow_ms = 2000\n[pipelines.target]\ntype = \"http\"\nurl = \"{}\"\nmax_concurrency = 100\n",
            worker.url
        );
    }
    let mut p = start(&text);
    p.wait_listening().await;
    let pid = p.child.id().unwrap();
    let started = Instant::now();
    eventually("the whole fleet long-polling", Duration::from_secs(120), || async {
        sum_series(&p.metrics_text().await, "sqs_poller_pollers{") == total as f64 && p.open_fds() >= total
    })
    .await;
    let ready_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (r0, c0) = (receives(&p.metrics_text().await), cpu_seconds(pid));
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let receives_per_min = (receives(&p.metrics_text().await) - r0) * 60.0 / idle_secs as f64;
    let cpu_per_min = (cpu_seconds(pid) - c0) * 60.0 / idle_secs as f64;
    let rss = proc_status_kib(pid, "VmRSS:") / 1024.0;
    let peak_rss = p.peak_rss_mib();
    let fds = p.open_fds();
    let (status, drain, _) = p.stop().await;
    println!(
        "idle fleet of {total}: all long-polling after {ready_s:.1} s; RSS {rss:.0} MiB (peak {peak_rss:.0}), {:.1} KiB per poller, \
         {cpu_per_min:.2} CPU-s/min, {fds} descriptors, {receives_per_min:.0} receives/min; SIGTERM: exit {status}, drain {:.1} s",
        rss * 1024.0 / total as f64,
        drain.as_secs_f64()
    );
    json!({"pollers": total, "pipelines": total / EACH, "ready_s": ready_s, "rss_mib": rss, "peak_rss_mib": peak_rss,
           "cpu_s_per_min": cpu_per_min, "descriptors": fds, "receives_per_min": receives_per_min,
           "exit_ok": status.success(), "drain_s": drain.as_secs_f64(), "measured_s": idle_secs})
}

fn seed_md(v: &serde_json::Value) -> String {
    let s = &v["steady"];
    let mut md = String::new();
    let _ = writeln!(md, "## Seed scenario: `config/seed-provisioned.toml` at 50,000 messages a minute\n");
    let _ = writeln!(
        md,
        "`scripts/bench.sh seed` ({}, commit {}; release build, fauxqs, this machine). The seed's file as written \
         (batch 50, window 2 s, pollers 20..2,000, max_concurrency 5,000, the `event_type` filter, visibility 60 s, \
         DLQ after 3), its Lambda target swapped for an HTTP worker that takes {} ms.\n",
        v["date"].as_str().unwrap_or(""),
        v["commit"].as_str().unwrap_or(""),
        s["worker_delay_ms"]
    );
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    let _ = writeln!(md, "| steady load, {} s | |\n|---|---|", s["send_secs"]);
    let rows = [
        (
            "messages sent (5 in 6 match the filter)",
            format!("{} ({} matching, {} processed)", s["sent"], s["matching"], s["processed"]),
        ),
        (
            "sender reached",
            format!(
                "{:.0} messages/min (largest lag behind its schedule {} ms)",
                f(&s["sender_per_minute"]),
                s["sender_max_lag_ms"]
            ),
        ),
        ("send → worker latency", format!("p50 {} ms, p99 {} ms, max {} ms", s["p50_ms"], s["p99_ms"], s["max_ms"])),
        ("within the 500 ms SLA", format!("{:.2} %", f(&s["within_sla"]) * 100.0)),
        ("peak pollers under the steady load", format!("{}", s["peak_pollers"])),
        ("peak RSS", format!("{:.0} MiB", f(&s["peak_rss_mib"]))),
        (
            "CPU per message (every message sent, filtered ones included)",
            format!("{:.0} µs", f(&s["cpu_us_per_message"])),
        ),
        ("after the run: queue (visible, hidden), DLQ", format!("{}, {}", s["queue_after"], s["dlq_after"])),
        (
            "then a burst, sent as fast as the sender can",
            format!(
                "{} messages in {:.1} s: the fleet at `max` (2,000) {} after its first message (peak {}), drained in {:.1} s; peak RSS {:.0} MiB",
                s["burst"],
                f(&s["burst_sent_s"]),
                s["burst_to_max_s"].as_f64().map_or("never".to_string(), |x| format!("{x:.2} s")),
                s["burst_peak_pollers"],
                f(&s["burst_drained_s"]),
                f(&s["burst_peak_rss_mib"])
            ),
        ),
        ("idle: last message → back at `min` (20)", format!("{:.0} s", f(&s["seconds_to_min"]))),
        (
            "the descent (s after the last message, pollers)",
            s["descent"].as_array().map_or(String::new(), |a| {
                a.iter().map(|p| format!("{:.0} s: {}", f(&p[0]), p[1])).collect::<Vec<_>>().join(", ")
            }),
        ),
        (
            "at rest: receives per minute, CPU",
            format!("{:.0}, {:.3} CPU-s/min", f(&s["receives_per_min_at_rest"]), f(&s["cpu_s_per_min_at_rest"])),
        ),
        (
            "SIGTERM at rest",
            format!(
                "exit {}, drain {:.1} s",
                if s["exit_ok"].as_bool() == Some(true) { "0" } else { "non-zero" },
                f(&s["drain_s"])
            ),
        ),
    ];
    for (k, val) in rows {
        let _ = writeln!(md, "| {k} | {val} |");
    }
    let _ = writeln!(
        md,
        "\nIdle fleets: pipelines held at 200 pollers each (AWS's largest `pollers.min`), each long-polling an empty \
         queue (20 s), measured over {} s after the whole fleet was polling.\n",
        v["idle_fleets"][0]["measured_s"]
    );
    let _ = writeln!(md, "| pollers | RSS | per poller | CPU-s per minute | descriptors | receives per minute | SIGTERM |\n|---|---|---|---|---|---|---|");
    for fl in v["idle_fleets"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {:.0} MiB (peak {:.0}) | {:.1} KiB | {:.2} | {} | {:.0} | exit {}, drain {:.1} s |",
            fl["pollers"],
            f(&fl["rss_mib"]),
            f(&fl["peak_rss_mib"]),
            f(&fl["rss_mib"]) * 1024.0 / f(&fl["pollers"]),
            f(&fl["cpu_s_per_min"]),
            fl["descriptors"],
            f(&fl["receives_per_min"]),
            if fl["exit_ok"].as_bool() == Some(true) { "0" } else { "non-zero" },
            f(&fl["drain_s"])
        );
    }
    md.push('\n');
    md
}
