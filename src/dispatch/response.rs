//! Lambda's `ReportBatchItemFailures` contract, applied to a target's answer.
//!
//! - `{"batchItemFailures":[{"itemIdentifier":"<messageId>"}, …]}`: those failed, the rest succeeded.
//! - An empty body, `null`, `{}`, a `null` or empty list: all succeeded. So does any other
//!   well-formed JSON that is not an object (a handler that returns `"ok"`).
//! - Invalid JSON, `batchItemFailures` that is not a list, an entry without `itemIdentifier`,
//!   a `null`, empty or non-string identifier, or an id not in the batch: the whole batch failed.
//! - FIFO: a message group stops at its first failure; the rest of that group is failed too.
//!
//! Beyond Lambda's contract, in the same answer and ignored by Lambda (so one handler runs on
//! both), an entry may say what to do with its message: `"retryAfterSeconds": N` (a whole number
//! of seconds, 0 or more: visible again then, instead of after the backoff) or `"deadLetter":
//! true` / `"deadLetter": "a reason"` (to the dead-letter queue at once, with that reason). A
//! malformed one — a negative, fractional or non-numeric delay, a `deadLetter` that is neither a
//! boolean nor a non-empty string, both asked at once, or on a FIFO queue a delay over 12 hours —
//! fails the whole batch, as any malformed answer does. A delay over 12 hours on a standard queue
//! is carried by re-sending the message (see `hop`).

use std::collections::HashMap;

use serde_json::Value;

use crate::event::ReceivedMessage;

/// Why messages named in `batchItemFailures` failed (the dead-letter reason).
pub const ITEM_FAILURE_REASON: &str = "reported in batchItemFailures";

/// How a batch came out, per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    AllSucceeded,
    /// The messages that failed (ascending by index into the batch); the others succeeded.
    Partial(Vec<Failed>),
    /// Every message failed, for this reason.
    AllFailed(String),
}

/// A message of the batch that failed, and what the worker asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub index: usize,
    pub ask: Ask,
}

impl Failed {
    /// Failed, nothing asked: retried after the backoff.
    pub fn at(index: usize) -> Self {
        Failed { index, ask: Ask::Retry }
    }

    /// This failure of a part of a batch, as one of the whole: `part[i]` is the index in the
    /// whole of the part's message `i`.
    #[must_use]
    pub fn moved_to(self, part: &[usize]) -> Self {
        Failed { index: part[self.index], ask: self.ask }
    }
}

/// What the worker asked for a failed message (beyond Lambda's contract; Lambda ignores it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ask {
    /// Nothing: retried after the pipeline's backoff.
    #[default]
    Retry,
    /// `retryAfterSeconds`: visible again after this many seconds.
    RetryAfter(u64),
    /// `deadLetter`: to the dead-letter queue at once, for this reason.
    DeadLetter(String),
}

/// The reason a `"deadLetter": true` without a text of its own gives.
pub const ASKED_DEAD_LETTER_REASON: &str = "the worker asked for the dead-letter queue";

impl Verdict {
    /// The verdict of a batch of `len` messages of which `failed` (ascending) failed: all of them
    /// with nothing asked is `AllFailed(reason)`.
    pub fn of_failures(failed: Vec<Failed>, len: usize, reason: impl Into<String>) -> Verdict {
        if failed.is_empty() {
            Verdict::AllSucceeded
        } else if failed.len() == len && failed.iter().all(|f| f.ask == Ask::Retry) {
            Verdict::AllFailed(reason.into())
        } else {
            Verdict::Partial(failed)
        }
    }

    /// Indexes of the failed messages, ascending (every index for `AllFailed`).
    pub fn failed_indexes(&self, len: usize) -> Vec<usize> {
        match self {
            Verdict::AllSucceeded => Vec::new(),
            Verdict::Partial(f) => f.iter().map(|f| f.index).collect(),
            Verdict::AllFailed(_) => (0..len).collect(),
        }
    }
}

