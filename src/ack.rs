//! Acknowledgement: what happens to each message of a batch once its outcome is known.
//!
//! [`plan`] is the pure decision — these are deleted, these retry after this backoff, these go
//! to the dead-letter queue — and [`Acker`] carries it out through the [`LeaseKeeper`], which
//! ends each message's lease. Nothing is deleted that the target did not report as processed; a
//! message whose dead-letter copy could not be sent stays in the source queue.
//!
//! Dead-letter copies are built so that SQS accepts them: attribute values hold only the
//! characters SQS allows ([`sqs_safe`]), and `MessageDeduplicationId` goes to FIFO queues only —
//! a standard queue's messages may carry a `MessageGroupId` (fair queues), which is kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::MessageAttributeValue;

use crate::config::RetryConfig;
use crate::dispatch::response::{self, Ask, Verdict};
use crate::event::{carry_first_sent, ReceivedMessage, MAX_MESSAGE_ATTRIBUTES};
use crate::hop::Hopper;
use crate::lease::LeaseKeeper;
use crate::metrics::AckMetrics;
use crate::sqs::{Outgoing, Queue};

/// Longest reason text written to a dead-letter attribute.
const MAX_REASON_LEN: usize = 256;

/// What to do with each message of a batch (indexes into the batch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckPlan {
    /// Processed: delete.
    pub delete: Vec<usize>,
    /// Failed: visible again after this many seconds.
    pub retry: Vec<(usize, i32)>,
    /// Failed for the last time: copy to the dead-letter queue, then delete.
    pub dead_letter: Vec<usize>,
    /// Of `dead_letter`, the messages the worker sent there (`deadLetter`), with its reason.
    pub asked: Vec<(usize, String)>,
    /// Failed, the worker asked for longer than a visibility timeout holds (standard queues):
    /// re-sent in hops, due in this many seconds.
    pub hop: Vec<(usize, u64)>,
}

impl AckPlan {
    pub fn failed(&self) -> usize {
        self.retry.len() + self.dead_letter.len() + self.hop.len()
    }
}

/// Decides the fate of each message. `jitter` yields numbers in `[0, 1)`.
///
/// `max_receive_count` is the dead-letter threshold when `[pipelines.dead_letter]` is set: a
/// failed message that has been received that many times is dead-lettered instead of retried,
/// and so is one that can never succeed (its large payload's bucket is not allowed) at once.
///
/// What the worker asked for a failed message comes first: `deadLetter` sends it to the
/// dead-letter queue at once (when the pipeline has one; else it is retried), and
/// `retryAfterSeconds` replaces the backoff: up to SQS's 12 hours of visibility as a visibility
/// timeout, beyond them on a standard queue as hops (see `hop`).
///
/// FIFO (`fifo`): only the first failed message of each group failed on its own; the later
/// messages of that group in the batch were stopped behind it (never processed, whatever the
/// handler reported or asked for them), so they are retried, never dead-lettered — one poison
/// message must not drag the rest of its group to the dead-letter queue. A group's retried
/// messages share the delay of its first (its backoff, or what the worker asked), so they come
/// back together and in order.
pub fn plan(
    batch: &[ReceivedMessage],
    verdict: &Verdict,
    retry: &RetryConfig,
    max_receive_count: Option<u32>,
    fifo: bool,
    jitter: &mut dyn FnMut() -> f64,
) -> AckPlan {
    let mut asks: Vec<Option<&Ask>> = vec![None; batch.len()];
    match verdict {
        Verdict::AllSucceeded => {}
        Verdict::Partial(failed) => failed.iter().for_each(|f| asks[f.index] = Some(&f.ask)),
        Verdict::AllFailed(_) => asks.iter_mut().for_each(|a| *a = Some(&Ask::Retry)),
    }
    let mut out = AckPlan::default();
    // FIFO: the backoff of each group's first failure (an emulator that does not lock the group
    // must not see a later message first either)
    let mut group_backoff: HashMap<&str, i32> = HashMap::new();
    for (i, m) in batch.iter().enumerate() {
        let group = m.group_id.as_deref().filter(|_| fifo);
        let stopped_behind = group.is_some_and(|g| group_backoff.contains_key(g));
        let Some(ask) = asks[i] else {
            out.delete.push(i);
            continue;
        };
        // a dead-letter queue to send to: max_receive_count is set with it
        let asked_dead_letter = match ask {
            Ask::DeadLetter(reason) if max_receive_count.is_some() => Some(reason),
            _ => None,
        };
        let last_try = max_receive_count.is_some_and(|max| m.receive_count >= max || refused(m));
        if !stopped_behind && (asked_dead_letter.is_some() || last_try) {
            out.dead_letter.push(i);
            if let Some(reason) = asked_dead_letter {
                out.asked.push((i, reason.clone()));
            }
            if let Some(g) = group {
                // the group's later messages go back at once: their failure is gone
                group_backoff.insert(g, 0);
            }
        } else if let (Ask::RetryAfter(secs), None) = (ask, group) {
            if *secs > crate::config::MAX_VISIBILITY_SECS && !fifo {
                out.hop.push((i, *secs));
                continue;
            }
            out.retry.push((i, (*secs).min(crate::config::MAX_VISIBILITY_SECS) as i32));
        } else {
            let mut own = || match ask {
                Ask::RetryAfter(secs) => (*secs).min(crate::config::MAX_VISIBILITY_SECS) as i32,
                _ => backoff_secs(m.receive_count, retry, jitter()),
            };
            let secs = match group {
                Some(g) => *group_backoff.entry(g).or_insert_with(own),
                None => own(),
            };
            out.retry.push((i, secs));
        }
    }
    out
}

