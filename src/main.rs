//! The `sqs-poller` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sqs_poller::config::{self, Config, TargetKind};
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
    if let Some(Command::TestPattern { patterns }) = &cli.command {
        return test_pattern(patterns);
    }
    let aws_for = |endpoint_url: &Option<String>, region: &Option<String>| -> Result<config::AwsConfig, ExitCode> {
        // the configuration file is optional here: it only lends its [aws] section
        let mut aws = match (cli.config.is_some() || path.exists()).then(|| config::load(&path)) {
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
    };
    if let Some(Command::Dlq { command: DlqCommand::Stats { queue, samples, endpoint_url, region } }) = &cli.command {
        return match aws_for(endpoint_url, region) {
            Ok(aws) => dlq_stats(aws, queue, *samples),
            Err(code) => code,
        };
    }
    if let Some(Command::Redrive { from, to, limit, patterns, rate, endpoint_url, region }) = &cli.command {
        let filter = match sqs_poller::filter::Filter::compile(patterns) {
            Ok(f) => (!f.is_empty()).then_some(f),
            Err((i, e)) => {
                eprintln!("--pattern #{}: invalid pattern: {e}", i + 1);
                return ExitCode::from(2);
            }
        };
        let options = sqs_poller::redrive::RedriveOptions { limit: *limit, filter, rate: *rate };
        return match aws_for(endpoint_url, region) {
            Ok(aws) => redrive(aws, from, to, &options),
            Err(code) => code,
        };
    }
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("configuration error: {} problem(s) in {}", e.problems().len().max(1), path.display());
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            print_resolved(&path, &config);
            ExitCode::SUCCESS
        }
        Command::Run => run(config, path),
        Command::Redrive { .. } | Command::TestPattern { .. } | Command::Dlq { .. } => unreachable!("handled above"),
    }
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

