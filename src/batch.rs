//! Batching: messages from many receives become batches of up to `size` messages, cut by
//! count, by the batching window, and by `max_bytes` of the serialized event.
//!
//! [`BatchBuffer`] is the pure cutting rule (time is an argument); [`GroupGate`] is the pure FIFO
//! rule (a message group is in at most one running batch; its later messages wait, leased, until
//! that batch is acknowledged); [`GroupCap`] is the pure fair-share rule of standard and fair
//! queues (at most `batch.max_in_flight_per_group` messages of one group in batches at once);
//! [`Batcher`] is the task that feeds them from the pollers' channel and hands each cut batch to
//! the dispatcher.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::event::{event_size, ReceivedMessage};
use crate::limits::RECEIVE_MAX;

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
        if !self.fits(&m) {
            out.extend(self.take());
        }
        if self.messages.is_empty() {
            self.opened_at = Some(now);
            // room for the whole batch at once (up to 256): a vector grown by doubling holds up
            // to twice its messages' room while the batch is at the worker (issue 32)
            self.messages.reserve_exact(self.size.min(256));
        }
        self.record_bytes += bytes;
        self.messages.push(m);
        if self.messages.len() >= self.size || event_size(self.record_bytes) >= self.max_bytes {
            out.extend(self.take());
        }
    }

    /// Whether `m` joins the batch being filled without closing it first: it is empty, or the
    /// event stays within `max_bytes` with `m` in it.
    pub fn fits(&self, m: &ReceivedMessage) -> bool {
        self.messages.is_empty() || event_size(self.record_bytes + m.event_bytes()) <= self.max_bytes
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
/// With a group cap: how many messages of each group it carried, and when it was cut.
#[derive(Debug, Clone, Default)]
pub struct GroupsDone {
    pub groups: Vec<String>,
    pub failed: Vec<(String, i32)>,
    pub counted: Vec<(String, usize)>,
    pub cut_at: Option<Instant>,
}

/// What [`GroupCap::admit`] decided for a message.
#[derive(Debug)]
pub enum Capped {
    /// Its group is under the cap: on to the batch.
    Pass(ReceivedMessage),
    /// Its group is at the cap: it waits here, under lease.
    Held,
    /// Its group is at the cap and `max_held` messages wait already: back to the queue, invisible
    /// for this many seconds (about the time its group needs for what waits ahead of it).
    Release(ReceivedMessage, i32),
}

/// Standard and fair queues (`batch.max_in_flight_per_group`): at most `cap` messages of one
/// `MessageGroupId` in batches — being cut, waiting for a slot, or at the target — at once, so
/// that one tenant's backlog cannot take every slot.
///
/// A message over the cap waits here, leased (it was received: SQS cannot be asked for the
/// messages of some groups only), and goes on in arrival order as its group's batches finish; a
/// group's new messages queue behind its waiting ones. The messages waiting take room in
/// `lease.max_outstanding`, so at most `max_held` wait: past that a message over the cap goes
/// back to the queue (spending a receive) rather than fill the room that the other groups'
/// messages need to be received at all — invisible until its group could take it, at the pace
/// the cap lets the group go, so that a group's backlog comes back spread out, not all at once;
/// when it comes back it waits here ahead of the group's newer messages (so a message is given
/// back about once, not at every receive). On a fair queue SQS
/// also sees the waiting messages as the noisy group's in flight, and favours the other groups.
/// Messages without a group are not capped.
#[derive(Debug)]
pub struct GroupCap {
    cap: usize,
    max_held: usize,
    /// Messages of each group in batches (cut or being cut); a group leaves at 0.
    in_batches: HashMap<String, usize>,
    /// The messages over the cap, with when they were held, per group in arrival order.
    held: HashMap<String, VecDeque<(ReceivedMessage, Instant)>>,
    held_total: usize,
    /// A capped batch's time from cut to done (moving average), for the give-back delay.
    batch_time: Duration,
    /// When the last message given back of each group comes back (a group leaves once passed).
    returning: HashMap<String, Instant>,
    /// The messages given back, by id, with when they are due back: forgotten when they come
    /// back (capped or not), or [`FORGET_AFTER`] past their due time (another instance received
    /// them, or they were deleted).
    given_back: HashMap<String, Instant>,
    /// When `given_back` was last swept of the overdue.
    swept: Option<Instant>,
}

/// A given-back message not back this long after it was due is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The most given-back message ids remembered (about 100 bytes each).
const MAX_REMEMBERED: usize = 100_000;

/// The longest a message over the cap is given back for.
const MAX_GIVE_BACK_SECS: f64 = 120.0;

/// One group's load, for the admin API's noisiest groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLoad {
    pub group: String,
    pub in_batches: usize,
    pub held: usize,
}

