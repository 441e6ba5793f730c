//! The `runtime-api` target: unmodified Lambda functions as local workers.
//!
//! sqs-poller serves the AWS Lambda Runtime API (`2018-06-01`) on loopback and keeps `workers`
//! processes of `program args…` running, each with `AWS_LAMBDA_RUNTIME_API` pointing at a
//! listener of its own, so any runtime interface client (`awslambdaric`, the Node, Java or .NET
//! runtimes, `lambda_runtime` for Rust) runs the handler as it would on Lambda:
//!
//! - `GET  /2018-06-01/runtime/invocation/next` waits for the next batch's event;
//! - `POST /2018-06-01/runtime/invocation/{id}/response` is the function's result;
//! - `POST /2018-06-01/runtime/invocation/{id}/error` is a function error (the batch failed);
//! - `POST /2018-06-01/runtime/init/error` reports a failed start (logged; the worker is restarted).
//!
//! A worker that exits is restarted (with a growing pause if it keeps crashing); the batch it
//! was running fails. `timeout_secs` starts when a worker takes the batch (its `next` returns),
//! as on Lambda: a batch that outlives it fails and its worker is killed and restarted. Time
//! spent waiting for a free worker is not the function's: a batch no worker takes within
//! `max_throttled_secs` comes back as a throttle, never as a function error. A listener per
//! worker is how a crash or a timeout is tied to its batch.
//!
//! Workers are [`WorkerProcess`]es: each in a process group of its own, so Ctrl-C in a terminal
//! drains them with the service instead of killing them. Once the pipeline has drained,
//! [`RuntimeApiTarget::stop`] sends them SIGTERM and SIGKILLs those still running after a grace
//! time. The listeners take at most [`CONNECTIONS_PER_WORKER`] connections each, read bodies up
//! to 6 MiB (a larger response fails its batch, counted in
//! `sqs_poller_worker_output_overflows_total`), and drop a connection that sends no request
//! headers for `timeout_secs` + 30 s (a worker never idles longer: it is running its batch, which
//! ends by then).

use std::collections::HashMap;
use std::convert::Infallible;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::worker_process::{Stopped, WorkerProcess, MAX_OUTPUT};
use super::Invocation;
use crate::net::{serve_connections, Limits};

/// Connections one worker's listener serves at once (a runtime client uses one or two).
pub const CONNECTIONS_PER_WORKER: usize = 8;

/// One queued invocation.
struct Job {
    request_id: String,
    event: Bytes,
    /// The function's time, from when a worker takes the job.
    timeout: Duration,
    /// `Lambda-Runtime-Trace-Id`: the batch's X-Ray header, if a message carried one.
    trace: Option<String>,
    /// Told the deadline when a worker takes the job.
    taken: oneshot::Sender<()>,
    done: oneshot::Sender<Invocation>,
    /// Set (under the jobs' lock) when its caller gave up before a worker took it: skipped by
    /// `next`. A flag on the job, not a set of ids, so that nothing outlives the job (issue 30: the
    /// ids of jobs never queued, or skipped before their caller gave up, stayed in the set).
    given_up: Arc<std::sync::atomic::AtomicBool>,
}

/// Which jobs workers run; its lock also orders taking a job and giving it up, so that they
/// cannot cross.
#[derive(Default)]
struct Jobs {
    /// Jobs handed to a worker and not answered yet, by request id: (worker slot, reply).
    running: HashMap<String, (usize, oneshot::Sender<Invocation>)>,
}

