//! The lease at its edges, on the simulated queue under paused time, where the order of calls
//! and their timing can be held exactly (the emulators answer too fast and too leniently to show
//! these): a receive whose answer is slow, an extension still in flight when its lease is
//! settled, receipt handles SQS rejects for good, a heartbeat round SQS does not answer.
//!
//! `Witnessed` wraps the simulation: it delays what a test asks it to delay and records every
//! visibility change it was sent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use bytes::Bytes;
use sqs_poller::aws::SqsMessage;
use sqs_poller::dispatch::{Invocation, Target};
use sqs_poller::lease::{LeaseKeeper, ReceiveStamp};
use sqs_poller::metrics::PipelineMetrics;
use sqs_poller::pipeline::{self, PipelineParts};
use sqs_poller::sim::{SimConfig, SimQueue};
use sqs_poller::sqs::{BoxFuture, EntryFailure, Outgoing, Queue, SqsError};
use tokio::time::Instant;

/// One visibility change call: when it was sent, its `(receipt handle, seconds)` entries.
type SentChange = (Instant, Vec<(String, i32)>);

/// The simulation, with delays on purpose and a log of the visibility changes sent.
struct Witnessed {
    inner: Arc<SimQueue>,
    /// The answer of a receive comes this long after the simulation took the messages.
    receive_answer_delay: Duration,
    /// A visibility change that hides (seconds > 0) takes this long to land.
    extension_delay: Duration,
    /// Visibility changes for these handles are never answered.
    unanswered: Mutex<HashSet<String>>,
    /// Every visibility change call: when it was sent and its entries.
    sent: Mutex<Vec<SentChange>>,
}

impl Witnessed {
    fn new(inner: Arc<SimQueue>) -> Self {
        Witnessed {
            inner,
            receive_answer_delay: Duration::ZERO,
            extension_delay: Duration::ZERO,
            unanswered: Mutex::default(),
            sent: Mutex::default(),
        }
    }

    fn changes_sent(&self) -> usize {
        self.sent.lock().unwrap().len()
    }
}

impl Queue for Witnessed {
    fn url(&self) -> &str {
        self.inner.url()
    }
    fn region(&self) -> String {
        self.inner.region()
    }
    fn receive(
        &self,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> BoxFuture<'_, Result<Vec<SqsMessage>, SqsError>> {
        Box::pin(async move {
            let got = self.inner.receive(wait, visibility).await;
            if got.as_ref().is_ok_and(|m| !m.is_empty()) {
                tokio::time::sleep(self.receive_answer_delay).await;
            }
            got
        })
    }
    fn attributes<'a>(
        &'a self,
        names: &'a [QueueAttributeName],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, SqsError>> {
        self.inner.attributes(names)
    }
    fn delete<'a>(&'a self, receipts: &'a [&'a str]) -> BoxFuture<'a, Vec<EntryFailure>> {
        self.inner.delete(receipts)
    }
    fn change_visibility<'a>(&'a self, entries: &'a [(&'a str, i32)]) -> BoxFuture<'a, Vec<EntryFailure>> {
        Box::pin(async move {
            self.sent
                .lock()
                .unwrap()
                .push((Instant::now(), entries.iter().map(|(h, s)| (h.to_string(), *s)).collect()));
            let hang = {
                let unanswered = self.unanswered.lock().unwrap();
                entries.iter().any(|(h, _)| unanswered.contains(*h))
            };
            if hang {
                std::future::pending::<()>().await;
            }
            if entries.iter().any(|(_, s)| *s > 0) {
                tokio::time::sleep(self.extension_delay).await;
            }
            self.inner.change_visibility(entries).await
        })
    }
    fn send<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<(), SqsError>> {
        self.inner.send(message)
    }
}

fn sim(name: &str, visibility: Duration) -> Arc<SimQueue> {
    Arc::new(SimQueue::new(SimConfig::new(&format!("http://sim/000000000000/{name}"), visibility, 7)))
}

