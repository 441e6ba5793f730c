//! Batching: messages from many receives become batches of up to `size` messages, cut by
//! count, by the batching window, and by `max_bytes` of the serialized event.
//!
//! [`BatchBuffer`] is the pure cutting rule (time is an argument); [`GroupGate`] is the pure FIFO
//! rule (a message group is in at most one running batch; its later messages wait, leased, until
//! that batch is acknowledged); [`Batcher`] is the task that feeds them from the pollers'
//! channel and hands each cut batch to the dispatcher.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::event::{event_size, ReceivedMessage};

/// Messages cut together, in receive order.
pub type Batch = Vec<ReceivedMessage>;

/// The batch being filled.
#[derive(Debug)]
pub struct BatchBuffer {
    size: usize,
    max_bytes: usize,
    window: Duration,
    messages: Vec<ReceivedMessage>,
    /// Sum of [`ReceivedMessage::event_bytes`] of `messages`.
    record_bytes: usize,
    /// When the first message of the current batch arrived; the window runs from here.
    opened_at: Option<Instant>,
}

impl BatchBuffer {
    pub fn new(cfg: &BatchConfig) -> Self {
        BatchBuffer {
            size: cfg.size,
            max_bytes: cfg.max_bytes,
            window: cfg.window,
            messages: Vec::new(),
            record_bytes: 0,
            opened_at: None,
        }
    }

    /// Adds a message; batches completed by it (by bytes, then by count) go to `out`.
    ///
    /// A message that would push the event over `max_bytes` closes the current batch first; a
    /// message larger than `max_bytes` on its own still travels, alone.
    pub fn push(&mut self, m: ReceivedMessage, now: Instant, out: &mut Vec<Batch>) {
        let bytes = m.event_bytes();
        if !self.messages.is_empty() && event_size(self.record_bytes + bytes) > self.max_bytes {
            out.extend(self.take());
        }
        if self.messages.is_empty() {
            self.opened_at = Some(now);
        }
        self.record_bytes += bytes;
        self.messages.push(m);
        if self.messages.len() >= self.size || event_size(self.record_bytes) >= self.max_bytes {
            out.extend(self.take());
        }
    }

    /// When the window of the current batch ends (`None` while empty).
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.window)
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Takes the current batch, if any.
    pub fn take(&mut self) -> Option<Batch> {
        if self.messages.is_empty() {
            return None;
        }
        self.opened_at = None;
        self.record_bytes = 0;
        Some(std::mem::take(&mut self.messages))
    }
}

/// FIFO message groups: which are in a running batch, and the later messages they hold back.
#[derive(Debug, Default)]
pub struct GroupGate {
    running: HashSet<String>,
    held: HashMap<String, VecDeque<ReceivedMessage>>,
}

/// A running batch has been acknowledged: its groups, and those of them that failed with how
/// long their failed messages stay back (their held messages go back as long, behind them).
#[derive(Debug, Clone, Default)]
pub struct GroupsDone {
    pub groups: Vec<String>,
    pub failed: Vec<(String, i32)>,
}

impl GroupGate {
    /// Lets a message through to the buffer, or holds it when its group has a batch running.
    pub fn admit(&mut self, m: ReceivedMessage) -> Option<ReceivedMessage> {
        match &m.group_id {
            Some(g) if self.running.contains(g) => {
                self.held.entry(g.clone()).or_default().push_back(m);
                None
            }
            _ => Some(m),
        }
    }

    /// A batch was cut: its groups are running now.
    pub fn start(&mut self, batch: &Batch) -> GroupsDone {
        let mut groups: Vec<String> = batch.iter().filter_map(|m| m.group_id.clone()).collect();
        groups.sort_unstable();
        groups.dedup();
        for g in &groups {
            self.running.insert(g.clone());
        }
        GroupsDone { groups, failed: Vec::new() }
    }

    /// A batch was acknowledged: returns the held messages that may go on (in order) and those
    /// to send back, with their delay — every held message of a group that failed goes back
    /// behind the failure.
    pub fn finish(&mut self, done: &GroupsDone) -> (Vec<ReceivedMessage>, Vec<(Vec<ReceivedMessage>, i32)>) {
        let mut resume = Vec::new();
        let mut back = Vec::new();
        for g in &done.groups {
            self.running.remove(g);
            let held: Vec<ReceivedMessage> = self.held.remove(g).unwrap_or_default().into();
            match done.failed.iter().find(|(name, _)| name == g) {
                Some((_, secs)) if !held.is_empty() => back.push((held, *secs)),
                Some(_) => {}
                None => resume.extend(held),
            }
        }
        (resume, back)
    }

    /// Everything held (shutdown).
    pub fn take_held(&mut self) -> Vec<ReceivedMessage> {
        self.held.drain().flat_map(|(_, q)| q).collect()
    }