/// A message whose payload was refused (never to be fetched): no retry can help it.
fn refused(m: &ReceivedMessage) -> bool {
    m.unresolved.as_ref().is_some_and(|u| u.refused)
}

impl AckPlan {
    /// FIFO: how long each group whose messages failed stays back (its retry backoff; 0 when
    /// its failed messages were all dead-lettered). Later messages of the group go back as long.
    pub fn failed_groups(&self, batch: &[ReceivedMessage]) -> Vec<(String, i32)> {
        let mut groups: Vec<(String, i32)> = Vec::new();
        let failed = self.retry.iter().copied().chain(self.dead_letter.iter().map(|&i| (i, 0)));
        for (i, secs) in failed {
            let Some(g) = &batch[i].group_id else { continue };
            match groups.iter_mut().find(|(name, _)| name == g) {
                Some(entry) => entry.1 = entry.1.max(secs),
                None => groups.push((g.clone(), secs)),
            }
        }
        groups
    }
}

/// Visibility timeout for a failed message: `initial · 2^(receive_count − 1)`, capped at
/// `max_backoff`, with "equal jitter" (between half and all of it), rounded up to whole seconds.
pub fn backoff_secs(receive_count: u32, retry: &RetryConfig, jitter: f64) -> i32 {
    let initial = retry.initial_backoff.as_secs_f64();
    let exp = initial * 2f64.powi(receive_count.saturating_sub(1).min(60) as i32);
    let capped = exp.min(retry.max_backoff.as_secs_f64());
    let jittered = capped / 2.0 + capped / 2.0 * jitter.clamp(0.0, 1.0);
    (jittered.ceil() as i64).clamp(0, crate::config::MAX_VISIBILITY_SECS as i64) as i32
}