fn keeper(queue: Arc<dyn Queue>, visibility: Duration) -> Arc<LeaseKeeper> {
    Arc::new(LeaseKeeper::new(
        queue,
        visibility,
        Duration::from_secs(3600),
        100,
        PipelineMetrics::new("edges", 1, 1, 1).lease,
    ))
}

/// Receives one message from the simulation itself and puts it under `keeper`'s lease, sent at
/// `sent_at`; returns its id and receipt handle.
async fn lease_one(keeper: &LeaseKeeper, sim: &SimQueue, sent_at: Instant) -> (String, String) {
    let got = receive_one(sim).await;
    let (id, rh) = (got[0].message_id().unwrap().to_string(), got[0].receipt_handle().unwrap().to_string());
    keeper.admit(
        keeper.reserve().await,
        [(id.as_str(), rh.as_str())],
        ReceiveStamp { sent_at, visibility: keeper.visibility() },
    );
    (id, rh)
}

/// One message from the simulation (which, as a standard queue, may skip visible messages in a
/// receive: its long poll tries again every 100 ms within the second).
async fn receive_one(sim: &SimQueue) -> Vec<SqsMessage> {
    let got = sim.receive(Duration::from_secs(1), None).await.unwrap();
    assert_eq!(got.len(), 1, "one message received");
    got
}

/// The stamp of a receive sent at `at` with the keeper's visibility timeout.
fn stamp_at(at: Instant, keeper: &LeaseKeeper) -> ReceiveStamp {
    ReceiveStamp { sent_at: at, visibility: keeper.visibility() }
}

fn heartbeat(keeper: &Arc<LeaseKeeper>) -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    let (k, s) = (keeper.clone(), stop.clone());
    tokio::spawn(async move { k.heartbeat(s).await });
    stop
}

/// A retry backoff decided while the heartbeat's extension of the same lease is on its way: the
/// backoff must be the last word. Before, the let-go landed first and the extension after it hid
/// the message for another whole visibility timeout (visible at 17 s instead of 10 s here).
#[tokio::test(start_paused = true)]
async fn an_extension_in_flight_never_lands_after_the_settlement() {
    let vis = Duration::from_secs(10);
    let sim = sim("in-flight", vis);
    sim.put("a", None);
    let mut witnessed = Witnessed::new(sim.clone());
    witnessed.extension_delay = Duration::from_secs(2);
    let queue = Arc::new(witnessed);
    let keeper = keeper(queue.clone(), vis);
    let t0 = Instant::now();
    let (id, _) = lease_one(&keeper, &sim, t0).await;
    let stop = heartbeat(&keeper);
    // the extension goes out at 5 s and lands at 7 s; the retry backoff is decided at 5.5 s
    tokio::time::sleep_until(t0 + Duration::from_millis(5500)).await;
    assert_eq!(queue.changes_sent(), 1, "the extension is on its way");
    keeper.release_after(&[(id.as_str(), 3)]).await;
    stop.cancel();
    let sent = queue.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[1].0 >= t0 + Duration::from_secs(7), "the let-go waited for the extension: {sent:?}");
    // visible 3 s after the let-go, not a visibility timeout after the extension
    tokio::time::sleep_until(t0 + Duration::from_secs(11)).await;
    let again = sim.receive(Duration::from_secs(1), None).await.unwrap();
    assert_eq!(again.len(), 1, "the message is visible again after its backoff");
}

