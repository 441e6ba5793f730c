//! OpenTelemetry through the real binary: an OTLP/HTTP receiver in the test decodes what
//! arrives with the protocol's own types (`opentelemetry-proto`), not by matching strings.
//!
//! LocalStack, because fauxqs drops `AWSTraceHeader` (docs/src/testing.md, the emulator table): one producer is
//! linked through its X-Ray header, one through a `traceparent` message attribute.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

const XRAY: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What one export request carried: its headers, its resource attributes, its spans.
#[derive(Clone, Debug)]
struct Export {
    headers: HashMap<String, String>,
    resource: Vec<KeyValue>,
    spans: Vec<Span>,
}

/// An OTLP/HTTP traces endpoint on a loopback port.
struct Collector {
    url: String,
    exports: Arc<Mutex<Vec<Export>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let exports: Arc<Mutex<Vec<Export>>> = Arc::default();
        let log = exports.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces", "OTLP's traces path");
                            let headers: HashMap<String, String> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                                .collect();
                            assert_eq!(headers.get("content-type").map(String::as_str), Some("application/x-protobuf"));
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
                            let mut log = log.lock().unwrap();
                            for rs in request.resource_spans {
                                let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                                let spans = rs.scope_spans.into_iter().flat_map(|s| s.spans).collect();
                                log.push(Export { headers: headers.clone(), resource, spans });
                            }
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(200)
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector { url, exports }
    }

    fn exports(&self) -> Vec<Export> {
        self.exports.lock().unwrap().clone()
    }

    fn spans(&self) -> Vec<Span> {
        self.exports().into_iter().flat_map(|e| e.spans).collect()
    }
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ECS task metadata endpoint (v4), serving a Fargate task's documents.
async fn ecs_metadata() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v4/abc", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = if req.uri().path().ends_with("/task") {
                        serde_json::json!({
                            "Cluster": "arn:aws:ecs:eu-west-1:123456789012:cluster/payments",
                            "TaskARN": "arn:aws:ecs:eu-west-1:123456789012:task/payments/0123456789abcdef",
                            "Family": "payments-poller",
                            "Revision": "7",
                            "LaunchType": "FARGATE",
                            "AvailabilityZone": "eu-west-1a"
                        })
                    } else {
                        serde_json::json!({
                            "DockerId": "0123456789abcdef-1234567890",
                            "Name": "sqs-poller",
                            "ContainerARN": "arn:aws:ecs:eu-west-1:123456789012:container/payments/0123/abcd"
                        })
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_span_per_batch_linked_to_its_producers_with_dispatch_and_settle_children() {
    let sqs = localstack().await;
    let collector = Collector::start().await;
    let queue = sqs.queue("otel", &[]).await;
    // three messages in one batch: an X-Ray producer, a W3C producer, none
    sqs.send_with_trace_header(&queue, "xray", XRAY).await;
    let w3c_id = sqs.send_with_attribute(&queue, "w3c", "traceparent", W3C).await;
    sqs.send_bodies(&queue, &["plain".to_string(), "poison".to_string()]).await;
    let dead_letters = sqs.queue("otel-dlq", &[]).await;
    // the W3C message fails once and the poison one for good: retry events, then a second batch
    // where the poison message is dead-lettered; the first batch outlasts half the visibility
    // timeout (an extension event)
    let worker = worker(move |event| {
        let records = event["Records"].as_array().unwrap();
        let failing: Vec<&str> = records
            .iter()
            .filter(|r| {
                r["body"] == "poison" || (r["body"] == "w3c" && r["attributes"]["ApproximateReceiveCount"] == "1")
            })
            .map(|r| r["messageId"].as_str().unwrap())
            .collect();
        let delay = if records.len() == 4 { Duration::from_millis(2500) } else { Duration::ZERO };
        Reply { delay, ..Reply::failures(&failing) }
    })
    .await;
    let ecs = ecs_metadata().await;
    let pipeline = http_pipeline(
        "otel",
        &queue,
        &worker.url,
        &format!(
            "[pipelines.pollers]\nwait_time_secs = 1\nvisibility_timeout_secs = 2\n\
             [pipelines.batch]\nsize = 4\nwindow_ms = 3000\n\
             [pipelines.retry]\ninitial_backoff_secs = 0\n\
             [pipelines.dead_letter]\nqueue_url = \"{dead_letters}\"\nmax_receive_count = 2\n\
             [telemetry]\notlp_endpoint = \"{}\"\nheaders = {{ authorization = \"Bearer s3cr3t-t0ken\" }}\n\
             resource_attributes = {{ \"deployment.environment.name\" = \"test\" }}\n",
            collector.url
        ),
    );
    let mut poller =
        spawn_poller_with_env(&sqs.endpoint, 10, "", &pipeline, &[("ECS_CONTAINER_METADATA_URI_V4", ecs.as_str())]);
    poller.wait_listening().await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"otel\"}", 4.0, Duration::from_secs(60)).await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    assert!(!log.contains("s3cr3t"), "the header's value is a secret:\n{log}");

    let exports = collector.exports();
    assert!(!exports.is_empty(), "spans were exported at shutdown at the latest; log:\n{log}");
    for e in &exports {
        assert_eq!(e.headers.get("authorization").map(String::as_str), Some("Bearer s3cr3t-t0ken"));
        assert_eq!(text(&e.resource, "service.name").as_deref(), Some("sqs-poller"), "{:?}", e.resource);
        assert_eq!(text(&e.resource, "deployment.environment.name").as_deref(), Some("test"));
        assert_eq!(text(&e.resource, "cloud.platform").as_deref(), Some("aws_ecs"));
        assert_eq!(text(&e.resource, "cloud.region").as_deref(), Some("eu-west-1"));
        assert_eq!(text(&e.resource, "aws.ecs.launchtype").as_deref(), Some("fargate"));
        assert_eq!(text(&e.resource, "aws.ecs.task.family").as_deref(), Some("payments-poller"));
        assert_eq!(text(&e.resource, "container.name").as_deref(), Some("sqs-poller"));
    }
    let spans = collector.spans();
    let queue_name = queue.rsplit('/').next().unwrap();
    let process: Vec<&Span> = spans.iter().filter(|s| s.name == format!("process {queue_name}")).collect();
    let deliveries = worker.deliveries();
    assert_eq!(process.len(), deliveries.len(), "one process span per batch: {spans:#?}");
    assert_eq!(deliveries.len(), 2, "the batch of four, then the two retried messages");

    // the first batch: four messages, two producers linked, two retries, extensions
    let first = process.iter().find(|s| text(&s.attributes, "messaging.batch.message_count").as_deref() == Some("4"));
    let first = first.expect("the batch of four");
    assert_eq!(first.kind, SpanKind::Consumer as i32);
    assert!(first.parent_span_id.is_empty(), "a batch span is a root; its producers are links");
    assert_eq!(text(&first.attributes, "messaging.system").as_deref(), Some("aws_sqs"));
    assert_eq!(text(&first.attributes, "messaging.operation.type").as_deref(), Some("process"));
    assert_eq!(text(&first.attributes, "messaging.destination.name").as_deref(), Some(queue_name));
    assert_eq!(text(&first.attributes, "aws.sqs.queue.url").as_deref(), Some(queue.as_str()));
    assert_eq!(text(&first.attributes, "sqs_poller.outcome").as_deref(), Some("partial"));
    assert_eq!(text(&first.attributes, "sqs_poller.messages.succeeded").as_deref(), Some("2"));
    assert_eq!(text(&first.attributes, "sqs_poller.messages.retried").as_deref(), Some("2"));
    let mut links: Vec<(String, String, Option<String>)> = first
        .links
        .iter()
        .map(|l| (hex(&l.trace_id), hex(&l.span_id), text(&l.attributes, "messaging.message.id")))
        .collect();
    links.sort();
    assert_eq!(links.len(), 2, "one link per message with a producer context: {links:?}");
    for l in &first.links {
        let age: i64 = text(&l.attributes, "sqs_poller.message.age_ms").unwrap().parse().unwrap();
        assert!((0..60_000).contains(&age), "time from send to the batch's cut: {age} ms");
    }
    assert!(text(&first.attributes, "sqs_poller.slot_wait_ms").is_some());
    assert!(text(&first.attributes, "sqs_poller.oldest_message.age_ms").is_some());
    assert_eq!(links[0].0, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(links[0].1, "00f067aa0ba902b7");
    assert_eq!(links[0].2.as_deref(), Some(w3c_id.as_str()));
    assert_eq!(links[1].0, "5759e988bd862e3fe1be46a994272793");
    assert_eq!(links[1].1, "53995c3f42cd8ad8");
    let retried: Vec<String> = first
        .events
        .iter()
        .filter(|e| e.name == "retry")
        .filter_map(|e| text(&e.attributes, "messaging.message.id"))
        .collect();
    assert_eq!(retried.len(), 2);
    assert!(retried.contains(&w3c_id), "{retried:?}");
    let extended = first.events.iter().find(|e| e.name == "lease extended").expect("a lease extension event");
    assert_eq!(text(&extended.attributes, "messaging.batch.message_count").as_deref(), Some("4"));
    assert_eq!(text(&extended.attributes, "aws.sqs.visibility_timeout").as_deref(), Some("2"));

    // the worker's context is the batch span's: its spans are the batch's children
    let first_delivery = deliveries.iter().find(|d| d.records().len() == 4).unwrap();
    assert_eq!(
        first_delivery.headers.get("traceparent"),
        Some(&format!("00-{}-{}-01", hex(&first.trace_id), hex(&first.span_id)))
    );
    assert_eq!(first_delivery.headers.get("x-amzn-trace-id").map(String::as_str), Some(XRAY), "X-Ray as before");

    // every batch has its dispatch and settle children, in its trace
    for p in &process {
        for child in [format!("dispatch {queue_name}"), format!("settle {queue_name}")] {
            let c = spans
                .iter()
                .find(|s| s.name == child && s.parent_span_id == p.span_id)
                .unwrap_or_else(|| panic!("{child} under {}: {spans:#?}", hex(&p.span_id)));
            assert_eq!(c.trace_id, p.trace_id);
            assert_eq!(c.kind, SpanKind::Client as i32);
            assert!(c.start_time_unix_nano >= p.start_time_unix_nano && c.end_time_unix_nano <= p.end_time_unix_nano);
        }
    }
    let second = process.iter().find(|s| s.span_id != first.span_id).unwrap();
    assert_eq!(text(&second.attributes, "sqs_poller.outcome").as_deref(), Some("partial"));
    assert_eq!(text(&second.attributes, "sqs_poller.messages.dead_lettered").as_deref(), Some("1"));
    let dead = second.events.iter().find(|e| e.name == "dead_letter").expect("a dead-letter event");
    assert_eq!(text(&dead.attributes, "sqs_poller.receive_count").as_deref(), Some("2"));

    // the receives that returned messages
    let receives: Vec<&Span> = spans.iter().filter(|s| s.name == format!("receive {queue_name}")).collect();
    assert!(!receives.is_empty(), "receive spans");
    let received: i64 = receives
        .iter()
        .map(|s| text(&s.attributes, "messaging.batch.message_count").unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(received, 6, "4 messages, two of them received twice");
    assert!(receives.iter().all(|s| s.kind == SpanKind::Client as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_ratio_of_zero_sends_nothing() {
    let sqs = localstack().await;
    let collector = Collector::start().await;
    let queue = sqs.queue("otel-off", &[]).await;
    sqs.send_bodies(&queue, &(0..20).map(|i| format!("m{i}")).collect::<Vec<_>>()).await;
    let worker = worker(|_| Reply::ok("")).await;
    let pipeline = http_pipeline(
        "sampled-out",
        &queue,
        &worker.url,
        &format!(
            "[pipelines.pollers]\nwait_time_secs = 1\n[telemetry]\notlp_endpoint = \"{}\"\nsample_ratio = 0.0\n",
            collector.url
        ),
    );
    let poller = start_poller(&sqs, 10, &pipeline).await;
    poller
        .wait_metric("sqs_poller_messages_deleted_total{pipeline=\"sampled-out\"}", 20.0, Duration::from_secs(60))
        .await;
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    // the exporter flushes at shutdown: anything recorded would have arrived by now
    assert!(worker.deliveries().iter().all(|d| !d.headers.contains_key("traceparent")));
    assert_eq!(collector.spans().len(), 0, "nothing sampled, nothing sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_costs_no_message_and_is_counted() {
    let sqs = localstack().await;
    let queue = sqs.queue("otel-down", &[]).await;
    let bodies: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    sqs.send_bodies(&queue, &bodies).await;
    let worker = worker(|_| Reply::ok("")).await;
    // a port nobody listens on
    let port = free_port();
    let pipeline = http_pipeline(
        "collector-down",
        &queue,
        &worker.url,
        &format!(
            "[pipelines.pollers]\nwait_time_secs = 1\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\nexport_timeout_secs = 2\n"
        ),
    );
    let poller = start_poller(&sqs, 10, &pipeline).await;
    poller
        .wait_metric("sqs_poller_messages_deleted_total{pipeline=\"collector-down\"}", 50.0, Duration::from_secs(60))
        .await;
    // the batch processor exports every 5 s
    let failed =
        poller.wait_metric("sqs_poller_telemetry_spans_total{outcome=\"failed\"}", 1.0, Duration::from_secs(30)).await;
    let metrics = poller.metrics_text().await;
    assert_eq!(metric_value(&metrics, "sqs_poller_telemetry_spans_total{outcome=\"exported\"}"), 0.0);
    let (status, took, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    // the flush is bounded: the drain finished on its own, not cut off at the grace period's end
    assert!(
        !log.contains("drain did not finish"),
        "the shutdown waited past the 10 s grace for the flush ({took:?}):\n{log}"
    );
    assert!(log.contains("spans could not be exported"), "{log}");
    let times = worker.times_delivered();
    assert_eq!(times.len(), 50, "every message processed");
    assert!(times.values().all(|&n| n == 1), "each once");
    assert_eq!(sqs.counts(&queue).await, (0, 0));
    println!("{failed} spans lost to the unreachable collector, every message processed once");
}
