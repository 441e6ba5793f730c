//! Test harness: the real SQS emulator (fauxqs) over HTTP with the real aws-sdk-sqs client,
//! a real HTTP worker, and the real `sqs-poller` binary as a child process.
//!
//! The emulator is found through `SQS_POLLER_TEST_ENDPOINT` or `.local/run/fauxqs.url`
//! (written by `scripts/services.sh start`). When it is absent the tests fail, saying how to
//! start it; they never skip.
#![allow(dead_code)]

pub mod egress;
pub mod proxy;
pub mod sigv4;
pub mod strict_aws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

pub const HOW_TO_START: &str = "no SQS emulator is running for the tests. Start one with `scripts/services.sh start` \
     (installs fauxqs into .local/ and writes .local/run/fauxqs.url), or run everything with `scripts/test.sh`; \
     SQS_POLLER_TEST_ENDPOINT=http://127.0.0.1:PORT points the tests at another SQS-compatible server";

/// The SQS emulator and a client for it.
pub struct Sqs {
    pub endpoint: String,
    pub client: Client,
}

impl Sqs {
    /// sqs-poller's own client for the hot calls (`src/sqs_json.rs`), pointed at this emulator.
    pub async fn json_client(&self) -> std::sync::Arc<sqs_poller::aws::sqs_json::JsonClient> {
        let credentials = aws_credential_types::Credentials::new("test", "test", None, None, "test");
        let shared = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(credentials))
            .build();
        let settings =
            sqs_poller::aws::Settings { sqs_endpoint_url: Some(self.endpoint.clone()), ..Default::default() };
        let aws = sqs_poller::aws::Aws::from_shared(shared, settings, "us-east-1".into());
        sqs_poller::aws::sqs_json::JsonClient::new(&aws).await.unwrap()
    }
}

impl Sqs {
    /// The service's clients for this endpoint: the SDK for GetQueueAttributes and SendMessage,
    /// sqs-poller's own for receives, deletes and visibility changes, as the service sends them.
    pub async fn clients(&self) -> sqs_poller::sqs::SqsClients {
        sqs_poller::sqs::SqsClients {
            sdk: self.client.clone(),
            json: self.json_client().await,
            clock: sqs_poller::aws::Clock::default(),
            region: "us-east-1".into(),
        }
    }
}

pub async fn sqs() -> Sqs {
    let endpoint = std::env::var("SQS_POLLER_TEST_ENDPOINT").ok().or_else(|| {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".local/run/fauxqs.url");
        std::fs::read_to_string(file).ok().map(|s| s.trim().to_string())
    });
    let Some(endpoint) = endpoint else { panic!("{HOW_TO_START}") };
    match http_get(&format!("{endpoint}/health")).await {
        Some((200, _)) => {}
        other => panic!("the SQS emulator at {endpoint} does not answer on /health ({other:?}): {HOW_TO_START}"),
    }
    client_for(endpoint)
}

pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), n % 1_000_000_000_000)
}

impl Sqs {
    /// Creates a queue with a fresh name and returns its URL.
    pub async fn queue(&self, prefix: &str, attributes: &[(QueueAttributeName, &str)]) -> String {
        let fifo = attributes.iter().any(|(k, v)| *k == QueueAttributeName::FifoQueue && *v == "true");
        let name = if fifo { format!("{}.fifo", unique(prefix)) } else { unique(prefix) };
        let mut req = self.client.create_queue().queue_name(name);
        for (k, v) in attributes {
            req = req.attributes(k.clone(), *v);
        }
        req.send().await.expect("CreateQueue").queue_url.expect("queue url")
    }