/// Carries out plans against the source queue (through the lease keeper) and the dead-letter
/// queue.
pub struct Acker {
    pub leases: Arc<LeaseKeeper>,
    pub dead_letter: Option<Arc<dyn Queue>>,
    /// `[pipelines.dead_letter] max_receive_count`, when set.
    pub max_receive_count: Option<u32>,
    /// A FIFO queue: groups fail at their first failure.
    pub fifo: bool,
    pub pipeline: String,
    pub retry: RetryConfig,
    pub metrics: AckMetrics,
    /// Large payloads' objects to delete after success (`delete_after_success`).
    pub payloads: Option<Arc<crate::payload::PayloadStore>>,
    /// Standard queues: carries retries longer than a visibility timeout holds.
    pub hopper: Option<Arc<Hopper>>,
}

fn ids(batch: &[ReceivedMessage], which: impl Iterator<Item = usize>) -> Vec<&str> {
    which.map(|i| batch[i].message_id.as_str()).collect()
}

impl Acker {
    /// The acker of the pipeline `cfg`: its retries, its dead-letter queue and its large payloads.
    pub fn new(
        cfg: &crate::config::PipelineConfig,
        leases: Arc<LeaseKeeper>,
        dead_letter: Option<Arc<dyn Queue>>,
        payloads: Option<Arc<crate::payload::PayloadStore>>,
        metrics: AckMetrics,
    ) -> Self {
        let hopper = (!cfg.fifo).then(|| {
            Arc::new(Hopper {
                queue: leases.queue(),
                leases: leases.clone(),
                pipeline: cfg.name.clone(),
                hops: metrics.hopped.clone(),
            })
        });
        Acker {
            hopper,
            payloads,
            leases,
            dead_letter,
            max_receive_count: cfg.dead_letter.as_ref().map(|d| d.max_receive_count),
            fifo: cfg.fifo,
            pipeline: cfg.name.clone(),
            retry: cfg.retry.clone(),
            metrics,
        }
    }

    /// Counts a batch's outcome, plans its acknowledgement and carries it out; returns the plan.
    pub async fn settle(&self, batch: &[ReceivedMessage], verdict: &Verdict) -> AckPlan {
        let plan = plan(batch, verdict, &self.retry, self.max_receive_count, self.fifo, &mut fastrand::f64);
        if let (None, Verdict::Partial(failed)) = (&self.dead_letter, verdict) {
            let asked = failed.iter().filter(|f| matches!(f.ask, Ask::DeadLetter(_))).count();
            if asked > 0 {
                tracing::warn!(pipeline = %self.pipeline, messages = asked, "the worker asked for the dead-letter queue, but the pipeline has none ([pipelines.dead_letter]): retried with the backoff");
            }
        }
        let failed = plan.failed();
        self.metrics.succeeded.increment(plan.delete.len() as u64);
        self.metrics.failed.increment(failed as u64);
        let reason = match verdict {
            Verdict::AllSucceeded => {
                self.metrics.batches_success.increment(1);
                ""
            }
            Verdict::Partial(_) => {
                self.metrics.batches_partial.increment(1);
                response::ITEM_FAILURE_REASON
            }
            Verdict::AllFailed(reason) => {
                self.metrics.batches_failure.increment(1);
                reason.as_str()
            }
        };
        if failed > 0 {
            tracing::warn!(pipeline = %self.pipeline, messages = batch.len(), failed, dead_lettered = plan.dead_letter.len(), reason = %reason, "batch failed");
        }
        self.execute(batch, &plan, reason).await;
        plan
    }

