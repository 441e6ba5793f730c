//! The three SQS calls on every message's path — ReceiveMessage, DeleteMessageBatch and
//! ChangeMessageVisibilityBatch — sent as AWS JSON 1.0 requests over [`super::wire`]'s lean
//! HTTP/1.1 connections (a waiting long poll holds its socket and no buffer: issue 32), signed by
//! [`super::sigv4::CachedSigner`].
//!
//! Why not the SDK for these: its orchestrator (interceptors, layered configuration, type-erased
//! request state, response deserializers building every field) cost more CPU per request than
//! everything sqs-poller does per message (`bench/RESULTS.md`). The wire format is SQS's
//! documented JSON protocol, the same bytes the SDK sends; the endpoint is resolved by the SDK's
//! own endpoint rules with the endpoint URL the SDK client gets ([`super::Aws::sqs_endpoint_url`]),
//! credentials come from the process's cache ([`super::CredentialsCache`]), requests are signed
//! with the skew-corrected clock and every answer's `Date` teaches it ([`super::Clock`]), errors
//! are read as the SDK reads them ([`super::errors`]), and answers become the SDK's types, so
//! every stage above is unchanged.
//! The other calls (GetQueueAttributes, SendMessage) stay on the SDK; `sqs::SqsClients`
//! carries both clients to every queue, the tools' included.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sdk_sqs::types::{BatchResultErrorEntry, MessageAttributeValue, MessageSystemAttributeName};

use super::SqsMessage;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::errors::{parse_json_error, SqsError, SqsErrorKind};
use super::sigv4::CachedSigner;
use super::{Clock, CredentialsCache};

/// Sends the hot SQS calls of every queue of the service.
pub struct JsonClient {
    wire: super::wire::Wire,
    /// Where requests go: `https://sqs.REGION.amazonaws.com/`, or `[aws] endpoint_url` with `/`.
    uri: String,
    signer: CachedSigner,
    credentials: CredentialsCache,
    clock: Clock,
    user_agent: String,
}

impl std::fmt::Debug for JsonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonClient").field("uri", &self.uri).finish_non_exhaustive()
    }
}

impl JsonClient {
    /// The client of the AWS edge `aws`: its region, its endpoint as the SDK resolves it
    /// (`[aws]`, `AWS_ENDPOINT_URL_SQS`, a profile's `services`, `endpoint_url`, FIPS and
    /// dual-stack), its credentials and its clock.
    ///
    /// # Errors
    /// When the endpoint cannot be resolved or the TLS configuration cannot be built.
    pub async fn new(aws: &super::Aws) -> anyhow::Result<Arc<JsonClient>> {
        use aws_sdk_sqs::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
        let region = aws.region.as_str();
        let params = Params::builder()
            .region(region)
            .use_fips(aws.shared.use_fips().unwrap_or(false))
            .use_dual_stack(aws.shared.use_dual_stack().unwrap_or(false))
            .set_endpoint(aws.sqs_endpoint_url())
            .build()?;
        let endpoint = DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map_err(|e| anyhow::anyhow!("cannot resolve the SQS endpoint for {region}: {e}"))?;
        let uri = format!("{}/", endpoint.url().trim_end_matches('/'));
        tracing::debug!(endpoint = %uri, "SQS endpoint");
        let tls = crate::net::tls_config(None, None).map_err(|e| anyhow::anyhow!("cannot set up TLS for SQS: {e}"))?;
        let wire = super::wire::Wire::new(&uri, tls).map_err(|e| anyhow::anyhow!("the SQS endpoint {e}"))?;
        Ok(Arc::new(JsonClient {
            wire,
            uri,
            signer: CachedSigner::new(region, "sqs", aws.clock.clone()),
            credentials: aws.credentials.clone(),
            clock: aws.clock.clone(),
            user_agent: format!("sqs-poller/{}", env!("CARGO_PKG_VERSION")),
        }))
    }

    /// Where requests go.
    pub fn endpoint(&self) -> &str {
        &self.uri
    }

