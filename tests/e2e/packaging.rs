//! Packaging (#14): the systemd units, container images, compose file and Kubernetes manifests
//! under `deploy/`, checked without Docker or a cluster. Dockerfiles are parsed here; YAML is
//! read with PyYAML (skipped with a note when python3 or PyYAML is missing); units go through
//! `systemd-analyze verify` and `security --offline` (skipped with a note without systemd).
//! Every block of settings a deployment gives the controller is loaded by the real binary, and
//! the documented first start (roles, `migrate` as the owner, `serve` as cofre_serve) runs
//! against a real PostgreSQL with the units' own command lines and environment. Each checker
//! also runs on broken copies of the real files (`*_checks_catch_*`), so a check that stops
//! checking fails here.
//!
//! One file longer than the house's usual size: the issue asked for a single test module; its
//! parts (Dockerfiles, YAML, systemd units, the first start) are separated by banner comments.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::harness::pg::{PgCluster, random_secret};
use crate::harness::procs::{Proc, free_port, workspace_bin, workspace_root};

const DOCKERFILES: [&str; 2] = ["docker/controller.Dockerfile", "docker/store.Dockerfile"];
const UNITS: [&str; 4] = [
    "cofre-controller.service",
    "cofre-controller-migrate.service",
    "cofre-agent.service",
    "cofre-store.service",
];

fn deploy(rel: &str) -> PathBuf {
    workspace_root().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Replaces the first `from` (which must be there, so a mutation is never a silent no-op).
fn mutate(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "mutation target {from:?} is gone from the file");
    text.replacen(from, to, 1)
}

/// What a checker found wrong, as sentences (empty: fine).
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn need(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }
}

/// The binaries the workspace builds (`cargo metadata`, no network).
fn workspace_binaries() -> BTreeSet<String> {
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
fn workspace_rust_version() -> (u32, u32) {
    let toml = read(&workspace_root().join("Cargo.toml"));
    let line = toml.lines().find(|l| l.trim_start().starts_with("rust-version")).expect("rust-version");
    parse_version(line.split('"').nth(1).expect("quoted rust-version")).expect("rust-version x.y")
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles

const INSTRUCTIONS: [&str; 18] = [
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

#[derive(Debug)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

struct Stage {
    name: String,
    base: String,
    body: Vec<Instruction>,
}

/// Instructions with continuation lines joined; comments (parser directives too) and blank
/// lines dropped, also inside a continued instruction, as Docker does.
fn dockerfile_instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (body, continued) = match line.strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (line, false),
        };
        match &mut current {
            Some((_, joined)) => {
                joined.push(' ');
                joined.push_str(body);
            }
            None => current = Some((i + 1, body.to_owned())),
        }
        if !continued && let Some((line, joined)) = current.take() {
            let (keyword, args) = joined.split_once(char::is_whitespace).unwrap_or((&joined, ""));
            out.push(Instruction {
                line,
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_owned(),
            });
        }
    }
    out
}

/// `${NAME}` / `$NAME` replaced by the ARG defaults declared before the first FROM.
fn substitute(s: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = s.to_owned();
    for (k, v) in args {
        out = out.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
    }
    out
}

fn instructions<'a>(stage: &'a Stage, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> {
    stage.body.iter().filter(move |i| i.keyword == keyword)
}

fn flag<'a>(args: &'a str, name: &str) -> Option<&'a str> {
    args.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// Everything wrong with a Dockerfile of ours, as sentences (empty: fine).
