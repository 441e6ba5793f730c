//! The metrics server defends itself: thousands of idle connections do not pile up descriptors,
//! and it keeps answering once the idle ones have timed out.

use std::time::{Duration, Instant};

use crate::common::*;

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).expect("/proc of the poller")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_and_time_out() {
    let sqs = sqs().await;
    let queue = sqs.queue("server", &[]).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline("server", &queue, "http://127.0.0.1:9/", "[pipelines.pollers]\nwait_time_secs = 1"),
    )
    .await;
    let pid = poller.child.id().expect("running");
    let before = open_descriptors(pid);
    let addr = poller.listen.trim_start_matches("http://").to_string();

    // 2,000 connections that never send a byte, held open by this test
    let idle: Vec<std::net::TcpStream> = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || (0..2000).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect()
    })
    .await
    .unwrap();
    assert!(idle.len() > 1000, "only {} connections opened", idle.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = open_descriptors(pid);
    assert!(
        during <= before + sqs_poller::server::MAX_CONNECTIONS + 16,
        "{before} descriptors before, {during} with {} idle connections",
        idle.len()
    );

    // the idle ones are dropped after the header timeout; the server answers again
    let t0 = Instant::now();
    eventually("/metrics answers while the idle connections are still open", Duration::from_secs(15), || async {
        http_get(&format!("{}/metrics", poller.listen)).await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    println!(
        "{} idle connections: descriptors {before} -> {during}; /metrics answered again after {:?}",
        idle.len(),
        t0.elapsed()
    );
    // /metrics can answer while the last idle connections wait out their header timeout; by one
    // more timeout every one of them must be closed
    let limit = sqs_poller::server::HEADER_READ_TIMEOUT * 2;
    eventually("the timed-out connections were closed", limit, || async { open_descriptors(pid) <= before + 16 }).await;
    drop(idle);
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// CPU seconds (user + system) the process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc of the poller");
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    // fields 14 and 15 of stat(5), counted after the command name: utime, stime in clock ticks
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_instead_of_spinning() {
    let sqs = sqs().await;
    let queue = sqs.queue("emfile", &[]).await;
    let poller = start_poller(
        &sqs,
        10,
        &http_pipeline("emfile", &queue, "http://127.0.0.1:9/", "[pipelines.pollers]\nwait_time_secs = 1"),
    )
    .await;
    let pid = poller.child.id().expect("running");
    // fewer descriptors than the connection cap: accept fails with EMFILE while clients wait
    let limit = open_descriptors(pid) + 20;
    let ok = std::process::Command::new("prlimit")
        .args([format!("--nofile={limit}:{limit}"), format!("--pid={pid}")])
        .status()
        .unwrap()
        .success();
    assert!(ok, "prlimit --nofile={limit} --pid={pid}");
    let addr = poller.listen.trim_start_matches("http://").to_string();
    let idle: Vec<std::net::TcpStream> = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            // those beyond the listen backlog wait for SYN retries: do not wait for them
            (0..300)
                .filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)).ok())
                .collect()
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log_before = poller.log_text().len();
    let cpu_before = cpu_secs(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = cpu_secs(pid) - cpu_before;
    let logged = poller.log_text().len() - log_before;
    println!(
        "{} connections with the descriptor limit at {limit}: {cpu:.2} CPU seconds and {logged} bytes of log in 3 s",
        idle.len()
    );
    assert!(poller.log_text().contains("accept failed; backing off"), "EMFILE was reached:\n{}", poller.log_text());
    assert!(cpu < 0.6, "the service used {cpu:.2} CPU seconds in 3 s while out of descriptors");
    assert!(logged < 20_000, "{logged} bytes of log in 3 s while out of descriptors");
    drop(idle);
    eventually("/metrics answers once the clients left", Duration::from_secs(15), || async {
        http_get(&format!("{}/metrics", poller.listen)).await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// `sqs-poller healthcheck` (a container's HEALTHCHECK without curl): 0 while the service
/// answers on the `server.listen` of the same configuration, 1 naming the URL once it is gone,
/// 2 with neither a configuration nor `--url`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthcheck_subcommand_says_whether_the_service_answers() {
    let sqs = sqs().await;
    let queue = sqs.queue("healthcheck", &[]).await;
    let worker = worker(|_| Reply::ok("")).await;
    // a fixed port: the subcommand reads server.listen from the file, and port 0 names none
    let port = free_port();
    let header = format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"0.0.0.0:{port}\"\nadmin_listen = \"\"\n[shutdown]\ngrace_period_secs = 5\n",
        sqs.endpoint
    );
    let text =
        header.clone() + &http_pipeline("healthcheck", &queue, &worker.url, "[pipelines.pollers]\nwait_time_secs = 1");
    let mut poller =
        spawn_poller_config(&header, &text, &[("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")], &[]);
    poller.wait_listening().await;
    let healthcheck = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
            .arg("healthcheck")
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    // the poller's own file goes with it: a copy outlives it
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("poller.toml");
    std::fs::copy(&poller.config, &copy).unwrap();
    let config = copy.to_str().unwrap().to_string();
    let (code, out) = healthcheck(&["--config", &config]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("healthy: http://127.0.0.1:{port}/healthz")), "0.0.0.0 is asked on loopback: {out}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    let (code, out) = healthcheck(&["--config", &config]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unhealthy: http://127.0.0.1:") && out.contains("/healthz"), "{out}");
    let (code, out) = healthcheck(&["--url", &format!("http://127.0.0.1:{}/healthz", free_port())]);
    assert_eq!(code, Some(1), "nothing listens: {out}");
    let (code, out) = healthcheck(&["--config", "/nonexistent/poller.toml"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("no --url"), "{out}");
}