    /// Deletes, retries and dead-letters as planned. `reason` says why the failed ones failed.
    pub async fn execute(&self, batch: &[ReceivedMessage], plan: &AckPlan, reason: &str) {
        let deleting = async {
            let deleted = self.leases.delete(&ids(batch, plan.delete.iter().copied())).await;
            self.count_deleted(deleted.iter().map(|&k| &batch[plan.delete[k]]), true);
            // large payloads of processed, deleted messages: their objects go too, when asked
            if let Some(store) = self.payloads.as_ref().filter(|s| s.deletes_after_success()) {
                let objects =
                    deleted.iter().filter_map(|&k| batch[plan.delete[k]].s3_object.as_ref().map(|o| &o.pointer));
                futures_util::future::join_all(objects.map(|o| store.delete(o))).await;
            }
        };
        let retrying = async {
            let entries: Vec<(&str, i32)> =
                plan.retry.iter().map(|&(i, secs)| (batch[i].message_id.as_str(), secs)).collect();
            self.leases.release_after(&entries).await;
        };
        let dead_lettering = self.dead_letter_all(batch, &plan.dead_letter, &plan.asked, reason);
        let hopping = async {
            let hops: Vec<(&ReceivedMessage, u64)> = plan.hop.iter().map(|&(i, secs)| (&batch[i], secs)).collect();
            match &self.hopper {
                Some(h) => h.hop(&hops, true).await,
                // only a FIFO queue has no hopper, and its plans hop nothing: were one to, it
                // would wait the longest visibility timeout
                None => {
                    let messages: Vec<ReceivedMessage> = hops.iter().map(|(m, _)| (*m).clone()).collect();
                    self.release_after(&messages, crate::config::MAX_VISIBILITY_SECS as i32).await;
                }
            }
        };
        tokio::join!(deleting, retrying, dead_lettering, hopping);
    }

    /// Makes every message visible again at once (shutdown, or a batch that could not be dispatched).
    pub async fn release(&self, batch: &[ReceivedMessage]) {
        self.leases.release(&ids(batch, 0..batch.len())).await;
    }

    /// A batch the target throttled for too long: visible again after the retry backoff, not
    /// counted as failed (the target never ran it). Returns the plan it carried out.
    pub async fn release_throttled(&self, batch: &[ReceivedMessage]) -> AckPlan {
        self.metrics.throttle_released.increment(batch.len() as u64);
        let all_failed = Verdict::AllFailed(String::new());
        let plan = plan(batch, &all_failed, &self.retry, None, self.fifo, &mut fastrand::f64);
        let entries: Vec<(&str, i32)> =
            plan.retry.iter().map(|&(i, secs)| (batch[i].message_id.as_str(), secs)).collect();
        self.leases.release_after(&entries).await;
        plan
    }

    /// Makes messages visible again after `secs` (held FIFO messages behind a failure).
    pub async fn release_after(&self, messages: &[ReceivedMessage], secs: i32) {
        let entries: Vec<(&str, i32)> = messages.iter().map(|m| (m.message_id.as_str(), secs)).collect();
        self.leases.release_after(&entries).await;
    }