    pub async fn send_bodies(&self, url: &str, bodies: &[String]) {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(b)
                        .build()
                        .unwrap()
                })
                .collect();
            let out = self
                .client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("SendMessageBatch");
            assert!(out.failed.is_empty(), "send failed: {:?}", out.failed);
        }
    }

    /// One SendMessage per body (for bodies too large to batch).
    pub async fn send_each(&self, url: &str, bodies: &[String]) {
        for b in bodies {
            self.client.send_message().queue_url(url).message_body(b).send().await.expect("SendMessage");
        }
    }

    /// One message with an X-Ray `AWSTraceHeader` system attribute (LocalStack returns it; fauxqs
    /// does not).
    pub async fn send_with_trace_header(&self, url: &str, body: &str, header: &str) {
        use aws_sdk_sqs::types::{MessageSystemAttributeNameForSends, MessageSystemAttributeValue};
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .message_system_attributes(
                MessageSystemAttributeNameForSends::AwsTraceHeader,
                MessageSystemAttributeValue::builder().data_type("String").string_value(header).build().unwrap(),
            )
            .send()
            .await
            .expect("SendMessage");
    }

    pub async fn send_with_attribute(&self, url: &str, body: &str, name: &str, value: &str) -> String {
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .message_attributes(
                name,
                MessageAttributeValue::builder().data_type("String").string_value(value).build().unwrap(),
            )
            .send()
            .await
            .expect("SendMessage")
            .message_id
            .unwrap()
    }

    /// (visible, in flight) message counts.
    pub async fn counts(&self, url: &str) -> (u64, u64) {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("GetQueueAttributes");
        let a = out.attributes.unwrap_or_default();
        let get = |k: QueueAttributeName| -> u64 {
            let v = a.get(&k).unwrap_or_else(|| panic!("GetQueueAttributes of {url} did not return {k:?}"));
            v.parse().unwrap_or_else(|_| panic!("{k:?} of {url} is not a number: {v}"))
        };
        (
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Receives (and hides for 5 minutes) every visible message.
    pub async fn take_all(&self, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
        let mut all = Vec::new();
        loop {
            let out = self
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .visibility_timeout(300)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await
                .expect("ReceiveMessage");
            let msgs = out.messages.unwrap_or_default();
            if msgs.is_empty() {
                return all;
            }
            all.extend(msgs);
        }
    }
}

pub const HOW_TO_START_LOCALSTACK: &str = "no LocalStack is running for the tests that need SQS's own FIFO and \
     attribute rules. Start it with `scripts/services.sh start` (installs localstack-core into .local/localstack and \
     writes .local/run/localstack.url), or run everything with `scripts/test.sh`; SQS_POLLER_TEST_LOCALSTACK=URL \
     points the tests at another one";

/// LocalStack (host mode), the emulator that behaves as SQS does for FIFO group locking,
/// attribute character rules and FIFO-only parameters; found through `SQS_POLLER_TEST_LOCALSTACK`
/// or `.local/run/localstack.url`.
pub async fn localstack() -> Sqs {
    let endpoint = std::env::var("SQS_POLLER_TEST_LOCALSTACK").ok().or_else(|| {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".local/run/localstack.url");
        std::fs::read_to_string(file).ok().map(|s| s.trim().to_string())
    });
    let Some(endpoint) = endpoint else { panic!("{HOW_TO_START_LOCALSTACK}") };
    match http_get(&format!("{endpoint}/_localstack/health")).await {
        Some((200, body)) if body.contains("\"sqs\"") => {}
        other => panic!(
            "LocalStack at {endpoint} does not answer on /_localstack/health ({other:?}): {HOW_TO_START_LOCALSTACK}"
        ),
    }
    client_for(endpoint)
}

fn client_for(endpoint: String) -> Sqs {
    let config = aws_sdk_sqs::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .endpoint_url(&endpoint)
        .build();
    Sqs { endpoint, client: Client::from_conf(config) }
}

pub const HOW_TO_START_REDIS: &str = "no Redis is running for the fleet tests. Start it with \
     `scripts/services.sh start` (installs Debian's redis-server and writes .local/run/redis.url), or run everything \
     with `scripts/test.sh`; SQS_POLLER_TEST_REDIS=redis://HOST:PORT points the tests at another one";