    /// One ReceiveMessage for up to 10 messages with every attribute; at most `limit` to answer.
    /// `attempt_id` is the FIFO `ReceiveRequestAttemptId`.
    ///
    /// # Errors
    /// [`SqsError`] of the request or the answer.
    pub async fn receive(
        &self,
        queue_url: &str,
        wait: Duration,
        visibility: Option<Duration>,
        attempt_id: Option<&str>,
        limit: Duration,
    ) -> Result<Vec<SqsMessage>, SqsError> {
        let request = ReceiveRequest {
            queue_url,
            max_number_of_messages: 10,
            wait_time_seconds: wait.as_secs(),
            visibility_timeout: visibility.map(|v| v.as_secs()),
            receive_request_attempt_id: attempt_id,
            message_system_attribute_names: ["All"],
            message_attribute_names: ["All"],
        };
        let body = self.call("ReceiveMessage", &request, limit).await?;
        parse_receive(&body)
    }

    /// One DeleteMessageBatch of `(id, receipt handle)` entries; the entries SQS reports failed.
    ///
    /// # Errors
    /// [`SqsError`] when the request as a whole failed.
    pub async fn delete_batch(
        &self,
        queue_url: &str,
        entries: &[(String, &str)],
        limit: Duration,
    ) -> Result<Vec<BatchResultErrorEntry>, SqsError> {
        let entries: Vec<BatchEntry> = entries
            .iter()
            .map(|(id, receipt_handle)| BatchEntry { id, receipt_handle, visibility_timeout: None })
            .collect();
        let body = self.call("DeleteMessageBatch", &BatchRequest { queue_url, entries }, limit).await?;
        failed_entries("DeleteMessageBatch", &body)
    }

    /// One ChangeMessageVisibilityBatch of `(id, receipt handle, seconds)`; the entries SQS
    /// reports failed.
    ///
    /// # Errors
    /// [`SqsError`] when the request as a whole failed.
    pub async fn change_visibility_batch(
        &self,
        queue_url: &str,
        entries: &[(String, &str, i32)],
        limit: Duration,
    ) -> Result<Vec<BatchResultErrorEntry>, SqsError> {
        let entries: Vec<BatchEntry> = entries
            .iter()
            .map(|(id, receipt_handle, seconds)| BatchEntry { id, receipt_handle, visibility_timeout: Some(*seconds) })
            .collect();
        let body = self.call("ChangeMessageVisibilityBatch", &BatchRequest { queue_url, entries }, limit).await?;
        failed_entries("ChangeMessageVisibilityBatch", &body)
    }

    /// Credentials from the process's cache.
    async fn credentials(&self, operation: &'static str) -> Result<Credentials, SqsError> {
        self.credentials.get().await.map_err(|e| {
            SqsError::new(
                operation,
                None,
                format!("cannot load AWS credentials: {}", crate::net::error_chain(&e)),
                SqsErrorKind::Connection,
                true,
            )
        })
    }

    /// POSTs `request` as `AmazonSQS.<operation>` and returns the body of a 200 answer.
    async fn call(
        &self,
        operation: &'static str,
        request: &impl Serialize,
        limit: Duration,
    ) -> Result<Bytes, SqsError> {
        let creds = self.credentials(operation).await?;
        let body = serde_json::to_vec(request).expect("a request of strings and numbers serializes");
        let target = format!("AmazonSQS.{operation}");
        let headers = [
            ("content-type", "application/x-amz-json-1.0"),
            ("x-amz-target", target.as_str()),
            ("x-amzn-query-mode", "true"),
        ];
        let signature =
            self.signer.sign("POST", &self.uri, &headers, Some(&body), &creds, self.clock.now()).map_err(|e| {
                SqsError::new(
                    operation,
                    None,
                    format!("cannot sign a request to {}: {e}", self.uri),
                    SqsErrorKind::Rejected,
                    false,
                )
            })?;
        let mut sent: Vec<(&str, &str)> = Vec::with_capacity(headers.len() + signature.len() + 1);
        sent.push(("user-agent", &self.user_agent));
        sent.extend(headers);
        sent.extend(signature.iter().map(|(name, value)| (*name, value.as_str())));
        let sent_at = SystemTime::now();
        // a server that sends more than SQS's largest answer is not read to its end
        let max = crate::limits::MAX_SQS_ANSWER_BYTES;
        let exchange =
            async { self.wire.post(&sent, &body, max).await.map_err(|e| wire_error(operation, &self.uri, max, e)) };
        let answer = match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(SqsError::new(
                    operation,
                    None,
                    format!("no answer within {} s", limit.as_secs()),
                    SqsErrorKind::Timeout,
                    true,
                ))
            }
        };
        let date = answer.headers.get("date").and_then(|v| v.to_str().ok());
        self.clock.observe(sent_at, SystemTime::now(), date, answer.headers.contains_key("age"));
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        Err(service_error(operation, answer.status, &answer.headers, &answer.body, self.clock.skew_ms()))
    }
}

