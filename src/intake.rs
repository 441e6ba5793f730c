//! Intake: what happens to the messages of one receive before they are batched.
//!
//! Each SQS message becomes its Lambda record ([`ReceivedMessage`]), is put under lease (a copy of
//! a message that is already leased goes no further), is counted and aged, and meets the filter.
//! Messages the filter rejects are settled here: deleted (Lambda's semantics) or, with
//! `on_filtered = "keep"`, made visible again only after `keep_delay_secs`, so that a queue of
//! messages nobody here wants is not received over and over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::aws::SqsMessage;
use crate::config::{FilterConfig, OnFiltered};
use crate::event::{message_bytes, EventSource, ReceivedMessage};
use crate::lease::{Admission, LeaseKeeper, Reservation};
use crate::metrics::IntakeMetrics;

pub struct Intake {
    source: EventSource,
    filter: Option<FilterConfig>,
    leases: Arc<LeaseKeeper>,
    metrics: IntakeMetrics,
    /// `[pipelines.large_payloads]`: where extended-client pointers are resolved.
    payloads: Option<Arc<crate::payload::PayloadStore>>,
    /// `retry.max_age_secs`: older messages (from their first send) are not dispatched.
    max_age: Option<std::time::Duration>,
    /// Standard queues: sends a long delay's copies that are not yet due on their next hop.
    hopper: Option<Arc<crate::hop::Hopper>>,
    /// Age in ms of the oldest message received since the last depth sample (0: none).
    oldest_age_ms: AtomicU64,
}

impl Intake {
    pub fn new(
        source: EventSource,
        filter: Option<FilterConfig>,
        leases: Arc<LeaseKeeper>,
        metrics: IntakeMetrics,
        payloads: Option<Arc<crate::payload::PayloadStore>>,
    ) -> Self {
        Intake {
            source,
            filter,
            leases,
            metrics,
            payloads,
            max_age: None,
            hopper: None,
            oldest_age_ms: AtomicU64::new(0),
        }
    }

    /// A long delay's copy that is not yet due goes on its next hop as it arrives (see `hop`),
    /// neither filtered nor dispatched. Without a hopper (FIFO) the attribute is not read.
    pub fn with_hopper(mut self, hopper: Option<Arc<crate::hop::Hopper>>) -> Self {
        self.hopper = hopper;
        self
    }

