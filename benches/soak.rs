//! The soak run (not in CI): the release build at a steady rate for `SOAK_MINUTES` (30) while a
//! fault-injecting proxy cycles faults on the SQS link and the worker link every two minutes.
//! Every 10 s it records the service's RSS, open file descriptors and CPU, and the messages sent
//! and deleted; at the end it checks that every message sent was deleted, and writes
//! `bench/soak.csv`, `bench/soak.svg` and `bench/SOAK.md`. Run with `scripts/soak.sh`.

#[path = "../tests/e2e/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use common::proxy::{Fault, FaultProxy};
use common::*;

/// One fault cycle: (seconds into the cycle, SQS link, worker link).
const CYCLE_SECS: u64 = 120;

fn faults_at(second_of_cycle: u64) -> (Fault, Fault) {
    let ms = Duration::from_millis;
    let sqs = match second_of_cycle {
        60..70 => Fault::Latency(ms(100)),
        70..75 => Fault::Reset,
        75..85 => Fault::Cut,
        85..90 => Fault::Hang,
        _ => Fault::Pass,
    };
    let worker = match second_of_cycle {
        100..103 => Fault::Reset,
        105..108 => Fault::Hang,
        110..115 => Fault::Latency(ms(200)),
        _ => Fault::Pass,
    };
    (sqs, worker)
}