fn dockerfile_problems(text: &str, binaries: &BTreeSet<String>, min_rust: (u32, u32)) -> Vec<String> {
    let mut problems = Vec::new();
    let mut args = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in dockerfile_instructions(text) {
        let at = ins.line;
        if !INSTRUCTIONS.contains(&ins.keyword.as_str()) {
            problems.push(format!("line {at}: unknown instruction {}", ins.keyword));
        } else if ins.keyword == "FROM" {
            let words: Vec<&str> = ins.args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let (image, name) = match words.as_slice() {
                [image, r#as, name] if r#as.eq_ignore_ascii_case("as") => (*image, (*name).to_owned()),
                [image] => {
                    problems.push(format!("line {at}: FROM {image} has no stage name (AS …)"));
                    (*image, String::new())
                }
                _ => {
                    problems.push(format!("line {at}: cannot read FROM {}", ins.args));
                    continue;
                }
            };
            let base = substitute(image, &args);
            let tag = base.rsplit_once(':').map(|(_, t)| t).filter(|t| !t.contains('/'));
            if tag.is_none_or(|t| t == "latest") {
                problems.push(format!("line {at}: base image {base} is not pinned to a tag"));
            }
            if !name.is_empty() && stages.iter().any(|s| s.name == name) {
                problems.push(format!("line {at}: stage name {name} used twice"));
            }
            stages.push(Stage { name, base, body: Vec::new() });
        } else if let Some(stage) = stages.last_mut() {
            stage.body.push(ins);
        } else if ins.keyword == "ARG" {
            let (k, v) = ins.args.split_once('=').unwrap_or((&ins.args, ""));
            args.insert(k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
        } else {
            problems.push(format!("line {at}: {} before the first FROM", ins.keyword));
        }
    }
    if stages.len() < 2 {
        problems.push(format!("not multi-stage: {} stage(s)", stages.len()));
    }
    for (i, stage) in stages.iter().enumerate() {
        for ins in &stage.body {
            if ins.keyword == "ADD" && (ins.args.contains("http://") || ins.args.contains("https://")) {
                problems.push(format!("line {}: ADD fetches a URL (unverified download)", ins.line));
            }
            if ins.keyword == "COPY"
                && let Some(from) = flag(&ins.args, "--from")
                && !stages[..i].iter().any(|s| s.name == from)
            {
                problems
                    .push(format!("line {}: COPY --from={from}: no earlier stage has that name", ins.line));
            }
        }
    }
    match stages.iter().find_map(|s| s.base.strip_prefix("rust:")) {
        None => problems.push("no stage builds with the Rust toolchain image (rust:…)".into()),
        Some(tag) => match parse_version(tag.split('-').next().unwrap_or_default()) {
            Some(v) if v >= min_rust => {}
            _ => problems.push(format!(
                "rust:{tag} is older than the workspace's rust-version {}.{}",
                min_rust.0, min_rust.1
            )),
        },
    }
    let Some((last, builders)) = stages.split_last() else { return problems };
    if !((last.base.starts_with("debian:") && last.base.contains("-slim"))
        || last.base.contains("/distroless/"))
    {
        problems.push(format!("the final stage runs on {}, not debian-slim or distroless", last.base));
    }
    match instructions(last, "USER").last() {
        None => problems.push("the final stage has no USER: it would run as root".into()),
        Some(u) => {
            let user = u.args.split(':').next().unwrap_or_default();
            if user == "root" || user == "0" {
                problems.push(format!("line {}: the final stage runs as root (USER {})", u.line, u.args));
            }
        }
    }
    let mut copied = Vec::new();
    for ins in instructions(last, "COPY").filter(|i| flag(&i.args, "--from").is_some()) {
        let words: Vec<&str> = ins.args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        let Some((dest, sources)) = words.split_last() else { continue };
        for src in sources {
            let name = src.rsplit('/').next().unwrap_or_default();
            if binaries.contains(name) {
                copied.push((name.to_owned(), (*dest).to_owned()));
            } else {
                problems.push(format!(
                    "line {}: copies {src}, which is not a binary the workspace builds",
                    ins.line
                ));
            }
        }
    }
    if copied.is_empty() {
        problems.push("the final stage copies no binary of the workspace".into());
    }
    for (bin, _) in &copied {
        let built = builders.iter().flat_map(|s| &s.body).any(|i| {
            i.keyword == "RUN"
                && i.args.contains("cargo build")
                && i.args.contains("--release")
                && i.args.contains("--locked")
                && i.args
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| w == ["--bin", bin.as_str()])
        });
        if !built {
            problems.push(format!("no build stage runs `cargo build --release --locked … --bin {bin}`"));
        }
    }
    match instructions(last, "ENTRYPOINT").last().map(|e| serde_json::from_str::<Vec<String>>(&e.args)) {
        Some(Ok(entry)) if copied.iter().any(|(_, dest)| entry.first() == Some(dest)) => {}
        other => problems.push(format!("ENTRYPOINT is not the exec form of a copied binary: {other:?}")),
    }
    if !instructions(last, "HEALTHCHECK").any(|h| h.args.starts_with("--") || h.args.starts_with("CMD")) {
        problems.push("the final stage has no HEALTHCHECK".into());
    }
    problems
}

fn dockerfile_cmd(text: &str) -> Vec<String> {
    let cmd = dockerfile_instructions(text).into_iter().rfind(|i| i.keyword == "CMD").expect("a CMD");
    serde_json::from_str(&cmd.args).expect("CMD in exec form")
}

#[test]
fn packaging_dockerfiles_are_multi_stage_non_root_and_ship_one_workspace_binary() {
    let (binaries, rust) = (workspace_binaries(), workspace_rust_version());
    for rel in DOCKERFILES {
        let path = deploy(rel);
        let text = read(&path);
        let problems = dockerfile_problems(&text, &binaries, rust);
        assert!(problems.is_empty(), "{}:\n  {}", path.display(), problems.join("\n  "));
        // The build context is the repository root: the Dockerfile's own ignore file keeps the
        // (many GB) target directory and .git out of it.
        let ignore =
            read(&path.with_file_name(format!("{}.dockerignore", path.file_name().unwrap().display())));
        for needed in ["target", ".git"] {
            assert!(ignore.lines().any(|l| l.trim() == needed), "{rel}.dockerignore must exclude {needed}");
        }
        // CMD is a subcommand the copied binary has.
        let bin =
            ["cofre-controller", "cofre-store"].into_iter().find(|b| text.contains(&format!("--bin {b}")));
        let mut cmd = Command::new(workspace_bin(bin.expect("a known binary")));
        let out = cmd.args(dockerfile_cmd(&text)).arg("--help").output().expect("running the binary");
        assert!(
            out.status.success(),
            "{rel}: CMD is not a subcommand: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{rel}: {} instructions, no problems", dockerfile_instructions(&text).len());
    }
}

#[test]
fn packaging_dockerfile_checks_catch_what_they_check() {
    let (binaries, rust) = (workspace_binaries(), workspace_rust_version());
    let text = read(&deploy(DOCKERFILES[0]));
    let final_from = text.find("FROM debian").expect("a debian final stage");
    let broken: [(&str, String, &str); 11] = [
        ("USER removed", mutate(&text, "USER 10001:10001", ""), "no USER"),
        ("USER root", mutate(&text, "USER 10001:10001", "USER root"), "runs as root"),
        ("USER 0:0", mutate(&text, "USER 10001:10001", "USER 0:0"), "runs as root"),
        (
            "ADD of a URL",
            mutate(&text, "WORKDIR /src", "WORKDIR /src\nADD https://example.org/x /x"),
            "ADD fetches",
        ),
        ("unknown stage", mutate(&text, "--from=build", "--from=builder"), "no earlier stage"),
        ("foreign binary", mutate(&text, "/out/cofre-controller /usr", "/out/evil /usr"), "not a binary"),
        ("unknown instruction", mutate(&text, "EXPOSE", "EXPOZE"), "unknown instruction"),
        ("latest base", mutate(&text, "FROM debian:${DEBIAN_RELEASE}-slim", "FROM debian"), "not pinned"),
        ("old toolchain", mutate(&text, "RUST_VERSION=1.", "RUST_VERSION=0."), "older than"),
        ("single stage", text[final_from..].to_owned(), "not multi-stage"),
        ("no healthcheck", mutate(&text, "HEALTHCHECK --interval", "LABEL x=y"), "no HEALTHCHECK"),
    ];
    for (what, broken_text, expected) in broken {
        let problems = dockerfile_problems(&broken_text, &binaries, rust);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{what}: expected {expected:?} in {problems:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// YAML: compose and Kubernetes

/// Every document of a YAML file as JSON, through PyYAML; `None` (with a note) without it.
fn yaml_documents(path: &Path) -> Option<Vec<Value>> {
    const SCRIPT: &str =
        "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = match Command::new("python3").arg("-c").arg(SCRIPT).arg(path).output() {
        Ok(out) => out,
        Err(e) => {
            println!("note: python3 not found ({e}): the YAML of {} is not checked", path.display());
            return None;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("No module named 'yaml'") {
        println!("note: PyYAML is not installed: the YAML of {} is not checked", path.display());
        return None;
    }
    assert!(out.status.success(), "{} is not valid YAML:\n{stderr}", path.display());
    Some(serde_json::from_slice(&out.stdout).expect("PyYAML's JSON"))
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    match &container["environment"] {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Value::Array(list) => list
            .iter()
            .filter_map(|e| e.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect(),
        _ => container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (e["name"].as_str().unwrap_or_default().to_owned(), e.clone()))
            .collect(),
    }
}

fn compose_problems(doc: &Value, dir: &Path) -> Vec<String> {
    let mut p = Problems::default();
    let s = &doc["services"];
    p.need(
        s["postgres"]["image"].as_str().is_some_and(|i| i.starts_with("postgres:15")),
        "postgres: image postgres:15",
    );
    p.need(s["migrate"]["command"] == serde_json::json!(["migrate"]), "migrate: command [migrate]");
    p.need(
        s["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy",
        "migrate waits for a healthy postgres",
    );
    p.need(s["controller"]["command"] == serde_json::json!(["serve"]), "controller: command [serve]");
    p.need(
        s["controller"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully",
        "controller starts only after migrate completed successfully",
    );
    p.need(s["store"]["command"] == serde_json::json!(["serve"]), "store: command [serve]");
    for name in ["migrate", "controller"] {
        let env = env_of(&s[name]);
        p.need(
            env.get("COFRE_KEYS__MASTER_KEY_FILE") == Some(&Value::from("/run/secrets/master_key")),
            format!("{name}: master key from the secret file /run/secrets/master_key"),
        );
        p.need(!env.contains_key("COFRE_MASTER_KEY"), format!("{name}: no master key in the environment"));
        p.need(
            s[name]["secrets"].as_array().is_some_and(|l| l.iter().any(|x| x == "master_key")),
            format!("{name}: uses the master_key secret"),
        );
    }
    p.need(doc["secrets"]["master_key"]["file"].is_string(), "secrets.master_key comes from a file");
    let (migrate, controller) = (env_of(&s["migrate"]), env_of(&s["controller"]));
    p.need(migrate.contains_key("COFRE_DATABASE__OWNER_URL"), "migrate connects as the owner");
    p.need(!controller.contains_key("COFRE_DATABASE__OWNER_URL"), "controller never gets the owner's URL");
    p.need(
        controller
            .get("COFRE_DATABASE__URL")
            .and_then(Value::as_str)
            .is_some_and(|u| u.contains("cofre_serve")),
        "controller connects as cofre_serve",
    );
    for (name, svc) in s.as_object().into_iter().flatten() {
        if let Some(build) = svc.get("build") {
            let file = dir
                .join(build["context"].as_str().unwrap_or("."))
                .join(build["dockerfile"].as_str().unwrap_or(""));
            p.need(file.is_file(), format!("{name}: build file {} exists", file.display()));
        }
        for vol in svc["volumes"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if let Some(src) = vol.split(':').next().filter(|v| v.starts_with('.')) {
                p.need(dir.join(src).exists(), format!("{name}: bind mount {src} exists"));
            }
        }
    }
    p.0
}

/// `${NAME}`, `${NAME:?message}` and `${NAME:-default}` as compose interpolates them.
fn interpolate(s: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let (mut out, mut rest) = (String::new(), s);
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').context("unclosed ${")? + start;
        let expr = &rest[start + 2..end];
        let name = expr.split(':').next().unwrap_or_default();
        match (vars.get(name), expr.split_once(":-")) {
            (Some(v), _) => out.push_str(v),
            (None, Some((_, default))) => out.push_str(default),
            (None, None) => bail!("${{{name}}} is used but env.example does not define it"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Runs `cofre-controller [--config FILE] serve` with exactly `env` and returns what stopped
/// it. Settings are loaded and validated before the master key and the database are touched,
/// so a deployment's settings are good when it stops at the key or the database.
fn controller_stops_at(env: &BTreeMap<String, String>, config: Option<&Path>) -> String {
    let mut cmd = Command::new(workspace_bin("cofre-controller"));
    cmd.env_clear().envs(env);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = cmd.arg("serve").output().expect("running cofre-controller");
    assert!(!out.status.success(), "serve cannot succeed without a database");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_settings_accepted(what: &str, stopped: &str) {
    assert!(
        !stopped.contains("invalid configuration")
            && (stopped.contains("master key") || stopped.contains("database")),
        "{what}: the controller refuses these settings:\n{stopped}"
    );
}

/// The compose file's controller environment with `.env` filled from env.example.
fn compose_controller_env(doc: &Value) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for line in read(&deploy("compose/env.example")).lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.to_owned(), if v.is_empty() { random_secret() } else { v.to_owned() });
        }
    }
    env_of(&doc["services"]["controller"])
        .into_iter()
        .map(|(k, v)| Ok((k, interpolate(v.as_str().context("string values")?, &vars)?)))
        .collect()
}

#[test]
fn packaging_compose_runs_postgres_migrate_then_serve_with_the_key_as_a_secret() {
    let path = deploy("compose/compose.yaml");
    let text = read(&path);
    assert!(!text.contains('\t'), "compose.yaml: tabs are not YAML indentation");
    let Some(docs) = yaml_documents(&path) else { return };
    let doc = &docs[0];
    let problems = compose_problems(doc, path.parent().unwrap());
    assert!(problems.is_empty(), "compose.yaml:\n  {}", problems.join("\n  "));
    // Every ${VAR} the file uses is in env.example, and the controller takes the settings.
    let env = compose_controller_env(doc).unwrap();
    assert_settings_accepted("compose controller", &controller_stops_at(&env, None));
    // The store's variables name keys cofre-store has.
    let defaults = String::from_utf8(
        Command::new(workspace_bin("cofre-store")).arg("print-default-config").output().unwrap().stdout,
    )
    .unwrap();
    for key in env_of(&doc["services"]["store"]).keys() {
        let setting = key.strip_prefix("COFRE_STORE_").expect("COFRE_STORE_ variables").to_ascii_lowercase();
        let leaf = setting.rsplit("__").next().unwrap();
        assert!(
            defaults.lines().any(|l| l.starts_with(&format!("{leaf} ="))),
            "cofre-store has no key for {key}"
        );
    }
}

#[test]
fn packaging_compose_checks_catch_what_they_check() {
    let path = deploy("compose/compose.yaml");
    let Some(docs) = yaml_documents(&path) else { return };
    let dir = path.parent().unwrap();
    let broken: [(&str, &str, Value, &str); 4] = [
        (
            "/services/controller/depends_on/migrate/condition",
            "serve before migrate",
            "service_started".into(),
            "after migrate",
        ),
        (
            "/services/controller/environment/COFRE_DATABASE__OWNER_URL",
            "owner URL in serve",
            "x".into(),
            "never gets",
        ),
        ("/services/migrate/command", "no migrate", serde_json::json!(["serve"]), "command [migrate]"),
        ("/services/controller/secrets", "no secret", serde_json::json!([]), "master_key secret"),
    ];
    for (pointer, what, value, expected) in broken {
        let mut doc = docs[0].clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        doc.pointer_mut(parent).unwrap().as_object_mut().unwrap().insert(key.to_owned(), value);
        let problems = compose_problems(&doc, dir);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{what}: expected {expected:?} in {problems:?}"
        );
    }
    // Plain HTTP on all interfaces without saying so is refused by the controller itself.
    let mut env = compose_controller_env(&docs[0]).unwrap();
    env.remove("COFRE_HTTP__ALLOW_PLAIN_HTTP");
    assert!(controller_stops_at(&env, None).contains("invalid configuration"));
}

fn k8s_problems(docs: &[Value]) -> Vec<String> {
    let mut p = Problems::default();
    let kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    let deployments: Vec<&Value> = kind("Deployment").collect();
    let [deployment] = deployments.as_slice() else { return vec!["expected exactly one Deployment".into()] };
    let (spec, pod) = (&deployment["spec"], &deployment["spec"]["template"]["spec"]);
    let labels = &spec["template"]["metadata"]["labels"];
    let matches = |selector: &Value| {
        selector.as_object().is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
    };
    p.need(spec["replicas"] == 2, "the Deployment runs 2 replicas");
    p.need(matches(&spec["selector"]["matchLabels"]), "the selector matches the pod's labels");
    p.need(pod["securityContext"]["runAsNonRoot"] == true, "pods run as non-root (runAsNonRoot)");
    p.need(
        pod["securityContext"]["runAsUser"].as_u64().is_some_and(|u| u > 0),
        "pods set a non-zero runAsUser",
    );
    let inits: Vec<&Value> = pod["initContainers"].as_array().into_iter().flatten().collect();
    let mains: Vec<&Value> = pod["containers"].as_array().into_iter().flatten().collect();
    let volumes: Vec<&Value> = pod["volumes"].as_array().into_iter().flatten().collect();
    let secret_has = |name: &Value, key: &str| {
        kind("Secret").any(|s| {
            &s["metadata"]["name"] == name
                && (s["stringData"].get(key).is_some() || s["data"].get(key).is_some())
        })
    };
    for c in inits.iter().chain(&mains) {
        let (n, sc) = (c["name"].as_str().unwrap_or("?"), &c["securityContext"]);
        p.need(sc["allowPrivilegeEscalation"] == false, format!("{n}: allowPrivilegeEscalation false"));
        p.need(sc["readOnlyRootFilesystem"] == true, format!("{n}: readOnlyRootFilesystem"));
        p.need(
            sc["capabilities"]["drop"].as_array().is_some_and(|d| d.iter().any(|x| x == "ALL")),
            format!("{n}: drops ALL capabilities"),
        );
        for e in env_of(c).values() {
            if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                p.need(
                    secret_has(&r["name"], r["key"].as_str().unwrap_or_default()),
                    format!("{n}: secret {r} exists"),
                );
            }
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            p.need(
                volumes.iter().any(|v| v["name"] == m["name"]),
                format!("{n}: volume {} exists", m["name"]),
            );
        }
    }
    p.need(
        inits.iter().any(|c| {
            c["args"] == serde_json::json!(["migrate"]) && env_of(c).contains_key("COFRE_DATABASE__OWNER_URL")
        }),
        "an init container runs migrate as the owner",
    );
    let Some(main) = mains.first() else { return p.0 };
    let env = env_of(main);
    p.need(main["args"] == serde_json::json!(["serve"]), "the controller container runs serve");
    p.need(!env.contains_key("COFRE_DATABASE__OWNER_URL"), "serve never gets the owner's URL");
    p.need(
        env.get("COFRE_MASTER_KEY")
            .is_some_and(|e| secret_has(&e["valueFrom"]["secretKeyRef"]["name"], "master-key")),
        "the master key comes from the Secret",
    );
    let ports: Vec<&Value> = main["ports"].as_array().into_iter().flatten().collect();
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &main[probe]["httpGet"];
        p.need(get["path"] == path, format!("{probe} asks {path}"));
        p.need(
            ports.iter().any(|port| port["name"] == get["port"] || port["containerPort"] == get["port"]),
            format!("{probe}: port exists"),
        );
    }
    for v in volumes.iter().filter_map(|v| v.get("configMap")) {
        p.need(
            kind("ConfigMap").any(|c| c["metadata"]["name"] == v["name"]),
            format!("ConfigMap {} exists", v["name"]),
        );
    }
    let services: Vec<&Value> = kind("Service").collect();
    p.need(!services.is_empty(), "a Service exposes the controller");
    for svc in services {
        p.need(
            matches(&svc["spec"]["selector"]),
            format!("Service {}: selector matches the pods", svc["metadata"]["name"]),
        );
        for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
            p.need(
                ports.iter().any(|c| c["name"] == port["targetPort"]),
                format!("Service port {}: targetPort exists", port["name"]),
            );
        }
    }
    p.0
}

fn k8s_documents() -> Option<Vec<Value>> {
    let kustomization = deploy("kubernetes/kustomization.yaml");
    let k = yaml_documents(&kustomization)?.remove(0);
    let mut docs = Vec::new();
    for file in k["resources"].as_array().expect("kustomization resources") {
        docs.extend(yaml_documents(&deploy(&format!("kubernetes/{}", file.as_str().unwrap())))?);
    }
    Some(docs)
}

#[test]
fn packaging_kubernetes_runs_two_replicas_migrates_first_and_probes_health() {
    let dir = deploy("kubernetes");
    let Some(docs) = k8s_documents() else { return };
    // kustomization.yaml lists every manifest in the directory.
    let k = read(&dir.join("kustomization.yaml"));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(k.contains(&format!("- {name}")), "kustomization.yaml does not list {name}");
        }
    }
    let problems = k8s_problems(&docs);
    assert!(problems.is_empty(), "deploy/kubernetes:\n  {}", problems.join("\n  "));
    // The ConfigMap's settings plus the Deployment's literal variables load in the controller.
    let tmp = tempfile::tempdir().unwrap();
    let toml =
        docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap()["data"]["controller.toml"].as_str().unwrap();
    let config = tmp.path().join("controller.toml");
    std::fs::write(&config, toml).unwrap();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let main = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env: BTreeMap<String, String> =
        env_of(main).into_iter().filter_map(|(k, v)| Some((k, v["value"].as_str()?.to_owned()))).collect();
    assert_eq!(env.remove("COFRE_CONFIG").as_deref(), Some("/etc/cofre/controller.toml"));
    assert_settings_accepted("kubernetes controller", &controller_stops_at(&env, Some(&config)));
    let http_port =
        main["ports"].as_array().unwrap().iter().find(|p| p["name"] == "http").unwrap()["containerPort"]
            .clone();
    assert!(
        toml.contains(&format!("listen = \"0.0.0.0:{http_port}\"")),
        "http.listen is not the probed port {http_port}"
    );
    match on_path("kubectl") {
        None => println!("note: kubectl not found: `kubectl kustomize` not run"),
        Some(kubectl) => {
            let out = Command::new(kubectl).arg("kustomize").arg(&dir).output().unwrap();
            assert!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
            println!("kubectl kustomize deploy/kubernetes: {} bytes of manifests", out.stdout.len());
        }
    }
}

#[test]
fn packaging_kubernetes_checks_catch_what_they_check() {
    let Some(docs) = k8s_documents() else { return };
    let at = docs.iter().position(|d| d["kind"] == "Deployment").unwrap();
    let pod = "/spec/template/spec";
    let broken: [(String, Value, &str); 6] = [
        ("/spec/replicas".into(), 1.into(), "2 replicas"),
        (format!("{pod}/securityContext/runAsNonRoot"), false.into(), "non-root"),
        (format!("{pod}/containers/0/readinessProbe/httpGet/path"), "/healthz".into(), "asks /readyz"),
        (format!("{pod}/initContainers"), serde_json::json!([]), "runs migrate"),
        (
            format!("{pod}/containers/0/securityContext/allowPrivilegeEscalation"),
            true.into(),
            "allowPrivilegeEscalation",
        ),
        (format!("{pod}/containers/0/env/1/valueFrom/secretKeyRef/name"), "nope".into(), "exists"),
    ];
    for (pointer, value, expected) in broken {
        let mut docs = docs.clone();
        *docs[at].pointer_mut(&pointer).unwrap_or_else(|| panic!("{pointer} is gone")) = value;
        let problems = k8s_problems(&docs);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{pointer}: expected {expected:?} in {problems:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// systemd units

/// A unit file as (section, key, value) triples in order.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
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

fn unit_values<'a>(entries: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    entries.iter().filter(|(_, k, _)| k == key).map(|(_, _, v)| v.as_str()).collect()
}

fn sysusers() -> BTreeSet<String> {
    read(&deploy("systemd/cofre.sysusers"))
        .lines()
        .filter(|l| l.starts_with("u "))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

/// Where a path under /etc/cofre that a unit names comes from in this repository.
fn etc_source(path: &str) -> Option<PathBuf> {
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
fn systemd_analyze_verify(units: &[(&str, String)]) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// The documented first start, with the units' command lines

/// What the administrator fills into the example files: the passwords where they say
/// CHANGE-ME, the database server instead of localhost:5432, and settings (as variables,
/// which win over controller.toml) for this machine's free ports.
struct AdminEdits {
    passwords: BTreeMap<&'static str, String>,
    database: String,
    settings: BTreeMap<&'static str, String>,
}

/// The command a unit's ExecStart runs, with its environment as systemd would give it:
/// `Environment=` (%d: the credentials directory, %C: the cache root), then the
/// `EnvironmentFile=`s from the examples (which win), edited as `admin` says.
fn unit_command(unit: &str, creds: &Path, admin: &AdminEdits) -> Result<(Command, BTreeMap<String, String>)> {
    let entries = unit_entries(&read(&deploy(&format!("systemd/{unit}"))));
    let cache = creds.with_file_name("cache");
    let mut env = BTreeMap::new();
    for assignment in unit_values(&entries, "Environment") {
        let (k, v) = assignment.split_once('=').context("Environment=K=V")?;
        let v = v.replace("%d", &creds.display().to_string()).replace("%C", &cache.display().to_string());
        env.insert(k.to_owned(), v);
    }
    for file in unit_values(&entries, "EnvironmentFile") {
        let source = etc_source(file.trim_start_matches('-')).context("example env file")?;
        for line in read(&source).lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
            let (k, v) = line.split_once('=').context("KEY=VALUE")?;
            let mut v = v.replace("localhost:5432", &admin.database);
            if let Some(password) = admin.passwords.get(k) {
                v = v.replace("CHANGE-ME", password);
            }
            env.insert(k.to_owned(), v);
        }
    }
    env.extend(admin.settings.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let exec: Vec<&str> = unit_values(&entries, "ExecStart")[0].split_whitespace().collect();
    let mut cmd = Command::new(workspace_bin(exec[0].rsplit('/').next().context("binary")?));
    for arg in &exec[1..] {
        match etc_source(arg) {
            Some(local) => cmd.arg(local),
            None => cmd.arg(arg),
        };
    }
    cmd.env_clear().envs(&env);
    Ok((cmd, env))
}

fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

#[test]
fn packaging_first_start_creates_roles_migrates_as_owner_and_serves_as_app_role() -> Result<()> {
    let pg = PgCluster::start()?;
    let (owner_password, app_password) = (random_secret(), random_secret());
    // 1. The roles, with the script the postgres image runs (docs/install.md shows its SQL).
    let script = deploy("compose/initdb/10-cofre-roles.sh");
    let sql = read(&script);
    let docs = read(&workspace_root().join("docs/install.md"));
    for statement in sql.lines().filter(|l| l.starts_with("create ")) {
        ensure!(docs.contains(statement), "docs/install.md lacks the script's `{statement}`");
    }
    let out = Command::new("sh")
        .arg(&script)
        .env("POSTGRES_USER", "postgres")
        .env("POSTGRES_DB", "postgres")
        .env("PGHOST", pg.dir())
        .env("PGPORT", pg.port().to_string())
        .env("COFRE_DB_OWNER_PASSWORD", &owner_password)
        .env("COFRE_DB_APP_PASSWORD", &app_password)
        .env_remove("PGPASSWORD")
        .output()?;
    ensure!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    // 2. The master key where LoadCredential= puts it (systemd 252 on Debian 12: 0400, the unit's user).
    let tmp = tempfile::tempdir()?;
    let creds = tmp.path().join("credentials");
    std::fs::create_dir(&creds)?;
    let key = creds.join("master.key");
    let made =
        Command::new(workspace_bin("cofre-controller")).arg("generate-master-key").arg(&key).output()?;
    ensure!(made.status.success(), "generate-master-key: {}", String::from_utf8_lossy(&made.stderr));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400))?;
    // 3. What the administrator puts into the example files.
    let (http, grpc) = (free_port(), free_port());
    let admin = AdminEdits {
        passwords: BTreeMap::from([
            ("COFRE_DATABASE__OWNER_URL", owner_password),
            ("COFRE_DATABASE__URL", app_password),
        ]),
        database: format!("127.0.0.1:{}", pg.port()),
        settings: BTreeMap::from([
            ("COFRE_HTTP__LISTEN", format!("127.0.0.1:{http}")),
            ("COFRE_GRPC__LISTEN", format!("127.0.0.1:{grpc}")),
            ("COFRE_GRPC__PUBLIC_URL", format!("https://localhost:{grpc}")),
            ("COFRE_AUDIT__CHECKPOINT_FILE", tmp.path().join("checkpoints.jsonl").display().to_string()),
        ]),
    };
    let (mut migrate, _) = unit_command("cofre-controller-migrate.service", &creds, &admin)?;
    let out = migrate.output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success() && said.contains("Schema is current"), "migrate: {said}");
    // 4. serve, as cofre-controller.service runs it: without the owner's URL.
    let (serve, env) = unit_command("cofre-controller.service", &creds, &admin)?;
    ensure!(!env.contains_key("COFRE_DATABASE__OWNER_URL"), "serve would hold the owner's password");
    let mut proc = Proc::spawn("controller", serve, tmp.path())?;
    // Polls /readyz; a serve that exits fails at once (wait_until would retry to its timeout).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let answer = loop {
        ensure!(proc.is_running(), "serve exited:\n{}", proc.log());
        match http_get(http, "/readyz") {
            Ok(answer) if answer.starts_with("HTTP/1.1 200") => break answer,
            other => {
                ensure!(std::time::Instant::now() < deadline, "not ready in 60 s: {other:?}\n{}", proc.log());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(answer.ends_with("ready"), "{answer}");
    ensure!(!proc.log().contains("connected as the schema owner"), "{}", proc.log());
    let owner = pg.psql("cofre", "select tableowner from pg_tables where tablename = 'audit_events'")?;
    ensure!(owner == "cofre_owner", "audit_events is owned by {owner}");
    println!("first start: roles from the init script, migrate as cofre_owner, serve as cofre_serve: ready");
    Ok(())
}
