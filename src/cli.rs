//! The command line's words: subcommands, flags and their help (clap), and where the
//! configuration file is looked for.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sqs-poller",
    version,
    about = "Self-hosted, high-throughput SQS poller: Lambda's SQS event source mapping as a sidecar"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration file [default: $SQS_POLLER_CONFIG, then config/poller.toml when it exists,
    /// then /etc/sqs-poller/poller.toml]
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Log lines as text, or as one JSON object per line (for CloudWatch Logs Insights, Loki and
    /// the like); logs go to stderr, filtered by RUST_LOG (default info)
    #[arg(long, global = true, value_enum, env = "SQS_POLLER_LOG_FORMAT", ignore_case = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the service (the default)
    Run,
    /// Validate the configuration file and print the resolved pipelines
    Check,
    /// Exit 0 when the running service's /healthz answers 200 (a container's HEALTHCHECK, without
    /// curl); the address is server.listen of --config unless --url names it
    Healthcheck {
        /// The health endpoint [default: http://127.0.0.1:PORT/healthz, PORT from server.listen]
        #[arg(long)]
        url: Option<String>,
    },
    /// Try filter patterns offline: Lambda SQS records on stdin (one JSON object per line);
    /// prints `match` or `no-match` per line
    TestPattern {
        /// An EventBridge pattern (JSON); repeat for several (a record matches when any does)
        #[arg(long = "pattern", required = true)]
        patterns: Vec<String>,
    },
    /// Move messages from a dead-letter queue back to a queue (the body and attributes kept)
    Redrive {
        /// The queue to take messages from (usually a dead-letter queue)
        #[arg(long)]
        from: String,
        /// The queue to put them in
        #[arg(long)]
        to: String,
        /// Move at most this many messages
        #[arg(long)]
        limit: Option<u64>,
        /// Move only messages whose Lambda record matches this EventBridge pattern (JSON); repeat
        /// for several (any matches); the others stay in the source
        #[arg(long = "pattern")]
        patterns: Vec<String>,
        /// Messages per second at most
        #[arg(long)]
        rate: Option<u32>,
        /// SQS endpoint (for local emulators); default: the [aws] section of --config when that
        /// file exists, then the standard AWS configuration
        #[arg(long)]
        endpoint_url: Option<String>,
        /// AWS region; default as for --endpoint-url
        #[arg(long)]
        region: Option<String>,
    },
    /// Write the pipelines equivalent to Lambda SQS event source mappings: the output of
    /// `aws lambda get-event-source-mapping` (or `list-event-source-mappings`), or a
    /// CloudFormation/SAM template; every setting that could not be carried over is named
    ImportEsm {
        /// The mapping or template (JSON or YAML) [default: stdin]
        file: Option<PathBuf>,
        /// Write the configuration here [default: stdout]
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Look into a dead-letter queue
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Count what a dead-letter queue holds (by reason, pipeline, age, receives) and show a few
    /// samples, without consuming it: every message is made visible again
    Stats {
        /// The dead-letter queue
        #[arg(long)]
        queue: String,
        /// How many messages to show
        #[arg(long, default_value_t = 3)]
        samples: usize,
        /// SQS endpoint (for local emulators); default as for `redrive`
        #[arg(long)]
        endpoint_url: Option<String>,
        /// AWS region; default as for `redrive`
        #[arg(long)]
        region: Option<String>,
    },
}

/// Where the configuration is: `--config`, then `$SQS_POLLER_CONFIG`, then `config/poller.toml`
/// when it exists (a checkout), then `/etc/sqs-poller/poller.toml` (the container image).
pub fn config_path(cli: &Cli) -> PathBuf {
    let local = PathBuf::from("config/poller.toml");
    cli.config.clone().or_else(|| std::env::var_os("SQS_POLLER_CONFIG").map(PathBuf::from)).unwrap_or_else(|| {
        if local.exists() {
            local
        } else {
            PathBuf::from("/etc/sqs-poller/poller.toml")
        }
    })
}
