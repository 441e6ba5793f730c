//! SIGTERM: drain within the grace period, delete only what succeeded, leave nothing hidden.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_batch_finishes_or_releases_everything() {
    let sqs = sqs().await;
    let queue = sqs.queue("sigterm", &[]).await;
    let bodies: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    // the first batch finishes within the grace period, the others do not
    let calls = Arc::new(AtomicUsize::new(0));
    let worker = {
        let calls = calls.clone();
        worker(move |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Reply {
                status: 200,
                body: String::new(),
                delay: if n == 0 { Duration::from_millis(1500) } else { Duration::from_secs(30) },
            }
        })
        .await
    };
    let grace = 4;
    let poller = start_poller(
        &sqs,
        grace,
        &http_pipeline(
            "sigterm",
            &queue,
            &worker.url,
            "max_concurrency = 2\ntimeout_secs = 60\n[pipelines.pollers]\nmin = 2\nmax = 2\nwait_time_secs = 2\n[pipelines.batch]\nsize = 10",
        ),
    )
    .await;
    eventually("two batches in the worker", Duration::from_secs(10), || async { worker.deliveries().len() >= 2 }).await;

    let (status, took, log) = poller.stop().await;
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    // the exit did not wait for the 30 s batch (the grace's exact bound: tests/offline/simulation.rs,
    // under simulated time; a wall-clock bound here would fail on a loaded machine)
    assert!(took < Duration::from_secs(30), "exit took {took:?} (grace {grace} s): it waited for the batch");

    // nothing is left hidden: every message not deleted is visible at once
    let (visible, hidden) = sqs.counts(&queue).await;
    assert_eq!(hidden, 0, "messages left invisible after shutdown; log:\n{log}");

    let answered: HashSet<String> = worker
        .deliveries()
        .iter()
        .filter(|d| d.answered)
        .flat_map(|d| d.records().iter().map(|r| r["body"].as_str().unwrap().to_string()).collect::<Vec<_>>())
        .collect();
    assert_eq!(answered.len(), 10, "the first batch succeeded within the grace period");
    let remaining: HashSet<String> = sqs.take_all(&queue).await.iter().map(|m| m.body().unwrap().to_string()).collect();
    assert_eq!(visible as usize, remaining.len());
    assert!(answered.is_disjoint(&remaining), "a processed message was not deleted");
    let all: HashSet<String> = answered.union(&remaining).cloned().collect();
    assert_eq!(all, bodies.into_iter().collect::<HashSet<_>>(), "none lost, none deleted without success");
    assert!(log.contains("releasing an unfinished batch"), "{log}");
}

/// Issue 36: an idle service stops at once on SIGTERM: its open 20 s long polls are given up, not
/// waited out (before, it stopped when they returned: up to 20 s). A receive given up by its
/// client may still take messages on the server — LocalStack, as SQS, hands messages to a long
/// poll until its wait ends — and they stay hidden for the visibility timeout that receive asked
/// for. Receives ask for a short one (lease::RECEIVE_VISIBILITY, 30 s), so on a queue whose own
/// timeout is 12 hours the messages sent just after the stop still reach another consumer: none
/// is lost, none hidden for the queue's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_service_stops_at_once_and_what_its_given_up_long_polls_took_comes_back() {
    let sqs = localstack().await;
    let queue = sqs.queue("idle-stop", &[(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "43200")]).await;
    let worker = worker(|_| Reply::ok("")).await;
    let pollers = "[pipelines.pollers]\nmin = 4\nmax = 4\nwait_time_secs = 20";
    let poller = start_poller(&sqs, 30, &http_pipeline("idle-stop", &queue, &worker.url, pollers)).await;
    poller.wait_metric("sqs_poller_pollers{pipeline=\"idle-stop\"}", 4.0, Duration::from_secs(10)).await;
    // the four long polls are open (each receive is counted when it is sent)
    poller
        .wait_metric(
            "sqs_poller_sqs_requests_total{pipeline=\"idle-stop\",operation=\"ReceiveMessage\",outcome=\"ok\"}",
            0.0,
            Duration::from_secs(1),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, took, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert!(took < Duration::from_secs(20), "waited {took:?}: the 20 s long polls were waited out\n{log}");
    assert!(!log.contains("grace period"), "an idle drain reached the grace period:\n{log}");

    // sent while the given-up long polls are still open on the server: some may take them
    let bodies: Vec<String> = (0..5).map(|i| format!("after the stop {i}")).collect();
    sqs.send_each(&queue, &bodies).await;
    let seen = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    eventually(
        "another consumer receives all five (none hidden for the queue's 12 hours)",
        Duration::from_secs(60),
        || {
            let (client, queue, seen) = (sqs.client.clone(), queue.clone(), seen.clone());
            async move {
                let out = client
                    .receive_message()
                    .queue_url(queue)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await;
                let bodies = out.ok().and_then(|o| o.messages).unwrap_or_default().into_iter().filter_map(|m| m.body);
                let mut seen = seen.lock().unwrap();
                seen.extend(bodies);
                seen.len() == 5
            }
        },
    )
    .await;
}