    pub fn held(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }
}

/// What the batcher hands a cut batch to.
pub trait BatchSink {
    /// Takes the batch on (waiting for room). Must not lose it: a sink that cannot dispatch
    /// releases the messages. FIFO: `groups` is sent back on the batcher's `done` channel once
    /// the batch is acknowledged.
    fn submit(&mut self, batch: Batch, groups: GroupsDone) -> impl std::future::Future<Output = ()> + Send;

    /// Makes messages visible again after `secs` (held messages behind a failure; 0 at shutdown).
    fn send_back(&mut self, messages: Vec<ReceivedMessage>, secs: i32) -> impl std::future::Future<Output = ()> + Send;
}

/// The batching task of one pipeline.
pub struct Batcher<S> {
    pub buffer: BatchBuffer,
    /// Receives from the pollers; closed when the last poller has stopped.
    pub receives: mpsc::Receiver<Vec<ReceivedMessage>>,
    /// FIFO queues: the group rule, fed back by `done`.
    pub gate: Option<GroupGate>,
    pub done: mpsc::UnboundedReceiver<GroupsDone>,
    pub sink: S,
}

/// Batches cut and not yet submitted, with the groups each started.
type Ready = Vec<(Batch, GroupsDone)>;

impl<S: BatchSink + Send> Batcher<S> {
    /// A batch was cut: its FIFO groups count as running from now on, so that a later message of
    /// one of them is held rather than cut into a second batch.
    fn cut(&mut self, batch: Option<Batch>, ready: &mut Ready) {
        let Some(batch) = batch else { return };
        let groups = match &mut self.gate {
            Some(gate) => gate.start(&batch),
            None => GroupsDone::default(),
        };
        ready.push((batch, groups));
    }

    fn push_all(&mut self, messages: Vec<ReceivedMessage>, now: Instant, ready: &mut Ready) {
        let mut cut = Vec::new();
        for m in messages {
            let m = match &mut self.gate {
                Some(gate) => gate.admit(m),
                None => Some(m),
            };
            if let Some(m) = m {
                self.buffer.push(m, now, &mut cut);
                for batch in cut.drain(..) {
                    self.cut(Some(batch), ready);
                }
            }
        }
    }

