//! `sqs-poller redrive`: move messages from a dead-letter queue back to a queue.
//!
//! Each message is sent to the destination (body and message attributes kept, the
//! `sqs-poller.*` dead-letter attributes dropped so a new failure records fresh ones; a FIFO
//! destination gets the message's group and its id as the deduplication id) and only then
//! deleted from the source. The copy carries when the message was first sent
//! (`sqs-poller.first-sent`, kept from the dead-letter copy or taken from its `SentTimestamp`), so
//! `retry.max_age_secs` still counts from the first send. A message whose send fails stays in the source queue and is
//! visible again after 30 s.
//!
//! `--pattern` moves only the messages whose Lambda record matches an EventBridge pattern (the
//! filter engine of `[pipelines.filter]`); the others are left in the source, visible again when
//! the run ends. `--rate` paces the sends (messages per second).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};

use crate::aws::SqsMessage;
use crate::metrics::PipelineMetrics;
use crate::sqs::{Outgoing, SqsClients, SqsError, SqsQueue};

/// How long received messages stay hidden in the source while they are being moved.
const MOVE_VISIBILITY: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedriveReport {
    pub moved: u64,
    pub failed: u64,
    /// Messages a `--pattern` did not match, left in the source.
    pub skipped: u64,
    /// The source's approximate message count when the run began (for a progress estimate).
    pub expected: u64,
}

/// What to move, and how fast.
#[derive(Debug, Default, Clone)]
pub struct RedriveOptions {
    /// Move at most this many.
    pub limit: Option<u64>,
    /// Move only messages whose record matches.
    pub filter: Option<crate::filter::Filter>,
    /// Messages per second at most.
    pub rate: Option<u32>,
}

/// Moves messages from `from` to `to` as `options` say; `progress` is called after each receive.
///
/// # Errors
/// When the source cannot be read (it does not exist, access is denied, the endpoint is down).
pub async fn redrive(
    clients: &SqsClients,
    from: &str,
    to: &str,
    options: &RedriveOptions,
    progress: &mut dyn FnMut(RedriveReport),
) -> Result<RedriveReport, SqsError> {
    let metrics = PipelineMetrics::new("redrive", 0, 0, 0).sqs;
    let region = clients.region.clone();
    let mut mover = Mover {
        source: SqsQueue::new(clients, from, metrics.clone()),
        destination: SqsQueue::new(clients, to, metrics),
        to_fifo: to.ends_with(".fifo"),
        options,
        event_source: crate::event::EventSource { queue_arn: crate::event::arn_from_queue_url(from, &region), region },
        skipped: HashMap::new(),
        started: tokio::time::Instant::now(),
        report: RedriveReport::default(),
    };
    let depth = [aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages];
    if let Ok(a) = mover.source.attributes(&depth).await {
        mover.report.expected = a.get("ApproximateNumberOfMessages").and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    let result = mover.run(progress).await;
    // what the pattern left is visible again at once
    let receipts: Vec<&str> = mover.skipped.values().map(String::as_str).collect();
    mover.source.make_visible(&receipts).await;
    result.map(|()| mover.report)
}

/// One redrive: the two queues, what it moved, and the messages a pattern did not match
/// (by id, with their last receipt handle: counted once, made visible again at the end).
struct Mover<'a> {
    source: SqsQueue,
    destination: SqsQueue,
    to_fifo: bool,
    options: &'a RedriveOptions,
    event_source: crate::event::EventSource,
    skipped: HashMap<String, String>,
    started: tokio::time::Instant,
    report: RedriveReport,
}

