//! Delays past SQS's limits: a retry the worker asked to come back later than a visibility
//! timeout can hold (12 hours) is carried by re-sending the message to its own queue in hops of
//! `DelaySeconds`, at most 15 minutes each, until it is due.
//!
//! Each copy carries its body, every message attribute and the `AWSTraceHeader`; in
//! [`HOP_ATTRIBUTE`] the delay left after its own hop, the receives so far (so
//! `max_receive_count` counts across hops) and the hops made; in `sqs-poller.first-sent` the
//! first `SentTimestamp` (so `retry.max_age_secs` counts across hops too). The message it was
//! copied from is deleted only after SQS accepted the copy: when the send fails, the message
//! stays, visible again after the longest delay a visibility timeout allows.
//!
//! Intake sends a copy that is not yet due on its next hop, without filtering or dispatching it;
//! the copy whose hop ends the delay is due when it arrives. Standard queues only: a FIFO queue
//! takes no per-message delay and a copy would leave its place in its group, so a FIFO
//! pipeline's worker cannot ask for more than the visibility timeout's 12 hours.

use std::sync::Arc;

use aws_sdk_sqs::types::MessageAttributeValue;

use crate::event::{carry_first_sent, ReceivedMessage, MAX_MESSAGE_ATTRIBUTES};
pub use crate::event::{Hop, HOP_ATTRIBUTE};
use crate::lease::LeaseKeeper;
use crate::sqs::{Outgoing, Queue, SqsError};

/// The longest `DelaySeconds` SQS takes: one hop.
pub const MAX_HOP_SECS: u64 = 900;

/// The next hop of a message that waits `due_in_secs` more (after `receive_count` receives and
/// `hops` hops): the copy's `DelaySeconds` and what it carries. The odd part goes first, so every
/// later hop is a whole 15 minutes.
pub fn next_hop(due_in_secs: u64, receive_count: u32, hops: u32) -> (u32, Hop) {
    let delay = match due_in_secs % MAX_HOP_SECS {
        0 => due_in_secs.min(MAX_HOP_SECS),
        odd => odd,
    };
    (delay as u32, Hop { due_in_seconds: due_in_secs - delay, receive_count, hops: hops.saturating_add(1) })
}

/// Sends messages on their next hop and deletes them once their copy is accepted.
pub struct Hopper {
    /// The source queue: the copies go back into it.
    pub queue: Arc<dyn Queue>,
    pub leases: Arc<LeaseKeeper>,
    pub pipeline: String,
    /// `sqs_poller_hops_total`: copies accepted.
    pub hops: metrics::Counter,
}

impl Hopper {
    /// Sends each of `messages` (with the seconds it still waits) on its next hop, then deletes
    /// the ones whose copy SQS accepted. `dispatched`: this receive of theirs reached the worker
    /// (a retry's first hop), so it counts as a receive; a copy's receive on its way (intake's)
    /// does not.
    ///
    /// A message whose copy SQS did not accept stays: a copy on its way comes back after one
    /// hop's time and tries again (its delay a hop longer, never shorter); a retry's first hop
    /// waits what a visibility timeout holds (12 hours), its delay cut short rather than lost.
    pub async fn hop(&self, messages: &[(&ReceivedMessage, u64)], dispatched: bool) {
        if messages.is_empty() {
            return;
        }
        let sends = futures_util::future::join_all(messages.iter().map(|&(m, due_in)| async move {
            let receives = if dispatched { m.receive_count } else { m.receive_count.saturating_sub(1) };
            let sent = match self.copy(m, due_in, receives) {
                Ok(copy) => self.leases.send_copy(self.queue.as_ref(), copy).await,
                Err(e) => Err(e),
            };
            (m, sent)
        }))
        .await;
        let mut sent = Vec::new();
        let mut unsent = Vec::new();
        for (&(m, due_in), r) in messages.iter().zip(sends) {
            match r.1 {
                Ok(()) if dispatched => {
                    tracing::info!(pipeline = %self.pipeline, message_id = %m.message_id, due_in_secs = due_in, "the worker asked for a retry later than a visibility timeout holds (12 h): the message was re-sent to its queue, in hops of at most 15 minutes until it is due");
                    sent.push(m.message_id.as_str());
                }
                Ok(()) => {
                    tracing::debug!(pipeline = %self.pipeline, message_id = %m.message_id, due_in_secs = due_in, "a delayed copy sent on its next hop");
                    sent.push(m.message_id.as_str());
                }
                Err(e) => {
                    let wait = due_in.min(if dispatched { crate::config::MAX_VISIBILITY_SECS } else { MAX_HOP_SECS });
                    tracing::error!(pipeline = %self.pipeline, message_id = %m.message_id, error = %e, wait_secs = wait, "could not send a delayed message on its next hop; it stays in the queue, visible again after wait_secs");
                    unsent.push((m.message_id.as_str(), wait as i32));
                }
            }
        }
        self.hops.increment(sent.len() as u64);
        self.leases.delete(&sent).await;
        self.leases.release_after(&unsent).await;
    }

