//! What an AWS answer's error means, read as the SDK reads it: the code from `x-amzn-errortype`,
//! else the body's `code` or `__type` (cut at the first `:`, then after the `#`), replaced by
//! SQS's query-compatible `x-amzn-query-error` code when present; the message from `message`,
//! `Message` or `errorMessage`. Then sqs-poller's policy on top: which codes are throttles, which
//! are worth a retry, which mean the queue cannot be consumed at all (`/readyz`).

use super::clock::Clock;

/// A failed SQS request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} failed: {message}")]
pub struct SqsError {
    pub operation: &'static str,
    /// The error code SQS gave (`QueueDoesNotExist`, …), if it answered at all.
    pub code: Option<String>,
    pub message: String,
    pub kind: SqsErrorKind,
    retryable: bool,
}

/// What went wrong with an SQS request, for `sqs_poller_sqs_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqsErrorKind {
    /// SQS asked to slow down (`ThrottlingException`, `RequestThrottled`, KMS throttling, …).
    Throttled,
    /// SQS answered with a 5xx.
    ServerError,
    /// No answer in time (connect or attempt timeout).
    Timeout,
    /// No connection (refused, reset, DNS) or the connection broke.
    Connection,
    /// An answer that could not be read.
    BadResponse,
    /// SQS refused the request (missing queue, access denied, invalid argument): not retried.
    Rejected,
}

impl SqsErrorKind {
    pub const ALL: [SqsErrorKind; 6] = [
        SqsErrorKind::Throttled,
        SqsErrorKind::ServerError,
        SqsErrorKind::Timeout,
        SqsErrorKind::Connection,
        SqsErrorKind::BadResponse,
        SqsErrorKind::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SqsErrorKind::Throttled => "throttled",
            SqsErrorKind::ServerError => "server_error",
            SqsErrorKind::Timeout => "timeout",
            SqsErrorKind::Connection => "connection",
            SqsErrorKind::BadResponse => "bad_response",
            SqsErrorKind::Rejected => "rejected",
        }
    }
}

impl SqsError {
    /// An error with an SQS error code (for the simulation).
    pub fn coded(operation: &'static str, code: &str, message: impl Into<String>, retryable: bool) -> Self {
        let kind = if is_throttling_code(code) {
            SqsErrorKind::Throttled
        } else if retryable {
            SqsErrorKind::ServerError
        } else {
            SqsErrorKind::Rejected
        };
        SqsError { operation, code: Some(code.to_string()), message: message.into(), kind, retryable }
    }

    pub fn new(
        operation: &'static str,
        code: Option<String>,
        message: String,
        kind: SqsErrorKind,
        retryable: bool,
    ) -> Self {
        SqsError { operation, code, message, kind, retryable }
    }

    /// An error SQS answered with (HTTP `status`), while the clock's measured skew was
    /// `skew_ms`: throttling by its code, a 5xx as a server error, anything else as a refusal;
    /// retried when throttled, a 5xx, a code that says so, or a clock-skew error (the next
    /// attempt is signed with the corrected clock).
    pub fn answered(operation: &'static str, code: Option<String>, message: &str, status: u16, skew_ms: i64) -> Self {
        let server_error = status >= 500;
        let kind = match code.as_deref() {
            Some(c) if is_throttling_code(c) => SqsErrorKind::Throttled,
            _ if server_error => SqsErrorKind::ServerError,
            _ => SqsErrorKind::Rejected,
        };
        let skewed = code.as_deref().is_some_and(|c| Clock::is_skew_error(c, skew_ms));
        // a server-side error (5xx) is worth retrying whatever its code says
        let retryable = server_error || skewed || code.as_deref().is_none_or(is_retryable_code);
        let mut text = match &code {
            Some(c) => format!("{c}: {message} (HTTP {status})"),
            None => format!("{message} (HTTP {status})"),
        };
        if skewed {
            text.push_str(&format!(
                "; the host clock is {} s {} AWS's: the next attempt is signed with AWS's time (fix the host's NTP)",
                skew_ms.unsigned_abs() / 1000,
                if skew_ms > 0 { "behind" } else { "ahead of" }
            ));
        } else if let Some(hint) = code.as_deref().and_then(hint) {
            text.push_str("; ");
            text.push_str(hint);
        }
        SqsError { operation, code, message: text, kind, retryable }
    }

