//! Packaging (#14): the systemd units, container images, compose file and Kubernetes manifests
//! under `deploy/`, checked without Docker or a cluster; one file per concern: `docker.rs` parses
//! the Dockerfiles, `yaml.rs` reads compose and the Kubernetes manifests with PyYAML (skipped with
//! a note when python3 or PyYAML is missing), `systemd.rs` puts the units through
//! `systemd-analyze verify` and `security --offline` (skipped with a note without systemd), and
//! `first_start.rs` runs the documented first start (roles, `migrate` as the owner, `serve` as
//! cofre_serve) against a real PostgreSQL with the units' own command lines and environment.
//! Every block of settings a deployment gives the controller is loaded by the real binary. Each
//! checker also runs on broken copies of the real files (`*_checks_catch_*`), so a check that
//! stops checking fails here. The Debian packages built from these files are `packaging_deb.rs`.
//! This module holds what the files share.

mod docker;
mod first_start;
mod systemd;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::procs::{workspace_bin, workspace_root};

pub(crate) fn deploy(rel: &str) -> PathBuf {
    workspace_root().join("deploy").join(rel)
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Replaces the first `from` (which must be there, so a mutation is never a silent no-op).
pub(crate) fn mutate(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "mutation target {from:?} is gone from the file");
    text.replacen(from, to, 1)
}

/// What a checker found wrong, as sentences (empty: fine).
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<String>);

impl Problems {
    pub(crate) fn need(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }
}

/// The binaries the workspace builds (`cargo metadata`, no network).
pub(crate) fn workspace_binaries() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--offline", "--no-deps", "--format-version", "1"])
        .current_dir(workspace_root())
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let mut bins = BTreeSet::new();
    for package in meta["packages"].as_array().into_iter().flatten() {
        for target in package["targets"].as_array().into_iter().flatten() {
            if target["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")) {
                bins.extend(target["name"].as_str().map(str::to_owned));
            }
        }
    }
    bins
}

/// The workspace's `rust-version` as (major, minor).
pub(crate) fn workspace_rust_version() -> (u32, u32) {
    let toml = read(&workspace_root().join("Cargo.toml"));
    let line = toml.lines().find(|l| l.trim_start().starts_with("rust-version")).expect("rust-version");
    parse_version(line.split('"').nth(1).expect("quoted rust-version")).expect("rust-version x.y")
}

pub(crate) fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Runs `cofre-controller [--config FILE] serve` with exactly `env` and returns what stopped
/// it. Settings are loaded and validated before the master key and the database are touched,
/// so a deployment's settings are good when it stops at the key or the database.
pub(crate) fn controller_stops_at(env: &BTreeMap<String, String>, config: Option<&Path>) -> String {
    let mut cmd = Command::new(workspace_bin("cofre-controller"));
    cmd.env_clear().envs(env);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = cmd.arg("serve").output().expect("running cofre-controller");
    assert!(!out.status.success(), "serve cannot succeed without a database");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub(crate) fn assert_settings_accepted(what: &str, stopped: &str) {
    assert!(
        !stopped.contains("invalid configuration")
            && (stopped.contains("master key") || stopped.contains("database")),
        "{what}: the controller refuses these settings:\n{stopped}"
    );
}
