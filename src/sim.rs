//! A simulated SQS queue in memory, for tests of the whole pipeline under paused tokio time.
//!
//! It models what the emulators get wrong or cannot show, as the AWS documentation describes SQS:
//! - visibility: a received message is invisible for the timeout, then delivered again with a
//!   higher `ApproximateReceiveCount` and a new receipt handle; only the newest handle is valid
//!   (`ChangeMessageVisibility` with an older one fails; `DeleteMessage` with an older one
//!   *succeeds without deleting*, as the SQS documentation warns);
//! - the 12-hour limit: a visibility change that would keep a message invisible past 12 hours
//!   from its receive fails; changing a message that is not in flight fails;
//! - FIFO: several messages of a group per receive, in order, and no message of a group while
//!   an earlier one is in flight;
//! - standard queues: at-least-once, a message in flight may be delivered again (a duplicate);
//! - sends: attribute values with characters SQS rejects, and `MessageDeduplicationId` on a
//!   standard queue, are refused (`MessageGroupId` on a standard queue is a fair queue: accepted);
//! - faults: injected request errors, per-entry batch failures and latency.
//!
//! Every random choice comes from one generator seeded by [`SimConfig::seed`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use tokio::time::Instant;

use crate::aws::SqsMessage;
use crate::sqs::{sqs_allows, BoxFuture, EntryFailure, Outgoing, Queue, SqsError};

const TWELVE_HOURS: Duration = Duration::from_secs(43_200);

/// How the simulated queue behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub url: String,
    pub visibility: Duration,
    pub seed: u64,
    /// Probability that a request fails as a whole (a retryable `InternalError`).
    pub error_rate: f64,
    /// Probability that one entry of a batch request fails (retryable).
    pub entry_error_rate: f64,
    /// Standard queues: probability that a receive also returns a message that is in flight.
    pub duplicate_rate: f64,
    /// Each request takes up to this long.
    pub max_latency: Duration,
    /// The first this many receives panic (a bug in the caller's path, for tests of recovery).
    pub receive_panics: u32,
    /// The queue's `MaximumMessageSize` (reported, not enforced): what the byte budget reserves
    /// per message. SQS's default, 1 MiB, unless a test sets it.
    pub max_message_bytes: usize,
}

impl SimConfig {
    /// A well-behaved queue: no faults, no latency.
    pub fn new(url: &str, visibility: Duration, seed: u64) -> Self {
        SimConfig {
            url: url.to_string(),
            visibility,
            seed,
            error_rate: 0.0,
            entry_error_rate: 0.0,
            duplicate_rate: 0.0,
            max_latency: Duration::ZERO,
            receive_panics: 0,
            max_message_bytes: crate::limits::MAX_MESSAGE_BYTES,
        }
    }
}

/// What happened to the queue, for assertions.
#[derive(Debug, Default, Clone)]
pub struct SimLog {
    /// Message ids deleted, in order.
    pub deleted: Vec<String>,
    /// Deletes with a receipt handle that was not the newest: answered success, nothing deleted.
    pub stale_deletes: u64,
    /// Receipt handles handed out (every delivery).
    pub deliveries: u64,
    /// Deliveries of a message that was in flight (standard queues only).
    pub duplicates: u64,
    /// Requests or entries failed on purpose.
    pub injected_errors: u64,
    /// Sends refused, with the reason.
    pub refused_sends: Vec<String>,
    /// Visibility changes carried out: when, the receipt handle, the seconds.
    pub visibility_changes: Vec<(Instant, String, i32)>,
}

#[derive(Debug, Clone)]
struct SimMessage {
    id: String,
    body: String,
    group: Option<String>,
    attributes: HashMap<String, MessageAttributeValue>,
    /// The `AWSTraceHeader` system attribute its sender set.
    trace_header: Option<String>,
    sent_ms: u64,
    receive_count: u32,
    /// The newest receipt handle, once received.
    handle: Option<String>,
    handle_received_at: Instant,
    visible_at: Instant,
}

impl SimMessage {
    fn in_flight(&self, now: Instant) -> bool {
        self.handle.is_some() && self.visible_at > now
    }
}