/// An entry's `retryAfterSeconds` and `deadLetter`, checked. On a FIFO queue a delay longer than
/// a visibility timeout holds is refused: it would need a copy of the message (see `hop`), and a
/// copy leaves its place in its group.
fn ask_of(entry: &Value, fifo: bool) -> Result<Ask, String> {
    let retry_after = match entry.get("retryAfterSeconds") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(secs) if fifo && secs > crate::config::MAX_VISIBILITY_SECS => {
                return Err(format!(
                    "retryAfterSeconds {secs} is longer than a FIFO queue can hold a message back (43200 s, 12 hours): longer delays re-send the message, which would take it out of its group's order"
                ))
            }
            Some(secs) => Some(secs),
            None => return Err(format!("retryAfterSeconds {n} is not a whole number of seconds, 0 or more")),
        },
        Some(other) => return Err(format!("retryAfterSeconds is not a number: {other}")),
    };
    let dead_letter = match entry.get("deadLetter") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(ASKED_DEAD_LETTER_REASON.to_string()),
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(other) => return Err(format!("deadLetter is neither true, false nor a reason: {other}")),
    };
    match (retry_after, dead_letter) {
        (Some(_), Some(_)) => Err("an entry asks for both retryAfterSeconds and deadLetter".to_string()),
        (Some(secs), None) => Ok(Ask::RetryAfter(secs)),
        (None, Some(reason)) => Ok(Ask::DeadLetter(reason)),
        (None, None) => Ok(Ask::Retry),
    }
}

/// Reads a target's response body against the batch it answered.
pub fn interpret(body: &[u8], batch: &[ReceivedMessage], fifo: bool) -> Verdict {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Verdict::AllSucceeded;
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Verdict::AllFailed(format!("response is not valid JSON: {e}")),
    };
    let failures = match &value {
        Value::Object(map) => match map.get("batchItemFailures") {
            None | Some(Value::Null) => return Verdict::AllSucceeded,
            Some(Value::Array(list)) => list,
            Some(_) => return Verdict::AllFailed("batchItemFailures is not a list".to_string()),
        },
        _ => return Verdict::AllSucceeded,
    };
    if failures.is_empty() {
        return Verdict::AllSucceeded;
    }
    // a message id fails every copy of it (a batch never holds two, but the rule must not depend on it)
    let mut index: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, m) in batch.iter().enumerate() {
        index.entry(m.message_id.as_str()).or_default().push(i);
    }
    let mut failed: Vec<Option<Ask>> = vec![None; batch.len()];
    for entry in failures {
        let id = match entry.get("itemIdentifier") {
            None => return Verdict::AllFailed("a batchItemFailures entry has no itemIdentifier".to_string()),
            Some(Value::Null) => return Verdict::AllFailed("an itemIdentifier is null".to_string()),
            Some(Value::String(s)) if s.is_empty() => {
                return Verdict::AllFailed("an itemIdentifier is empty".to_string())
            }
            Some(Value::String(s)) => s,
            Some(other) => return Verdict::AllFailed(format!("an itemIdentifier is not a string: {other}")),
        };
        let ask = match ask_of(entry, fifo) {
            Ok(ask) => ask,
            Err(e) => return Verdict::AllFailed(e),
        };
        match index.get(id.as_str()) {
            Some(copies) => copies.iter().for_each(|&i| failed[i] = Some(ask.clone())),
            None => return Verdict::AllFailed(format!("itemIdentifier `{id}` is not a message of the batch")),
        }
    }
    if fifo {
        stop_groups_at_first_failure(batch, &mut failed);
    }
    let failed: Vec<Failed> =
        failed.into_iter().enumerate().filter_map(|(index, ask)| Some(Failed { index, ask: ask? })).collect();
    Verdict::of_failures(failed, batch.len(), ITEM_FAILURE_REASON)
}

