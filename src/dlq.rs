//! `sqs-poller dlq stats`: what a dead-letter queue holds, without consuming it.
//!
//! The queue is read with a short visibility timeout (each message counted once, by id) until
//! it returns nothing new, and every message read is made visible again at once. Messages are
//! counted by the reason, pipeline and receive count sqs-poller recorded when it moved them
//! (`sqs-poller.reason`, `.pipeline`, `.receive-count`, or the folded `sqs-poller.dead-letter`
//! JSON), by age, and a few are shown with their bodies cut short. A message moved by the
//! queue's own redrive policy has no reason of sqs-poller's and is counted as such.
//!
//! [`Tally`] is the pure part: messages in, counts and a report out.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::MessageSystemAttributeName;

use crate::aws::SqsMessage;
use crate::metrics::PipelineMetrics;
use crate::sqs::{SqsClients, SqsError, SqsQueue};

/// How long the scan keeps what it read hidden (it gives every message back at the end).
const SCAN_VISIBILITY: Duration = Duration::from_secs(60);
/// Body characters shown per sample.
const SAMPLE_CHARS: usize = 160;
/// What a message moved by the queue's redrive policy (not by sqs-poller) is counted under.
pub const NO_REASON: &str = "(no sqs-poller reason: moved by the queue's redrive policy)";

/// Age buckets of [`Tally::by_age`], by their upper bound in seconds.
pub const AGE_BUCKETS: [(&str, u64); 5] = [
    ("< 1 hour", 3_600),
    ("1 hour – 1 day", 86_400),
    ("1 – 4 days", 345_600),
    ("4 – 14 days", 1_209_600),
    ("older", u64::MAX),
];

/// One message shown in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub message_id: String,
    pub reason: String,
    pub body: String,
}

/// Counts of a dead-letter queue's messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub by_pipeline: BTreeMap<String, u64>,
    /// Counts per [`AGE_BUCKETS`] entry (age since the message was first sent to the DLQ).
    pub by_age: [u64; 5],
    /// Receives in the source queue when it was moved (`sqs-poller.receive-count`).
    pub by_receive_count: BTreeMap<u32, u64>,
    pub samples: Vec<Sample>,
}

/// `(pipeline, reason, receive count)` sqs-poller recorded on a dead-letter copy.
fn recorded(m: &SqsMessage) -> (Option<String>, Option<String>, Option<u32>) {
    let attrs = m.message_attributes.as_ref();
    let get = |k: &str| attrs.and_then(|a| a.get(k)).and_then(|v| v.string_value()).map(str::to_string);
    if let Some(folded) = get("sqs-poller.dead-letter") {
        let v: serde_json::Value = serde_json::from_str(&folded).unwrap_or_default();
        return (
            v["pipeline"].as_str().map(str::to_string),
            v["reason"].as_str().map(str::to_string),
            v["receiveCount"].as_u64().and_then(|n| u32::try_from(n).ok()),
        );
    }
    (get("sqs-poller.pipeline"), get("sqs-poller.reason"), get("sqs-poller.receive-count").and_then(|n| n.parse().ok()))
}

impl Tally {
    /// Counts one message; `now_ms` is the time of the scan; `samples` is how many to keep.
    pub fn add(&mut self, m: &SqsMessage, now_ms: u64, samples: usize) {
        let (pipeline, reason, receives) = recorded(m);
        let reason = reason.unwrap_or_else(|| NO_REASON.to_string());
        self.total += 1;
        *self.by_reason.entry(reason.clone()).or_default() += 1;
        *self.by_pipeline.entry(pipeline.unwrap_or_else(|| "(none)".to_string())).or_default() += 1;
        if let Some(n) = receives {
            *self.by_receive_count.entry(n).or_default() += 1;
        }
        let sent = m
            .attributes
            .as_ref()
            .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(sent) = sent {
            let age = now_ms.saturating_sub(sent) / 1000;
            let bucket = AGE_BUCKETS.iter().position(|(_, upper)| age < *upper).unwrap_or(AGE_BUCKETS.len() - 1);
            self.by_age[bucket] += 1;
        }
        if self.samples.len() < samples {
            let body = m.body.as_deref().unwrap_or("");
            let mut cut: String = body.chars().take(SAMPLE_CHARS).collect();
            if cut.len() < body.len() {
                cut.push('…');
            }
            self.samples.push(Sample { message_id: m.message_id.clone().unwrap_or_default(), reason, body: cut });
        }
    }