    /// Throttling, 5xx, timeouts and connection failures are worth retrying; a missing queue,
    /// denied access or an invalid argument is not.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether this error means the pipeline cannot consume its queue, for `/readyz`: SQS could
    /// not be reached, or it answered that nothing can be received (a KMS key that is denied,
    /// disabled or gone, access denied, credentials SQS does not accept).
    pub fn stops_receiving(&self) -> bool {
        self.kind != SqsErrorKind::Rejected || self.code.as_deref().is_some_and(is_blocking_code)
    }

    /// From an SDK error (GetQueueAttributes, SendMessage): the code and message as the SDK
    /// parsed them, never the SDK's whole debug structure.
    pub fn from_sdk<E>(
        operation: &'static str,
        e: aws_smithy_runtime_api::client::result::SdkError<
            E,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
        skew_ms: i64,
    ) -> Self
    where
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        use aws_smithy_runtime_api::client::result::SdkError;
        let (kind, retryable, message) = match &e {
            SdkError::ServiceError(se) => {
                let code = se.err().code().map(str::to_string);
                let message = se.err().message().unwrap_or("no message").to_string();
                return SqsError::answered(operation, code, &message, se.raw().status().as_u16(), skew_ms);
            }
            SdkError::ConstructionFailure(_) => (SqsErrorKind::Rejected, false, crate::net::error_chain(&e)),
            SdkError::TimeoutError(_) => (SqsErrorKind::Timeout, true, "no answer in time".to_string()),
            SdkError::DispatchFailure(d) if d.is_timeout() => {
                (SqsErrorKind::Timeout, true, crate::net::error_chain(&e))
            }
            SdkError::DispatchFailure(_) => (SqsErrorKind::Connection, true, crate::net::error_chain(&e)),
            _ => (SqsErrorKind::BadResponse, true, crate::net::error_chain(&e)),
        };
        SqsError { operation, code: None, message, kind, retryable }
    }
}

/// The error code and message of an AWS JSON error answer, as the SDK reads them.
pub fn parse_json_error(headers: &hyper::HeaderMap, body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize, Default)]
    struct ErrorBody {
        code: Option<String>,
        #[serde(rename = "__type")]
        kind: Option<String>,
        #[serde(alias = "Message", alias = "errorMessage")]
        message: Option<String>,
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let code =
        header("x-amzn-errortype").or(parsed.code.as_deref()).or(parsed.kind.as_deref()).map(sanitize_error_code);
    // SQS's query-compatible code (`AWS.SimpleQueueService.NonExistentQueue;Sender`) wins
    let query = header("x-amzn-query-error").and_then(|v| v.split_once(';')).map(|(code, _)| code);
    let code = query.or(code).filter(|c| !c.is_empty()).map(str::to_string);
    (code, parsed.message)
}

/// The SDK's `sanitize_error_code`: drop a `:…` suffix (a URL), then a `…#` namespace.
pub fn sanitize_error_code(code: &str) -> &str {
    let code = code.split_once(':').map_or(code, |(c, _)| c);
    code.split_once('#').map_or(code, |(_, c)| c)
}

fn is_retryable_code(code: &str) -> bool {
    is_throttling_code(code)
        || matches!(
            code,
            "ServiceUnavailable" | "InternalError" | "InternalFailure" | "RequestTimeout" | "RequestTimeoutException"
        )
}

/// Throttling codes: the SDK's list, SQS's own and its query-compatible names, KMS throttling.
pub fn is_throttling_code(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottledException"
            | "TooManyRequestsException"
            | "ProvisionedThroughputExceededException"
            | "TransactionInProgressException"
            | "RequestLimitExceeded"
            | "BandwidthLimitExceeded"
            | "LimitExceededException"
            | "RequestThrottled"
            | "SlowDown"
            | "PriorRequestNotComplete"
            | "EC2ThrottledException"
            | "AWS.SimpleQueueService.RequestThrottled"
            | "KmsThrottled"
            | "KMS.ThrottlingException"
            | "AWS.SimpleQueueService.KmsThrottled"
            | "OverLimit"
    )
}

/// Codes after which nothing can be received until someone fixes a key, a policy or the
/// credentials.
fn is_blocking_code(code: &str) -> bool {
    code.starts_with("KMS.")
        || code.starts_with("Kms")
        || matches!(
            code,
            "AccessDenied"
                | "AccessDeniedException"
                | "InvalidClientTokenId"
                | "UnrecognizedClientException"
                | "ExpiredToken"
                | "ExpiredTokenException"
                | "InvalidSecurity"
                | "MissingAuthenticationToken"
                | "SignatureDoesNotMatch"
                | "InvalidSignatureException"
        )
}

