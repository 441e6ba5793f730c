//! Lambda's `ReportBatchItemFailures` contract, applied to a target's answer.
//!
//! - `{"batchItemFailures":[{"itemIdentifier":"<messageId>"}, …]}`: those failed, the rest succeeded.
//! - An empty body, `null`, `{}`, a `null` or empty list: all succeeded. So does any other
//!   well-formed JSON that is not an object (a handler that returns `"ok"`).
//! - Invalid JSON, `batchItemFailures` that is not a list, an entry without `itemIdentifier`,
//!   a `null`, empty or non-string identifier, or an id not in the batch: the whole batch failed.
//! - FIFO: a message group stops at its first failure; the rest of that group is failed too.

use std::collections::HashMap;

use serde_json::Value;

use crate::event::ReceivedMessage;

/// Why messages named in `batchItemFailures` failed (the dead-letter reason).
pub const ITEM_FAILURE_REASON: &str = "reported in batchItemFailures";

/// How a batch came out, per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    AllSucceeded,
    /// Indexes (into the batch, ascending) of the messages that failed; the others succeeded.
    Partial(Vec<usize>),
    /// Every message failed, for this reason.
    AllFailed(String),
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
    let mut failed = vec![false; batch.len()];
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
        match index.get(id.as_str()) {
            Some(copies) => copies.iter().for_each(|&i| failed[i] = true),
            None => return Verdict::AllFailed(format!("itemIdentifier `{id}` is not a message of the batch")),
        }
    }
    if fifo {
        stop_groups_at_first_failure(batch, &mut failed);
    }
    let failed: Vec<usize> = failed.iter().enumerate().filter_map(|(i, &f)| f.then_some(i)).collect();
    if failed.len() == batch.len() {
        Verdict::AllFailed(ITEM_FAILURE_REASON.to_string())
    } else {
        Verdict::Partial(failed)
    }
}

/// In FIFO order, a message after a failed one of its group must not count as processed.
fn stop_groups_at_first_failure(batch: &[ReceivedMessage], failed: &mut [bool]) {
    let mut stopped: Vec<&str> = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        let group = m.group_id.as_deref().unwrap_or("");
        if stopped.contains(&group) {
            failed[i] = true;
        } else if failed[i] {
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
        let samples: [&[u8]; 3] = [
            br#"{"batchItemFailures":[{"itemIdentifier":"m1"},{"itemIdentifier":"m2"}]}"#,
            br#"{"batchItemFailures":[]}"#,
            br#"{"statusCode":200,"body":"{\"batchItemFailures\":[{\"itemIdentifier\":\"m0\"}]}"}"#,
        ];
        let batch: Vec<ReceivedMessage> = (0..3).map(|i| ReceivedMessage::for_test(format!("m{i}"))).collect();
        crate::fuzz::run("worker_answers", 3000, |rng| {
            let sample = samples[rng.usize(0..samples.len())];
            let answer = crate::fuzz::mutate(rng, sample);
            for fifo in [false, true] {
                if let Verdict::Partial(failed) = interpret(&answer, &batch, fifo) {
                    assert!(failed.iter().all(|&i| i < batch.len()), "{failed:?}");
                    assert!(failed.windows(2).all(|w| w[0] < w[1]), "each failure once, in order: {failed:?}");
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
            Verdict::Partial(vec![0, 2])
        );
    }

    #[test]
    fn duplicates_count_once() {
        assert_eq!(
            verdict(r#"{"batchItemFailures":[{"itemIdentifier":"b"},{"itemIdentifier":"b"}]}"#),
            Verdict::Partial(vec![1])
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
        assert_eq!(interpret(body.as_bytes(), &b, true), Verdict::Partial(vec![2, 4]));
        assert_eq!(interpret(body.as_bytes(), &b, false), Verdict::Partial(vec![2]));
    }
}
