//! `sqs-poller check` and `run` on broken configurations: exit 2, one clear line per mistake,
//! each naming the file, the key path (or line) and the reason.

use std::process::Command;

const VALID: &str = r#"
[[pipelines]]
name = "orders"
queue_url = "http://127.0.0.1:4566/000000000000/orders"
[pipelines.target]
type = "http"
url = "http://127.0.0.1:8080/sqs"
"#;

/// Runs `sqs-poller <verb> --config FILE` on `text`; returns (exit code, stdout, stderr, file path).
fn run(verb: &str, text: &str) -> (i32, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
        .args([verb, "--config"])
        .arg(&file)
        .env_remove("NOT_SET_ANYWHERE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        file.display().to_string(),
    )
}

/// Asserts `check` rejects `text` with exit 2 and a line `FILE: <expected…>`.
fn rejects(text: &str, expected: &str) {
    let (code, _, stderr, file) = run("check", text);
    assert_eq!(code, 2, "stderr:\n{stderr}");
    let wanted = format!("{file}: {expected}");
    assert!(
        stderr.lines().any(|l| l.starts_with(&wanted)),
        "expected a line starting with\n  {wanted}\ngot:\n{stderr}"
    );
}

#[test]
fn a_valid_file_passes_and_prints_the_resolved_pipeline() {
    let (code, stdout, stderr, _) = run("check", VALID);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("pipeline orders"), "{stdout}");
    assert!(stdout.contains("pollers    min 1 max 10 wait 20s"), "{stdout}");
}

