//! The SQS client signs with its own SigV4 signer (src/sigv4.rs, the signing key kept for the
//! day). No emulator checks signatures, so this test puts a proxy between sqs-poller and the
//! emulator that does: it computes every request's signature again with `aws-sigv4` from what
//! arrived on the wire (the signed headers, the body, the time of `x-amz-date`) and forwards the
//! request only when they match. A drain through it must see every request verified.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Default)]
struct Seen {
    verified: Vec<String>,
    rejected: Vec<String>,
}

/// A proxy to `upstream` that forwards only requests whose SigV4 signature checks out.
async fn verifying_proxy(upstream: String, token: Option<&'static str>) -> (String, Arc<Mutex<Seen>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (seen, upstream, client) = (seen.clone(), upstream.clone(), client.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (seen, upstream, client) = (seen.clone(), upstream.clone(), client.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let headers: HashMap<String, String> = parts
                            .headers
                            .iter()
                            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        // "AmazonSQS.ReceiveMessage by sqs-poller/0.1.0" or "… by aws-sdk-rust/…"
                        let agent = headers.get("user-agent").map_or("", |a| a.split(' ').next().unwrap_or(""));
                        let target = format!("{} by {agent}", headers.get("x-amz-target").map_or("", String::as_str));
                        let url = format!("http://{}{}", headers["host"], parts.uri.path());
                        if let Err(why) = verify(&url, &headers, &body, token) {
                            seen.lock().unwrap().rejected.push(format!("{target}: {why}"));
                            let r = Response::builder()
                                .status(403)
                                .header("content-type", "application/x-amz-json-1.0")
                                .body(Full::new(Bytes::from_static(
                                    br#"{"__type":"com.amazonaws.sqs#SignatureDoesNotMatch","message":"signature"}"#,
                                )))
                                .unwrap();
                            return Ok::<_, Infallible>(r);
                        }
                        seen.lock().unwrap().verified.push(target);
                        let mut forward =
                            Request::builder().method(parts.method).uri(format!("{upstream}{}", parts.uri.path()));
                        for (k, v) in &parts.headers {
                            if k != "host" {
                                forward = forward.header(k, v);
                            }
                        }
                        let res = client.request(forward.body(Full::new(body)).unwrap()).await.unwrap();
                        let (parts, body) = res.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        Ok(Response::from_parts(parts, Full::new(body)))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (url, out)
}

/// The checks of a request from sqs-poller: the headers that must be signed, the session token
/// when there is one, and the signature computed again.
fn verify(url: &str, headers: &HashMap<String, String>, body: &[u8], token: Option<&str>) -> Result<(), String> {
    let auth = crate::common::sigv4::authorization(headers)?;
    if auth.access_key != "test" {
        return Err(format!("access key {}", auth.access_key));
    }
    for must in ["host", "x-amz-date", "x-amz-target", "content-type"] {
        if !auth.signed_headers.iter().any(|s| s == must) {
            return Err(format!("{must} is not signed"));
        }
    }
    if token.is_some() != auth.signed_headers.iter().any(|s| s == "x-amz-security-token") {
        return Err("the session token is not signed".into());
    }
    if headers.get("x-amz-security-token").map(String::as_str) != token {
        return Err("wrong session token".into());
    }
    crate::common::sigv4::verify(url, headers, body, token, false).map(|_| ())
}

async fn drain_through_the_proxy(token: Option<&'static str>) {
    let sqs = sqs().await;
    let queue = sqs.queue("sigv4", &[]).await;
    let bodies: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let (proxy, seen) = verifying_proxy(sqs.endpoint.clone(), token).await;
    let w = worker(|_| Reply::ok("")).await;
    let env: Vec<(&str, &str)> = token.map(|t| vec![("AWS_SESSION_TOKEN", t)]).unwrap_or_default();
    let mut p = spawn_poller_with_env(
        &proxy,
        5,
        "",
        &format!(
            "[[pipelines]]\nname = \"p\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.target]\ntype = \"http\"\nurl = \"{}\"\n",
            w.url
        ),
        &env,
    );
    p.wait_listening().await;
    let deleted =
        p.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"p\"}", 60.0, Duration::from_secs(30)).await;
    let log = p.log_text();
    p.stop().await;
    let (verified, rejected) = {
        let seen = seen.lock().unwrap();
        (seen.verified.clone(), seen.rejected.clone())
    };
    assert!(rejected.is_empty(), "requests with a wrong signature: {rejected:?}\nlog:\n{log}");
    assert_eq!(deleted, 60.0, "log:\n{log}");
    // the hot calls from sqs-poller's own JSON client (src/sqs_json.rs), the others from the SDK
    for (op, sender) in [
        ("GetQueueAttributes", "aws-sdk-rust/"),
        ("ReceiveMessage", "sqs-poller/"),
        ("DeleteMessageBatch", "sqs-poller/"),
    ] {
        let prefix = format!("AmazonSQS.{op} by {sender}");
        assert!(
            verified.iter().any(|t| t.starts_with(&prefix)),
            "no {op} from {sender} went through the verifying proxy: {verified:?}"
        );
    }
    assert_eq!(sqs.counts(&queue).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sqs_request_carries_a_signature_aws_sigv4_agrees_with() {
    drain_through_the_proxy(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_credentials_sign_their_session_token_too() {
    drain_through_the_proxy(Some("FwoGZXIvYXdzE+session/token==")).await;
}