/// In FIFO order, a message after a failed one of its group must not count as processed (it is
/// retried behind that one, whatever was asked for it).
fn stop_groups_at_first_failure(batch: &[ReceivedMessage], failed: &mut [Option<Ask>]) {
    let mut stopped: Vec<&str> = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        let group = m.group_id.as_deref().unwrap_or("");
        if stopped.contains(&group) {
            failed[i].get_or_insert(Ask::Retry);
        } else if failed[i].is_some() {
            stopped.push(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 34: any bytes a worker answers with give a verdict whose failures are messages of
    /// the batch (never a panic, never an index outside it).
    #[test]
    fn hostile_worker_answers_give_a_verdict_within_the_batch() {
        let samples: [&[u8]; 4] = [
            br#"{"batchItemFailures":[{"itemIdentifier":"m1"},{"itemIdentifier":"m2"}]}"#,
            br#"{"batchItemFailures":[{"itemIdentifier":"m1","retryAfterSeconds":45},{"itemIdentifier":"m2","deadLetter":"bad"}]}"#,
            br#"{"batchItemFailures":[]}"#,
            br#"{"statusCode":200,"body":"{\"batchItemFailures\":[{\"itemIdentifier\":\"m0\"}]}"}"#,
        ];
        let batch: Vec<ReceivedMessage> = (0..3).map(|i| ReceivedMessage::for_test(format!("m{i}"))).collect();
        crate::fuzz::run("worker_answers", 3000, |rng| {
            let sample = samples[rng.usize(0..samples.len())];
            let answer = crate::fuzz::mutate(rng, sample);
            for fifo in [false, true] {
                if let Verdict::Partial(failed) = interpret(&answer, &batch, fifo) {
                    assert!(failed.iter().all(|f| f.index < batch.len()), "{failed:?}");
                    assert!(
                        failed.windows(2).all(|w| w[0].index < w[1].index),
                        "each failure once, in order: {failed:?}"
                    );
                }
            }
        });
    }

    fn batch(ids: &[&str]) -> Vec<ReceivedMessage> {
        ids.iter().map(|id| ReceivedMessage::for_test(*id)).collect()
    }

    fn verdict(body: &str) -> Verdict {
        interpret(body.as_bytes(), &batch(&["a", "b", "c"]), false)
    }

    fn all_failed(v: &Verdict) -> bool {
        matches!(v, Verdict::AllFailed(_))
    }

    #[test]
    fn success_shapes() {
        for body in [
            "",
            "  \n",
            "null",
            "{}",
            r#"{"batchItemFailures":[]}"#,
            r#"{"batchItemFailures":null}"#,
            r#""ok""#,
            "42",
            r#"{"other":1}"#,
        ] {
            assert_eq!(verdict(body), Verdict::AllSucceeded, "body {body:?}");
        }
    }

    #[test]
    fn partial_failure_names_the_failed() {
        assert_eq!(
            verdict(r#"{"batchItemFailures":[{"itemIdentifier":"c"},{"itemIdentifier":"a"}]}"#),
            Verdict::Partial(vec![Failed::at(0), Failed::at(2)])
        );
    }

    #[test]
    fn duplicates_count_once() {
        assert_eq!(
            verdict(r#"{"batchItemFailures":[{"itemIdentifier":"b"},{"itemIdentifier":"b"}]}"#),
            Verdict::Partial(vec![Failed::at(1)])
        );
    }

    #[test]
    fn every_message_failed_is_all_failed() {
        assert!(all_failed(&verdict(
            r#"{"batchItemFailures":[{"itemIdentifier":"a"},{"itemIdentifier":"b"},{"itemIdentifier":"c"}]}"#
        )));
    }

    #[test]
    fn whole_batch_failure_shapes() {
        for body in [
            "{",
            "not json",
            r#"{"batchItemFailures":{}}"#,
            r#"{"batchItemFailures":"a"}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":null}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"zzz"}]}"#,
            r#"{"batchItemFailures":[{"itemidentifier":"a"}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":7}]}"#,
            r#"{"batchItemFailures":["a"]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"a"},{"itemIdentifier":"zzz"}]}"#,
        ] {
            assert!(all_failed(&verdict(body)), "body {body:?} gave {:?}", verdict(body));
        }
    }

    #[test]
    fn fifo_groups_stop_at_their_first_failure() {
        let mut b = batch(&["a1", "b1", "a2", "b2", "a3", "c1"]);
        for m in &mut b {
            m.group_id = Some(m.message_id[..1].to_string());
        }
        let body = r#"{"batchItemFailures":[{"itemIdentifier":"a2"}]}"#;
        assert_eq!(interpret(body.as_bytes(), &b, true), Verdict::Partial(vec![Failed::at(2), Failed::at(4)]));
        assert_eq!(interpret(body.as_bytes(), &b, false), Verdict::Partial(vec![Failed::at(2)]));
    }

    #[test]
    fn an_entry_may_ask_for_a_delay_or_the_dead_letter_queue() {
        let v = verdict(
            r#"{"batchItemFailures":[{"itemIdentifier":"a","retryAfterSeconds":45},{"itemIdentifier":"b","deadLetter":true},{"itemIdentifier":"c","deadLetter":"no such customer","other":1}]}"#,
        );
        assert_eq!(
            v,
            Verdict::Partial(vec![
                Failed { index: 0, ask: Ask::RetryAfter(45) },
                Failed { index: 1, ask: Ask::DeadLetter(ASKED_DEAD_LETTER_REASON.into()) },
                Failed { index: 2, ask: Ask::DeadLetter("no such customer".into()) },
            ]),
            "every message failed, but what was asked is kept"
        );
        let v = verdict(r#"{"batchItemFailures":[{"itemIdentifier":"a","retryAfterSeconds":0,"deadLetter":false}]}"#);
        assert_eq!(v, Verdict::Partial(vec![Failed { index: 0, ask: Ask::RetryAfter(0) }]));
        // a day beyond SQS's limits is a valid ask on a standard queue (carried in hops)
        let v = verdict(r#"{"batchItemFailures":[{"itemIdentifier":"a","retryAfterSeconds":86400}]}"#);
        assert_eq!(v, Verdict::Partial(vec![Failed { index: 0, ask: Ask::RetryAfter(86400) }]));
    }

    /// Issue 36: hops re-send a message, which would take it out of its FIFO group's order:
    /// on a FIFO queue a delay past 12 hours is refused, saying why; 12 hours is not.
    #[test]
    fn a_fifo_queue_refuses_a_delay_past_twelve_hours() {
        let mut b = batch(&["a", "b"]);
        for m in &mut b {
            m.group_id = Some("g".into());
        }
        let body = r#"{"batchItemFailures":[{"itemIdentifier":"a","retryAfterSeconds":43201}]}"#;
        match interpret(body.as_bytes(), &b, true) {
            Verdict::AllFailed(reason) => assert!(reason.contains("FIFO"), "{reason}"),
            other => panic!("accepted: {other:?}"),
        }
        let body = r#"{"batchItemFailures":[{"itemIdentifier":"a","retryAfterSeconds":43200}]}"#;
        assert_eq!(
            interpret(body.as_bytes(), &b, true),
            Verdict::Partial(vec![Failed { index: 0, ask: Ask::RetryAfter(43_200) }, Failed::at(1)])
        );
    }

    #[test]
    fn a_malformed_ask_fails_the_whole_batch() {
        for body in [
            r#"{"batchItemFailures":[{"itemIdentifier":"a","retryAfterSeconds":-1}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"a","retryAfterSeconds":1.5}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"a","retryAfterSeconds":"45"}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"a","retryAfterSeconds":1e400}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"a","deadLetter":1}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"a","deadLetter":""}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"a","deadLetter":{}}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"a","deadLetter":true,"retryAfterSeconds":5}]}"#,
        ] {
            assert!(all_failed(&verdict(body)), "body {body:?} gave {:?}", verdict(body));
        }
    }

    #[test]
    fn fifo_messages_stopped_behind_a_failure_are_plain_retries() {
        let mut b = batch(&["a1", "a2"]);
        for m in &mut b {
            m.group_id = Some("a".into());
        }
        let body = r#"{"batchItemFailures":[{"itemIdentifier":"a1","retryAfterSeconds":60}]}"#;
        assert_eq!(
            interpret(body.as_bytes(), &b, true),
            Verdict::Partial(vec![Failed { index: 0, ask: Ask::RetryAfter(60) }, Failed::at(1)])
        );
    }
}