impl GroupCap {
    pub fn new(cap: usize, max_held: usize) -> Self {
        GroupCap {
            cap: cap.max(1),
            max_held,
            in_batches: HashMap::new(),
            held: HashMap::new(),
            held_total: 0,
            batch_time: Duration::from_secs(1),
            returning: HashMap::new(),
            given_back: HashMap::new(),
            swept: None,
        }
    }

    /// Lets a message through, holds it, or gives it back (see [`Capped`]).
    pub fn admit(&mut self, m: ReceivedMessage, now: Instant) -> Capped {
        let Some(group) = &m.group_id else { return Capped::Pass(m) };
        self.sweep(now);
        // a message given back before is back: forgotten whether or not its group is capped now
        let returning = self.given_back.remove(&m.message_id).is_some();
        let waiting = self.held.get(group).map_or(0, VecDeque::len);
        let running = self.in_batches.get(group).copied().unwrap_or(0);
        if waiting == 0 && running < self.cap {
            *self.in_batches.entry(group.clone()).or_default() += 1;
            return Capped::Pass(m);
        }
        // a message given back before comes back at its turn: it waits here, ahead of new ones
        // (a receive's worth past the room at most)
        if self.held_total >= self.max_held && !(returning && self.held_total < self.max_held + RECEIVE_MAX) {
            // back when its group could take it: after what waits here and what was given back
            // before it, at the pace the cap lets the group go (cap messages per batch time)
            let each = self.batch_time / self.cap as u32;
            let here = now + each * (waiting + running) as u32;
            let at = self.returning.get(group).map_or(here, |&t| t.max(here)) + each;
            self.returning.insert(group.clone(), at);
            if self.given_back.len() < MAX_REMEMBERED {
                self.given_back.insert(m.message_id.clone(), at);
            }
            let secs = at.saturating_duration_since(now).as_secs_f64().ceil().clamp(1.0, MAX_GIVE_BACK_SECS) as i32;
            return Capped::Release(m, secs);
        }
        self.held.entry(group.clone()).or_default().push_back((m, now));
        self.held_total += 1;
        Capped::Held
    }