struct State {
    rng: fastrand::Rng,
    next_seq: u64,
    /// By sequence number (send order).
    messages: BTreeMap<u64, SimMessage>,
    /// FIFO: each group's messages by sequence number (the group's head first).
    groups: BTreeMap<String, std::collections::BTreeSet<u64>>,
    log: SimLog,
    /// The wall clock (ms since the epoch) at `started`: `SentTimestamp`s follow the
    /// simulation's time from there.
    epoch_ms: u64,
    started: Instant,
}

pub struct SimQueue {
    config: SimConfig,
    /// The queue's `VisibilityTimeout` attribute now (seconds): starts at `config.visibility`,
    /// changed by [`SimQueue::set_visibility`] as an operator would.
    visibility_secs: std::sync::atomic::AtomicU64,
    fifo: bool,
    receives: std::sync::atomic::AtomicU32,
    /// An outage: every request fails (a retryable `InternalError`) while set.
    down: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
}

impl SimQueue {
    pub fn new(config: SimConfig) -> Self {
        let fifo = config.url.ends_with(".fifo");
        let rng = fastrand::Rng::with_seed(config.seed);
        SimQueue {
            visibility_secs: std::sync::atomic::AtomicU64::new(config.visibility.as_secs()),
            config,
            fifo,
            receives: std::sync::atomic::AtomicU32::new(0),
            down: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State {
                rng,
                next_seq: 0,
                messages: BTreeMap::new(),
                groups: BTreeMap::new(),
                log: SimLog::default(),
                epoch_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64,
                started: Instant::now(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a message as a producer would; returns its id.
    pub fn put(&self, body: &str, group: Option<&str>) -> String {
        Self::insert(&mut self.state(), self.fifo, &Outgoing::new(body, HashMap::new()).grouped(group, None))
    }

    /// [`SimQueue::put`] with message attributes.
    pub fn put_with_attributes(
        &self,
        body: &str,
        group: Option<&str>,
        attributes: HashMap<String, MessageAttributeValue>,
    ) -> String {
        Self::insert(&mut self.state(), self.fifo, &Outgoing::new(body, attributes).grouped(group, None))
    }

    /// Stores a sent message (visible after its `DelaySeconds`); returns its id.
    fn insert(st: &mut State, fifo: bool, message: &Outgoing<'_>) -> String {
        let group = message.group_id;
        st.next_seq += 1;
        let seq = st.next_seq;
        let id = format!("sim-{seq:08}");
        if let Some(g) = group.filter(|_| fifo) {
            st.groups.entry(g.to_string()).or_default().insert(seq);
        }
        let now = Instant::now();
        let visible_at = now + Duration::from_secs(message.delay_secs.into());
        // the wall clock as the simulation's time moves it (paused time moves no wall clock)
        let sent_ms = st.epoch_ms + now.duration_since(st.started).as_millis() as u64;
        st.messages.insert(
            seq,
            SimMessage {
                id: id.clone(),
                body: message.body.to_string(),
                group: group.map(str::to_string),
                attributes: message.attributes.clone(),
                trace_header: message.trace_header.map(str::to_string),
                sent_ms,
                receive_count: 0,
                handle: None,
                handle_received_at: now,
                visible_at,
            },
        );
        id
    }

    /// Messages still in the queue (visible or not).
    pub fn len(&self) -> usize {
        self.state().messages.len()
    }

    /// The id and body of the message a receipt handle was given for (any of its handles), while
    /// it is in the queue: for checks of what a delete or a visibility change was meant for.
    pub fn message_of(&self, handle: &str) -> Option<(String, String)> {
        let seq: u64 = handle.split_once(':')?.0.parse().ok()?;
        self.state().messages.get(&seq).map(|m| (m.id.clone(), m.body.clone()))
    }

    /// Messages in flight now (received, invisible); and visible now.
    pub fn counts(&self) -> (usize, usize) {
        let now = Instant::now();
        let st = self.state();
        let in_flight = st.messages.values().filter(|m| m.in_flight(now)).count();
        (in_flight, st.messages.values().filter(|m| m.visible_at <= now).count())
    }

    /// The queue's `VisibilityTimeout` attribute now.
    pub fn visibility(&self) -> Duration {
        Duration::from_secs(self.visibility_secs.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Changes the queue's `VisibilityTimeout` attribute (`SetQueueAttributes`): receives that do
    /// not ask for their own use it, messages in flight keep theirs.
    pub fn set_visibility(&self, visibility: Duration) {
        self.visibility_secs.store(visibility.as_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    /// ReceiveMessage calls so far.
    pub fn receives(&self) -> u64 {
        u64::from(self.receives.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bodies of the messages still in the queue, in send order.
    pub fn bodies(&self) -> Vec<String> {
        self.state().messages.values().map(|m| m.body.clone()).collect()
    }

    pub fn log(&self) -> SimLog {
        self.state().log.clone()
    }

    async fn latency(&self) {
        if self.config.max_latency.is_zero() {
            return;
        }
        let ms = {
            let mut st = self.state();
            st.rng.u64(0..=self.config.max_latency.as_millis() as u64)
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// An outage from now until `set_down(false)`: every request fails as a whole.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    fn injected(&self, st: &mut State, rate: f64) -> bool {
        let hit = self.down.load(std::sync::atomic::Ordering::SeqCst) || (rate > 0.0 && st.rng.f64() < rate);
        if hit {
            st.log.injected_errors += 1;
        }
        hit
    }

    /// Takes up to 10 messages now (no waiting).
    fn take(&self, visibility: Duration) -> Vec<SqsMessage> {
        let now = Instant::now();
        let mut st = self.state();
        let st = &mut *st;
        let picked = self.pick(st, now);
        picked.into_iter().map(|seq| self.deliver(st, seq, now, visibility)).collect()
    }

    /// The messages a receive gets now (up to 10): FIFO by group, standard in a loose order, and
    /// now and then (standard) a duplicate of one in flight.
    fn pick(&self, st: &mut State, now: Instant) -> Vec<u64> {
        let mut picked: Vec<u64> = Vec::new();
        if self.fifo {
            // groups in the order of their oldest message; within a group, in order, stopping at
            // the first message that is in flight (or delayed): the group waits for it
            let mut heads: Vec<(u64, &std::collections::BTreeSet<u64>)> =
                st.groups.values().filter_map(|seqs| Some((*seqs.first()?, seqs))).collect();
            heads.sort_unstable_by_key(|(head, _)| *head);
            'groups: for (_, seqs) in heads {
                for &seq in seqs {
                    if st.messages[&seq].visible_at > now {
                        break;
                    }
                    picked.push(seq);
                    if picked.len() == 10 {
                        break 'groups;
                    }
                }
            }
        } else {
            for (&seq, m) in &st.messages {
                if picked.len() == 10 {
                    break;
                }
                // standard queues do not keep order: skip a few at random
                if m.visible_at <= now && st.rng.f64() >= 0.1 {
                    picked.push(seq);
                }
            }
        }
        if !self.fifo
            && picked.len() < 10
            && self.config.duplicate_rate > 0.0
            && st.rng.f64() < self.config.duplicate_rate
        {
            let in_flight: Vec<u64> =
                st.messages.iter().filter(|(_, m)| m.in_flight(now)).map(|(&seq, _)| seq).collect();
            if !in_flight.is_empty() {
                picked.push(in_flight[st.rng.usize(..in_flight.len())]);
                st.log.duplicates += 1;
            }
        }
        picked
    }

    /// Hands out message `seq` under a new receipt handle, hidden for `visibility`.
    fn deliver(&self, st: &mut State, seq: u64, now: Instant, visibility: Duration) -> SqsMessage {
        let m = st.messages.get_mut(&seq).expect("picked from the map");
        m.receive_count += 1;
        let handle = format!("{seq}:{}", m.receive_count);
        m.handle = Some(handle.clone());
        m.handle_received_at = now;
        m.visible_at = now + visibility;
        st.log.deliveries += 1;
        let mut b = SqsMessage::builder()
            .message_id(&m.id)
            .receipt_handle(handle)
            .body(&m.body)
            .md5_of_body("00000000000000000000000000000000")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, m.receive_count.to_string())
            .attributes(MessageSystemAttributeName::SentTimestamp, m.sent_ms.to_string())
            .attributes(MessageSystemAttributeName::SenderId, "SIMULATION")
            .attributes(MessageSystemAttributeName::ApproximateFirstReceiveTimestamp, m.sent_ms.to_string());
        if let Some(g) = &m.group {
            b = b.attributes(MessageSystemAttributeName::MessageGroupId, g);
            if self.fifo {
                b = b
                    .attributes(MessageSystemAttributeName::SequenceNumber, seq.to_string())
                    .attributes(MessageSystemAttributeName::MessageDeduplicationId, &m.id);
            }
        }
        if let Some(t) = &m.trace_header {
            b = b.attributes(MessageSystemAttributeName::AwsTraceHeader, t);
        }
        for (k, v) in &m.attributes {
            b = b.message_attributes(k, v.clone());
        }
        b.build()
    }

    /// The message a receipt handle names, if it is its newest handle.
    fn current(st: &State, handle: &str) -> Option<u64> {
        let (seq, _) = handle.split_once(':')?;
        let seq: u64 = seq.parse().ok()?;
        let m = st.messages.get(&seq)?;
        (m.handle.as_deref() == Some(handle)).then_some(seq)
    }
}

impl Queue for SimQueue {
    fn url(&self) -> &str {
        &self.config.url
    }

    fn region(&self) -> String {
        "us-east-1".to_string()
    }

    fn receive(
        &self,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> BoxFuture<'_, Result<Vec<SqsMessage>, SqsError>> {
        Box::pin(async move {
            let n = self.receives.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            assert!(n >= self.config.receive_panics, "simulated panic in receive {}", n + 1);
            self.latency().await;
            if self.injected(&mut self.state(), self.config.error_rate) {
                return Err(SqsError::coded("ReceiveMessage", "InternalError", "injected", true));
            }
            let visibility = visibility.unwrap_or_else(|| self.visibility());
            let deadline = Instant::now() + wait;
            loop {
                let got = self.take(visibility);
                if !got.is_empty() || Instant::now() >= deadline {
                    return Ok(got);
                }
                tokio::time::sleep((deadline - Instant::now()).min(Duration::from_millis(100))).await;
            }
        })
    }

    fn attributes<'a>(
        &'a self,
        names: &'a [QueueAttributeName],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, SqsError>> {
        Box::pin(async move {
            self.latency().await;
            let mut st = self.state();
            if self.injected(&mut st, self.config.error_rate) {
                return Err(SqsError::coded("GetQueueAttributes", "InternalError", "injected", true));
            }
            let now = Instant::now();
            let visible = st.messages.values().filter(|m| m.visible_at <= now).count();
            let hidden = st.messages.len() - visible;
            let mut out = HashMap::new();
            for n in names {
                let v = match n {
                    QueueAttributeName::ApproximateNumberOfMessages => visible.to_string(),
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible => hidden.to_string(),
                    QueueAttributeName::ApproximateNumberOfMessagesDelayed => "0".to_string(),
                    QueueAttributeName::VisibilityTimeout => self.visibility().as_secs().to_string(),
                    QueueAttributeName::MaximumMessageSize => self.config.max_message_bytes.to_string(),
                    QueueAttributeName::QueueArn => {
                        let name = self.config.url.rsplit('/').next().unwrap_or("sim");
                        format!("arn:aws:sqs:us-east-1:000000000000:{name}")
                    }
                    _ => continue,
                };
                out.insert(n.as_str().to_string(), v);
            }
            Ok(out)
        })
    }

    fn delete<'a>(&'a self, receipts: &'a [&'a str]) -> BoxFuture<'a, Vec<EntryFailure>> {
        Box::pin(async move {
            self.latency().await;
            let mut st = self.state();
            if self.injected(&mut st, self.config.error_rate) {
                return (0..receipts.len()).map(|i| EntryFailure::retryable(i, "InternalError")).collect();
            }
            let mut failed = Vec::new();
            for (i, handle) in receipts.iter().enumerate() {
                if self.injected(&mut st, self.config.entry_error_rate) {
                    failed.push(EntryFailure::retryable(i, "InternalError"));
                    continue;
                }
                match Self::current(&st, handle) {
                    Some(seq) => {
                        let m = st.messages.remove(&seq).expect("current");
                        if let Some(g) = &m.group {
                            if let Some(seqs) = st.groups.get_mut(g) {
                                seqs.remove(&seq);
                                if seqs.is_empty() {
                                    st.groups.remove(g);
                                }
                            }
                        }
                        st.log.deleted.push(m.id);
                    }
                    // SQS: "the request succeeds, but the message might not be deleted"
                    None => st.log.stale_deletes += 1,
                }
            }
            failed
        })
    }

    fn change_visibility<'a>(&'a self, entries: &'a [(&'a str, i32)]) -> BoxFuture<'a, Vec<EntryFailure>> {
        Box::pin(async move {
            self.latency().await;
            let mut st = self.state();
            if self.injected(&mut st, self.config.error_rate) {
                return (0..entries.len()).map(|i| EntryFailure::retryable(i, "InternalError")).collect();
            }
            let now = Instant::now();
            let mut failed = Vec::new();
            let rejected = |index, code: &str| EntryFailure { index, code: code.to_string(), permanent: true };
            for (i, (handle, secs)) in entries.iter().enumerate() {
                if self.injected(&mut st, self.config.entry_error_rate) {
                    failed.push(EntryFailure::retryable(i, "InternalError"));
                    continue;
                }
                let Some(seq) = Self::current(&st, handle) else {
                    failed.push(rejected(i, "ReceiptHandleIsInvalid"));
                    continue;
                };
                let m = st.messages.get_mut(&seq).expect("current");
                let until = now + Duration::from_secs((*secs).max(0) as u64);
                if !m.in_flight(now) {
                    failed.push(rejected(i, "MessageNotInflight"));
                    continue;
                }
                if until > m.handle_received_at + TWELVE_HOURS {
                    failed.push(rejected(i, "InvalidParameterValue"));
                    continue;
                }
                m.visible_at = until;
            }
            st.log.visibility_changes.extend(
                entries
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !failed.iter().any(|f| f.index == *i))
                    .map(|(_, (h, secs))| (now, h.to_string(), *secs)),
            );
            failed
        })
    }