    fn count_deleted<'a>(&self, deleted: impl Iterator<Item = &'a ReceivedMessage>, succeeded: bool) {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let mut n = 0;
        for m in deleted {
            n += 1;
            if succeeded {
                if let Some(sent) = m.sent_timestamp_ms {
                    self.metrics.end_to_end.record(now_ms.saturating_sub(sent) as f64 / 1000.0);
                }
            }
        }
        self.metrics.deleted.increment(n);
    }

    async fn dead_letter_all(
        &self,
        batch: &[ReceivedMessage],
        which: &[usize],
        asked: &[(usize, String)],
        reason: &str,
    ) {
        if which.is_empty() {
            return;
        }
        let Some(dlq) = &self.dead_letter else {
            return;
        };
        let sends = futures_util::future::join_all(which.iter().map(|&i| async move {
            let own = asked.iter().find(|(k, _)| *k == i).map(|(_, r)| r.as_str());
            (i, self.leases.send_copy(dlq.as_ref(), self.dead_letter_copy(&batch[i], own, reason, dlq)).await)
        }))
        .await;
        let mut sent = Vec::new();
        let mut unsent = Vec::new();
        for (i, r) in sends {
            match r {
                Ok(()) => sent.push(i),
                Err(e) => {
                    tracing::error!(pipeline = %self.pipeline, message_id = %batch[i].message_id, error = %e, "could not send to the dead-letter queue; the message stays in the source queue");
                    unsent.push(i);
                }
            }
        }
        self.metrics.dead_lettered.increment(sent.len() as u64);
        let deleted = self.leases.delete(&ids(batch, sent.iter().copied())).await;
        self.count_deleted(deleted.iter().map(|&k| &batch[sent[k]]), false);
        self.retry_unsent(batch, &unsent).await;
    }

    /// The copy of `m` for the dead-letter queue `dlq`: its body and attributes with why it
    /// failed (`own`, its own reason: the worker's, its payload's, its age; else `reason`, the
    /// batch's) and when it was first sent.
    fn dead_letter_copy<'m>(
        &self,
        m: &'m ReceivedMessage,
        own: Option<&str>,
        reason: &str,
        dlq: &Arc<dyn Queue>,
    ) -> Outgoing<'m> {
        let (body, mut attributes) = m.copy_parts();
        // a delay's hops end here: a redriven copy is due at once
        attributes.remove(crate::event::HOP_ATTRIBUTE);
        let reason = own.or(m.unresolved.as_ref().map(|u| u.reason.as_str())).unwrap_or(reason);
        carry_first_sent(&mut attributes, m.sent_timestamp_ms);
        add_dead_letter_attributes(&mut attributes, &self.pipeline, reason, m.receive_count);
        // SQS rejects a deduplication id on a standard queue; a group id it accepts (fair queues)
        let dedup = (dlq.url().ends_with(".fifo") && m.group_id.is_some()).then_some(m.message_id.as_str());
        let mut copy = Outgoing::new(body, attributes).grouped(m.group_id.as_deref(), dedup);
        copy.trace_header = m.trace_header.as_deref();
        copy
    }

    /// Messages whose dead-letter copy was not sent stay in the source queue: visible again
    /// after their backoff.
    async fn retry_unsent(&self, batch: &[ReceivedMessage], unsent: &[usize]) {
        if unsent.is_empty() {
            return;
        }
        let entries: Vec<(&str, i32)> = unsent
            .iter()
            .map(|&i| {
                (batch[i].message_id.as_str(), backoff_secs(batch[i].receive_count, &self.retry, fastrand::f64()))
            })
            .collect();
        self.leases.release_after(&entries).await;
    }
}