/// Issue 30: an extension still on the wire when its round reached the round limit (a quarter of
/// the visibility timeout, 2.5 s here) was forgotten: a let-go right after went first, and the
/// extension landed after it, hiding the message for another visibility timeout. Now the
/// settlement waits for the call itself, however late it answers.
#[tokio::test(start_paused = true)]
async fn an_extension_past_its_round_limit_never_lands_after_the_settlement() {
    let vis = Duration::from_secs(10);
    let sim = sim("late-extension", vis);
    sim.put("a", None);
    let mut witnessed = Witnessed::new(sim.clone());
    witnessed.extension_delay = Duration::from_secs(4);
    let queue = Arc::new(witnessed);
    let keeper = keeper(queue.clone(), vis);
    let t0 = Instant::now();
    let (id, _) = lease_one(&keeper, &sim, t0).await;
    let stop = heartbeat(&keeper);
    // the extension goes out at 5 s, its round gives up on it at 7.5 s (and tries again, as
    // late), it lands at 9 s
    tokio::time::sleep_until(t0 + Duration::from_millis(8000)).await;
    keeper.release_after(&[(id.as_str(), 0)]).await;
    stop.cancel();
    let sent = queue.sent.lock().unwrap().clone();
    let release = sent.iter().position(|(_, e)| e.iter().any(|(_, s)| *s == 0)).expect("the release");
    let last_landing = sent[..release].iter().map(|(at, _)| *at + Duration::from_secs(4)).max().unwrap();
    assert!(sent[release].0 >= last_landing, "the let-go went before an extension landed: {sent:?}");
    // visible at once after the release, not a visibility timeout after a late extension
    tokio::time::sleep_until(sent[release].0 + Duration::from_secs(1)).await;
    let again = sim.receive(Duration::ZERO, None).await.unwrap();
    assert_eq!(again.len(), 1, "the released message is visible: {sent:?}");
}

/// A let-go whose receipt handle SQS rejects for good is sent once, not every backoff until the
/// message's visibility ends (before: 5 calls in 9 s here).
#[tokio::test(start_paused = true)]
async fn a_rejected_settlement_is_not_retried() {
    let vis = Duration::from_secs(10);
    let sim = sim("rejected", vis);
    sim.put("a", None);
    let queue = Arc::new(Witnessed::new(sim.clone()));
    let keeper = keeper(queue.clone(), vis);
    let got = receive_one(&sim).await;
    let id = got[0].message_id().unwrap().to_string();
    // a handle SQS does not know (as after the message was received elsewhere)
    keeper.admit(keeper.reserve().await, [(id.as_str(), "0:99")], stamp_at(Instant::now(), &keeper));
    let started = Instant::now();
    assert_eq!(keeper.release_after(&[(id.as_str(), 0)]).await, 0, "SQS accepted none");
    assert_eq!(queue.changes_sent(), 1, "one call, no retries");
    assert!(started.elapsed() < Duration::from_millis(100), "settled at once: {:?}", started.elapsed());
    assert_eq!(keeper.outstanding(), 0, "the lease ended");
}

/// An extension SQS rejects for good leaves the lease lost: no extension every second until the
/// visibility ends (before: 6 calls), and a new receive of the message renews the lease.
#[tokio::test(start_paused = true)]
async fn a_rejected_extension_is_not_retried_and_a_new_receive_renews_the_lease() {
    let vis = Duration::from_secs(10);
    let sim = sim("lost", vis);
    sim.put("a", None);
    let queue = Arc::new(Witnessed::new(sim.clone()));
    let keeper = keeper(queue.clone(), vis);
    let got = receive_one(&sim).await;
    let id = got[0].message_id().unwrap().to_string();
    let t0 = Instant::now();
    keeper.admit(keeper.reserve().await, [(id.as_str(), "0:99")], stamp_at(t0, &keeper));
    let stop = heartbeat(&keeper);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(queue.changes_sent(), 1, "one extension, rejected, not tried again");
    assert_eq!(keeper.outstanding(), 1, "the lease stays until the message is settled");
    // the message comes back (its real visibility ran out) and is received again: a duplicate
    // of the lost lease, which takes the new handle and is extended again
    let again = receive_one(&sim).await;
    let rh = again[0].receipt_handle().unwrap().to_string();
    let admitted =
        keeper.admit(keeper.reserve().await, [(id.as_str(), rh.as_str())], stamp_at(Instant::now(), &keeper));
    assert_eq!(admitted, vec![sqs_poller::lease::Admission::Duplicate]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sent = queue.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1].1, vec![(rh.clone(), 10)], "the renewed lease is extended with the new handle");
    stop.cancel();
}

