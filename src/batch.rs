//! Batching: messages from many receives become batches of up to `size` messages, cut by
//! count, by the batching window, and by `max_bytes` of the serialized event.
//!
//! [`BatchBuffer`] is the pure cutting rule (time is an argument); [`Batcher`] is the task that
//! feeds it from the pollers' channel and hands each cut batch to the dispatcher.

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

/// What the batcher hands a cut batch to.
pub trait BatchSink {
    /// Takes the batch on (waiting for room). Must not lose it: a sink that cannot dispatch
    /// releases the messages.
    fn submit(&mut self, batch: Batch) -> impl std::future::Future<Output = ()> + Send;
}

/// The batching task of one pipeline.
pub struct Batcher<S> {
    pub buffer: BatchBuffer,
    /// Receives from the pollers; closed when the last poller has stopped.
    pub receives: mpsc::Receiver<Vec<ReceivedMessage>>,
    pub sink: S,
}

impl<S: BatchSink + Send> Batcher<S> {
    /// Runs until every poller has stopped, then flushes what is buffered.
    pub async fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            let deadline = self.buffer.deadline();
            tokio::select! {
                chunk = self.receives.recv() => {
                    let Some(chunk) = chunk else { break };
                    let now = Instant::now();
                    for m in chunk {
                        self.buffer.push(m, now, &mut ready);
                    }
                    if self.buffer.window.is_zero() {
                        // no window: take what has already arrived, then cut
                        while self.buffer.len() < self.buffer.size {
                            let Ok(more) = self.receives.try_recv() else { break };
                            for m in more {
                                self.buffer.push(m, now, &mut ready);
                            }
                        }
                        ready.extend(self.buffer.take());
                    }
                }
                () = sleep_until_opt(deadline) => {
                    ready.extend(self.buffer.take());
                }
            }
            for batch in ready.drain(..) {
                self.sink.submit(batch).await;
            }
        }
        if let Some(batch) = self.buffer.take() {
            self.sink.submit(batch).await;
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
            received_at: tokio::time::Instant::now(),
            record_json: format!("{{\"body\":\"{}\"}}", "x".repeat(body_len)).into_boxed_str(),
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
