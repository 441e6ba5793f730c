//! The `command` target: run `program args…` once per batch with the event on stdin; what it
//! prints on stdout is its result (optional). Exit code 0 means the function ran; anything else
//! fails the batch. stderr goes to the service's own stderr, so worker logs land in the same
//! log stream.
//!
//! The command is a [`WorkerProcess`]: in a process group of its own (Ctrl-C drains it instead
//! of killing it), ended with its children when its batch times out or is given up, and its
//! stdout is read up to 6 MiB (Lambda's response limit): a command that writes more fails its
//! batch at once, counted in `sqs_poller_worker_output_overflows_total`.

use std::process::Stdio;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::worker_process::{read_capped, WorkerProcess, MAX_OUTPUT};
use super::Invocation;
use crate::trace::TraceContext;

pub struct CommandTarget {
    program: String,
    args: Vec<String>,
    overflows: metrics::Counter,
}

impl CommandTarget {
    pub fn new(program: &str, args: &[String], overflows: metrics::Counter) -> Self {
        CommandTarget { program: program.to_string(), args: args.to_vec(), overflows }
    }

    /// Runs the command for one event; a trace goes in `_X_AMZN_TRACE_ID` and `TRACEPARENT`.
    pub async fn invoke(&self, event: Bytes, trace: &TraceContext) -> Invocation {
        let mut command = Command::new(&self.program);
        command.args(&self.args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        if let Some(t) = &trace.xray {
            command.env("_X_AMZN_TRACE_ID", &t.header);
        }
        if let Some(t) = &trace.traceparent {
            command.env("TRACEPARENT", t);
        }
        // dropped with this future (timeout, shutdown): SIGTERM, then SIGKILL, to its whole group
        let mut process = match WorkerProcess::spawn(&mut command) {
            Ok(p) => p,
            Err(e) => return Invocation::FunctionError(format!("cannot start `{}`: {e}", self.program)),
        };
        let child = process.child_mut();
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let feed = async move {
            // a command that does not read its input is allowed: ignore a broken pipe
            let _ = stdin.write_all(&event).await;
            drop(stdin);
        };
        let (output, ()) = tokio::join!(read_capped(stdout, MAX_OUTPUT), feed);
        let Ok(output) = output else {
            self.overflows.increment(1);
            return Invocation::FunctionError(format!(
                "`{}` wrote more than 6 MiB to stdout (Lambda's response limit); it was stopped",
                self.program
            ));
        };
        match process.wait().await {
            Ok(status) if status.success() => Invocation::Response(Bytes::from(output)),
            Ok(status) => Invocation::FunctionError(format!("`{}` exited with {status}", self.program)),
            Err(e) => Invocation::FunctionError(format!("`{}` failed: {e}", self.program)),
        }
    }
}
