//! The `command` target: run `program args…` once per batch with the event on stdin; what it
//! prints on stdout is its result (optional). Exit code 0 means the function ran; anything else
//! fails the batch. stderr goes to the service's own stderr, so worker logs land in the same
//! log stream. A command that outlives its timeout is killed (`kill_on_drop`).

use std::process::Stdio;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::Invocation;

pub struct CommandTarget {
    program: String,
    args: Vec<String>,
}

impl CommandTarget {
    pub fn new(program: &str, args: &[String]) -> Self {
        CommandTarget { program: program.to_string(), args: args.to_vec() }
    }

    pub async fn invoke(&self, event: Bytes) -> Invocation {
        let mut child = match Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return Invocation::FunctionError(format!("cannot start `{}`: {e}", self.program)),
        };
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let feed = async move {
            // a command that does not read its input is allowed: ignore a broken pipe
            let _ = stdin.write_all(&event).await;
            drop(stdin);
        };
        let (_, output) = tokio::join!(feed, child.wait_with_output());
        match output {
            Ok(out) if out.status.success() => Invocation::Response(Bytes::from(out.stdout)),
            Ok(out) => Invocation::FunctionError(format!("`{}` exited with {}", self.program, out.status)),
            Err(e) => Invocation::FunctionError(format!("`{}` failed: {e}", self.program)),
        }
    }
}