/// The error SQS answered with, its code and message read as the SDK reads them.
fn service_error(
    operation: &'static str,
    status: hyper::StatusCode,
    headers: &hyper::HeaderMap,
    body: &[u8],
    skew_ms: i64,
) -> SqsError {
    let (code, message) = parse_json_error(headers, body);
    let message = message.unwrap_or_else(|| status.canonical_reason().unwrap_or("no message").to_string());
    SqsError::answered(operation, code, &message, status.as_u16(), skew_ms)
}

/// The messages of a ReceiveMessage answer (at most [`crate::limits::MAX_SQS_ANSWER_BYTES`], read
/// by the caller); a body that is not one is a bad response.
fn parse_receive(body: &[u8]) -> Result<Vec<SqsMessage>, SqsError> {
    let out: ReceiveResponse =
        serde_json::from_slice(body).map_err(|e| bad_response("ReceiveMessage", &e.to_string()))?;
    out.messages
        .unwrap_or_default()
        .into_iter()
        .map(WireMessage::into_message)
        .collect::<Result<_, _>>()
        .map_err(|e| bad_response("ReceiveMessage", &e))
}

/// What went wrong on the connection, as the request's error: an answer longer than `max` or
/// not HTTP is a bad response; a connection that could not be made or broke is retried.
fn wire_error(operation: &'static str, uri: &str, max: usize, e: super::wire::WireError) -> SqsError {
    match e {
        super::wire::WireError::TooLong(_) => {
            bad_response(operation, &format!("longer than {} MiB, more than SQS ever answers", max >> 20))
        }
        super::wire::WireError::Malformed(what) => bad_response(operation, &what),
        e @ super::wire::WireError::Connect(_) => {
            SqsError::new(operation, None, format!("cannot reach SQS at {uri}: {e}"), SqsErrorKind::Connection, true)
        }
        super::wire::WireError::Broken(e) => {
            SqsError::new(operation, None, format!("cannot reach SQS at {uri}: {e}"), SqsErrorKind::Connection, true)
        }
    }
}

fn bad_response(operation: &'static str, why: &str) -> SqsError {
    SqsError::new(operation, None, format!("an answer that cannot be read: {why}"), SqsErrorKind::BadResponse, true)
}