    /// Forgets, at most once a second, the given-back messages long overdue, and the groups whose
    /// given-back messages are all due.
    fn sweep(&mut self, now: Instant) {
        if self.swept.is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1)) {
            return;
        }
        self.swept = Some(now);
        self.given_back.retain(|_, due| *due + FORGET_AFTER > now);
        self.returning.retain(|_, at| *at > now);
    }

    /// Given-back messages remembered (until they come back, or long overdue).
    pub fn remembered(&self) -> usize {
        self.given_back.len()
    }

    /// The groups of a cut batch and how many messages of each it carries.
    pub fn count(batch: &Batch) -> Vec<(String, usize)> {
        let mut counted: Vec<(String, usize)> = Vec::new();
        for g in batch.iter().filter_map(|m| m.group_id.as_ref()) {
            match counted.iter_mut().find(|(name, _)| name == g) {
                Some((_, n)) => *n += 1,
                None => counted.push((g.clone(), 1)),
            }
        }
        counted
    }

    /// A batch is done: its groups have room again. Returns the held messages that go on now, in
    /// their groups' order, each with how long it waited.
    pub fn finish(&mut self, done: &GroupsDone, now: Instant) -> Vec<(ReceivedMessage, Duration)> {
        if let Some(cut_at) = done.cut_at {
            let took = now.saturating_duration_since(cut_at);
            self.batch_time = (self.batch_time * 7 + took) / 8;
        }
        self.returning.retain(|_, at| *at > now);
        let mut resume = Vec::new();
        for (group, n) in &done.counted {
            let Some(running) = self.in_batches.get_mut(group) else { continue };
            *running = running.saturating_sub(*n);
            if let Some(waiting) = self.held.get_mut(group) {
                while *running < self.cap {
                    let Some((m, since)) = waiting.pop_front() else { break };
                    *running += 1;
                    self.held_total -= 1;
                    resume.push((m, now.saturating_duration_since(since)));
                }
                if waiting.is_empty() {
                    self.held.remove(group);
                }
            }
            if *running == 0 {
                self.in_batches.remove(group);
            }
        }
        resume
    }

    /// Everything held, and the rest forgotten (shutdown: the batcher stops counting; batches
    /// still running end without it).
    pub fn take_held(&mut self) -> Vec<ReceivedMessage> {
        self.held_total = 0;
        self.in_batches.clear();
        self.returning.clear();
        self.given_back.clear();
        let mut held: Vec<_> = self.held.drain().collect();
        held.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        held.into_iter().flat_map(|(_, q)| q.into_iter().map(|(m, _)| m)).collect()
    }

    /// Messages waiting behind the cap.
    pub fn held(&self) -> usize {
        self.held_total
    }

    /// Groups with messages in batches.
    pub fn groups_in_flight(&self) -> usize {
        self.in_batches.len()
    }

    /// The `n` groups with the most messages in batches and waiting, most first.
    pub fn noisiest(&self, n: usize) -> Vec<GroupLoad> {
        let mut all: Vec<GroupLoad> = self
            .in_batches
            .iter()
            .map(|(g, &running)| GroupLoad {
                group: g.clone(),
                in_batches: running,
                held: self.held.get(g).map_or(0, VecDeque::len),
            })
            .collect();
        all.sort_unstable_by(|a, b| (b.in_batches + b.held, &a.group).cmp(&(a.in_batches + a.held, &b.group)));
        all.truncate(n);
        all
    }
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
        GroupsDone { groups, ..GroupsDone::default() }
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

    /// Everything held (shutdown), by group.
    pub fn take_held(&mut self) -> Vec<ReceivedMessage> {
        self.running.clear();
        let mut held: Vec<_> = self.held.drain().collect();
        held.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        held.into_iter().flat_map(|(_, q)| q).collect()
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
    fn release_after(
        &mut self,
        messages: Vec<ReceivedMessage>,
        secs: i32,
    ) -> impl std::future::Future<Output = ()> + Send;

    /// [`Self::release_after`] for messages over their group's cap, without holding up the
    /// batcher (in a task of its own).
    fn release_in_background(
        &mut self,
        messages: Vec<ReceivedMessage>,
        secs: i32,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// The batching task of one pipeline.
pub struct Batcher<S> {
    pub buffer: BatchBuffer,
    /// Receives from the pollers; closed when the last poller has stopped.
    pub receives: mpsc::Receiver<Vec<ReceivedMessage>>,
    /// FIFO queues: the group rule, fed back by `done`.
    pub gate: Option<GroupGate>,
    /// Standard and fair queues: the per-group cap, fed back by `done` too.
    pub cap: Option<CapStage>,
    pub done: mpsc::UnboundedReceiver<GroupsDone>,
    pub sink: S,
}

/// The group cap with the figures it reports.
pub struct CapStage {
    pub cap: GroupCap,
    pub metrics: crate::metrics::BatchMetrics,
    /// When the noisiest groups were last published to the admin API.
    published: Option<Instant>,
}

impl CapStage {
    pub fn new(cap: GroupCap, metrics: crate::metrics::BatchMetrics) -> Self {
        CapStage { cap, metrics, published: None }
    }

    /// Publishes the gauges, and the noisiest groups at most once a second.
    fn report(&mut self, now: Instant) {
        self.metrics.group_held.set(self.cap.held() as f64);
        self.metrics.groups_in_flight.set(self.cap.groups_in_flight() as f64);
        if self.published.is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1)) {
            self.published = Some(now);
            self.metrics.status.set_noisiest_groups(
                self.cap
                    .noisiest(crate::metrics::NOISIEST_GROUPS)
                    .into_iter()
                    .map(|g| (g.group, g.in_batches, g.held))
                    .collect(),
            );
        }
    }
}

