//! Worker processes the service starts (`command` and `runtime-api` targets) are its to run and
//! to stop: in a process group of their own (Ctrl-C in the terminal drains them instead of
//! killing them), stopped in order at shutdown (SIGTERM, then SIGKILL), killed with their own
//! children, and with their output capped (a worker that floods stdout fails its batch; the
//! service's memory stays flat).

use std::time::{Duration, Instant};

use crate::common::*;

fn quoted(args: &[&str]) -> String {
    args.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
}

fn command_pipeline(name: &str, queue: &str, program: &str, args: &[&str], timeout_secs: u64) -> String {
    format!(
        "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n\
         [pipelines.batch]\nsize = 1\n[pipelines.target]\ntype = \"command\"\nprogram = \"{program}\"\nargs = [{}]\n\
         timeout_secs = {timeout_secs}\n[pipelines.retry]\ninitial_backoff_secs = 60\nmax_backoff_secs = 60\n",
        quoted(args)
    )
}

fn runtime_api_pipeline(name: &str, queue: &str, program: &str, args: &[&str]) -> String {
    format!(
        "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n\
         [pipelines.batch]\nsize = 1\n[pipelines.target]\ntype = \"runtime-api\"\nprogram = \"{program}\"\nargs = [{}]\n\
         workers = 1\ntimeout_secs = 20\n[pipelines.retry]\ninitial_backoff_secs = 60\nmax_backoff_secs = 60\n",
        quoted(args)
    )
}

