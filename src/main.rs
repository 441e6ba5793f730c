//! The `sqs-poller` command line: a thin layer over the library.

use std::process::ExitCode;

use clap::Parser;
use sqs_poller::config::{self, Config};
use sqs_poller::shutdown::{self, Shutdown};

mod cli;
use cli::{config_path, Cli, Command, DlqCommand, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    sqs_poller::telemetry::init_logs(cli.log_format == LogFormat::Json);
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
            let filter = match compile_patterns(patterns) {
                Ok(f) => (!f.is_empty()).then_some(f),
                Err(code) => return code,
            };
            let options = sqs_poller::redrive::RedriveOptions { limit: *limit, filter, rate: *rate };
            return match aws_for(&cli, &path, endpoint_url, region) {
                Ok(aws) => redrive(aws, from, to, &options),
                Err(code) => code,
            };
        }
        Some(Command::Healthcheck { url }) => return healthcheck(url.clone(), &path),
        Some(Command::ImportEsm { file, output }) => return import_esm(file.as_deref(), output.as_deref()),
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

/// Runs a tool's work (`redrive`, `dlq stats`) on a one-thread runtime with SQS clients made
/// from `aws`; an error is printed under the tool's name.
fn with_sqs<T, F>(
    aws: config::AwsConfig,
    tool: &str,
    work: impl FnOnce(sqs_poller::sqs::SqsClients) -> F,
) -> Result<T, ExitCode>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let result = runtime.block_on(async {
        let clients = sqs_poller::sqs::SqsClients::new(&sqs_poller::aws::Aws::load(&aws).await?).await?;
        work(clients).await
    });
    result.map_err(|e| {
        eprintln!("sqs-poller {tool}: {e:#}");
        ExitCode::FAILURE
    })
}

fn dlq_stats(aws: config::AwsConfig, queue: &str, samples: usize) -> ExitCode {
    let stats = |clients| async move { Ok(sqs_poller::dlq::stats(&clients, queue, samples).await?) };
    match with_sqs(aws, "dlq stats", stats) {
        Ok(tally) => {
            print!("{}", tally.render(queue));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn redrive(aws: config::AwsConfig, from: &str, to: &str, options: &sqs_poller::redrive::RedriveOptions) -> ExitCode {
    let work =
        |clients| async move { Ok(sqs_poller::redrive::redrive_showing_progress(&clients, from, to, options).await?) };
    let r = match with_sqs(aws, "redrive", work) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let failed = if r.failed > 0 { format!(" ({} failed and stay in the source)", r.failed) } else { String::new() };
    println!("moved {} messages from {from} to {to}{failed}", r.moved);
    if r.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `healthcheck`: 0 when `/healthz` answers 200 within 5 s; 1 when it answers otherwise or not at
/// all; 2 when there is no URL (no `--url` and no configuration to read `server.listen` from).
fn healthcheck(url: Option<String>, path: &std::path::Path) -> ExitCode {
    let url = match url {
        Some(u) => u,
        None => match config::load(path) {
            Ok(c) => sqs_poller::server::healthz_url(c.listen),
            Err(e) => {
                eprintln!("{e}\nsqs-poller healthcheck: no --url, and no configuration to read server.listen from");
                return ExitCode::from(2);
            }
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    match runtime.block_on(sqs_poller::server::probe(&url, std::time::Duration::from_secs(5))) {
        Ok(()) => {
            println!("healthy: {url}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `--pattern`s of `test-pattern` and `redrive`; exit 2 on an invalid one, naming it.
fn compile_patterns(patterns: &[String]) -> Result<sqs_poller::filter::Filter, ExitCode> {
    sqs_poller::filter::Filter::compile(patterns).map_err(|(i, e)| {
        eprintln!("--pattern #{}: invalid pattern: {e}", i + 1);
        ExitCode::from(2)
    })
}

/// `test-pattern`: exit 2 on an invalid pattern, 1 if a line was not a JSON object, else 0.
fn test_pattern(patterns: &[String]) -> ExitCode {
    use std::io::Write;
    let filter = match compile_patterns(patterns) {
        Ok(f) => f,
        Err(code) => return code,
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

fn run(config: Config, path: std::path::PathBuf) -> ExitCode {
    sqs_poller::metrics::give_back_freed_memory();
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

/// `import-esm`: the configuration on stdout (or `--output`), what was not carried over on stderr.
fn import_esm(file: Option<&std::path::Path>, output: Option<&std::path::Path>) -> ExitCode {
    let source = file.map_or_else(|| "stdin".to_string(), |f| f.display().to_string());
    let text = match file {
        Some(f) => std::fs::read_to_string(f),
        None => std::io::read_to_string(std::io::stdin()),
    };
    let mappings = match text.map_err(|e| e.to_string()).and_then(|t| sqs_poller::import_esm::read(&t)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("import-esm: {source}: {e}");
            return ExitCode::from(2);
        }
    };
    let (config, notes) = sqs_poller::import_esm::write(&mappings);
    for note in &notes {
        eprintln!("import-esm: not carried over: {note}");
    }
    let written = match output {
        Some(path) => std::fs::write(path, &config).map_err(|e| format!("{}: {e}", path.display())),
        None => std::io::Write::write_all(&mut std::io::stdout(), config.as_bytes()).map_err(|e| e.to_string()),
    };
    match written {
        Ok(()) => {
            eprintln!(
                "import-esm: {} pipeline(s) from {source}; check them with `sqs-poller check --config FILE`",
                mappings.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("import-esm: {e}");
            ExitCode::FAILURE
        }
    }
}
