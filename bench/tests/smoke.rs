//! The CI smoke run: `cofre-bench --smoke` (tiny data set, one run, a short CPU ceiling) against
//! real rustic-server and restic processes must produce a report with every scenario and the
//! Cofre/restic ratios. It proves the benchmark works; it asserts nothing about speed.

use std::process::Command;

#[test]
fn smoke_run_reports_every_scenario_with_ratios() {
    let dir = tempfile::Builder::new().prefix("cofre-bench-smoke-").tempdir().unwrap();
    let out = dir.path().join("report.md");
    let json = dir.path().join("report.json");
    let run = Command::new(env!("CARGO_BIN_EXE_cofre-bench"))
        .arg("--smoke")
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--out")
        .arg(&out)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "cofre-bench --smoke failed:\n{stderr}");

    let report = std::fs::read_to_string(&out).unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), report.trim(), "stdout and --out differ");
    for title in [
        "Initial backup",
        "Re-backup, nothing changed",
        "Re-backup, 5% of files changed",
        "Restore of the latest snapshot",
    ] {
        assert!(report.contains(&format!("## {title}")), "no section {title:?} in:\n{report}");
    }
    assert!(report.contains("| Cofre/restic |"), "no ratio column in:\n{report}");
    assert!(report.contains("## CPU ceiling"), "{report}");

    let parsed: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let results = parsed["results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "{parsed:#}");
    for r in results {
        let ratio = r["ratio_wall"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{r:#}");
    }
    // Both tools backed up every file of the data set the first time.
    let files = parsed["dataset"]["summary"]["files"].as_u64().unwrap();
    assert_eq!(results[0]["restic_backup"]["files_new"].as_u64(), Some(files));
    assert_eq!(results[0]["cofre_backup"]["files_new"].as_u64(), Some(files));
    assert_eq!(results[1]["cofre_backup"]["files_unmodified"].as_u64(), Some(files));
}

/// `--compare-servers` in smoke mode: restic through rustic-server and through cofre-store (the
/// debug `cofre-store` built beside the bench binary), both restores checked, one ratio table.
#[test]
fn smoke_run_compares_cofre_store_with_rustic_server() {
    let dir = tempfile::Builder::new().prefix("cofre-bench-compare-").tempdir().unwrap();
    let out = dir.path().join("compare.md");
    let run = Command::new(env!("CARGO_BIN_EXE_cofre-bench"))
        .args(["--smoke", "--compare-servers", "--work-dir"])
        .arg(dir.path().join("work"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "cofre-bench --compare-servers failed:\n{stderr}");
    let report = std::fs::read_to_string(&out).unwrap();
    assert!(report.contains("| cofre-store / rustic-server |"), "{report}");
    for row in ["backup wall time", "restore wall time", "server CPU, backup"] {
        assert!(report.contains(&format!("| {row} |")), "no row {row:?} in:\n{report}");
    }
}