    /// Runs until every poller has stopped, then flushes what is buffered and releases what
    /// FIFO groups hold.
    pub async fn run(mut self) {
        let mut ready = Ready::new();
        loop {
            let deadline = self.buffer.deadline();
            tokio::select! {
                chunk = self.receives.recv() => {
                    let Some(chunk) = chunk else { break };
                    let now = Instant::now();
                    self.push_all(chunk, now, &mut ready);
                    if self.buffer.window.is_zero() {
                        // no window: take what has already arrived, then cut
                        while self.buffer.len() < self.buffer.size {
                            let Ok(more) = self.receives.try_recv() else { break };
                            self.push_all(more, now, &mut ready);
                        }
                        let batch = self.buffer.take();
                        self.cut(batch, &mut ready);
                    }
                }
                Some(done) = self.done.recv() => {
                    let Some(gate) = &mut self.gate else { continue };
                    let (resume, back) = gate.finish(&done);
                    for (messages, secs) in back {
                        self.sink.send_back(messages, secs).await;
                    }
                    self.push_all(resume, Instant::now(), &mut ready);
                    if self.buffer.window.is_zero() {
                        let batch = self.buffer.take();
                        self.cut(batch, &mut ready);
                    }
                }
                () = sleep_until_opt(deadline) => {
                    let batch = self.buffer.take();
                    self.cut(batch, &mut ready);
                }
            }
            for (batch, groups) in ready.drain(..) {
                self.sink.submit(batch, groups).await;
            }
        }
        let batch = self.buffer.take();
        self.cut(batch, &mut ready);
        for (batch, groups) in ready.drain(..) {
            self.sink.submit(batch, groups).await;
        }
        if let Some(gate) = &mut self.gate {
            let held = gate.take_held();
            if !held.is_empty() {
                self.sink.send_back(held, 0).await;
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ReceivedMessage;

    fn msg(id: usize, body_len: usize) -> ReceivedMessage {
        ReceivedMessage {
            message_id: id.to_string(),
            receipt_handle: format!("rh-{id}"),
            receive_count: 1,
            sent_timestamp_ms: None,
            group_id: None,
            record_json: format!("{{\"body\":\"{}\"}}", "x".repeat(body_len)).into_boxed_str(),
            trace_header: None,
            s3_object: None,
            unresolved: None,
        }
    }

    fn buffer(size: usize, window_ms: u64, max_bytes: usize) -> BatchBuffer {
        BatchBuffer::new(&BatchConfig { size, window: Duration::from_millis(window_ms), max_bytes })
    }

    fn ids(b: &Batch) -> Vec<String> {
        b.iter().map(|m| m.message_id.clone()).collect()
    }

    #[test]
    fn cuts_by_count() {
        let mut buf = buffer(3, 1000, 1 << 20);
        let now = Instant::now();
        let mut out = Vec::new();
        for i in 0..7 {
            buf.push(msg(i, 10), now, &mut out);
        }
        assert_eq!(out.iter().map(ids).collect::<Vec<_>>(), vec![vec!["0", "1", "2"], vec!["3", "4", "5"]]);
        assert_eq!(buf.len(), 1);
    }

    #[test]
    fn window_runs_from_the_first_message() {
        let mut buf = buffer(100, 500, 1 << 20);
        assert_eq!(buf.deadline(), None);
        let t0 = Instant::now();
        let mut out = Vec::new();
        buf.push(msg(0, 10), t0, &mut out);
        buf.push(msg(1, 10), t0 + Duration::from_millis(300), &mut out);
        assert_eq!(buf.deadline(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(ids(&buf.take().unwrap()), vec!["0", "1"]);
        assert_eq!(buf.deadline(), None);
        assert!(buf.take().is_none());
    }

    #[test]
    fn cuts_before_the_message_that_would_exceed_max_bytes() {
        // each record is 100 bytes of JSON + 1 separator; the event adds 14 bytes
        let record = msg(0, 89);
        assert_eq!(record.event_bytes(), 101);
        let mut buf = buffer(100, 1000, 14 + 3 * 101 - 1);
        let now = Instant::now();
        let mut out = Vec::new();
        for i in 0..4 {
            buf.push(msg(i, 89), now, &mut out);
        }
        // three fit exactly (the event is then max_bytes long), so the batch is cut at three
        assert_eq!(out.iter().map(ids).collect::<Vec<_>>(), vec![vec!["0", "1", "2"]]);
        assert_eq!(buf.len(), 1);
    }

    #[test]
    fn cut_batches_never_exceed_max_bytes() {
        let max = 2_000;
        let mut buf = buffer(10_000, 1000, max);
        let now = Instant::now();
        let mut out = Vec::new();
        for i in 0..500 {
            buf.push(msg(i, (i * 37) % 300), now, &mut out);
        }
        out.extend(buf.take());
        assert_eq!(out.iter().map(Vec::len).sum::<usize>(), 500);
        for b in &out {
            let size = crate::event::encode_event(b).len();
            assert!(size <= max, "batch of {} is {size} bytes", b.len());
        }
    }

    fn grouped(id: usize, group: &str) -> ReceivedMessage {
        let mut m = msg(id, 10);
        m.group_id = Some(group.to_string());
        m
    }

    #[test]
    fn a_running_group_holds_its_later_messages() {
        let mut gate = GroupGate::default();
        let first = vec![gate.admit(grouped(1, "a")).unwrap(), gate.admit(grouped(2, "b")).unwrap()];
        let mut running = gate.start(&first);
        assert_eq!(running.groups, vec!["a", "b"]);
        assert!(gate.admit(grouped(3, "a")).is_none(), "a is running");
        assert!(gate.admit(grouped(4, "a")).is_none());
        assert!(gate.admit(grouped(5, "c")).is_some(), "other groups run in parallel");
        assert_eq!(gate.held(), 2);
        running.failed = vec![];
        let (resume, release) = gate.finish(&running);
        assert_eq!(resume.iter().map(|m| m.message_id.as_str()).collect::<Vec<_>>(), vec!["3", "4"], "in order");
        assert!(release.is_empty());
        assert!(gate.admit(grouped(6, "a")).is_some(), "a is free again");
    }

    #[test]
    fn a_failed_group_releases_everything_it_held() {
        let mut gate = GroupGate::default();
        let first = vec![gate.admit(grouped(1, "a")).unwrap()];
        let mut running = gate.start(&first);
        assert!(gate.admit(grouped(2, "a")).is_none());
        running.failed = vec![("a".into(), 7)];
        let (resume, back) = gate.finish(&running);
        assert!(resume.is_empty());
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].0.len(), back[0].1), (1, 7), "behind the failure, as long as it");
        assert_eq!(gate.held(), 0);
    }

    #[test]
    fn an_oversized_message_travels_alone() {
        let mut buf = buffer(10, 1000, 1024);
        let now = Instant::now();
        let mut out = Vec::new();
        buf.push(msg(0, 10), now, &mut out);
        buf.push(msg(1, 5000), now, &mut out);
        buf.push(msg(2, 10), now, &mut out);
        assert_eq!(out.iter().map(ids).collect::<Vec<_>>(), vec![vec!["0"], vec!["1"]]);
        assert_eq!(ids(&buf.take().unwrap()), vec!["2"]);
    }
}
