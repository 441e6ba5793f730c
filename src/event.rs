//! The Lambda SQS event, exactly as Lambda sends it, and the received message that carries it.
//!
//! Each message is turned into its Lambda record and serialized **once**, at receive time: the
//! batcher measures batches by those bytes and the dispatcher joins them into
//! `{"Records":[…]}` without serializing again.

use crate::aws::SqsMessage;
use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use serde::{Deserialize, Serialize};

/// One record of Lambda's SQS event (`{"Records": [SqsRecord, …]}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SqsRecord {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// System attributes as SQS returned them (`ApproximateReceiveCount`, `SentTimestamp`, …).
    pub attributes: BTreeMap<String, String>,
    pub message_attributes: BTreeMap<String, SqsMessageAttribute>,
    pub md5_of_body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5_of_message_attributes: Option<String>,
    pub event_source: String,
    #[serde(rename = "eventSourceARN")]
    pub event_source_arn: String,
    pub aws_region: String,
}

/// A message attribute in Lambda's shape (binary values base64-encoded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SqsMessageAttribute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_value: Option<String>,
    #[serde(default)]
    pub string_list_values: Vec<String>,
    #[serde(default)]
    pub binary_list_values: Vec<String>,
    pub data_type: String,
}

/// Where records say they come from (`eventSourceARN`, `awsRegion`).
#[derive(Debug, Clone)]
pub struct EventSource {
    pub queue_arn: String,
    pub region: String,
}

/// Where a large payload lives (an extended client's pointer, read by `payload::S3Pointer::parse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Pointer {
    pub bucket: String,
    pub key: String,
}

/// A message whose body SQS carried was an extended client's pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offloaded {
    pub pointer: S3Pointer,
    /// The body as SQS carried it (the pointer, as the sender wrote it): a dead-letter copy
    /// carries this, not the payload, so that it fits SQS and extended clients can read it.
    pub pointer_body: Box<str>,
}

/// A received message on its way through the pipeline: what the acker needs, plus the
/// serialized record the target receives. Its receipt handle is kept by its lease (the newest one
/// SQS honours; `lease::LeaseKeeper`) and inside the record (the one the worker sees), not a third
/// time here (issue 32: ~400 bytes per message on real SQS).
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub message_id: String,
    /// `ApproximateReceiveCount` at this receive (1 on the first delivery).
    pub receive_count: u32,
    /// `SentTimestamp` in milliseconds since the epoch.
    pub sent_timestamp_ms: Option<u64>,
    /// FIFO only: the message group, which fixes retry order.
    pub group_id: Option<String>,
    /// The Lambda record, serialized; shared with the events that carry it (the body held once).
    pub record_json: std::sync::Arc<str>,
    /// The `AWSTraceHeader` system attribute (X-Ray), when the sender set one.
    pub trace_header: Option<Box<str>>,
    /// The `traceparent` message attribute (W3C trace context), when the producer set one.
    pub traceparent: Option<Box<str>>,
    /// The S3 object its body was fetched from (SQS Extended Client pointer), if any, with the
    /// pointer body SQS carried.
    pub s3_object: Option<Box<Offloaded>>,
    /// Why its payload could not be fetched: it fails without being dispatched.
    pub unresolved: Option<Box<Unresolved>>,
}

/// The message attribute that carries when a message was first sent (milliseconds since the
/// epoch) across the copies sqs-poller makes of it: a dead-letter copy and a redrive keep it, so
/// `retry.max_age_secs` counts a message's age from its first send, not from its last copy's.
pub const FIRST_SENT_ATTRIBUTE: &str = "sqs-poller.first-sent";

/// When `msg` was first sent: its [`FIRST_SENT_ATTRIBUTE`] when a copy carries one, else its
/// `SentTimestamp` (milliseconds since the epoch).
pub fn first_sent_ms(msg: &SqsMessage) -> Option<u64> {
    let carried = msg.message_attributes.as_ref().and_then(|a| a.get(FIRST_SENT_ATTRIBUTE));
    carried.and_then(|v| v.string_value()?.trim().parse().ok()).or_else(|| {
        let system = msg.attributes.as_ref()?;
        system.get(&MessageSystemAttributeName::SentTimestamp)?.parse().ok()
    })
}