/// Shared between the listeners of all workers.
struct Shared {
    /// Jobs waiting for a worker's `next`.
    queue: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    jobs: Mutex<Jobs>,
    /// Per worker slot: kill the process (its batch timed out, as Lambda ends a function).
    kill: Vec<tokio::sync::Notify>,
    function_arn: String,
    overflows: metrics::Counter,
    /// Cancelled by [`RuntimeApiTarget::stop`]: the supervisors stop their workers and end.
    stopping: CancellationToken,
    /// How long a worker has between SIGTERM and SIGKILL when the target stops.
    stop_grace: Mutex<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ends an invocation that its caller gave up on (the batch timed out, or shutdown abandoned
/// it): a worker still running it is killed and restarted; a job still queued is skipped.
struct InvocationGuard {
    request_id: String,
    shared: Arc<Shared>,
    given_up: Arc<std::sync::atomic::AtomicBool>,
    finished: bool,
}

impl Drop for InvocationGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut jobs = lock(&self.shared.jobs);
        match jobs.running.remove(&self.request_id) {
            Some((slot, _)) => self.shared.kill[slot].notify_one(),
            None => self.given_up.store(true, std::sync::atomic::Ordering::SeqCst),
        }
    }
}

pub struct RuntimeApiTarget {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    /// Longest wait for a free worker before the batch counts as throttled.
    max_wait: Duration,
    /// The worker supervisors; they end after [`RuntimeApiTarget::stop`].
    supervisors: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The Runtime API listeners; they end when the target is dropped.
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

/// How the workers of a target run.
pub struct Settings {
    pub workers: usize,
    /// Longest wait for a free worker before the batch counts as throttled.
    pub max_wait: Duration,
    /// The function's timeout (`timeout_secs`).
    pub function_timeout: Duration,
    /// `sqs_poller_worker_output_overflows_total` of the pipeline.
    pub overflows: metrics::Counter,
}

/// What starts a worker process.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub program: String,
    pub args: Vec<String>,
    pub handler: Option<String>,
    pub function_name: String,
    pub region: String,
}

impl RuntimeApiTarget {
    /// Binds one loopback listener per worker and starts the workers. A batch that no worker
    /// takes within `settings.max_wait` comes back as throttled.
    ///
    /// # Errors
    /// When a loopback port cannot be bound.
    pub async fn start(command: WorkerCommand, settings: Settings) -> std::io::Result<Self> {
        let workers = settings.workers.max(1);
        let (jobs, queue) = mpsc::channel(workers * 2);
        let shared = Arc::new(Shared {
            queue: tokio::sync::Mutex::new(queue),
            jobs: Mutex::new(Jobs::default()),
            kill: (0..workers).map(|_| tokio::sync::Notify::new()).collect(),
            function_arn: format!("arn:aws:lambda:{}:000000000000:function:{}", command.region, command.function_name),
            overflows: settings.overflows,
            stopping: CancellationToken::new(),
            stop_grace: Mutex::new(Duration::ZERO),
        });
        let limits = Limits {
            max_connections: CONNECTIONS_PER_WORKER,
            header_read_timeout: settings.function_timeout + Duration::from_secs(30),
            max_connection_life: None,
        };
        let (mut listeners, mut supervisors) = (Vec::new(), Vec::new());
        for slot in 0..workers {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            listeners.push(tokio::spawn(serve(listener, limits, slot, shared.clone())));
            supervisors.push(tokio::spawn(supervise(command.clone(), slot, addr.to_string(), shared.clone())));
        }
        Ok(RuntimeApiTarget {
            jobs,
            shared,
            max_wait: settings.max_wait,
            supervisors: tokio::sync::Mutex::new(supervisors),
            listeners,
        })
    }

    /// Stops the workers: SIGTERM to each, SIGKILL to those still running after `grace`; returns
    /// when all are gone. Called once the pipeline has drained (no batch is running).
    pub async fn stop(&self, grace: Duration) {
        *lock(&self.shared.stop_grace) = grace;
        self.shared.stopping.cancel();
        for supervisor in self.supervisors.lock().await.drain(..) {
            if let Err(e) = supervisor.await {
                tracing::error!(error = %e, "a runtime-api worker supervisor failed");
            }
        }
    }