/// A second SIGTERM during the drain: the operator says "now". Batches in flight are given up
/// and every outstanding message released at once; the process exits long before the grace
/// period, with nothing left hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_releases_everything_at_once() {
    let run = Scenario::new("sigterm2")
        .bodies((0..20).map(|i| format!("t{i}")))
        .pipeline("max_concurrency = 2\ntimeout_secs = 120\n[pipelines.pollers]\nmin = 1\nmax = 1\nwait_time_secs = 1\n[pipelines.batch]\nsize = 10")
        .grace_secs(30)
        .run(|_| Reply { status: 200, body: String::new(), delay: Duration::from_secs(60) })
        .await;
    let Run { sqs, queue, worker, poller, .. } = run;
    eventually("two batches in the worker", Duration::from_secs(10), || async { worker.deliveries().len() >= 2 }).await;
    poller.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, took, log) = poller.stop().await; // the second SIGTERM
    let took = took + Duration::from_millis(300);
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    // it did not wait for the 30 s grace (nor the worker's 60 s)
    assert!(took < Duration::from_secs(30), "exit {took:?} after the first SIGTERM, grace period 30 s; log:\n{log}");
    assert!(log.contains("second signal"), "{log}");
    // all twenty visible again at once, none deleted
    let back = sqs.take_all(&queue).await.len();
    assert_eq!(back, 20, "every message released; log:\n{log}");
}

/// SIGKILL mid-run, then a restart: every message that was not deleted comes back once its
/// visibility (as the lease keeper last extended it) runs out, and the new process finishes
/// them. None is lost; the only ones processed twice are those in flight at the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_and_a_restart_no_message_is_lost() {
    let sqs = sqs().await;
    let queue = sqs.queue("crash", &[(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "3")]).await;
    let bodies: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let worker = worker(|_| Reply { status: 200, body: String::new(), delay: Duration::from_millis(400) }).await;
    let pipeline = http_pipeline(
        "crash",
        &queue,
        &worker.url,
        "max_concurrency = 4\n[pipelines.pollers]\nmin = 2\nmax = 2\nwait_time_secs = 1\n[pipelines.batch]\nsize = 10",
    );
    let mut first = start_poller(&sqs, 10, &pipeline).await;
    eventually("some batches done", Duration::from_secs(20), || async { worker.deliveries().len() >= 4 }).await;
    first.child.start_kill().expect("SIGKILL");
    first.child.wait().await.unwrap();
    let delivered_before = worker.times_delivered().len();
    assert!(delivered_before < 200, "the kill came before the end ({delivered_before} delivered)");

    let second = start_poller(&sqs, 10, &pipeline).await;
    eventually("every message processed", Duration::from_secs(60), || async { worker.times_delivered().len() == 200 })
        .await;
    eventually("the queue is empty on the emulator", Duration::from_secs(20), || async {
        sqs.counts(&queue).await == (0, 0)
    })
    .await;
    let twice = worker.times_delivered().values().filter(|&&n| n > 1).count();
    // at most what the first process held when it died: lease.max_outstanding = 4 × 10
    assert!(twice <= 40, "{twice} processed twice");
    println!("SIGKILL after {delivered_before} of 200; {twice} processed again after the restart");
    let (status, _, log) = second.stop().await;
    assert!(status.success(), "{log}");
}
