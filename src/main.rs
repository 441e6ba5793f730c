//! The `sqs-poller` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sqs_poller::config::{self, Config};
use sqs_poller::shutdown::{self, Shutdown};

#[derive(Parser)]
#[command(
    name = "sqs-poller",
    version,
    about = "Self-hosted, high-throughput SQS poller: Lambda's SQS event source mapping as a sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file [default: $SQS_POLLER_CONFIG, then config/poller.toml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default)
    Run,
    /// Validate the configuration file and print the resolved pipelines
    Check,
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
    /// Look into a dead-letter queue
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
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

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("SQS_POLLER_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config/poller.toml"))
}

/// Gives the memory of settled messages back to the system once a second. glibc serves
/// allocations from 128 KiB up with `mmap` at first, but raises that threshold to the size of
/// every such block freed (up to 32 MiB): after the first large message is settled, bodies,
/// records and receive answers come from the heap, and the holes they leave between live
/// messages stay resident. `malloc_trim(0)` hands the free pages inside the heap back
/// (`MADV_DONTNEED`); it walks the free chunks under the arenas' locks, a fraction of a
/// millisecond at 1 Hz. Measured (`scripts/profile/large_bodies.sh`, bench/RESULTS.md) against
/// fixing the threshold at 128 KiB, which bounded memory as well but made every large block a
/// fresh `mmap` (256 KiB messages: 1.73× the bare SDK loop's CPU per message against 1.23×).
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            // SAFETY: malloc_trim only returns free memory to the system
            unsafe {
                libc::malloc_trim(0);
            }
        })
        .map(drop)
        .unwrap_or_else(|e| tracing::warn!(error = %e, "cannot start the thread that gives freed memory back"));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = config_path(&cli);
    match &cli.command {
        Some(Command::TestPattern { patterns }) => return test_pattern(patterns),
        Some(Command::Dlq { command: DlqCommand::Stats { queue, samples, endpoint_url, region } }) => {
            return match aws_for(&cli, &path, endpoint_url, region) {
                Ok(aws) => dlq_stats(aws, queue, *samples),
                Err(code) => code,
            };
        }
        Some(Command::Redrive { from, to, limit, patterns, rate, endpoint_url, region }) => {
            let filter = match sqs_poller::filter::Filter::compile(patterns) {
                Ok(f) => (!f.is_empty()).then_some(f),
                Err((i, e)) => {
                    eprintln!("--pattern #{}: invalid pattern: {e}", i + 1);
                    return ExitCode::from(2);
                }
            };
            let options = sqs_poller::redrive::RedriveOptions { limit: *limit, filter, rate: *rate };
            return match aws_for(&cli, &path, endpoint_url, region) {
                Ok(aws) => redrive(aws, from, to, &options),
                Err(code) => code,
            };
        }
        Some(Command::Run | Command::Check) | None => {}
    }
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("configuration error: {} problem(s) in {}", e.problems().len().max(1), path.display());
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Some(Command::Check)) {
        // a closed pipe (`check | head`) is not an error worth a panic
        let resolved = sqs_poller::check::Resolved { path: &path, config: &config }.to_string();
        let _ = std::io::Write::write_all(&mut std::io::stdout(), resolved.as_bytes());
        return ExitCode::SUCCESS;
    }
    run(config, path)
}

/// The AWS settings of the tools (`redrive`, `dlq stats`): the configuration file's [aws]
/// section when there is a file (it is optional here), then the command line's.
fn aws_for(
    cli: &Cli,
    path: &std::path::Path,
    endpoint_url: &Option<String>,
    region: &Option<String>,
) -> Result<config::AwsConfig, ExitCode> {
    let mut aws = match (cli.config.is_some() || path.exists()).then(|| config::load(path)) {
        Some(Ok(c)) => c.aws,
        Some(Err(e)) => {
            eprintln!("{e}");
            return Err(ExitCode::from(2));
        }
        None => config::AwsConfig::default(),
    };
    if endpoint_url.is_some() {
        aws.sqs_endpoint_url = endpoint_url.clone();
    }
    if region.is_some() {
        aws.region = region.clone();
    }
    Ok(aws)
}