#[test]
fn the_shipped_configurations_are_valid() {
    for file in ["config/poller.toml", "config/demo.toml", "config/seed-provisioned.toml"] {
        let out = Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
            .args(["check", "--config", file])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn unknown_key() {
    rejects(
        &format!("{VALID}[pipelines.batch]\nsise = 5\n"),
        "pipelines[0].batch.sise: unknown field `sise`, expected one of `size`, `window_ms`, `max_bytes`, `max_in_flight_per_group` (line 9)",
    );
}

#[test]
fn unknown_top_level_table() {
    rejects(
        &format!("[metrics]\nport = 1\n{VALID}"),
        "metrics: unknown field `metrics`, expected one of `aws`, `server`, `shutdown`, `pools`, `telemetry`, `fleet`, `pipelines` (line 1)",
    );
}

#[test]
fn out_of_range_value() {
    rejects(
        &format!("{VALID}[pipelines.batch]\nsize = 20000\n"),
        "pipelines[0].batch.size: 20000 is out of range: must be between 1 and 10000",
    );
}

#[test]
fn wrong_type() {
    rejects(
        &format!("{VALID}[pipelines.pollers]\nmax = \"ten\"\n"),
        "pipelines[0].pollers.max: invalid type: string \"ten\", expected u64 (line 9)",
    );
}

#[test]
fn min_above_max() {
    rejects(
        &format!("{VALID}[pipelines.pollers]\nmin = 8\nmax = 4\n"),
        "pipelines[0].pollers.min: 8 is greater than pollers.max (4)",
    );
}

#[test]
fn the_seed_configuration_coming_from_an_esm_passes_as_written() {
    let out = Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
        .args(["check", "--config", "config/seed-provisioned.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("pollers    min 20 max 2000"), "{stdout}");
    assert!(stdout.contains("max_concurrency 5000"), "{stdout}");
}

#[test]
fn aws_bounds_for_pollers() {
    let (code, _, stderr, _) = run("check", &format!("{VALID}[pipelines.pollers]\nmin = 200\nmax = 10000\n"));
    assert_eq!(code, 0, "{stderr}");
    rejects(
        &format!("{VALID}[pipelines.pollers]\nmax = 10001\n"),
        "pipelines[0].pollers.max: 10001 is out of range: must be between 1 and 10000",
    );
    rejects(
        &format!("{VALID}[pipelines.pollers]\nmin = 201\nmax = 300\n"),
        "pipelines[0].pollers.min: 201 is out of range: must be between 0 and 200",
    );
}

/// A rejected value is reported once: it is not replaced by the default and compared again.
#[test]
fn each_key_is_reported_once() {
    let once = |text: String, key: &str| {
        let (code, _, stderr, _) = run("check", &text);
        assert_eq!(code, 2, "{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(": pipelines[0].")).collect();
        assert_eq!(lines.len(), 1, "one problem expected, about {key}:\n{stderr}");
        assert!(lines[0].contains(key), "{stderr}");
    };
    once(format!("{VALID}[pipelines.pollers]\nmin = 20\nmax = 20000\n"), "pollers.max: 20000 is out of range");
    once(format!("{VALID}[pipelines.pollers]\nmin = 500\nmax = 4\n"), "pollers.min: 500 is out of range");
    once(
        format!("{VALID}[pipelines.retry]\ninitial_backoff_secs = 50\nmax_backoff_secs = 99999\n"),
        "retry.max_backoff_secs",
    );
    once(
        format!("[shutdown]\ngrace_period_secs = 10\n{VALID}[pipelines.pollers]\nwait_time_secs = 25\n"),
        "pollers.wait_time_secs: 25 is out of range",
    );
}

#[test]
fn missing_environment_variable() {
    rejects(
        &VALID.replace("http://127.0.0.1:4566/000000000000/orders", "${NOT_SET_ANYWHERE}"),
        "line 4: environment variable NOT_SET_ANYWHERE is not set",
    );
}

/// A pattern EventBridge refuses is refused by `check` (and so by `run` and a reload), naming
/// the pattern and the key inside it.
#[test]
fn a_filter_pattern_eventbridge_refuses() {
    for (pattern, reason) in [
        (r#"{"body": {"s": [{"anything-but": {"prefix": ""}}]}}"#, "body.s[0]: anything-but prefix must not be empty"),
        (
            r#"{"body": {"s": [{"anything-but": ["a", 1]}]}}"#,
            "body.s[0]: anything-but lists strings or numbers, not both",
        ),
        (r#"{"body": {"arn": [{"wildcard": "*:*:*:*:*:event-bus/*"}]}}"#, "body.arn: the rule is too complex"),
    ] {
        rejects(
            &format!("{VALID}[pipelines.filter]\npatterns = ['{pattern}']\n"),
            &format!("pipelines[0].filter.patterns[0]: invalid pattern of pipeline `orders`: {reason}"),
        );
    }
}

/// A kept message heads its FIFO group again: `check` warns (the file is still valid).
#[test]
fn check_warns_of_a_kept_filter_on_a_fifo_queue() {
    let fifo = VALID.replace("orders\"\n[pipelines.target]", "orders.fifo\"\n[pipelines.target]");
    let (code, stdout, stderr, _) = run(
        "check",
        &format!("{fifo}[pipelines.filter]\npatterns = ['{{\"body\": [\"x\"]}}']\non_filtered = \"keep\"\n"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("warning: pipeline `orders`: on_filtered = \"keep\" on a FIFO queue"), "{stdout}");
    let (_, stdout, _, _) = run(
        "check",
        &format!("{VALID}[pipelines.filter]\npatterns = ['{{\"body\": [\"x\"]}}']\non_filtered = \"keep\"\n"),
    );
    assert!(!stdout.contains("on a FIFO queue"), "a standard queue: no warning\n{stdout}");
}

#[test]
fn missing_target() {
    let text = VALID.split("[pipelines.target]").next().unwrap().to_string();
    rejects(&text, "pipelines[0].target: is required");
}

#[test]
fn missing_required_key() {
    rejects(&VALID.replace("name = \"orders\"\n", ""), "pipelines[0].name: is required");
}

#[test]
fn not_a_url() {
    rejects(
        &VALID.replace("http://127.0.0.1:4566/000000000000/orders", "orders"),
        "pipelines[0].queue_url: `orders` is not a URL",
    );
}

#[test]
fn unknown_target_type() {
    rejects(
        &VALID.replace("type = \"http\"", "type = \"smtp\""),
        "pipelines[0].target.type: `smtp` is not a target type",
    );
}

#[test]
fn key_of_another_target_type() {
    rejects(
        &format!("{VALID}program = \"./worker\"\n"),
        "pipelines[0].target.program: does not apply to target type `http`",
    );
}

#[test]
fn duplicate_pipeline_names() {
    rejects(&format!("{VALID}{VALID}"), "pipelines[1].name: `orders` is used by another pipeline");
}

#[test]
fn toml_syntax_error() {
    rejects(&format!("{VALID}[pipelines.batch\n"), "line 8: TOML syntax error");
}

#[test]
fn no_pipelines() {
    rejects("[server]\nlisten = \"127.0.0.1:9464\"\n", "pipelines: at least one [[pipelines]] table is required");
}

#[test]
fn several_mistakes_are_all_reported() {
    let (code, _, stderr, _) = run("check", &format!("{VALID}[pipelines.batch]\nsize = 0\nwindow_ms = 999999\n"));
    assert_eq!(code, 2);
    assert!(stderr.contains("pipelines[0].batch.size: 0 is out of range"), "{stderr}");
    assert!(stderr.contains("pipelines[0].batch.window_ms: 999999 is out of range"), "{stderr}");
    assert!(stderr.contains("configuration error: 2 problem(s)"), "{stderr}");
}

#[test]
fn run_refuses_a_bad_file_with_exit_2() {
    let (code, _, stderr, file) = run("run", &format!("{VALID}[pipelines.batch]\nsize = 0\n"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("{file}: pipelines[0].batch.size")), "{stderr}");
}

#[test]
fn a_missing_file_is_a_configuration_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
        .args(["check", "--config", "/nonexistent/poller.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("/nonexistent/poller.toml: cannot read the configuration file"), "{stderr}");
}

/// `check` prints the whole resolved configuration; `tests/golden/check-poller.txt` is the
/// expected output for `config/poller.toml`, the machine's open-file limits masked (regenerate it
/// with the command below when a key is added, and read the diff).
#[test]
fn check_prints_the_resolved_configuration() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
        .current_dir(root)
        .args(["check", "--config", "config/poller.toml"])
        .env_remove("PAYMENTS_QUEUE_URL")
        .env_remove("PAYMENTS_DLQ_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let golden = std::fs::read_to_string(format!("{root}/tests/golden/check-poller.txt")).unwrap();
    // the open-file limits are the machine's, not the configuration's: they are masked (the
    // descriptor count itself is the configuration's and stays exact)
    let stdout = String::from_utf8_lossy(&out.stdout);
    let masked: String = stdout
        .lines()
        .map(|line| match line.split_once("open-file limit here: soft ") {
            Some((head, tail)) => {
                let rest = tail.split_once(" (").map(|(_, r)| r).unwrap_or("");
                format!("{head}open-file limit here: soft S, hard H ({rest}\n")
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert!(stdout.contains("open-file limit here: soft "), "check names the open-file limit it found: {stdout}");
    assert_eq!(
        masked,
        golden,
        "regenerate: target/debug/sqs-poller check --config config/poller.toml | sed -E 's/soft [0-9]+, hard [0-9]+/soft S, hard H/' > tests/golden/check-poller.txt"
    );
}

/// Without `--config` or `$SQS_POLLER_CONFIG`, a checkout's `config/poller.toml` is used, and
/// elsewhere (the container image) `/etc/sqs-poller/poller.toml`: the error names the file looked for.
#[test]
fn the_default_configuration_is_the_checkouts_then_etc() {
    let dir = tempfile::tempdir().unwrap();
    let run = |cwd: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
            .arg("check")
            .current_dir(cwd)
            .env_remove("SQS_POLLER_CONFIG")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, out) = run(dir.path());
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("/etc/sqs-poller/poller.toml"), "{out}");
    let (code, out) = run(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("config/poller.toml: ok"), "{out}");
}

#[test]
fn the_fleets_keys_and_the_task_count_settings_are_checked() {
    let with_fleet = |target: &str, tables: &str| {
        format!("[fleet]\nredis_url = \"redis://127.0.0.1:6379\"\n{VALID}{target}\n{tables}")
    };
    rejects(
        &with_fleet("fleet_key = \"orders db\"", ""),
        "pipelines[0].target.fleet_key: `orders db`: 1 to 100 letters",
    );
    rejects(&format!("{VALID}fleet_key = \"orders-db\"\n"), "pipelines[0].target.fleet_key: needs the fleet's Redis");
    rejects(
        &with_fleet("", "[pipelines.desired_tasks]\nutilization = 0.0"),
        "pipelines[0].desired_tasks.utilization: 0 is out of range",
    );
    rejects(
        &with_fleet("", "[pipelines.desired_tasks]\ndrain_secs = 0"),
        "pipelines[0].desired_tasks.drain_secs: 0 is out of range",
    );
    let (code, stdout, stderr, _) =
        run("check", &with_fleet("fleet_max_concurrency = 8\nfleet_key = \"orders-db\"", ""));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("  fleet      fleet_max_concurrency 8 key orders-db"), "{stdout}");
}