/// One hint for the codes a person can act on.
fn hint(code: &str) -> Option<&'static str> {
    Some(match code {
        c if c.starts_with("KMS.") || c.starts_with("Kms") && !is_throttling_code(c) => {
            "the queue's KMS key cannot be used: check the key's state and that the task role may kms:Decrypt with it"
        }
        "AccessDenied" | "AccessDeniedException" => {
            "the credentials in use may not do this: check the role's policy and the queue policy"
        }
        "InvalidClientTokenId" | "UnrecognizedClientException" => {
            "AWS does not know this access key: check which credentials are loaded"
        }
        "ExpiredToken" | "ExpiredTokenException" => "the session credentials expired before the request arrived",
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => "check queue_url and the region",
        _ => return None,
    })
}

/// The codes with which SQS rejects a receipt handle or its parameters for good; the values of
/// the `code` label of `sqs_poller_receipt_rejections_total` (besides `other`).
pub const PERMANENT_CODES: [&str; 5] = [
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "InvalidIdFormat",
];

/// Whether `code` (also in its query-compatible form, `AWS.SimpleQueueService.MessageNotInflight`)
/// is one trying again cannot cure.
pub fn is_permanent_code(code: &str) -> bool {
    let code = code.rsplit('.').next().unwrap_or("");
    PERMANENT_CODES.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn codes_are_read_as_the_sdk_reads_them() {
        let body =
            br#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}"#;
        assert_eq!(
            parse_json_error(&headers(&[]), body),
            (Some("QueueDoesNotExist".into()), Some("The specified queue does not exist.".into()))
        );
        // a `:http://…` suffix is cut at the first colon, then the namespace
        let body = br#"{"__type":"com.amazon.coral.service#InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/","Message":"Signature expired"}"#;
        assert_eq!(parse_json_error(&headers(&[]), body).0.as_deref(), Some("InvalidSignatureException"));
        assert_eq!(sanitize_error_code("aws.protocoltests.restjson#FooError:http://x#y"), "FooError");
        assert_eq!(sanitize_error_code("FooError"), "FooError");
        // x-amzn-errortype before the body; the query-compatible code before both
        let h = headers(&[("x-amzn-errortype", "ThrottlingException:http://x")]);
        assert_eq!(parse_json_error(&h, br#"{"__type":"Other"}"#).0.as_deref(), Some("ThrottlingException"));
        let h = headers(&[("x-amzn-query-error", "KMS.ThrottlingException;Sender")]);
        assert_eq!(
            parse_json_error(&h, br#"{"__type":"com.amazonaws.sqs#KmsThrottled","errorMessage":"slow"}"#),
            (Some("KMS.ThrottlingException".into()), Some("slow".into()))
        );
        assert_eq!(parse_json_error(&headers(&[]), b"<html>"), (None, None));
    }

    #[test]
    fn kms_throttling_is_a_throttle_and_kms_denial_stops_receiving() {
        for code in ["KMS.ThrottlingException", "KmsThrottled", "RequestThrottled", "SlowDown"] {
            let e = SqsError::answered("ReceiveMessage", Some(code.into()), "m", 400, 0);
            assert_eq!((e.kind, e.is_retryable()), (SqsErrorKind::Throttled, true), "{code}");
            assert!(e.stops_receiving(), "throttling counts against readiness like an outage: {code}");
        }
        for code in
            ["KMS.AccessDeniedException", "KmsAccessDenied", "KMS.DisabledException", "KmsNotFound", "AccessDenied"]
        {
            let e = SqsError::answered("ReceiveMessage", Some(code.into()), "m", 400, 0);
            assert_eq!((e.kind, e.is_retryable()), (SqsErrorKind::Rejected, false), "{code}");
            assert!(e.stops_receiving(), "{code}");
            assert!(e.message.contains(code), "{}", e.message);
        }
        let e = SqsError::answered("DeleteMessageBatch", Some("InvalidParameterValue".into()), "m", 400, 0);
        assert!(!e.stops_receiving());
    }

    #[test]
    fn a_skew_error_is_retried_with_a_hint_a_genuine_one_is_not() {
        let e = SqsError::answered(
            "ReceiveMessage",
            Some("InvalidSignatureException".into()),
            "Signature expired",
            400,
            600_000,
        );
        assert!(e.is_retryable());
        assert!(e.message.contains("600 s behind"), "{}", e.message);
        let e = SqsError::answered("ReceiveMessage", Some("SignatureDoesNotMatch".into()), "wrong", 403, 200);
        assert!(!e.is_retryable());
    }
}