    /// Runs one event on the next free worker; `timeout` runs from when a worker takes it.
    pub async fn invoke(&self, event: Bytes, timeout: Duration, trace: Option<&crate::trace::Trace>) -> Invocation {
        let (done, result) = oneshot::channel();
        let (taken, was_taken) = oneshot::channel();
        let id = request_id();
        let given_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut guard = InvocationGuard {
            request_id: id.clone(),
            shared: self.shared.clone(),
            given_up: given_up.clone(),
            finished: false,
        };
        let job = Job { request_id: id, event, timeout, trace: trace.map(|t| t.header.clone()), taken, done, given_up };
        let queued = async {
            self.jobs.send(job).await.map_err(|_| ())?;
            was_taken.await.map_err(|_| ())
        };
        match tokio::time::timeout(self.max_wait, queued).await {
            Ok(Ok(())) => {}
            Ok(Err(())) => {
                guard.finished = true;
                return Invocation::unavailable("the runtime-api workers are gone");
            }
            // the guard marks the job abandoned, so no worker takes it later
            Err(_) => {
                return Invocation::Throttled(format!(
                    "no runtime-api worker took the batch within {} s",
                    self.max_wait.as_secs()
                ))
            }
        }
        let outcome = match tokio::time::timeout(timeout, result).await {
            Ok(r) => {
                r.unwrap_or_else(|_| Invocation::FunctionError("the invocation was dropped by its worker".to_string()))
            }
            // dropping the guard kills the worker, as Lambda ends a timed-out function
            Err(_) => return Invocation::unavailable(format!("timed out after {} s", timeout.as_secs())),
        };
        guard.finished = true;
        outcome
    }
}

impl Drop for RuntimeApiTarget {
    /// Without [`RuntimeApiTarget::stop`] (a fatal error): the workers are dropped with their
    /// supervisors, which ends them too (SIGTERM, then SIGKILL).
    fn drop(&mut self) {
        for t in self.listeners.iter().chain(self.supervisors.get_mut().iter()) {
            t.abort();
        }
    }
}

fn request_id() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        fastrand::u16(0x8000..0xc000),
        fastrand::u64(..1 << 48)
    )
}

/// Keeps one worker process running; fails its batch and restarts it when it exits; stops it
/// when the target stops.
async fn supervise(command: WorkerCommand, slot: usize, runtime_api: String, shared: Arc<Shared>) {
    let mut restarts = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !shared.stopping.is_cancelled() {
        let mut cmd = tokio::process::Command::new(&command.program);
        cmd.args(&command.args)
            .env("AWS_LAMBDA_RUNTIME_API", &runtime_api)
            .env("AWS_LAMBDA_FUNCTION_NAME", &command.function_name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_REGION", &command.region)
            .env("AWS_DEFAULT_REGION", &command.region)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        if let Some(h) = &command.handler {
            cmd.env("_HANDLER", h);
        }
        let started = std::time::Instant::now();
        let status = match WorkerProcess::spawn(&mut cmd) {
            Ok(mut worker) => tokio::select! {
                s = worker.wait() => s.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                () = shared.kill[slot].notified() => {
                    // as Lambda ends a timed-out function: no grace
                    worker.stop(Duration::ZERO).await;
                    "killed: its batch timed out".to_string()
                }
                () = shared.stopping.cancelled() => {
                    let grace = *lock(&shared.stop_grace);
                    match worker.stop(grace).await {
                        Stopped::Exited(status) => {
                            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                            tracing::info!(worker = slot, %status, "runtime-api worker stopped");
                        }
                        Stopped::Killed => tracing::warn!(
                            worker = slot,
                            grace_ms = grace.as_millis() as u64,
                            "runtime-api worker did not stop within its grace time after SIGTERM; killed"
                        ),
                    }
                    fail_running(&shared, slot, "was stopped");
                    return;
                }
            },
            Err(e) => format!("cannot start `{}`: {e}", command.program),
        };
        fail_running(&shared, slot, &format!("exited ({status})"));
        // a worker that ran for a while before it ended starts over from the shortest pause
        if started.elapsed() > Duration::from_secs(30) {
            restarts.reset();
        }
        let pause = restarts.next_delay();
        tracing::warn!(worker = slot, status = %status, restart_in_ms = pause.as_millis() as u64, "runtime-api worker exited; restarting");
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shared.stopping.cancelled() => {}
        }
    }
}

