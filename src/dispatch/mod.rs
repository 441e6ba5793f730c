//! Dispatch: one call of the target per batch, and what its answer means.
//!
//! A target receives Lambda's SQS event and answers the way a Lambda function does. The
//! transport differs per target (one file each); the reading of the answer
//! ([`response::interpret`]) is shared. Timeouts are applied by the caller around
//! [`Target::invoke`], so a target only needs to be cancel-safe (a dropped command is killed).

pub mod command;
pub mod http;
pub mod lambda;
pub mod response;
pub mod runtime_api;

use bytes::Bytes;

use crate::config::{TargetConfig, TargetKind};

/// What a target did with an event, before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// The function ran; this is what it returned (read with the `batchItemFailures` rules).
    Response(Bytes),
    /// The function failed as a whole (error status, non-zero exit, unreachable): every message
    /// of the batch failed.
    FunctionError(String),
    /// The target asked to slow down (HTTP 429/503): the batch is tried again later and its
    /// messages are not counted as failed.
    Throttled(String),
}

/// A configured target. One per pipeline, so the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Target {
    Http(http::HttpTarget),
    Command(command::CommandTarget),
    Lambda(lambda::LambdaTarget),
    RuntimeApi(runtime_api::RuntimeApiTarget),
}

impl Target {
    /// Sets a target up: `lambda` is the Lambda client (for `lambda` targets), `pipeline` and
    /// `region` name the function for `runtime-api` workers, which start here.
    ///
    /// # Errors
    /// When the Runtime API cannot bind a loopback port.
    pub async fn new(
        cfg: &TargetConfig,
        lambda: &aws_sdk_lambda::Client,
        pipeline: &str,
        region: &str,
    ) -> std::io::Result<Self> {
        Ok(match &cfg.kind {
            TargetKind::Http { url } => Target::Http(http::HttpTarget::new(url)),
            TargetKind::Command { program, args } => Target::Command(command::CommandTarget::new(program, args)),
            TargetKind::Lambda { function_name, qualifier } => {
                Target::Lambda(lambda::LambdaTarget::new(lambda.clone(), function_name, qualifier.as_deref()))
            }
            TargetKind::RuntimeApi { program, args, workers, handler } => {
                let command = runtime_api::WorkerCommand {
                    program: program.clone(),
                    args: args.clone(),
                    handler: handler.clone(),
                    function_name: pipeline.to_string(),
                    region: region.to_string(),
                };
                Target::RuntimeApi(runtime_api::RuntimeApiTarget::start(command, *workers, cfg.timeout).await?)
            }
        })
    }

    /// Sends one event (`{"Records":[…]}`) to the target.
    pub async fn invoke(&self, event: Bytes) -> Invocation {
        match self {
            Target::Http(t) => t.invoke(event).await,
            Target::Command(t) => t.invoke(event).await,
            Target::Lambda(t) => t.invoke(event).await,
            Target::RuntimeApi(t) => t.invoke(event).await,
        }
    }
}