/// The Redis of the fleet tests, started by `scripts/services.sh start`; found through
/// `SQS_POLLER_TEST_REDIS` or `.local/run/redis.url`. Answers PING, or the test fails saying how
/// to start it.
pub async fn redis_url() -> String {
    let url = std::env::var("SQS_POLLER_TEST_REDIS").ok().or_else(|| {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".local/run/redis.url");
        std::fs::read_to_string(file).ok().map(|s| s.trim().to_string())
    });
    let Some(url) = url else { panic!("{HOW_TO_START_REDIS}") };
    let pong: Result<String, _> = async {
        let mut c = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async(&mut c).await
    }
    .await;
    match pong {
        Ok(p) if p == "PONG" => url,
        other => panic!("Redis at {url} does not answer PING ({other:?}): {HOW_TO_START_REDIS}"),
    }
}

/// The moto server (for Lambda), started by `scripts/services.sh start`; found through
/// `SQS_POLLER_TEST_MOTO` or `.local/run/moto.url`.
pub async fn moto() -> String {
    let url = std::env::var("SQS_POLLER_TEST_MOTO").ok().or_else(|| {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".local/run/moto.url");
        std::fs::read_to_string(file).ok().map(|s| s.trim().to_string())
    });
    let how = "no moto server is running for the Lambda tests. Start one with `scripts/services.sh start` \
               (it installs moto[server] into .local/venv and writes .local/run/moto.url), or run `scripts/test.sh`";
    let Some(url) = url else { panic!("{how}") };
    match http_get(&format!("{url}/moto-api/config")).await {
        Some((200 | 201, _)) => url,
        other => panic!("moto at {url} does not answer ({other:?}): {how}"),
    }
}

/// The Python of `.local/venv`, checked to import awslambdaric (the runtime-api tests' client).
pub fn python_with_awslambdaric() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".local/venv/bin/python");
    let ric = std::process::Command::new(&python).args(["-c", "import awslambdaric"]).status();
    assert!(
        ric.is_ok_and(|s| s.success()),
        "{} cannot import awslambdaric: run scripts/install-services.sh (it installs awslambdaric into .local/venv)",
        python.display()
    );
    python
}

/// moto's SQS (the same server as its Lambda), for cross-checks.
pub async fn moto_sqs() -> Sqs {
    client_for(moto().await)
}

/// POSTs JSON to moto's control API.
pub async fn moto_post(url: &str, path: &str, body: &Value) {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = client.request(req).await.expect("moto answers");
    assert!(res.status().is_success(), "moto {path}: {}", res.status());
}

// ---------------------------------------------------------------------------------------------
// The worker
// ---------------------------------------------------------------------------------------------

/// What the worker answers to one event.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Self {
        Reply { status: 200, body: body.into(), delay: Duration::ZERO }
    }

    pub fn failures(ids: &[&str]) -> Self {
        let list: Vec<Value> = ids.iter().map(|id| serde_json::json!({"itemIdentifier": id})).collect();
        Reply::ok(serde_json::json!({ "batchItemFailures": list }).to_string())
    }
}

/// One event as the worker saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub at: Instant,
    pub bytes: usize,
    pub event: Value,
    /// The request's headers (names in lower case).
    pub headers: HashMap<String, String>,
    /// Whether the worker's answer was written completely (false if the poller hung up first).
    pub answered: bool,
    /// When the worker finished the event and began its answer (`None`: not yet, or the poller
    /// hung up first). [`Delivery::at`] to here lies within the time the poller had it out.
    pub done: Option<Instant>,
}

impl Delivery {
    pub fn records(&self) -> &Vec<Value> {
        self.event["Records"].as_array().expect("Records")
    }
}