/// SQS allows at most this many message attributes per message.
pub const MAX_MESSAGE_ATTRIBUTES: usize = 10;

/// Gives a copy of a message the time it was first sent ([`crate::event::FIRST_SENT_ATTRIBUTE`]),
/// unless it carries one already (a copy of a copy), so `retry.max_age_secs` counts from the
/// first send after a redrive too. Only while a place stays free for the dead-letter attribute.
pub fn carry_first_sent(attributes: &mut HashMap<String, MessageAttributeValue>, sent_ms: Option<u64>) {
    let name = crate::event::FIRST_SENT_ATTRIBUTE;
    if let (false, Some(sent)) = (attributes.contains_key(name), sent_ms) {
        if attributes.len() + 1 < MAX_MESSAGE_ATTRIBUTES {
            let value = MessageAttributeValue::builder().data_type("Number").string_value(sent.to_string()).build();
            attributes.insert(name.into(), value.expect("data type set"));
        }
    }
}

/// The message attribute a long delay's copies carry (see `hop`): a JSON object with the delay
/// left after the copy's own `DelaySeconds`, the receives and the hops so far.
pub const HOP_ATTRIBUTE: &str = "sqs-poller.hop";

/// What a long delay's copy carries in its [`HOP_ATTRIBUTE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    /// Seconds the message still waits once this copy is visible (0: due).
    pub due_in_seconds: u64,
    /// Receives of the messages it was copied from.
    pub receive_count: u32,
    /// Copies made so far.
    pub hops: u32,
}

impl Hop {
    /// The hop state `msg` carries, if any. A value that does not parse is no hop (the message
    /// is due): a producer's stray attribute delays nothing.
    pub fn of(msg: &SqsMessage) -> Option<Hop> {
        let value = msg.message_attributes.as_ref()?.get(HOP_ATTRIBUTE)?.string_value()?;
        serde_json::from_str(value).ok()
    }

    /// The attribute's text.
    pub fn to_attribute(self) -> String {
        serde_json::to_string(&self).expect("numbers always serialize")
    }
}

/// A long delay's copy (one with a [`HOP_ATTRIBUTE`]) shows what the original showed: its
/// `ApproximateReceiveCount` counts the receives of the messages it was copied from too, and its
/// `SentTimestamp` is the first send's ([`FIRST_SENT_ATTRIBUTE`]). So a worker's own retry curve
/// and age checks, and `max_receive_count`, count across hops. Its `messageId` stays its own.
fn restore_hopped(msg: &mut SqsMessage) {
    let Some(hop) = Hop::of(msg) else { return };
    let first_sent = first_sent_ms(msg);
    let Some(system) = msg.attributes.as_mut() else { return };
    let count = MessageSystemAttributeName::ApproximateReceiveCount;
    let own: u32 = system.get(&count).and_then(|v| v.parse().ok()).unwrap_or(1);
    system.insert(count, own.saturating_add(hop.receive_count).to_string());
    if let Some(sent) = first_sent {
        system.insert(MessageSystemAttributeName::SentTimestamp, sent.to_string());
    }
}

/// Why a message's large payload is not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// For the log, and the dead-letter copy's `sqs-poller.reason`.
    pub reason: String,
    /// Refused, never to be fetched (a bucket outside `large_payloads.allowed_buckets`): it goes
    /// to the dead-letter queue at once rather than after `max_receive_count` tries.
    pub refused: bool,
}

