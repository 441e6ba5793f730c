//! Resident memory against issue 32's targets, with the release build on the bench's emulator:
//! the busy fleet (the seed's pipeline on 20,000 queued messages), 10,000 messages in flight
//! (1,000 batches of 10 held by the worker) and an idle fleet (50 pipelines × 200 pollers), each
//! a script of `scripts/profile/` run as a user would run it, its peak resident memory (`VmHWM`)
//! read from `/proc`. With `SQS_POLLER_BENCH_BIN_BEFORE=PATH` an earlier build runs each
//! scenario too, right before this one (one run, same machine); `SQS_POLLER_BENCH_BEFORE_LABEL`
//! names it in the report (its commit, say).
//!
//! Writes the "Memory against the targets" section of `bench/RESULTS.md` (kept when the suite
//! rewrites the file). Run with `scripts/bench.sh memory` (about three minutes; six with a
//! build before).

#[path = "shared/results_md.rs"]
mod results_md;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// A scenario: its name, its script and arguments (after the binary and a label), its target.
struct Scenario {
    name: &'static str,
    script: &'static str,
    args: &'static [&'static str],
    target_mib: f64,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "busy: 20,000 queued, the seed's pipeline (20..2,000 pollers, batch 50, window 2 s)",
        script: "busy_fleet.sh",
        args: &["20000"],
        target_mib: 96.0,
    },
    Scenario {
        name: "10,000 in flight: 1,000 batches of 10 held by the worker",
        script: "in_flight.sh",
        args: &["10000", "25", "1000", "10"],
        target_mib: 32.0,
    },
    Scenario {
        name: "idle: 50 pipelines × 200 pollers long-polling empty queues",
        script: "idle_fleet.sh",
        args: &["50"],
        target_mib: 200.0,
    },
];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let endpoint = std::env::var("SQS_POLLER_BENCH_ENDPOINT")
        .expect("SQS_POLLER_BENCH_ENDPOINT: run `scripts/bench.sh memory`, which starts the emulator");
    let this = env!("CARGO_BIN_EXE_sqs-poller").to_string();
    let before = std::env::var("SQS_POLLER_BENCH_BIN_BEFORE").ok().filter(|b| !b.is_empty());
    let out = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for s in &SCENARIOS {
        let was = before.as_deref().map(|b| peak_mib(root, &endpoint, out.path(), s, b, "before"));
        let now = peak_mib(root, &endpoint, out.path(), s, &this, "now");
        rows.push((s, was, now));
    }
    let label = std::env::var("SQS_POLLER_BENCH_BEFORE_LABEL").ok().or(before);
    let md = report(&rows, label.as_deref());
    println!("{md}");
    let path = root.join("bench/RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, results_md::with_section(&old, "memory", "benches/memory.rs", &md)).unwrap();
    println!("wrote the memory section of bench/RESULTS.md");
}

/// Runs `s` with `bin`; its peak resident memory in MiB.
fn peak_mib(root: &Path, endpoint: &str, out: &Path, s: &Scenario, bin: &str, label: &str) -> f64 {
    let label = format!("{}-{label}", s.script.trim_end_matches(".sh"));
    let run = Command::new("bash")
        .arg(root.join("scripts/profile").join(s.script))
        .arg(bin)
        .arg(&label)
        .args(s.args)
        .env("EP", endpoint)
        .env("OUT", out)
        .current_dir(root)
        .output()
        .expect("bash runs the profile script");
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{}", stdout.trim_end());
    let kib = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{label}:")))
        .and_then(|l| l.split("VmHWM:").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    match kib {
        Some(kib) => kib / 1024.0,
        None => panic!(
            "{} printed no VmHWM (exit {:?}):\n{stdout}\n{}",
            s.script,
            run.status.code(),
            String::from_utf8_lossy(&run.stderr)
        ),
    }
}

fn report(rows: &[(&Scenario, Option<f64>, f64)], before: Option<&str>) -> String {
    let date = results_md::utc_now();
    let mut md = String::from("## Memory against the targets (issue 32)\n\n");
    let _ = writeln!(
        md,
        "{date}, `scripts/bench.sh memory` (benches/memory.rs): peak resident memory (`VmHWM`) of each \
         script of `scripts/profile/`, release builds, glibc's allocator, the bench's fauxqs.{}\n",
        before.map(|b| format!(" Before: `{b}`, run right before this build in each scenario.")).unwrap_or_default()
    );
    md.push_str("| run | before | this build | target |\n|---|---|---|---|\n");
    for (s, was, now) in rows {
        let mark = if *now <= s.target_mib { "✔" } else { "✘" };
        let was = was.map(|w| format!("{w:.1} MiB")).unwrap_or_else(|| "—".into());
        let _ = writeln!(md, "| {} | {was} | {now:.1} MiB | ≤ {} MiB {mark} |", s.name, s.target_mib);
    }
    md.push('\n');
    md
}