    /// The copy of `m` that waits `due_in` more seconds, after `receives` receives, or why there
    /// is none.
    fn copy<'m>(&self, m: &'m ReceivedMessage, due_in: u64, receives: u32) -> Result<Outgoing<'m>, SqsError> {
        let (body, mut attributes) = m.copy_parts();
        let carried = attributes.get(HOP_ATTRIBUTE).and_then(MessageAttributeValue::string_value);
        let hops = carried.and_then(|v| serde_json::from_str::<Hop>(v).ok()).map_or(0, |h| h.hops);
        let (delay, hop) = next_hop(due_in, receives, hops);
        let hop_value = MessageAttributeValue::builder().data_type("String").string_value(hop.to_attribute());
        attributes.insert(HOP_ATTRIBUTE.into(), hop_value.build().expect("data type set"));
        if attributes.len() > MAX_MESSAGE_ATTRIBUTES {
            return Err(SqsError::coded(
                "SendMessage",
                "TooManyAttributes",
                "the message has 10 message attributes already: no room for sqs-poller.hop",
                false,
            ));
        }
        carry_first_sent(&mut attributes, m.sent_timestamp_ms);
        // a fair queue's messages keep their group; a standard queue takes no deduplication id
        let mut copy = Outgoing::new(body, attributes).grouped(m.group_id.as_deref(), None);
        copy.delay_secs = delay;
        copy.trace_header = m.trace_header.as_deref();
        Ok(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_are_at_most_fifteen_minutes_and_the_last_one_ends_the_delay() {
        // 13 hours: 52 hops of 900 s, the last one due on arrival
        let mut due_in = 13 * 3600;
        let mut hops = 0;
        let mut delays = Vec::new();
        while due_in > 0 {
            let (delay, hop) = next_hop(due_in, 3, hops);
            delays.push(delay);
            assert_eq!(hop.receive_count, 3);
            assert_eq!(hop.hops, hops + 1);
            (due_in, hops) = (hop.due_in_seconds, hop.hops);
        }
        assert_eq!(delays.len(), 52);
        assert!(delays.iter().all(|&d| d == 900));
        // a delay that is not a multiple of 900: the first hop is the odd part
        let (delay, hop) = next_hop(1000, 1, 0);
        assert_eq!((delay, hop.due_in_seconds), (100, 900));
        let (delay, hop) = next_hop(hop.due_in_seconds, 1, hop.hops);
        assert_eq!((delay, hop.due_in_seconds, hop.hops), (900, 0, 2));
        assert_eq!(next_hop(0, 1, 0).0, 0, "due");
    }

    #[test]
    fn the_attribute_round_trips_and_a_stray_one_delays_nothing() {
        let hop = Hop { due_in_seconds: 45_900, receive_count: 4, hops: 1 };
        assert_eq!(hop.to_attribute(), r#"{"dueInSeconds":45900,"receiveCount":4,"hops":1}"#);
        let with = |v: &str| {
            crate::aws::SqsMessage::builder()
                .message_attributes(
                    HOP_ATTRIBUTE,
                    MessageAttributeValue::builder().data_type("String").string_value(v).build().unwrap(),
                )
                .build()
        };
        assert_eq!(Hop::of(&with(&hop.to_attribute())), Some(hop));
        assert_eq!(Hop::of(&with("soon")), None);
        assert_eq!(Hop::of(&with(r#"{"dueInSeconds":-1}"#)), None);
    }
}
