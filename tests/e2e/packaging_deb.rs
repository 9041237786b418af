//! Debian packages (#14 item 3): `deploy/debian/build.sh` builds cofre-controller, cofre-agent,
//! cofre-store and cofre from the binaries of this build (target/debug), once per test run.
//!
//! - `packaging_deb_packages_hold_…`: what `dpkg-deb --info`, `--contents` and the extracted
//!   files say — control fields (version, architecture, a Depends that names the package of
//!   every shared library the binary needs, the controller's Recommends), each file with its
//!   mode, the conffiles, the units equal to deploy/systemd's with /usr/bin, the start
//!   conditions, the sysusers and tmpfiles lines, md5sums, maintainer scripts that parse, and
//!   adduser in Depends where postinst may need it.
//!   `…_checks_catch_…` runs that checker on broken copies, so a check that stops checking fails.
//!   With lintian on PATH, its errors fail the test (it is not installed on every machine).
//! - `install.rs`, `packaging_deb_install_…` (root only; skipped with the reason otherwise, or
//!   when anything of Cofre is already on the machine): `dpkg -i` here, then the users,
//!   directories, statoverrides and enable links, `systemd-analyze verify` of the installed
//!   units, the installed binaries, the service users reading their config, the conditions
//!   before and after configuration; a second `dpkg -i` (reinstall) works; `dpkg -r` keeps
//!   config (an edit too) and state; `dpkg --purge` removes state, users and links but never
//!   /etc/cofre/master.key nor a store's repositories; postinst's adduser, useradd and
//!   `install -d` fallbacks with systemd-sysusers and systemd-tmpfiles hidden from PATH. A guard
//!   purges whatever is left on failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};

use crate::harness::procs::{workspace_bin, workspace_root};
use crate::packaging::{deploy, on_path, read};

mod install;

/// What one package must hold.
struct Expected {
    name: &'static str,
    /// (path, mode as `dpkg-deb --contents` prints it) of the regular files.
    files: &'static [(&'static str, &'static str)],
    conffiles: &'static [&'static str],
    /// Units from deploy/systemd (their ExecStart runs this package's binary).
    units: &'static [&'static str],
    /// (unit, the ConditionPathExists= its drop-in adds).
    conditions: &'static [(&'static str, &'static str)],
    /// The service user and the directories (0700, the user's) tmpfiles.d creates.
    user: Option<&'static str>,
    dirs: &'static [&'static str],
    /// A field of the control file that must contain a text.
    control: &'static [(&'static str, &'static str)],
}

