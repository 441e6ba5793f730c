//! Serving HTTP/1 connections within limits: the metrics server, the admin API and the Runtime
//! API target share this loop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The defences of a server: how many connections at once, how long a client may take to send
/// its request headers (and, on a kept-alive connection, to start its next request), and how long
/// a connection may live at most.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// `None`: as long as the client keeps using it (the Runtime API's long polls).
    pub max_connection_life: Option<Duration>,
}

/// Accepts HTTP/1 connections on `listener` and serves each with `service`, within `limits`,
/// until `stop` is cancelled. A failing `accept` (out of file descriptors, say) backs off instead
/// of spinning, and is logged once per run of failures (then every 100th).
pub async fn serve_connections<S>(
    listener: TcpListener,
    limits: Limits,
    name: &'static str,
    service: S,
    stop: CancellationToken,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut accept_errors = crate::backoff::Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut refused: u64 = 0;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    let pause = accept_errors.next_delay();
                    // EMFILE and friends repeat as fast as we ask: log the first of a run, then every 100th
                    if accept_errors.failures() % 100 == 1 {
                        tracing::warn!(server = name, error = %e, failures = accept_errors.failures(), "accept failed; backing off");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stop.cancelled() => return,
                    }
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        accept_errors.reset();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // over the cap: close at once rather than hold a descriptor for it
            refused += 1;
            if refused % 1000 == 1 {
                tracing::warn!(
                    server = name,
                    max = limits.max_connections,
                    refused,
                    "too many connections; closing new ones"
                );
            }
            drop(stream);
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            match limits.max_connection_life {
                Some(life) => {
                    let _ = tokio::time::timeout(life, connection).await;
                }
                None => {
                    let _ = connection.await;
                }
            }
            drop(slot);
        });
    }
}