/// Fails whatever worker `slot` was running: it `what` (exited, was stopped) during the batch.
fn fail_running(shared: &Shared, slot: usize, what: &str) {
    let orphaned: Vec<oneshot::Sender<Invocation>> = {
        let running = &mut lock(&shared.jobs).running;
        let ids: Vec<String> = running.iter().filter(|(_, (s, _))| *s == slot).map(|(id, _)| id.clone()).collect();
        ids.into_iter().filter_map(|id| running.remove(&id).map(|(_, tx)| tx)).collect()
    };
    for tx in orphaned {
        let _ = tx.send(Invocation::FunctionError(format!("runtime-api worker {slot} {what} during the batch")));
    }
}

/// The Runtime API for one worker slot.
async fn serve(listener: tokio::net::TcpListener, limits: Limits, slot: usize, shared: Arc<Shared>) {
    let stop = CancellationToken::new(); // the listener ends when the target is dropped
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(req, slot, &shared).await) }
    });
    serve_connections(listener, limits, "runtime-api", service, stop).await;
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response")
}

async fn route(req: Request<hyper::body::Incoming>, slot: usize, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["2018-06-01", "runtime", "invocation", "next"]) => next_invocation(slot, shared).await,
        (Method::POST, ["2018-06-01", "runtime", "invocation", id, outcome @ ("response" | "error")]) => {
            invocation_result(req, id, *outcome == "response", shared).await
        }
        (Method::POST, ["2018-06-01", "runtime", "init", "error"]) => {
            let body =
                Limited::new(req.into_body(), 64 * 1024).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            tracing::error!(worker = slot, error = %String::from_utf8_lossy(&body), "runtime-api worker failed to initialize");
            reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
        }
        _ => reply(StatusCode::NOT_FOUND, r#"{"errorMessage":"not a Runtime API path"}"#),
    }
}