/// The most of `deliveries` that were being worked on at once (each from its arrival at the
/// worker to its answer), counted from the workers' own record rather than sampled.
pub fn peak_at_once<'a>(deliveries: impl IntoIterator<Item = &'a Delivery>) -> usize {
    let mut steps: Vec<(Instant, i32)> = Vec::new();
    for d in deliveries {
        steps.push((d.at, 1));
        // a delivery not answered yet is being worked on now (count before the poller stops: one
        // it hung up on is never answered)
        steps.push((d.done.unwrap_or_else(Instant::now), -1));
    }
    // an end before a start at the same instant: touching is not overlapping
    steps.sort_by_key(|&(at, step)| (at, step));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, step) in steps {
        now += step;
        peak = peak.max(now);
    }
    peak as usize
}

/// A real HTTP worker on a loopback port.
pub struct Worker {
    pub url: String,
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
    /// Events being worked on now (from the request's arrival to the answer), and the most at once.
    pub load: Arc<Load>,
}

/// A worker's concurrent events.
#[derive(Default)]
pub struct Load {
    pub now: std::sync::atomic::AtomicUsize,
    pub peak: std::sync::atomic::AtomicUsize,
}

impl Load {
    pub fn now(&self) -> usize {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
}

type Handler = dyn Fn(&Value, usize) -> Reply + Send + Sync;

pub async fn worker(handler: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> Worker {
    worker_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), handler).await
}

/// A worker on a listener the test bound itself.
pub async fn worker_on(
    listener: tokio::net::TcpListener,
    handler: impl Fn(&Value) -> Reply + Send + Sync + 'static,
) -> Worker {
    loaded_worker_on(listener, move |event, _| handler(event)).await
}

/// A worker whose answer depends on its load: `handler` gets the event and the number of events
/// being worked on now, this one included (a worker that slows down or pushes back past its
/// capacity).
pub async fn loaded_worker(handler: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static) -> Worker {
    loaded_worker_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), handler).await
}

pub async fn loaded_worker_on(
    listener: tokio::net::TcpListener,
    handler: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static,
) -> Worker {
    counted_worker_on(listener, Arc::default(), handler).await
}

/// A worker whose events are counted in `load`, which several workers may share (the batches at
/// all the workers of a pool at once, counted where they are worked on rather than sampled).
pub async fn counted_worker(
    load: Arc<Load>,
    handler: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static,
) -> Worker {
    counted_worker_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), load, handler).await
}

