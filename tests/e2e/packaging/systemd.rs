//! The systemd units and sysusers file of `deploy/systemd/`: their hardening line by line, their
//! command lines against the real binaries, `systemd-analyze verify` and `security --offline`
//! (skipped with a note without systemd), `systemd-sysusers` in a temporary root.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, ensure};

use super::{Problems, deploy, mutate, on_path, read, workspace_binaries};
use crate::harness::procs::{workspace_bin, workspace_root};

const UNITS: [&str; 4] = [
    "cofre-controller.service",
    "cofre-controller-migrate.service",
    "cofre-agent.service",
    "cofre-store.service",
];

/// A unit file as (section, key, value) triples in order.
pub(crate) fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';'])) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

pub(crate) fn unit_values<'a>(entries: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    entries.iter().filter(|(_, k, _)| k == key).map(|(_, _, v)| v.as_str()).collect()
}

pub(crate) fn sysusers() -> BTreeSet<String> {
    read(&deploy("systemd/cofre.sysusers"))
        .lines()
        .filter(|l| l.starts_with("u "))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

/// Where a path under /etc/cofre that a unit names comes from in this repository.
pub(crate) fn etc_source(path: &str) -> Option<PathBuf> {
    let name = path.strip_prefix("/etc/cofre/")?;
    [deploy(&format!("systemd/etc/cofre/{name}")), deploy(&format!("store/{name}"))]
        .into_iter()
        .find(|p| p.is_file())
}

fn unit_problems(
    name: &str,
    text: &str,
    users: &BTreeSet<String>,
    binaries: &BTreeSet<String>,
) -> Vec<String> {
    let entries = unit_entries(text);
    let one = |k: &str| unit_values(&entries, k).last().copied().unwrap_or("");
    let mut p = Problems::default();
    let user = one("User");
    p.need(
        !user.is_empty() && user != "root" && user != "0" && users.contains(user),
        format!("User={user}: a service user of cofre.sysusers"),
    );
    p.need(["yes", "true"].contains(&one("NoNewPrivileges")), "NoNewPrivileges=yes");
    p.need(one("ProtectSystem") == "strict", "ProtectSystem=strict");
    p.need(["yes", "true", "read-only"].contains(&one("ProtectHome")), "ProtectHome");
    p.need(["yes", "true"].contains(&one("PrivateTmp")), "PrivateTmp=yes");
    p.need(one("Restart") == "on-failure", "Restart=on-failure");
    let env_files = unit_values(&entries, "EnvironmentFile");
    p.need(!env_files.is_empty(), "an EnvironmentFile");
    for f in &env_files {
        let path = f.strip_prefix('-').unwrap_or_default();
        p.need(
            path.starts_with("/etc/cofre/") && etc_source(path).is_some(),
            format!("EnvironmentFile={f}: optional, with an example"),
        );
    }
    let writable: Vec<&str> =
        unit_values(&entries, "ReadWritePaths").iter().flat_map(|v| v.split_whitespace()).collect();
    for w in &writable {
        let w = w.trim_start_matches('-');
        p.need(
            w.starts_with("/var/lib/cofre-") || w.starts_with("/var/cache/cofre-") || w == "/srv/restic",
            format!("ReadWritePaths {w}"),
        );
    }
    for dir in unit_values(&entries, "StateDirectory") {
        p.need(
            writable.contains(&format!("/var/lib/{dir}").as_str()),
            format!("StateDirectory {dir} in ReadWritePaths"),
        );
    }
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    let bin = exec.first().and_then(|e| e.strip_prefix("/usr/local/bin/")).unwrap_or_default();
    p.need(
        binaries.contains(bin),
        format!("ExecStart runs /usr/local/bin/<a workspace binary>, not {exec:?}"),
    );
    for arg in exec.iter().filter(|a| a.starts_with("/etc/cofre/")) {
        p.need(etc_source(arg).is_some(), format!("{arg} has an example in deploy/"));
    }
    let (ambient, bounding) = (one("AmbientCapabilities"), unit_values(&entries, "CapabilityBoundingSet"));
    if name == "cofre-agent.service" {
        p.need(
            ambient == "CAP_DAC_READ_SEARCH",
            "the agent reads everything: AmbientCapabilities=CAP_DAC_READ_SEARCH",
        );
        p.need(
            bounding == ["CAP_DAC_READ_SEARCH"],
            "the agent's CapabilityBoundingSet is CAP_DAC_READ_SEARCH alone",
        );
        p.need(one("ProtectHome") == "read-only", "the agent backs up /home: ProtectHome=read-only");
    } else {
        p.need(ambient.is_empty() && bounding == [""], "no capabilities (CapabilityBoundingSet= empty)");
    }
    if name.starts_with("cofre-controller") {
        p.need(
            one("LoadCredential") == "master.key:/etc/cofre/master.key",
            "LoadCredential=master.key:/etc/cofre/master.key",
        );
        p.need(
            unit_values(&entries, "Environment").contains(&"COFRE_KEYS__MASTER_KEY_FILE=%d/master.key"),
            "the key file is the credential (COFRE_KEYS__MASTER_KEY_FILE=%d/master.key)",
        );
    }
    let owner_env = env_files.contains(&"-/etc/cofre/controller-migrate.env");
    if name == "cofre-controller.service" {
        let migrate = "cofre-controller-migrate.service";
        p.need(
            one("Requires").contains(migrate) && one("After").contains(migrate),
            format!("Requires= and After= {migrate}"),
        );
        p.need(!owner_env, "serve never reads the owner's URL (controller-migrate.env)");
    }
    if name == "cofre-controller-migrate.service" {
        p.need(one("Type") == "oneshot" && owner_env, "migrate: Type=oneshot with controller-migrate.env");
    }
    p.0
}

#[test]
fn packaging_units_are_hardened_and_run_existing_subcommands() {
    let (users, binaries) = (sysusers(), workspace_binaries());
    let docs = read(&workspace_root().join("docs/install.md"));
    for name in UNITS {
        let text = read(&deploy(&format!("systemd/{name}")));
        let problems = unit_problems(name, &text, &users, &binaries);
        assert!(problems.is_empty(), "{name}:\n  {}", problems.join("\n  "));
        assert!(docs.contains(name), "docs/install.md does not mention {name}");
        // The command line parses: the subcommand and its flags exist.
        let entries = unit_entries(&text);
        let exec: Vec<&str> = unit_values(&entries, "ExecStart")[0].split_whitespace().collect();
        let out = Command::new(workspace_bin(exec[0].rsplit('/').next().unwrap()))
            .args(&exec[1..])
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {exec:?} does not parse: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // docs/store.md points at deploy/store: that copy is this one.
    assert_eq!(read(&deploy("store/cofre-store.service")), read(&deploy("systemd/cofre-store.service")));
}

#[test]
fn packaging_unit_checks_catch_what_they_check() {
    let (users, binaries) = (sysusers(), workspace_binaries());
    let unit = |n: &str| read(&deploy(&format!("systemd/{n}")));
    let (agent, controller) = (unit("cofre-agent.service"), unit("cofre-controller.service"));
    let broken: [(&str, String, &str); 9] = [
        ("cofre-controller.service", mutate(&controller, "NoNewPrivileges=yes", ""), "NoNewPrivileges"),
        (
            "cofre-controller.service",
            mutate(&controller, "ProtectSystem=strict", "ProtectSystem=full"),
            "ProtectSystem",
        ),
        ("cofre-controller.service", mutate(&controller, "User=cofre-controller", "User=root"), "User=root"),
        ("cofre-controller.service", mutate(&controller, "Requires=", "Wants="), "Requires="),
        (
            "cofre-controller.service",
            mutate(&controller, "%d/master.key", "/etc/cofre/master.key"),
            "credential",
        ),
        (
            "cofre-controller.service",
            mutate(&controller, "CapabilityBoundingSet=\n", "CapabilityBoundingSet=CAP_SYS_ADMIN\n"),
            "no capabilities",
        ),
        (
            "cofre-agent.service",
            mutate(&agent, "AmbientCapabilities=CAP_DAC_READ_SEARCH", ""),
            "reads everything",
        ),
        (
            "cofre-agent.service",
            mutate(
                &agent,
                "CapabilityBoundingSet=CAP_DAC_READ_SEARCH",
                "CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE",
            ),
            "alone",
        ),
        ("cofre-agent.service", mutate(&agent, "ProtectHome=read-only", "ProtectHome=yes"), "backs up /home"),
    ];
    for (name, text, expected) in broken {
        let problems = unit_problems(name, &text, &users, &binaries);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{name}: expected {expected:?} in {problems:?}"
        );
    }
    if on_path("systemd-analyze").is_some() {
        let bad = mutate(&unit("cofre-store.service"), "PrivateTmp=yes", "PrivateTmp=yes\nPrivateTemp=yes");
        let err = systemd_analyze_verify(&[("cofre-store.service", bad)]).unwrap_err().to_string();
        assert!(err.contains("PrivateTemp"), "{err}");
    }
}

/// Copies of the units whose ExecStart names the workspace's binaries: `verify` insists that
/// the programs exist, and they are in target/ here, not in /usr/local/bin.
fn units_for_verify(units: &[(&str, String)]) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for (name, text) in units {
        let mut text = text.clone();
        for bin in ["cofre-controller", "cofre-agent", "cofre-store"] {
            text = text
                .replace(&format!("/usr/local/bin/{bin} "), &format!("{} ", workspace_bin(bin).display()));
        }
        std::fs::write(dir.path().join(name), text)?;
    }
    Ok(dir)
}