const EXPECTED: [Expected; 4] = [
    Expected {
        name: "cofre-controller",
        files: &[
            ("/usr/bin/cofre-controller", "-rwxr-xr-x"),
            ("/etc/cofre/controller.toml", "-rw-r-----"),
            ("/etc/cofre/controller.env", "-rw-r-----"),
            ("/etc/cofre/controller-migrate.env", "-rw-------"),
            ("/lib/systemd/system/cofre-controller.service", "-rw-r--r--"),
            ("/lib/systemd/system/cofre-controller-migrate.service", "-rw-r--r--"),
            ("/lib/systemd/system/cofre-controller.service.d/debian.conf", "-rw-r--r--"),
            ("/lib/systemd/system/cofre-controller-migrate.service.d/debian.conf", "-rw-r--r--"),
            ("/usr/lib/sysusers.d/cofre-controller.conf", "-rw-r--r--"),
            ("/usr/lib/tmpfiles.d/cofre-controller.conf", "-rw-r--r--"),
            ("/usr/share/doc/cofre-controller/copyright", "-rw-r--r--"),
        ],
        conffiles: &[
            "/etc/cofre/controller.toml",
            "/etc/cofre/controller.env",
            "/etc/cofre/controller-migrate.env",
        ],
        units: &["cofre-controller.service", "cofre-controller-migrate.service"],
        conditions: &[
            ("cofre-controller.service", "/etc/cofre/master.key"),
            ("cofre-controller-migrate.service", "/etc/cofre/master.key"),
        ],
        user: Some("cofre-controller"),
        dirs: &["/var/lib/cofre-controller", "/var/cache/cofre-controller"],
        control: &[("Recommends", "postgresql (>= 15)")],
    },
    Expected {
        name: "cofre-agent",
        files: &[
            ("/usr/bin/cofre-agent", "-rwxr-xr-x"),
            ("/etc/cofre/agent.env", "-rw-r--r--"),
            ("/lib/systemd/system/cofre-agent.service", "-rw-r--r--"),
            ("/usr/lib/sysusers.d/cofre-agent.conf", "-rw-r--r--"),
            ("/usr/lib/tmpfiles.d/cofre-agent.conf", "-rw-r--r--"),
            ("/usr/share/doc/cofre-agent/copyright", "-rw-r--r--"),
        ],
        conffiles: &["/etc/cofre/agent.env"],
        units: &["cofre-agent.service"],
        conditions: &[],
        user: Some("cofre-agent"),
        dirs: &["/var/lib/cofre-agent"],
        control: &[],
    },
    Expected {
        name: "cofre-store",
        files: &[
            ("/usr/bin/cofre-store", "-rwxr-xr-x"),
            ("/etc/cofre/store.toml", "-rw-r-----"),
            ("/etc/cofre/store.env", "-rw-r-----"),
            ("/lib/systemd/system/cofre-store.service", "-rw-r--r--"),
            ("/lib/systemd/system/cofre-store.service.d/debian.conf", "-rw-r--r--"),
            ("/usr/lib/sysusers.d/cofre-store.conf", "-rw-r--r--"),
            ("/usr/lib/tmpfiles.d/cofre-store.conf", "-rw-r--r--"),
            ("/usr/share/doc/cofre-store/copyright", "-rw-r--r--"),
        ],
        conffiles: &["/etc/cofre/store.toml", "/etc/cofre/store.env"],
        units: &["cofre-store.service"],
        conditions: &[("cofre-store.service", "/var/lib/cofre-store/state/store.json")],
        user: Some("cofre-store"),
        dirs: &["/var/lib/cofre-store"],
        control: &[],
    },
    Expected {
        name: "cofre",
        files: &[("/usr/bin/cofre", "-rwxr-xr-x"), ("/usr/share/doc/cofre/copyright", "-rw-r--r--")],
        conffiles: &[],
        units: &[],
        conditions: &[],
        user: None,
        dirs: &[],
        control: &[],
    },
];

/// The packages of this run, built once.
struct Debs {
    _dir: tempfile::TempDir,
    paths: BTreeMap<&'static str, PathBuf>,
}

fn debs() -> &'static Debs {
    static DEBS: OnceLock<Debs> = OnceLock::new();
    DEBS.get_or_init(|| build_debs().unwrap_or_else(|e| panic!("{e:#}")))
}

fn build_debs() -> Result<Debs> {
    let bin_dir = workspace_bin("cofre-controller").parent().context("binary dir")?.to_path_buf();
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    // gzip: xz (the default) takes ~20 s for the debug controller alone; the format is dpkg's.
    let out = Command::new("bash")
        .arg(workspace_root().join("deploy/debian/build.sh"))
        .args(["--profile", "debug", "--compress", "gzip", "--bin-dir"])
        .arg(&bin_dir)
        .arg("--out")
        .arg(dir.path())
        .output()
        .context("running deploy/debian/build.sh")?;
    ensure!(
        out.status.success(),
        "deploy/debian/build.sh failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<PathBuf> = String::from_utf8(out.stdout)?.lines().map(PathBuf::from).collect();
    let mut paths = BTreeMap::new();
    for e in &EXPECTED {
        let prefix = format!("{}_", e.name);
        let path = printed
            .iter()
            .find(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&prefix)))
            .with_context(|| format!("build.sh printed no {}_….deb: {printed:?}", e.name))?;
        ensure!(path.is_file(), "{} was printed but does not exist", path.display());
        paths.insert(e.name, path.clone());
    }
    let sizes: Vec<String> = paths
        .iter()
        .map(|(n, p)| format!("{n} {:.1} MB", p.metadata().map(|m| m.len()).unwrap_or(0) as f64 / 1e6))
        .collect();
    println!(
        "deploy/debian/build.sh --profile debug --compress gzip: {:.1} s; {}",
        started.elapsed().as_secs_f64(),
        sizes.join(", ")
    );
    Ok(Debs { _dir: dir, paths })
}