    /// Messages first sent longer ago than `max_age` (`retry.max_age_secs`) fail for good as
    /// they arrive: dead-lettered with reason `expired`, never dispatched, whatever the filter says.
    pub fn with_max_age(mut self, max_age: Option<std::time::Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    /// Takes one receive (`stamp`: when it was sent, with what visibility timeout) on: leases its messages (with the room reserved for
    /// it) — before anything else, so the lease covers the large-payload fetch and a duplicate
    /// is not fetched at all —, resolves large payloads, settles what the filter rejects, and
    /// returns the messages that go on to the batcher, in receive order, with how many were kept
    /// back by the filter or sent on a long delay's next hop (which are no demand for the
    /// autoscaler).
    pub async fn take(
        &self,
        reservation: Reservation,
        messages: Vec<SqsMessage>,
        stamp: crate::lease::ReceiveStamp,
    ) -> (Vec<ReceivedMessage>, usize) {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        // without an id or a receipt handle a message cannot be leased, deleted or released
        let (leasable, malformed): (Vec<SqsMessage>, Vec<SqsMessage>) =
            messages.into_iter().partition(|m| m.message_id.is_some() && m.receipt_handle.is_some());
        for m in &malformed {
            let missing = if m.message_id.is_none() { "MessageId" } else { "ReceiptHandle" };
            tracing::error!(pipeline = %self.metrics.pipeline, missing, "skipping a message SQS returned without its {missing}");
        }
        self.metrics.received.increment(leasable.len() as u64);
        let admissions = self.leases.admit_sized(
            reservation,
            leasable.iter().map(|m| {
                (m.message_id.as_deref().unwrap_or(""), m.receipt_handle.as_deref().unwrap_or(""), message_bytes(m))
            }),
            stamp,
        );
        let new = self.go_on(leasable, admissions).await;
        let resolved = self.resolve_payloads(new).await;
        let mut pass = Vec::with_capacity(resolved.len());
        let mut rejected = Vec::new();
        let mut hopping = Vec::new();
        let mut oldest_ms = 0;
        for (m, s3_object, unresolved) in resolved {
            let expired = self.expired(&m, now_ms);
            let due_in = self.hopper.as_ref().and_then(|_| crate::event::Hop::of(&m)).map_or(0, |h| h.due_in_seconds);
            let mut m = ReceivedMessage::from_sqs(m, &self.source).expect("id and receipt handle checked above");
            self.leases.hold_record(&m.message_id, &m.record_json);
            if let Some(u) = &unresolved {
                self.log_unresolved(&m.message_id, u);
            }
            // boxed: most messages have neither, and every message in flight carries the fields
            m.s3_object = s3_object.map(Box::new);
            m.unresolved = unresolved.map(Box::new);
            if let Some(sent) = m.sent_timestamp_ms {
                let age_ms = now_ms.saturating_sub(sent);
                oldest_ms = oldest_ms.max(age_ms);
                self.metrics.message_age.record(age_ms as f64 / 1000.0);
            }
            if let Some(reason) = expired {
                // dead-lettered untouched: never dispatched, whatever the filter would say
                tracing::warn!(pipeline = %self.metrics.pipeline, message_id = %m.message_id, %reason, "a message past retry.max_age_secs: dead-lettered, not dispatched");
                m.unresolved = Some(Box::new(crate::event::Unresolved { reason, refused: true }));
                pass.push(m);
            } else if due_in > 0 {
                hopping.push((m, due_in));
            } else if self.passes_filter(&m) {
                pass.push(m);
            } else {
                rejected.push(m);
            }
        }
        self.oldest_age_ms.fetch_max(oldest_ms.max(1), Ordering::Relaxed);
        let kept = self.settle_filtered(&rejected).await;
        if let Some(hopper) = &self.hopper {
            hopper.hop(&hopping.iter().map(|(m, due_in)| (m, *due_in)).collect::<Vec<_>>(), false).await;
        }
        (pass, kept + hopping.len())
    }

    fn log_unresolved(&self, message_id: &str, u: &crate::event::Unresolved) {
        let reason = &u.reason;
        if u.refused {
            tracing::warn!(pipeline = %self.metrics.pipeline, message_id, %reason, "a large payload pointer names a bucket outside large_payloads.allowed_buckets: not fetched; the message fails for good");
        } else {
            tracing::warn!(pipeline = %self.metrics.pipeline, message_id, %reason, "a large payload could not be fetched; the message fails");
        }
    }

    /// The messages of a receive that go on: the newly leased ones, but on a FIFO queue not
    /// those behind a copy of a message already leased here in their group — they go back to
    /// the queue at once, to follow it (its batch may fail and send it back).
    async fn go_on(&self, leasable: Vec<SqsMessage>, admissions: Vec<Admission>) -> Vec<SqsMessage> {
        let fifo = self.source.queue_arn.ends_with(".fifo");
        let groups: Vec<Option<&str>> = leasable.iter().map(|m| if fifo { group_of(m) } else { None }).collect();
        let behind = behind_duplicates(&groups, &admissions);
        let mut new = Vec::with_capacity(leasable.len());
        let mut sent_back = Vec::new();
        for ((m, a), behind) in leasable.into_iter().zip(admissions).zip(behind) {
            match (a, behind) {
                (Admission::New, false) => new.push(m),
                (Admission::New, true) => sent_back.push(m),
                (Admission::Duplicate, _) => {}
            }
        }
        if !sent_back.is_empty() {
            // FIFO: a copy of a message leased here came back (its visibility lapsed): the
            // group's later messages wait behind it, in the queue, not ahead of it here
            let ids: Vec<&str> = sent_back.iter().filter_map(|m| m.message_id.as_deref()).collect();
            tracing::debug!(pipeline = %self.metrics.pipeline, messages = ids.len(), "FIFO: messages behind a copy of a leased message go back to the queue");
            self.leases.release(&ids).await;
        }
        new
    }

    /// Why `m` is past `retry.max_age_secs` at `now_ms`, counted from its first send (a copy's
    /// `sqs-poller.first-sent`, else its `SentTimestamp`); `None` when it is not.
    fn expired(&self, m: &SqsMessage, now_ms: u64) -> Option<String> {
        let max_age = self.max_age?;
        let age_ms = now_ms.saturating_sub(crate::event::first_sent_ms(m)?);
        (u128::from(age_ms) > max_age.as_millis()).then(|| {
            format!("expired: first sent {} s ago, past retry.max_age_secs = {}", age_ms / 1000, max_age.as_secs())
        })
    }

    /// Large payloads: the record carries the real body, and a fetched payload takes its size
    /// of the byte budget with its message's lease.
    async fn resolve_payloads(&self, new: Vec<SqsMessage>) -> Vec<crate::payload::Resolved> {
        let Some(store) = &self.payloads else {
            return new.into_iter().map(|m| (m, None, None)).collect();
        };
        let resolved = crate::payload::resolve(store, new).await;
        for (m, offloaded, unresolved) in &resolved {
            if offloaded.is_some() && unresolved.is_none() {
                self.leases
                    .charge_payload(m.message_id.as_deref().unwrap_or_default(), m.body.as_deref().map_or(0, str::len));
            }
        }
        resolved
    }

    fn passes_filter(&self, m: &ReceivedMessage) -> bool {
        let Some(f) = &self.filter else { return true };
        // record_json is serde_json's own output; were it ever unreadable, deliver rather than drop
        f.filter.matches_json(&m.record_json).unwrap_or(true)
    }

    /// Deletes (Lambda's semantics) or keeps (visible again after the keep delay) what the
    /// filter rejected; returns how many were kept.
    async fn settle_filtered(&self, rejected: &[ReceivedMessage]) -> usize {
        let Some(f) = &self.filter else { return 0 };
        if rejected.is_empty() {
            return 0;
        }
        self.metrics.filtered.increment(rejected.len() as u64);
        let ids: Vec<&str> = rejected.iter().map(|m| m.message_id.as_str()).collect();
        match f.on_filtered {
            OnFiltered::Delete => {
                let deleted = self.leases.delete(&ids).await;
                self.metrics.deleted.increment(deleted.len() as u64);
                0
            }
            OnFiltered::Keep => {
                let delay = f.keep_delay.as_secs() as i32;
                let entries: Vec<(&str, i32)> = ids.iter().map(|id| (*id, delay)).collect();
                self.leases.release_after(&entries).await;
                rejected.len()
            }
        }
    }

    /// The oldest age seen since the last call, if anything was received.
    pub fn take_oldest_age_ms(&self) -> Option<u64> {
        Some(self.oldest_age_ms.swap(0, Ordering::Relaxed)).filter(|&ms| ms > 0)
    }
}

/// A FIFO message's group.
fn group_of(m: &SqsMessage) -> Option<&str> {
    let system = m.attributes.as_ref()?;
    system.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId).map(String::as_str)
}

