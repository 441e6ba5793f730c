//! `sqs-poller import-esm` on the seed: the event source mapping that config/seed-provisioned.toml
//! was written from (examples/esm/seed-provisioned.json, as `aws lambda get-event-source-mapping`
//! prints it) comes back as the same pipeline, and what a mapping cannot say (the queue's own
//! visibility timeout and redrive policy) is named.

use std::path::{Path, PathBuf};
use std::process::Command;

use sqs_poller::config::{self, TargetKind};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_seeds_mapping_round_trips_to_the_seeds_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let imported = dir.path().join("imported.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_sqs-poller"))
        .args(["import-esm", "examples/esm/seed-provisioned.json", "--output"])
        .arg(&imported)
        .current_dir(root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("VisibilityTimeout") && stderr.contains("RedrivePolicy"), "{stderr}");

    let seed = config::load(&root().join("config/seed-provisioned.toml")).unwrap();
    let got = config::load(Path::new(&imported)).unwrap();
    let (s, g) = (&seed.pipelines[0], &got.pipelines[0]);
    assert_eq!(g.name, s.name);
    assert_eq!(g.queue_url, "https://sqs.us-east-1.amazonaws.com/123456789012/transactions");
    assert_eq!((g.pollers.min, g.pollers.max), (s.pollers.min, s.pollers.max));
    assert_eq!((g.batch.size, g.batch.window), (s.batch.size, s.batch.window));
    assert_eq!(g.target.max_concurrency, s.target.max_concurrency);
    assert_eq!(format!("{:?}", g.filter), format!("{:?}", s.filter));
    match (&g.target.kind, &s.target.kind) {
        (TargetKind::Lambda { function_name: imported, .. }, TargetKind::Lambda { function_name: seed, .. }) => {
            assert!(imported.ends_with(&format!(":function:{seed}")), "{imported} vs {seed}")
        }
        _ => panic!("both targets are the Lambda function"),
    }
    // `check` accepts it as written
    let check =
        Command::new(env!("CARGO_BIN_EXE_sqs-poller")).args(["check", "--config"]).arg(&imported).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

#[test]
fn a_file_without_a_mapping_is_refused_naming_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("queue.json");
    std::fs::write(&file, r#"{"QueueUrl": "https://sqs.us-east-1.amazonaws.com/1/q"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sqs-poller")).arg("import-esm").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("get-event-source-mapping") && stderr.contains("queue.json"), "{stderr}");
    assert!(out.stdout.is_empty());
}