/// Runs a command; its stdout, or an error with everything it said.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh(program: &str, args: &[&str]) -> Result<String> {
    run(Command::new(program).args(args))
}

fn workspace_version() -> String {
    let toml = read(&workspace_root().join("Cargo.toml"));
    let section = toml.split("[workspace.package]").nth(1).expect("[workspace.package]");
    let line = section.lines().find(|l| l.starts_with("version")).expect("workspace version");
    line.split('"').nth(1).expect("quoted version").to_owned()
}

/// Everything a checker reads of one .deb.
#[derive(Clone)]
struct Listing {
    control: BTreeMap<String, String>,
    /// Path (without the leading `.`) → mode string, for regular files and directories.
    entries: BTreeMap<String, String>,
    owners: BTreeSet<String>,
    conffiles: Vec<String>,
    /// Maintainer scripts and md5sums by name.
    meta: BTreeMap<String, String>,
    /// Text files of the data part that the checks read, by path.
    texts: BTreeMap<String, String>,
    /// `sh -n` of each maintainer script: None when it parses.
    script_syntax: BTreeMap<String, Option<String>>,
}

fn listing(deb: &Path, scratch: &Path) -> Result<Listing> {
    let info = sh("dpkg-deb", &["--field", &deb.display().to_string()])?;
    let mut control = BTreeMap::new();
    let mut last = String::new();
    for line in info.lines() {
        if line.starts_with(' ') {
            control.entry(last.clone()).and_modify(|v: &mut String| {
                v.push('\n');
                v.push_str(line);
            });
        } else if let Some((k, v)) = line.split_once(':') {
            last = k.to_owned();
            control.insert(k.to_owned(), v.trim().to_owned());
        }
    }
    let mut entries = BTreeMap::new();
    let mut owners = BTreeSet::new();
    for line in sh("dpkg-deb", &["--contents", &deb.display().to_string()])?.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [mode, owner, _size, _date, _time, path, ..] = words.as_slice() else {
            bail!("cannot read the listing line {line:?}");
        };
        owners.insert((*owner).to_owned());
        let path = path.trim_start_matches('.').trim_end_matches('/');
        entries.insert(if path.is_empty() { "/".to_owned() } else { path.to_owned() }, (*mode).to_owned());
    }
    let root = scratch.join("root");
    let ctrl = scratch.join("DEBIAN");
    sh("dpkg-deb", &["-x", &deb.display().to_string(), &root.display().to_string()])?;
    sh("dpkg-deb", &["-e", &deb.display().to_string(), &ctrl.display().to_string()])?;
    let mut meta = BTreeMap::new();
    let mut script_syntax = BTreeMap::new();
    for name in ["postinst", "prerm", "postrm", "preinst", "md5sums", "conffiles"] {
        let path = ctrl.join(name);
        if path.is_file() {
            meta.insert(name.to_owned(), read(&path));
            if name.starts_with("pre") || name.starts_with("post") {
                let out = Command::new("sh").arg("-n").arg(&path).output()?;
                let said = String::from_utf8_lossy(&out.stderr).into_owned();
                script_syntax.insert(name.to_owned(), (!out.status.success()).then_some(said));
            }
        }
    }
    let conffiles = meta.get("conffiles").map(|c| c.lines().map(str::to_owned).collect()).unwrap_or_default();
    let mut texts = BTreeMap::new();
    for (path, mode) in &entries {
        let wanted = path.starts_with("/etc/")
            || path.starts_with("/lib/systemd/")
            || path.starts_with("/usr/lib/sysusers.d/")
            || path.starts_with("/usr/lib/tmpfiles.d/");
        if wanted && mode.starts_with('-') {
            texts.insert(path.clone(), read(&root.join(path.trim_start_matches('/'))));
        }
    }
    // md5sums must match the extracted files.
    if meta.contains_key("md5sums") {
        let out = Command::new("md5sum")
            .args(["--check", "--quiet"])
            .arg(ctrl.join("md5sums"))
            .current_dir(&root)
            .output()?;
        ensure!(
            out.status.success(),
            "md5sums do not match the data:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(Listing { control, entries, owners, conffiles, meta, texts, script_syntax })
}

/// The packages that hold the shared libraries a binary needs (ELF NEEDED, resolved by ldd).
fn library_packages(binary: &Path) -> Result<BTreeSet<String>> {
    let mut packages = BTreeSet::new();
    for line in sh("ldd", &[&binary.display().to_string()])?.lines() {
        let Some(path) = line.split("=>").nth(1).and_then(|r| r.split_whitespace().next()) else { continue };
        let real = std::fs::canonicalize(path).with_context(|| format!("resolving {path}"))?;
        // dpkg knows the path it installed, which may be the /lib alias of /usr/lib.
        let candidates = [
            real.display().to_string(),
            path.to_owned(),
            real.display().to_string().replacen("/usr/lib/", "/lib/", 1),
        ];
        let owner = candidates.iter().find_map(|p| sh("dpkg-query", &["--search", p]).ok());
        let owner = owner.with_context(|| format!("no package owns {path}"))?;
        let name = owner.split(':').next().unwrap_or_default().trim().to_owned();
        packages.insert(name);
    }
    ensure!(!packages.is_empty(), "ldd found no libraries in {}", binary.display());
    Ok(packages)
}

fn depends_names(depends: &str) -> BTreeSet<String> {
    depends
        .split(',')
        .filter_map(|d| d.split_whitespace().next())
        .map(|d| d.split(':').next().unwrap_or(d).to_owned())
        .collect()
}

/// Everything wrong with one package, as sentences (empty: fine). `libraries`: the packages
/// of the shared libraries its binary needs; `arch`: dpkg's architecture.
fn deb_problems(e: &Expected, l: &Listing, libraries: &BTreeSet<String>, arch: &str) -> Vec<String> {
    let mut p = crate::packaging::Problems::default();
    let field = |k: &str| l.control.get(k).map(String::as_str).unwrap_or("");
    p.need(field("Package") == e.name, format!("Package: {} (expected {})", field("Package"), e.name));
    let version = format!("{}-1", workspace_version());
    p.need(field("Version") == version, format!("Version: {} (expected {version})", field("Version")));
    p.need(
        field("Architecture") == arch,
        format!("Architecture: {} (expected {arch})", field("Architecture")),
    );
    p.need(field("Maintainer").contains('@'), "a Maintainer with an address");
    p.need(!field("Description").is_empty(), "a Description");
    let depends = depends_names(field("Depends"));
    for lib in libraries {
        p.need(depends.contains(lib), format!("Depends lacks {lib} (its binary links a library of it)"));
    }
    // postinst falls back to adduser where systemd-sysusers is missing; nothing else is needed.
    let adduser = e.user.is_some();
    p.need(!adduser || depends.contains("adduser"), "Depends lacks adduser (postinst's fallback)");
    for dep in depends.iter().filter(|d| !(adduser && *d == "adduser")) {
        p.need(libraries.contains(dep), format!("Depends on {dep}, which no library of the binary needs"));
    }
    for (k, v) in e.control {
        p.need(field(k).contains(v), format!("{k}: {} lacks {v}", field(k)));
    }
    p.need(
        l.owners == BTreeSet::from(["root/root".to_owned()]),
        format!("owners {:?}: all root/root", l.owners),
    );
    for (path, mode) in e.files {
        match l.entries.get(*path) {
            None => p.need(false, format!("{path} is missing")),
            Some(m) => p.need(m == mode, format!("{path} has mode {m}, expected {mode}")),
        }
    }
    for path in l.entries.keys() {
        p.need(
            !path.starts_with("/usr/local"),
            format!("{path}: nothing of a package belongs in /usr/local"),
        );
    }
    let mut conffiles = l.conffiles.clone();
    conffiles.sort();
    let mut expected: Vec<String> = e.conffiles.iter().map(|c| (*c).to_owned()).collect();
    expected.sort();
    p.need(conffiles == expected, format!("conffiles {conffiles:?}, expected {expected:?}"));
    for etc in l.entries.iter().filter(|(path, m)| path.starts_with("/etc/") && m.starts_with('-')) {
        p.need(l.conffiles.contains(etc.0), format!("{} is under /etc but not a conffile", etc.0));
    }
    let binary = format!("/usr/bin/{}", e.name);
    for unit in e.units {
        let packaged = l.texts.get(&format!("/lib/systemd/system/{unit}")).map(String::as_str).unwrap_or("");
        let source = read(&deploy(&format!("systemd/{unit}"))).replace("/usr/local/bin/", "/usr/bin/");
        p.need(packaged == source, format!("{unit} is not deploy/systemd's with /usr/bin"));
        p.need(!packaged.contains("/usr/local"), format!("{unit} still names /usr/local"));
        p.need(
            packaged.lines().any(|line| line.starts_with(&format!("ExecStart={binary} "))),
            format!("{unit}: ExecStart does not run {binary}"),
        );
    }
    for (unit, path) in e.conditions {
        let dropin = l.texts.get(&format!("/lib/systemd/system/{unit}.d/debian.conf")).map(String::as_str);
        p.need(
            dropin.is_some_and(|d| d.lines().any(|line| line == format!("ConditionPathExists={path}"))),
            format!("{unit}: its drop-in does not say ConditionPathExists={path}"),
        );
    }
    match e.user {
        None => p.need(
            l.meta.keys().all(|k| k == "md5sums" || k == "conffiles"),
            "no maintainer scripts where nothing is set up",
        ),
        Some(user) => {
            let sysusers =
                l.texts.get(&format!("/usr/lib/sysusers.d/{}.conf", e.name)).cloned().unwrap_or_default();
            let ours: Vec<&str> = sysusers.lines().filter(|line| line.starts_with("u ")).collect();
            let source = read(&deploy("systemd/cofre.sysusers"));
            let line = source.lines().find(|line| line.split_whitespace().nth(1) == Some(user));
            p.need(
                ours.len() == 1 && line == ours.first().copied(),
                format!(
                    "sysusers.d/{}.conf: {ours:?}, expected only {user}'s line of cofre.sysusers",
                    e.name
                ),
            );
            let tmpfiles =
                l.texts.get(&format!("/usr/lib/tmpfiles.d/{}.conf", e.name)).cloned().unwrap_or_default();
            for dir in e.dirs {
                let want = format!("d {dir} 0700 {user} {user} -");
                p.need(tmpfiles.lines().any(|line| line == want), format!("tmpfiles.d lacks `{want}`"));
            }
            for script in ["postinst", "prerm", "postrm"] {
                let text = l.meta.get(script).map(String::as_str).unwrap_or("");
                p.need(text.starts_with("#!/bin/sh\n"), format!("{script} is missing or not a sh script"));
                if let Some(Some(error)) = l.script_syntax.get(script) {
                    p.need(false, format!("{script} does not parse: {error}"));
                }
                let left = text
                    .split('#')
                    .skip(1)
                    .find(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
                p.need(left.is_none(), format!("{script}: placeholder #{}# left", left.unwrap_or_default()));
            }
            let postinst = l.meta.get("postinst").map(String::as_str).unwrap_or("");
            p.need(
                postinst.contains(&format!("SERVICE_USER='{user}'")),
                format!("postinst does not create {user}"),
            );
        }
    }
    p.0
}

#[test]
fn packaging_deb_packages_hold_their_files_conffiles_units_and_scripts() -> Result<()> {
    let debs = debs();
    let arch = sh("dpkg", &["--print-architecture"])?.trim().to_owned();
    for e in &EXPECTED {
        let deb = &debs.paths[e.name];
        let scratch = tempfile::tempdir()?;
        let l = listing(deb, scratch.path())?;
        let libraries = library_packages(&workspace_bin(e.name))?;
        let problems = deb_problems(e, &l, &libraries, &arch);
        ensure!(problems.is_empty(), "{}:\n  {}", deb.display(), problems.join("\n  "));
        println!(
            "{}: {} entries, conffiles {:?}, Depends: {}",
            e.name,
            l.entries.len(),
            l.conffiles,
            l.control["Depends"]
        );
    }
    match on_path("lintian") {
        None => println!("note: lintian not found: the packages are not linted here"),
        // Errors fail; warnings (no manual pages yet) are printed.
        Some(lintian) => {
            let started = Instant::now();
            let out = Command::new(&lintian)
                .args(["--tag-display-limit", "0"])
                .args(debs.paths.values())
                .output()?;
            let said = String::from_utf8_lossy(&out.stdout);
            let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("E: ")).collect();
            ensure!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
            println!("lintian ({:.1} s), no errors:\n{said}", started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

#[test]
fn packaging_deb_checks_catch_what_they_check() -> Result<()> {
    let debs = debs();
    let arch = sh("dpkg", &["--print-architecture"])?.trim().to_owned();
    let e = &EXPECTED[0];
    let scratch = tempfile::tempdir()?;
    let real = listing(&debs.paths[e.name], scratch.path())?;
    let libraries = library_packages(&workspace_bin(e.name))?;
    assert!(deb_problems(e, &real, &libraries, &arch).is_empty(), "the real package must pass first");
    type Break = fn(&mut Listing);
    const UNIT: &str = "/lib/systemd/system/cofre-controller.service";
    const DROPIN: &str = "/lib/systemd/system/cofre-controller.service.d/debian.conf";
    let broken: [(&str, Break, &str); 13] = [
        ("a conffile unlisted", |l| l.conffiles.retain(|c| !c.ends_with("controller.env")), "conffiles"),
        (
            "world-readable env",
            |l| set(&mut l.entries, "/etc/cofre/controller-migrate.env", "-rw-r--r--"),
            "mode",
        ),
        ("no Recommends", |l| drop(l.control.remove("Recommends")), "Recommends"),
        ("libgcc dropped", |l| set(&mut l.control, "Depends", "libc6 (>= 2.34)"), "Depends lacks libgcc-s1"),
        ("no adduser", |l| set(&mut l.control, "Depends", "libc6 (>= 2.34), libgcc-s1 (>= 4.2)"), "adduser"),
        ("heavy Depends", |l| append(&mut l.control, "Depends", ", postgresql"), "no library"),
        ("unit in /usr/local", |l| replace(&mut l.texts, UNIT, "/usr/bin/", "/usr/local/bin/"), "/usr/local"),
        ("no condition", |l| replace(&mut l.texts, DROPIN, "Condition", "#"), "drop-in"),
        (
            "a user too many",
            |l| append(&mut l.texts, "/usr/lib/sysusers.d/cofre-controller.conf", "u x - - /"),
            "sysusers",
        ),
        (
            "no cache dir",
            |l| replace(&mut l.texts, "/usr/lib/tmpfiles.d/cofre-controller.conf", "cache", "kache"),
            "tmpfiles",
        ),
        ("placeholder left", |l| append(&mut l.meta, "postrm", "\nrm -rf #PURGE_DIRS#"), "placeholder"),
        (
            "a script that breaks",
            |l| drop(l.script_syntax.insert("postrm".into(), Some("syntax error".into()))),
            "parse",
        ),
        ("binary not executable", |l| set(&mut l.entries, "/usr/bin/cofre-controller", "-rw-r--r--"), "mode"),
    ];
    for (what, apply, expected) in broken {
        let mut l = real.clone();
        apply(&mut l);
        let problems = deb_problems(e, &l, &libraries, &arch);
        ensure!(
            problems.iter().any(|p| p.contains(expected)),
            "{what}: expected {expected:?} in {problems:?}"
        );
    }
    Ok(())
}

fn set(map: &mut BTreeMap<String, String>, key: &str, value: &str) {
    assert!(map.contains_key(key), "mutation target {key} is gone");
    map.insert(key.to_owned(), value.to_owned());
}

fn append(map: &mut BTreeMap<String, String>, key: &str, more: &str) {
    map.get_mut(key).unwrap_or_else(|| panic!("mutation target {key} is gone")).push_str(more);
}

fn replace(map: &mut BTreeMap<String, String>, key: &str, from: &str, to: &str) {
    let text = map.get_mut(key).unwrap_or_else(|| panic!("mutation target {key} is gone"));
    *text = crate::packaging::mutate(text, from, to);
}