/// `GET .../invocation/next`: the next batch for the worker in `slot`, waiting until there is one.
async fn next_invocation(slot: usize, shared: &Shared) -> Response<Full<Bytes>> {
    let (job, deadline_ms) = {
        let mut queue = shared.queue.lock().await;
        loop {
            let Some(job) = queue.recv().await else {
                return reply(StatusCode::GONE, r#"{"errorMessage":"shutting down"}"#);
            };
            let mut jobs = lock(&shared.jobs);
            // given up on while it waited (by its caller, under this lock): skip it
            if job.given_up.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            let Job { request_id, event, timeout, trace, taken, done, .. } = job;
            if taken.send(()).is_err() {
                continue;
            }
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            jobs.running.insert(request_id.clone(), (slot, done));
            break ((request_id, event, trace), now_ms + timeout.as_millis() as u64);
        }
    };
    let (request_id, event, trace) = job;
    // as Lambda: the message's trace header, else a fresh unsampled root
    let trace = trace
        .unwrap_or_else(|| format!("Root=1-{:08x}-{:024x};Sampled=0", deadline_ms / 1000, fastrand::u128(..1 << 96)));
    Response::builder()
        .header("content-type", "application/json")
        .header("Lambda-Runtime-Aws-Request-Id", &request_id)
        .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
        .header("Lambda-Runtime-Invoked-Function-Arn", &shared.function_arn)
        .header("Lambda-Runtime-Trace-Id", trace)
        .body(Full::new(event))
        .expect("valid headers")
}

/// `POST .../invocation/{id}/response` or `/error`: the worker's answer for batch `id`, read up
/// to Lambda's response limit.
async fn invocation_result(
    req: Request<hyper::body::Incoming>,
    id: &str,
    is_response: bool,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_OUTPUT).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            // the batch fails now rather than wait for its timeout
            if let Some((_, done)) = lock(&shared.jobs).running.remove(id) {
                shared.overflows.increment(1);
                let _ = done.send(Invocation::FunctionError(
                    "the function's response is more than 6 MiB (Lambda's response limit)".to_string(),
                ));
            }
            return reply(StatusCode::PAYLOAD_TOO_LARGE, r#"{"errorMessage":"payload too large"}"#);
        }
    };
    let waiting = lock(&shared.jobs).running.remove(id);
    let Some((_, done)) = waiting else {
        return reply(StatusCode::BAD_REQUEST, r#"{"errorMessage":"unknown request id"}"#);
    };
    let result = if is_response {
        Invocation::Response(body)
    } else {
        let excerpt = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        Invocation::FunctionError(format!("function error: {excerpt}"))
    };
    // the batch may have timed out meanwhile; nobody to tell then
    let _ = done.send(result);
    reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Issue 34: whatever a worker process sends to the Runtime API — any method, path, headers
    /// and body, cut anywhere — it answers with an HTTP status (or closes the connection),
    /// never a panic, and keeps answering well-formed requests afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_runtime_api_requests_are_answered_and_the_api_stays_up() {
        let dir = tempfile::tempdir().unwrap();
        let address_file = dir.path().join("address");
        // a worker that never asks for work: it writes where the API is and waits
        let script = format!("echo \"$AWS_LAMBDA_RUNTIME_API\" > {}; exec sleep 120", address_file.display());
        let command = WorkerCommand {
            program: "sh".into(),
            args: vec!["-c".into(), script],
            handler: None,
            function_name: "fuzz".into(),
            region: "us-east-1".into(),
        };
        let settings = Settings {
            workers: 1,
            max_wait: Duration::from_secs(1),
            function_timeout: Duration::from_secs(5),
            overflows: metrics::Counter::noop(),
        };
        let target = RuntimeApiTarget::start(command, settings).await.unwrap();
        let address = loop {
            match std::fs::read_to_string(&address_file) {
                Ok(a) if a.ends_with('\n') => break a.trim().to_string(),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let samples: [&[u8]; 3] = [
            b"POST /2018-06-01/runtime/invocation/abc/response HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
            b"POST /2018-06-01/runtime/init/error HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"POST /2018-06-01/runtime/invocation/abc/error HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nerror",
        ];
        let ask = |request: Vec<u8>| {
            let address = address.clone();
            async move {
                let mut tcp = tokio::net::TcpStream::connect(&address).await.expect("the Runtime API listens");
                let _ = tcp.write_all(&request).await;
                // the end of the request (hyper may then close without answering: also fine)
                let _ = tcp.shutdown().await;
                let mut answer = Vec::new();
                // an answer, or the connection closed (a malformed request); never a hang
                let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
                (read.is_ok(), String::from_utf8_lossy(&answer).into_owned())
            }
        };
        let start = fastrand::u64(..);
        for seed in start..start + 400 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let sample = samples[rng.usize(0..samples.len())];
            let request = crate::fuzz::mutate(&mut rng, sample);
            let (answered, answer) = ask(request).await;
            assert!(answered, "seed {seed}: no answer and no close within 5 s");
            assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 "), "seed {seed}: not HTTP: {answer:?}");
        }
        // still up: a well-formed request for an unknown batch is refused as such (asked without
        // closing the sending side, which lets hyper close before it answers)
        let mut tcp = tokio::net::TcpStream::connect(&address).await.expect("the Runtime API still listens");
        tcp.write_all(samples[0]).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while !String::from_utf8_lossy(&answer).contains("unknown request id") {
                if tcp.read_buf(&mut answer).await.unwrap_or(0) == 0 {
                    break;
                }
            }
        });
        let _ = read.await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("unknown request id"), "{answer}");
        target.stop(Duration::from_millis(100)).await;
    }
}