    /// The report `dlq stats` prints.
    pub fn render(&self, queue: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{queue}: {} message(s), all left in the queue", self.total);
        let section = |s: &mut String, title: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(s, "\n{title}");
            for (k, n) in rows {
                let _ = writeln!(s, "  {n:>8}  {k}");
            }
        };
        let mut reasons: Vec<(String, u64)> = self.by_reason.iter().map(|(k, n)| (k.clone(), *n)).collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        section(&mut s, "by reason", reasons);
        section(&mut s, "by pipeline", self.by_pipeline.iter().map(|(k, n)| (k.clone(), *n)).collect());
        section(
            &mut s,
            "by age",
            AGE_BUCKETS
                .iter()
                .zip(self.by_age)
                .filter(|(_, n)| *n > 0)
                .map(|((k, _), n)| ((*k).to_string(), n))
                .collect(),
        );
        if !self.by_receive_count.is_empty() {
            section(
                &mut s,
                "by receives in the source queue",
                self.by_receive_count.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            );
        }
        if !self.samples.is_empty() {
            let _ = writeln!(s, "\nsamples");
            for x in &self.samples {
                let _ = writeln!(s, "  {}  [{}]\n    {}", x.message_id, x.reason, x.body.replace('\n', "\\n"));
            }
        }
        s
    }
}

/// Reads the whole queue without consuming it and counts what it holds.
///
/// # Errors
/// When the queue cannot be read (it does not exist, access is denied, the endpoint is down).
pub async fn stats(clients: &SqsClients, url: &str, samples: usize) -> Result<Tally, SqsError> {
    let queue = SqsQueue::new(clients, url, PipelineMetrics::new("dlq-stats", 0, 0, 0).sqs);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut tally = Tally::default();
    let mut seen = HashSet::new();
    let mut receipts: Vec<String> = Vec::new();
    let mut empty = 0;
    let result = async {
        while empty < 2 {
            let messages = queue.receive(Duration::from_secs(1), Some(SCAN_VISIBILITY), None).await?;
            let mut new = 0;
            for m in &messages {
                receipts.extend(m.receipt_handle.clone());
                if seen.insert(m.message_id.clone().unwrap_or_default()) {
                    tally.add(m, now_ms, samples);
                    new += 1;
                }
            }
            empty = if new == 0 { empty + 1 } else { 0 };
        }
        Ok::<(), SqsError>(())
    }
    .await;
    // give every message back at once, whatever happened
    let receipts: Vec<&str> = receipts.iter().map(String::as_str).collect();
    let failed = queue.make_visible(&receipts).await;
    if failed > 0 {
        tracing::warn!(messages = failed, "could not make messages visible again; they come back within 60 s");
    }
    result.map(|()| tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::MessageAttributeValue;

    fn dead(id: &str, reason: Option<&str>, sent_ms: u64) -> SqsMessage {
        let mut b = SqsMessage::builder()
            .message_id(id)
            .body(format!("body of {id} {}", "x".repeat(300)))
            .attributes(MessageSystemAttributeName::SentTimestamp, sent_ms.to_string());
        if let Some(r) = reason {
            let s = |v: &str| MessageAttributeValue::builder().data_type("String").string_value(v).build().unwrap();
            b = b
                .message_attributes("sqs-poller.reason", s(r))
                .message_attributes("sqs-poller.pipeline", s("orders"))
                .message_attributes("sqs-poller.receive-count", s("5"));
        }
        b.build()
    }

    #[test]
    fn counts_by_reason_pipeline_age_and_receives() {
        let now = 10 * 86_400_000;
        let mut t = Tally::default();
        t.add(&dead("a", Some("HTTP 500"), now - 60_000), now, 2);
        t.add(&dead("b", Some("HTTP 500"), now - 2 * 86_400_000), now, 2);
        t.add(&dead("c", Some("timed out after 30 s"), now - 7_200_000), now, 2);
        t.add(&dead("d", None, now - 5 * 86_400_000), now, 2);
        assert_eq!(t.total, 4);
        assert_eq!(t.by_reason["HTTP 500"], 2);
        assert_eq!(t.by_reason[NO_REASON], 1);
        assert_eq!(t.by_pipeline["orders"], 3);
        assert_eq!(t.by_age, [1, 1, 1, 1, 0]);
        assert_eq!(t.by_receive_count[&5], 3);
        assert_eq!(t.samples.len(), 2);
        assert!(t.samples[0].body.ends_with('…') && t.samples[0].body.chars().count() == SAMPLE_CHARS + 1);
        let report = t.render("q");
        assert!(report.starts_with("q: 4 message(s), all left in the queue"), "{report}");
        assert!(report.contains("       2  HTTP 500"), "{report}");
    }
}