/// Batches cut and not yet submitted, with the groups each started.
type Ready = Vec<(Batch, GroupsDone)>;

/// Messages the group cap gives back, by delay.
type Releases = Vec<(Vec<ReceivedMessage>, i32)>;

impl<S: BatchSink + Send> Batcher<S> {
    /// A batch was cut: its FIFO groups count as running from now on, so that a later message of
    /// one of them is held rather than cut into a second batch.
    fn cut(&mut self, batch: Option<Batch>, ready: &mut Ready) {
        let Some(batch) = batch else { return };
        let mut groups = match &mut self.gate {
            Some(gate) => gate.start(&batch),
            None => GroupsDone::default(),
        };
        if self.cap.is_some() {
            groups.counted = GroupCap::count(&batch);
            groups.cut_at = Some(Instant::now());
        }
        ready.push((batch, groups));
    }

    /// Adds messages to the batch being filled (those the FIFO gate or the group cap let
    /// through); returns those the cap gives back to the queue, with their delays.
    #[must_use]
    fn push_all(&mut self, messages: Vec<ReceivedMessage>, now: Instant, ready: &mut Ready) -> Releases {
        let mut cut = Vec::new();
        let mut releases = Releases::new();
        for m in messages {
            let m = match (&mut self.gate, &mut self.cap) {
                (Some(gate), _) => gate.admit(m),
                (None, Some(stage)) => match stage.cap.admit(m, now) {
                    Capped::Pass(m) => Some(m),
                    Capped::Held => None,
                    Capped::Release(m, secs) => {
                        match releases.iter_mut().find(|(_, s)| *s == secs) {
                            Some((ms, _)) => ms.push(m),
                            None => releases.push((vec![m], secs)),
                        }
                        None
                    }
                },
                (None, None) => Some(m),
            };
            let Some(m) = m else { continue };
            // FIFO: a message that does not fit closes the batch being filled first; that batch
            // runs from now on, so the message is held when its group is in it (else the group
            // would be in two running batches)
            let m = match &self.gate {
                Some(_) if !self.buffer.fits(&m) => {
                    let batch = self.buffer.take();
                    self.cut(batch, ready);
                    let Some(m) = self.gate.as_mut().and_then(|gate| gate.admit(m)) else { continue };
                    m
                }
                _ => m,
            };
            self.buffer.push(m, now, &mut cut);
            for batch in cut.drain(..) {
                self.cut(Some(batch), ready);
            }
        }
        if let Some(stage) = &mut self.cap {
            stage.report(now);
        }
        releases
    }

