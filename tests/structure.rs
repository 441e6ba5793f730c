//! The house's layers: no import circle among the modules of src/, the AWS edge (`aws`) and
//! the metrics at the bottom (`scripts/import-cycles.py`).

#[test]
fn modules_import_each_other_in_no_circle_and_the_edge_sits_at_the_bottom() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/import-cycles.py");
    let out =
        std::process::Command::new("python3").arg(&script).output().expect("python3 runs scripts/import-cycles.py");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