fn dlq_stats(aws: config::AwsConfig, queue: &str, samples: usize) -> ExitCode {
    init_logs();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let result = runtime.block_on(async {
        let clients = sqs_poller::sqs::SqsClients::new(&sqs_poller::aws::Aws::load(&aws).await?).await?;
        anyhow::Ok(sqs_poller::dlq::stats(&clients, queue, samples).await?)
    });
    match result {
        Ok(tally) => {
            print!("{}", tally.render(queue));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sqs-poller dlq stats: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn redrive(aws: config::AwsConfig, from: &str, to: &str, options: &sqs_poller::redrive::RedriveOptions) -> ExitCode {
    init_logs();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = runtime.block_on(async {
        let clients = sqs_poller::sqs::SqsClients::new(&sqs_poller::aws::Aws::load(&aws).await?).await?;
        let started = std::time::Instant::now();
        // plain lines at most once a second: a large dead-letter queue moves 10 messages per call
        let mut last = std::time::Instant::now();
        let report = sqs_poller::redrive::redrive(&clients, from, to, options, &mut |r| {
            if terminal || last.elapsed() >= std::time::Duration::from_secs(1) {
                last = std::time::Instant::now();
                eprint!("{}", sqs_poller::redrive::progress_line(&r, started, terminal));
            }
        })
        .await?;
        // the final figures (on a terminal, over the last progress line, then a newline)
        let last = sqs_poller::redrive::progress_line(&report, started, terminal);
        if terminal {
            eprintln!("{last}");
        } else {
            eprint!("{last}");
        }
        anyhow::Ok(report)
    });
    match result {
        Ok(r) => {
            println!(
                "moved {} messages from {from} to {to}{}",
                r.moved,
                if r.failed > 0 { format!(" ({} failed and stay in the source)", r.failed) } else { String::new() }
            );
            if r.failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("sqs-poller redrive: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `test-pattern`: exit 2 on an invalid pattern, 1 if a line was not a JSON object, else 0.
fn test_pattern(patterns: &[String]) -> ExitCode {
    use std::io::Write;
    let filter = match sqs_poller::filter::Filter::compile(patterns) {
        Ok(f) => f,
        Err((i, e)) => {
            eprintln!("--pattern #{}: invalid pattern: {e}", i + 1);
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let bad_lines = filter.verdicts(std::io::stdin().lock(), &mut out, &mut std::io::stderr());
    let _ = out.flush();
    if bad_lines > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`); `SQS_POLLER_LOG_FORMAT=json`
/// writes one JSON object per line (for CloudWatch Logs Insights and the like).
fn init_logs() {
    // aws-config logs every credentials load at info ("loaded base credentials"): those belong
    // at debug, unless RUST_LOG asks for aws_config by name
    let mut directives =
        std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "info".into());
    if !directives.contains("aws_config") {
        directives.push_str(",aws_config=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aws_config=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("SQS_POLLER_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}

fn run(config: Config, path: std::path::PathBuf) -> ExitCode {
    init_logs();
    give_back_freed_memory();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let grace = config.grace_period;
    sqs_poller::descriptors::raise_for(&config);
    let result = runtime.block_on(async move {
        let reloads =
            sqs_poller::supervisor::Reloads { requests: shutdown::reload_requests(path.display().to_string()), path };
        let shutdown = Shutdown::default();
        shutdown::on_signals(shutdown.clone(), grace, sqs_poller::dispatch::worker_process::kill_remaining);
        sqs_poller::run(config, shutdown, Some(reloads)).await
    });
    // worker processes that outlived their pipeline (a fatal error) go with the service
    sqs_poller::dispatch::worker_process::kill_remaining();
    match result {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sqs-poller: {e:#}");
            ExitCode::FAILURE
        }
    }
}