/// A message SQS returned without the fields every message has.
#[derive(Debug, thiserror::Error)]
#[error("ReceiveMessage returned a message without {0}")]
pub struct MalformedMessage(&'static str);

impl ReceivedMessage {
    /// Builds the Lambda record of an SQS message and serializes it.
    ///
    /// # Errors
    /// [`MalformedMessage`] when SQS left out the message id or receipt handle.
    pub fn from_sqs(mut msg: SqsMessage, source: &EventSource) -> Result<Self, MalformedMessage> {
        restore_hopped(&mut msg);
        if msg.message_id.is_none() {
            return Err(MalformedMessage("MessageId"));
        }
        if msg.receipt_handle.is_none() {
            return Err(MalformedMessage("ReceiptHandle"));
        }
        // serialized straight from the received message: no intermediate record, into a buffer
        // sized for it (grown from empty, a 256 KiB record took allocations of 256 and 512 KiB
        // on the way); escapes beyond the allowance grow it once more
        let mut record = Vec::with_capacity(record_capacity(&msg, source));
        serde_json::to_writer(&mut record, &RecordRef { msg: &msg, source })
            .expect("a record of strings always serializes");
        // SAFETY: serde_json writes UTF-8 only (its own `to_string` does the same)
        let record_json = unsafe { String::from_utf8_unchecked(record) }.into();
        let attr = |name: MessageSystemAttributeName| msg.attributes.as_ref().and_then(|a| a.get(&name));
        let receive_count =
            attr(MessageSystemAttributeName::ApproximateReceiveCount).and_then(|v| v.parse().ok()).unwrap_or(1);
        let sent_timestamp_ms = attr(MessageSystemAttributeName::SentTimestamp).and_then(|v| v.parse().ok());
        let group_id = attr(MessageSystemAttributeName::MessageGroupId).cloned();
        let trace_header = attr(MessageSystemAttributeName::AwsTraceHeader).map(|t| t.as_str().into());
        let traceparent = msg
            .message_attributes
            .as_ref()
            .and_then(|a| a.get("traceparent"))
            .and_then(|v| v.string_value.as_deref())
            .map(Into::into);
        Ok(ReceivedMessage {
            message_id: msg.message_id.expect("checked above"),
            receive_count,
            sent_timestamp_ms,
            group_id,
            record_json,
            trace_header,
            traceparent,
            s3_object: None,
            unresolved: None,
        })
    }

    /// The record back as a struct (for the dead-letter path, which needs body and attributes).
    pub fn record(&self) -> SqsRecord {
        serde_json::from_str(&self.record_json).expect("record_json was produced by serde_json")
    }

    /// What a copy of it (for the dead-letter queue, for a long delay's next hop) sends: the
    /// body SQS carried (an offloaded payload's pointer: it fits SQS, and extended clients read
    /// it as they read the original) and its message attributes.
    pub fn copy_parts(&self) -> (String, HashMap<String, MessageAttributeValue>) {
        let record = self.record();
        let attributes =
            record.message_attributes.iter().filter_map(|(k, v)| Some((k.clone(), attribute_to_sqs(v)?))).collect();
        let body = match &self.s3_object {
            Some(o) => o.pointer_body.to_string(),
            None => record.body,
        };
        (body, attributes)
    }

    /// Bytes this record adds to an event: its JSON plus the separating comma.
    pub fn event_bytes(&self) -> usize {
        self.record_json.len() + 1
    }

    /// A message for unit tests: `id`, first received, record `{}`, nothing else (change what a
    /// test needs with `ReceivedMessage { …, ..ReceivedMessage::for_test(id) }`).
    #[cfg(test)]
    pub fn for_test(id: impl Into<String>) -> Self {
        ReceivedMessage {
            message_id: id.into(),
            receive_count: 1,
            sent_timestamp_ms: None,
            group_id: None,
            record_json: "{}".into(),
            trace_header: None,
            traceparent: None,
            s3_object: None,
            unresolved: None,
        }
    }
}

/// A message's size as SQS counts it against `MaximumMessageSize`: its body and its message
/// attributes (names, types and values).
pub fn message_bytes(m: &SqsMessage) -> usize {
    let attributes: usize = m
        .message_attributes
        .iter()
        .flatten()
        .map(|(name, v)| {
            name.len()
                + v.data_type.len()
                + v.string_value.as_deref().map_or(0, str::len)
                + v.binary_value.as_ref().map_or(0, |b| b.as_ref().len())
        })
        .sum();
    m.body.as_deref().map_or(0, str::len) + attributes
}

/// About what the record of `msg` takes: what SQS counts of it ([`message_bytes`]), the keys
/// around each message attribute and base64's third on binary values, the system attributes,
/// the source, and 1/16 more of the body for escapes.
fn record_capacity(msg: &SqsMessage, source: &EventSource) -> usize {
    let body = msg.body.as_deref().map_or(0, str::len);
    let per_attribute: usize = msg
        .message_attributes
        .iter()
        .flatten()
        .map(|(_, v)| 100 + v.binary_value.as_ref().map_or(0, |b| b.as_ref().len() / 3))
        .sum();
    let system: usize = msg.attributes.iter().flatten().map(|(_, v)| v.len() + 40).sum();
    message_bytes(msg) + body / 16 + per_attribute + system + source.queue_arn.len() + 512
}

/// The Lambda record of a received message, serialized without building an [`SqsRecord`] first.
/// Field for field the same JSON as `SqsRecord` (a test holds the two together).
struct RecordRef<'a> {
    msg: &'a SqsMessage,
    source: &'a EventSource,
}

