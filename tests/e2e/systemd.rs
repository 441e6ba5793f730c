//! The plain-EC2 install: `deploy/systemd/sqs-poller.service` passes `systemd-analyze verify`,
//! carries the hardening and timeouts the manual promises (docs/src/deploy.md), and the service speaks systemd's
//! readiness protocol (READY=1 once its queues are found, RELOADING=1 … READY=1 around a SIGHUP
//! reload, STOPPING=1 at the drain) on the `NOTIFY_SOCKET` a test binds.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::common::*;

const UNIT: &str = "deploy/systemd/sqs-poller.service";

fn unit() -> String {
    std::fs::read_to_string(format!("{}/{UNIT}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary under test
    let text = unit().replace("/usr/local/bin/sqs-poller", env!("CARGO_BIN_EXE_sqs-poller"));
    let path = dir.path().join("sqs-poller.service");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap_or_else(|e| {
        panic!("cannot run systemd-analyze ({e}): install the Debian package `systemd` (apt-get install systemd)")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    // warnings about the host's own units are not ours
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("sqs-poller")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn the_unit_is_hardened_and_its_stop_timeout_matches_the_grace_period() {
    let unit = unit();
    let key = |k: &str| unit.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(str::to_string);
    assert_eq!(key("Type").as_deref(), Some("notify"));
    assert_eq!(key("ExecReload").as_deref(), Some("/bin/kill -HUP $MAINPID"));
    // the shipped configuration's grace period (config/poller.toml) and the stop timeout agree
    let config = std::fs::read_to_string(format!("{}/config/poller.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let grace = config
        .lines()
        .find_map(|l| l.strip_prefix("grace_period_secs = "))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .to_string();
    assert_eq!(key("TimeoutStopSec"), Some(grace));
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestartPreventExitStatus", "2"),
    ] {
        assert_eq!(key(k).as_deref(), Some(v), "{k}");
    }
}

fn next_message(socket: &UnixDatagram, within: Duration) -> String {
    socket.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("no notification within {within:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_tells_systemd_when_it_is_ready_reloading_and_stopping() {
    let sqs = sqs().await;
    let queue = sqs.queue("notify", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let pipeline =
        http_pipeline("notified", &queue, "http://127.0.0.1:9/", "[pipelines.pollers]\nwait_time_secs = 1\n");
    let started = Instant::now();
    let mut poller =
        spawn_poller_with_env(&sqs.endpoint, 10, "", &pipeline, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let socket = tokio::task::spawn_blocking(move || {
        let ready = next_message(&socket, Duration::from_secs(15));
        (socket, ready)
    });
    let (socket, ready) = socket.await.unwrap();
    assert_eq!(ready, "READY=1");
    poller.wait_listening().await;
    assert_eq!(
        http_get(&format!("{}/readyz", poller.listen)).await.map(|r| r.0),
        Some(200),
        "READY=1 came after /readyz"
    );
    println!("READY=1 {:?} after start", started.elapsed());
    poller.sighup();
    let (socket, reload) = tokio::task::spawn_blocking(move || {
        let a = next_message(&socket, Duration::from_secs(10));
        let b = next_message(&socket, Duration::from_secs(10));
        (socket, (a, b))
    })
    .await
    .unwrap();
    assert_eq!(reload, ("RELOADING=1".to_string(), "READY=1".to_string()));
    poller.sigterm();
    let stopping = tokio::task::spawn_blocking(move || next_message(&socket, Duration::from_secs(10))).await.unwrap();
    assert_eq!(stopping, "STOPPING=1");
    let status = tokio::time::timeout(Duration::from_secs(20), poller.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{}", poller.log_text());
}
