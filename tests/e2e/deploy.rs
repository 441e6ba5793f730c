//! The deployment files, checked with what runs here: cfn-lint on the CloudFormation template,
//! JSON/YAML well-formedness, the task role's actions against the SQS calls in the code, stop
//! timeouts against the grace period, and `sqs-poller check` on the shipped container configs
//! (deploy/check.py). No Docker engine runs on this machine, so the Dockerfile is not built here.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn deployment_files_pass_their_checks() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".local/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-services.sh (it makes .local/venv with cfn-lint)",
        python.display()
    );
    let out =
        Command::new(python).arg(root.join("deploy/check.py")).arg(env!("CARGO_BIN_EXE_sqs-poller")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("deploy check: ok"), "{text}");
}