impl Serialize for RecordRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let m = self.msg;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("messageId", m.message_id.as_deref().unwrap_or(""))?;
        map.serialize_entry("receiptHandle", m.receipt_handle.as_deref().unwrap_or(""))?;
        map.serialize_entry("body", m.body.as_deref().unwrap_or(""))?;
        map.serialize_entry("attributes", &SystemAttributes(m.attributes.as_ref()))?;
        map.serialize_entry("messageAttributes", &MessageAttributes(m.message_attributes.as_ref()))?;
        map.serialize_entry("md5OfBody", m.md5_of_body.as_deref().unwrap_or(""))?;
        if let Some(md5) = &m.md5_of_message_attributes {
            map.serialize_entry("md5OfMessageAttributes", md5)?;
        }
        map.serialize_entry("eventSource", "aws:sqs")?;
        map.serialize_entry("eventSourceARN", &self.source.queue_arn)?;
        map.serialize_entry("awsRegion", &self.source.region)?;
        map.end()
    }
}

struct SystemAttributes<'a>(Option<&'a std::collections::HashMap<MessageSystemAttributeName, String>>);

impl Serialize for SystemAttributes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.into_iter().flatten().map(|(k, v)| (k.as_str(), v)))
    }
}

struct MessageAttributes<'a>(Option<&'a std::collections::HashMap<String, MessageAttributeValue>>);

impl Serialize for MessageAttributes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.into_iter().flatten().map(|(k, v)| (k, AttributeRef(v))))
    }
}

/// A message attribute in Lambda's shape; binary values are base64-encoded on the way.
struct AttributeRef<'a>(&'a MessageAttributeValue);

impl Serialize for AttributeRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let v = self.0;
        let b64 = |b: &aws_smithy_types::Blob| aws_smithy_types::base64::encode(b.as_ref());
        let mut map = s.serialize_map(None)?;
        if let Some(sv) = &v.string_value {
            map.serialize_entry("stringValue", sv)?;
        }
        if let Some(bv) = &v.binary_value {
            map.serialize_entry("binaryValue", &b64(bv))?;
        }
        map.serialize_entry("stringListValues", v.string_list_values.as_deref().unwrap_or(&[]))?;
        let binaries: Vec<String> = v.binary_list_values.iter().flatten().map(b64).collect();
        map.serialize_entry("binaryListValues", &binaries)?;
        map.serialize_entry("dataType", &v.data_type)?;
        map.end()
    }
}

/// Converts a Lambda-shaped attribute back to the SQS type (for re-sending to a dead-letter queue).
pub fn attribute_to_sqs(a: &SqsMessageAttribute) -> Option<MessageAttributeValue> {
    let blob = |s: &String| aws_smithy_types::base64::decode(s).ok().map(aws_smithy_types::Blob::new);
    MessageAttributeValue::builder()
        .data_type(a.data_type.clone())
        .set_string_value(a.string_value.clone())
        .set_binary_value(a.binary_value.as_ref().and_then(blob))
        .build()
        .ok()
}

