//! The container image, built without a registry by `scripts/image.sh build` (a Debian base made by
//! mmdebstrap, the binary copied in, podman with runc) and run here: it says its version, checks its
//! shipped configuration, and in a read-only container as its numeric user it processes messages
//! from the host's SQS emulator, answers its health check without curl, logs JSON, and exits 0 on
//! SIGTERM by itself within its grace (`podman stop` would kill it, exit 137, past its timeout).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

fn image() -> String {
    std::env::var("SQS_POLLER_IMAGE").unwrap_or_else(|_| "localhost/sqs-poller:latest".into())
}

/// podman with the project's settings (runc, the ulimits, storage in .local/podman).
async fn podman(args: &[&str]) -> (i32, String, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/image.sh");
    let out = tokio::process::Command::new(script).arg("podman").args(args).output().await.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

async fn require_image() -> String {
    let image = image();
    let (code, _, err) = podman(&["image", "exists", &image]).await;
    assert_eq!(
        code, 0,
        "the image {image} is not built: run `scripts/image.sh build --profile dev` (scripts/test.sh does, before \
         the tests; it installs podman, runc and mmdebstrap from Debian's packages). {err}"
    );
    image
}

#[tokio::test]
async fn the_image_says_its_version_and_checks_its_shipped_configuration() {
    let image = require_image().await;
    let (code, out, err) = podman(&["run", "--rm", "--read-only", &image, "--version"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("sqs-poller {}", env!("CARGO_PKG_VERSION")));

    let queue = "QUEUE_URL=https://sqs.us-east-1.amazonaws.com/123456789012/orders";
    let (code, out, err) = podman(&["run", "--rm", "--read-only", "-e", queue, &image, "check"]).await;
    assert_eq!(code, 0, "check of /etc/sqs-poller/poller.toml: {out}{err}");
    assert!(out.contains("/etc/sqs-poller/poller.toml") && out.contains("orders"), "{out}");
    // without QUEUE_URL the shipped configuration names what is missing
    let (code, out, err) = podman(&["run", "--rm", "--read-only", &image, "check"]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("QUEUE_URL"), "{err}");

    let format = "{{json .Config.User}} {{json .HealthCheck.Test}}";
    let (_, config, _) = podman(&["image", "inspect", "--format", format, &image]).await;
    assert_eq!(config.trim(), r#""10001:10001" ["CMD","/usr/local/bin/sqs-poller","healthcheck"]"#);
}

#[tokio::test]
async fn the_image_processes_messages_reports_healthy_and_stops_within_its_grace_on_sigterm() {
    let image = require_image().await;
    let sqs = sqs().await;
    let queue = sqs.queue("image", &[]).await;
    let worker = worker(|_| Reply::ok("")).await;
    let bodies: Vec<String> = (0..30).map(|i| format!("{{\"n\":{i}}}")).collect();
    sqs.send_bodies(&queue, &bodies).await;

    let name = unique("sqs-poller-image");
    let port = free_port().to_string();
    let env = [
        format!("QUEUE_URL={queue}"),
        format!("WORKER_URL={}", worker.url),
        format!("AWS_ENDPOINT_URL_SQS={}", sqs.endpoint),
        format!("METRICS_PORT={port}"),
        "GRACE_PERIOD_SECS=10".into(),
        "AWS_ACCESS_KEY_ID=test".into(),
        "AWS_SECRET_ACCESS_KEY=test".into(),
    ];
    // the health check runs when asked (below), not on a systemd timer: this host has no systemd
    let mut args = vec!["run", "--detach", "--name", &name, "--network", "host", "--read-only"];
    args.extend(["--health-interval", "disable"]);
    for e in &env {
        args.extend(["--env", e.as_str()]);
    }
    args.push(&image);
    let (code, out, err) = podman(&args).await;
    assert_eq!(code, 0, "podman run: {out}{err}");
    let container = Container(name.clone());

    eventually("the container's sqs-poller deletes the 30 messages", Duration::from_secs(60), || async {
        let (_, running, _) = podman(&["inspect", "--format", "{{.State.Running}}", &name]).await;
        assert_eq!(running.trim(), "true", "the container stopped; its logs:\n{}", container.logs().await);
        sqs.counts(&queue).await == (0, 0) && worker.deliveries().iter().map(|d| d.records().len()).sum::<usize>() >= 30
    })
    .await;
    let (code, out, err) = podman(&["healthcheck", "run", &name]).await;
    assert_eq!(code, 0, "the image's HEALTHCHECK (sqs-poller healthcheck): {out}{err}");

    // SIGTERM, then SIGKILL after 60 s: exit code 0 means it drained and left by itself
    let (code, out, err) = podman(&["stop", "--time", "60", &name]).await;
    assert_eq!(code, 0, "podman stop: {out}{err}");
    let (_, state, _) = podman(&["inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", &name]).await;
    let logs = container.logs().await;
    assert_eq!(state.trim(), "0 false", "exit code after SIGTERM; logs:\n{logs}");
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the container logged nothing");
    for line in &lines {
        let record: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(record.get("level").is_some() && record.get("timestamp").is_some(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("shut")), "no shutdown in the logs:\n{}", lines.join("\n"));
}

/// A container that is removed when the test ends, passed or failed.
struct Container(String);

impl Container {
    /// What the service wrote (stdout and stderr; podman keeps them apart only by stream).
    async fn logs(&self) -> String {
        let (_, out, err) = podman(&["logs", &self.0]).await;
        out + &err
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/image.sh");
        let _ = std::process::Command::new(script).args(["podman", "rm", "--force", &self.0]).output();
    }
}
