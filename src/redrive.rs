//! `sqs-poller redrive`: move messages from a dead-letter queue back to a queue.
//!
//! Each message is sent to the destination (body and message attributes kept, the
//! `sqs-poller.*` dead-letter attributes dropped so a new failure records fresh ones) and only
//! then deleted from the source. A message whose send fails stays in the source queue and is
//! visible again after 30 s.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};

use crate::metrics::PipelineMetrics;
use crate::sqs::{SqsError, SqsQueue};

/// How long received messages stay hidden in the source while they are being moved.
const MOVE_VISIBILITY: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedriveReport {
    pub moved: u64,
    pub failed: u64,
}

/// Moves up to `limit` messages from `from` to `to`; `progress` is called after each receive.
///
/// # Errors
/// When the source cannot be read (it does not exist, access is denied, the endpoint is down).
pub async fn redrive(
    client: aws_sdk_sqs::Client,
    from: &str,
    to: &str,
    limit: Option<u64>,
    progress: &mut dyn FnMut(RedriveReport),
) -> Result<RedriveReport, SqsError> {
    let metrics = PipelineMetrics::new("redrive", 0, 0, 0);
    let source = SqsQueue::new(client.clone(), from, metrics.clone());
    let destination = SqsQueue::new(client, to, metrics);
    let to_fifo = to.ends_with(".fifo");
    let mut report = RedriveReport::default();
    let mut empty_receives = 0;
    while limit.is_none_or(|l| report.moved + report.failed < l) && empty_receives < 2 {
        let messages = source.receive(Duration::from_secs(1), Some(MOVE_VISIBILITY)).await?;
        if messages.is_empty() {
            empty_receives += 1;
            continue;
        }
        empty_receives = 0;
        let room = limit.map_or(usize::MAX, |l| (l - report.moved - report.failed) as usize);
        let (take, put_back) = if messages.len() > room {
            let mut m = messages;
            let rest = m.split_off(room);
            (m, rest)
        } else {
            (messages, Vec::new())
        };
        if !put_back.is_empty() {
            let receipts: Vec<&str> = put_back.iter().filter_map(|m| m.receipt_handle.as_deref()).collect();
            let entries: Vec<(&str, i32)> = receipts.iter().map(|r| (*r, 0)).collect();
            source.change_visibility(&entries).await;
        }
        let sends = futures_util::future::join_all(take.iter().map(|m| send_copy(&destination, m, to_fifo))).await;
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
        let not_deleted = source.delete(&sent).await;
        report.moved += (sent.len() - not_deleted.len()) as u64;
        report.failed += (take.len() - sent.len() + not_deleted.len()) as u64;
        progress(report);
    }
    Ok(report)
}

async fn send_copy(destination: &SqsQueue, m: &Message, fifo: bool) -> Result<(), SqsError> {
    let attributes: HashMap<String, MessageAttributeValue> = m
        .message_attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("sqs-poller."))
        .collect();
    let system = m.attributes.as_ref();
    let group = system.and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId)).map(String::as_str);
    let group = if fifo { group.or(Some("redrive")) } else { None };
    let dedup = if fifo { m.message_id.as_deref() } else { None };
    destination.send(m.body.as_deref().unwrap_or(""), attributes, group, dedup).await
}