    fn send<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<(), SqsError>> {
        Box::pin(async move {
            let Outgoing { ref body, ref attributes, group_id, deduplication_id, delay_secs, .. } = message;
            self.latency().await;
            let refuse = |st: &mut State, why: &str| {
                st.log.refused_sends.push(why.to_string());
                Err(SqsError::coded("SendMessage", "InvalidParameterValue", why, false))
            };
            let mut st = self.state();
            if self.injected(&mut st, self.config.error_rate) {
                return Err(SqsError::coded("SendMessage", "InternalError", "injected", true));
            }
            if !self.fifo && deduplication_id.is_some() {
                return refuse(&mut st, "MessageDeduplicationId is only for FIFO queues");
            }
            if self.fifo && group_id.is_none() {
                return refuse(&mut st, "a FIFO queue needs a MessageGroupId");
            }
            if self.fifo && delay_secs > 0 {
                return refuse(&mut st, "DelaySeconds per message is not for FIFO queues");
            }
            if delay_secs > 900 {
                return refuse(&mut st, "DelaySeconds above 900");
            }
            if attributes.len() > 10 {
                return refuse(&mut st, "more than 10 message attributes");
            }
            let bad = attributes.values().any(|v| v.string_value().is_some_and(|s| !s.chars().all(sqs_allows)));
            if bad || !body.chars().all(sqs_allows) {
                return refuse(&mut st, "invalid characters");
            }
            Self::insert(&mut st, self.fifo, &message);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(url: &str) -> SimQueue {
        SimQueue::new(SimConfig::new(url, Duration::from_secs(30), 7))
    }

    #[tokio::test(start_paused = true)]
    async fn an_old_receipt_handle_deletes_nothing() {
        let q = queue("http://sim/q");
        q.put("a", None);
        let first = q.receive(Duration::ZERO, Some(Duration::from_secs(1))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let second = q.receive(Duration::ZERO, None).await.unwrap();
        assert_eq!(second[0].attributes().unwrap()[&MessageSystemAttributeName::ApproximateReceiveCount], "2");
        assert!(q.delete(&[first[0].receipt_handle().unwrap()]).await.is_empty(), "answered success");
        assert_eq!(q.len(), 1, "but nothing was deleted");
        assert_eq!(
            q.change_visibility(&[(first[0].receipt_handle().unwrap(), 5)])
                .await
                .iter()
                .map(|f| (f.index, f.code.as_str()))
                .collect::<Vec<_>>(),
            vec![(0, "ReceiptHandleIsInvalid")]
        );
        assert!(q.delete(&[second[0].receipt_handle().unwrap()]).await.is_empty());
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_returns_a_group_in_order_and_locks_it_while_in_flight() {
        let q = queue("http://sim/q.fifo");
        for i in 0..4 {
            q.put(&format!("a{i}"), Some("a"));
        }
        q.put("b0", Some("b"));
        let got = q.receive(Duration::ZERO, None).await.unwrap();
        let bodies: Vec<&str> = got.iter().filter_map(|m| m.body()).collect();
        assert_eq!(bodies, vec!["a0", "a1", "a2", "a3", "b0"], "several of a group per receive, in order");
        // a0 goes back with a backoff: nothing of group a comes out before it
        let a0 = got[0].receipt_handle().unwrap();
        let rest: Vec<&str> = got[1..4].iter().map(|m| m.receipt_handle().unwrap()).collect();
        assert!(q.change_visibility(&[(a0, 5)]).await.is_empty());
        let zero: Vec<(&str, i32)> = rest.iter().map(|h| (*h, 0)).collect();
        assert!(q.change_visibility(&zero).await.is_empty());
        assert!(q.receive(Duration::ZERO, None).await.unwrap().is_empty(), "group a waits for a0");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let again: Vec<String> =
            q.receive(Duration::ZERO, None).await.unwrap().iter().filter_map(|m| m.body().map(String::from)).collect();
        assert_eq!(again, vec!["a0", "a1", "a2", "a3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn visibility_never_past_twelve_hours_nor_for_a_visible_message() {
        let q = queue("http://sim/q");
        q.put("a", None);
        let m = q.receive(Duration::ZERO, None).await.unwrap();
        let h = m[0].receipt_handle().unwrap();
        assert!(q.change_visibility(&[(h, 43_000)]).await.is_empty());
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let codes = |f: Vec<EntryFailure>| f.into_iter().map(|f| (f.index, f.code, f.permanent)).collect::<Vec<_>>();
        assert_eq!(
            codes(q.change_visibility(&[(h, 40_000)]).await),
            vec![(0, "InvalidParameterValue".to_string(), true)],
            "past 12 h from the receive"
        );
        assert!(q.change_visibility(&[(h, 0)]).await.is_empty());
        assert_eq!(
            codes(q.change_visibility(&[(h, 10)]).await),
            vec![(0, "MessageNotInflight".to_string(), true)],
            "not in flight any more"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sends_follow_sqs_rules() {
        let std_q = queue("http://sim/dlq");
        let ok = |s: &str| MessageAttributeValue::builder().data_type("String").string_value(s).build().unwrap();
        let mut bad = HashMap::new();
        bad.insert("r".to_string(), ok("a\u{1}b"));
        let send = |body, attributes, group, dedup| Outgoing::new(body, attributes).grouped(group, dedup);
        assert!(std_q.send(send("x", bad, None, None)).await.is_err(), "control character");
        assert!(std_q.send(send("x", HashMap::new(), Some("g"), Some("d"))).await.is_err(), "dedup id on standard");
        assert!(std_q.send(send("x", HashMap::new(), Some("g"), None)).await.is_ok(), "fair queue");
        let fifo = queue("http://sim/dlq.fifo");
        assert!(fifo.send(send("x", HashMap::new(), None, None)).await.is_err());
        assert!(fifo.send(send("x", HashMap::new(), Some("g"), Some("d"))).await.is_ok());
    }
}
