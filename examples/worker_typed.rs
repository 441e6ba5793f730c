//! A typed HTTP worker for sqs-poller's `http` target, in Rust: Lambda's SQS event and its
//! `batchItemFailures` response as types (the shapes of the `aws_lambda_events` crate's
//! `SqsEvent` and `SqsBatchResponse`, spelled out here so the example needs nothing new), a
//! handler from one to the other, and a small hyper server around it.
//!
//! ```sh
//! cargo run --example worker_typed -- --port 8080 [--fail-word FAIL]
//! ```
//!
//! Messages whose body contains the fail word are reported as failed: sqs-poller retries them
//! and, after `max_receive_count`, moves them to the dead-letter queue.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

/// Lambda's SQS event: `{"Records": [...]}`.
#[derive(Deserialize)]
struct SqsEvent {
    #[serde(rename = "Records")]
    records: Vec<SqsMessage>,
}

/// One record, as Lambda and sqs-poller send it (the fields this handler reads; serde skips the
/// rest: `receiptHandle`, `md5OfBody`, `eventSourceARN`, `awsRegion`, …).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // read to show the shape; a real handler uses what it needs
struct SqsMessage {
    message_id: String,
    body: String,
    #[serde(default)]
    attributes: HashMap<String, String>,
    #[serde(default)]
    message_attributes: HashMap<String, MessageAttribute>,
    event_source: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct MessageAttribute {
    data_type: String,
    string_value: Option<String>,
    binary_value: Option<String>,
}

/// The answer with ReportBatchItemFailures: the messages that failed; the others succeeded.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct SqsBatchResponse {
    batch_item_failures: Vec<BatchItemFailure>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchItemFailure {
    item_identifier: String,
}

/// The handler, as it would run on Lambda.
fn handler(event: SqsEvent, fail_word: &str) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for record in event.records {
        if !fail_word.is_empty() && record.body.contains(fail_word) {
            response.batch_item_failures.push(BatchItemFailure { item_identifier: record.message_id });
        }
    }
    response
}

/// Lambda's payload limit: sqs-poller never sends more.
const MAX_EVENT: usize = 6 * 1024 * 1024;

async fn serve(req: Request<Incoming>, fail_word: Arc<String>) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = |status: StatusCode, body: String| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a static response"))
    };
    let body = match Limited::new(req.into_body(), MAX_EVENT).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return answer(StatusCode::PAYLOAD_TOO_LARGE, format!("{{\"error\":\"{e}\"}}")),
    };
    // an event it cannot read fails the whole batch (any non-2xx does)
    let event: SqsEvent = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return answer(StatusCode::BAD_REQUEST, serde_json::json!({ "error": e.to_string() }).to_string()),
    };
    let records = event.records.len();
    let response = handler(event, &fail_word);
    eprintln!("worker: batch of {records}, {} failed", response.batch_item_failures.len());
    answer(StatusCode::OK, serde_json::to_string(&response).expect("serializable"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let port = flag("--port").unwrap_or_else(|| "8080".into());
    let fail_word = Arc::new(flag("--fail-word").unwrap_or_else(|| "FAIL".into()));
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("bind the port");
    eprintln!("worker: listening on {}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let fail_word = fail_word.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| serve(req, fail_word.clone()));
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}