    /// Releases the messages over their group's cap.
    async fn release_capped(&mut self, releases: Releases) {
        for (messages, secs) in releases {
            if let Some(stage) = &self.cap {
                stage.metrics.group_returned.increment(messages.len() as u64);
            }
            self.sink.release_in_background(messages, secs).await;
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
                    self.received(chunk, &mut ready).await;
                }
                Some(done) = self.done.recv() => self.groups_done(&done, &mut ready).await,
                () = sleep_until_opt(deadline) => {
                    let batch = self.buffer.take();
                    self.cut(batch, &mut ready);
                }
            }
            for (batch, groups) in ready.drain(..) {
                self.sink.submit(batch, groups).await;
            }
        }
        self.flush(&mut ready).await;
    }

    /// A receive's messages: into the buffer (or held by the gate or the cap); with no window,
    /// what has already arrived too, then a cut.
    async fn received(&mut self, chunk: Vec<ReceivedMessage>, ready: &mut Ready) {
        let now = Instant::now();
        let mut releases = self.push_all(chunk, now, ready);
        if self.buffer.window.is_zero() {
            while self.buffer.len() < self.buffer.size {
                let Ok(more) = self.receives.try_recv() else { break };
                releases.extend(self.push_all(more, now, ready));
            }
            let batch = self.buffer.take();
            self.cut(batch, ready);
        }
        self.release_capped(releases).await;
    }

    /// A batch finished: its FIFO groups go on (or go back, after a failure), or the messages
    /// its groups' cap held go to the buffer.
    async fn groups_done(&mut self, done: &GroupsDone, ready: &mut Ready) {
        let now = Instant::now();
        let resume = match (&mut self.gate, &mut self.cap) {
            (Some(gate), _) => {
                let (resume, back) = gate.finish(done);
                for (messages, secs) in back {
                    self.sink.release_after(messages, secs).await;
                }
                resume
            }
            (None, Some(stage)) => {
                let resume = stage.cap.finish(done, now);
                for (_, waited) in &resume {
                    stage.metrics.group_cap_wait.record(waited.as_secs_f64());
                }
                // (already counted in by the cap: straight to the batch)
                let mut cut = Vec::new();
                for (m, _) in resume {
                    self.buffer.push(m, now, &mut cut);
                }
                for batch in cut {
                    self.cut(Some(batch), ready);
                }
                if let Some(stage) = &mut self.cap {
                    stage.report(now);
                }
                Vec::new()
            }
            (None, None) => return,
        };
        // the FIFO gate's messages (it gives nothing back)
        let releases = self.push_all(resume, now, ready);
        self.release_capped(releases).await;
        if self.buffer.window.is_zero() {
            let batch = self.buffer.take();
            self.cut(batch, ready);
        }
    }

    /// The receives ended (shutdown): the last batch is cut and handed on, and what the gate or
    /// the cap still holds is released at once.
    async fn flush(&mut self, ready: &mut Ready) {
        let batch = self.buffer.take();
        self.cut(batch, ready);
        for (batch, groups) in ready.drain(..) {
            self.sink.submit(batch, groups).await;
        }
        let held = match (&mut self.gate, &mut self.cap) {
            (Some(gate), _) => gate.take_held(),
            (None, Some(stage)) => {
                let held = stage.cap.take_held();
                stage.published = None;
                stage.report(Instant::now());
                held
            }
            (None, None) => Vec::new(),
        };
        if !held.is_empty() {
            self.sink.release_after(held, 0).await;
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
            record_json: format!("{{\"body\":\"{}\"}}", "x".repeat(body_len)).into(),
            ..ReceivedMessage::for_test(id.to_string())
        }
    }

    fn buffer(size: usize, window_ms: u64, max_bytes: usize) -> BatchBuffer {
        BatchBuffer::new(&BatchConfig {
            size,
            window: Duration::from_millis(window_ms),
            max_bytes,
            max_in_flight_per_group: None,
        })
    }

    /// A batch's vector is sized for the batch when it opens (up to 256), not grown by doubling
    /// (which left up to twice its messages' room held while the batch was at the worker).
    #[test]
    fn a_batch_has_room_for_its_size_from_its_first_message() {
        let mut out = Vec::new();
        let mut b = buffer(10, 1000, 1 << 20);
        b.push(msg(0, 10), Instant::now(), &mut out);
        assert_eq!(b.messages.capacity(), 10);
        for i in 1..10 {
            b.push(msg(i, 10), Instant::now(), &mut out);
        }
        assert_eq!(out[0].capacity(), 10, "the cut batch, full, without spare room");
        let mut big = buffer(10_000, 1000, 1 << 20);
        big.push(msg(0, 10), Instant::now(), &mut out);
        assert_eq!(big.messages.capacity(), 256, "a large batch starts at 256");
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

    /// A sink that keeps what it is given.
    #[derive(Default, Clone)]
    struct Recorder {
        submitted: std::sync::Arc<std::sync::Mutex<Vec<(Batch, GroupsDone)>>>,
        sent_back: std::sync::Arc<std::sync::Mutex<Vec<ReceivedMessage>>>,
    }

    impl BatchSink for Recorder {
        async fn submit(&mut self, batch: Batch, groups: GroupsDone) {
            self.submitted.lock().unwrap().push((batch, groups));
        }
        async fn release_after(&mut self, messages: Vec<ReceivedMessage>, _secs: i32) {
            self.sent_back.lock().unwrap().extend(messages);
        }
        async fn release_in_background(&mut self, messages: Vec<ReceivedMessage>, _secs: i32) {
            self.sent_back.lock().unwrap().extend(messages);
        }
    }

    /// Issue 30: a FIFO group of messages that do not fit one batch's `max_bytes` (and one larger
    /// than `max_bytes` on its own) ran in several batches at once — the message that closed a
    /// batch started the next one before its group was marked running.
    #[tokio::test(start_paused = true)]
    async fn a_fifo_group_larger_than_max_bytes_is_in_one_running_batch_at_a_time() {
        let (tx, rx) = mpsc::channel(4);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let sink = Recorder::default();
        let batcher = Batcher {
            buffer: buffer(10, 1000, 250),
            receives: rx,
            gate: Some(GroupGate::default()),
            cap: None,
            done: done_rx,
            sink: sink.clone(),
        };
        let task = tokio::spawn(batcher.run());
        // about 100 bytes each: two fit a batch; the sixth is larger than max_bytes alone
        let mut chunk: Vec<ReceivedMessage> = (1..=8).map(|i| grouped(i, "g")).collect();
        for m in &mut chunk {
            m.record_json = format!("{{\"body\":\"{}\"}}", "x".repeat(90)).into();
        }
        chunk[5].record_json = format!("{{\"body\":\"{}\"}}", "x".repeat(400)).into();
        tx.send(chunk).await.unwrap();
        let mut order = Vec::new();
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let running: Vec<(Batch, GroupsDone)> = std::mem::take(&mut *sink.submitted.lock().unwrap());
            assert!(
                running.len() <= 1,
                "group g in {} running batches at once: {:?}",
                running.len(),
                running.iter().map(|(b, _)| ids(b)).collect::<Vec<_>>()
            );
            let Some((batch, groups)) = running.into_iter().next() else { break };
            order.extend(ids(&batch));
            done_tx.send(groups).unwrap();
        }
        assert_eq!(order, ["1", "2", "3", "4", "5", "6", "7", "8"], "in order, each once");
        drop(tx);
        task.await.unwrap();
        assert!(sink.sent_back.lock().unwrap().is_empty());
    }

    fn done(batch: &Batch, cut_at: Instant) -> GroupsDone {
        GroupsDone { counted: GroupCap::count(batch), cut_at: Some(cut_at), ..GroupsDone::default() }
    }

    #[test]
    fn the_group_cap_holds_a_groups_messages_past_the_cap_and_lets_them_on_in_order() {
        let now = Instant::now();
        let mut cap = GroupCap::new(2, 100);
        let mut passed = Vec::new();
        for (id, g) in [(1, "noisy"), (2, "noisy"), (3, "noisy"), (4, "quiet"), (5, "noisy")] {
            match cap.admit(grouped(id, g), now) {
                Capped::Pass(m) => passed.push(m),
                Capped::Held => {}
                Capped::Release(..) => panic!("room to hold"),
            }
        }
        assert_eq!(ids(&passed), ["1", "2", "4"], "noisy at its cap of 2; quiet is not held up");
        assert_eq!(cap.held(), 2);
        assert_eq!(cap.groups_in_flight(), 2);
        // a batch with one noisy message ends: one of noisy's waiting messages goes on, the oldest
        let first: Batch = vec![passed[0].clone(), passed[2].clone()];
        let later = now + Duration::from_millis(300);
        let resumed = cap.finish(&done(&first, now), later);
        assert_eq!(resumed.iter().map(|(m, _)| m.message_id.as_str()).collect::<Vec<_>>(), ["3"]);
        assert_eq!(resumed[0].1, Duration::from_millis(300), "how long it waited");
        assert_eq!(cap.held(), 1);
        // a new noisy message queues behind the one still waiting, even with room at the cap
        assert!(matches!(cap.admit(grouped(6, "noisy"), later), Capped::Held));
        assert_eq!(cap.noisiest(1), vec![GroupLoad { group: "noisy".into(), in_batches: 2, held: 2 }]);
        let rest: Batch = vec![passed[1].clone(), resumed[0].0.clone()];
        let resumed = cap.finish(&done(&rest, later), later);
        assert_eq!(resumed.iter().map(|(m, _)| m.message_id.as_str()).collect::<Vec<_>>(), ["5", "6"]);
        assert_eq!(cap.held(), 0);
        assert!(matches!(cap.admit(msg(7, 1), later), Capped::Pass(_)), "no group: not capped");
    }

    #[test]
    fn the_group_cap_gives_back_what_does_not_fit_the_room_for_a_time_its_group_needs() {
        let now = Instant::now();
        let mut cap = GroupCap::new(1, 2);
        assert!(matches!(cap.admit(grouped(1, "a"), now), Capped::Pass(_)));
        assert!(matches!(cap.admit(grouped(2, "a"), now), Capped::Held));
        assert!(matches!(cap.admit(grouped(3, "a"), now), Capped::Held));
        // the batch time learned so far is about 1 s, a message per second at a cap of 1: three
        // are ahead of it, the next one given back comes a second later
        for (id, want) in [(4, 4), (5, 5), (6, 6)] {
            match cap.admit(grouped(id, "a"), now) {
                Capped::Release(m, secs) => {
                    assert_eq!(m.message_id, id.to_string());
                    assert_eq!(secs, want);
                }
                other => panic!("{other:?}"),
            }
        }
        // a message given back comes back at its turn: it waits even though the room is full
        assert!(matches!(cap.admit(grouped(4, "a"), now + Duration::from_secs(4)), Capped::Held));
        assert!(
            matches!(cap.admit(grouped(7, "a"), now + Duration::from_secs(4)), Capped::Release(..)),
            "a new one does not"
        );
        assert_eq!(cap.take_held().len(), 3);
        assert_eq!(cap.held(), 0);
    }

    /// Issue 30: the ids given back were forgotten only when they came back to a group still
    /// capped; the set filled to its limit and the "ahead of newer messages" rule switched off.
    #[test]
    fn given_back_ids_are_forgotten_when_they_come_back_or_long_overdue() {
        let now = Instant::now();
        let mut cap = GroupCap::new(1, 0);
        let first = match cap.admit(grouped(1, "a"), now) {
            Capped::Pass(m) => m,
            other => panic!("{other:?}"),
        };
        assert!(matches!(cap.admit(grouped(2, "a"), now), Capped::Release(..)));
        assert!(matches!(cap.admit(grouped(3, "a"), now), Capped::Release(..)));
        assert_eq!(cap.remembered(), 2);
        // the group's batch ends: "a" is not capped when message 2 comes back
        assert!(cap.finish(&done(&vec![first], now), now).is_empty());
        let later = now + Duration::from_secs(3);
        let back = match cap.admit(grouped(2, "a"), later) {
            Capped::Pass(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(cap.remembered(), 1, "message 2 is back: forgotten");
        assert!(cap.finish(&done(&vec![back], later), later).is_empty());
        // message 3 never comes back (another instance took it): forgotten once long overdue
        let much_later = later + MAX_GIVE_BACK_SECS as u32 * Duration::from_secs(1) + FORGET_AFTER;
        assert!(matches!(cap.admit(grouped(4, "b"), much_later), Capped::Pass(_)));
        assert_eq!(cap.remembered(), 0);
    }
}