/// One progress line: on a terminal it rewrites itself (with rate and ETA); otherwise a plain
/// line at most once a second.
fn redrive_progress(r: &sqs_poller::redrive::RedriveReport, started: std::time::Instant, terminal: bool) -> String {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let rate = r.moved as f64 / secs;
    let left = r.expected.saturating_sub(r.moved + r.failed + r.skipped);
    let eta = if rate > 0.0 && left > 0 { format!(", about {:.0} s left", left as f64 / rate) } else { String::new() };
    let skipped = if r.skipped > 0 { format!(", {} not matching", r.skipped) } else { String::new() };
    let line = format!("redrive: {} moved, {} failed{skipped} ({rate:.0}/s{eta})", r.moved, r.failed);
    if terminal {
        // a bar when the queue's size is known
        let done = r.moved + r.failed + r.skipped;
        let line = match (done.min(r.expected) * 24).checked_div(r.expected) {
            Some(filled) => {
                let filled = filled as usize;
                format!("[{}{}] {line}", "#".repeat(filled), ".".repeat(24 - filled))
            }
            None => line,
        };
        format!("\r{line}\x1b[K")
    } else {
        line + "\n"
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
                eprint!("{}", redrive_progress(&r, started, terminal));
            }
        })
        .await?;
        // the final figures (on a terminal, over the last progress line, then a newline)
        let last = redrive_progress(&report, started, terminal);
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
    use std::io::{BufRead, Write};
    let filter = match sqs_poller::filter::Filter::compile(patterns) {
        Ok(f) => f,
        Err((i, e)) => {
            eprintln!("--pattern #{}: invalid pattern: {e}", i + 1);
            return ExitCode::from(2);
        }
    };
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut bad_lines = 0;
    for (n, line) in stdin.lock().lines().enumerate() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let verdict = match serde_json::from_str::<serde_json::Value>(&line) {
            // the service's own path: only what the patterns name is built
            Ok(serde_json::Value::Object(_)) => {
                if filter.matches_json(&line).unwrap_or(false) {
                    "match"
                } else {
                    "no-match"
                }
            }
            Ok(_) => {
                eprintln!("line {}: not a JSON object (expected a Lambda SQS record)", n + 1);
                bad_lines += 1;
                "error"
            }
            Err(e) => {
                eprintln!("line {}: not valid JSON: {e}", n + 1);
                bad_lines += 1;
                "error"
            }
        };
        if writeln!(out, "{verdict}").is_err() {
            break;
        }
    }
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
    check_open_file_limit(&config);
    let result = runtime.block_on(async move {
        // SIGHUP reloads the configuration (its default action would end the process)
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(mut hangups) => {
                    let file = path.display().to_string();
                    tokio::spawn(async move {
                        while hangups.recv().await.is_some() {
                            tracing::info!(%file, "SIGHUP: reloading the configuration");
                            if reload_tx.send(()).is_err() {
                                return;
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP; configuration reloads are off"),
            }
        }
        let reloads = sqs_poller::supervisor::Reloads { path, requests: reload_rx };
        let shutdown = Shutdown::default();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                shutdown::signal().await;
                shutdown.begin(grace);
                tokio::select! {
                    // the operator says "now": give up the batches in flight and release
                    // everything outstanding (receives in flight still return first, at most
                    // wait_time_secs, so that nothing they took is left hidden)
                    () = shutdown::signal() => {
                        tracing::warn!("second signal: releasing everything outstanding now");
                        shutdown.abandon_now();
                    }
                    // the drain is bounded by the grace period; this only guards against a hang
                    () = tokio::time::sleep(grace + Duration::from_secs(2)) => {
                        tracing::error!("drain did not finish within the grace period; exiting");
                        sqs_poller::dispatch::worker_process::kill_remaining();
                        std::process::exit(1);
                    }
                }
                tokio::time::sleep(grace + Duration::from_secs(2)).await;
                tracing::error!("drain did not finish within the grace period; exiting");
                sqs_poller::dispatch::worker_process::kill_remaining();
                std::process::exit(1);
            }
        });
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

/// Raises the soft open-file limit to the hard one and warns when that is still below what the
/// configuration may hold open (a connection per poller and per batch in flight).
fn check_open_file_limit(config: &Config) {
    use sqs_poller::descriptors;
    let needed = descriptors::needed(config);
    match descriptors::raise_to_hard_limit() {
        Some(l) => {
            if l.soft > l.soft_before {
                tracing::info!(
                    from = l.soft_before,
                    to = l.soft,
                    needed,
                    "raised the open-file limit to its hard limit"
                );
            }
            if let Some(warning) = descriptors::shortfall(l.soft, needed) {
                tracing::warn!(limit = l.soft, needed, "{warning}");
            }
        }
        None => tracing::warn!(needed, "cannot read the open-file limit (ulimit -n)"),
    }
}

fn print_resolved(path: &std::path::Path, c: &Config) {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let mut out = String::new();
    macro_rules! w {
        ($($arg:tt)*) => {{ let _ = writeln!(out, $($arg)*); }};
    }
    w!("{}: ok", path.display());
    w!(
        "listen {}  admin {}  grace_period {}s",
        c.listen,
        c.admin_listen.map_or_else(|| "off".to_string(), |a| a.to_string()),
        c.grace_period.as_secs()
    );
    if let Some(e) = &c.aws.sqs_endpoint_url {
        w!("sqs endpoint {e}");
    }
    match &c.telemetry {
        // header values are secrets: their names only
        Some(t) => w!(
            "telemetry  OTLP/HTTP {} sample_ratio {} service.name {}{}{}",
            t.traces_url,
            t.sample_ratio,
            t.service_name,
            if t.headers.is_empty() {
                String::new()
            } else {
                format!(" headers {}", t.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(","))
            },
            if t.detect_resources { " (ECS/EC2 resource detection)" } else { "" }
        ),
        None => w!("telemetry  off (no [telemetry] otlp_endpoint)"),
    }
    for p in &c.pipelines {
        w!("pipeline {}", p.name);
        w!("  queue      {}{}", p.queue_url, if p.fifo { " (FIFO)" } else { "" });
        w!(
            "  pollers    min {} max {} wait {}s visibility {}",
            p.pollers.min,
            p.pollers.max,
            p.pollers.wait_time.as_secs(),
            p.pollers.visibility_timeout.map_or("queue default".to_string(), |v| format!("{}s", v.as_secs()))
        );
        w!(
            "  batch      size {} window {}ms max_bytes {}",
            p.batch.size,
            p.batch.window.as_millis(),
            p.batch.max_bytes
        );
        let target = match &p.target.kind {
            TargetKind::Http { url } => format!("http {url}"),
            TargetKind::Command { program, args } => format!("command {program} {}", args.join(" ")),
            TargetKind::RuntimeApi { program, args, workers, handler } => format!(
                "runtime-api {program} {} workers {workers}{}",
                args.join(" "),
                handler.as_ref().map_or(String::new(), |h| format!(" handler {h}"))
            ),
            TargetKind::Lambda { function_name, qualifier } => {
                format!("lambda {function_name}{}", qualifier.as_ref().map_or(String::new(), |q| format!(":{q}")))
            }
        };
        w!(
            "  target     {target} timeout {}s max_concurrency {} rate_limit {} max_throttled {}s",
            p.target.timeout.as_secs(),
            p.target.max_concurrency,
            p.target.rate_limit_per_sec.map_or("none".to_string(), |r| format!("{r}/s")),
            p.target.max_throttled.as_secs()
        );
        if let Some(pool) = &p.target.pool {
            w!(
                "  pool       {} (max_concurrency {}{}) priority {} weight {}",
                pool.name,
                pool.settings.max_concurrency,
                pool.settings.adaptive.map_or(String::new(), |floor| format!(", adaptive from {floor}")),
                pool.priority,
                pool.weight
            );
        }
        if let Some(cap) = p.batch.max_in_flight_per_group {
            w!("  fair share at most {cap} messages of one message group in batches at once");
        }
        let http = &p.target.http;
        if !http.headers.is_empty() {
            let names: Vec<&str> = http.headers.iter().map(|(n, _)| n.as_str()).collect();
            w!("  headers    {} (values not shown)", names.join(", "));
        }
        if let Some(ca) = &http.ca_file {
            w!("  tls        ca_file {}", ca.display());
        }
        if let Some((cert, key)) = &http.client_cert {
            w!("  tls        client_cert_file {} client_key_file {}", cert.display(), key.display());
        }
        if let Some(s) = &http.sigv4 {
            w!("  sigv4      service {} region {}", s.service, s.region.as_deref().unwrap_or("(the AWS region)"));
        }
        if let Some(l) = &p.large_payloads {
            w!(
                "  payloads   S3 extended-client pointers resolved (at most {} bytes, {} at once{})",
                l.max_bytes,
                l.concurrency,
                if l.delete_after_success { ", objects deleted after success" } else { "" }
            );
        }
        if let Some(url) = &p.target.health_url {
            w!("  health     {url} (pollers pause while it fails)");
        }
        w!(
            "  lease      max_outstanding {} max_outstanding_bytes {} ({} MiB) max_lease {}s",
            p.lease.max_outstanding,
            p.lease.max_outstanding_bytes,
            p.lease.max_outstanding_bytes >> 20,
            p.lease.max_lease.as_secs()
        );
        match &p.filter {
            Some(f) if f.on_filtered == config::OnFiltered::Keep => w!(
                "  filter     {} pattern(s), on_filtered keep (back after {}s)",
                f.filter.len(),
                f.keep_delay.as_secs()
            ),
            Some(f) => w!("  filter     {} pattern(s), on_filtered delete", f.filter.len()),
            None => w!("  filter     none (every message passes)"),
        }
        if let Some(warning) = sqs_poller::config::kept_fifo_warning(p) {
            w!("warning: {warning}");
        }
        w!(
            "  retry      backoff {}s..{}s{}",
            p.retry.initial_backoff.as_secs(),
            p.retry.max_backoff.as_secs(),
            if p.retry.bisect { ", a batch that fails as a whole is bisected" } else { "" }
        );
        match &p.dead_letter {
            Some(d) => w!("  dead_letter {} after {} receives", d.queue_url, d.max_receive_count),
            None => w!("  dead_letter none (the queue's own redrive policy applies)"),
        }
    }
    let needed = sqs_poller::descriptors::needed(c);
    match sqs_poller::descriptors::current() {
        Some((soft, hard)) => {
            w!("descriptors up to {needed} at full scale; open-file limit here: soft {soft}, hard {hard} (the soft limit is raised to the hard one at start)");
            if let Some(warning) = sqs_poller::descriptors::shortfall(hard, needed) {
                w!("warning: {warning}");
            }
        }
        None => w!("descriptors up to {needed} at full scale; the open-file limit cannot be read here"),
    }
    // a closed pipe (`check | head`) is not an error worth a panic
    let _ = std::io::stdout().write_all(out.as_bytes());
}