pub async fn counted_worker_on(
    listener: tokio::net::TcpListener,
    load: Arc<Load>,
    handler: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static,
) -> Worker {
    use std::sync::atomic::Ordering::SeqCst;
    let url = format!("http://{}/sqs", listener.local_addr().unwrap());
    let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let handler: Arc<Handler> = Arc::new(handler);
    let (log, shared_load) = (deliveries.clone(), load.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let handler = handler.clone();
            let log = log.clone();
            let load = shared_load.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    let log = log.clone();
                    let load = load.clone();
                    async move {
                        let headers: HashMap<String, String> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                            .collect();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let event: Value = serde_json::from_slice(&body).expect("the event is JSON");
                        let n = load.now.fetch_add(1, SeqCst) + 1;
                        load.peak.fetch_max(n, SeqCst);
                        // counted down when the answer is sent, or when the poller hung up first
                        struct Leave(Arc<Load>);
                        impl Drop for Leave {
                            fn drop(&mut self) {
                                self.0.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                        let _leave = Leave(load.clone());
                        let reply = handler(&event, n);
                        let index = {
                            let mut l = log.lock().unwrap();
                            l.push(Delivery {
                                at: Instant::now(),
                                bytes: body.len(),
                                event,
                                headers,
                                answered: false,
                                done: None,
                            });
                            l.len() - 1
                        };
                        tokio::time::sleep(reply.delay).await;
                        // reached only if the poller still waits: the answer is about to be sent
                        {
                            let mut l = log.lock().unwrap();
                            l[index].answered = true;
                            l[index].done = Some(Instant::now());
                        }
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(reply.status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(reply.body)))
                                .unwrap(),
                        )
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Worker { url, deliveries, load }
}

impl Worker {
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// How many times each message id was delivered.
    pub fn times_delivered(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for d in self.deliveries() {
            for r in d.records() {
                *m.entry(r["messageId"].as_str().unwrap().to_string()).or_default() += 1;
            }
        }
        m
    }
}

// ---------------------------------------------------------------------------------------------
// The poller process
// ---------------------------------------------------------------------------------------------

/// A port that was free a moment ago, for programs that cannot bind port 0 and report it
/// (Prometheus in the observability test). The service itself binds port 0 and logs its address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Poller {
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:PORT` of /metrics, /healthz and /readyz, read from the service's log
    /// (it binds port 0); empty until [`Poller::wait_listening`] found it.
    pub listen: String,
    pub log: PathBuf,
    /// The configuration file, and its part before the pipelines (for [`Poller::rewrite`]).
    pub config: PathBuf,
    header: String,
    _dir: tempfile::TempDir,
}

/// Writes `pipelines` (TOML for one or more `[[pipelines]]`) under a header pointing at the
/// emulator, starts the binary and waits until `/readyz` says ready.
pub async fn start_poller(sqs: &Sqs, grace_secs: u64, pipelines: &str) -> Poller {
    start_poller_with_aws(sqs, grace_secs, "", pipelines).await
}

/// As [`start_poller`], with more keys for the `[aws]` table (e.g. `lambda_endpoint_url`).
pub async fn start_poller_with_aws(sqs: &Sqs, grace_secs: u64, aws_extra: &str, pipelines: &str) -> Poller {
    let mut poller = spawn_poller_with_aws(&sqs.endpoint, grace_secs, aws_extra, pipelines);
    poller.wait_listening().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((200, _)) = http_get(&format!("{}/readyz", poller.listen)).await {
            return poller;
        }
        assert!(Instant::now() < deadline, "sqs-poller did not become ready; log:\n{}", poller.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the binary against `endpoint` without waiting for it to be ready.
pub fn spawn_poller(endpoint: &str, grace_secs: u64, pipelines: &str) -> Poller {
    spawn_poller_with_aws(endpoint, grace_secs, "", pipelines)
}

fn spawn_poller_with_aws(endpoint: &str, grace_secs: u64, aws_extra: &str, pipelines: &str) -> Poller {
    spawn_poller_with_env(endpoint, grace_secs, aws_extra, pipelines, &[])
}

/// As [`spawn_poller`], with more `[aws]` keys and environment variables for the service.
pub fn spawn_poller_with_env(
    endpoint: &str,
    grace_secs: u64,
    aws_extra: &str,
    pipelines: &str,
    env: &[(&str, &str)],
) -> Poller {
    let header = format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n{aws_extra}\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[shutdown]\ngrace_period_secs = {grace_secs}\n",
        endpoint
    );
    let text = format!("{header}{pipelines}");
    let mut env: Vec<(&str, &str)> = env.to_vec();
    env.insert(0, ("AWS_ACCESS_KEY_ID", "test"));
    env.insert(1, ("AWS_SECRET_ACCESS_KEY", "test"));
    spawn_poller_config(&header, &text, &env, &[])
}

/// Starts the binary on the whole configuration `text` (`header`: its part before the
/// pipelines) with exactly the AWS environment given: `env` set, `remove` unset, and no
/// credentials unless `env` names them.
pub fn spawn_poller_config(header: &str, text: &str, env: &[(&str, &str)], remove: &[&str]) -> Poller {
    let header = header.to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("poller.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("poller.log");
    // SQS_POLLER_TEST_BIN runs the end-to-end tests against another build (an earlier commit's,
    // to see a test fail before its fix)
    let bin = std::env::var("SQS_POLLER_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sqs-poller").to_string());
    let mut command = tokio::process::Command::new(bin);
    // the services are on loopback: an egress proxy of the machine running the tests is not
    // the service's (tests/e2e/egress_proxy.rs sets its own)
    let proxies =
        ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"];
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"]
        .iter()
        .chain(&proxies)
        .chain(remove)
    {
        command.env_remove(name);
    }
    let child = command
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(dir.path().join("poller.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        // a process group of its own, like a job started from a shell: a test can press Ctrl-C
        // (SIGINT to the group) without hitting the test runner
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("start sqs-poller");
    Poller { child, listen: String::new(), log, config, header, _dir: dir }
}

impl Poller {
    /// Waits for the log line with the address the service bound, and sets `listen`.
    pub async fn wait_listening(&mut self) -> &str {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = self.log_text();
            let addr = log
                .lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|l| l.split("listen=").nth(1))
                .and_then(|rest| rest.split_whitespace().next());
            if let Some(addr) = addr {
                self.listen = format!("http://{addr}");
                return &self.listen;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sqs-poller exited ({status}) before it listened; log:\n{log}");
            }
            assert!(Instant::now() < deadline, "sqs-poller did not log its listen address; log:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the service wrote to stdout (its log goes to stderr: [`Poller::log_text`]).
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("poller.out")).unwrap_or_default()
    }

    pub async fn metrics_text(&self) -> String {
        http_get(&format!("{}/metrics", self.listen)).await.expect("GET /metrics").1
    }

    /// The value of one series, e.g. `sqs_poller_messages_deleted_total{pipeline="p"}`; panics
    /// when it is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics_text().await, series)
    }

    /// Waits until `series` reaches at least `at_least`; panics with the log after `timeout`
    /// (saying so when the series never appeared).
    pub async fn wait_metric(&self, series: &str, at_least: f64, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = find_metric(&self.metrics_text().await, series);
            if let Some(v) = v.filter(|v| *v >= at_least) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {} (< {at_least}) for {timeout:?}; log:\n{}",
                v.map_or_else(|| "absent".to_string(), |v| v.to_string()),
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What Ctrl-C in a terminal does: SIGINT to every process of the foreground group (the
    /// service's; the test runner is not in it).
    pub fn ctrl_c(&self) {
        let pid = self.child.id().expect("running");
        let ok =
            std::process::Command::new("kill").args(["-INT", "--", &format!("-{pid}")]).status().unwrap().success();
        assert!(ok, "kill -INT -- -{pid}");
    }

    /// The service's peak resident memory so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        proc_status_kib(self.child.id().expect("running"), "VmHWM:") / 1024.0
    }

    /// How many file descriptors the service has open.
    pub fn open_fds(&self) -> usize {
        let pid = self.child.id().expect("running");
        std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
    }

    /// `http://127.0.0.1:PORT` of the admin API, read from the service's log.
    pub fn admin_url(&self) -> String {
        let log = self.log_text();
        let addr = log
            .lines()
            .find(|l| l.contains("admin API:"))
            .and_then(|l| l.split("listen=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("the service did not log its admin API address:\n{log}"));
        format!("http://{addr}")
    }

    /// Writes new pipelines into the configuration file (same `[aws]`, `[server]`, `[shutdown]`).
    pub fn rewrite(&self, pipelines: &str) {
        std::fs::write(&self.config, format!("{}{pipelines}", self.header)).unwrap();
    }

    /// Writes `text` as the whole configuration file.
    pub fn rewrite_raw(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// Asks for a configuration reload.
    pub fn sighup(&self) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success();
        assert!(ok, "kill -HUP {pid}");
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success();
        assert!(ok, "kill -TERM {pid}");
    }

    /// SIGTERM, then the exit status and how long the exit took.
    pub async fn stop(mut self) -> (ExitStatus, Duration, String) {
        let t = Instant::now();
        self.sigterm();
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("sqs-poller did not exit within 60 s of SIGTERM")
            .unwrap();
        (status, t.elapsed(), self.log_text())
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
pub fn proc_status_kib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// Parses one series out of Prometheus text; panics, naming it, when the series is absent (an
/// absent series is never a silent 0).
pub fn metric_value(text: &str, series: &str) -> f64 {
    find_metric(text, series).unwrap_or_else(|| panic!("the series {series} is absent from /metrics:\n{text}"))
}

/// Asserts that every label of every series in `text` has a value from the fixed sets of the
/// metrics contract (docs/src/metrics.md): no message ids, error texts or queue URLs.
pub fn assert_bounded_labels(text: &str, pipelines: &[&str]) {
    let allowed = |key: &str, value: &str| -> bool {
        match key {
            "pipeline" => pipelines.contains(&value),
            "outcome" => ["success", "partial", "failure", "throttled", "ok", "error", "fetched", "failed", "refused"]
                .contains(&value),
            "operation" => [
                "ReceiveMessage",
                "DeleteMessageBatch",
                "ChangeMessageVisibilityBatch",
                "SendMessage",
                "GetQueueAttributes",
            ]
            .contains(&value),
            "state" => ["visible", "in_flight", "delayed"].contains(&value),
            "kind" => {
                ["throttled", "server_error", "timeout", "connection", "bad_response", "rejected"].contains(&value)
            }
            "queue" => ["source", "dead_letter"].contains(&value),
            "to" => sqs_poller::metrics::BREAKER_PHASES.contains(&value),
            "reason" => sqs_poller::metrics::ADMIN_REFUSALS.contains(&value),
            "call" => sqs_poller::metrics::RECEIPT_CALLS.contains(&value),
            "code" => value == "other" || sqs_poller::sqs::PERMANENT_CODES.contains(&value),
            "version" => value == env!("CARGO_PKG_VERSION"),
            // one per configuration file loaded (reloads are rare)
            "hash" => value.len() == 16 && value.chars().all(|c| c.is_ascii_hexdigit()),
            "le" | "quantile" => value == "+Inf" || value.parse::<f64>().is_ok(),
            _ => false,
        }
    };
    let mut series = 0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let Some((_, rest)) = line.split_once('{') else { continue };
        let labels = rest.rsplit_once('}').expect("closed label set").0;
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("label `{pair}` in {line}"));
            let value = value.trim_end_matches('"');
            assert!(allowed(key, value), "label {key}=\"{value}\" is not from a fixed set: {line}");
        }
        series += 1;
    }
    assert!(series > 50, "only {series} labelled series in /metrics");
}

/// One series out of Prometheus text, `None` when absent.
pub fn find_metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// GET over plain HTTP; `None` when nothing answers.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    http_request("GET", url, &[]).await
}

/// POST with an empty body over plain HTTP; `None` when nothing answers.
pub async fn http_post(url: &str) -> Option<(u16, String)> {
    http_request("POST", url, &[]).await
}

/// A request with chosen headers (a `Host` given here replaces the URL's) over plain HTTP;
/// `None` when nothing answers.
pub async fn http_request(method: &str, url: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).set_host(false).build_http();
    let uri: hyper::Uri = url.parse().ok()?;
    let mut req = Request::builder().method(method).uri(&uri);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", uri.authority()?.as_str());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(Duration::from_secs(5), client.request(req.body(Full::new(Bytes::new())).ok()?))
        .await
        .ok()?
        .ok()?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `f` until it returns true; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `[[pipelines]]` table with an http target; `extra` is appended (more tables or keys).
pub fn http_pipeline(name: &str, queue_url: &str, worker_url: &str, extra: &str) -> String {
    http_pipeline_with_target(name, queue_url, worker_url, "", extra)
}

/// As [`http_pipeline`], with more keys (`target_keys`) in its `[pipelines.target]` table.
pub fn http_pipeline_with_target(
    name: &str,
    queue_url: &str,
    worker_url: &str,
    target_keys: &str,
    extra: &str,
) -> String {
    format!(
        "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{queue_url}\"\n[pipelines.target]\ntype = \"http\"\nurl = \"{worker_url}\"\n{target_keys}\n{extra}\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Scenarios: one pipeline's whole setup in one expression
// ---------------------------------------------------------------------------------------------

/// One pipeline end to end: a fresh queue on the emulator (its prefix is also the pipeline's
/// name), the bodies sent before the service starts, a worker, and the service running the
/// pipeline with the scenario's overrides (TOML appended after its `[pipelines.target]` table).
///
/// ```ignore
/// let run = Scenario::new("thousand").bodies((0..1000).map(|i| format!("m{i}")))
///     .pipeline("[pipelines.batch]\nsize = 50").run(|_| Reply::ok("")).await;
/// run.wait_deleted(1000).await;
/// ```
pub struct Scenario {
    name: String,
    attributes: Vec<(QueueAttributeName, String)>,
    bodies: Vec<String>,
    overrides: String,
    grace_secs: u64,
}

/// A started [`Scenario`]: the emulator, the queue's URL, the bodies sent, the worker and the
/// running service.
pub struct Run {
    pub name: String,
    pub sqs: Sqs,
    pub queue: String,
    pub bodies: Vec<String>,
    pub worker: Worker,
    pub poller: Poller,
}

impl Scenario {
    /// A standard queue, no bodies, the default pipeline, a 10 s shutdown grace.
    pub fn new(name: &str) -> Self {
        Scenario {
            name: name.into(),
            attributes: Vec::new(),
            bodies: Vec::new(),
            overrides: String::new(),
            grace_secs: 10,
        }
    }

    /// A queue attribute set when the queue is created (`FifoQueue` makes a `.fifo` queue).
    pub fn attribute(mut self, name: QueueAttributeName, value: &str) -> Self {
        self.attributes.push((name, value.into()));
        self
    }

    /// Bodies sent (in batches of ten, in this order) before the service starts.
    pub fn bodies<S: Into<String>>(mut self, bodies: impl IntoIterator<Item = S>) -> Self {
        self.bodies.extend(bodies.into_iter().map(Into::into));
        self
    }

    /// TOML appended after the pipeline's `[pipelines.target]` table: the target's own keys first
    /// (`max_concurrency = 1`), then tables (`[pipelines.batch]`, ...).
    pub fn pipeline(mut self, overrides: &str) -> Self {
        self.overrides.push_str(overrides);
        self.overrides.push('\n');
        self
    }

    pub fn grace_secs(mut self, secs: u64) -> Self {
        self.grace_secs = secs;
        self
    }

    /// Starts a worker answering with `handler`, then the service; returns once it is ready.
    pub async fn run(self, handler: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> Run {
        let worker = worker(handler).await;
        self.run_with(worker).await
    }

    /// As [`Scenario::run`] with a worker the test made (a loaded or counted one).
    pub async fn run_with(self, worker: Worker) -> Run {
        let sqs = sqs().await;
        let attributes: Vec<(QueueAttributeName, &str)> =
            self.attributes.iter().map(|(k, v)| (k.clone(), v.as_str())).collect();
        let queue = sqs.queue(&self.name, &attributes).await;
        sqs.send_bodies(&queue, &self.bodies).await;
        let pipeline = http_pipeline(&self.name, &queue, &worker.url, &self.overrides);
        let poller = start_poller(&sqs, self.grace_secs, &pipeline).await;
        Run { name: self.name, sqs, queue, bodies: self.bodies, worker, poller }
    }
}

impl Run {
    /// `metric{pipeline="NAME"}`: a series of this scenario's pipeline.
    pub fn series(&self, metric: &str) -> String {
        format!("{metric}{{pipeline=\"{}\"}}", self.name)
    }

    /// Waits (up to `timeout`) until the service deleted at least `count` messages.
    pub async fn wait_deleted(&self, count: usize, timeout: Duration) {
        self.poller.wait_metric(&self.series("sqs_poller_messages_deleted_total"), count as f64, timeout).await;
    }

    /// The value of this pipeline's `metric` now.
    pub async fn metric(&self, metric: &str) -> f64 {
        self.poller.metric(&self.series(metric)).await
    }

    /// Stops the service (SIGTERM) and asserts it exited 0; returns its log.
    pub async fn stop(self) -> String {
        let (status, _, log) = self.poller.stop().await;
        assert!(status.success(), "exit {status:?}; log:\n{log}");
        log
    }
}
