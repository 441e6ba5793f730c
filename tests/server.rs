//! The metrics server defends itself: thousands of idle connections do not pile up descriptors,
//! and it keeps answering once the idle ones have timed out.

mod common;

use std::time::{Duration, Instant};

use common::*;

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
    assert!(open_descriptors(pid) <= before + 16, "the timed-out connections were closed");
    drop(idle);
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