struct Sample {
    at_secs: f64,
    rss_mib: f64,
    fds: usize,
    cpu_percent: f64,
    sent: u64,
    deleted: f64,
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    let minutes: u64 = std::env::var("SOAK_MINUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let rate: u64 = std::env::var("SOAK_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let sqs = sqs().await;
    let queue = sqs.queue("soak", &[]).await;
    let handled = Arc::new(AtomicU64::new(0));
    let worker = {
        let handled = handled.clone();
        worker_counting(move |n| {
            handled.fetch_add(n, Ordering::Relaxed);
        })
        .await
    };
    let sqs_link = FaultProxy::start(&sqs.endpoint).await;
    let worker_link = FaultProxy::start(&worker).await;
    let pipeline = http_pipeline_with_target(
        "soak",
        &queue,
        &format!("{}/sqs", worker_link.url),
        "timeout_secs = 2",
        "[pipelines.pollers]\nmin = 1\nmax = 8\nwait_time_secs = 5\n[pipelines.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 4\n",
    );
    let mut poller = spawn_poller(&sqs_link.url, 10, &pipeline);
    poller.wait_listening().await;
    let pid = poller.child.id().expect("running");
    println!("soak: {minutes} min at {rate} messages/s; faults cycle every {CYCLE_SECS} s; sqs-poller pid {pid}");

    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(minutes * 60);
    let producer = tokio::spawn({
        let (client, queue, sent) = (sqs.client.clone(), queue.clone(), sent.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let per_tick = (rate / 10).max(1);
            while Instant::now() < until {
                tick.tick().await;
                let mut left = per_tick;
                while left > 0 {
                    let n = left.min(10);
                    let entries: Vec<SendMessageBatchRequestEntry> = (0..n)
                        .map(|i| {
                            SendMessageBatchRequestEntry::builder()
                                .id(format!("m{i}"))
                                .message_body(format!("soak message {}", sent.load(Ordering::Relaxed) + i))
                                .build()
                                .unwrap()
                        })
                        .collect();
                    if client.send_message_batch().queue_url(&queue).set_entries(Some(entries)).send().await.is_ok() {
                        sent.fetch_add(n, Ordering::Relaxed);
                    }
                    left -= n;
                }
            }
        }
    });
    let faults = tokio::spawn({
        async move {
            loop {
                let second = started.elapsed().as_secs() % CYCLE_SECS;
                let (s, w) = faults_at(second);
                sqs_link.set(s);
                worker_link.set(w);
                if Instant::now() >= until {
                    sqs_link.set(Fault::Pass);
                    worker_link.set(Fault::Pass);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });

    let mut samples = Vec::new();
    let mut last_cpu = cpu_secs(pid);
    let mut last_at = Instant::now();
    let mut sample = |poller: &Poller, deleted: f64| {
        let cpu = cpu_secs(pid);
        let now = Instant::now();
        let s = Sample {
            at_secs: started.elapsed().as_secs_f64(),
            rss_mib: proc_status_kib(pid, "VmRSS:") / 1024.0,
            fds: poller.open_fds(),
            cpu_percent: 100.0 * (cpu - last_cpu) / now.duration_since(last_at).as_secs_f64(),
            sent: sent.load(Ordering::Relaxed),
            deleted,
        };
        (last_cpu, last_at) = (cpu, now);
        println!(
            "{:>6.0} s  rss {:>6.1} MiB  fds {:>4}  cpu {:>5.1} %  sent {:>8}  deleted {:>8.0}",
            s.at_secs, s.rss_mib, s.fds, s.cpu_percent, s.sent, s.deleted
        );
        s
    };
    let deleted_series = "sqs_poller_messages_deleted_total{pipeline=\"soak\"}";
    let deleted = |text: &str| find_metric(text, deleted_series).unwrap_or(0.0);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let text = http_get(&format!("{}/metrics", poller.listen)).await.map(|r| r.1).unwrap_or_default();
        samples.push(sample(&poller, deleted(&text)));
    }
    producer.await.unwrap();
    faults.await.unwrap();
    // drain what is left, then stop
    let total = sent.load(Ordering::Relaxed) as f64;
    let drain_deadline = Instant::now() + Duration::from_secs(180);
    let mut done = 0.0;
    while Instant::now() < drain_deadline {
        done = deleted(&poller.metrics_text().await);
        if done >= total {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    samples.push(sample(&poller, done));
    let (visible, in_flight) = sqs.counts(&queue).await;
    let (status, _, _) = poller.stop().await;

    let rss: Vec<f64> = samples.iter().map(|s| s.rss_mib).collect();
    let fds: Vec<f64> = samples.iter().map(|s| s.fds as f64).collect();
    let cpu: Vec<f64> = samples.iter().map(|s| s.cpu_percent).collect();
    let summary = format!(
        "{minutes} min at {rate} messages/s with faults every {CYCLE_SECS} s: sent {total:.0}, deleted {done:.0}, \
         queue left {visible} visible / {in_flight} in flight, worker calls answered for {} messages; \
         RSS {:.1}–{:.1} MiB (first {:.1}, last {:.1}); open descriptors {:.0}–{:.0}; CPU {:.1} % on average \
         (at most {:.1} %); sqs-poller {status}",
        handled.load(Ordering::Relaxed),
        stats(&rss).0,
        stats(&rss).1,
        rss.first().unwrap_or(&0.0),
        rss.last().unwrap_or(&0.0),
        stats(&fds).0,
        stats(&fds).1,
        stats(&cpu).2,
        stats(&cpu).1,
    );
    println!("{summary}");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut csv = String::from("seconds,rss_mib,open_fds,cpu_percent,sent,deleted\n");
    for s in &samples {
        let _ = writeln!(
            csv,
            "{:.0},{:.2},{},{:.2},{},{:.0}",
            s.at_secs, s.rss_mib, s.fds, s.cpu_percent, s.sent, s.deleted
        );
    }
    std::fs::write(root.join("bench/soak.csv"), csv).unwrap();
    std::fs::write(root.join("bench/soak.svg"), svg(&samples, minutes, rate)).unwrap();
    std::fs::write(
        root.join("bench/SOAK.md"),
        format!(
            "# Soak run\n\n`scripts/soak.sh` (SOAK_MINUTES={minutes}, SOAK_RATE={rate}), {}.\n\n{summary}\n\n\
             Faults, every {CYCLE_SECS} s: SQS link latency 100 ms (60–70 s), resets (70–75 s), cut (75–85 s), \
             accept-and-hang (85–90 s); worker link resets (100–103 s), hang (105–108 s), latency 200 ms (110–115 s).\n\n\
             ![RSS, descriptors and CPU over the run](soak.svg)\n",
            chrono_free_date()
        ),
    )
    .unwrap();
    println!("wrote bench/soak.csv, bench/soak.svg, bench/SOAK.md");
    assert!(done >= total && visible == 0 && in_flight == 0, "messages were left: {summary}");
}

/// (min, max, mean)
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let min = v.iter().copied().fold(f64::MAX, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    (min, max, v.iter().sum::<f64>() / v.len().max(1) as f64)
}

fn chrono_free_date() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// An HTTP worker that answers every event with success and reports how many records it had
/// (it keeps nothing: the test harness's worker records every delivery).
async fn worker_counting(count: impl Fn(u64) + Send + Sync + 'static) -> String {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sqs", listener.local_addr().unwrap());
    let count = Arc::new(count);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let count = count.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let count = count.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        count(event["Records"].as_array().map_or(0, |r| r.len() as u64));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(bytes::Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

/// Three stacked panels over time: RSS (MiB), open descriptors, CPU (%).
fn svg(samples: &[Sample], minutes: u64, rate: u64) -> String {
    let (w, panel_h, pad) = (760.0, 150.0, 55.0);
    let h = 3.0 * panel_h + 60.0;
    let t_max = samples.last().map_or(1.0, |s| s.at_secs).max(1.0);
    let x = |t: f64| pad + (w - 2.0 * pad) * t / t_max;
    type Panel = (&'static str, &'static str, fn(&Sample) -> f64);
    let panels: [Panel; 3] = [
        ("RSS (MiB)", "#1f77b4", |s| s.rss_mib),
        ("open file descriptors", "#2ca02c", |s| s.fds as f64),
        ("CPU (% of one core)", "#d62728", |s| s.cpu_percent),
    ];
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20" font-size="14">Soak: {minutes} min at {rate} messages/s, SQS and worker faults every {CYCLE_SECS} s</text>
"#
    );
    for (k, (label, color, value)) in panels.iter().enumerate() {
        let top = 35.0 + k as f64 * panel_h;
        let bottom = top + panel_h - 30.0;
        let v_max = samples.iter().map(value).fold(1.0, f64::max) * 1.1;
        let y = |v: f64| bottom - (bottom - top) * v / v_max;
        let points: Vec<String> = samples.iter().map(|s| format!("{:.1},{:.1}", x(s.at_secs), y(value(s)))).collect();
        let _ = write!(
            out,
            r#"<line x1="{pad}" y1="{bottom}" x2="{xr}" y2="{bottom}" stroke="black"/>
<line x1="{pad}" y1="{top}" x2="{pad}" y2="{bottom}" stroke="black"/>
<text x="{lx}" y="{ly}" fill="{color}">{label}</text>
<text x="5" y="{ty}" fill="{color}">{v_max:.0}</text><text x="5" y="{bottom}" fill="{color}">0</text>
<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>
"#,
            xr = w - pad,
            lx = pad + 5.0,
            ly = top + 12.0,
            ty = top + 10.0,
            points = points.join(" "),
        );
    }
    let _ = write!(
        out,
        r#"<text x="{pad}" y="{yl}">0</text><text x="{xr}" y="{yl}" text-anchor="end">{t:.0} s</text>
</svg>
"#,
        yl = h - 15.0,
        xr = w - pad,
        t = t_max
    );
    out
}
