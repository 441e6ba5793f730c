//! Large payloads from S3 with signatures enforced. No emulator checks S3's signing rules by
//! default; moto does once `INITIAL_NO_AUTH_ACTION_COUNT` is set: every later request must be
//! signed by a key of an IAM user it created, and it computes the signature again with
//! botocore's `S3SigV4Auth` (S3's rules: keys encoded once, no path normalisation) — an
//! implementation independent of the AWS Rust SDK's. The same moto serves the queue, so the SQS
//! JSON client's signatures are checked by botocore's `SigV4Auth` too. A negative control
//! proves moto refuses a wrong secret. In front of S3 sits a small region witness: a bucket
//! "in eu-west-1" answers a request signed for another region as S3 does (400
//! `AuthorizationHeaderMalformed` with `x-amz-bucket-region`), which moto never does.

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

const SETUP: &str = r#"
import json, sys
import boto3, botocore
endpoint, queue_name, near, far, out = sys.argv[1:6]
def client(service, key=None, secret=None, region="us-east-1"):
    kw = dict(endpoint_url=endpoint, region_name=region,
              aws_access_key_id=key or "test", aws_secret_access_key=secret or "test",
              config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    return boto3.client(service, **kw)
# the three actions moto allows without authentication
iam = client("iam")
iam.create_user(UserName="poller")
iam.put_user_policy(UserName="poller", PolicyName="all",
    PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
k = iam.create_access_key(UserName="poller")["AccessKey"]
key, secret = k["AccessKeyId"], k["SecretAccessKey"]
s3 = client("s3", key, secret)
# the negative control: moto refuses a wrong secret from now on
try:
    client("s3", key, "not-the-secret").list_buckets()
    sys.exit("moto accepted a request signed with the wrong secret: signatures are not enforced")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId"), e.response
s3.create_bucket(Bucket=near)
client("s3", key, secret, "eu-west-1").create_bucket(Bucket=far, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
sqs = client("sqs", key, secret)
queue = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
keys = ["plain.json", "a b+c=d:e,f;g@h$i&j.json", "ünïcødé/ключ/日本.txt", "seg/./dot", "double//slash", "tilde~star*(1)!'"]
sent = {}
for bucket in (near, far):
    region = "eu-west-1" if bucket == far else "us-east-1"
    for i, object_key in enumerate(keys):
        body = "payload %s %d %s" % (bucket, i, "x" * 300000)
        client("s3", key, secret, region).put_object(Bucket=bucket, Key=object_key, Body=body.encode())
        pointer = json.dumps(["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": bucket, "s3Key": object_key}])
        name = "%s|%s" % (bucket, object_key)
        sqs.send_message(QueueUrl=queue, MessageBody=pointer, MessageAttributes={
            "ExtendedPayloadSize": {"DataType": "Number", "StringValue": str(len(body))},
            "name": {"DataType": "String", "StringValue": name}})
        sent[name] = body
json.dump({"key": key, "secret": secret, "queue": queue, "sent": sent}, open(out, "w"))
"#;

/// A region witness in front of S3: requests for a bucket of `far` signed for another region
/// get S3's answer; everything else is forwarded as it came (the `Host` header included, so
/// moto checks the signature the client made).
async fn region_witness(upstream: String, far: String, region: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let redirected = Arc::new(Mutex::new(Vec::new()));
    let out = redirected.clone();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (upstream, far, client, redirected) =
                (upstream.clone(), far.clone(), client.clone(), redirected.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (upstream, far, client, redirected) =
                        (upstream.clone(), far.clone(), client.clone(), redirected.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
                        let signed_region = auth.split("Credential=").nth(1).and_then(|c| c.split('/').nth(2));
                        let bucket = parts.uri.path().trim_start_matches('/').split('/').next().unwrap_or("");
                        if bucket == far && signed_region.is_some_and(|r| r != region) {
                            redirected.lock().unwrap().push(format!("{} {}", parts.method, parts.uri.path()));
                            let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed; the region '{}' is wrong; expecting '{region}'</Message><Region>{region}</Region></Error>", signed_region.unwrap());
                            return Ok::<_, Infallible>(
                                Response::builder()
                                    .status(400)
                                    .header("content-type", "application/xml")
                                    .header("x-amz-bucket-region", region)
                                    .body(Full::new(Bytes::from(xml)))
                                    .unwrap(),
                            );
                        }
                        let mut forward =
                            Request::builder().method(parts.method).uri(format!("{upstream}{}", parts.uri));
                        for (k, v) in &parts.headers {
                            forward = forward.header(k, v);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_fetched_with_s3s_signing_rules_from_dotted_and_far_buckets() {
    let python = python_with_awslambdaric();
    let moto_bin = python.parent().unwrap().join("moto_server");
    assert!(
        moto_bin.exists(),
        "no moto_server in .local/venv: run scripts/services.sh start (it installs moto[server])"
    );
    // a moto of this test's own, with authentication on after three actions
    let port = free_port();
    let mut moto = tokio::process::Command::new(&moto_bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    eventually("moto answers", Duration::from_secs(30), || async {
        http_get(&format!("{endpoint}/moto-api/config")).await.is_some()
    })
    .await;

    let (near, far) = (format!("payloads.with.dots.{}", unique("n")), unique("far"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("setup.json");
    let setup = std::process::Command::new(&python)
        .args(["-c", SETUP, &endpoint, &unique("signed"), &near, &far, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(setup.status.success(), "setup failed: {}", String::from_utf8_lossy(&setup.stderr));
    let setup: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let sent: HashMap<String, String> = serde_json::from_value(setup["sent"].clone()).unwrap();

    let (s3, redirected) = region_witness(endpoint.clone(), far.clone(), "eu-west-1").await;
    let w = worker(|_| Reply::ok("")).await;
    let header = format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\ns3_endpoint_url = \"{s3}\"\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[shutdown]\ngrace_period_secs = 5\n"
    );
    let pipeline = http_pipeline(
        "signed",
        setup["queue"].as_str().unwrap(),
        &w.url,
        // the allowed-bucket check on the way to signed, redirected fetches (issue 34)
        &format!("[pipelines.pollers]\nwait_time_secs = 1\n[pipelines.large_payloads]\nallowed_buckets = [\"{near}\", \"{far}\"]\n"),
    );
    let mut p = spawn_poller_config(
        &header,
        &format!("{header}{pipeline}"),
        &[
            ("AWS_ACCESS_KEY_ID", setup["key"].as_str().unwrap()),
            ("AWS_SECRET_ACCESS_KEY", setup["secret"].as_str().unwrap()),
        ],
        &[],
    );
    p.wait_listening().await;
    let deleted =
        eventually_metric(&p, "sqs_poller_messages_deleted_total{pipeline=\"signed\"}", sent.len() as f64).await;
    let log = p.log_text();
    let failed = p.metric("sqs_poller_messages_failed_total{pipeline=\"signed\"}").await;
    p.stop().await;
    let _ = moto.kill().await;
    assert!(deleted, "not every payload was fetched and processed (failed: {failed})\nlog:\n{log}");
    assert_eq!(failed, 0.0, "log:\n{log}");
    let mut seen = HashMap::new();
    for d in w.deliveries() {
        for r in d.records() {
            let name = r["messageAttributes"]["name"]["stringValue"].as_str().unwrap().to_string();
            seen.insert(name, r["body"].as_str().unwrap().to_string());
        }
    }
    for (name, body) in &sent {
        assert!(seen.get(name) == Some(body), "{name}: not the object's bytes");
    }
    // the far bucket answered with its region and was followed there: each object redirected at
    // most once (fetches that raced before its region was learned each take one redirect)
    let redirected = redirected.lock().unwrap().clone();
    let distinct: std::collections::HashSet<&String> = redirected.iter().collect();
    assert!(!redirected.is_empty(), "the region witness was never asked: the far bucket was not exercised");
    assert_eq!(distinct.len(), redirected.len(), "an object redirected twice: {redirected:?}");
    println!(
        "{} payloads fetched with signatures enforced; {} request(s) redirected to eu-west-1",
        sent.len(),
        redirected.len()
    );
}

async fn eventually_metric(p: &Poller, series: &str, at_least: f64) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if p.metric(series).await >= at_least {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
