//! Remote `http` targets: over `https://` to a local TLS worker whose CA the test generates
//! (openssl), with mutual TLS (a client certificate), a header whose value comes from the
//! environment (and appears nowhere in the service's log, `check` output or metrics), and SigV4
//! signing that the worker verifies by computing the signature again with the `aws-sigv4` crate.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls_pki_types::pem::PemObject;

const SECRET: &str = "s3cr3t-api-key-7f2b";

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is needed to make the test's certificates (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
pub(crate) fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sqs-poller test CA",
        ],
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (who, subject) in [("server", "/CN=localhost"), ("client", "/CN=sqs-poller")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                subject,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
}

/// What the TLS worker saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    headers: HashMap<String, String>,
    signature_ok: Result<(), String>,
    client_cert: bool,
}

/// The TLS side of a test worker: the server certificate [`certificates`] made (for
/// 127.0.0.1 and localhost), asking for a client certificate from the test CA when
/// `client_auth`.
pub(crate) fn tls_acceptor(dir: &Path, client_auth: bool) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<_> =
        rustls_pki_types::CertificateDer::pem_file_iter(dir.join("server.pem")).unwrap().map(Result::unwrap).collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    tokio_rustls::TlsAcceptor::from(Arc::new(builder.with_single_cert(chain, key).unwrap()))
}

/// A TLS worker that requires a client certificate from the CA, answers success, and checks the
/// SigV4 signature of each request.
async fn tls_worker(dir: &Path) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let acceptor = tls_acceptor(dir, true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let client_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let headers: HashMap<String, String> = parts
                            .headers
                            .iter()
                            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let url = format!("https://127.0.0.1:{port}{}", parts.uri);
                        let signature_ok = crate::common::sigv4::verify(&url, &headers, &body, None, true).map(|_| ());
                        log.lock().unwrap().push(Seen { headers, signature_ok, client_cert });
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://127.0.0.1:{port}/sqs"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_mutual_tls_a_secret_header_and_sigv4() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (url, seen) = tls_worker(dir.path()).await;
    let sqs = sqs().await;
    let queue = sqs.queue("https", &[]).await;
    sqs.send_bodies(&queue, &(0..20).map(|i| format!("remote {i}")).collect::<Vec<_>>()).await;
    let d = dir.path().display();
    let target = format!(
        "ca_file = \"{d}/ca.pem\"\nclient_cert_file = \"{d}/client.pem\"\nclient_key_file = \"{d}/client.key\"\n\
         sigv4_service = \"execute-api\"\nheaders = {{ \"X-Api-Key\" = \"${{WORKER_API_KEY}}\" }}"
    );
    let pipeline =
        http_pipeline_with_target("remote", &queue, &url, &target, "[pipelines.pollers]\nwait_time_secs = 1\n");
    let mut poller = spawn_poller_with_env(&sqs.endpoint, 10, "", &pipeline, &[("WORKER_API_KEY", SECRET)]);
    poller.wait_listening().await;
    poller.wait_metric("sqs_poller_messages_deleted_total{pipeline=\"remote\"}", 20.0, Duration::from_secs(30)).await;

    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for s in &seen {
        assert!(s.client_cert, "the client certificate was presented");
        assert_eq!(s.headers.get("x-api-key").map(String::as_str), Some(SECRET), "the header from the environment");
        assert_eq!(s.signature_ok, Ok(()), "SigV4: {:?}", s.headers);
        assert!(s.headers["authorization"].contains("/us-east-1/execute-api/aws4_request"), "{:?}", s.headers);
    }
    // the secret is nowhere an operator or a scraper looks
    let metrics = poller.metrics_text().await;
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
        .args(["check", "--config"])
        .arg(&poller.config)
        .env("WORKER_API_KEY", SECRET)
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.contains("X-Api-Key"), "check names the header:\n{check}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
    for (what, text) in [("log", &log), ("metrics", &metrics), ("check", &check)] {
        assert!(!text.contains(SECRET), "the header's value appears in the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_certificate_is_not_trusted_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (url, seen) = tls_worker(dir.path()).await;
    let sqs = sqs().await;
    let queue = sqs.queue("https-untrusted", &[]).await;
    sqs.send_bodies(&queue, &["x".to_string()]).await;
    // no ca_file: the system's roots do not know the test's CA
    let pipeline = http_pipeline("untrusted", &queue, &url, "[pipelines.pollers]\nwait_time_secs = 1\n");
    let poller = start_poller(&sqs, 10, &pipeline).await;
    poller
        .wait_metric(
            "sqs_poller_batches_total{pipeline=\"untrusted\",outcome=\"throttled\"}",
            1.0,
            Duration::from_secs(20),
        )
        .await;
    assert!(seen.lock().unwrap().is_empty(), "no request reached the untrusted worker");
    let log = poller.log_text();
    assert!(log.contains("certificate"), "the log says why:\n{log}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

/// The lean HTTP/1.1 client's connections (`src/aws/wire.rs`, the `http` target's) over TLS: the
/// service's rustls settings (an extra CA, a client certificate), two requests, both answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lean_clients_connections_speak_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (url, seen) = tls_worker(dir.path()).await;
    let tls = sqs_poller::net::tls_config(
        Some(&dir.path().join("ca.pem")),
        Some((&dir.path().join("client.pem"), &dir.path().join("client.key"))),
    )
    .unwrap();
    let wire = sqs_poller::aws::wire::Wire::new(&url, tls).unwrap();
    for _ in 0..2 {
        let answer = wire.post(&[("content-type", "application/x-amz-json-1.0")], b"{}", 1024).await.unwrap();
        assert_eq!((answer.status.as_u16(), &answer.body[..]), (200, &b"{}"[..]));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|s| s.client_cert
                && s.headers.get("host").map(String::as_str) == Some(url[8..].trim_end_matches("/sqs")))
    );
}