/// A heartbeat round SQS never answers does not hold back the leases that fall due after it:
/// before, the round blocked the heartbeat and the second lease's message became visible.
#[tokio::test(start_paused = true)]
async fn a_round_sqs_does_not_answer_does_not_let_other_leases_expire() {
    let vis = Duration::from_secs(20);
    let sim = sim("stuck-round", vis);
    sim.put("a", None);
    let queue = Arc::new(Witnessed::new(sim.clone()));
    let keeper = keeper(queue.clone(), vis);
    let t0 = Instant::now();
    let (_, stuck) = lease_one(&keeper, &sim, t0).await;
    queue.unanswered.lock().unwrap().insert(stuck);
    let stop = heartbeat(&keeper);
    tokio::time::sleep_until(t0 + Duration::from_secs(3)).await;
    sim.put("b", None);
    let (_, other) = lease_one(&keeper, &sim, Instant::now()).await;
    // the stuck lease's round starts at 10 s; the other is due at 13 s and visible until 23 s
    tokio::time::sleep_until(t0 + Duration::from_secs(24)).await;
    let sent = queue.sent.lock().unwrap().clone();
    let extended_other = sent
        .iter()
        .any(|(at, entries)| *at < t0 + Duration::from_secs(23) && entries.iter().any(|(h, s)| *h == other && *s > 0));
    assert!(extended_other, "the other lease was extended in time: {sent:?}");
    assert!(sim.receive(Duration::from_millis(500), None).await.unwrap().iter().all(|m| m.body() != Some("b")));
    stop.cancel();
}

/// A receive whose answer comes 8 s after SQS hid its messages (visibility 10 s): the lease
/// counts from when the receive was sent, so the first extension goes out as soon as the answer
/// is in. Before, it counted from the answer (first extension at 13 s, the messages visible at
/// 10 s): every message was delivered twice.
#[test]
fn a_slow_receive_answer_is_covered_by_the_lease() {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
        let vis = Duration::from_secs(10);
        let sim = sim("slow-answer", vis);
        for i in 0..20 {
            sim.put(&format!("m-{i}"), None);
        }
        let mut witnessed = Witnessed::new(sim.clone());
        witnessed.receive_answer_delay = Duration::from_secs(8);
        let queue = Arc::new(witnessed);
        let processed: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = processed.clone();
        let target = Target::Function(Arc::new(move |event: Bytes| {
            let log = log.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let event: serde_json::Value = serde_json::from_slice(&event).unwrap();
                for r in event["Records"].as_array().unwrap() {
                    log.lock().unwrap().push(r["body"].as_str().unwrap().to_string());
                }
                Invocation::Response(Bytes::new())
            })
        }));
        let name = "slow-answer";
        let config = format!(
            "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{}\"\n[pipelines.pollers]\nmin = 2\nmax = 2\nwait_time_secs = 1\n\
             [pipelines.batch]\nsize = 10\nwindow_ms = 0\n[pipelines.target]\ntype = \"http\"\nurl = \"http://unused\"\n",
            sim.url()
        );
        let cfg = sqs_poller::config::parse(&config, &|_| None).expect("valid").pipelines.remove(0);
        let parts = PipelineParts::for_test(cfg, queue.clone(), target);
        let shutdown = parts.shutdown.clone();
        let task = tokio::spawn(pipeline::run(parts));
        let started = Instant::now();
        while !sim.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(300), "not drained: {} left", sim.len());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        shutdown.begin(Duration::from_secs(30));
        task.await.expect("the pipeline task").expect("the pipeline ran");
        let log = sim.log();
        assert_eq!(log.deliveries, 20, "each message delivered once (stale deletes: {})", log.stale_deletes);
        assert_eq!(processed.lock().unwrap().len(), 20, "each processed once");
    });
}
