//! A message as `ReceiveMessage` returns it: the crate's own type, which the `Queue` trait hands
//! to the stages. The lean JSON client builds it straight from SQS's answer, the simulation in
//! memory; nothing after the queue depends on the SDK's `Message`.
//!
//! The fields are SQS's (`MessageId`, `ReceiptHandle`, `MD5OfBody`, `Body`, `Attributes`,
//! `MD5OfMessageAttributes`, `MessageAttributes`), each optional as SQS's API defines them: the
//! intake refuses a message without its id or receipt handle, naming what is missing. Attribute
//! values keep the SDK's `MessageAttributeValue`, which the send path (dead-letter copies,
//! redrive) hands back to SQS unchanged.

use std::collections::HashMap;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqsMessage {
    pub message_id: Option<String>,
    pub receipt_handle: Option<String>,
    pub md5_of_body: Option<String>,
    pub body: Option<String>,
    /// The system attributes (`ApproximateReceiveCount`, `SentTimestamp`, `MessageGroupId`, ...).
    pub attributes: Option<HashMap<MessageSystemAttributeName, String>>,
    pub md5_of_message_attributes: Option<String>,
    /// The producer's message attributes.
    pub message_attributes: Option<HashMap<String, MessageAttributeValue>>,
}

impl SqsMessage {
    /// A message field by field (the simulation and the tests).
    pub fn builder() -> SqsMessageBuilder {
        SqsMessageBuilder::default()
    }

    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    pub fn receipt_handle(&self) -> Option<&str> {
        self.receipt_handle.as_deref()
    }

    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }

    pub fn attributes(&self) -> Option<&HashMap<MessageSystemAttributeName, String>> {
        self.attributes.as_ref()
    }

    pub fn message_attributes(&self) -> Option<&HashMap<String, MessageAttributeValue>> {
        self.message_attributes.as_ref()
    }
}

/// Builds an [`SqsMessage`]; `attributes` and `message_attributes` add one entry each call.
#[derive(Default)]
pub struct SqsMessageBuilder(SqsMessage);

impl SqsMessageBuilder {
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.0.message_id = Some(id.into());
        self
    }

    pub fn receipt_handle(mut self, handle: impl Into<String>) -> Self {
        self.0.receipt_handle = Some(handle.into());
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.0.body = Some(body.into());
        self
    }

    pub fn md5_of_body(mut self, md5: impl Into<String>) -> Self {
        self.0.md5_of_body = Some(md5.into());
        self
    }

    pub fn md5_of_message_attributes(mut self, md5: impl Into<String>) -> Self {
        self.0.md5_of_message_attributes = Some(md5.into());
        self
    }

    pub fn attributes(mut self, name: MessageSystemAttributeName, value: impl Into<String>) -> Self {
        self.0.attributes.get_or_insert_with(HashMap::new).insert(name, value.into());
        self
    }

    pub fn message_attributes(mut self, name: impl Into<String>, value: MessageAttributeValue) -> Self {
        self.0.message_attributes.get_or_insert_with(HashMap::new).insert(name.into(), value);
        self
    }

    pub fn build(self) -> SqsMessage {
        self.0
    }
}