fn failed_entries(operation: &'static str, body: &[u8]) -> Result<Vec<BatchResultErrorEntry>, SqsError> {
    let out: BatchResponse = serde_json::from_slice(body).map_err(|e| bad_response(operation, &e.to_string()))?;
    out.failed
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            BatchResultErrorEntry::builder()
                .id(f.id)
                .sender_fault(f.sender_fault.unwrap_or(false))
                .code(f.code.unwrap_or_default())
                .set_message(f.message)
                .build()
                .map_err(|e| bad_response(operation, &e.to_string()))
        })
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveRequest<'a> {
    queue_url: &'a str,
    max_number_of_messages: u32,
    wait_time_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receive_request_attempt_id: Option<&'a str>,
    message_system_attribute_names: [&'static str; 1],
    message_attribute_names: [&'static str; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct BatchRequest<'a> {
    queue_url: &'a str,
    entries: Vec<BatchEntry<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct BatchEntry<'a> {
    id: &'a str,
    receipt_handle: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility_timeout: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BatchResponse {
    failed: Option<Vec<WireFailure>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireFailure {
    id: String,
    sender_fault: Option<bool>,
    code: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveResponse {
    messages: Option<Vec<WireMessage>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireMessage {
    message_id: Option<String>,
    receipt_handle: Option<String>,
    #[serde(rename = "MD5OfBody")]
    md5_of_body: Option<String>,
    body: Option<String>,
    attributes: Option<HashMap<String, String>>,
    #[serde(rename = "MD5OfMessageAttributes")]
    md5_of_message_attributes: Option<String>,
    message_attributes: Option<HashMap<String, WireAttribute>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireAttribute {
    string_value: Option<String>,
    /// base64, as the JSON protocol carries blobs
    binary_value: Option<String>,
    string_list_values: Option<Vec<String>>,
    binary_list_values: Option<Vec<String>>,
    data_type: String,
}

impl WireMessage {
    /// The crate's message, with the values the SDK's own deserializer would have given it.
    fn into_message(self) -> Result<SqsMessage, String> {
        let blob = |b64: &str| {
            aws_smithy_types::base64::decode(b64)
                .map(aws_smithy_types::Blob::new)
                .map_err(|e| format!("a binary attribute that is not base64: {e}"))
        };
        let attributes = self
            .attributes
            .map(|a| a.into_iter().map(|(k, v)| (MessageSystemAttributeName::from(k.as_str()), v)).collect());
        let message_attributes = match self.message_attributes {
            None => None,
            Some(m) => {
                let mut out = HashMap::with_capacity(m.len());
                for (name, a) in m {
                    let value = MessageAttributeValue::builder()
                        .set_string_value(a.string_value)
                        .set_binary_value(a.binary_value.as_deref().map(blob).transpose()?)
                        .set_string_list_values(a.string_list_values)
                        .set_binary_list_values(
                            a.binary_list_values
                                .map(|l| l.iter().map(|b| blob(b)).collect::<Result<Vec<_>, _>>())
                                .transpose()?,
                        )
                        .data_type(a.data_type)
                        .build()
                        .map_err(|e| e.to_string())?;
                    out.insert(name, value);
                }
                Some(out)
            }
        };
        Ok(SqsMessage {
            message_id: self.message_id,
            receipt_handle: self.receipt_handle,
            md5_of_body: self.md5_of_body,
            body: self.body,
            attributes,
            md5_of_message_attributes: self.md5_of_message_attributes,
            message_attributes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 34: a ReceiveMessage answer or an error body of any bytes is read or refused as a
    /// bad response, never a panic.
    #[test]
    fn hostile_sqs_answers_are_read_or_refused() {
        let receive: &[u8] = br#"{"Messages":[{"MessageId":"m1","ReceiptHandle":"r1","MD5OfBody":"d","Body":"hi \u00e9",
            "Attributes":{"ApproximateReceiveCount":"2","SentTimestamp":"1700000000000"},
            "MessageAttributes":{"s":{"StringValue":"v","DataType":"String"},"b":{"BinaryValue":"AAEC","DataType":"Binary"},
            "l":{"BinaryListValues":["AAEC"],"StringListValues":["x"],"DataType":"String"}}}]}"#;
        let error: &[u8] =
            br#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}"#;
        let read = std::sync::atomic::AtomicUsize::new(0);
        crate::fuzz::run("sqs_answers", 3000, |rng| {
            let answer = crate::fuzz::mutate(rng, receive);
            if let Ok(messages) = parse_receive(&answer) {
                assert!(messages.len() <= answer.len(), "more messages than bytes");
                read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let body = crate::fuzz::mutate(rng, error);
            let status = hyper::StatusCode::from_u16(rng.u16(400..600)).unwrap();
            let mut headers = hyper::HeaderMap::new();
            if let Ok(v) = hyper::header::HeaderValue::from_bytes(&crate::fuzz::mutate(
                rng,
                b"AWS.SimpleQueueService.NonExistentQueue;Sender",
            )) {
                headers.insert("x-amzn-query-error", v);
            }
            let e = service_error("ReceiveMessage", status, &headers, &body, rng.i64(..));
            assert!(e.message.len() <= body.len() + 1024, "an error message longer than its body: {}", e.message.len());
        });
        // the inputs reach past the first check: some answers are still read as messages
        assert!(read.into_inner() > 0 || std::env::var("SQS_POLLER_FUZZ_SEED").is_ok());
    }

    #[test]
    fn a_receive_answer_becomes_messages_with_the_sdks_values() {
        let body = br#"{"Messages":[{"MessageId":"m1","ReceiptHandle":"r1","MD5OfBody":"d","Body":"hi \u00e9",
            "Attributes":{"ApproximateReceiveCount":"2","SentTimestamp":"1700000000000","MessageGroupId":"g"},
            "MD5OfMessageAttributes":"a","MessageAttributes":{"s":{"StringValue":"v","DataType":"String"},
            "b":{"BinaryValue":"AAEC","DataType":"Binary.custom"}}},{"MessageId":"m2","ReceiptHandle":"r2"}]}"#;
        let out: ReceiveResponse = serde_json::from_slice(body).unwrap();
        let msgs: Vec<SqsMessage> = out.messages.unwrap().into_iter().map(|m| m.into_message().unwrap()).collect();
        assert_eq!(msgs.len(), 2);
        let m = &msgs[0];
        assert_eq!((m.message_id(), m.receipt_handle(), m.body()), (Some("m1"), Some("r1"), Some("hi é")));
        let attrs = m.attributes().unwrap();
        assert_eq!(attrs[&MessageSystemAttributeName::ApproximateReceiveCount], "2");
        assert_eq!(attrs[&MessageSystemAttributeName::MessageGroupId], "g");
        let ma = m.message_attributes().unwrap();
        assert_eq!(ma["s"].string_value(), Some("v"));
        assert_eq!(ma["b"].binary_value().unwrap().as_ref(), &[0u8, 1, 2]);
        assert_eq!(ma["b"].data_type(), "Binary.custom");
        assert!(msgs[1].attributes().is_none() && msgs[1].body().is_none());
        let empty: ReceiveResponse = serde_json::from_slice(b"{}").unwrap();
        assert!(empty.messages.is_none());
    }

    #[test]
    fn requests_are_sqs_json() {
        let r = ReceiveRequest {
            queue_url: "q",
            max_number_of_messages: 10,
            wait_time_seconds: 20,
            visibility_timeout: None,
            receive_request_attempt_id: None,
            message_system_attribute_names: ["All"],
            message_attribute_names: ["All"],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"QueueUrl":"q","MaxNumberOfMessages":10,"WaitTimeSeconds":20,"MessageSystemAttributeNames":["All"],"MessageAttributeNames":["All"]}"#
        );
        let fifo = ReceiveRequest { visibility_timeout: Some(30), receive_request_attempt_id: Some("a1"), ..r };
        assert_eq!(
            serde_json::to_string(&fifo).unwrap(),
            r#"{"QueueUrl":"q","MaxNumberOfMessages":10,"WaitTimeSeconds":20,"VisibilityTimeout":30,"ReceiveRequestAttemptId":"a1","MessageSystemAttributeNames":["All"],"MessageAttributeNames":["All"]}"#
        );
        let b = BatchRequest {
            queue_url: "q",
            entries: vec![BatchEntry { id: "0", receipt_handle: "r", visibility_timeout: Some(0) }],
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"QueueUrl":"q","Entries":[{"Id":"0","ReceiptHandle":"r","VisibilityTimeout":0}]}"#
        );
    }

    #[test]
    fn errors_take_the_query_code_then_the_type() {
        let mut h = hyper::HeaderMap::new();
        let body =
            br#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}"#;
        let e = service_error("ReceiveMessage", hyper::StatusCode::BAD_REQUEST, &h, body, 0);
        assert_eq!(
            (e.code.as_deref(), e.kind, e.is_retryable()),
            (Some("QueueDoesNotExist"), SqsErrorKind::Rejected, false)
        );
        assert!(e.message.contains("does not exist"));
        h.insert("x-amzn-query-error", "AWS.SimpleQueueService.RequestThrottled;Sender".parse().unwrap());
        let e = service_error("ReceiveMessage", hyper::StatusCode::BAD_REQUEST, &h, b"{}", 0);
        assert_eq!((e.kind, e.is_retryable()), (SqsErrorKind::Throttled, true));
        let e = service_error(
            "ReceiveMessage",
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            &hyper::HeaderMap::new(),
            b"<html>",
            0,
        );
        assert_eq!((e.kind, e.is_retryable()), (SqsErrorKind::ServerError, true));
    }
}