/// `systemd-analyze verify` on the units; any output (warnings included) is an error.
pub(crate) fn systemd_analyze_verify(units: &[(&str, String)]) -> Result<()> {
    let dir = units_for_verify(units)?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.iter().map(|(n, _)| dir.path().join(n)))
        .output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
    Ok(())
}

#[test]
fn packaging_units_pass_systemd_analyze() {
    let Some(analyze) = on_path("systemd-analyze") else {
        println!("note: systemd-analyze not found: the units are not verified here");
        return;
    };
    let units: Vec<(&str, String)> =
        UNITS.iter().map(|n| (*n, read(&deploy(&format!("systemd/{n}"))))).collect();
    systemd_analyze_verify(&units).unwrap();
    println!("systemd-analyze verify: {} units, no output", units.len());
    // Exposure as systemd rates it, 0 (locked down) to 10: "OK" is below 3.
    let dir = units_for_verify(&units).unwrap();
    for (name, _) in &units {
        let out = Command::new(&analyze)
            .args(["security", "--no-pager", "--offline=true", "--threshold=30"])
            .arg(dir.path().join(name))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let overall = text.lines().find(|l| l.contains("Overall exposure")).unwrap_or("(no rating)");
        assert!(
            out.status.success(),
            "{name}: exposure above 3.0: {overall}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{}", overall.trim());
    }
    match on_path("systemd-sysusers") {
        None => println!("note: systemd-sysusers not found: cofre.sysusers not tried"),
        Some(sysusers_bin) => {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(root.path().join("etc/sysusers.d")).unwrap();
            std::fs::copy(deploy("systemd/cofre.sysusers"), root.path().join("etc/sysusers.d/cofre.conf"))
                .unwrap();
            let out =
                Command::new(sysusers_bin).arg(format!("--root={}", root.path().display())).output().unwrap();
            assert!(out.status.success(), "systemd-sysusers: {}", String::from_utf8_lossy(&out.stderr));
            let passwd = read(&root.path().join("etc/passwd"));
            for user in sysusers() {
                assert!(
                    passwd.contains(&format!("{user}:x:")) && passwd.contains(&format!(":/var/lib/{user}:")),
                    "{passwd}"
                );
            }
            println!("systemd-sysusers created {:?} in a temporary root", sysusers());
        }
    }
}