/// Joins serialized records into Lambda's event, `{"Records":[…]}`.
pub fn encode_event(messages: &[ReceivedMessage]) -> Vec<u8> {
    let mut out = Vec::with_capacity(event_size(messages.iter().map(ReceivedMessage::event_bytes).sum()));
    out.extend_from_slice(EVENT_HEAD.as_bytes());
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m.record_json.as_bytes());
    }
    out.extend_from_slice(EVENT_TAIL.as_bytes());
    out
}

/// Lambda's event for a batch, made of its records' own bytes: nothing of a message is copied to
/// send it (issue 32: each batch at the worker held a second copy of its bodies), and the event
/// holds no list of its pieces either — it reads them from the batch as they are written. Targets
/// that need it whole ([`Event::to_bytes`]: Lambda, a command, the Runtime API) copy it then.
pub struct Event<'a> {
    messages: &'a [ReceivedMessage],
    len: usize,
    /// The event in one piece, put together once on first need (a retried call reuses it).
    whole: std::sync::OnceLock<bytes::Bytes>,
}

impl<'a> Event<'a> {
    /// The event of `messages`, in order.
    pub fn of(messages: &'a [ReceivedMessage]) -> Event<'a> {
        let len = event_size(messages.iter().map(ReceivedMessage::event_bytes).sum());
        Event { messages, len, whole: std::sync::OnceLock::new() }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The event in one piece: a copy, made on the first call and shared by the later ones (the
    /// calls of a retried batch).
    pub fn to_bytes(&self) -> bytes::Bytes {
        self.whole.get_or_init(|| bytes::Bytes::from(encode_event(self.messages))).clone()
    }
}

/// Its bytes, in pieces: the head, each record (after a comma but the first), the tail.
impl crate::aws::wire::Parts for Event<'_> {
    fn count(&self) -> usize {
        2 * self.messages.len() + 2
    }

    fn part(&self, i: usize) -> &[u8] {
        match i {
            0 => EVENT_HEAD.as_bytes(),
            i if i == 2 * self.messages.len() + 1 => EVENT_TAIL.as_bytes(),
            i if i % 2 == 1 => {
                if i == 1 {
                    b""
                } else {
                    b","
                }
            }
            i => self.messages[i / 2 - 1].record_json.as_bytes(),
        }
    }

    fn byte_len(&self) -> usize {
        self.len
    }
}

const EVENT_HEAD: &str = "{\"Records\":[";
const EVENT_TAIL: &str = "]}";

/// Size of an event whose records add up to `records_bytes` (see [`ReceivedMessage::event_bytes`]).
pub fn event_size(records_bytes: usize) -> usize {
    // one comma fewer than records, but never below zero for the empty event
    (EVENT_HEAD.len() + EVENT_TAIL.len() + records_bytes).saturating_sub(usize::from(records_bytes > 0))
}

/// The SQS queue ARN of a standard queue URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`),
/// used when GetQueueAttributes cannot tell it.
pub fn arn_from_queue_url(url: &str, region: &str) -> String {
    let path: Vec<&str> = url.trim_end_matches('/').rsplitn(3, '/').collect();
    match path.as_slice() {
        [name, account, _] => format!("arn:aws:sqs:{region}:{account}:{name}"),
        _ => format!("arn:aws:sqs:{region}:000000000000:unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::wire::Parts;

    /// Issue 34: producers choose bodies and attributes. Whatever text they send, the record is
    /// valid JSON that gives the worker the body and the attribute's value back unchanged.
    #[test]
    fn hostile_bodies_and_attributes_reach_the_record_unchanged() {
        let source =
            EventSource { queue_arn: "arn:aws:sqs:us-east-1:000000000000:q".into(), region: "us-east-1".into() };
        crate::fuzz::run("record_text", 2000, |rng| {
            let len = rng.usize(0..200);
            let body = crate::fuzz::text(rng, len);
            let (value_len, name_len) = (rng.usize(0..40), rng.usize(1..10));
            let value = crate::fuzz::text(rng, value_len);
            let name = crate::fuzz::text(rng, name_len);
            let attribute = MessageAttributeValue::builder().data_type("String").string_value(&value).build().unwrap();
            let msg = SqsMessage::builder()
                .message_id("m")
                .receipt_handle("r")
                .body(&body)
                .attributes(MessageSystemAttributeName::ApproximateReceiveCount, crate::fuzz::text(rng, 3))
                .message_attributes(&name, attribute)
                .build();
            let m = ReceivedMessage::from_sqs(msg, &source).unwrap();
            let record: serde_json::Value = serde_json::from_str(&m.record_json).expect("the record is JSON");
            assert_eq!(record["body"].as_str(), Some(body.as_str()));
            assert_eq!(record["messageAttributes"][&name]["stringValue"].as_str(), Some(value.as_str()));
        });
    }

    /// Every message in flight is one of these in its batch (10,000 in flight: 10,000 of them),
    /// so what most messages never use is boxed (issue 32).
    #[test]
    fn a_received_message_stays_small() {
        let size = std::mem::size_of::<ReceivedMessage>();
        eprintln!("ReceivedMessage: {size} bytes");
        assert!(size <= 144, "{size} bytes (208 with the large payload's fields inline)");
    }

    /// The example event of the AWS Lambda developer guide ("Using Lambda with Amazon SQS",
    /// example standard queue message event), one record.
    const AWS_DOC_RECORD: &str = r#"{
        "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "body": "Test message.",
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1545082649183",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1545082649185"
        },
        "messageAttributes": {
            "myAttribute": {
                "stringValue": "myValue",
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": "String"
            }
        },
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-2:123456789012:my-queue",
        "awsRegion": "us-east-2"
    }"#;

    #[test]
    fn aws_doc_record_round_trips() {
        let record: SqsRecord = serde_json::from_str(AWS_DOC_RECORD).unwrap();
        let ours: serde_json::Value = serde_json::to_value(&record).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(AWS_DOC_RECORD).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn sqs_message_becomes_the_lambda_record() {
        let msg = SqsMessage::builder()
            .message_id("059f36b4-87a3-44ab-83d2-661975830a7d")
            .receipt_handle("AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...")
            .body("Test message.")
            .md5_of_body("e4e68fb7bd0e697a0ae8f1bb342846b3")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "1")
            .attributes(MessageSystemAttributeName::SentTimestamp, "1545082649183")
            .attributes(MessageSystemAttributeName::SenderId, "AIDAIENQZJOLO23YVJ4VO")
            .attributes(MessageSystemAttributeName::ApproximateFirstReceiveTimestamp, "1545082649185")
            .message_attributes(
                "myAttribute",
                MessageAttributeValue::builder().data_type("String").string_value("myValue").build().unwrap(),
            )
            .build();
        let source =
            EventSource { queue_arn: "arn:aws:sqs:us-east-2:123456789012:my-queue".into(), region: "us-east-2".into() };
        let capacity = record_capacity(&msg, &source);
        let m = ReceivedMessage::from_sqs(msg, &source).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&m.record_json).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(AWS_DOC_RECORD).unwrap();
        assert_eq!(ours, theirs);
        // the record was written into one buffer, never grown
        assert!(capacity >= m.record_json.len(), "{capacity} for {}", m.record_json.len());
        assert!(capacity < m.record_json.len() + 1024, "{capacity} for {}", m.record_json.len());
        assert_eq!(m.receive_count, 1);
        assert_eq!(m.sent_timestamp_ms, Some(1_545_082_649_183));
        assert_eq!(m.message_id, "059f36b4-87a3-44ab-83d2-661975830a7d");
        assert_eq!(m.group_id, None);
    }

    #[test]
    fn binary_attributes_are_base64_both_ways() {
        let attr = MessageAttributeValue::builder()
            .data_type("Binary")
            .binary_value(aws_smithy_types::Blob::new(vec![0u8, 159, 146, 150]))
            .build()
            .unwrap();
        let lambda: SqsMessageAttribute =
            serde_json::from_str(&serde_json::to_string(&AttributeRef(&attr)).unwrap()).unwrap();
        assert_eq!(lambda.binary_value.as_deref(), Some("AJ+Slg=="));
        assert_eq!(attribute_to_sqs(&lambda).unwrap(), attr);
    }

    #[test]
    fn the_direct_serialization_equals_the_record_type() {
        let msg = SqsMessage::builder()
            .message_id("id-1")
            .receipt_handle("rh")
            .body("{\"a\": \"é\\n\"}")
            .md5_of_body("m")
            .md5_of_message_attributes("ma")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "3")
            .attributes(MessageSystemAttributeName::MessageGroupId, "g")
            .message_attributes(
                "list",
                MessageAttributeValue::builder()
                    .data_type("String.custom")
                    .string_list_values("x")
                    .binary_list_values(aws_smithy_types::Blob::new(vec![1u8, 2]))
                    .build()
                    .unwrap(),
            )
            .build();
        let source = EventSource { queue_arn: "arn:aws:sqs:eu-west-1:1:q.fifo".into(), region: "eu-west-1".into() };
        let m = ReceivedMessage::from_sqs(msg, &source).unwrap();
        let record: SqsRecord = serde_json::from_str(&m.record_json).unwrap();
        assert_eq!(
            serde_json::to_value(&record).unwrap(),
            serde_json::from_str::<serde_json::Value>(&m.record_json).unwrap()
        );
        assert_eq!(record.message_attributes["list"].binary_list_values, vec!["AQI=".to_string()]);
        assert_eq!((m.receive_count, m.group_id.as_deref()), (3, Some("g")));
        assert_eq!(record.md5_of_message_attributes.as_deref(), Some("ma"));
    }

