//! The `lambda` target: `Invoke` with `RequestResponse`, the event as the payload.
//!
//! The function's answer is read with the `batchItemFailures` rules; `FunctionError` (an
//! unhandled exception, a timeout inside Lambda) fails the batch; `TooManyRequestsException`
//! (and Lambda's 5xx) are throttles: the batch is tried again without failing its messages.

use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::operation::invoke::{InvokeError, InvokeOutput};
use aws_sdk_lambda::types::InvocationType;
use aws_smithy_types::Blob;
use bytes::Bytes;

use super::Invocation;

// the client comes from the AWS edge: crate::aws::Aws::lambda_client

pub struct LambdaTarget {
    client: aws_sdk_lambda::Client,
    function_name: String,
    qualifier: Option<String>,
}

impl LambdaTarget {
    pub fn new(client: aws_sdk_lambda::Client, function_name: &str, qualifier: Option<&str>) -> Self {
        LambdaTarget { client, function_name: function_name.to_string(), qualifier: qualifier.map(str::to_string) }
    }

    pub async fn invoke(&self, event: Bytes) -> Invocation {
        let result = self
            .client
            .invoke()
            .function_name(&self.function_name)
            .set_qualifier(self.qualifier.clone())
            .invocation_type(InvocationType::RequestResponse)
            .payload(Blob::new(event.to_vec()))
            .send()
            .await;
        match result {
            Ok(out) => from_output(&out),
            Err(e) => from_error(&self.function_name, &e),
        }
    }
}

/// What a completed `Invoke` means.
fn from_output(out: &InvokeOutput) -> Invocation {
    let payload = out.payload().map(|b| Bytes::copy_from_slice(b.as_ref())).unwrap_or_default();
    match out.function_error() {
        Some(kind) => {
            let excerpt = String::from_utf8_lossy(&payload[..payload.len().min(300)]).into_owned();
            Invocation::FunctionError(format!("Lambda FunctionError {kind}: {excerpt}"))
        }
        None => Invocation::Response(payload),
    }
}

/// What a failed `Invoke` means: throttles are retried, everything else fails the batch.
fn from_error<R>(function: &str, e: &SdkError<InvokeError, R>) -> Invocation
where
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(se) = e {
        let err = se.err();
        if err.is_too_many_requests_exception() || err.is_service_exception() || err.is_ec2_throttled_exception() {
            return Invocation::Throttled(format!("Lambda {}", err.code().unwrap_or("throttled")));
        }
    }
    let reason = format!("cannot invoke {function}: {}", DisplayErrorContext(e));
    match e {
        // Lambda did not answer: the network, or its endpoint
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            Invocation::unavailable(reason)
        }
        _ => Invocation::FunctionError(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_lambda::types::error::{ResourceNotFoundException, TooManyRequestsException};

    fn output(function_error: Option<&str>, payload: &str) -> InvokeOutput {
        InvokeOutput::builder()
            .status_code(200)
            .set_function_error(function_error.map(str::to_string))
            .payload(Blob::new(payload.as_bytes().to_vec()))
            .build()
    }

    #[test]
    fn a_payload_is_the_function_result() {
        assert_eq!(
            from_output(&output(None, r#"{"batchItemFailures":[]}"#)),
            Invocation::Response(Bytes::from_static(br#"{"batchItemFailures":[]}"#))
        );
    }

    #[test]
    fn a_function_error_fails_the_batch() {
        let out = output(Some("Unhandled"), r#"{"errorMessage":"boom","errorType":"ValueError"}"#);
        match from_output(&out) {
            Invocation::FunctionError(r) => assert!(r.contains("Unhandled") && r.contains("boom"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    fn service_error(e: InvokeError) -> SdkError<InvokeError, ()> {
        SdkError::service_error(e, ())
    }

    #[test]
    fn too_many_requests_is_a_throttle() {
        let e =
            InvokeError::TooManyRequestsException(TooManyRequestsException::builder().message("Rate exceeded").build());
        assert!(matches!(from_error("f", &service_error(e)), Invocation::Throttled(_)));
    }

    #[test]
    fn a_missing_function_fails_the_batch() {
        let e = InvokeError::ResourceNotFoundException(
            ResourceNotFoundException::builder().message("no such function").build(),
        );
        match from_error("orders", &service_error(e)) {
            Invocation::FunctionError(r) => assert!(r.starts_with("cannot invoke orders"), "{r}"),
            other => panic!("{other:?}"),
        }
    }
}