impl Mover<'_> {
    /// Receives and moves until the limit, or until two receives in a row brought nothing new.
    async fn run(&mut self, progress: &mut dyn FnMut(RedriveReport)) -> Result<(), SqsError> {
        let limit = self.options.limit;
        let mut empty_receives = 0;
        while limit.is_none_or(|l| self.report.moved + self.report.failed < l) && empty_receives < 2 {
            let received = self.source.receive(Duration::from_secs(1), Some(MOVE_VISIBILITY), None).await?;
            let (mut messages, new_skips) = self.matching(received);
            if messages.is_empty() {
                if new_skips == 0 {
                    empty_receives += 1;
                }
                continue;
            }
            empty_receives = 0;
            let room = limit.map_or(usize::MAX, |l| (l - self.report.moved - self.report.failed) as usize);
            if messages.len() > room {
                let put_back = messages.split_off(room);
                let receipts: Vec<&str> = put_back.iter().filter_map(|m| m.receipt_handle.as_deref()).collect();
                self.source.make_visible(&receipts).await;
            }
            self.move_messages(&messages).await;
            progress(self.report);
        }
        Ok(())
    }

    /// The received messages the pattern matches (all, without one), and how many of the
    /// others it had not seen before.
    fn matching(&mut self, received: Vec<SqsMessage>) -> (Vec<SqsMessage>, usize) {
        let mut messages = Vec::with_capacity(received.len());
        let mut new_skips = 0;
        for m in received {
            let id = m.message_id.clone().unwrap_or_default();
            let passes = self.options.filter.as_ref().is_none_or(|f| {
                crate::event::ReceivedMessage::from_sqs(m.clone(), &self.event_source)
                    .is_ok_and(|r| f.matches_json(&r.record_json).unwrap_or(false))
            });
            if passes {
                messages.push(m);
            } else {
                if !self.skipped.contains_key(&id) {
                    new_skips += 1;
                }
                self.skipped.insert(id, m.receipt_handle.unwrap_or_default());
            }
        }
        self.report.skipped = self.skipped.len() as u64;
        (messages, new_skips)
    }

    /// Sends a copy of each message (paced at `rate`, else all at once) and deletes the ones
    /// SQS took a copy of; a message whose copy failed stays in the source.
    async fn move_messages(&mut self, take: &[SqsMessage]) {
        let sends = match self.options.rate {
            // paced: one at a time, each at its turn
            Some(rate) => {
                let mut sends = Vec::with_capacity(take.len());
                for m in take {
                    let turn = self.report.moved + self.report.failed + sends.len() as u64;
                    let at = self.started + Duration::from_secs_f64(turn as f64 / f64::from(rate.max(1)));
                    tokio::time::sleep_until(at).await;
                    sends.push(send_copy(&self.destination, m, self.to_fifo).await);
                }
                sends
            }
            // into a FIFO queue a group's messages go one after the other, in their order (sent
            // at once, they arrived in whatever order the requests did); groups side by side
            None if self.to_fifo => {
                let mut groups: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
                for (i, m) in take.iter().enumerate() {
                    let g = group_of(m);
                    match groups.iter_mut().find(|(name, _)| *name == g) {
                        Some((_, members)) => members.push(i),
                        None => groups.push((g, vec![i])),
                    }
                }
                let destination = &self.destination;
                let per_group = futures_util::future::join_all(groups.iter().map(|(_, members)| async move {
                    let mut sent = Vec::with_capacity(members.len());
                    for &i in members {
                        sent.push((i, send_copy(destination, &take[i], true).await));
                    }
                    sent
                }))
                .await;
                let mut sends: Vec<(usize, Result<(), SqsError>)> = per_group.into_iter().flatten().collect();
                sends.sort_by_key(|(i, _)| *i);
                sends.into_iter().map(|(_, r)| r).collect()
            }
            None => {
                futures_util::future::join_all(take.iter().map(|m| send_copy(&self.destination, m, self.to_fifo))).await
            }
        };
        let sent: Vec<&str> = take
            .iter()
            .zip(&sends)
            .filter(|(_, r)| r.is_ok())
            .filter_map(|(m, _)| m.receipt_handle.as_deref())
            .collect();
        for (m, r) in take.iter().zip(&sends) {
            if let Err(e) = r {
                tracing::error!(message_id = m.message_id.as_deref().unwrap_or(""), error = %e, "could not send; the message stays in the source queue");
            }
        }
        let not_deleted = self.source.delete(&sent).await;
        self.report.moved += (sent.len() - not_deleted.len()) as u64;
        self.report.failed += (take.len() - sent.len() + not_deleted.len()) as u64;
    }
}

async fn send_copy(destination: &SqsQueue, m: &SqsMessage, fifo: bool) -> Result<(), SqsError> {
    let first_sent = crate::event::FIRST_SENT_ATTRIBUTE;
    let mut attributes: HashMap<String, MessageAttributeValue> = m
        .message_attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("sqs-poller.") || k == first_sent)
        .collect();
    crate::event::carry_first_sent(&mut attributes, crate::event::first_sent_ms(m));
    let group = group_of(m);
    let group = if fifo { group.or(Some("redrive")) } else { None };
    let dedup = if fifo { m.message_id.as_deref() } else { None };
    destination.send(Outgoing::new(m.body.as_deref().unwrap_or(""), attributes).grouped(group, dedup)).await
}

/// [`redrive`] for the command line: the progress on stderr (on a terminal a bar that rewrites
/// itself, else a plain line at most once a second: a large dead-letter queue moves 10 messages
/// per call), then the final figures.
///
/// # Errors
/// As [`redrive`].
pub async fn redrive_showing_progress(
    clients: &SqsClients,
    from: &str,
    to: &str,
    options: &RedriveOptions,
) -> Result<RedriveReport, SqsError> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let report = redrive(clients, from, to, options, &mut |r| {
        if terminal || last.elapsed() >= Duration::from_secs(1) {
            last = std::time::Instant::now();
            eprint!("{}", progress_line(&r, started, terminal));
        }
    })
    .await?;
    // on a terminal over the last progress line, then a newline
    let last = progress_line(&report, started, terminal);
    if terminal {
        eprintln!("{last}");
    } else {
        eprint!("{last}");
    }
    Ok(report)
}

/// One progress line: on a terminal it rewrites itself (with rate and ETA); otherwise a plain
/// line at most once a second.
pub fn progress_line(r: &RedriveReport, started: std::time::Instant, terminal: bool) -> String {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let rate = r.moved as f64 / secs;
    let left = r.expected.saturating_sub(r.moved + r.failed + r.skipped);
    let eta = if rate > 0.0 && left > 0 { format!(", about {:.0} s left", left as f64 / rate) } else { String::new() };
    let skipped = if r.skipped > 0 { format!(", {} not matching", r.skipped) } else { String::new() };
    let line = format!("redrive: {} moved, {} failed{skipped} ({rate:.0}/s{eta})", r.moved, r.failed);
    if terminal {
        // a bar when the queue's size is known
        let done = r.moved + r.failed + r.skipped;
        let line = match (done.min(r.expected) * 24).checked_div(r.expected) {
            Some(filled) => {
                let filled = filled as usize;
                format!("[{}{}] {line}", "#".repeat(filled), ".".repeat(24 - filled))
            }
            None => line,
        };
        format!("\r{line}\x1b[K")
    } else {
        line + "\n"
    }
}

/// A message's `MessageGroupId`, if it has one.
fn group_of(m: &SqsMessage) -> Option<&str> {
    m.attributes.as_ref()?.get(&MessageSystemAttributeName::MessageGroupId).map(String::as_str)
}