    #[test]
    fn event_size_matches_the_encoded_event() {
        let record: SqsRecord = serde_json::from_str(AWS_DOC_RECORD).unwrap();
        let message = ReceivedMessage {
            record_json: serde_json::to_string(&record).unwrap().into(),
            ..ReceivedMessage::for_test(record.message_id.clone())
        };
        for n in 0..4 {
            let msgs = vec![message.clone(); n];
            let bytes = encode_event(&msgs);
            assert_eq!(bytes.len(), event_size(msgs.iter().map(ReceivedMessage::event_bytes).sum()));
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["Records"].as_array().unwrap().len(), n);
        }
    }

    #[test]
    fn arn_is_derived_from_a_queue_url() {
        assert_eq!(
            arn_from_queue_url("https://sqs.us-east-2.amazonaws.com/123456789012/my-queue", "us-east-2"),
            "arn:aws:sqs:us-east-2:123456789012:my-queue"
        );
    }

    /// Issue 32, each body held once: the event a batch sends is made of its records' own bytes
    /// (the same memory, not a copy), and put together it is the event `encode_event` writes.
    #[test]
    fn an_event_shares_its_records_bytes() {
        let source =
            EventSource { queue_arn: "arn:aws:sqs:eu-west-1:123456789012:q".into(), region: "eu-west-1".into() };
        let messages: Vec<ReceivedMessage> = (0..3)
            .map(|i| {
                let msg = SqsMessage::builder()
                    .message_id(format!("m{i}"))
                    .receipt_handle(format!("rh{i}"))
                    .body(format!("body {i}"))
                    .build();
                ReceivedMessage::from_sqs(msg, &source).unwrap()
            })
            .collect();
        let event = Event::of(&messages);
        assert_eq!(event.to_bytes()[..], encode_event(&messages)[..]);
        assert_eq!(event.to_bytes().as_ptr(), event.to_bytes().as_ptr(), "put together once");
        assert_eq!(event.len(), encode_event(&messages).len());
        let parts: Vec<&[u8]> = (0..event.count()).map(|i| event.part(i)).collect();
        assert_eq!(parts.concat(), encode_event(&messages), "the pieces are the event");
        assert_eq!(event.byte_len(), parts.concat().len());
        for m in &messages {
            assert!(
                parts.iter().any(|p| p.as_ptr() == m.record_json.as_ptr() && p.len() == m.record_json.len()),
                "the record of {} is not in the event as itself",
                m.message_id
            );
        }
        assert_eq!(Event::of(&[]).to_bytes()[..], encode_event(&[])[..]);
    }
}
