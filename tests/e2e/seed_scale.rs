//! Issue 20: the seed's fleet at its full width, through the real binary on fauxqs.
//! - 2,000 pollers (ten pipelines held at 200 each, AWS's largest `pollers.min`) all long-poll at
//!   once (a connection each), take a burst sent while they wait, and on SIGTERM drain within the
//!   grace period: every message processed once and deleted, no long poll abandoned, exit 0.
//! - The open-file limit such a fleet needs: the service raises its soft limit to the hard one at
//!   start, and names the shortfall (in the log and in `check`) when the hard limit is too low.

use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::time::Duration;

use crate::common::*;
use aws_sdk_sqs::types::QueueAttributeName;

const PIPELINES: usize = 10;
const POLLERS_EACH: usize = 200;
const MESSAGES_EACH: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_2000_pollers_long_polls_at_once_and_drains_on_sigterm_within_the_grace_period() {
    let sqs = sqs().await;
    let w = worker(|_| Reply { delay: Duration::from_millis(300), ..Reply::ok("") }).await;
    let mut queues = Vec::new();
    let mut pipelines = String::new();
    for i in 0..PIPELINES {
        // small messages, as the seed's: the byte budget then covers 200 receives per pipeline
        let queue = sqs.queue(&format!("fleet{i}"), &[(QueueAttributeName::MaximumMessageSize, "16384")]).await;
        // room for every poller's receive (200 × 10 messages): none waits for room
        pipelines += &http_pipeline_with_target(
            &format!("fleet{i}"),
            &queue,
            &w.url,
            "max_concurrency = 100",
            &format!(
                "[pipelines.pollers]\nmin = {POLLERS_EACH}\nmax = {POLLERS_EACH}\nwait_time_secs = 20\n[pipelines.batch]\nsize = 50\nwindow_ms = 200\n"
            ),
        );
        queues.push(queue);
    }
    let grace = 30;
    let p = start_poller(&sqs, grace, &pipelines).await;
    let total = (PIPELINES * POLLERS_EACH) as f64;
    eventually("2,000 pollers running", Duration::from_secs(60), || async {
        let text = p.metrics_text().await;
        (0..PIPELINES)
            .map(|i| metric_value(&text, &format!("sqs_poller_pollers{{pipeline=\"fleet{i}\"}}")))
            .sum::<f64>()
            == total
    })
    .await;
    // every poller holds a long poll open: a connection (descriptor) each
    eventually("2,000 long polls open", Duration::from_secs(60), || async { p.open_fds() >= 2000 }).await;
    let fds_at_rest = p.open_fds();
    let rss = p.peak_rss_mib();
    let mut sent = 0;
    for q in &queues {
        let bodies: Vec<String> = (0..MESSAGES_EACH).map(|k| format!("{q}-{k}")).collect();
        sqs.send_bodies(q, &bodies).await;
        sent += bodies.len();
    }
    // some of the burst is in the worker when the signal comes
    eventually("the first batches reach the worker", Duration::from_secs(30), || async { !w.deliveries().is_empty() })
        .await;
    let (status, took, log) = p.stop().await;
    assert!(status.success(), "exit {status:?}\n{log}");
    // the drain finished on its own, not cut off at the end of the grace period (the wall-clock
    // figure is printed: on a loaded machine it moves)
    println!("2,000 pollers drained in {took:?} (grace {grace} s)");
    assert!(
        !log.contains("drain did not finish"),
        "the drain ran into the {grace} s grace period's end ({took:?})\n{log}"
    );
    assert!(!log.contains("given up"), "a long poll was abandoned at shutdown:\n{log}");
    let times: HashMap<String, usize> = w.times_delivered();
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    let (mut visible, mut hidden) = (0, 0);
    for q in &queues {
        let (v, h) = sqs.counts(q).await;
        (visible, hidden) = (visible + v, hidden + h);
    }
    // nothing left hidden (the drain released what it did not process), nothing lost
    assert_eq!(hidden, 0, "messages left hidden after the drain");
    assert_eq!(times.len() + visible as usize, sent, "every message processed or back in its queue");
    eprintln!(
        "2,000 pollers: {fds_at_rest} descriptors at rest, peak RSS {rss:.0} MiB (debug build), drain {took:?}, \
         {} of {sent} processed before exit",
        times.len()
    );
}

fn seed_check(soft: u64, hard: u64) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"));
    c.args(["check", "--config", "config/seed-provisioned.toml"]).current_dir(env!("CARGO_MANIFEST_DIR"));
    limit_open_files(&mut c, soft, hard);
    c.output().unwrap()
}

/// Runs `command` with the open-file limit (soft, hard).
fn limit_open_files(command: &mut std::process::Command, soft: u64, hard: u64) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec
    unsafe {
        command.pre_exec(move || {
            let l = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// (soft, hard) "Max open files" of a running process.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].parse().unwrap(), f[4].parse().unwrap())
}

#[test]
fn check_names_the_descriptors_the_seed_fleet_needs_and_a_hard_limit_below_them() {
    let (_, hard_here) = open_file_limits(std::process::id());
    let ok = seed_check(hard_here.min(1024), hard_here);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    // 2,000 pollers, 5,000 Lambda invocations in flight, and the service's own
    assert!(text.contains("descriptors up to 7144 at full scale"), "{text}");
    let short = seed_check(512, 512);
    let text = String::from_utf8_lossy(&short.stdout);
    assert!(short.status.success(), "a low limit is a warning, not an invalid configuration: {text}");
    assert!(text.contains("warning: the open-file limit (ulimit -n) is 512, below the 7144 descriptors"), "{text}");
    assert!(text.contains("ulimit -n 7144"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_start_the_soft_open_file_limit_is_raised_to_the_hard_one_and_a_short_hard_limit_is_logged() {
    let sqs = sqs().await;
    let queue = sqs.queue("nofile", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("poller.toml");
    std::fs::write(
        &config,
        format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [[pipelines]]\nname = \"wide\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nmax = 2000\n\
             [pipelines.target]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\n",
            sqs.endpoint
        ),
    )
    .unwrap();
    let (_, hard_here) = open_file_limits(std::process::id());
    for (soft, hard) in [(256, hard_here), (512, 512)] {
        let log = dir.path().join(format!("log-{hard}"));
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"));
        c.args(["run", "--config"])
            .arg(&config)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap());
        limit_open_files(&mut c, soft, hard);
        let mut child = c.spawn().unwrap();
        let pid = child.id();
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        eventually("the service started", Duration::from_secs(15), || async { read().contains("sqs-poller started") })
            .await;
        let limits = open_file_limits(pid);
        let text = read();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(limits, (hard, hard), "the soft limit raised to the hard one\n{text}");
        let short = hard < 2000;
        assert_eq!(
            text.contains("the open-file limit (ulimit -n) is 512, below the"),
            short,
            "warned exactly when the hard limit is short (hard {hard})\n{text}"
        );
        if soft < hard {
            assert!(text.contains("raised the open-file limit to its hard limit"), "{text}");
        }
    }
}