async fn wait_exit(poller: &mut Poller, within: Duration) -> (std::process::ExitStatus, Duration) {
    let t = Instant::now();
    let status = tokio::time::timeout(within, poller.child.wait())
        .await
        .unwrap_or_else(|_| panic!("sqs-poller did not exit within {within:?}; log:\n{}", poller.log_text()))
        .unwrap();
    (status, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_floods_stdout_fails_its_batch_and_memory_stays_flat() {
    let sqs = sqs().await;
    let queue = sqs.queue("flood", &[]).await;
    sqs.send_bodies(&queue, &["endless output".to_string()]).await;
    // `yes` writes about a gigabyte a second until it is stopped
    let poller = start_poller(&sqs, 10, &command_pipeline("flood", &queue, "yes", &[], 5)).await;
    poller.wait_metric("sqs_poller_messages_failed_total{pipeline=\"flood\"}", 1.0, Duration::from_secs(20)).await;
    let peak = poller.peak_rss_mib();
    assert!(peak < 100.0, "the service's peak RSS reached {peak:.0} MiB while the worker flooded its stdout");
    assert_eq!(poller.metric("sqs_poller_worker_output_overflows_total{pipeline=\"flood\"}").await, 1.0);
    assert_eq!(sqs.counts(&queue).await, (0, 1), "the message waits for its retry, not deleted");
    let log = poller.log_text();
    assert!(log.contains("more than 6 MiB"), "{log}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_drains_command_workers_instead_of_killing_them() {
    let sqs = sqs().await;
    let queue = sqs.queue("ctrlc-cmd", &[]).await;
    sqs.send_bodies(&queue, &["three seconds of work".to_string()]).await;
    let pipeline = command_pipeline("cmd", &queue, "sh", &["-c", "cat > /dev/null; sleep 3"], 20);
    let mut poller = start_poller(&sqs, 15, &pipeline).await;
    poller.wait_metric("sqs_poller_messages_dispatched_total{pipeline=\"cmd\"}", 1.0, Duration::from_secs(20)).await;
    poller.ctrl_c();
    let (status, _) = wait_exit(&mut poller, Duration::from_secs(30)).await;
    let log = poller.log_text();
    assert!(status.success(), "{log}");
    assert!(!log.contains("exited with signal"), "the worker was killed by the Ctrl-C:\n{log}");
    assert_eq!(sqs.counts(&queue).await, (0, 0), "the batch finished during the drain and was deleted:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_drains_runtime_api_workers_instead_of_killing_them() {
    let python = python_with_awslambdaric();
    let sqs = sqs().await;
    let queue = sqs.queue("ctrlc-runtime", &[]).await;
    sqs.send_bodies(&queue, &["SLOW".to_string()]).await;
    let pipeline = runtime_api_pipeline(
        "runtime",
        &queue,
        &python.display().to_string(),
        &["-m", "awslambdaric", "examples.lambda_handler.handler"],
    );
    let mut poller = start_poller(&sqs, 15, &pipeline).await;
    poller
        .wait_metric("sqs_poller_messages_dispatched_total{pipeline=\"runtime\"}", 1.0, Duration::from_secs(20))
        .await;
    // let the worker take the batch and start its three seconds
    tokio::time::sleep(Duration::from_millis(500)).await;
    poller.ctrl_c();
    let (status, _) = wait_exit(&mut poller, Duration::from_secs(30)).await;
    let log = poller.log_text();
    assert!(status.success(), "{log}");
    assert!(!log.contains("during the batch"), "the worker died with its batch:\n{log}");
    assert_eq!(sqs.counts(&queue).await, (0, 0), "the batch finished during the drain and was deleted:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_command_is_killed_with_its_children() {
    let sqs = sqs().await;
    let queue = sqs.queue("orphans", &[]).await;
    sqs.send_bodies(&queue, &["hang".to_string()]).await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let script = format!("sleep 1000 & echo $! > {}; wait", pid_file.display());
    let poller = start_poller(&sqs, 10, &command_pipeline("orphans", &queue, "sh", &["-c", &script], 1)).await;
    poller.wait_metric("sqs_poller_messages_failed_total{pipeline=\"orphans\"}", 1.0, Duration::from_secs(20)).await;
    let child: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    eventually("the timed-out command's own child process is gone", Duration::from_secs(5), || async {
        !process_alive(child)
    })
    .await;
    assert!(poller.log_text().contains("timed out after 1 s"), "{}", poller.log_text());
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_api_workers_get_sigterm_then_sigkill_at_shutdown() {
    let sqs = sqs().await;
    let polite_queue = sqs.queue("stop-polite", &[]).await;
    let stubborn_queue = sqs.queue("stop-stubborn", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let polite_pid = dir.path().join("polite.pid");
    let stubborn_pid = dir.path().join("stubborn.pid");
    // stand-ins for runtimes that never ask for work: one leaves on SIGTERM, one ignores it
    let polite = format!(
        "echo $$ > {}; trap 'echo polite worker got SIGTERM >&2; exit 0' TERM; while true; do sleep 0.1; done",
        polite_pid.display()
    );
    let stubborn = format!("echo $$ > {}; trap '' TERM; while true; do sleep 0.1; done", stubborn_pid.display());
    let pipelines = [
        runtime_api_pipeline("polite", &polite_queue, "sh", &["-c", &polite]),
        runtime_api_pipeline("stubborn", &stubborn_queue, "sh", &["-c", &stubborn]),
    ]
    .concat();
    let mut poller = start_poller(&sqs, 10, &pipelines).await;
    let read_pid = |p: &std::path::Path| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u32>().ok());
    eventually("both workers started", Duration::from_secs(10), || async {
        read_pid(&polite_pid).is_some() && read_pid(&stubborn_pid).is_some()
    })
    .await;
    let (polite, stubborn) = (read_pid(&polite_pid).unwrap(), read_pid(&stubborn_pid).unwrap());
    poller.sigterm();
    let (status, took) = wait_exit(&mut poller, Duration::from_secs(20)).await;
    let log = poller.log_text();
    assert!(status.success(), "{log}");
    // the drain finished on its own within the grace period (not cut off at its end)
    assert!(!log.contains("drain did not finish"), "the exit took {took:?}, into the 10 s grace period's end:\n{log}");
    assert!(log.contains("polite worker got SIGTERM"), "{log}");
    assert!(log.contains("did not stop within"), "the stubborn worker's SIGKILL is logged:\n{log}");
    assert!(!process_alive(polite), "the polite worker is gone");
    eventually("the stubborn worker is gone", Duration::from_secs(3), || async { !process_alive(stubborn) }).await;
}