/// `text` with every character SQS does not allow in a message attribute value
/// ([`crate::sqs::sqs_allows`]) written as `\u{…}`, cut to at most `max_chars` characters.
pub fn sqs_safe(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if crate::sqs::sqs_allows(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out.chars().take(max_chars).collect()
}

/// Adds `sqs-poller.pipeline`, `sqs-poller.reason` and `sqs-poller.receive-count`; when the
/// message already has too many attributes for three more, one `sqs-poller.dead-letter`
/// attribute carries the same as JSON.
pub fn add_dead_letter_attributes(
    attributes: &mut HashMap<String, MessageAttributeValue>,
    pipeline: &str,
    reason: &str,
    receive_count: u32,
) {
    let reason = sqs_safe(reason, MAX_REASON_LEN);
    let string = |v: String| {
        MessageAttributeValue::builder().data_type("String").string_value(v).build().expect("data type set")
    };
    if attributes.len() + 3 <= MAX_MESSAGE_ATTRIBUTES {
        attributes.insert("sqs-poller.pipeline".into(), string(pipeline.to_string()));
        attributes.insert("sqs-poller.reason".into(), string(reason));
        attributes.insert(
            "sqs-poller.receive-count".into(),
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(receive_count.to_string())
                .build()
                .expect("data type set"),
        );
    } else if attributes.len() < MAX_MESSAGE_ATTRIBUTES {
        let json = serde_json::json!({"pipeline": pipeline, "reason": reason, "receiveCount": receive_count});
        attributes.insert("sqs-poller.dead-letter".into(), string(json.to_string()));
    } else {
        tracing::warn!(
            pipeline,
            "message has 10 attributes already; dead-letter copy carries no sqs-poller attributes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::response::Failed;
    use std::time::Duration;

    fn retry(initial: u64, max: u64) -> RetryConfig {
        RetryConfig {
            initial_backoff: Duration::from_secs(initial),
            max_backoff: Duration::from_secs(max),
            bisect: false,
            max_age: None,
        }
    }

    #[test]
    fn a_dead_letter_copy_carries_the_first_send_and_keeps_a_carried_one() {
        let mut fresh = HashMap::new();
        carry_first_sent(&mut fresh, Some(1_733_000_000_000));
        assert_eq!(fresh["sqs-poller.first-sent"].string_value(), Some("1733000000000"));
        let mut carried = fresh.clone();
        carry_first_sent(&mut carried, Some(1_999_000_000_000));
        assert_eq!(carried["sqs-poller.first-sent"].string_value(), Some("1733000000000"), "a copy of a copy");
        // nine attributes: the last place is the dead-letter attribute's
        let mut full: HashMap<String, MessageAttributeValue> = (0..9)
            .map(|i| {
                (
                    format!("a{i}"),
                    MessageAttributeValue::builder().data_type("String").string_value("v").build().unwrap(),
                )
            })
            .collect();
        carry_first_sent(&mut full, Some(1));
        assert_eq!(full.len(), 9);
        add_dead_letter_attributes(&mut full, "p", "r", 1);
        assert!(full.contains_key("sqs-poller.dead-letter"));
    }

    fn batch(counts: &[u32]) -> Vec<ReceivedMessage> {
        counts
            .iter()
            .enumerate()
            .map(|(i, &c)| ReceivedMessage { receive_count: c, ..ReceivedMessage::for_test(format!("m{i}")) })
            .collect()
    }

    #[test]
    fn backoff_is_exponential_in_the_receive_count_and_capped() {
        let r = retry(1, 300);
        let full: Vec<i32> = (1..=12).map(|c| backoff_secs(c, &r, 1.0)).collect();
        assert_eq!(full, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff_secs(u32::MAX, &r, 1.0), 300);
    }

    #[test]
    fn jitter_keeps_between_half_and_all() {
        let r = retry(10, 1000);
        for c in 1..8 {
            let lo = backoff_secs(c, &r, 0.0);
            let hi = backoff_secs(c, &r, 0.999_999);
            let exp = 10 * 2i32.pow(c - 1);
            assert_eq!(lo, exp / 2);
            assert_eq!(hi, exp);
        }
    }

    #[test]
    fn zero_initial_backoff_retries_at_once() {
        assert_eq!(backoff_secs(5, &retry(0, 300), 0.7), 0);
    }

    #[test]
    fn success_deletes_everything() {
        let p = plan(&batch(&[1, 2, 3]), &Verdict::AllSucceeded, &retry(1, 300), Some(3), false, &mut || 1.0);
        assert_eq!(p, AckPlan { delete: vec![0, 1, 2], ..Default::default() });
    }

    #[test]
    fn partial_failure_retries_only_the_failed() {
        let p = plan(
            &batch(&[1, 1, 2]),
            &Verdict::Partial(vec![Failed::at(1), Failed::at(2)]),
            &retry(1, 300),
            None,
            false,
            &mut || 1.0,
        );
        assert_eq!(p.delete, vec![0]);
        assert_eq!(p.retry, vec![(1, 1), (2, 2)]);
        assert!(p.dead_letter.is_empty());
    }

    /// Issue 36: what the worker asked comes first — its delay instead of the backoff (past
    /// SQS's 12 hours of visibility, in hops), its dead-letter queue at once with its reason
    /// (when there is one).
    #[test]
    fn the_workers_asks_replace_the_backoff_and_the_receive_limit() {
        use crate::dispatch::response::Ask;
        let failed = Verdict::Partial(vec![
            Failed { index: 0, ask: Ask::RetryAfter(45) },
            Failed { index: 1, ask: Ask::DeadLetter("no such customer".into()) },
            Failed { index: 2, ask: Ask::RetryAfter(13 * 3600) },
            Failed::at(3),
        ]);
        let b = batch(&[1, 1, 1, 1]);
        let p = plan(&b, &failed, &retry(1, 300), Some(5), false, &mut || 1.0);
        assert_eq!(p.retry, vec![(0, 45), (3, 1)]);
        assert_eq!(p.hop, vec![(2, 13 * 3600)], "longer than a visibility timeout holds");
        assert_eq!(p.dead_letter, vec![1], "dead-lettered on its first receive");
        assert_eq!(p.asked, vec![(1, "no such customer".to_string())]);
        assert_eq!(p.failed(), 4);
        // without a dead-letter queue the ask cannot be carried out: retried with the backoff
        let p = plan(&b, &failed, &retry(1, 300), None, false, &mut || 1.0);
        assert_eq!(p.retry, vec![(0, 45), (1, 1), (3, 1)]);
        assert!(p.dead_letter.is_empty() && p.asked.is_empty());
        // exactly 12 hours is still a visibility timeout
        let twelve = Verdict::Partial(vec![Failed { index: 0, ask: Ask::RetryAfter(43_200) }]);
        let p = plan(&b, &twelve, &retry(1, 300), None, false, &mut || 1.0);
        assert_eq!((p.retry, p.hop), (vec![(0, 43_200)], vec![]));
    }

    /// A FIFO group's first failure sets the group's delay: a message delayed by the worker
    /// delays the rest of its group with it, in order.
    #[test]
    fn a_delayed_fifo_message_delays_its_group() {
        use crate::dispatch::response::Ask;
        let mut b = batch(&[1, 1, 1]);
        for m in &mut b {
            m.group_id = Some("g".into());
        }
        let failed =
            Verdict::Partial(vec![Failed { index: 0, ask: Ask::RetryAfter(600) }, Failed::at(1), Failed::at(2)]);
        let p = plan(&b, &failed, &retry(1, 300), Some(5), true, &mut || 1.0);
        assert_eq!(p.retry, vec![(0, 600), (1, 600), (2, 600)]);
        assert_eq!(p.failed_groups(&b), vec![("g".to_string(), 600)]);
    }

    #[test]
    fn failures_at_the_receive_limit_go_to_the_dead_letter_queue() {
        let b = batch(&[1, 3, 4]);
        let p = plan(&b, &Verdict::AllFailed("boom".into()), &retry(1, 300), Some(3), false, &mut || 1.0);
        assert!(p.delete.is_empty());
        assert_eq!(p.retry, vec![(0, 1)]);
        assert_eq!(p.dead_letter, vec![1, 2]);
        // without a dead-letter section the queue's redrive policy decides: keep retrying
        let p = plan(&b, &Verdict::AllFailed("boom".into()), &retry(1, 300), None, false, &mut || 1.0);
        assert_eq!(p.retry.len(), 3);
        assert_eq!(p.failed(), 3);
    }

    /// Issue 34: a message whose large payload was refused (a bucket outside `allowed_buckets`)
    /// can never succeed: with a dead-letter queue it goes there on its first receive; without
    /// one it goes back, as any failure.
    #[test]
    fn a_refused_payload_is_dead_lettered_at_once_or_retried_without_a_dead_letter_queue() {
        let mut b = batch(&[1, 1]);
        b[0].unresolved = Some(Box::new(crate::event::Unresolved { reason: "not allowed".into(), refused: true }));
        b[1].unresolved = Some(Box::new(crate::event::Unresolved { reason: "404".into(), refused: false }));
        let failed = Verdict::Partial(vec![Failed::at(0), Failed::at(1)]);
        let p = plan(&b, &failed, &retry(1, 300), Some(5), false, &mut || 1.0);
        assert_eq!(p.dead_letter, vec![0], "refused: at once");
        assert_eq!(p.retry, vec![(1, 1)], "a fetch that failed may work next time");
        let p = plan(&b, &failed, &retry(1, 300), None, false, &mut || 1.0);
        assert_eq!(p.retry.len(), 2, "no dead-letter section: back, as any failure");
    }

    #[test]
    fn reasons_hold_only_characters_sqs_allows() {
        assert_eq!(sqs_safe("HTTP 500: \u{1}bad\u{0}\tok\u{FFFE}é", 100), "HTTP 500: \\u{1}bad\\u{0}\tok\\u{fffe}é");
        assert_eq!(sqs_safe(&"x".repeat(500), 256).len(), 256);
        let mut a = HashMap::new();
        add_dead_letter_attributes(&mut a, "p", "\u{7}bell", 1);
        assert_eq!(a["sqs-poller.reason"].string_value(), Some("\\u{7}bell"));
    }

    #[test]
    fn a_fifo_group_retries_together_after_its_first_failure() {
        let mut b = batch(&[1, 3, 1, 1]);
        for (m, g) in b.iter_mut().zip(["a", "a", "b", "a"]) {
            m.group_id = Some(g.to_string());
        }
        let mut jitters = [0.0, 0.9, 0.5, 0.3].into_iter();
        let p = plan(&b, &Verdict::AllFailed("x".into()), &retry(10, 300), None, true, &mut || jitters.next().unwrap());
        assert_eq!(p.retry, vec![(0, 5), (1, 5), (2, 10), (3, 5)], "group a shares its first backoff");
        assert_eq!(p.failed_groups(&b), vec![("a".to_string(), 5), ("b".to_string(), 10)]);
    }

    #[test]
    fn fifo_messages_stopped_behind_a_failure_are_never_dead_lettered() {
        let mut b = batch(&[4, 4, 4, 4]);
        for (m, g) in b.iter_mut().zip(["a", "a", "b", "a"]) {
            m.group_id = Some(g.to_string());
        }
        let p = plan(&b, &Verdict::AllFailed("x".into()), &retry(1, 300), Some(4), true, &mut || 1.0);
        assert_eq!(p.dead_letter, vec![0, 2], "the first failure of each group");
        assert_eq!(p.retry, vec![(1, 0), (3, 0)], "the rest of group a comes back at once, in order");
        // a standard queue's messages all failed on their own
        let p = plan(&b, &Verdict::AllFailed("x".into()), &retry(1, 300), Some(4), false, &mut || 1.0);
        assert_eq!(p.dead_letter, vec![0, 1, 2, 3]);
    }

    #[test]
    fn dead_letter_attributes_fit_the_limit() {
        let mut a = HashMap::new();
        add_dead_letter_attributes(&mut a, "p", "boom", 5);
        assert_eq!(a["sqs-poller.pipeline"].string_value(), Some("p"));
        assert_eq!(a["sqs-poller.reason"].string_value(), Some("boom"));
        assert_eq!(a["sqs-poller.receive-count"].string_value(), Some("5"));
        assert_eq!(a["sqs-poller.receive-count"].data_type(), "Number");

        let mut a: HashMap<_, _> = (0..8)
            .map(|i| {
                (
                    format!("a{i}"),
                    MessageAttributeValue::builder().data_type("String").string_value("v").build().unwrap(),
                )
            })
            .collect();
        add_dead_letter_attributes(&mut a, "p", &"x".repeat(1000), 5);
        assert_eq!(a.len(), 9);
        let v: serde_json::Value = serde_json::from_str(a["sqs-poller.dead-letter"].string_value().unwrap()).unwrap();
        assert_eq!(v["receiveCount"], 5);
        assert_eq!(v["reason"].as_str().unwrap().len(), MAX_REASON_LEN);
    }
}