/// FIFO: which messages of a receive come after a copy of a message already leased here in
/// their group (`groups[i]`: message `i`'s group, `None` on a standard queue). They must not go
/// ahead of it: its batch may fail and send it back.
fn behind_duplicates(groups: &[Option<&str>], admissions: &[Admission]) -> Vec<bool> {
    let mut stopped: Vec<&str> = Vec::new();
    groups
        .iter()
        .zip(admissions)
        .map(|(g, a)| {
            let Some(g) = *g else { return false };
            if stopped.contains(&g) {
                return true;
            }
            if *a == Admission::Duplicate {
                stopped.push(g);
            }
            false
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// Found by the exploration (seed 6567705366351632490): a FIFO receive brought back a copy of
    /// a message whose batch was running (its visibility had lapsed), and the group's later
    /// messages of that receive went on; the running batch failed, and they were processed
    /// before it. They now go back behind it.
    #[test]
    fn a_groups_messages_behind_a_leased_copy_go_back() {
        use super::{behind_duplicates, Admission::*};
        let groups = [Some("a"), Some("a"), Some("b"), Some("a"), Some("b"), None];
        let admissions = [New, Duplicate, New, New, New, New];
        assert_eq!(behind_duplicates(&groups, &admissions), [false, false, false, true, false, false]);
        assert_eq!(behind_duplicates(&[None, None], &[Duplicate, New]), [false, false], "standard queues");
    }

    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use super::*;
    use crate::sim::{SimConfig, SimQueue};

    /// A body that JSON escaping doubles (quotes and backslashes) makes a record twice what SQS
    /// counts of the message: its lease takes the record's size of the byte budget, and gives
    /// it all back when it is settled.
    #[tokio::test]
    async fn a_message_holds_at_least_its_records_size_of_the_byte_budget() {
        let secs = Duration::from_secs;
        let queue = Arc::new(SimQueue::new(SimConfig::new("http://sim/q", secs(30), 1)));
        let metrics = crate::metrics::PipelineMetrics::new("t", 1, 1, 1);
        let status = metrics.status.clone();
        let leases = Arc::new(
            LeaseKeeper::new(queue, secs(30), secs(3600), 1000, metrics.lease).with_byte_budget(100 << 20, 256 * 1024),
        );
        let source =
            EventSource { queue_arn: "arn:aws:sqs:us-east-1:000000000000:q".into(), region: "us-east-1".into() };
        let intake = Intake::new(source, None, leases.clone(), metrics.intake, None);
        let body = "\"\\".repeat(32 * 1024);
        let plain = "x".repeat(64 * 1024);
        let messages = vec![
            SqsMessage::builder().message_id("escaped").receipt_handle("rh1").body(&body).build(),
            SqsMessage::builder().message_id("plain").receipt_handle("rh2").body(&plain).build(),
        ];
        let (pass, _) = intake.take(leases.reserve().await, messages, leases.stamp()).await;
        let escaped = pass[0].record_json.len();
        assert!(escaped > 2 * body.len(), "the record escapes every byte: {escaped}");
        let held = status.in_flight_bytes.load(Relaxed);
        // the plain one as SQS counts it (64 KiB and the 2 KiB overhead), the escaped one its record
        let expected = (escaped.div_ceil(1024) + 64 + 2) * 1024;
        assert_eq!(held, expected, "held {held}, records {escaped} + {}", pass[1].record_json.len());
        leases.release(&["escaped", "plain"]).await;
        assert_eq!(status.in_flight_bytes.load(Relaxed), 0, "every byte given back");
    }
}
